"""RFC 9457 problem documents: every error the API returns is one.

Our own errors carry their status and title (:mod:`tidings.exceptions`);
FastAPI's validation errors become a 422 (a 400 for a body that is not JSON)
whose ``detail`` names each field and what is wrong with it, with the list in
``errors``. Anything unexpected is a 500 that reveals nothing internal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.exceptions import TidingsError

log = structlog.get_logger(__name__)

PROBLEM = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = dict(headers or {})
    if status == 401:
        headers["www-authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def problem_for(exc: Exception, path: str) -> JSONResponse:
    """The problem document for an error raised while handling a request to ``path``."""
    if isinstance(exc, TidingsError):
        return problem(exc.status, exc.title, exc.detail)
    if isinstance(exc, RequestValidationError):
        errors = [_error(e) for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            return problem(
                400, "Malformed JSON", "the request body is not valid JSON", errors=errors
            )
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
        return problem(422, "Invalid input", detail, errors=errors)
    if isinstance(exc, HTTPException):
        titles = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}
        title = titles.get(exc.status_code, "Error")
        return problem(exc.status_code, title, str(exc.detail), headers=exc.headers)
    log.exception("unhandled_error", path=path, exc_info=exc)
    return problem(500, "Internal error", "an unexpected error occurred; it has been logged")


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestValidationError) and _body_not_json(request, exc):
            return not_json()
        return problem_for(exc, request.url.path)

    for error in (TidingsError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(error, handle)


def not_json() -> JSONResponse:
    return problem(
        415,
        "Unsupported media type",
        "send the body as JSON, with the header Content-Type: application/json",
    )


def read_as_json(content_type: str | None) -> bool:
    """Whether a body of ``content_type`` is read as JSON: only under a JSON media type
    (FastAPI's strict rule: a body sent with none is not read either)."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _body_not_json(request: Request, exc: RequestValidationError) -> bool:
    """A body FastAPI did not read as JSON, because its Content-Type is not JSON."""
    if read_as_json(request.headers.get("content-type")):
        return False
    return any(tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors())


def _error(error: Any) -> dict[str, str]:
    loc = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
    return {"loc": loc, "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}


class BodyLimit:
    """Refuse a request body over ``max_bytes`` with a 413 problem document.

    A declared ``Content-Length`` is checked before anything is read; a body
    sent without one (chunked) is counted as it streams in.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # FastAPI re-raises an HTTPException met while reading the body.
                raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self) -> str:
        return f"the request body is over the limit of {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem(413, "Payload too large", self._detail())(scope, receive, send)
