"""A synchronous handle on an async store, for code that runs outside any event loop (the
OpenTelemetry exporter thread, atexit handlers, `SyncStore`). One private loop thread serves all
calls, so an HTTP store keeps its keep-alive session and SQLite its one connection. At the core's
root, standard library only, because both the store layer and the tracing runtime (loaded at
interpreter start-up) use it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # not at run time: this module loads at interpreter start-up
    from agl.core.store.base import LightningStore

T = TypeVar("T")


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
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agl-store-bridge", daemon=True)
        self._thread.start()
        self._lock = threading.Lock()

    def call(
        self,
        action: Callable[[LightningStore], Coroutine[Any, Any, T]],
        timeout: float | None = 60.0,
        *,
        store: LightningStore | None = None,
    ) -> T:
        """Run ``action(store)`` on the bridge's loop and wait for it: on ``store`` if given (another
        open store, left open), else on the bridge's own, opened on first use."""

        async def run() -> T:
            if store is not None:
                return await action(store)
            if self._store is None:
                self._store = self._open_store()
            return await action(self._store)

        with self._lock:
            if self._loop.is_closed():
                raise RuntimeError("the store bridge is closed")
            future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(timeout)

    def close(self) -> None:
        with self._lock:
            if self._loop.is_closed():
                return
            if self._store is not None and self._owned:
                asyncio.run_coroutine_threadsafe(self._store.close(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()
