"""Builds the FastAPI application around a :class:`~tidings.app.Tidings`."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.routing import Route

from tidings import __version__
from tidings.api import endpoints, health, messages, problems, tenants
from tidings.api.auth import KeyCache
from tidings.app import Tidings


def create_api(tidings: Tidings) -> FastAPI:
    """The HTTP API of ``tidings``; the caller starts and stops ``tidings`` itself."""
    api = FastAPI(
        title="tidings",
        version=__version__,
        description="Durable, signed, retried notification delivery.",
        docs_url="/docs",
        redoc_url=None,
    )
    api.state.tidings = tidings
    api.state.keys = KeyCache()
    problems.install(api)
    api.add_middleware(problems.BodyLimit, max_bytes=tidings.settings.max_body_bytes)
    # The ingest route is served by Starlette directly, ahead of FastAPI's routing
    # (which costs more per request than the rest of ingest); FastAPI's route of
    # the same path, with the same handler, stays for the OpenAPI document.
    api.router.routes.insert(
        0, Route("/v1/messages", messages.create_message, methods=["POST"], name="ingest")
    )
    for module in (health, tenants, endpoints, messages):
        api.include_router(module.router)
    return api
