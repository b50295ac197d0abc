"""API keys listed and revoked: never shown again, refused at once on every process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import httpx
import pytest

from support.api import admin, bearer, new_tenant, send
from support.problems import assert_problem
from support.served import served
from support.stores import BOTH_BACKENDS
from support.waiting import wait_for
from tidings.clock import FakeClock
from tidings.config import Settings
from tidings.service import sha256


async def _keys(client: httpx.AsyncClient, tenant_id: str) -> list[dict[str, object]]:
    response = await client.get(f"/v1/tenants/{tenant_id}/api-keys", headers=admin())
    assert response.status_code == 200, response.text
    data: list[dict[str, object]] = response.json()["data"]
    return data


async def _new_key(client: httpx.AsyncClient, tenant_id: str) -> tuple[str, str]:
    response = await client.post(f"/v1/tenants/{tenant_id}/api-keys", headers=admin())
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]


async def _revoke(client: httpx.AsyncClient, tenant_id: str, key_id: str) -> httpx.Response:
    return await client.delete(f"/v1/tenants/{tenant_id}/api-keys/{key_id}", headers=admin())


@BOTH_BACKENDS
async def test_the_list_shows_each_key_but_never_the_key(client: httpx.AsyncClient) -> None:
    tenant_id, first = await new_tenant(client)
    second_id, second = await _new_key(client, tenant_id)

    response = await client.get(f"/v1/tenants/{tenant_id}/api-keys", headers=admin())

    assert response.status_code == 200
    for secret in (first, second, sha256(first), sha256(second)):
        assert secret not in response.text
    keys = response.json()["data"]
    assert keys[0]["id"] == second_id  # newest first
    assert all(k["id"].startswith("key_") for k in keys)
    assert {k["prefix"] for k in keys} == {first[:12], second[:12]}
    assert set(keys[0]) == {"id", "tenant_id", "prefix", "created_at", "last_used_at", "revoked_at"}
    assert all(k["last_used_at"] is None and k["revoked_at"] is None for k in keys)
    assert keys[0]["created_at"].endswith("Z")


@BOTH_BACKENDS
async def test_a_use_is_recorded_as_last_used(client: httpx.AsyncClient) -> None:
    tenant_id, key = await new_tenant(client)
    await send(client, key)

    (listed,) = await _keys(client, tenant_id)

    assert isinstance(listed["last_used_at"], str)
    assert listed["last_used_at"].endswith("Z")


@BOTH_BACKENDS
async def test_the_list_pages(client: httpx.AsyncClient) -> None:
    tenant_id, _ = await new_tenant(client)
    made = {(await _new_key(client, tenant_id))[0] for _ in range(4)}
    seen: list[str] = []
    cursor = ""
    while True:
        response = await client.get(
            f"/v1/tenants/{tenant_id}/api-keys?limit=2{cursor}", headers=admin()
        )
        page = response.json()
        seen += [k["id"] for k in page["data"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert len(seen) == 5
    assert made < set(seen)


@BOTH_BACKENDS
async def test_a_revoked_key_is_refused_at_once_and_nothing_else_changes(
    client: httpx.AsyncClient,
) -> None:
    tenant_id, doomed = await new_tenant(client)
    _, spare = await _new_key(client, tenant_id)
    doomed_id = next(k["id"] for k in await _keys(client, tenant_id) if k["prefix"] == doomed[:12])
    sent = await send(client, doomed)  # and so cached as valid in this process

    response = await _revoke(client, tenant_id, str(doomed_id))

    assert response.status_code == 204
    assert response.content == b""
    refused = await client.post(
        "/v1/messages", json={"event_type": "a", "payload": {}}, headers=bearer(doomed)
    )
    assert_problem(refused, 401, "not valid")
    assert_problem(await client.get("/v1/endpoints", headers=bearer(doomed)), 401, "not valid")
    # Not "forbidden": a revoked key is no key at all, on the admin routes too.
    assert_problem(await client.get("/v1/tenants", headers=bearer(doomed)), 401, "not valid")
    # The tenant, its other key and what the revoked key sent are all still there.
    found = await client.get(f"/v1/messages/{sent['id']}", headers=bearer(spare))
    assert found.status_code == 200
    listed = {k["id"]: k for k in await _keys(client, tenant_id)}
    revoked_at = listed[doomed_id]["revoked_at"]
    assert isinstance(revoked_at, str)
    assert revoked_at.endswith("Z")
    assert sum(k["revoked_at"] is None for k in listed.values()) == 1

    again = await _revoke(client, tenant_id, str(doomed_id))

    assert again.status_code == 204
    assert {k["id"]: k for k in await _keys(client, tenant_id)}[doomed_id]["revoked_at"] == (
        revoked_at
    )


@BOTH_BACKENDS
async def test_keys_are_revoked_only_by_their_own_tenant_and_only_by_the_admin(
    client: httpx.AsyncClient,
) -> None:
    mine, my_key = await new_tenant(client, "mine")
    theirs, their_key = await new_tenant(client, "theirs")
    (their_key_id,) = [k["id"] for k in await _keys(client, theirs)]

    assert_problem(await _revoke(client, mine, str(their_key_id)), 404, "no API key")
    assert_problem(await _revoke(client, mine, "key_nothing"), 404, "no API key")
    assert_problem(await _revoke(client, "tnt_nobody", str(their_key_id)), 404, "no tenant")
    assert_problem(
        await client.get("/v1/tenants/tnt_nobody/api-keys", headers=admin()), 404, "no tenant"
    )
    by_tenant = await client.delete(
        f"/v1/tenants/{theirs}/api-keys/{their_key_id}", headers=bearer(their_key)
    )
    assert_problem(by_tenant, 403, "admin token")
    listed = await client.get(f"/v1/tenants/{mine}/api-keys", headers=bearer(my_key))
    assert_problem(listed, 403, "admin token")
    assert_problem(await client.get(f"/v1/tenants/{mine}/api-keys"), 401, "Bearer")

    await send(client, their_key)  # nothing of theirs was harmed
    assert all(k["revoked_at"] is None for k in await _keys(client, theirs))


@pytest.fixture
async def clocked(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeClock]]:
    clock = FakeClock()
    async with served(make_settings(), clock) as (_, client):
        yield client, clock


@BOTH_BACKENDS
async def test_last_used_is_written_about_once_a_minute_not_per_request(
    clocked: tuple[httpx.AsyncClient, FakeClock],
) -> None:
    client, clock = clocked
    tenant_id, key = await new_tenant(client)
    start = clock.now()

    async def last_used() -> str | None:
        await client.get("/v1/endpoints", headers=bearer(key))
        (listed,) = await _keys(client, tenant_id)
        return listed["last_used_at"]  # type: ignore[return-value]

    first = await last_used()
    clock.advance(timedelta(seconds=40))  # the cached answer has expired; a minute has not
    assert await last_used() == first
    clock.advance(timedelta(seconds=30))
    later = await last_used()

    assert first == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert later == (start + timedelta(seconds=70)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_key_revoked_on_one_process_is_refused_by_another_within_a_second(
    make_settings: Callable[..., Settings],
) -> None:
    """Two API processes on one database: the other one had the key cached as valid
    for 30 s; the revocation's notification makes it forget."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [(await stack.enter_async_context(served(make_settings())))[1] for _ in range(2)]
        one, other = clients
        tenant_id, key = await new_tenant(one)
        await send(other, key)  # cached as valid by the other process
        (key_id,) = [k["id"] for k in await _keys(one, tenant_id)]

        assert (await _revoke(one, tenant_id, str(key_id))).status_code == 204

        async def refused() -> bool:
            response = await other.get("/v1/endpoints", headers=bearer(key))
            return response.status_code == 401

        await wait_for(refused, within=1.0)
