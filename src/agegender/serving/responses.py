"""How the service says no: every error answers ``{"error": code, "detail": sentence}`` with its status."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": detail}`` with HTTP ``status``."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


class JobCancelled(Exception):
    """The request this job works for has been answered already (timeout): its work stops."""


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def refuse(scope: dict, receive: Callable, send: Callable, status: int, code: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
    """Answer ``{error, detail}`` with ``status`` before the app takes a request: an HTTP request, or a WebSocket
    whose handshake is not complete (as an HTTP answer where the server can send one, as uvicorn can; else the
    handshake is closed, which the server answers with 403)."""
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    await error_response(status, code, detail, headers)(scope, receive, send)


async def _api_error(_request: Request, e: ApiError) -> JSONResponse:
    log.info("%d %s: %s", e.status, e.code, e.detail)
    return error_response(e.status, e.code, e.detail, e.headers)


async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
    codes = {404: ("not_found", f"There is nothing at {request.url.path}."),
             405: ("method_not_allowed", f"{request.method} is not allowed on {request.url.path}.")}
    code, detail = codes.get(e.status_code, (f"http_{e.status_code}", str(e.detail)))
    return error_response(e.status_code, code, detail, getattr(e, "headers", None))


async def _validation_error(_request: Request, e: RequestValidationError) -> JSONResponse:
    return error_response(422, "validation_error", f"The request is invalid: {e.errors()}")


async def _internal_error(_request: Request, e: Exception) -> JSONResponse:
    log.exception("internal error")
    return error_response(500, "internal_error", f"The server failed: {type(e).__name__}.")


def install_error_handlers(app: FastAPI) -> None:
    """Every error answers ``{"error": code, "detail": sentence}``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
