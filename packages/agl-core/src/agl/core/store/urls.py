"""`open_store(url)`: pick a backend from a URL; ``AGL_STORE`` sets the default everywhere.

memory://                       in-process, gone when the process ends
sqlite:///relative/path.db      a file (four slashes for an absolute path)
sqlite:////abs/path.db?synchronous=full&busy_timeout=10
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from agl.core.errors import StoreUnavailable, StoreUrlError
from agl.core.store.base import LightningStore

DEFAULT_STORE_URL = "sqlite:///.agl/store.db"
STORE_URL_ENV = "AGL_STORE"


def default_store_url() -> str:
    return os.environ.get(STORE_URL_ENV) or DEFAULT_STORE_URL


def _open_memory(url: str, path: str, options: dict[str, str], read_only: bool, **kwargs: Any) -> LightningStore:
    from agl.core.store.memory import InMemoryLightningStore

    if path or options:
        raise StoreUrlError(url, "memory:// takes no path or options")
    return InMemoryLightningStore(**kwargs)


def _open_sqlite(url: str, path: str, options: dict[str, str], read_only: bool, **kwargs: Any) -> LightningStore:
    from agl.core.store.sqlite import SqliteLightningStore

    # sqlite:///rel.db -> "/rel.db" after urlsplit; one leading slash belongs to the URL syntax.
    file_path = path[1:] if path.startswith("/") else path
    if not file_path or file_path.endswith("/"):
        raise StoreUrlError(url, "sqlite:// needs a file path, as in sqlite:///.agl/store.db")
    settings: dict[str, Any] = {}
    for key, value in options.items():
        if key == "synchronous":
            if value.lower() not in ("normal", "full"):
                raise StoreUrlError(url, f"synchronous must be 'normal' or 'full', not {value!r}")
            settings["synchronous"] = value.lower()
        elif key == "busy_timeout":
            try:
                settings["busy_timeout"] = float(value)
            except ValueError:
                raise StoreUrlError(url, f"busy_timeout must be a number of seconds, not {value!r}") from None
        else:
            raise StoreUrlError(url, f"unknown option {key!r} (known: synchronous, busy_timeout)")
    if read_only and not Path(file_path).is_file():
        raise StoreUnavailable(f"no store file at {file_path}")  # the URL is fine; the file is not there
    return SqliteLightningStore(Path(file_path), read_only=read_only, **settings, **kwargs)


def _open_http(url: str, path: str, options: dict[str, str], read_only: bool, **kwargs: Any) -> LightningStore:
    from agl.core.store.http import HttpLightningStore

    if options:
        raise StoreUrlError(url, "http(s):// takes no options; pass the token in AGL_STORE_TOKEN")
    return HttpLightningStore(url.split("?", 1)[0], **kwargs)


BACKENDS: dict[str, Callable[..., LightningStore]] = {
    "memory": _open_memory,
    "sqlite": _open_sqlite,
    "http": _open_http,
    "https": _open_http,
}


def open_store(url: str | None = None, *, read_only: bool = False, **kwargs: Any) -> LightningStore:
    """Open the store named by ``url`` (default: ``$AGL_STORE``, else ``sqlite:///.agl/store.db``).

    ``read_only`` is for inspection: a SQLite file must exist already and is opened read-only
    (a read-only copy works; writes are refused) with no watchdog, so looking changes nothing.
    Extra keyword arguments (``clock``, ``watchdog_interval``…) go to the backend.
    """
    url = url or default_store_url()
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise StoreUrlError(url, str(error)) from None
    if not parts.scheme:
        raise StoreUrlError(url, f"no scheme; expected one of {', '.join(f'{s}://' for s in BACKENDS)}")
    opener = BACKENDS.get(parts.scheme)
    if opener is None:
        raise StoreUrlError(url, f"unknown scheme {parts.scheme!r}; expected one of {', '.join(BACKENDS)}")
    if parts.scheme == "sqlite" and parts.netloc:
        raise StoreUrlError(url, f"unexpected host {parts.netloc!r}; use three slashes: {parts.scheme}:///path")
    if parts.scheme == "sqlite" and "#" in url:  # urlsplit drops it: the store would be another file
        raise StoreUrlError(url, "'#' is not allowed in a file path (it starts a URL fragment)")
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise StoreUrlError(url, "needs a host, as in http://127.0.0.1:4747")
    try:
        options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    except ValueError:
        raise StoreUrlError(url, f"malformed query string {parts.query!r}") from None
    path = parts.netloc + parts.path if parts.scheme == "memory" else parts.path
    return opener(url, path, options, read_only, **kwargs)
