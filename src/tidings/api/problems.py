"""RFC 9457 problem documents: every error the API returns is one.

Our own errors carry their status and title (:mod:`tidings.exceptions`);
FastAPI's validation errors become a 422 (a 400 for a body that is not JSON)
whose ``detail`` names each field and what is wrong with it, with the list in
``errors``. Anything unexpected is a 500 that reveals nothing internal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.exceptions import TidingsError

log = structlog.get_logger(__name__)

PROBLEM = "application/problem+json"

_TEXT = {"type": "string"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem document; `errors` lists each invalid field.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": _TEXT,
        "title": _TEXT,
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": _TEXT,
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {"loc": _TEXT, "msg": _TEXT, "type": _TEXT},
            },
        },
    },
}
WHY: dict[int, str] = {
    400: "The body is not valid JSON, or a field the request needs is missing.",
    401: "No credential, or one that is not valid.",
    403: "A credential for the other kind of route (the admin token or a tenant key).",
    404: "No such object (another tenant's is not found either).",
    409: "Already there: an Idempotency-Key used with another body, or a name taken.",
    413: "The body is over TIDINGS_MAX_BODY_BYTES.",
    415: "The body is not sent as JSON (Content-Type: application/json).",
    422: "A field, parameter or header is not valid; `errors` says which and why.",
    503: "The store cannot answer now; try again.",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The problem documents ``statuses`` for a route's ``responses=`` (OpenAPI)."""
    return {
        status: {"description": WHY[status], "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}}}
        for status in statuses
    }


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
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            exc = HTTPException(405, exc.detail, {"allow": _allowed(app, request.url.path)})
        return problem_for(exc, request.url.path)

    for error in (TidingsError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(error, handle)


def _allowed(app: FastAPI, path: str) -> str:
    """The methods the OpenAPI document lists for ``path`` (and HEAD with GET), so the
    ``Allow`` of a 405 says what the document says. (Starlette's names only the methods
    of the first route of the path, where each method has a route of its own.)"""
    table: list[tuple[re.Pattern[str], str]] | None = getattr(app.state, "allow", None)
    if table is None:
        table = []
        for template, operations in app.openapi()["paths"].items():
            methods = {method.upper() for method in operations}
            if "GET" in methods:
                methods.add("HEAD")
            table.append((compile_path(template)[0], ", ".join(sorted(methods))))
        app.state.allow = table
    return next((methods for pattern, methods in table if pattern.match(path)), "")


def declare(router: APIRouter) -> None:
    """Declare in the OpenAPI document the problem documents each operation may answer.

    By the route: the tenant and admin routes (``/v1/``) answer 401, 403, 422 and 503;
    those with a body 400, 413 and 415 too; those whose path names an object 404. What
    only some routes answer (409) each declares itself.
    """
    for route in router.routes:
        if not isinstance(route, APIRoute) or not route.path.startswith("/v1/"):
            continue
        statuses = [401, 403, 422, 503]
        if route.body_field is not None or "requestBody" in (route.openapi_extra or {}):
            statuses += [400, 413, 415]
        if "{" in route.path:
            statuses.append(404)
        route.responses = {**responses(*statuses), **route.responses}


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
