"""Every error leaves the server as a short JSON `ErrorBody` with a 4xx status; a bug is a 500
with no traceback in the body (the traceback goes to the server log)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from agl.core.errors import AglError, InvalidInput, InvalidTransition, NotFound, StoreUnavailable
from agl.core.store.wire import ErrorBody, error_body

logger = logging.getLogger("agl.server")


ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "The request body could not be parsed",
        401: "Missing or wrong bearer token (when the server has one)",
        404: "Unknown rollout, attempt, resources or worker",
        409: "A status change the state machine forbids",
        413: "Request body over the limit",
        422: "Malformed or invalid request",
        503: "The store's database is unavailable",
    }.items()
}
"""Documented on every route of the API, so the OpenAPI spec lists what a client must handle."""


def _respond(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _status_of(error: AglError) -> int:
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, InvalidTransition):
        return 409
    if isinstance(error, StoreUnavailable):
        return 503
    if isinstance(error, InvalidInput):
        return 422
    return 400


def error_response(error: AglError) -> JSONResponse:
    """A store error as the client sees it (also used by the fast path, so both answer alike)."""
    return _respond(_status_of(error), error_body(error))


async def _agl_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, AglError)
    return error_response(error)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "request"
    return f"{where}: {error.get('msg', 'invalid')} (got {_cut(repr(error.get('input')), 60)})"


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = error.errors()
    if problems and problems[0]["loc"] == ("body",) and isinstance(problems[0].get("input"), bytes):
        return _respond(422, ErrorBody(error="InvalidInput", message=_not_sent_as_json(request)))
    if problems and problems[0]["type"] == "json_invalid":  # FastAPI's report of a body it could not parse
        why = problems[0].get("ctx", {}).get("error", "unparseable")
        return _respond(400, ErrorBody(error="InvalidJson", message=f"the request body is not valid JSON: {why}"))
    message = "; ".join(_describe(e) for e in problems[:3]) + (
        f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    )
    return _respond(422, ErrorBody(error="InvalidInput", message=f"invalid request: {message}"))


def _not_sent_as_json(request: Request) -> str:
    """Why a body FastAPI kept as bytes was refused: its content type is not JSON (curl's ``-d``
    sends ``application/x-www-form-urlencoded``), which pydantic's own message never said."""
    kind = request.headers.get("content-type")
    got = f"Content-Type: {_cut(kind, 80)}" if kind else "no Content-Type"
    return f"the request body must be JSON sent with Content-Type: application/json, got {got}"


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    message = f"{request.method} {_cut(request.url.path, 200)}: {error.detail}"  # a path may be kilobytes
    return _respond(error.status_code, ErrorBody(error="HTTPError", message=message), error.headers)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unexpected error serving %s %s", request.method, request.url.path)
    return _respond(500, ErrorBody(error="InternalError", message="internal server error; see the server log"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AglError, _agl_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
