"""Tenants are isolated: one tenant can neither see nor touch another's objects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from support.api import bearer, new_endpoint, new_tenant, send
from support.problems import assert_problem
from support.receivers import Receiver, status
from support.waiting import wait_for


@dataclass
class Tenant:
    id: str
    key: str


@dataclass
class Pair:
    """Tenant A with an endpoint that succeeds, one whose deliveries die, and a message for
    both (settled); tenant B with an endpoint of its own."""

    client: httpx.AsyncClient
    a: Tenant
    b: Tenant
    a_ok: dict[str, Any]
    a_dead: dict[str, Any]
    a_message: dict[str, Any]
    b_endpoint: dict[str, Any]
    a_receiver: Receiver
    b_receiver: Receiver

    @property
    def a_delivery_ids(self) -> list[str]:
        return [d["id"] for d in self.a_message["deliveries"]]

    async def get(self, tenant: Tenant, path: str, **params: Any) -> Any:
        response = await self.client.get(path, headers=bearer(tenant.key), params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def deliveries(self, tenant: Tenant, **params: Any) -> list[dict[str, Any]]:
        page = await self.get(tenant, "/v1/deliveries", limit=1000, **params)
        assert page["next_cursor"] is None
        found: list[dict[str, Any]] = page["data"]
        return found

    async def message(self, tenant: Tenant, message_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.get(tenant, f"/v1/messages/{message_id}")
        return found


@pytest.fixture
async def pair(
    client: httpx.AsyncClient, receiver: Receiver, make_receiver: Callable[..., Any]
) -> Pair:
    failing = await make_receiver(behaviour=status(500))
    b_receiver = await make_receiver()
    a_id, a_key = await new_tenant(client, "alpha")
    b_id, b_key = await new_tenant(client, "bravo")
    a_ok = await new_endpoint(client, a_key, receiver.url, description="alpha ok")
    a_dead = await new_endpoint(client, a_key, failing.url, retry_schedule=[0])
    b_endpoint = await new_endpoint(client, b_key, b_receiver.url, description="bravo")
    a_message = await send(client, a_key, payload={"secret": "alpha"})
    world = Pair(
        client,
        Tenant(a_id, a_key),
        Tenant(b_id, b_key),
        a_ok,
        a_dead,
        a_message,
        b_endpoint,
        receiver,
        b_receiver,
    )

    async def settled() -> bool:
        states = {d["endpoint_id"]: d["state"] for d in await world.deliveries(world.a)}
        return states == {a_ok["id"]: "succeeded", a_dead["id"]: "dead"}

    await wait_for(settled)
    return world


def assert_not_found(response: httpx.Response, fragment: str) -> None:
    """A 404 problem document whose detail says ``fragment``, in its case."""
    body = assert_problem(response, 404, fragment)
    assert fragment in body["detail"], response.text


async def test_b_gets_404_for_every_operation_on_a_endpoint(pair: Pair) -> None:
    endpoint_id = pair.a_ok["id"]
    path = f"/v1/endpoints/{endpoint_id}"
    b = bearer(pair.b.key)
    before = await pair.get(pair.a, path)
    a_listing = await pair.get(pair.a, "/v1/endpoints")
    fragment = f"no endpoint '{endpoint_id}'"

    assert_not_found(await pair.client.get(path, headers=b), fragment)
    patch = {"url": pair.b_receiver.url, "description": "hijacked"}
    assert_not_found(await pair.client.patch(path, json=patch, headers=b), fragment)
    assert_not_found(await pair.client.post(f"{path}/rotate-secret", headers=b), fragment)
    assert_not_found(await pair.client.delete(path, headers=b), fragment)

    # A's endpoint is untouched: same URL, description, secret; still listed and active.
    assert await pair.get(pair.a, path) == before
    assert await pair.get(pair.a, "/v1/endpoints") == a_listing
    assert before["secret"] == pair.a_ok["secret"]
    assert before["state"] == "active"
    # And it still receives A's messages.
    sent = await send(pair.client, pair.a.key, payload={"after": "attack"})
    assert pair.a_ok["id"] in {d["endpoint_id"] for d in sent["deliveries"]}


async def test_b_does_not_list_a_endpoints(pair: Pair) -> None:
    b_listing = await pair.get(pair.b, "/v1/endpoints")
    assert [e["id"] for e in b_listing["data"]] == [pair.b_endpoint["id"]]
    a_listing = await pair.get(pair.a, "/v1/endpoints")
    assert {e["id"] for e in a_listing["data"]} == {pair.a_ok["id"], pair.a_dead["id"]}


async def test_b_gets_404_for_a_message(pair: Pair) -> None:
    message_id = pair.a_message["id"]
    response = await pair.client.get(f"/v1/messages/{message_id}", headers=bearer(pair.b.key))
    assert_not_found(response, f"no message '{message_id}'")
    assert "alpha" not in response.text
    # The message exists: A reads it.
    assert (await pair.message(pair.a, message_id))["payload"] == {"secret": "alpha"}


async def test_b_does_not_see_a_deliveries(pair: Pair) -> None:
    assert len(await pair.deliveries(pair.a)) == 2
    assert await pair.deliveries(pair.b) == []
    assert await pair.deliveries(pair.b, message_id=pair.a_message["id"]) == []
    assert await pair.deliveries(pair.b, endpoint_id=pair.a_ok["id"]) == []
    assert await pair.deliveries(pair.b, state="dead") == []
    assert await pair.deliveries(pair.b, state="succeeded") == []


async def test_replay_by_b_with_a_delivery_ids_replays_nothing(pair: Pair) -> None:
    dead = await pair.deliveries(pair.a, state="dead")
    assert [d["endpoint_id"] for d in dead] == [pair.a_dead["id"]]
    b = bearer(pair.b.key)

    by_ids = await pair.client.post(
        "/v1/deliveries/replay", json={"ids": pair.a_delivery_ids}, headers=b
    )
    assert by_ids.status_code == 200, by_ids.text
    assert by_ids.json() == {"replayed": 0}
    by_endpoint = await pair.client.post(
        "/v1/deliveries/replay", json={"endpoint_id": pair.a_dead["id"]}, headers=b
    )
    assert_not_found(by_endpoint, f"no endpoint '{pair.a_dead['id']}'")
    by_time = await pair.client.post(
        "/v1/deliveries/replay", json={"since": "2000-01-01T00:00:00Z"}, headers=b
    )
    assert by_time.json() == {"replayed": 0}
    assert await pair.deliveries(pair.a, state="dead") == dead

    # The same request by A does replay A's dead delivery: the ids were replayable.
    by_a = await pair.client.post(
        "/v1/deliveries/replay", json={"ids": pair.a_delivery_ids}, headers=bearer(pair.a.key)
    )
    assert by_a.json() == {"replayed": 1}


async def test_b_messages_do_not_fan_out_to_a_endpoints(pair: Pair) -> None:
    a_seen = len(pair.a_receiver.received)
    a_deliveries = await pair.deliveries(pair.a)

    sent = await send(pair.client, pair.b.key, payload={"secret": "bravo"})
    assert [d["endpoint_id"] for d in sent["deliveries"]] == [pair.b_endpoint["id"]]

    await wait_for(lambda: len(pair.b_receiver.received) == 1)
    assert pair.b_receiver.received[0].webhook_id == sent["id"]
    assert len(pair.a_receiver.received) == a_seen
    assert await pair.deliveries(pair.a) == a_deliveries
    assert [d["message_id"] for d in await pair.deliveries(pair.b)] == [sent["id"]]


async def test_a_tenant_without_endpoints_fans_out_to_nobody(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, a_key = await new_tenant(client, "alpha")
    _, b_key = await new_tenant(client, "bravo")
    await new_endpoint(client, a_key, receiver.url)
    sent = await send(client, b_key)
    assert sent["deliveries"] == []
    page = (await client.get("/v1/deliveries", headers=bearer(a_key))).json()
    assert page["data"] == []
