"""Builds the HTTP API (FastAPI) around a :class:`~tidings.app.Tidings`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tidings import __version__
from tidings.api import emails, endpoints, health, messages, nul, problems, templates, tenants
from tidings.api.nul import NulGuard
from tidings.app import Tidings


def create_api(tidings: Tidings, *, operations_only: bool = False) -> ASGIApp:
    """The HTTP API of ``tidings``; the caller starts and stops ``tidings`` itself.
    ``operations_only``: only /healthz, /readyz and /metrics (a worker's)."""
    api = _routes(operations_only=operations_only)
    api.state.tidings = tidings
    if operations_only:
        return api
    served = NulGuard(IngestFirst(api))
    return problems.BodyLimit(served, max_bytes=tidings.settings.max_body_bytes)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document ``/openapi.json`` serves, without a running tidings."""
    return _routes(operations_only=False).openapi()


def _routes(*, operations_only: bool) -> FastAPI:
    api = FastAPI(
        title="tidings",
        version=__version__,
        description="Durable, signed, retried notification delivery.",
        docs_url="/docs",
        redoc_url=None,
    )
    problems.install(api)
    everything = (health, tenants, endpoints, messages, templates, emails)
    for module in (health,) if operations_only else everything:
        problems.declare(module.router)
        api.include_router(module.router)
    build = api.openapi

    def documented() -> dict[str, Any]:
        document = build()  # built once, then cached by FastAPI
        nul.declare(document)
        return document

    api.openapi = documented  # type: ignore[method-assign]
    return api


class IngestFirst:
    """``POST /v1/messages`` served ahead of FastAPI; everything else by FastAPI.

    Ingest is the hot path, and FastAPI's middleware, routing and dependency
    machinery cost more per request than the rest of ingest together. The
    handler is the one FastAPI's route of the same path declares (that route
    documents it in ``/openapi.json``), and its errors become the same problem
    documents.
    """

    def __init__(self, api: FastAPI) -> None:
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/messages" or scope["method"] != "POST":
            await self.api(scope, receive, send)
            return
        scope["app"] = self.api  # what request.app.state is read from
        request = Request(scope, receive)
        try:
            response = await messages.create_message(request)
        except Exception as exc:
            response = problems.problem_for(exc, scope["path"])
        await response(scope, receive, send)
