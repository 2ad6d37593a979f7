"""A synchronous handle on an async store, for code that runs outside any event loop (the
OpenTelemetry exporter thread, atexit handlers, `SyncStore`). One private loop thread serves all
calls, so an HTTP store keeps its keep-alive session and SQLite its one connection. At the core's
root, standard library only, because both the store layer and the tracing runtime (loaded at
interpreter start-up) use it.

Two process events need care. A forked child inherits the bridge but not its loop thread: the
child gets a loop thread of its own, opens its own store, and refuses the parent's (a SQLite
connection or an HTTP pool must not be shared across a fork). An exiting program must not wait on a store that is gone
(the HTTP store retries for 30 s, a request may take 60 s): `stop_waiting_after` bounds every
call, those in flight included.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # not at run time: this module loads at interpreter start-up
    from agl.core.store.base import LightningStore

T = TypeVar("T")

_bridges: weakref.WeakSet[StoreBridge] = weakref.WeakSet()


class StoreBridge:
    """Either ``store``, one the caller owns (left open), or ``opener``, called on first use to open
    one that the bridge owns (closed with it)."""

    def __init__(
        self, store: LightningStore | None = None, *, opener: Callable[[], LightningStore] | None = None
    ) -> None:
        if (store is None) == (opener is None):
            raise ValueError("give the bridge a store or an opener, not both or neither")
        self._owned = opener is not None
        self._open_store: Callable[[], LightningStore] = opener or (lambda: store)  # type: ignore[assignment,return-value]
        self._store: LightningStore | None = None
        self._used: weakref.WeakSet[LightningStore] = weakref.WeakSet()  # every store a call ran on
        self._inherited: weakref.WeakSet[LightningStore] = weakref.WeakSet()  # those of a parent process
        self._lock = threading.Lock()
        self._start_loop()
        _bridges.add(self)

    def _start_loop(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._deadline: float | None = None  # loop time after which no call waits on the store
        self._limits: set[asyncio.Timeout] = set()  # of the calls in flight
        self._thread = threading.Thread(target=self._loop.run_forever, name="agl-store-bridge", daemon=True)
        self._thread.start()

    def call(
        self,
        action: Callable[[LightningStore], Coroutine[Any, Any, T]],
        timeout: float | None = 60.0,
        *,
        store: LightningStore | None = None,
    ) -> T:
        """Run ``action(store)`` on the bridge's loop and wait for it: on ``store`` if given (another
        open store, left open), else on the bridge's own, opened on first use."""

        async def act() -> T:
            if store is None and self._store is None:
                self._store = self._open_store()
            target = store if store is not None else self._store
            if target in self._inherited:
                raise RuntimeError(
                    "agl cannot use a store opened before this process forked (its connections are the parent's)"
                )
            self._used.add(target)
            return await action(target)

        async def run() -> T:
            limit = asyncio.timeout_at(self._deadline)
            try:
                async with limit:
                    self._limits.add(limit)
                    return await act()
            except TimeoutError:
                if limit.expired():
                    raise TimeoutError("the program is exiting and agl stopped waiting for its store") from None
                raise
            finally:
                self._limits.discard(limit)

        with self._lock:
            if self._loop.is_closed():
                raise RuntimeError("the store bridge is closed")
            future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(timeout)

    def stop_waiting_after(self, seconds: float) -> None:
        """Every call, in flight or later, fails with `TimeoutError` once ``seconds`` have passed
        (or sooner, if an earlier call set a sooner end)."""

        def limit() -> None:
            deadline = self._loop.time() + seconds
            self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
            for each in self._limits:
                if not each.expired():
                    each.reschedule(self._deadline)

        with self._lock:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(limit)

    def close(self) -> None:
        with self._lock:
            if self._loop.is_closed():
                return
            if self._store is not None and self._owned:
                asyncio.run_coroutine_threadsafe(self._store.close(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()

    def _after_fork_in_child(self) -> None:
        """The parent's loop thread is not in the child, and its stores' connections are the
        parent's: a fresh loop, an owned store opened anew on first use, and calls on the parent's
        stores refused (a given store included). The old ones are kept, not closed: closing them
        here would act on the parent's connections."""
        if self._loop.is_closed():
            return
        self._abandoned = (self._loop, self._store)
        self._lock = threading.Lock()
        self._inherited = weakref.WeakSet([*self._used, *self._inherited])
        if self._owned:
            self._store = None
        elif self._store is None:  # given, never used: the parent's all the same
            self._store = self._open_store()
            self._inherited.add(self._store)
        self._start_loop()


def stop_waiting_after(seconds: float) -> None:
    """`StoreBridge.stop_waiting_after` for every bridge of the process (called at exit)."""
    for bridge in list(_bridges):
        bridge.stop_waiting_after(seconds)


def _after_fork_in_child() -> None:
    for bridge in list(_bridges):
        bridge._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
