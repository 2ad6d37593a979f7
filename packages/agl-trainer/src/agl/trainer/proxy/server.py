"""`LlmProxy`: the proxy app served by uvicorn on a background thread, handed out as a `ProxyLLM`.

The thread runs its own event loop, so the proxy works beside any program (a synchronous
trainer, an asyncio one, a test). The listening socket is bound before the thread starts, so the
port is known at once (``port=0`` picks a free one); `start` returns when the app is ready.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from collections.abc import Sequence
from typing import Any

import uvicorn

from agl.core.errors import AglError
from agl.core.server.run import uvicorn_config
from agl.core.server.settings import exposed_without_token
from agl.core.store.base import LightningStore
from agl.core.types.resources import ProxyLLM
from agl.trainer.proxy.app import MAX_BODY_BYTES, create_proxy_app
from agl.trainer.proxy.forward import DEFAULT_RETRY, DEFAULT_TIMEOUT, RetryPolicy
from agl.trainer.proxy.routing import Upstreams

START_TIMEOUT = 30.0


class LlmProxy:
    """Routes ``/rollout/{rid}/attempt/{aid}/v1/...`` to ``upstreams`` (engine base URLs ending in
    ``/v1``) and records every call's LLM span with token ids into ``store``.

        with LlmProxy(store, [engine.base_url], model="qwen") as proxy:
            await store.add_resources({"llm": proxy.resource})   # agents get per-attempt URLs

    Binds 127.0.0.1 by default; another address needs a ``token`` (agents send it as their API
    key), unless ``insecure``. ``model`` is what the resource names (default: the first engine's
    first model); ``upstream_token`` is sent to the engines; ``timeout`` is the longest wait, in
    seconds, for an engine's next bytes (a whole reply arrives at once, so it bounds a generation);
    ``retry`` says how often a transient failure is retried per engine before the next is tried.
    """

    def __init__(
        self,
        store: LightningStore,
        upstreams: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        model: str | None = None,
        sampling_parameters: dict[str, Any] | None = None,
        upstream_token: str | None = None,
        insecure: bool = False,
        max_body_bytes: int = MAX_BODY_BYTES,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if exposed_without_token(host, token) and not insecure:
            raise AglError(f"refusing to serve the LLM proxy on {host} without a token (or pass insecure=True)")
        self.store = store
        self.host = host
        self.token = token
        self.model = model
        self.sampling_parameters = dict(sampling_parameters or {})
        self.upstream_token = upstream_token
        self.upstreams = Upstreams(upstreams)
        self._requested_port = port
        self._app_options: dict[str, Any] = {"max_body_bytes": max_body_bytes, "retry": retry, "timeout": timeout}
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._resource: ProxyLLM | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise AglError("the LLM proxy is not started")
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """The proxy's root, which `ProxyLLM.base_url` extends per rollout and attempt."""
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"

    @property
    def resource(self) -> ProxyLLM:
        if self._resource is None:
            raise AglError("the LLM proxy is not started")
        return self._resource

    def set_upstreams(self, upstreams: Sequence[str]) -> None:
        """Serve from other engines from now on (a trainer swapping engines); running calls finish."""
        self.upstreams.set(upstreams)

    def start(self) -> ProxyLLM:
        """Serve; returns the resource to publish. The model name, if not given, is the first
        engine's first model (``/v1/models``)."""
        if self._thread is not None:
            return self.resource
        model = self.model or self._discover_model()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
        listener.bind((self.host, self._requested_port))
        listener.listen(1024)
        self._socket = listener
        ready = threading.Event()
        app = create_proxy_app(
            self.store,
            self.upstreams,
            token=self.token,
            upstream_token=self.upstream_token,
            on_startup=ready.set,
            **self._app_options,
        )
        self._server = uvicorn.Server(uvicorn_config(app, lifespan="on"))  # the store server's protocol and limits
        self._thread = threading.Thread(target=self._run, args=(ready,), name=f"agl-llm-proxy-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT) or not self._thread.is_alive():
            self.stop()
            raise AglError("the LLM proxy did not start")
        self._resource = ProxyLLM(
            endpoint=self.url, model=model, api_key=self.token, sampling_parameters=self.sampling_parameters
        )
        return self._resource

    def _run(self, ready: threading.Event) -> None:
        assert self._server is not None and self._socket is not None
        try:
            self._server.run(sockets=[self._socket])  # on uvloop when installed (uvicorn's "auto" loop)
        finally:
            ready.set()  # wake `start` if serving ended before it was ready

    def stop(self) -> None:
        """Stop serving: calls in flight finish first (uvicorn's graceful shutdown). Idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
        self._resource = None

    def _discover_model(self) -> str:
        headers = {"authorization": f"Bearer {self.upstream_token}"} if self.upstream_token else {}
        # Straight to the engine, as the proxy's calls go: not through $http_proxy, which urllib
        # follows by default (and which, on a cluster, rarely lets 127.0.0.1 through).
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        failures = []
        for url in self.upstreams.urls:
            try:
                with opener.open(urllib.request.Request(f"{url}/models", headers=headers), timeout=10) as reply:
                    return str(json.load(reply)["data"][0]["id"])
            except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
                failures.append(f"{url}: {type(error).__name__}")
        raise AglError(f"no engine named its model ({'; '.join(failures) or 'no engines'}); pass model=...")

    def __enter__(self) -> LlmProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
