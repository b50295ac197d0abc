"""Loopback webhook receivers: real aiohttp servers on 127.0.0.1 that verify every
delivery's Standard Webhooks signature with the reference library, and the answers a
test can give through them."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """``app`` served on 127.0.0.1 until the end; its port. (aiohttp's TestServer, which
    cancels a handler whose client went away, as a slow answer's does.)"""
    async with TestServer(app, host="127.0.0.1") as server:
        assert server.port is not None
        yield server.port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    verified: bool | None = None

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(document: object, status: int = 200) -> web.Response:
    """``document`` as a JSON answer."""
    return web.Response(body=orjson.dumps(document), status=status, content_type="application/json")


async def ok(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


def status(code: int, headers: dict[str, str] | None = None, body: str = "") -> Behaviour:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers=headers, text=body)

    return answer


async def hang(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def close_connection(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    return web.Response(status=204)


def sequence(*behaviours: Behaviour) -> Behaviour:
    """Answer the n-th request with the n-th behaviour, then keep the last."""
    calls = 0

    async def answer(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        behaviour = behaviours[min(calls, len(behaviours) - 1)]
        calls += 1
        return await behaviour(request)

    return answer


class Jittery:
    """Answer 204 after 0-5 ms, so attempts are genuinely in flight; count those being handled."""

    def __init__(self) -> None:
        self.handling = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.handling += 1
        try:
            await asyncio.sleep(random.uniform(0, 0.005))
        finally:
            self.handling -= 1
        return web.Response(status=204)


@dataclass
class Receiver:
    """A webhook receiver whose answers a test sets with ``behaviour``."""

    behaviour: Behaviour = ok
    secret: str | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        item = Received(dict(request.headers.items()), body, time.monotonic())
        item.headers = {k.lower(): v for k, v in request.headers.items()}
        if self.secret:
            try:
                Webhook(self.secret).verify(body, item.headers)
                item.verified = True
            except Exception:
                item.verified = False
        self.received.append(item)
        return await self.behaviour(request)


T = TypeVar("T")


def first_and_repeats(items: list[T], key: Callable[[T], str]) -> tuple[dict[str, T], list[T]]:
    """Each ``key``'s first arrival, and every later arrival of one (duplicates)."""
    first: dict[str, T] = {}
    repeats: list[T] = []
    for item in items:
        if key(item) in first:
            repeats.append(item)
        else:
            first[key(item)] = item
    return first, repeats
