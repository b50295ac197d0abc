"""Liveness, readiness and metrics: unauthenticated, for orchestrators and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tidings.api import problems
from tidings.api.auth import App

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses=problems.responses(503))
async def readyz(app: App) -> dict[str, str]:
    """The store answers (otherwise a 503 problem document)."""
    await app.store.ping()
    return {"status": "ready"}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(app: App) -> Response:
    return Response(generate_latest(app.metrics.registry), media_type=CONTENT_TYPE_LATEST)
