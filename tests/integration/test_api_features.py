"""The API's features through the real app: idempotency, pagination and filters, endpoint
management, secret rotation, formats of ids and times, and the operational routes."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from support import problems
from support.api import admin, bearer, collect_pages, get_json, new_endpoint, new_tenant, send
from support.metrics import metric_samples
from support.receivers import Receiver, status
from support.served import client_of
from support.waiting import wait_for
from tidings.app import Tidings
from tidings.channels.signing import new_secret
from tidings.config import Settings

MESSAGES = "/v1/messages"
DELIVERIES = "/v1/deliveries"
ENDPOINTS = "/v1/endpoints"
UTC_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
ULID = "[0-9ABCDEFGHJKMNPQRSTVWXYZ]{26}"


def has_id(value: str, prefix: str) -> bool:
    return re.fullmatch(f"{prefix}_{ULID}", value) is not None


def parse_time(value: str) -> datetime:
    assert UTC_Z.match(value), value
    return datetime.fromisoformat(value)


async def all_deliveries(client: httpx.AsyncClient, key: str, **params: Any) -> list[Any]:
    page = await get_json(client, DELIVERIES, key, limit=1000, **params)
    assert page["next_cursor"] is None
    found: list[Any] = page["data"]
    return found


def assert_problem(response: httpx.Response, status_code: int, fragment: str) -> None:
    """A problem document of ``status_code`` whose detail says ``fragment``, in its case."""
    body = problems.assert_problem(response, status_code, fragment)
    assert fragment in body["detail"], body


@pytest.fixture
async def lenient_client(tidings: Tidings) -> AsyncIterator[httpx.AsyncClient]:
    """Like ``client``, but an unhandled error comes back as the app's 500 answer."""
    async with client_of(tidings, raise_app_exceptions=False) as http:
        yield http


# --- idempotency ------------------------------------------------------------------------------


async def test_the_same_key_and_body_returns_the_first_answer_again(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url)
    headers = {**bearer(key), "idempotency-key": "order-42"}
    body = {"event_type": "order.paid", "payload": {"order": 42, "items": [1, 2]}}

    first = await client.post(MESSAGES, json=body, headers=headers)
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    assert [d["endpoint_id"] for d in first.json()["deliveries"]] == [endpoint["id"]]
    await wait_for(lambda: len(receiver.received) == 1)

    again = await client.post(MESSAGES, json=body, headers=headers)
    assert again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    # The same JSON spelt differently is the same request.
    spaced = json.dumps(body, indent=2).encode()
    third = await client.post(
        MESSAGES, content=spaced, headers={**headers, "content-type": "application/json"}
    )
    assert third.headers["idempotent-replayed"] == "true"
    assert third.json() == first.json()

    deliveries = await all_deliveries(client, key)
    assert [d["id"] for d in deliveries] == [first.json()["deliveries"][0]["id"]]
    message = await get_json(client, f"{MESSAGES}/{first.json()['id']}", key)
    assert message["idempotency_key"] == "order-42"
    assert len(receiver.received) == 1


async def test_the_same_key_with_another_body_is_a_409(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url)
    headers = {**bearer(key), "idempotency-key": "k-1"}
    body = {"event_type": "order.paid", "payload": {"order": 1}}
    first = await client.post(MESSAGES, json=body, headers=headers)
    assert first.status_code == 202, first.text

    for changed in (
        {**body, "payload": {"order": 2}},
        {**body, "event_type": "order.refunded"},
        {**body, "payload": None},
    ):
        response = await client.post(MESSAGES, json=changed, headers=headers)
        assert_problem(response, 409, "'k-1' was already used with a different request body")

    assert len(await all_deliveries(client, key)) == 1
    message = await get_json(client, f"{MESSAGES}/{first.json()['id']}", key)
    assert (message["event_type"], message["payload"]) == ("order.paid", {"order": 1})
    # The first body still replays after the conflicts.
    again = await client.post(MESSAGES, json=body, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


async def test_the_same_key_in_two_tenants_is_independent(
    client: httpx.AsyncClient, receiver: Receiver, make_receiver: Callable[..., Any]
) -> None:
    other = await make_receiver()
    _, a_key = await new_tenant(client, "alpha")
    _, b_key = await new_tenant(client, "bravo")
    a_endpoint = await new_endpoint(client, a_key, receiver.url)
    b_endpoint = await new_endpoint(client, b_key, other.url)

    a = await client.post(
        MESSAGES,
        json={"event_type": "order.paid", "payload": {"who": "a"}},
        headers={**bearer(a_key), "idempotency-key": "shared"},
    )
    b = await client.post(
        MESSAGES,
        json={"event_type": "order.paid", "payload": {"who": "b"}},
        headers={**bearer(b_key), "idempotency-key": "shared"},
    )
    b_same_as_a = await client.post(
        MESSAGES,
        json={"event_type": "order.paid", "payload": {"who": "a"}},
        headers={**bearer(b_key), "idempotency-key": "shared"},
    )
    assert a.status_code == b.status_code == 202, (a.text, b.text)
    assert "idempotent-replayed" not in a.headers
    assert "idempotent-replayed" not in b.headers
    assert a.json()["id"] != b.json()["id"]
    assert [d["endpoint_id"] for d in a.json()["deliveries"]] == [a_endpoint["id"]]
    assert [d["endpoint_id"] for d in b.json()["deliveries"]] == [b_endpoint["id"]]
    # B's key is bound to B's first body, not to A's.
    assert_problem(b_same_as_a, 409, "'shared' was already used")
    assert len(await all_deliveries(client, a_key)) == 1
    assert len(await all_deliveries(client, b_key)) == 1


async def test_concurrent_identical_requests_make_one_message(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url)
    headers = {**bearer(key), "idempotency-key": "burst"}
    body = {"event_type": "order.paid", "payload": {"order": 7}}

    responses = await asyncio.gather(
        *(client.post(MESSAGES, json=body, headers=headers) for _ in range(20))
    )

    assert [r.status_code for r in responses] == [202] * 20
    assert len({r.json()["id"] for r in responses}) == 1
    assert len({json.dumps(r.json()) for r in responses}) == 1
    replayed = [r.headers.get("idempotent-replayed") for r in responses]
    assert sorted(replayed, key=str) == [None] + ["true"] * 19
    deliveries = await all_deliveries(client, key)
    assert len(deliveries) == 1
    assert deliveries[0]["message_id"] == responses[0].json()["id"]
    await wait_for(lambda: len(receiver.received) == 1)


# --- pagination and filters ---------------------------------------------------------------------


async def test_deliveries_page_newest_first(client: httpx.AsyncClient, receiver: Receiver) -> None:
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url)
    sent: list[str] = []
    for n in range(25):
        sent.append((await send(client, key, payload={"n": n}))["deliveries"][0]["id"])
        await asyncio.sleep(0.002)  # ids carry milliseconds: one per message
    newest_first = sent[::-1]

    pages = await collect_pages(client, key, DELIVERIES, 10)
    assert [len(p["data"]) for p in pages] == [10, 10, 5]
    assert [p["next_cursor"] is None for p in pages] == [False, False, True]
    seen = [d["id"] for p in pages for d in p["data"]]
    assert seen == newest_first
    created = [parse_time(d["created_at"]) for p in pages for d in p["data"]]
    assert created == sorted(created, reverse=True)

    exact = await collect_pages(client, key, DELIVERIES, 25)
    assert [(len(p["data"]), p["next_cursor"]) for p in exact] == [(25, None)]
    one_short = await collect_pages(client, key, DELIVERIES, 24)
    assert [len(p["data"]) for p in one_short] == [24, 1]
    assert [d["id"] for p in one_short for d in p["data"]] == newest_first


async def test_endpoints_page_newest_first(client: httpx.AsyncClient, receiver: Receiver) -> None:
    _, key = await new_tenant(client)
    created: list[str] = []
    for n in range(25):
        endpoint = await new_endpoint(client, key, receiver.url, description=f"n{n}")
        created.append(endpoint["id"])
        await asyncio.sleep(0.002)

    pages = await collect_pages(client, key, ENDPOINTS, 10)
    assert [len(p["data"]) for p in pages] == [10, 10, 5]
    assert pages[-1]["next_cursor"] is None
    assert [e["id"] for p in pages for e in p["data"]] == created[::-1]

    # A deleted endpoint leaves the listing.
    response = await client.delete(f"{ENDPOINTS}/{created[12]}", headers=bearer(key))
    assert response.status_code == 204, response.text
    pages = await collect_pages(client, key, ENDPOINTS, 10)
    remaining = [e["id"] for p in pages for e in p["data"]]
    assert remaining == [i for i in created[::-1] if i != created[12]]
    assert [len(p["data"]) for p in pages] == [10, 10, 4]


async def test_deliveries_filter_by_state_endpoint_message_and_time(
    client: httpx.AsyncClient, receiver: Receiver, make_receiver: Callable[..., Any]
) -> None:
    failing = await make_receiver(behaviour=status(500))
    _, key = await new_tenant(client)
    good = await new_endpoint(client, key, receiver.url)
    bad = await new_endpoint(client, key, failing.url, retry_schedule=[0])
    messages = []
    for n in range(3):
        messages.append(await send(client, key, payload={"n": n}))
        await asyncio.sleep(0.002)

    async def settled() -> bool:
        return sorted(d["state"] for d in await all_deliveries(client, key)) == (
            ["dead"] * 3 + ["succeeded"] * 3
        )

    await wait_for(settled)

    def ids_of(deliveries: list[Any]) -> set[str]:
        return {d["id"] for d in deliveries}

    def of(message: dict[str, Any], endpoint: dict[str, Any] | None = None) -> set[str]:
        return {
            d["id"]
            for d in message["deliveries"]
            if endpoint is None or d["endpoint_id"] == endpoint["id"]
        }

    succeeded = await all_deliveries(client, key, state="succeeded")
    assert {d["endpoint_id"] for d in succeeded} == {good["id"]}
    assert len(succeeded) == 3
    dead = await all_deliveries(client, key, state="dead")
    assert {d["endpoint_id"] for d in dead} == {bad["id"]}
    assert all(d["dead_reason"].startswith("exhausted:") for d in dead), dead
    assert await all_deliveries(client, key, state="pending") == []
    assert ids_of(await all_deliveries(client, key, endpoint_id=bad["id"])) == ids_of(dead)

    m1, m2, m3 = messages
    assert ids_of(await all_deliveries(client, key, message_id=m2["id"])) == of(m2)
    both = await all_deliveries(client, key, message_id=m2["id"], endpoint_id=bad["id"])
    assert ids_of(both) == of(m2, bad)
    assert await all_deliveries(client, key, state="dead", endpoint_id=good["id"]) == []

    middle = (await get_json(client, f"{MESSAGES}/{m2['id']}", key))["deliveries"][0]
    last = (await get_json(client, f"{MESSAGES}/{m3['id']}", key))["deliveries"][0]
    since = await all_deliveries(client, key, since=middle["created_at"])
    assert ids_of(since) == of(m2) | of(m3)
    until = await all_deliveries(client, key, until=middle["created_at"])
    assert ids_of(until) == of(m1)
    window = await all_deliveries(client, key, since=middle["created_at"], until=last["created_at"])
    assert ids_of(window) == of(m2)
    # The same instant with another offset selects the same deliveries.
    offset = parse_time(middle["created_at"]).astimezone(timezone(timedelta(hours=2)))
    assert ids_of(await all_deliveries(client, key, since=offset.isoformat())) == of(m2) | of(m3)

    # Filters and pages combine.
    pages = await collect_pages(client, key, DELIVERIES, 2, state="dead")
    assert [len(p["data"]) for p in pages] == [2, 1]
    assert {d["id"] for p in pages for d in p["data"]} == ids_of(dead)


# --- endpoints ---------------------------------------------------------------------------------


async def test_patch_changes_the_fields_sent_and_only_those(
    client: httpx.AsyncClient, receiver: Receiver, make_receiver: Callable[..., Any]
) -> None:
    other = await make_receiver()
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(
        client,
        key,
        receiver.url,
        description="one",
        event_types=["a.b"],
        max_in_flight=3,
        rate_limit_per_s=5,
        retry_schedule=[0, 10],
    )
    path = f"{ENDPOINTS}/{endpoint['id']}"
    await asyncio.sleep(0.002)

    changes = {
        "url": other.url,
        "description": "two",
        "event_types": ["c.d", "c.d", "e.f"],
        "max_in_flight": 7,
        "rate_limit_per_s": 2.5,
        "retry_schedule": [0, 1, 2],
    }
    response = await client.patch(path, json=changes, headers=bearer(key))
    assert response.status_code == 200, response.text
    patched = response.json()
    assert {name: patched[name] for name in changes} == {
        **changes,
        "event_types": ["c.d", "e.f"],
        "retry_schedule": [0.0, 1.0, 2.0],
    }
    for unchanged in ("id", "secret", "created_at", "state"):
        assert patched[unchanged] == endpoint[unchanged], unchanged
    assert parse_time(patched["updated_at"]) > parse_time(endpoint["updated_at"])
    assert await get_json(client, path, key) == patched

    response = await client.patch(path, json={"description": "three"}, headers=bearer(key))
    assert response.status_code == 200, response.text
    only_description = response.json()
    assert {**only_description, "updated_at": None} == {
        **patched,
        "description": "three",
        "updated_at": None,
    }

    response = await client.patch(
        path, json={"rate_limit_per_s": None, "retry_schedule": None}, headers=bearer(key)
    )
    assert response.status_code == 200, response.text
    assert (response.json()["rate_limit_per_s"], response.json()["retry_schedule"]) == (None, None)
    assert response.json()["event_types"] == ["c.d", "e.f"]

    # Fan-out and delivery follow the patch: new filter, new URL.
    assert [d["endpoint_id"] for d in (await send(client, key, "c.d"))["deliveries"]] == [
        endpoint["id"]
    ]
    assert (await send(client, key, "a.b"))["deliveries"] == []
    await wait_for(lambda: len(other.received) == 1)
    assert receiver.received == []


@pytest.mark.parametrize("cleared", [[], None], ids=["empty-list", "null"])
async def test_patch_event_types_to_empty_subscribes_to_everything(
    client: httpx.AsyncClient,
    lenient_client: httpx.AsyncClient,
    receiver: Receiver,
    cleared: list[str] | None,
) -> None:
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url, event_types=["a.b"])
    response = await lenient_client.patch(
        f"{ENDPOINTS}/{endpoint['id']}", json={"event_types": cleared}, headers=bearer(key)
    )
    assert response.status_code == 200, response.text
    assert response.json()["event_types"] == []
    sent = await send(client, key, "x.y")
    assert [d["endpoint_id"] for d in sent["deliveries"]] == [endpoint["id"]]


async def test_an_endpoint_gets_only_the_event_types_it_subscribed_to(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, key = await new_tenant(client)
    only_ab = await new_endpoint(client, key, receiver.url, event_types=["a.b"])
    everything = await new_endpoint(client, key, receiver.url)
    others = await new_endpoint(client, key, receiver.url, event_types=["x.y", "a.b.c"])

    async def fan_out(event_type: str) -> set[str]:
        return {d["endpoint_id"] for d in (await send(client, key, event_type))["deliveries"]}

    assert await fan_out("a.b") == {only_ab["id"], everything["id"]}
    assert await fan_out("a.c") == {everything["id"]}
    assert await fan_out("a.b.c") == {everything["id"], others["id"]}
    assert await fan_out("a") == {everything["id"]}
    assert await fan_out("A.B") == {everything["id"]}
    await wait_for(lambda: len(receiver.received) == 7)
    assert sorted(json.loads(r.body)["type"] for r in receiver.received) == sorted(
        ["a.b", "a.b", "a.c", "a.b.c", "a.b.c", "a", "A.B"]
    )


async def test_a_deleted_endpoint_is_gone_and_its_pending_deliveries_die(
    client: httpx.AsyncClient, receiver: Receiver, make_receiver: Callable[..., Any]
) -> None:
    failing = await make_receiver(behaviour=status(500))
    _, key = await new_tenant(client)
    doomed = await new_endpoint(client, key, failing.url, retry_schedule=[0, 3600])
    kept = await new_endpoint(client, key, receiver.url)
    for n in range(3):
        await send(client, key, payload={"n": n})

    async def waiting_for_retry() -> bool:
        found = await all_deliveries(client, key, endpoint_id=doomed["id"])
        return [(d["state"], d["attempts"]) for d in found] == [("pending", 1)] * 3

    await wait_for(waiting_for_retry)

    path = f"{ENDPOINTS}/{doomed['id']}"
    response = await client.delete(path, headers=bearer(key))
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_problem(
        await client.get(path, headers=bearer(key)), 404, f"no endpoint '{doomed['id']}'"
    )
    assert_problem(await client.delete(path, headers=bearer(key)), 404, "no endpoint")
    listed = await get_json(client, ENDPOINTS, key)
    assert [e["id"] for e in listed["data"]] == [kept["id"]]

    dead = await all_deliveries(client, key, endpoint_id=doomed["id"])
    assert [d["state"] for d in dead] == ["dead"] * 3
    # The reason has the stable prefix "deleted:" and says what happened.
    assert all(d["dead_reason"].startswith("deleted:") for d in dead), dead
    assert all("endpoint was deleted" in d["dead_reason"] for d in dead), dead
    samples = metric_samples((await client.get("/metrics")).text)
    assert samples[("tidings_deliveries_dead_total", frozenset({("reason", "deleted")}))] == 3.0
    assert all(d["next_attempt_at"] is not None for d in dead)  # the retry that never comes

    # The other endpoint is unaffected, and new messages go only to it.
    async def kept_succeeded() -> bool:
        found = await all_deliveries(client, key, endpoint_id=kept["id"])
        return [d["state"] for d in found] == ["succeeded"] * 3

    await wait_for(kept_succeeded)
    sent = await send(client, key)
    assert [d["endpoint_id"] for d in sent["deliveries"]] == [kept["id"]]
    # Its dead deliveries cannot be replayed to an endpoint that no longer exists.
    replay = await client.post(
        f"{DELIVERIES}/replay", json={"ids": [d["id"] for d in dead]}, headers=bearer(key)
    )
    assert replay.json() == {"replayed": 0}
    assert_problem(
        await client.post(
            f"{DELIVERIES}/replay", json={"endpoint_id": doomed["id"]}, headers=bearer(key)
        ),
        404,
        "no endpoint",
    )
    assert len(failing.received) == 3


async def test_after_rotation_deliveries_verify_with_the_old_and_the_new_secret(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url)
    path = f"{ENDPOINTS}/{endpoint['id']}"
    old = endpoint["secret"]

    await send(client, key)
    await wait_for(lambda: len(receiver.received) == 1)
    assert len(receiver.received[0].headers["webhook-signature"].split(" ")) == 1

    response = await client.post(f"{path}/rotate-secret", headers=bearer(key))
    assert response.status_code == 200, response.text
    new = response.json()["secret"]
    assert new != old
    assert new.startswith("whsec_")
    assert {**response.json(), "secret": old, "updated_at": None} == {
        **endpoint,
        "updated_at": None,
    }
    assert (await get_json(client, path, key))["secret"] == new

    sent = await send(client, key, payload={"after": "rotation"})
    await wait_for(lambda: len(receiver.received) == 2)
    got = receiver.received[1]
    assert got.webhook_id == sent["id"]
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(s.startswith("v1,") for s in signatures), signatures
    for secret in (old, new):
        assert Webhook(secret).verify(got.body, got.headers)["data"] == {"after": "rotation"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(got.body, got.headers)

    # A second rotation keeps the latest two: the first secret no longer verifies.
    response = await client.post(f"{path}/rotate-secret", headers=bearer(key))
    newest = response.json()["secret"]
    await send(client, key, payload={"after": "second rotation"})
    await wait_for(lambda: len(receiver.received) == 3)
    got = receiver.received[2]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(newest).verify(got.body, got.headers)
    Webhook(new).verify(got.body, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(got.body, got.headers)


# --- formats ------------------------------------------------------------------------------------


def timestamps(value: Any, where: str = "") -> list[tuple[str, Any]]:
    """Every ``*_at`` field in a JSON document, with where it is."""
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for name, item in value.items():
            if name.endswith("_at"):
                found.append((f"{where}.{name}", item))
            else:
                found += timestamps(item, f"{where}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += timestamps(item, f"{where}[{index}]")
    return found


async def test_times_are_utc_with_z_and_ids_carry_their_prefixes(
    client: httpx.AsyncClient, receiver: Receiver, make_receiver: Callable[..., Any]
) -> None:
    failing = await make_receiver(behaviour=status(503))
    created = (
        await client.post(
            "/v1/tenants", json={"name": "acme", "owner_email": "ops@acme.example"}, headers=admin()
        )
    ).json()
    api_key = (await client.post(f"/v1/tenants/{created['id']}/api-keys", headers=admin())).json()
    key = api_key["key"]
    good = await new_endpoint(client, key, receiver.url)
    retrying = await new_endpoint(client, key, failing.url, retry_schedule=[0, 3600])
    accepted = await send(client, key)

    async def settled() -> bool:
        # The failing endpoint has made its attempt and waits for the retry ~1 h ahead.
        states = {
            d["endpoint_id"]: (d["state"], d["attempts"]) for d in await all_deliveries(client, key)
        }
        return states == {good["id"]: ("succeeded", 1), retrying["id"]: ("pending", 1)}

    await wait_for(settled)
    message = await get_json(client, f"{MESSAGES}/{accepted['id']}", key)
    documents = {
        "tenant": created,
        "tenant get": (await client.get(f"/v1/tenants/{created['id']}", headers=admin())).json(),
        "api key": api_key,
        "endpoint": good,
        "endpoints": await get_json(client, ENDPOINTS, key),
        "message": message,
        "deliveries": await get_json(client, DELIVERIES, key),
    }
    found = [
        (f"{doc}{where}", value)
        for doc, body in documents.items()
        for where, value in timestamps(body)
    ]
    now = datetime.now(UTC)
    for where, value in found:
        if value is None:
            continue
        assert isinstance(value, str), where
        assert UTC_Z.match(value), f"{where} = {value!r}"
        moment = datetime.fromisoformat(value)
        assert moment.utcoffset() == timedelta(0), where
        # Really UTC, not local time labelled Z (the retry is ~1 h ahead).
        assert abs(moment - now) < timedelta(hours=2), f"{where} = {value!r}"
    names = {where.rsplit(".", 1)[1] for where, value in found if value is not None}
    assert names >= {"created_at", "updated_at", "succeeded_at", "next_attempt_at", "started_at"}

    assert has_id(created["id"], "tnt")
    assert has_id(api_key["id"], "key")
    assert api_key["tenant_id"] == created["id"]
    assert has_id(good["id"], "ep")
    assert has_id(accepted["id"], "msg")
    assert all(has_id(d["id"], "dlv") for d in accepted["deliveries"])
    attempts = [a for d in message["deliveries"] for a in d["attempt_log"]]
    assert len(attempts) == 2
    assert all(has_id(a["id"], "atm") for a in attempts)
    assert key.startswith("tdk_")
    assert good["secret"].startswith("whsec_")


# --- operations --------------------------------------------------------------------------------


async def test_health_and_readiness_answer_without_credentials(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def expected_zero_series() -> list[tuple[str, dict[str, str]]]:
    series: list[tuple[str, dict[str, str]]] = []
    series += [("tidings_messages_accepted_total", {"replayed": r}) for r in ("false", "true")]
    series += [("tidings_deliveries_total", {"outcome": o}) for o in ("succeeded", "retry", "dead")]
    series += [
        ("tidings_deliveries_dead_total", {"reason": r})
        for r in ("exhausted", "expired", "gone", "blocked", "disabled", "deleted")
    ]
    series += [
        ("tidings_attempts_total", {"outcome": o, "status_class": c})
        for o in ("success", "failure")
        for c in ("1xx", "2xx", "3xx", "4xx", "5xx", "none", "other")
    ]
    series += [
        ("tidings_queue_depth", {"state": s})
        for s in ("pending", "in_flight", "succeeded", "dead", "held")
    ]
    series += [
        ("tidings_attempt_duration_seconds_count", {}),
        ("tidings_delivery_latency_seconds_count", {}),
    ]
    return series


async def test_metrics_start_at_zero_for_every_label_and_count(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = metric_samples(response.text)
    for name, labels in expected_zero_series():
        assert samples.get((name, frozenset(labels.items()))) == 0.0, (name, labels)

    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url)
    sent = await send(client, key, idempotency_key="once")
    await send(client, key, idempotency_key="once")

    async def delivered() -> bool:
        return [d["state"] for d in await all_deliveries(client, key)] == ["succeeded"]

    await wait_for(delivered)
    assert sent["deliveries"]
    samples = metric_samples((await client.get("/metrics")).text)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    assert value("tidings_messages_accepted_total", replayed="false") == 1.0
    assert value("tidings_messages_accepted_total", replayed="true") == 1.0
    assert value("tidings_deliveries_total", outcome="succeeded") == 1.0
    assert value("tidings_deliveries_total", outcome="dead") == 0.0
    assert value("tidings_attempts_total", outcome="success", status_class="2xx") == 1.0
    assert value("tidings_delivery_latency_seconds_count") == 1.0


async def test_openapi_lists_every_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["info"]["title"] == "tidings"
    routes = {path: set(item) for path, item in document["paths"].items()}
    expected = {
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
        "/v1/tenants": {"get", "post"},
        "/v1/tenants/{tenant_id}": {"get", "patch"},
        "/v1/tenants/{tenant_id}/api-keys": {"get", "post"},
        "/v1/tenants/{tenant_id}/api-keys/{key_id}": {"delete"},
        "/v1/endpoints": {"get", "post"},
        "/v1/endpoints/{endpoint_id}": {"get", "patch", "delete"},
        "/v1/endpoints/{endpoint_id}/rotate-secret": {"post"},
        "/v1/endpoints/{endpoint_id}/suspend": {"post"},
        "/v1/endpoints/{endpoint_id}/resume": {"post"},
        "/v1/messages": {"post"},
        "/v1/messages/{message_id}": {"get"},
        "/v1/deliveries": {"get"},
        "/v1/deliveries/replay": {"post"},
    }
    for path, methods in expected.items():
        assert routes.get(path) == methods, (path, routes.get(path))
    ingest = document["paths"]["/v1/messages"]["post"]
    assert "Idempotency-Key" in {p["name"] for p in ingest["parameters"] if p["in"] == "header"}
    body = ingest["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["event_type", "payload"]
    assert "$ref" not in str(body)  # self-contained: nothing points at a missing definition


async def test_a_tenant_api_key_is_shown_only_once(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/tenants", json={"name": "acme", "owner_email": "ops@acme.example"}, headers=admin()
    )
    assert response.status_code == 201, response.text
    tenant = response.json()
    assert set(tenant) == {"id", "name", "owner_email", "created_at", "alarm_policy"}

    issued = await client.post(f"/v1/tenants/{tenant['id']}/api-keys", headers=admin())
    assert issued.status_code == 201, issued.text
    key = issued.json()["key"]
    assert key.startswith("tdk_")
    assert issued.json()["prefix"] == key[:12]
    second = (await client.post(f"/v1/tenants/{tenant['id']}/api-keys", headers=admin())).json()
    assert second["key"] != key

    shown = await client.get(f"/v1/tenants/{tenant['id']}", headers=admin())
    listed = await client.get("/v1/tenants", headers=admin())
    assert shown.json() == tenant
    assert [t["id"] for t in listed.json()["data"]] == [tenant["id"]]
    for text in (shown.text, listed.text):
        for secret in (key, second["key"]):
            assert secret not in text
            assert secret.removeprefix("tdk_") not in text
        assert "key_hash" not in text
    # Both keys work.
    for secret in (key, second["key"]):
        assert (await client.get(ENDPOINTS, headers=bearer(secret))).status_code == 200


def awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The coroutines ``task`` is suspended in, outermost first."""
    names: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        names.append(coro.cr_code.co_name)
        coro = coro.cr_await
    return names


async def test_stop_ends_even_when_the_dispatcher_was_just_woken(
    make_settings: Callable[..., Settings],
) -> None:
    app = Tidings(make_settings())
    await app.start()
    dispatcher = next(t for t in asyncio.all_tasks() if t.get_name() == "dispatcher")
    await wait_for(lambda: "_sleep" in awaiting(dispatcher))

    app.dispatcher.wake()  # new work, or a delivery that just finished
    stopping = asyncio.create_task(app.stop())
    done, _ = await asyncio.wait({stopping}, timeout=1)
    if not done:
        await stop_tidings_after(stopping, dispatcher)
    assert done, "stop() was still waiting for the dispatcher task after 1 s"


async def stop_tidings_after(stopping: asyncio.Task[None], dispatcher: asyncio.Task[None]) -> None:
    """Unstick a hung stop(): cancel the dispatcher until it ends, then let stop() finish."""
    while not (await asyncio.wait({stopping}, timeout=1))[0]:
        dispatcher.cancel()
    stopping.result()
