"""Email end to end on the embedded mail sink: templates, sending, status, callbacks."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from prometheus_client import generate_latest

from support.api import bearer, new_endpoint, new_tenant
from support.emails import create_template, post_email, settled_email
from support.receivers import Receiver
from support.served import started
from support.waiting import wait_for
from tidings.app import Tidings


async def test_an_email_is_rendered_and_kept_by_the_mail_sink(client: httpx.AsyncClient) -> None:
    _, key = await new_tenant(client)
    await create_template(client, key)

    response = await post_email(client, key, reference="order-42")
    assert response.status_code == 202, response.text
    email_id = response.json()["id"]
    assert email_id.startswith("eml_")
    email = await settled_email(client, key, email_id, "delivered")

    assert email["subject"] == "Please confirm, Ada"
    assert email["variant"] is None
    assert email["variant_reason"] == "the template has no lookup"
    assert email["reference"] == "order-42"
    assert len(email["attempts"]) == 1
    sink = (await client.get("/v1/sink/emails", headers=bearer(key))).json()["data"]
    assert [(s["id"], s["to"], s["subject"]) for s in sink] == [
        (email_id, "ada@example.com", "Please confirm, Ada")
    ]
    assert sink[0]["text"].endswith("confirm only. Ada")
    assert sink[0]["html"] == "<p>Confirm, Ada</p>"
    assert sink[0]["message_id"] == f"<{email_id}@localhost>"


async def test_the_status_callback_reaches_a_subscribed_endpoint_signed(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url, event_types=["email.delivered"])
    receiver.secret = endpoint["secret"]
    await create_template(client, key)

    email_id = (await post_email(client, key, reference="r-1")).json()["id"]
    await wait_for(lambda: len(receiver.received) == 1)

    [callback] = receiver.received
    assert callback.verified
    event = orjson.loads(callback.body)
    assert event["type"] == "email.delivered"
    data = event["data"]
    assert (data["id"], data["reference"], data["to"], data["status"]) == (
        email_id,
        "r-1",
        "ada@example.com",
        "delivered",
    )
    assert data["variant"] is None
    assert data["time"].endswith("Z")


async def test_emails_do_not_reach_webhook_endpoints_and_the_lane_stays_hidden(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, key = await new_tenant(client)
    await new_endpoint(client, key, receiver.url, event_types=["order.paid"])
    await create_template(client, key)
    email_id = (await post_email(client, key)).json()["id"]
    await settled_email(client, key, email_id, "delivered")

    endpoints = (await client.get("/v1/endpoints", headers=bearer(key))).json()["data"]
    assert [e["url"] for e in endpoints] == [receiver.url]
    assert receiver.received == []


async def test_a_missing_field_is_a_400_that_names_it_and_nothing_is_sent(
    tidings: Tidings, client: httpx.AsyncClient
) -> None:
    _, key = await new_tenant(client)
    await create_template(client, key, text="Hello {{ name }}, your code is {{ code }}")

    response = await post_email(client, key)

    assert response.status_code == 400
    problem = response.json()
    assert problem["title"] == "Missing field"
    assert "'code'" in problem["detail"]
    assert "'name'" not in problem["detail"]
    assert (await client.get("/v1/sink/emails", headers=bearer(key))).json()["data"] == []


async def test_a_templates_lookup_series_exist_after_a_restart(
    make_settings: Any, client: httpx.AsyncClient
) -> None:
    """Created through one tidings, counted from zero by the next on the same store."""
    _, key = await new_tenant(client)
    await create_template(client, key, name="welcome")

    async with started(make_settings()) as later:
        exposed = generate_latest(later.metrics.registry).decode()

    assert 'tidings_lookup_total{outcome="error",reason="timeout",template="welcome"} 0.0' in (
        exposed
    )
