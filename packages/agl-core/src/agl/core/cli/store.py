"""`agl store serve`: the store server over any store URL."""

from __future__ import annotations

from typing import Annotated

import typer

from agl.core.cli._common import StoreUrl
from agl.core.errors import AglError
from agl.core.store.urls import default_store_url

app = typer.Typer(help="Run the store server.", no_args_is_help=True)


@app.command()
def serve(
    store: StoreUrl = None,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 4747,
    token: Annotated[
        str | None,
        typer.Option(
            help="Bearer token required on every route but /health.", envvar="AGL_STORE_TOKEN", show_envvar=True
        ),
    ] = None,
    insecure: Annotated[bool, typer.Option(help="Allow a non-loopback host without a token.")] = False,
    max_body_mb: Annotated[int, typer.Option(help="Largest request body accepted, in MiB.")] = 32,
    workers: Annotated[
        int, typer.Option(help="Server processes sharing the port (more than 1 needs a sqlite:// store).")
    ] = 1,
) -> None:
    """Serve the store at --store over HTTP: REST under /v1/agl, OTLP traces at /v1/traces."""
    try:
        from agl.core.server import ServerSettings
        from agl.core.server import serve as run_server
    except ImportError as error:
        typer.echo(
            f"error: the store server needs the server extra (pip install 'agl-core[server]'): {error}", err=True
        )
        raise typer.Exit(1) from None
    url = store or default_store_url()
    access = "token required" if token else "no token"
    try:
        if not 0 <= port <= 65535:
            raise AglError(f"--port must be between 0 and 65535, got {port}")
        if max_body_mb < 1:
            raise AglError(f"--max-body-mb must be at least 1, got {max_body_mb}")
        settings = ServerSettings(
            host=host,
            port=port,
            token=token or None,
            insecure=insecure,
            max_body_bytes=max_body_mb * 1024 * 1024,
            max_decompressed_bytes=2 * max_body_mb * 1024 * 1024,
        )
        run_server(
            settings,
            url,
            workers,
            on_ready=lambda address: typer.echo(f"agl store serving {url} at {address} ({access})"),
        )
    except AglError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
