"""Model servers made from Python refuse what ``agl serve`` refuses: a non-loopback host without a
token (unless ``insecure``), and a blank token; ``agl serve --insecure`` still reaches the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agl.core.errors import InvalidInput
from agl.trainer.serving.vllm import VllmServer

pytest.importorskip("transformers")

from agl.trainer.serving.embedded import EmbeddedModelServer

SERVERS: list[Any] = [VllmServer, EmbeddedModelServer]
REFUSAL = "refusing to listen on 0.0.0.0 without a token: pass token=..., or insecure=True"


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("token", [None, ""])
def test_a_model_server_refuses_a_public_address_without_a_token(
    server: Any, token: str | None, tmp_path: Path
) -> None:
    """Anyone on the network could have used the model (and, on vLLM, reloaded its weights)."""
    with pytest.raises(InvalidInput, match=REFUSAL):
        server(tmp_path, host="0.0.0.0", token=token)


@pytest.mark.parametrize("server", SERVERS)
def test_a_model_server_refuses_a_blank_token(server: Any, tmp_path: Path) -> None:
    """Up front, not once vLLM has loaded the model (or at the embedded server's first start)."""
    with pytest.raises(InvalidInput, match="the token is blank"):
        server(tmp_path, token="  ")


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(
    ("host", "options"), [("0.0.0.0", {"token": "t"}), ("0.0.0.0", {"insecure": True}), ("::1", {})]
)
def test_a_model_server_takes_a_token_insecure_or_a_loopback_address(
    server: Any, host: str, options: dict[str, Any], tmp_path: Path
) -> None:
    assert server(tmp_path, host=host, **options).host == host


def test_agl_serve_insecure_reaches_the_engine(tmp_path: Path) -> None:
    """The engine is told ``insecure`` too, so that it does not refuse what the command allowed."""
    from test_serving_cli import _app

    missing = str(tmp_path / "missing")
    result = CliRunner().invoke(_app(), ["serve", missing, "--host", "0.0.0.0", "--insecure", "--port", "0"])
    assert result.exit_code == 1
    assert "no such model folder" in result.output and "refusing" not in result.output
