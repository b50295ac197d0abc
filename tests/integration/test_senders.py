"""Webhooks sent through sender processes (``TIDINGS_SENDERS``), not the main process."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import httpx
import pytest
from aiohttp import web

from support.api import new_endpoint, new_tenant, send, settled
from support.receivers import Receiver, close_connection, status
from support.waiting import wait_for
from tidings.app import Tidings
from tidings.channels.senders import SenderPool
from tidings.config import Settings


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(senders=2)


def _pool(tidings: Tidings) -> SenderPool:
    assert tidings.senders is not None
    return tidings.senders


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited but is not yet reaped; it counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


async def test_a_sender_process_delivers_signed_with_the_message_id(
    tidings: Tidings, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    pids = _pool(tidings).pids
    assert len(pids) == 2
    assert os.getpid() not in pids
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url)
    receiver.secret = endpoint["secret"]

    messages = [await send(client, key, payload={"n": n}) for n in range(6)]
    for message in messages:
        await settled(client, key, message["id"], "succeeded")

    assert sorted(r.webhook_id for r in receiver.received) == sorted(m["id"] for m in messages)
    # Verified with the endpoint's secret: the body, id and timestamp arrived intact.
    assert all(r.verified for r in receiver.received)


async def test_what_the_receiver_did_comes_back_from_the_sender(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url, retry_schedule=[0])

    receiver.behaviour = status(503, body="down for maintenance")
    answered = await settled(client, key, (await send(client, key))["id"], "dead")
    receiver.behaviour = close_connection
    closed = await settled(client, key, (await send(client, key))["id"], "dead")

    assert answered["last_status"] == 503
    assert answered["dead_reason"].startswith("exhausted")
    assert closed["last_status"] is None
    assert closed["last_error"].startswith("connection_closed")


async def test_a_killed_sender_is_replaced_and_its_deliveries_are_sent_again(
    tidings: Tidings, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    """The lease (5 s in tests) brings back what the killed sender held."""
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url)
    answer = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await answer.wait()
        return web.Response(status=204)

    receiver.behaviour = held
    messages = [await send(client, key) for _ in range(4)]
    await wait_for(lambda: len(receiver.received) == 4)
    pool = _pool(tidings)
    before = pool.pids
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: len(pool.pids) == 2 and set(pool.pids).isdisjoint(before))
    answer.set()

    for message in messages:
        await settled(client, key, message["id"], "succeeded")
    ids = [r.webhook_id for r in receiver.received]
    assert set(ids) == {m["id"] for m in messages}
    assert len(ids) == 8  # each was sent again once: the first answers were never read


async def test_stopping_ends_the_sender_processes(settings: Settings) -> None:
    app = Tidings(settings)
    await app.start()
    pids = _pool(app).pids
    assert pids
    assert all(_alive(pid) for pid in pids)

    await app.stop()

    assert not any(_alive(pid) for pid in pids)
