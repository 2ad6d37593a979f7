"""``agl serve MODEL``: an OpenAI-compatible server (with token ids) for a model, by any registered engine.

Added to the ``agl`` command through the ``agl.cli`` entry point ``serving``. The engine is looked
up among the model servers that plugins register (``agl_register_model_servers``): "transformers"
(embedded, CPU or GPU) and "vllm" when installed. Prints the base URL once requests are answered;
Ctrl-C (or SIGTERM) stops it cleanly, and while the model is still loading it ends the start at once.
"""

from __future__ import annotations

import signal
import threading
from enum import StrEnum
from typing import Annotated, Any

import typer

from agl.core.cli._common import parse_option
from agl.trainer.plugins import model_servers, plugin_manager


class ToolCallParser(StrEnum):
    """The values of `--tool-call-parser` (see `agl.trainer.serving.tool_calls`)."""

    auto = "auto"
    hermes = "hermes"
    none = "none"


def add_commands(root: typer.Typer) -> None:
    """The ``agl.cli`` entry point: add ``agl serve`` to the root ``agl`` app."""
    root.command("serve")(serve)


def serve(
    model: Annotated[str, typer.Argument(help="A model folder or a .gguf file (what the engine accepts).")],
    engine: Annotated[str, typer.Option(help="Registered model server: transformers, vllm, ...")] = "transformers",
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free one).", min=0, max=65535)] = 8000,
    token: Annotated[
        str | None,
        typer.Option(help="Bearer token required on every route but /health.", envvar="AGL_SERVE_TOKEN"),
    ] = None,
    insecure: Annotated[bool, typer.Option(help="Allow a non-loopback host without a token.")] = False,
    served_model_name: Annotated[
        str | None,
        typer.Option(help="The model's name in the API (default: the folder's or file's); others get a 404."),
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="An engine option KEY=JSON (repeatable), e.g. device=cuda.")
    ] = None,
    tool_call_parser: Annotated[
        ToolCallParser | None,
        typer.Option(
            help="Read the model's tool calls into OpenAI tool_calls: hermes (<tool_call> markup), none "
            "(leave them as text), auto (hermes when the chat template writes <tool_call>; the default)."
        ),
    ] = None,
) -> None:
    """Serve MODEL over an OpenAI-compatible API (/v1/chat/completions, /v1/completions) with token ids."""
    from agl.core.errors import InvalidInput
    from agl.core.server.auth import check_token
    from agl.core.server.settings import exposed_without_token

    if token:  # any engine: vLLM would take a blank one as its API key
        try:
            check_token(token)
        except InvalidInput as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
    if exposed_without_token(host, token) and not insecure:
        typer.echo(
            f"error: refusing to listen on {host} without a token: set --token (or AGL_SERVE_TOKEN), "
            "or pass --insecure to expose the model unauthenticated",
            err=True,
        )
        raise typer.Exit(1)
    found = model_servers(plugin_manager())
    server = None
    if engine not in found:
        names = ", ".join(sorted(found)) or "none"
        typer.echo(f"error: no model server named {engine!r} (installed: {names})", err=True)
        raise typer.Exit(1)
    try:
        options = dict(parse_option(text) for text in option or [])
        if served_model_name:
            options["model_name"] = served_model_name
        if tool_call_parser is not None:  # else the engine's default, auto
            options["tool_call_parser"] = tool_call_parser.value
        if insecure and exposed_without_token(host, token):  # only then: a plugin's server may not know it
            options["insecure"] = True
        factory, _ = found[engine]
        server = factory(model, host=host, port=port, token=token or None, **options)
        signals = StopSignal()
        base_url = server.start()
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as error:
        typer.echo(f"error: {' '.join(str(error).split())}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        if server is not None:
            server.stop()
        typer.echo("stopped before serving", err=True)
        raise typer.Exit(130) from None
    signals.serving = True
    typer.echo(f"serving {server.model_name} at {base_url}")
    try:
        signals.stopping.wait()
    finally:
        server.stop()
    typer.echo("stopped", err=True)


class StopSignal:
    """SIGINT and SIGTERM. While the server starts (a model loading, vLLM warming up: minutes), a
    `KeyboardInterrupt` that ends the start; once it serves, `stopping`, so the main thread stops
    it in order. A signal that only set the event made Ctrl-C wait for the whole start."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.serving = False
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.serving:
            raise KeyboardInterrupt
        self.stopping.set()
