"""Each endpoint's circuit breaker, in the engine, against a real receiver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from support.api import bearer, delivery_states, new_endpoint, new_tenant, send
from support.receivers import Receiver, ok, status
from support.served import served
from support.stores import BOTH_BACKENDS
from support.waiting import wait_for
from tidings.app import Tidings
from tidings.clock import FakeClock
from tidings.config import Settings

IMMEDIATE_RETRIES = [0] * 20  # without a breaker: 20 attempts a message, at once

pytestmark = BOTH_BACKENDS


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
async def held_time(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> AsyncIterator[tuple[Tidings, httpx.AsyncClient]]:
    """A tidings whose clock moves only when the test moves it."""
    async with served(make_settings(), clock) as both:
        yield both


async def test_a_down_receiver_gets_a_bounded_number_of_attempts_then_one_probe(
    held_time: tuple[Tidings, httpx.AsyncClient], clock: FakeClock, receiver: Receiver
) -> None:
    app, client = held_time
    receiver.behaviour = status(503)
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(
        client, key, receiver.url, max_in_flight=2, retry_schedule=IMMEDIATE_RETRIES
    )
    assert endpoint["breaker"] == {"state": "closed", "opened_at": None, "retry_at": None}

    messages = [await send(client, key) for _ in range(10)]
    await wait_for(lambda: len(receiver.received) >= 5)
    await asyncio.sleep(1.0)  # would be 200 attempts by now without the breaker
    while_open = len(receiver.received)
    await asyncio.sleep(0.5)

    # Five failures in a row open it; at most the two in flight then also finish.
    assert 5 <= while_open <= 7
    assert len(receiver.received) == while_open
    states = await _states(client, key, messages)
    assert states == {"pending"}  # waiting, none dead: no retries were spent
    shown = (await client.get(f"/v1/endpoints/{endpoint['id']}", headers=bearer(key))).json()
    assert shown["breaker"]["state"] == "open"
    opened_at = datetime.fromisoformat(shown["breaker"]["opened_at"])
    assert datetime.fromisoformat(shown["breaker"]["retry_at"]) - opened_at == timedelta(seconds=30)

    receiver.behaviour = ok
    clock.advance(29)
    app.dispatcher.wake()
    await asyncio.sleep(0.3)
    assert len(receiver.received) == while_open  # still cooling down

    clock.advance(2)
    app.dispatcher.wake()

    async def all_succeeded() -> bool:
        return await _states(client, key, messages) == {"succeeded"}

    await wait_for(all_succeeded)
    # One probe, then the other nine: no message was sent twice after the receiver
    # came back.
    assert len(receiver.received) == while_open + 10
    listed = (await client.get("/v1/endpoints", headers=bearer(key))).json()["data"]
    assert listed[0]["breaker"]["state"] == "closed"


async def _states(client: httpx.AsyncClient, key: str, messages: list[dict[str, Any]]) -> set[str]:
    return {s for m in messages for s in await delivery_states(client, key, m["id"])}


async def test_an_open_breaker_with_nothing_to_send_leaves_the_dispatcher_idle(
    held_time: tuple[Tidings, httpx.AsyncClient], clock: FakeClock, receiver: Receiver
) -> None:
    """Past its cool-down, a breaker with no work waiting must not make the
    dispatcher spin: the probe goes with the next delivery."""
    app, client = held_time
    receiver.behaviour = status(503)
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url, max_in_flight=1, retry_schedule=[0] * 5)
    message = await send(client, key)
    await wait_for(lambda: len(receiver.received) == 5)  # 5 failures: open, and dead
    await wait_for(lambda: _dead(client, key, message))
    clock.advance(31)
    app.dispatcher.wake()

    cpu_before = time.process_time()
    await asyncio.sleep(1.0)
    assert time.process_time() - cpu_before < 0.3  # idle, not a busy loop

    receiver.behaviour = ok
    probe = await send(client, key)
    await wait_for(lambda: _succeeded(client, key, probe))


async def _dead(client: httpx.AsyncClient, key: str, message: dict[str, Any]) -> bool:
    return await delivery_states(client, key, message["id"]) == ["dead"]


async def _succeeded(client: httpx.AsyncClient, key: str, message: dict[str, Any]) -> bool:
    return await delivery_states(client, key, message["id"]) == ["succeeded"]
