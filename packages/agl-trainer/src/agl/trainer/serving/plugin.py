"""Registers the embedded "transformers" model server (the ``agl.trainer`` entry point ``serving``).

The factory imports torch and transformers only when called, so listing plugins stays cheap.
"""

from __future__ import annotations

from typing import Any

from agl.trainer.hookspecs import RegisterModelServer, hookimpl
from agl.trainer.serving.model_server import ModelServer


def transformers_server(model: str, **options: Any) -> ModelServer:
    """``factory(model, *, host, port, token, **engine_options)`` for the embedded transformers engine."""
    from agl.trainer.serving.embedded import EmbeddedModelServer

    return EmbeddedModelServer(model, **options)


@hookimpl
def agl_register_model_servers(register: RegisterModelServer) -> None:
    register("transformers", transformers_server)
