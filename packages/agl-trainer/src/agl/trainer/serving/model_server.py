"""What a model-server factory (registered with ``agl_register_model_servers``) returns.

A model server is an engine behind an OpenAI-compatible HTTP endpoint that speaks vLLM's token-id
extensions (``return_token_ids``). The trainer starts one, points agents at `base_url`, and
pushes new weights with `load_weights` between training steps, without a restart.

Factories are called as ``factory(model, *, host="127.0.0.1", port=0, token=None, **engine_options)``;
``agl serve --insecure`` adds ``insecure=True``, only where the host is not loopback and there is
no token (a factory that does not take it is then refused by Python, not left open).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class ModelServer(Protocol):
    """A running (or startable) OpenAI-compatible server for one model."""

    model_name: str
    base_url: str
    """``http://host:port/v1`` once started."""

    def start(self) -> str:
        """Start serving; blocks until requests are answered; returns `base_url`."""
        ...

    def stop(self) -> None:
        """Stop serving and release the engine."""
        ...

    def load_weights(self, folder: str | Path) -> None:
        """Serve the weights saved in ``folder`` (full weights or an adapter) from the next request on."""
        ...


ModelServerFactory = Callable[..., ModelServer]


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    """Refuse a blank token, which would guard nothing, and a non-loopback ``host`` without a token
    unless ``insecure``: a model server made from Python is as safe by default as ``agl serve``.
    Imported when called: agl-core's server modules import FastAPI, which registering the model
    server plugins must not."""
    from agl.core.errors import InvalidInput
    from agl.core.server.auth import check_token
    from agl.core.server.settings import exposed_without_token

    if token:
        check_token(token)
    if exposed_without_token(host, token) and not insecure:
        raise InvalidInput(
            f"refusing to listen on {host} without a token: pass token=..., "
            "or insecure=True to expose the model unauthenticated"
        )
