"""Annotated dependencies: the store, the settings, and the bearer-token check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agl.core.server.errors import Unauthorized
from agl.core.server.settings import ServerSettings
from agl.core.store.base import LightningStore

_bearer = HTTPBearer(auto_error=False, description="AGL_STORE_TOKEN")


def get_store(request: Request) -> LightningStore:
    return request.app.state.store


def get_settings(request: Request) -> ServerSettings:
    return request.app.state.settings


StoreDep = Annotated[LightningStore, Depends(get_store)]
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]


def require_token(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    if settings.token is None:
        return
    expected = settings.token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials else b""
    if not hmac.compare_digest(given, expected):  # constant time: no timing oracle on the token
        raise Unauthorized("missing or wrong bearer token")


AuthDep = Depends(require_token)
