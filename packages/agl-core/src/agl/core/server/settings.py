"""Server settings, injected into the app (never module globals), so tests build their own."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from agl.core.errors import AglError
from agl.core.server.auth import check_token

DEFAULT_PORT = 4747


class ServerSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    token: SecretStr | None = None
    """Bearer token required on every route but /health; None leaves the server open."""
    insecure: bool = False
    """Allow binding a non-loopback address without a token."""
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    max_decompressed_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    cors_origins: tuple[str, ...] = ()
    """Origins allowed by CORS; none (CORS off) by default."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposed_without_token(host: str, token: object) -> bool:
    """Whether a server on ``host`` would answer anyone on the network: the one rule the store
    server, the LLM proxy and the model servers refuse by (unless told ``insecure``)."""
    return not is_loopback(host) and not token


def check_exposure(settings: ServerSettings) -> None:
    """Refuse a blank token, and to listen beyond this machine without a token unless told ``insecure``."""
    if settings.token is not None:
        check_token(settings.token.get_secret_value())
    if exposed_without_token(settings.host, settings.token) and not settings.insecure:
        raise AglError(
            f"refusing to serve on {settings.host} without a token: set AGL_STORE_TOKEN or --token, "
            "or pass --insecure to expose the store to the network unauthenticated"
        )
