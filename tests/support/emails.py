"""Shortcuts for templates and emails through the HTTP API; each asserts that the call
succeeded, so a test fails where its setup did."""

from __future__ import annotations

from typing import Any

import httpx

from support.api import bearer, get_json
from support.waiting import wait_for

CONFIRM: dict[str, Any] = {
    "name": "confirm",
    "subject": "Please confirm, {{ name }}",
    "text": "Two buttons: confirm and subscribe, or confirm only. {{ name }}",
    "html": "<p>Confirm, {{ name }}</p>",
}
"""A template with every part, as a producer of confirmation emails would send it."""


async def create_template(
    client: httpx.AsyncClient, key: str, template: dict[str, Any] = CONFIRM, **fields: Any
) -> dict[str, Any]:
    """``POST /v1/templates`` of ``template`` with ``fields`` changed, which must succeed;
    the template as created."""
    response = await client.post("/v1/templates", json={**template, **fields}, headers=bearer(key))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def post_email(
    client: httpx.AsyncClient, key: str, headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    """``POST /v1/emails`` (to Ada, template ``confirm`` unless ``fields`` say otherwise),
    answered as it may be."""
    body = {
        "to": "ada@example.com",
        "template": "confirm",
        "personalisation": {"name": "Ada"},
        **fields,
    }
    return await client.post("/v1/emails", json=body, headers={**bearer(key), **(headers or {})})


async def send_email(client: httpx.AsyncClient, key: str, **fields: Any) -> str:
    """Send an email (to Ada, template ``confirm`` unless told otherwise), which must be
    accepted; its id."""
    response = await post_email(client, key, **fields)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "accepted"
    email_id: str = response.json()["id"]
    assert email_id.startswith("eml_")
    return email_id


async def email_of(client: httpx.AsyncClient, key: str, email_id: str) -> dict[str, Any]:
    """``GET /v1/emails/{email_id}``, which must succeed."""
    body: dict[str, Any] = await get_json(client, f"/v1/emails/{email_id}", key)
    return body


async def settled_email(
    client: httpx.AsyncClient, key: str, email_id: str, status: str, within: float = 10.0
) -> dict[str, Any]:
    """Wait until the email has ``status``; return it."""
    found: dict[str, Any] = {}

    async def check() -> bool:
        found.update(await email_of(client, key, email_id))
        return bool(found["status"] == status)

    await wait_for(check, within=within)
    return found


async def sink(client: httpx.AsyncClient, key: str) -> list[dict[str, Any]]:
    """The first page of the mail sink's emails (``GET /v1/sink/emails``), newest first."""
    data: list[dict[str, Any]] = (await get_json(client, "/v1/sink/emails", key))["data"]
    return data
