"""The engine against real receivers: retries, Retry-After, 410, redirects, hangs, closes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web

from support.api import bearer, message_of, new_endpoint, new_tenant, send, settled
from support.receivers import Receiver, close_connection, hang, ok, sequence, status
from support.stores import BOTH_BACKENDS
from support.waiting import wait_for
from tidings.app import Tidings

pytestmark = BOTH_BACKENDS

FAST = [0, 0.1, 0.1, 0.1]


async def test_a_failure_is_retried_until_it_succeeds_with_the_same_webhook_id(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.behaviour = sequence(status(503), status(500), ok)
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url, retry_schedule=FAST)
    receiver.secret = endpoint["secret"]

    message = await send(client, key)
    delivery = await settled(client, key, message["id"], "succeeded")

    assert delivery["attempts"] == 3
    assert [a["status_code"] for a in delivery["attempt_log"]] == [503, 500, 204]
    assert {r.webhook_id for r in receiver.received} == {message["id"]}
    assert all(r.verified for r in receiver.received)


async def test_retries_stop_when_the_schedule_is_exhausted(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.behaviour = status(500, body="database is down")
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url, retry_schedule=[0, 0.05])

    message = await send(client, key)
    delivery = await settled(client, key, message["id"], "dead")

    assert delivery["dead_reason"] == "exhausted: 2 attempts, last: HTTP 500"
    assert delivery["attempt_log"][0]["response_excerpt"] == "database is down"
    assert len(receiver.received) == 2


async def test_retry_after_replaces_the_scheduled_delay(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.behaviour = sequence(status(429, headers={"Retry-After": "1"}), ok)
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url, retry_schedule=[0, 3600])

    message = await send(client, key)
    await settled(client, key, message["id"], "succeeded")

    first, second = receiver.received
    assert 0.9 <= second.at - first.at < 3.0  # one second, not the scheduled hour


async def test_410_gone_disables_the_endpoint_and_ends_its_waiting_deliveries(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    answer = asyncio.Event()  # the 410 comes once both messages are in

    async def gone_when_told(request: web.Request) -> web.StreamResponse:
        await answer.wait()
        return web.Response(status=410)

    receiver.behaviour = gone_when_told
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url, max_in_flight=1)

    first = await send(client, key)
    second = await send(client, key)
    answer.set()
    gone = await settled(client, key, first["id"], "dead")
    waiting = await settled(client, key, second["id"], "dead")

    assert gone["dead_reason"] == "gone: endpoint answered 410"
    assert waiting["dead_reason"].startswith("disabled: ")
    assert waiting["attempts"] == 0
    response = await client.get(f"/v1/endpoints/{endpoint['id']}", headers=bearer(key))
    assert response.json()["state"] == "disabled"
    later = await send(client, key)
    assert later["deliveries"] == []


async def test_redirects_are_not_followed(
    client: httpx.AsyncClient, make_receiver: Callable[..., Any]
) -> None:
    target: Receiver = await make_receiver()
    source: Receiver = await make_receiver(behaviour=status(307, headers={"Location": target.url}))
    _, key = await new_tenant(client)
    await new_endpoint(client, key, source.url, retry_schedule=[0])

    message = await send(client, key)
    delivery = await settled(client, key, message["id"], "dead")

    assert delivery["last_status"] == 307
    assert target.received == []


async def test_a_closed_connection_is_retried(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.behaviour = sequence(close_connection, ok)
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url, retry_schedule=FAST)

    message = await send(client, key)
    delivery = await settled(client, key, message["id"], "succeeded")

    assert delivery["attempt_log"][0]["status_code"] is None
    assert delivery["attempt_log"][0]["error"]


@pytest.fixture
async def patient_client(
    make_client: Callable[..., Awaitable[httpx.AsyncClient]],
) -> httpx.AsyncClient:
    """The API of a tidings whose attempts wait 30 s for an answer: no timeout
    (and so no retry) can happen during a test, however slow the machine."""
    return await make_client(request_timeout=timedelta(seconds=30), lease=timedelta(minutes=1))


async def test_a_hung_receiver_holds_only_its_own_slots(
    patient_client: httpx.AsyncClient, make_receiver: Callable[..., Any]
) -> None:
    client = patient_client
    open_now = most_open = 0

    async def hang_counting(request: web.Request) -> web.StreamResponse:
        nonlocal open_now, most_open
        open_now += 1
        most_open = max(most_open, open_now)
        try:
            return await hang(request)
        finally:
            open_now -= 1

    hung: Receiver = await make_receiver(behaviour=hang_counting)
    healthy: Receiver = await make_receiver()
    _, key = await new_tenant(client)
    await new_endpoint(client, key, hung.url, event_types=["slow"], max_in_flight=3)
    await new_endpoint(client, key, healthy.url, event_types=["fast"])

    await asyncio.gather(*(send(client, key, event_type="slow") for _ in range(20)))
    await asyncio.gather(*(send(client, key, event_type="fast") for _ in range(50)))

    await wait_for(lambda: len(healthy.received) == 50)
    assert most_open == 3  # its three slots, and no more


async def test_a_backlog_on_one_endpoint_does_not_delay_another(
    client: httpx.AsyncClient, make_receiver: Callable[..., Any]
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.05)
        return web.Response(status=204)

    busy: Receiver = await make_receiver(behaviour=slow)
    quiet: Receiver = await make_receiver()
    _, key = await new_tenant(client)
    await new_endpoint(client, key, busy.url, event_types=["bulk"], max_in_flight=2)
    await new_endpoint(client, key, quiet.url, event_types=["single"])
    await asyncio.gather(*(send(client, key, event_type="bulk") for _ in range(300)))
    await wait_for(lambda: len(busy.received) > 0)

    await send(client, key, event_type="single")

    await wait_for(lambda: len(quiet.received) == 1)
    assert len(busy.received) < 300  # the backlog is still being worked through


async def test_a_delivery_to_a_refused_address_dies_without_a_connection(
    tidings: Tidings, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    """The guard is checked at delivery time too: here an endpoint on 127.0.0.2 is
    accepted at creation (the allow-list has it), then the allow-list loses it."""
    _, key = await new_tenant(client)
    url = receiver.url.replace("127.0.0.1", "127.0.0.2")
    await new_endpoint(client, key, url)
    tidings.guard.__init__(allow=())  # type: ignore[misc]  # the operator narrowed the list

    message = await send(client, key)
    delivery = await settled(client, key, message["id"], "dead")

    assert delivery["dead_reason"].startswith("blocked: ")
    assert "loopback" in delivery["dead_reason"]
    assert receiver.received == []


async def test_a_rate_limit_paces_the_endpoint(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url, rate_limit_per_s=10)

    await asyncio.gather(*(send(client, key) for _ in range(15)))
    await wait_for(lambda: len(receiver.received) == 15)

    arrivals = sorted(r.at for r in receiver.received)
    # A burst of ten, then one every tenth of a second: the last five need ~0.5 s.
    assert arrivals[-1] - arrivals[0] >= 0.4


async def test_a_replayed_delivery_keeps_its_attempt_history(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.behaviour = status(503)
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url, retry_schedule=[0, 0.05])
    message = await send(client, key)
    dead = await settled(client, key, message["id"], "dead")

    receiver.behaviour = ok
    response = await client.post(
        "/v1/deliveries/replay", json={"ids": [dead["id"]]}, headers=bearer(key)
    )
    assert response.json() == {"replayed": 1}
    delivery = await settled(client, key, message["id"], "succeeded")

    assert delivery["attempts"] == 3
    assert [a["number"] for a in delivery["attempt_log"]] == [1, 2, 3]
    assert [a["status_code"] for a in delivery["attempt_log"]] == [503, 503, 204]


async def test_the_first_entry_of_a_schedule_delays_the_first_attempt(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url, retry_schedule=[3600])

    message = await send(client, key)
    await asyncio.sleep(0.3)

    assert receiver.received == []
    [delivery] = (await message_of(client, key, message["id"]))["deliveries"]
    assert delivery["state"] == "pending"
    delay = datetime.fromisoformat(delivery["next_attempt_at"]) - datetime.fromisoformat(
        delivery["created_at"]
    )
    assert delay == timedelta(hours=1)


async def test_a_schedule_that_delays_the_first_attempt_is_kept_to_time(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    """The first entry delays even the first attempt; the dispatcher wakes for it
    rather than at its idle safety net (5 s)."""
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url, retry_schedule=[1])
    await asyncio.sleep(0.2)  # the dispatcher has read its endpoints and gone to sleep

    sent_at = time.monotonic()
    await send(client, key)
    await wait_for(lambda: len(receiver.received) == 1, within=3.5)

    assert 0.7 <= receiver.received[0].at - sent_at < 2.5
