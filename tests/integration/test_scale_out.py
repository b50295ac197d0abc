"""API and worker processes' worth of tidings on one PostgreSQL database.

Each ``Tidings`` here is what one process runs; they share nothing but the
database, as separate processes on separate machines would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web

from support.api import bearer, new_endpoint, new_tenant, send
from support.receivers import Receiver
from support.served import client_of, started
from support.waiting import wait_for
from tidings.app import Role, Tidings
from tidings.config import Settings
from tidings.engine.dispatcher import IDLE_WAKEUP_S
from tidings.store import open_store

Start = Callable[[Role], Any]


@pytest.fixture
async def start(
    postgres_url: str, make_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[[Role], Any]]:
    """``await start(role)``: another process's worth of tidings on the test's database."""
    async with contextlib.AsyncExitStack() as stack:

        async def one(role: Role) -> Tidings:
            settings = make_settings(database_url=postgres_url)
            return await stack.enter_async_context(started(settings, role=role))

        yield one


def _client(app: Tidings) -> httpx.AsyncClient:
    """The HTTP server of ``app``'s process, as ``tidings serve`` or ``tidings worker`` runs it."""
    return client_of(app, operations_only=app.role == "worker")


async def test_an_api_process_and_two_workers_deliver_every_message_once(
    start: Start, receiver: Receiver
) -> None:
    api: Tidings = await start("api")
    await start("worker")
    await start("worker")
    async with _client(api) as client:
        _, key = await new_tenant(client)
        await new_endpoint(client, key, receiver.url, max_in_flight=5)
        sent = {(await send(client, key, payload={"n": n}))["id"] for n in range(60)}

        await wait_for(lambda: len(receiver.received) >= 60)
        await asyncio.sleep(0.3)
        delivered = [r.headers["webhook-id"] for r in receiver.received]
        assert sorted(delivered) == sorted(sent)  # each once: no two workers took one
        page = await client.get("/v1/deliveries?state=succeeded&limit=100", headers=bearer(key))
        assert len(page.json()["data"]) == 60


async def test_a_worker_hears_of_new_work_without_waiting_for_its_next_look(
    start: Start, receiver: Receiver
) -> None:
    """The API process's commit is a NOTIFY: an idle worker sends at once, not at its
    next look at the store (every IDLE_WAKEUP_S)."""
    api: Tidings = await start("api")
    await start("worker")
    async with _client(api) as client:
        _, key = await new_tenant(client)
        await new_endpoint(client, key, receiver.url)
        await send(client, key)
        await wait_for(lambda: len(receiver.received) == 1)
        await asyncio.sleep(IDLE_WAKEUP_S + 0.5)  # the worker is idle now

        started = time.monotonic()
        await send(client, key)
        await wait_for(lambda: len(receiver.received) == 2)
        assert time.monotonic() - started < IDLE_WAKEUP_S / 2


async def test_a_second_worker_shares_an_endpoint_the_first_holds_at_its_cap(
    start: Start, receiver: Receiver
) -> None:
    """The first worker to claim takes all of the endpoint's max_in_flight. Its attempts
    end without a word to the other worker, which would sleep for IDLE_WAKEUP_S; held
    back at the cap with work waiting, it looks again at once and takes its share."""

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.02)
        return web.Response(status=204)

    receiver.behaviour = slow
    api: Tidings = await start("api")
    async with _client(api) as client:
        _, key = await new_tenant(client)
        await new_endpoint(client, key, receiver.url, max_in_flight=4)
        for n in range(200):
            await send(client, key, payload={"n": n})
    # A backlog, and no new message to announce: only the cap tells the second worker.
    workers: list[Tidings] = [await start("worker"), await start("worker")]

    def succeeded(app: Tidings) -> float:
        value = app.metrics.registry.get_sample_value(
            "tidings_deliveries_total", {"outcome": "succeeded"}
        )
        return value or 0.0

    # 200 at 4 in flight and 20 ms each: about a second, well inside IDLE_WAKEUP_S. A
    # slot frees every 5 ms and the first worker refills it within a few: the second,
    # looking every CAPPED_RETRY_S, finds one free often enough to take a share.
    await wait_for(lambda: sum(map(succeeded, workers)) == 200, within=IDLE_WAKEUP_S)
    shares = [succeeded(worker) for worker in workers]
    assert min(shares) > 0, shares


async def test_one_process_leads_and_another_takes_over_when_it_is_gone(
    postgres_url: str,
) -> None:
    first, second = open_store(postgres_url), open_store(postgres_url)
    assert await first.lead() is True
    assert await second.lead() is False
    assert await first.lead() is True  # it keeps it
    await first.close()  # its session ends, as a process's does when it dies
    assert await second.lead() is True
    await second.close()


async def test_an_api_process_runs_no_delivery_engine(start: Start, receiver: Receiver) -> None:
    api: Tidings = await start("api")
    async with _client(api) as client:
        _, key = await new_tenant(client)
        await new_endpoint(client, key, receiver.url)
        message = await send(client, key)
        await asyncio.sleep(1.0)
        assert receiver.received == []  # accepted and kept, for a worker
        detail = await client.get(f"/v1/messages/{message['id']}", headers=bearer(key))
        assert [d["state"] for d in detail.json()["deliveries"]] == ["pending"]

        await start("worker")
        await wait_for(lambda: len(receiver.received) == 1)


async def test_a_worker_serves_only_its_health_and_metrics(start: Start) -> None:
    worker: Tidings = await start("worker")
    async with _client(worker) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.post("/v1/messages", json={})).status_code == 404
