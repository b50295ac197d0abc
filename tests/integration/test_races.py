"""Two API processes at one instant: the same Idempotency-Key, a tenant's first emails.

On PostgreSQL each ``Tidings`` here is what one process runs; they share nothing but
the database. An SQLite file is kept by one process, so there the two "processes" are
two clients of one: the same requests, at the same instant, must give the same answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from support.api import bearer, new_tenant
from support.served import client_of, started
from support.stores import BOTH_BACKENDS
from tidings.app import Tidings
from tidings.config import Settings
from tidings.domain.models import EndpointKind

pytestmark = BOTH_BACKENDS

ROUNDS = 50

Pair = tuple[Tidings, httpx.AsyncClient, httpx.AsyncClient]


@pytest.fixture
async def two(database_url: str, make_settings: Callable[..., Settings]) -> AsyncIterator[Pair]:
    """The first process, and the API clients of two processes on the test's store."""
    async with contextlib.AsyncExitStack() as stack:
        apps: list[Tidings] = []
        for _ in range(2 if database_url.startswith("postgresql") else 1):
            apps.append(await stack.enter_async_context(started(make_settings(), role="api")))
        clients = [await stack.enter_async_context(client_of(app)) for app in (apps[0], apps[-1])]
        yield apps[0], clients[0], clients[1]


async def _post(
    client: httpx.AsyncClient, key: str, idempotency_key: str, payload: object
) -> httpx.Response:
    return await client.post(
        "/v1/messages",
        json={"event_type": "order.paid", "payload": payload},
        headers={**bearer(key), "idempotency-key": idempotency_key},
    )


async def test_one_key_sent_to_two_processes_at_once_makes_one_message(two: Pair) -> None:
    """Both answers are 202 and name one message: the second to commit waits for the
    first, and replays its answer (never a store error on the key's uniqueness)."""
    _, first, second = two
    _, key = await new_tenant(first)
    for n in range(ROUNDS):
        answers = await asyncio.gather(
            _post(first, key, f"k-{n}", {"n": n}), _post(second, key, f"k-{n}", {"n": n})
        )
        assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
        assert answers[0].json()["id"] == answers[1].json()["id"]
        replayed = sorted(a.headers.get("idempotent-replayed", "false") for a in answers)
        assert replayed == ["false", "true"]


async def test_one_key_with_two_bodies_at_once_is_one_message_and_one_conflict(
    two: Pair,
) -> None:
    _, first, second = two
    _, key = await new_tenant(first)
    for n in range(ROUNDS):
        answers = await asyncio.gather(
            _post(first, key, f"k-{n}", {"n": n}), _post(second, key, f"k-{n}", {"other": n})
        )
        assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]


async def test_first_emails_of_a_tenant_on_two_processes_make_one_email_lane(two: Pair) -> None:
    """The lane is made by the tenant's first email; two first emails at once, one on
    each process, must find or make the same one."""
    app, first, second = two
    template = {"name": "hi", "subject": "Hi {{ name }}", "text": "Hello {{ name }}"}
    email = {"to": "ada@example.com", "template": "hi", "personalisation": {"name": "Ada"}}
    tenants = []
    for n in range(ROUNDS // 2):
        tenant_id, key = await new_tenant(first, f"t{n}")
        created = await first.post("/v1/templates", json=template, headers=bearer(key))
        assert created.status_code == 201, created.text
        tenants.append(tenant_id)
        answers = await asyncio.gather(
            *(c.post("/v1/emails", json=email, headers=bearer(key)) for c in (first, second))
        )
        assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]

    lanes = Counter(
        ep.tenant_id for ep in await app.store.active_endpoints() if ep.kind is EndpointKind.EMAIL
    )
    assert lanes == dict.fromkeys(tenants, 1)
