"""A blocking handle on any store, for code with no event loop: scripts, plain notebook cells, the
threads of a synchronous web app.

Every coroutine method of `LightningStore` becomes a plain call with the same arguments and the
same result or typed error. The calls run on one private event-loop thread (`StoreBridge`), so an
HTTP store keeps its keep-alive connections from call to call and SQLite its one connection, and
threads may share one handle.

    with open_store_sync("http://127.0.0.1:4747") as store:
        rollout = store.enqueue_rollout({"question": "2+2"})
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from agl.core.bridge import StoreBridge
from agl.core.errors import StoreUnavailable
from agl.core.store.base import LightningStore
from agl.core.store.urls import open_store

CALLS = frozenset(
    name
    for name, member in inspect.getmembers(LightningStore)
    if inspect.iscoroutinefunction(member) and not name.startswith("_") and name != "close"
)
"""The store methods a `SyncStore` offers: every coroutine method of the protocol but ``close``."""


class SyncStore:
    """``store`` behind blocking calls. ``owned``: `close` closes the store too (`open_store_sync`)."""

    def __init__(self, store: LightningStore, *, owned: bool = False) -> None:
        self.store = store
        self._bridge = StoreBridge(opener=lambda: store) if owned else StoreBridge(store)
        self._closed = False

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in CALLS:
            calls = ", ".join(sorted(CALLS))
            raise AttributeError(f"{type(self).__name__} has no {name!r}; the store calls are {calls}")

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._closed:
                raise StoreUnavailable(f"this SyncStore is closed; {name} was not called")
            # No timeout here: the calls that wait (wait_for_rollouts) take their own.
            return self._bridge.call(lambda store: getattr(store, name)(*args, **kwargs), timeout=None)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = getattr(LightningStore, name).__doc__
        return call

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *CALLS})

    def close(self) -> None:
        """Stop the handle's thread (closing the store when the handle owns it); idempotent."""
        self._closed = True
        self._bridge.close()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_store_sync(url: str | None = None, **options: Any) -> SyncStore:
    """`open_store` with blocking calls; the handle owns the store (closed with it)."""
    return SyncStore(open_store(url, **options), owned=True)
