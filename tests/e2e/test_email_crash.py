"""Crash safety for email, end to end: durable before acknowledged; at-least-once.

The webhook crash test (``test_crash.py``) for the email channel. A real
``tidings serve`` sends through a real SMTP server (aiosmtpd, in a thread of
this process, on 127.0.0.1) and is killed with SIGKILL while its emails are
being delivered, then started again on the same SQLite file. Every email it
answered ``202`` must reach the SMTP server at least once, under the
``Message-ID`` derived from its id; the only emails that may arrive twice are
those whose attempt was in flight at the kill (at most the email lane's cap),
and a repeat carries the same ``Message-ID`` as the first, so a mail system can
recognise it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

from support.api import bearer, new_tenant
from support.processes import LEASE_S, Server, api, killed_at_the_end, poster
from support.receivers import first_and_repeats
from support.sockets import free_port
from support.waiting import wait_for
from tidings.domain.fanout import EMAIL_LANE_MAX_IN_FLIGHT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("nothing_left_open")]

TOTAL = 500  # emails acknowledged over both lives of the server
CONCURRENCY = 16  # emails posted at a time
KILL_AFTER = 100  # arrivals at the SMTP server before the kill, at a moment one is in flight...
KILL_BY = 300  # ...or at the latest (must stay below TOTAL: some arrived, not all)
DOMAIN = "localhost"  # the Message-ID domain: that of TIDINGS_EMAIL_FROM
SMTP_TIMEOUT_S = 1  # per SMTP command; an attempt stays well inside the lease
TEMPLATE: dict[str, Any] = {
    "name": "receipt",
    "subject": "Receipt {{ n }}",
    "text": "Thanks for order {{ n }}, {{ name }}.",
}


# the SMTP server ---------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    message_id: str
    reference: str
    subject: str
    at: float


class Mailbox:
    """An aiosmtpd handler: keeps the ``Message-ID`` of every message it receives and
    answers ``250`` after 0-5 ms, so deliveries are genuinely in flight."""

    def __init__(self) -> None:
        self.arrivals: list[Arrival] = []
        self.handling = 0  # messages received and not yet answered

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        headers = BytesHeaderParser(policy=default_policy).parsebytes(envelope.content)
        self.handling += 1
        try:
            # Kept before the answer: a message the dead server never heard back about
            # counts as arrived, so a resend of it counts as a duplicate.
            self.arrivals.append(
                Arrival(
                    str(headers["Message-ID"]),
                    str(headers["X-Tidings-Reference"]),
                    str(headers["Subject"]),
                    time.monotonic(),
                )
            )
            await asyncio.sleep(random.uniform(0, 0.005))
        finally:
            self.handling -= 1
        return "250 2.0.0 OK queued"


@pytest.fixture
def smtp() -> Iterator[Controller]:
    """aiosmtpd on 127.0.0.1 in its own thread, with a :class:`Mailbox`; stopped after."""
    controller = Controller(Mailbox(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def server(tmp_path: Path, smtp: Controller) -> Iterator[Server]:
    """``tidings serve``, sending email to ``smtp``; always killed at the end (before the
    SMTP server stops), its output shown if the test fails."""
    found = Server(tmp_path)
    found.env |= {
        "TIDINGS_SMTP_URL": f"smtp://127.0.0.1:{smtp.port}?timeout={SMTP_TIMEOUT_S}",
        "TIDINGS_EMAIL_FROM": f"receipts@{DOMAIN}",
    }
    with killed_at_the_end(found):
        yield found


# helpers -------------------------------------------------------------------------------


def message_id(email_id: str) -> str:
    return f"<{email_id}@{DOMAIN}>"


def reference(n: int) -> str:
    return f"order-{n}"


async def post_email(session: aiohttp.ClientSession, key: str, n: int) -> tuple[str, str]:
    """Post email ``n``; ``(reference, email id)`` once the server answered 202."""
    body = {
        "to": f"customer{n}@example.com",
        "template": TEMPLATE["name"],
        "personalisation": {"n": n, "name": "Ada"},
        "reference": reference(n),
    }
    async with session.post("/v1/emails", json=body, headers=bearer(key)) as response:
        text = await response.text()
    assert response.status == 202, text
    return reference(n), str(json.loads(text)["id"])


@dataclass
class Kill:
    acked: int = 0  # acknowledgements before the kill
    lost: int = 0  # requests that failed with the server: never acknowledged
    arrived: int = 0  # messages the SMTP server had received
    handling: int = 0  # messages it was answering at that moment
    status: int | None = None


async def post_then_kill(
    server: Server,
    session: aiohttp.ClientSession,
    key: str,
    numbers: Iterator[int],
    acked: dict[str, str],
    mailbox: Mailbox,
) -> Kill:
    """Post up to ``TOTAL`` emails concurrently; SIGKILL the server once ``KILL_AFTER``
    have arrived, at a moment the SMTP server is receiving one (or at ``KILL_BY``)."""
    kill: Kill | None = None
    lost = 0
    todo = iter(range(TOTAL))

    def due() -> bool:
        arrived = len(mailbox.arrivals)
        return arrived >= KILL_AFTER and (mailbox.handling > 0 or arrived >= KILL_BY)

    async def killer() -> None:
        nonlocal kill
        deadline = time.monotonic() + 30
        while not due():
            assert time.monotonic() < deadline, f"{len(mailbox.arrivals)} arrived in 30 s"
            await asyncio.sleep(0.001)
        kill = Kill(acked=len(acked), arrived=len(mailbox.arrivals), handling=mailbox.handling)
        kill.status = server.kill()

    async def sender() -> None:
        nonlocal lost
        for _ in todo:  # shared by the posters: TOTAL posts at most
            if kill is not None:
                return
            try:
                # A 202 that reaches us is an acknowledgement, even if it raced the kill.
                ref, email_id = await post_email(session, key, next(numbers))
            except (aiohttp.ClientError, TimeoutError):
                if kill is None:
                    raise
                lost += 1
                return
            acked[ref] = email_id

    await asyncio.gather(killer(), *(sender() for _ in range(CONCURRENCY)))
    assert kill is not None
    kill.lost = lost
    return kill


async def post_all(
    session: aiohttp.ClientSession,
    key: str,
    numbers: Iterator[int],
    n: int,
    acked: dict[str, str],
) -> None:
    todo = iter(range(n))

    async def sender() -> None:
        for _ in todo:
            ref, email_id = await post_email(session, key, next(numbers))
            acked[ref] = email_id

    await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))


async def statuses(session: aiohttp.ClientSession, key: str, ids: list[str]) -> dict[str, Any]:
    """``GET /v1/emails/{id}`` of every id, ``CONCURRENCY`` at a time."""
    found: dict[str, Any] = {}
    todo = iter(ids)

    async def reader() -> None:
        for email_id in todo:
            async with session.get(f"/v1/emails/{email_id}", headers=bearer(key)) as response:
                text = await response.text()
            assert response.status == 200, text
            found[email_id] = json.loads(text)

    await asyncio.gather(*(reader() for _ in range(CONCURRENCY)))
    return found


# the scenario --------------------------------------------------------------------------


async def test_kill_9_while_sending_emails_loses_no_acknowledged_email(
    server: Server, smtp: Controller
) -> None:
    began = time.monotonic()
    mailbox: Mailbox = smtp.handler
    numbers = itertools.count()
    acked: dict[str, str] = {}  # reference -> email id, for every 202

    server.start()
    await server.ready()
    async with api(server) as http:
        _, key = await new_tenant(http)
        response = await http.post("/v1/templates", json=TEMPLATE, headers=bearer(key))
        assert response.status_code == 201, response.text
    async with poster(server) as session:
        kill = await post_then_kill(server, session, key, numbers, acked, mailbox)
    assert kill.status == -signal.SIGKILL, "the server died before it was killed"
    assert 0 < kill.arrived < TOTAL, "the kill was not in the middle of the deliveries"
    killed_at = time.monotonic()

    await asyncio.sleep(0.2)  # let the SMTP server finish reading what the dead server sent
    restarted_at = time.monotonic()
    server.start()
    await server.ready()
    async with poster(server) as session:
        await post_all(session, key, numbers, TOTAL - len(acked), acked)
        assert len(acked) == len(set(acked.values())) == TOTAL
        posted_at = time.monotonic()

        def missing() -> set[str]:
            arrived = {a.message_id for a in mailbox.arrivals}
            return {message_id(i) for i in acked.values()} - arrived

        with contextlib.suppress(AssertionError):
            await wait_for(lambda: not missing(), within=30 + LEASE_S, every=0.05)
        assert not missing(), f"{len(missing())} acknowledged emails never arrived"
        delivered_at = time.monotonic()

        # Each result is committed a moment after its 250: wait for the last ones.
        found: dict[str, Any] = {}

        async def all_delivered() -> bool:
            pending = [i for i in acked.values() if found.get(i, {}).get("status") != "delivered"]
            found.update(await statuses(session, key, pending))
            return all(found[i]["status"] == "delivered" for i in acked.values())

        with contextlib.suppress(AssertionError):
            await wait_for(all_delivered, within=10, every=0.2)
        assert all(found[i]["status"] == "delivered" for i in acked.values()), {
            i: found[i]["status"] for i in acked.values() if found[i]["status"] != "delivered"
        }
        # The killed server's attempts left no record; the restarted server's did.
        assert {len(found[i]["attempts"]) for i in acked.values()} == {1}

    arrivals = list(mailbox.arrivals)
    # Every arrival of an acknowledged email, a repeat included, carries the Message-ID
    # of that email's id: a mail system that dedupes by Message-ID sees one email.
    wrong = [
        a
        for a in arrivals
        if a.reference in acked and a.message_id != message_id(acked[a.reference])
    ]
    assert wrong == []
    first, repeats = first_and_repeats(arrivals, lambda a: a.message_id)
    # At most the lane's in-flight attempts had no committed result at the kill, and only
    # those are sent again: duplicates are bounded by the lane's cap per kill.
    assert len(repeats) <= EMAIL_LANE_MAX_IN_FLIGHT * 1, [r.message_id for r in repeats]
    for again in repeats:
        original = first[again.message_id]
        # The same email (reference and subject), sent first by the killed server.
        assert (again.reference, again.subject) == (original.reference, original.subject)
        assert original.at < restarted_at
    # Committed but unacknowledged (posted as the server died) emails may arrive too.
    extra = set(first) - {message_id(i) for i in acked.values()}
    assert len(extra) <= kill.lost, extra

    print(
        f"acked before kill {kill.acked}, lost at kill {kill.lost}, arrived before kill "
        f"{kill.arrived}, being received at the kill {kill.handling}; arrivals "
        f"{len(arrivals)} for {len(first)} emails, duplicates {len(repeats)}, "
        f"unacknowledged but sent {len(extra)}; kill at {killed_at - began:.1f}s, "
        f"restarted at {restarted_at - began:.1f}s, all posted at {posted_at - began:.1f}s, "
        f"all arrived at {delivered_at - began:.1f}s, done at {time.monotonic() - began:.1f}s"
    )
