"""Endpoint health end to end: alarms, owner notices by real SMTP, suspension that
holds, resumption that drains, with a clock the tests move by hand.

The health monitor's periodic round is run by the tests (``app.health.evaluate()``)
after they move the clock; its own loop is set to wait an hour between rounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from support.api import admin, bearer, delivery_states, endpoint_of, new_endpoint, new_tenant, send
from support.receivers import Receiver, hang, ok, status
from support.served import served
from support.smtp import Mailbox, SmtpController
from support.stores import BOTH_BACKENDS
from support.waiting import wait_for
from tidings.app import Tidings
from tidings.clock import FakeClock
from tidings.config import Settings

EVENTS = ["endpoint.warning", "endpoint.critical", "endpoint.suspended", "endpoint.resumed"]
# A breaker that never opens within these tests' few attempts: every attempt goes.
NO_BREAKER = {
    "breaker_consecutive_failures": 1000,
    "breaker_failure_ratio": 1.0,
    "breaker_min_attempts": 100,
}

pytestmark = BOTH_BACKENDS


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(second=0, microsecond=0))


@pytest.fixture
async def held_time(
    make_settings: Callable[..., Settings], clock: FakeClock, smtp: SmtpController
) -> AsyncIterator[tuple[Tidings, httpx.AsyncClient]]:
    """A tidings with a held clock that mails its owners through ``smtp``."""
    settings = make_settings(
        smtp_url=smtp.url, health_interval=timedelta(hours=1), public_url="https://tidings.example"
    )
    async with served(settings, clock) as both:
        yield both


async def _tenant(client: httpx.AsyncClient, **policy: Any) -> tuple[str, str]:
    tenant_id, key = await new_tenant(client)
    response = await client.patch(
        f"/v1/tenants/{tenant_id}", json={"alarm_policy": policy}, headers=admin()
    )
    assert response.status_code == 200, response.text
    return tenant_id, key


def _notices(mailbox: Mailbox) -> list[tuple[str, str]]:
    """(subject, text) of every email the SMTP server accepted."""
    return [
        (str(m["subject"]), m.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        for m in mailbox.received
    ]


def _events(receiver: Receiver) -> list[dict[str, Any]]:
    return [orjson.loads(r.body) for r in receiver.received]


async def _all_states(client: httpx.AsyncClient, key: str, ids: list[str]) -> list[str]:
    return [s for m in ids for s in await delivery_states(client, key, m)]


async def _all_in(client: httpx.AsyncClient, key: str, ids: list[str], state: str) -> bool:
    """Whether every delivery of the messages ``ids`` is in ``state``."""
    return set(await _all_states(client, key, ids)) == {state}


# the whole story ------------------------------------------------------------------------


async def test_a_receiver_that_goes_down_and_comes_back(
    held_time: tuple[Tidings, httpx.AsyncClient],
    clock: FakeClock,
    smtp: SmtpController,
    receiver: Receiver,
    make_receiver: Callable[..., Any],
) -> None:
    """The breaker bounds the attempts while it is down; the owner is warned once;
    it is suspended at the critical threshold; nothing is lost; the drain is paced."""
    app, client = held_time
    mailbox = smtp.mailbox
    ops: Receiver = await make_receiver()
    _, key = await _tenant(
        client, critical_silence_s=120, critical_silence_failed_attempts=6, drain_rate_per_s=10
    )
    endpoint = await new_endpoint(client, key, receiver.url, max_in_flight=2)
    await new_endpoint(client, key, ops.url, event_types=EVENTS)
    receiver.behaviour = status(503)

    sent = [(await send(client, key, payload={"n": n}))["id"] for n in range(10)]
    await wait_for(lambda: len(receiver.received) >= 5)
    await asyncio.sleep(0.3)
    assert 5 <= len(receiver.received) <= 7  # the breaker opened after 5 in a row

    await app.health.evaluate()
    await wait_for(lambda: len(mailbox.received) == 1)
    subject, text = _notices(mailbox)[0]
    assert subject == f"[tidings] Your endpoint {receiver.url} is failing"
    assert endpoint["id"] in text
    assert "HTTP 503" in text
    assert "failed attempts in the last 15 min" in text
    assert f"https://tidings.example/v1/endpoints/{endpoint['id']}/resume" in text
    assert mailbox.envelopes[0][1] == ["ops@acme.example"]
    await wait_for(lambda: len(ops.received) == 1)
    warning = _events(ops)[0]
    assert warning["type"] == "endpoint.warning"
    assert warning["data"]["endpoint_id"] == endpoint["id"]
    assert warning["data"]["failed_attempts"] >= 5

    # Probes, as the cool-down doubles: 30 s, then 60 s.
    for seconds in (31, 61):
        clock.advance(seconds)
        app.dispatcher.wake()
        before = len(receiver.received)
        await wait_for(lambda before=before: len(receiver.received) == before + 1)  # type: ignore[misc]
        await app.health.evaluate()  # still a warning: no second notice
        await asyncio.sleep(0.2)
        assert (await endpoint_of(client, key, endpoint["id"]))["state"] == "active"
    down_attempts = len(receiver.received)
    assert down_attempts <= 9  # without the breaker: hundreds by now

    # Failing with no success for 2 minutes, 6+ failed attempts: critical, suspended.
    clock.advance(60)
    await app.health.evaluate()
    shown = await endpoint_of(client, key, endpoint["id"])
    assert shown["state"] == "suspended"
    assert shown["held"] == 10
    suspension = shown["suspensions"][0]
    assert suspension["suspended_by"] == "tidings"
    assert suspension["reason"].startswith("critical alarm: no success for 2 min")
    assert suspension["resumed_at"] is None
    await wait_for(lambda: len(mailbox.received) == 2)
    subject, text = _notices(mailbox)[1]
    assert subject == f"[tidings] Your endpoint {receiver.url} was suspended"
    assert "Deliveries held for it: 10" in text
    assert "resume it with your API key" in text
    assert [s for s, _ in _notices(mailbox)].count(
        subject.replace("was suspended", "is failing")
    ) == 1
    await wait_for(lambda: [e["type"] for e in _events(ops)][-1] == "endpoint.suspended")

    # While suspended nothing is attempted, and new messages are held too.
    late = (await send(client, key, payload={"n": 10}))["id"]
    clock.advance(3600)
    app.dispatcher.wake()
    await asyncio.sleep(0.3)
    assert len(receiver.received) == down_attempts
    assert set(await _all_states(client, key, [*sent, late])) == {"held"}
    samples = app.metrics.registry
    await app.health.evaluate()
    assert samples.get_sample_value("tidings_endpoint_held", {"endpoint": endpoint["id"]}) == 11
    assert samples.get_sample_value("tidings_endpoint_suspended", {"endpoint": endpoint["id"]}) == 1
    assert len(mailbox.received) == 2  # a suspended endpoint raises no alarms

    # It comes back; its owner resumes it; the held deliveries drain, in order, paced.
    receiver.behaviour = ok
    receiver.received.clear()
    resumed = await client.post(f"/v1/endpoints/{endpoint['id']}/resume", headers=bearer(key))
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["draining"] == 11
    await wait_for(lambda: len(receiver.received) == 1)
    for due in range(2, 12):  # 10 a second: one more each tenth of a second
        await asyncio.sleep(0.1)
        assert len(receiver.received) == due - 1, "the drain went faster than its pace"
        clock.advance(0.1)
        app.dispatcher.wake()
        await wait_for(lambda due=due: len(receiver.received) == due)  # type: ignore[misc]
    order = [orjson.loads(r.body)["data"]["n"] for r in receiver.received]
    assert order == list(range(11))  # in the order they were created
    assert set(await _all_states(client, key, [*sent, late])) == {"succeeded"}

    shown = await endpoint_of(client, key, endpoint["id"])
    assert shown["state"] == "active"
    assert shown["held"] == 0
    assert shown["suspensions"][0]["resumed_by"].startswith("api key tdk_")
    assert shown["suspensions"][0]["suspended_at"] == suspension["suspended_at"]
    assert shown["breaker"]["state"] == "closed"
    await wait_for(lambda: len(mailbox.received) == 3)
    assert _notices(mailbox)[2][0] == f"[tidings] Your endpoint {receiver.url} was resumed"
    await wait_for(lambda: [e["type"] for e in _events(ops)][-1] == "endpoint.resumed")
    # Exactly one warning, one suspension, one resumption.
    assert sorted(e["type"] for e in _events(ops)) == [
        "endpoint.resumed",
        "endpoint.suspended",
        "endpoint.warning",
    ]


async def test_deliveries_dead_in_the_outage_can_be_replayed_after_it(
    held_time: tuple[Tidings, httpx.AsyncClient], clock: FakeClock, receiver: Receiver
) -> None:
    app, client = held_time
    _, key = await _tenant(client, critical_dead_deliveries=3, **NO_BREAKER)
    endpoint = await new_endpoint(client, key, receiver.url, retry_schedule=[0])
    receiver.behaviour = status(500)
    start = clock.now()
    sent = [(await send(client, key))["id"] for _ in range(4)]

    await wait_for(lambda: _all_in(client, key, sent, "dead"))
    await app.health.evaluate()  # 4 dead in 30 min: critical, suspended
    assert (await endpoint_of(client, key, endpoint["id"]))["state"] == "suspended"

    receiver.behaviour = ok
    resumed = await client.post(f"/v1/endpoints/{endpoint['id']}/resume", headers=bearer(key))
    assert resumed.json()["draining"] == 0
    clock.advance(15)
    await app.health.evaluate()  # the outage's 4 dead count no more: it stays resumed
    assert (await endpoint_of(client, key, endpoint["id"]))["state"] == "active"
    until = clock.now() + timedelta(seconds=1)
    replay = await client.post(
        "/v1/deliveries/replay",
        json={
            "endpoint_id": endpoint["id"],
            "since": start.isoformat(),
            "until": until.isoformat(),
        },
        headers=bearer(key),
    )
    assert replay.status_code == 200, replay.text
    assert replay.json()["replayed"] == 4

    await wait_for(lambda: _all_in(client, key, sent, "succeeded"))


async def test_deliveries_replayed_while_suspended_are_held_and_drain_on_resumption(
    held_time: tuple[Tidings, httpx.AsyncClient], clock: FakeClock, receiver: Receiver
) -> None:
    app, client = held_time
    _, key = await _tenant(client, critical_dead_deliveries=3, **NO_BREAKER)
    endpoint = await new_endpoint(client, key, receiver.url, retry_schedule=[0])
    receiver.behaviour = status(500)
    sent = [(await send(client, key))["id"] for _ in range(3)]

    await wait_for(lambda: _all_in(client, key, sent, "dead"))
    await app.health.evaluate()
    assert (await endpoint_of(client, key, endpoint["id"]))["state"] == "suspended"

    replay = await client.post(
        "/v1/deliveries/replay", json={"endpoint_id": endpoint["id"]}, headers=bearer(key)
    )
    assert replay.json()["replayed"] == 3
    assert await _all_in(client, key, sent, "held")
    assert (await endpoint_of(client, key, endpoint["id"]))["held"] == 3
    again = await client.post(
        "/v1/deliveries/replay", json={"endpoint_id": endpoint["id"]}, headers=bearer(key)
    )
    assert again.json()["replayed"] == 0  # held already: nothing more to do

    receiver.behaviour = ok
    resumed = await client.post(f"/v1/endpoints/{endpoint['id']}/resume", headers=bearer(key))
    assert resumed.json()["draining"] == 3
    clock.advance(1)  # the drain's pace: 50 a second
    app.dispatcher.wake()
    await wait_for(lambda: _all_in(client, key, sent, "succeeded"))


async def test_a_410_to_an_attempt_in_flight_at_the_suspension_disables_the_endpoint(
    held_time: tuple[Tidings, httpx.AsyncClient], receiver: Receiver
) -> None:
    _app, client = held_time
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url, max_in_flight=1)
    answer = asyncio.Event()

    async def gone_when_told(request: web.Request) -> web.StreamResponse:
        await answer.wait()
        return web.Response(status=410)

    receiver.behaviour = gone_when_told
    first = (await send(client, key))["id"]
    await wait_for(lambda: len(receiver.received) == 1)
    second = (await send(client, key))["id"]  # waits: one in flight at a time
    response = await client.post(
        f"/v1/endpoints/{endpoint['id']}/suspend", json={"reason": "x"}, headers=bearer(key)
    )
    assert response.status_code == 200, response.text
    assert await delivery_states(client, key, second) == ["held"]

    answer.set()

    async def disabled() -> bool:
        return (await endpoint_of(client, key, endpoint["id"]))["state"] == "disabled"

    await wait_for(disabled)
    await wait_for(lambda: _all_in(client, key, [first, second], "dead"))
    assert len(receiver.received) == 1


# owner notices ----------------------------------------------------------------------------


async def test_a_warning_goes_out_at_most_once_per_url_per_day(
    held_time: tuple[Tidings, httpx.AsyncClient],
    clock: FakeClock,
    smtp: SmtpController,
    receiver: Receiver,
    make_receiver: Callable[..., Any],
) -> None:
    app, client = held_time
    mailbox = smtp.mailbox
    _, key = await _tenant(client, critical_dead_deliveries=1000, **NO_BREAKER)
    endpoint = await new_endpoint(client, key, receiver.url, retry_schedule=[0])
    receiver.behaviour = status(500)

    async def fail_five_then_evaluate() -> None:
        before = len(receiver.received)
        for _ in range(5):
            await send(client, key)
        await wait_for(lambda: len(receiver.received) == before + 5)
        await asyncio.sleep(0.1)  # the results' commit
        await app.health.evaluate()
        await asyncio.sleep(0.2)  # a notice would be on its way to the SMTP server

    await fail_five_then_evaluate()
    await wait_for(lambda: len(mailbox.received) == 1)
    await fail_five_then_evaluate()
    clock.advance(timedelta(hours=12))
    await fail_five_then_evaluate()
    clock.advance(timedelta(hours=11, minutes=59))
    await fail_five_then_evaluate()
    assert len(mailbox.received) == 1  # 23 h 59 min after the first: still one

    clock.advance(timedelta(minutes=1, seconds=1))
    await fail_five_then_evaluate()
    await wait_for(lambda: len(mailbox.received) == 2)

    # A changed URL is a new one: its first warning goes at once.
    other: Receiver = await make_receiver(behaviour=status(500))
    response = await client.patch(
        f"/v1/endpoints/{endpoint['id']}", json={"url": other.url}, headers=bearer(key)
    )
    assert response.status_code == 200, response.text
    receiver = other
    await fail_five_then_evaluate()
    await wait_for(lambda: len(mailbox.received) == 3)
    assert other.url in str(mailbox.received[2]["subject"])
    assert [s for s, _ in _notices(mailbox)].count(
        f"[tidings] Your endpoint {other.url} is failing"
    ) == 1


async def test_alert_only_tells_of_a_critical_alarm_without_suspending(
    held_time: tuple[Tidings, httpx.AsyncClient], smtp: SmtpController, receiver: Receiver
) -> None:
    app, client = held_time
    _, key = await _tenant(
        client, suspend="alert_only", critical_dead_deliveries=2, warning_failed_attempts=50
    )
    endpoint = await new_endpoint(client, key, receiver.url, retry_schedule=[0])
    receiver.behaviour = status(500)
    for _ in range(2):
        await send(client, key)
    await wait_for(lambda: len(receiver.received) == 2)
    await asyncio.sleep(0.1)
    await app.health.evaluate()
    await app.health.evaluate()
    await wait_for(lambda: len(smtp.mailbox.received) == 1)
    await asyncio.sleep(0.2)
    assert _notices(smtp.mailbox)[0][0] == f"[tidings] Your endpoint {receiver.url} is down"
    assert "2 deliveries died in the last 30 min" in _notices(smtp.mailbox)[0][1]
    assert len(smtp.mailbox.received) == 1  # once a day, like a warning
    assert (await endpoint_of(client, key, endpoint["id"]))["state"] == "active"


async def test_an_owner_notice_is_not_a_status_callback_of_the_tenant(
    held_time: tuple[Tidings, httpx.AsyncClient],
    smtp: SmtpController,
    receiver: Receiver,
    make_receiver: Callable[..., Any],
) -> None:
    """tidings' own emails to owners publish no ``email.delivered`` to the tenant."""
    _app, client = held_time
    everything: Receiver = await make_receiver()
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url)
    await new_endpoint(client, key, everything.url)  # every event type but operational ones
    response = await client.post(
        f"/v1/endpoints/{endpoint['id']}/suspend",
        json={"reason": "maintenance"},
        headers=bearer(key),
    )
    assert response.status_code == 200, response.text
    await wait_for(lambda: len(smtp.mailbox.received) == 1)
    assert "Why: maintenance" in _notices(smtp.mailbox)[0][1]
    await asyncio.sleep(0.5)
    assert everything.received == []


async def test_notices_of_a_suspension_by_hand_and_of_the_resumption_give_the_counts(
    held_time: tuple[Tidings, httpx.AsyncClient], smtp: SmtpController, receiver: Receiver
) -> None:
    _app, client = held_time
    _, key = await _tenant(client, critical_dead_deliveries=1000, **NO_BREAKER)
    endpoint = await new_endpoint(client, key, receiver.url, retry_schedule=[0, 3600])
    receiver.behaviour = status(500)
    for _ in range(4):
        await send(client, key)
    await wait_for(lambda: len(receiver.received) == 4)
    await asyncio.sleep(0.1)  # the results' commit: 4 failed, each retried in an hour

    suspended = await client.post(
        f"/v1/endpoints/{endpoint['id']}/suspend", json={"reason": "x"}, headers=bearer(key)
    )
    assert suspended.status_code == 200, suspended.text
    await wait_for(lambda: len(smtp.mailbox.received) == 1)
    text = _notices(smtp.mailbox)[0][1]
    assert "Failed attempts in the alarm window: 4" in text
    assert "Deliveries held for it: 4" in text
    assert "HTTP 500" in text

    await client.post(f"/v1/endpoints/{endpoint['id']}/resume", headers=bearer(key))
    await wait_for(lambda: len(smtp.mailbox.received) == 2)
    subject, text = _notices(smtp.mailbox)[1]
    assert subject.endswith("was resumed")
    assert "Failed attempts in the alarm window: 4" in text  # the outage's
    assert "Deliveries held for it: 4" in text
    assert "Its 4 held deliveries are being" in text


# suspension: retention, automatic resumption ----------------------------------------------


async def test_held_deliveries_past_their_retention_die_as_expired_and_are_counted(
    held_time: tuple[Tidings, httpx.AsyncClient], clock: FakeClock, receiver: Receiver
) -> None:
    app, client = held_time
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url)
    await client.post(
        f"/v1/endpoints/{endpoint['id']}/suspend", json={"reason": "moving"}, headers=bearer(key)
    )
    old = (await send(client, key))["id"]
    clock.advance(timedelta(days=6))
    young = (await send(client, key))["id"]
    expired = app.metrics.registry.get_sample_value(
        "tidings_deliveries_dead_total", {"reason": "expired"}
    )

    clock.advance(timedelta(days=1, seconds=1))
    await app.health.evaluate()
    detail = (await client.get(f"/v1/messages/{old}", headers=bearer(key))).json()
    assert detail["deliveries"][0]["state"] == "dead"
    assert detail["deliveries"][0]["dead_reason"] == "expired: held for longer than 7 days"
    assert await delivery_states(client, key, young) == ["held"]
    assert (
        app.metrics.registry.get_sample_value(
            "tidings_deliveries_dead_total", {"reason": "expired"}
        )
        == (expired or 0) + 1
    )
    assert receiver.received == []


async def test_auto_resume_after_a_signed_health_check_answered_in_time(
    held_time: tuple[Tidings, httpx.AsyncClient], clock: FakeClock, receiver: Receiver
) -> None:
    app, client = held_time
    _, key = await _tenant(
        client, auto_resume=True, breaker_cool_down_s=30, critical_dead_deliveries=1, **NO_BREAKER
    )
    endpoint = await new_endpoint(client, key, receiver.url, retry_schedule=[0])
    receiver.secret = endpoint["secret"]
    receiver.behaviour = status(503)
    dead = (await send(client, key))["id"]
    await wait_for(lambda: _all_in(client, key, [dead], "dead"))
    await app.health.evaluate()  # one dead: critical, suspended by tidings
    assert (await endpoint_of(client, key, endpoint["id"]))["state"] == "suspended"
    receiver.received.clear()
    held = (await send(client, key))["id"]

    await app.health.evaluate()
    assert receiver.received == []  # the first probe waits one cool-down
    clock.advance(31)
    await app.health.evaluate()
    assert len(receiver.received) == 1
    probe = receiver.received[0]
    assert orjson.loads(probe.body) == {"type": "tidings.health_check"}
    assert probe.verified
    assert probe.headers["webhook-id"].startswith("hc_")
    assert (await endpoint_of(client, key, endpoint["id"]))["state"] == "suspended"

    receiver.behaviour = hang  # an answer after 2 s is no answer
    clock.advance(31)  # not yet: the wait doubled to 60 s
    await app.health.evaluate()
    assert len(receiver.received) == 1
    clock.advance(30)
    await app.health.evaluate()
    assert len(receiver.received) == 2
    assert (await endpoint_of(client, key, endpoint["id"]))["state"] == "suspended"

    receiver.behaviour = ok
    clock.advance(121)
    await app.health.evaluate()
    shown = await endpoint_of(client, key, endpoint["id"])
    assert shown["state"] == "active"
    assert shown["suspensions"][0]["resumed_by"] == "tidings: the health check passed"
    await wait_for(lambda: len(receiver.received) == 4)
    assert await delivery_states(client, key, held) == ["succeeded"]


async def test_an_endpoint_suspended_by_hand_is_not_resumed_by_a_health_check(
    held_time: tuple[Tidings, httpx.AsyncClient], clock: FakeClock, receiver: Receiver
) -> None:
    app, client = held_time
    _, key = await _tenant(client, auto_resume=True, breaker_cool_down_s=30)
    endpoint = await new_endpoint(client, key, receiver.url)
    await client.post(
        f"/v1/endpoints/{endpoint['id']}/suspend", json={"reason": "ours"}, headers=bearer(key)
    )
    for _ in range(3):
        clock.advance(3600)
        await app.health.evaluate()
    assert receiver.received == []  # not even probed
    assert (await endpoint_of(client, key, endpoint["id"]))["state"] == "suspended"


async def test_a_resumption_by_hand_during_a_health_check_is_no_error(
    held_time: tuple[Tidings, httpx.AsyncClient], clock: FakeClock, receiver: Receiver
) -> None:
    app, client = held_time
    _, key = await _tenant(client, auto_resume=True, critical_dead_deliveries=1, **NO_BREAKER)
    endpoint = await new_endpoint(client, key, receiver.url, retry_schedule=[0])
    receiver.behaviour = status(503)
    dead = (await send(client, key))["id"]
    await wait_for(lambda: _all_in(client, key, [dead], "dead"))
    await app.health.evaluate()
    assert (await endpoint_of(client, key, endpoint["id"]))["state"] == "suspended"

    async def resumed_meanwhile(request: web.Request) -> web.StreamResponse:
        url = f"/v1/endpoints/{endpoint['id']}/resume"
        response = await client.post(url, headers=bearer(key))
        assert response.status_code == 200, response.text
        return web.Response(status=204)

    receiver.behaviour = resumed_meanwhile
    clock.advance(31)
    await app.health.evaluate()  # the health check passes; resuming it again is a conflict
    shown = await endpoint_of(client, key, endpoint["id"])
    assert shown["state"] == "active"
    assert shown["suspensions"][0]["resumed_by"].startswith("api key tdk_")


# the breaker, in the store ----------------------------------------------------------------


async def test_an_open_breaker_is_kept_in_the_store_for_the_next_process(
    make_settings: Callable[..., Settings], clock: FakeClock, receiver: Receiver
) -> None:
    async def run(steps: Callable[[Tidings, httpx.AsyncClient], Any]) -> None:
        settings = make_settings(health_interval=timedelta(hours=1))
        async with served(settings, clock) as (app, client):
            await steps(app, client)

    found: dict[str, Any] = {}

    async def open_it(app: Tidings, client: httpx.AsyncClient) -> None:
        _, found["key"] = await new_tenant(client)
        endpoint = await new_endpoint(client, found["key"], receiver.url, max_in_flight=1)
        found["id"] = endpoint["id"]
        receiver.behaviour = status(503)
        for _ in range(5):
            await send(client, found["key"])
        await wait_for(lambda: len(receiver.received) == 5)
        await asyncio.sleep(0.2)
        assert (await endpoint_of(client, found["key"], found["id"]))["breaker"]["state"] == "open"

    async def still_open(app: Tidings, client: httpx.AsyncClient) -> None:
        receiver.behaviour = ok
        shown = await endpoint_of(client, found["key"], found["id"])
        assert shown["breaker"]["state"] == "open"
        await send(client, found["key"])
        await asyncio.sleep(0.5)
        assert len(receiver.received) == 5  # this process knows it is open too
        clock.advance(31)
        app.dispatcher.wake()
        await wait_for(lambda: len(receiver.received) == 11)  # the probe, then the rest

    await run(open_it)
    await run(still_open)
