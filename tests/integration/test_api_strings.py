"""What a string or a number may hold, alike on both backends.

- A NUL (U+0000) anywhere in a request (path, query, header, any JSON key or
  string, payloads too) is a 422 naming where it is. PostgreSQL text cannot
  hold one; SQLite can, and the two must answer alike.
- A number beyond the 64-bit integer range (an integer, or a fraction as
  large) in a payload or personalisation is a 422 saying why, never a 500.
- A JSON object with a key twice: the last one wins, on every route, and what
  is stored (and signed and sent) holds it once.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from support.api import admin, bearer, message_of, new_endpoint, new_tenant, send, settled
from support.problems import Bad, assert_refused, send_bad
from support.receivers import Receiver
from support.stores import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS

NUL = "\x00"
TEMPLATE = {"name": "hello", "subject": "Hello", "text": "Hello {{ to }}"}
NUL_IS_REFUSED = "NUL characters (U+0000) are not accepted"


@pytest.fixture
async def world(client: httpx.AsyncClient, receiver: Receiver) -> dict[str, Any]:
    tenant_id, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url)
    response = await client.post("/v1/templates", json=TEMPLATE, headers=bearer(key))
    assert response.status_code == 201, response.text
    return {"client": client, "tenant_id": tenant_id, "key": key, "endpoint_id": endpoint["id"]}


def nul_cases() -> list[Bad]:
    refused = NUL_IS_REFUSED
    message = {"event_type": "order.paid"}
    return [
        Bad("GET", "/v1/deliveries", 422, f"query.cursor: {refused}", params={"cursor": NUL}),
        Bad("GET", "/v1/endpoints", 422, "query.cursor", params={"cursor": "a" + NUL}),
        Bad("GET", "/v1/templates", 422, "query.cursor", params={"cursor": NUL}),
        Bad("GET", "/v1/sink/emails", 422, "query.cursor", params={"cursor": NUL}),
        Bad("GET", "/v1/tenants", 422, "query.cursor", params={"cursor": NUL}, auth="admin"),
        Bad("GET", "/v1/deliveries", 422, "query.endpoint_id", params={"endpoint_id": NUL}),
        Bad("GET", "/v1/endpoints/ep_%00", 422, f"path: {refused}"),
        Bad("GET", "/v1/templates/a%00b", 422, "path"),
        Bad("GET", "/v1/tenants/%00", 422, "path", auth="admin"),
        Bad("POST", "/v1/endpoints/{endpoint_id}/suspend", 422, "reason", json={"reason": NUL}),
        Bad("PATCH", "/v1/endpoints/{endpoint_id}", 422, "description", json={"description": NUL}),
        Bad("POST", "/v1/deliveries/replay", 422, "ids.1", json={"ids": ["a", "b" + NUL]}),
        Bad("POST", "/v1/messages", 422, "payload.a.0", json={**message, "payload": {"a": [NUL]}}),
        Bad("POST", "/v1/messages", 422, "payload", json={**message, "payload": {NUL: 1}}),
        Bad("POST", "/v1/templates", 422, "text", json={**TEMPLATE, "name": "x", "text": NUL}),
        Bad("PUT", "/v1/templates/hello", 422, "subject", json={"subject": NUL, "text": "t"}),
        Bad(
            "POST",
            "/v1/emails",
            422,
            "personalisation.name",
            json={"to": "a@example.com", "template": "hello", "personalisation": {"name": NUL}},
        ),
        Bad("POST", "/v1/tenants", 422, "name", json={"name": NUL, "owner_email": "a@b.example"}),
        Bad("PATCH", "/v1/tenants/{tenant_id}", 422, "name", json={"name": NUL}, auth="admin"),
        Bad(
            "POST",
            "/v1/messages",
            422,
            "header.idempotency-key",
            json={**message, "payload": 1},
            headers={"idempotency-key": "a" + NUL},
        ),
    ]


@pytest.mark.parametrize("bad", nul_cases(), ids=lambda bad: f"{bad.method} {bad.path}")
async def test_a_nul_anywhere_is_a_422_naming_where(world: dict[str, Any], bad: Bad) -> None:
    client: httpx.AsyncClient = world["client"]
    response = await send_bad(
        client, bad, world["key"], endpoint_id=world["endpoint_id"], tenant_id=world["tenant_id"]
    )
    body = assert_refused(response, bad)
    assert NUL_IS_REFUSED in body["detail"], body
    assert body["errors"][0]["type"] == "string_nul", body
    tenant = await client.get(f"/v1/tenants/{world['tenant_id']}", headers=admin())
    assert tenant.json()["name"] == "acme"
    deliveries = await client.get("/v1/deliveries", headers=bearer(world["key"]))
    assert deliveries.json()["data"] == []


async def test_an_escaped_backslash_before_u0000_is_no_nul(
    world: dict[str, Any], receiver: Receiver
) -> None:
    """``"\\\\u0000"`` is a backslash and ``u0000``: kept and sent as it was written."""
    client: httpx.AsyncClient = world["client"]
    payload = {"path": "C:\\u0000"}
    raw = json.dumps({"event_type": "order.paid", "payload": payload}).encode()
    assert b"\\\\u0000" in raw
    headers = {**bearer(world["key"]), "content-type": "application/json"}
    response = await client.post("/v1/messages", content=raw, headers=headers)
    assert response.status_code == 202, response.text
    assert (await message_of(client, world["key"], response.json()["id"]))["payload"] == payload
    await settled(client, world["key"], response.json()["id"], "succeeded")
    assert json.loads(receiver.received[0].body)["data"] == payload


BEYOND_64_BITS = [
    str(2**64),
    str(-(2**63) - 1),
    "82623138484004257792",
    str(10**400),
    "1e300",
    "-1.0e20",
    "18446744073709551616.5",
]


@pytest.mark.parametrize("number", BEYOND_64_BITS)
async def test_a_number_beyond_64_bits_is_a_422_saying_why(
    world: dict[str, Any], number: str
) -> None:
    client: httpx.AsyncClient = world["client"]
    raw = b'{"event_type": "x", "payload": {"n": [%s]}}' % number.encode()
    bad = Bad("POST", "/v1/messages", 422, "payload: Value error, the number at /n/0 is beyond 64")
    response = await client.post(
        "/v1/messages",
        content=raw,
        headers={**bearer(world["key"]), "content-type": "application/json"},
    )
    assert_refused(response, bad)
    email = b'{"to": "a@example.com", "template": "hello", "personalisation": {"n": %s}}'
    response = await client.post(
        "/v1/emails",
        content=email % number.encode(),
        headers={**bearer(world["key"]), "content-type": "application/json"},
    )
    assert_refused(response, Bad("POST", "/v1/emails", 422, "personalisation.n: Value error"))
    assert (await client.get("/v1/deliveries", headers=bearer(world["key"]))).json()["data"] == []


async def test_the_64_bit_bounds_themselves_are_kept_exactly(
    world: dict[str, Any], receiver: Receiver
) -> None:
    payload = {"bounds": [-(2**63), 2**64 - 1, 2**53 + 1, 1.5e19, -9.2e18, 0.1]}
    sent = await send(world["client"], world["key"], payload=payload)
    assert (await message_of(world["client"], world["key"], sent["id"]))["payload"] == payload
    await settled(world["client"], world["key"], sent["id"], "succeeded")
    assert json.loads(receiver.received[0].body)["data"] == payload


async def test_a_duplicate_key_the_last_wins_on_every_route(
    world: dict[str, Any], receiver: Receiver
) -> None:
    """Ingest (pydantic from the raw bytes) and FastAPI's routes (json) read duplicates
    alike; what is stored, signed and sent holds each key once."""
    client: httpx.AsyncClient = world["client"]
    headers = {**bearer(world["key"]), "content-type": "application/json"}
    raw = b'{"event_type": "a.a", "payload": {"n": 1, "n": 2}, "event_type": "order.paid"}'
    response = await client.post("/v1/messages", content=raw, headers=headers)
    assert response.status_code == 202, response.text
    message = await message_of(client, world["key"], response.json()["id"])
    assert (message["event_type"], message["payload"]) == ("order.paid", {"n": 2})
    await settled(client, world["key"], message["id"], "succeeded")
    assert b'{"n":2}' in receiver.received[0].body
    assert json.loads(receiver.received[0].body)["type"] == "order.paid"

    raw = b'{"description": "first", "description": "last"}'
    endpoint = f"/v1/endpoints/{world['endpoint_id']}"
    response = await client.patch(endpoint, content=raw, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["description"] == "last"

    raw = b'{"name": "first", "owner_email": "a@b.example", "name": "last"}'
    response = await client.post(
        "/v1/tenants", content=raw, headers={**admin(), "content-type": "application/json"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "last"
