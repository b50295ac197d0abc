"""Shortcuts for tidings' HTTP API: credentials, and the tenants, endpoints and messages
most tests need before they can test anything. Each asserts that the call succeeded, so
a test fails where its setup did."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from support.receivers import Receiver
from support.waiting import wait_for

ADMIN_TOKEN = "admin-test-token"


def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def get_json(client: httpx.AsyncClient, path: str, key: str, **params: Any) -> Any:
    """``GET path`` with the tenant's ``key``, which must succeed; the JSON it answered."""
    response = await client.get(path, headers=bearer(key), params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def new_tenant(client: httpx.AsyncClient, name: str = "acme") -> tuple[str, str]:
    """A new tenant and an API key for it: ``(tenant_id, key)``."""
    response = await client.post(
        "/v1/tenants", json={"name": name, "owner_email": f"ops@{name}.example"}, headers=admin()
    )
    assert response.status_code == 201, response.text
    tenant_id = response.json()["id"]
    response = await client.post(f"/v1/tenants/{tenant_id}/api-keys", headers=admin())
    assert response.status_code == 201, response.text
    return tenant_id, response.json()["key"]


async def new_endpoint(
    client: httpx.AsyncClient, key: str, url: str, **fields: Any
) -> dict[str, Any]:
    response = await client.post("/v1/endpoints", json={"url": url, **fields}, headers=bearer(key))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def endpoint_of(client: httpx.AsyncClient, key: str, endpoint_id: str) -> dict[str, Any]:
    """``GET /v1/endpoints/{endpoint_id}``, which must succeed."""
    body: dict[str, Any] = await get_json(client, f"/v1/endpoints/{endpoint_id}", key)
    return body


async def setup_endpoint(
    client: httpx.AsyncClient, receiver: Receiver, **fields: Any
) -> tuple[str, str]:
    """A new tenant with one endpoint at ``receiver``, which then checks signatures: the
    tenant's key and the endpoint's id."""
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url, **fields)
    receiver.secret = endpoint["secret"]
    return key, str(endpoint["id"])


async def send(
    client: httpx.AsyncClient,
    key: str,
    event_type: str = "order.paid",
    payload: Any = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    headers = bearer(key)
    if idempotency_key:
        headers["idempotency-key"] = idempotency_key
    response = await client.post(
        "/v1/messages",
        json={"event_type": event_type, "payload": payload if payload is not None else {}},
        headers=headers,
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def delivery_states(client: httpx.AsyncClient, key: str, message_id: str) -> list[str]:
    return [d["state"] for d in (await message_of(client, key, message_id))["deliveries"]]


async def message_of(client: httpx.AsyncClient, key: str, message_id: str) -> dict[str, Any]:
    """``GET /v1/messages/{message_id}``, which must succeed."""
    body: dict[str, Any] = await get_json(client, f"/v1/messages/{message_id}", key)
    return body


async def settled(
    client: httpx.AsyncClient, key: str, message_id: str, state: str
) -> dict[str, Any]:
    """Wait until the message's only delivery is in ``state``; return that delivery."""
    found: dict[str, Any] = {}

    async def check() -> bool:
        found.update((await message_of(client, key, message_id))["deliveries"][0])
        return bool(found["state"] == state)

    await wait_for(check)
    return found


async def collect_pages(
    client: httpx.AsyncClient, key: str, path: str, limit: int, **params: Any
) -> list[dict[str, Any]]:
    """Follow ``next_cursor`` from the first page to the last."""
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        page = await get_json(client, path, key, **query)
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "pagination does not end"


async def deliveries(http: httpx.AsyncClient, key: str, **params: str) -> list[dict[str, Any]]:
    """Every page of ``GET /v1/deliveries`` with ``params``."""
    pages = await collect_pages(http, key, "/v1/deliveries", 1000, **params)
    return [delivery for page in pages for delivery in page["data"]]


def chunked(body: bytes, size: int = 16 * 1024) -> Callable[[], AsyncIterator[bytes]]:
    """``body`` as a request body sent in chunks (no Content-Length)."""

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), size):
            yield body[start : start + size]

    return stream
