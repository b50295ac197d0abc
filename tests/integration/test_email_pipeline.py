"""The whole email pipeline through the API: real aiosmtpd servers and a real lookup server.

Every server runs on 127.0.0.1. The SMTP servers run in aiosmtpd's own thread
and play a script (canned replies or a dropped connection for the next MAIL,
RCPT or DATA commands, accepting whatever the script does not cover). The
lookup server is an aiohttp server whose answer each test picks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from support.api import bearer, new_endpoint, new_tenant
from support.emails import create_template, email_of, send_email, settled_email, sink
from support.metrics import metric
from support.receivers import Receiver, json_response, serving
from support.smtp import DROP, Mailbox
from support.stores import BOTH_BACKENDS
from support.waiting import wait_for
from tidings.app import Tidings

DEFAULT_FROM = "tidings@localhost"  # Settings.email_from when not set
SETTLES_WITHIN = 5.0  # an email's first attempt, or its failure, comes this soon
RETRY_WITHIN = 10.0  # the second attempt comes 5 s ±20% after the first

DEFAULT_TEXT = "Two buttons: confirm and subscribe, or confirm only. Ada"
VARIANT_TEXT = "One button: confirm. Ada"
VARIANTS = {"true": {"text": "One button: confirm. {{ name }}"}}


# API shortcuts -------------------------------------------------------------------------

pytestmark = BOTH_BACKENDS


async def lookups_counted(
    client: httpx.AsyncClient, template: str, outcome: str, reason: str = ""
) -> float | None:
    return await metric(
        client, "tidings_lookup_total", template=template, outcome=outcome, reason=reason
    )


def event_of(received: Receiver) -> dict[str, Any]:
    """The only callback ``received`` got, verified against its secret."""
    [callback] = received.received
    assert callback.verified is True
    event: dict[str, Any] = orjson.loads(callback.body)
    return event


# The lookup server -------------------------------------------------------------------------


@dataclass
class LookupServer:
    """Answers GET /supporters with ``answer``; keeps the query string of every request."""

    answer: Handler
    port: int = 0
    queries: list[str] = field(default_factory=list)
    """The raw query string of every request, in order."""
    params: list[list[tuple[str, str]]] = field(default_factory=list)
    """The decoded query parameters of every request, in order."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/supporters?email={{{{ to }}}}"


def answering(document: object, status: int = 200) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        return json_response(document, status)

    return answer


SLOW_SECONDS = 2.0


async def _slow(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(SLOW_SECONDS)  # cancelled once the lookup hangs up
    return json_response({"subscribed": True})


async def _not_json(request: web.Request) -> web.StreamResponse:
    return web.Response(text="<html>oops</html>", content_type="text/html")


async def _too_large(request: web.Request) -> web.StreamResponse:
    head, tail = b'{"subscribed":true,"pad":"', b'"}'
    return web.Response(
        body=head + b"x" * (64 * 1024 + 1024) + tail, content_type="application/json"
    )


LOOKUP = web.AppKey("lookup", LookupServer)


async def _supporters(request: web.Request) -> web.StreamResponse:
    server = request.app[LOOKUP]
    server.queries.append(request.query_string)
    server.params.append(list(request.query.items()))
    return await server.answer(request)


@pytest.fixture
async def lookup() -> AsyncIterator[LookupServer]:
    found = LookupServer(answering({"subscribed": True}))
    app = web.Application()
    app[LOOKUP] = found
    app.router.add_get("/supporters", _supporters)
    async with serving(app) as found.port:
        yield found


# The first email of a tenant ------------------------------------------------------------


async def test_the_first_email_of_a_tenant_is_sent_at_once(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, key = await new_tenant(client)
    await create_template(client, key)
    # The tenant sets up its callback endpoint first: the dispatcher reads its
    # endpoints now, as it would after any other change a moment before.
    await new_endpoint(client, key, receiver.url, event_types=["email.delivered"])

    email_id = await send_email(client, key)

    await settled_email(client, key, email_id, "delivered", within=1.5)


# SMTP ----------------------------------------------------------------------------------


async def test_an_email_accepted_by_the_smtp_server_arrives_and_is_delivered(
    smtp_app: Tidings, smtp_client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    _, key = await new_tenant(smtp_client)
    await create_template(smtp_client, key)

    email_id = await send_email(smtp_client, key, reference="order-42")
    found = await settled_email(smtp_client, key, email_id, "delivered", within=SETTLES_WITHIN)

    assert mailbox.envelopes == [(DEFAULT_FROM, ["ada@example.com"])]
    [got] = mailbox.received
    assert got["From"] == DEFAULT_FROM
    assert got["To"] == "ada@example.com"
    assert got["Subject"] == "Please confirm, Ada"
    assert got["Message-ID"] == f"<{email_id}@localhost>"
    assert got["X-Tidings-Reference"] == "order-42"
    text = got.get_body(("plain",))
    assert text is not None
    assert text.get_content().rstrip("\r\n") == DEFAULT_TEXT
    assert found["subject"] == "Please confirm, Ada"
    assert found["sent_at"] is not None
    assert found["failure"] is None
    [attempt] = found["attempts"]
    assert attempt["status_code"] == 250
    assert attempt["error"] is None
    # The sink is off when an SMTP server is configured.
    assert (await smtp_client.get("/v1/sink/emails", headers=bearer(key))).status_code == 404


async def test_a_550_at_rcpt_fails_the_email_at_once_and_says_so_signed(
    smtp_app: Tidings, smtp_client: httpx.AsyncClient, mailbox: Mailbox, receiver: Receiver
) -> None:
    _, key = await new_tenant(smtp_client)
    endpoint = await new_endpoint(smtp_client, key, receiver.url, event_types=["email.failed"])
    receiver.secret = endpoint["secret"]
    await create_template(smtp_client, key)
    mailbox.next("RCPT", "550 5.1.1 no such user")

    email_id = await send_email(smtp_client, key, reference="r-550")
    found = await settled_email(smtp_client, key, email_id, "failed", within=SETTLES_WITHIN)

    assert found["failure"].startswith("rejected: SMTP 550 ")
    assert "no such user" in found["failure"]
    assert found["sent_at"] is None
    [attempt] = found["attempts"]
    assert attempt["status_code"] == 550
    assert mailbox.received == []
    await wait_for(lambda: len(receiver.received) >= 1)
    event = event_of(receiver)
    assert event["type"] == "email.failed"
    data = event["data"]
    assert (data["id"], data["reference"], data["to"], data["status"]) == (
        email_id,
        "r-550",
        "ada@example.com",
        "failed",
    )
    assert data["reason"] == found["failure"]
    # Failed is final: no other attempt follows.
    await asyncio.sleep(0.3)
    assert len((await email_of(smtp_client, key, email_id))["attempts"]) == 1
    assert len(receiver.received) == 1


async def test_a_451_is_retried_and_the_second_attempt_delivers(
    smtp_app: Tidings, smtp_client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    _, key = await new_tenant(smtp_client)
    await create_template(smtp_client, key)
    mailbox.next("RCPT", "451 4.3.0 try again later")

    email_id = await send_email(smtp_client, key)
    retrying = await settled_email(smtp_client, key, email_id, "retrying", within=SETTLES_WITHIN)
    assert [a["status_code"] for a in retrying["attempts"]] == [451]
    assert mailbox.received == []
    found = await settled_email(smtp_client, key, email_id, "delivered", within=RETRY_WITHIN)

    assert [a["status_code"] for a in found["attempts"]] == [451, 250]
    assert found["sent_at"] is not None
    assert found["failure"] is None
    [got] = mailbox.received
    assert got["Message-ID"] == f"<{email_id}@localhost>"


async def test_a_dropped_connection_is_retried_and_the_second_attempt_delivers(
    smtp_app: Tidings, smtp_client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    _, key = await new_tenant(smtp_client)
    await create_template(smtp_client, key)
    mailbox.next("DATA", DROP)

    email_id = await send_email(smtp_client, key)
    found = await settled_email(smtp_client, key, email_id, "delivered", within=RETRY_WITHIN)

    first, second = found["attempts"]
    assert first["status_code"] is None
    assert first["error"] is not None
    assert first["error"].startswith("connection_closed")
    assert (second["status_code"], second["error"]) == (250, None)
    assert len(mailbox.received) == 1
    assert mailbox.connections == 2


async def test_deleting_the_template_of_a_retrying_email_fails_it(
    smtp_app: Tidings, smtp_client: httpx.AsyncClient, mailbox: Mailbox, receiver: Receiver
) -> None:
    _, key = await new_tenant(smtp_client)
    endpoint = await new_endpoint(smtp_client, key, receiver.url, event_types=["email.failed"])
    receiver.secret = endpoint["secret"]
    await create_template(smtp_client, key)
    mailbox.next("RCPT", "451 4.3.0 try again later")
    email_id = await send_email(smtp_client, key, reference="r-deleted")
    await settled_email(smtp_client, key, email_id, "retrying", within=SETTLES_WITHIN)

    deleted = await smtp_client.delete("/v1/templates/confirm", headers=bearer(key))
    assert deleted.status_code == 204, deleted.text
    # From now on the server would accept: only the deleted template stops the email.
    found = await settled_email(smtp_client, key, email_id, "failed", within=RETRY_WITHIN)

    assert found["failure"] is not None
    assert "'confirm' was deleted" in found["failure"]
    assert len(found["attempts"]) == 2
    assert found["attempts"][0]["status_code"] == 451
    assert found["sent_at"] is None
    assert mailbox.received == []
    await wait_for(lambda: len(receiver.received) >= 1)
    event = event_of(receiver)
    assert event["type"] == "email.failed"
    data = event["data"]
    assert (data["id"], data["reference"], data["status"]) == (email_id, "r-deleted", "failed")
    assert "was deleted" in data["reason"]


# Lookups ---------------------------------------------------------------------------------


async def test_a_found_lookup_sends_its_variant(
    tidings: Tidings, client: httpx.AsyncClient, lookup: LookupServer
) -> None:
    _, key = await new_tenant(client)
    await create_template(
        client, key, lookup={"url": lookup.url, "select": "/subscribed"}, variants=VARIANTS
    )

    email_id = await send_email(client, key, to="a+b@example.com")
    found = await settled_email(client, key, email_id, "delivered", within=SETTLES_WITHIN)

    assert found["variant"] == "true"
    assert "lookup" in found["variant_reason"]
    assert "'true'" in found["variant_reason"]
    [kept] = await sink(client, key)
    assert kept["text"] == VARIANT_TEXT
    assert kept["subject"] == "Please confirm, Ada"  # the variant keeps the default's
    assert kept["html"] == "<p>Confirm, Ada</p>"
    # The address was percent-encoded: "+" did not become a space, and nothing else
    # (another parameter, say) came out of it.
    [query] = lookup.queries
    assert query.startswith("email=a%2Bb")
    assert lookup.params == [[("email", "a+b@example.com")]]
    assert await lookups_counted(client, "confirm", "found") == 1
    assert await lookups_counted(client, "confirm", "error", "timeout") == 0


FAILURES = [
    pytest.param("status", answering({"subscribed": True}, status=500), id="500"),
    pytest.param("timeout", _slow, id="slow"),
    pytest.param("not_json", _not_json, id="not-json"),
    pytest.param("too_large", _too_large, id="too-large"),
    pytest.param("missing_field", answering({"plan": "gold"}), id="missing-field"),
    pytest.param("wrong_type", answering({"subscribed": None}), id="null"),
]


@pytest.mark.parametrize(("reason", "answer"), FAILURES)
async def test_a_failed_lookup_sends_the_default_content(
    tidings: Tidings, client: httpx.AsyncClient, lookup: LookupServer, reason: str, answer: Handler
) -> None:
    lookup.answer = answer
    name = f"confirm-{reason}"
    _, key = await new_tenant(client)
    await create_template(
        client,
        key,
        name=name,
        lookup={"url": lookup.url, "select": "/subscribed", "timeout_ms": 300},
        variants=VARIANTS,
    )

    started = time.monotonic()
    email_id = await send_email(client, key, template=name)
    found = await settled_email(client, key, email_id, "delivered", within=SETTLES_WITHIN)
    elapsed = time.monotonic() - started

    # A slow lookup costs its timeout (300 ms), not the answer's 2 s.
    assert elapsed < 1.5
    assert found["variant"] is None
    assert found["variant_reason"].startswith(f"the lookup failed ({reason})")
    [kept] = await sink(client, key)
    assert kept["text"] == DEFAULT_TEXT
    assert len(lookup.queries) == 1
    assert await lookups_counted(client, name, "error", reason) == 1
    assert await lookups_counted(client, name, "found") == 0


async def test_the_breaker_stops_lookups_after_five_failures(
    tidings: Tidings, client: httpx.AsyncClient, lookup: LookupServer
) -> None:
    lookup.answer = answering({"subscribed": True}, status=500)
    _, key = await new_tenant(client)
    await create_template(
        client, key, lookup={"url": lookup.url, "select": "/subscribed"}, variants=VARIANTS
    )

    reasons = []
    for _ in range(6):
        email_id = await send_email(client, key)
        found = await settled_email(client, key, email_id, "delivered", within=SETTLES_WITHIN)
        assert found["variant"] is None
        reasons.append(found["variant_reason"])

    assert [kept["text"] for kept in await sink(client, key)] == [DEFAULT_TEXT] * 6
    assert len(lookup.queries) == 5
    assert all(r.startswith("the lookup failed (status)") for r in reasons[:5])
    assert reasons[5].startswith("the lookup failed (breaker_open)")
    assert await lookups_counted(client, "confirm", "error", "status") == 5
    assert await lookups_counted(client, "confirm", "error", "breaker_open") == 1


async def test_a_value_naming_no_variant_sends_the_default_content(
    tidings: Tidings, client: httpx.AsyncClient, lookup: LookupServer
) -> None:
    lookup.answer = answering({"subscribed": False})
    _, key = await new_tenant(client)
    await create_template(
        client, key, lookup={"url": lookup.url, "select": "/subscribed"}, variants=VARIANTS
    )

    email_id = await send_email(client, key)
    found = await settled_email(client, key, email_id, "delivered", within=SETTLES_WITHIN)

    assert found["variant"] is None
    assert "'false'" in found["variant_reason"]
    assert "no variant" in found["variant_reason"]
    [kept] = await sink(client, key)
    assert kept["text"] == DEFAULT_TEXT
    assert await lookups_counted(client, "confirm", "not_found") == 1
    assert await lookups_counted(client, "confirm", "found") == 0


async def test_a_new_template_has_its_lookup_series_at_zero(client: httpx.AsyncClient) -> None:
    _, key = await new_tenant(client)
    assert await lookups_counted(client, "welcome", "error", "timeout") is None

    await create_template(client, key, name="welcome")

    assert await lookups_counted(client, "welcome", "error", "timeout") == 0.0
    assert await lookups_counted(client, "welcome", "error", "breaker_open") == 0.0
    assert await lookups_counted(client, "welcome", "found") == 0.0
    assert await lookups_counted(client, "welcome", "not_found") == 0.0


async def test_an_attempt_is_cut_off_at_the_request_timeout_and_retried(
    smtp_client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    """An SMTP server that takes 3 s to accept (the tests' request timeout is 2 s, the
    SMTP client's own 5 s): the attempt ends as a timeout within the bound, so it
    cannot run past its lease, and the email is retried."""
    _, key = await new_tenant(smtp_client)
    await create_template(smtp_client, key)
    mailbox.data_delay_s = 3.0

    email_id = await send_email(smtp_client, key)
    found = await settled_email(smtp_client, key, email_id, "retrying", within=SETTLES_WITHIN)

    [attempt] = found["attempts"]
    assert attempt["error"].startswith("timeout")
    assert 1900 <= attempt["duration_ms"] < 2900
    assert found["variant_reason"] == "not sent: the attempt timed out"
