"""What a model-server factory (registered with ``agl_register_model_servers``) returns.

A model server is an engine behind an OpenAI-compatible HTTP endpoint that speaks vLLM's token-id
extensions (``return_token_ids``). The trainer starts one, points agents at `base_url`, and
pushes new weights with `load_weights` between training steps, without a restart.

Factories are called as ``factory(model, *, host="127.0.0.1", port=0, token=None, **engine_options)``.
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
