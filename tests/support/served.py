"""A tidings started in this process, and a client of its API (over ASGI: no socket).

The fixtures built from these (``tidings``, ``client``, ``make_client``, ``smtp_app``,
``smtp_client``) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from tidings.api.app import create_api
from tidings.app import Role, Tidings
from tidings.clock import Clock
from tidings.config import Settings


def client_of(
    app: Tidings, *, operations_only: bool = False, raise_app_exceptions: bool = True
) -> httpx.AsyncClient:
    """A client of ``app``'s API: only its operations routes (``/metrics``, ``/healthz``,
    ``/readyz``, as ``tidings worker`` serves them) with ``operations_only``; an unhandled
    error raised in the test (the default) or answered as the app's 500."""
    asgi = httpx.ASGITransport(
        app=create_api(app, operations_only=operations_only),
        raise_app_exceptions=raise_app_exceptions,
    )
    return httpx.AsyncClient(transport=asgi, base_url="http://tidings")


@contextlib.asynccontextmanager
async def started(
    settings: Settings, clock: Clock | None = None, role: Role = "all"
) -> AsyncIterator[Tidings]:
    """A started tidings, stopped at the end."""
    app = Tidings(settings, clock=clock, role=role)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@contextlib.asynccontextmanager
async def served(
    settings: Settings, clock: Clock | None = None, role: Role = "all"
) -> AsyncIterator[tuple[Tidings, httpx.AsyncClient]]:
    """A started tidings and a client of its API, both stopped at the end."""
    async with started(settings, clock, role) as app, client_of(app) as client:
        yield app, client
