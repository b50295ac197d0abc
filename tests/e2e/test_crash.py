"""Crash safety, end to end: durable before acknowledged; at-least-once.

A real ``tidings serve`` runs as a subprocess on a SQLite file and is killed
with SIGKILL (no shutdown hook, no drain, no flush) while it is accepting and
delivering messages, then started again on the same file and port. Every
message it answered ``202`` must reach the receiver at least once, and the
only messages that may arrive twice are those whose attempt was in flight at
the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from support.api import bearer, deliveries, setup_endpoint
from support.processes import LEASE_S, Server, api, killed_at_the_end, poster
from support.receivers import Jittery, Receiver, first_and_repeats
from support.waiting import wait_for

pytestmark = pytest.mark.slow

TOTAL = 2000  # messages acknowledged over both lives of the server
CONCURRENCY = 32  # requests posted at a time
KILL_AFTER = 800  # acknowledgements before the kill, at a moment an attempt is in flight...
KILL_BY = 1500  # ...or at the latest (deliveries must have begun) when this many are
MAX_IN_FLIGHT = 10  # the endpoint's cap on concurrent attempts


# the server under test -----------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """The server, always killed at the end; its output is shown if the test fails."""
    found = Server(tmp_path)
    with killed_at_the_end(found):
        yield found


# helpers -------------------------------------------------------------------------------


async def post(session: aiohttp.ClientSession, key: str, n: int) -> str:
    """Post message ``n``; its id once the server answered 202."""
    async with session.post(
        "/v1/messages",
        json={"event_type": "order.paid", "payload": {"n": n, "note": f"message {n}"}},
        headers=bearer(key),
    ) as response:
        text = await response.text()
    assert response.status == 202, text
    body: dict[str, Any] = json.loads(text)
    assert len(body["deliveries"]) == 1, body
    return str(body["id"])


@dataclass
class Kill:
    acked: int = 0  # acknowledgements before the kill
    lost: int = 0  # requests that failed with the server: never acknowledged
    received: int = 0  # deliveries the receiver had seen
    handling: int = 0  # deliveries the receiver was answering at that moment
    status: int | None = None


async def post_then_kill(
    server: Server,
    session: aiohttp.ClientSession,
    key: str,
    numbers: Iterator[int],
    acked: list[str],
    busy: Callable[[], int],
    received: Callable[[], int],
) -> Kill:
    """Post concurrently; SIGKILL the server after ``KILL_AFTER`` acknowledgements, once
    deliveries are under way and at a moment the receiver is answering one (if one comes
    by ``KILL_BY``)."""
    kill: Kill | None = None
    lost = 0

    def due() -> bool:
        n = len(acked)
        return n >= KILL_AFTER and received() > 0 and (busy() > 0 or n >= KILL_BY)

    async def worker() -> None:
        nonlocal kill, lost
        while kill is None:
            if len(acked) >= KILL_BY and not received():
                await asyncio.sleep(0.01)  # hold back until the first delivery arrives
            else:
                try:
                    # A 202 that reaches us is an acknowledgement, even if it raced the kill.
                    acked.append(await post(session, key, next(numbers)))
                except (aiohttp.ClientError, TimeoutError):
                    if kill is None:
                        raise
                    lost += 1
                    return
            if kill is None and due():
                kill = Kill(acked=len(acked), received=received(), handling=busy())
                kill.status = server.kill()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    assert kill is not None
    kill.lost = lost
    return kill


async def post_all(
    session: aiohttp.ClientSession, key: str, numbers: Iterator[int], n: int
) -> list[str]:
    ids: list[str] = []
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:  # shared by the workers: n posts in all
            ids.append(await post(session, key, next(numbers)))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return ids


# the scenarios -------------------------------------------------------------------------


async def test_kill_9_under_load_loses_no_acknowledged_message(
    server: Server, make_receiver: Callable[..., Any]
) -> None:
    began = time.monotonic()
    answer = Jittery()
    receiver: Receiver = await make_receiver(behaviour=answer)
    numbers = itertools.count()
    acked: list[str] = []

    server.start()
    await server.ready()
    async with api(server) as http:
        key, _ = await setup_endpoint(http, receiver, max_in_flight=MAX_IN_FLIGHT)
    async with poster(server, CONCURRENCY) as session:
        kill = await post_then_kill(
            server,
            session,
            key,
            numbers,
            acked,
            busy=lambda: answer.handling,
            received=lambda: len(receiver.received),
        )
    assert kill.status == -signal.SIGKILL, "the server died before it was killed"
    killed_at = time.monotonic()

    await asyncio.sleep(0.2)  # let the receiver finish reading what the dead server sent
    restarted_at = time.monotonic()
    server.start()
    await server.ready()
    async with poster(server, CONCURRENCY) as session:
        acked += await post_all(session, key, numbers, TOTAL - len(acked))
    assert len(set(acked)) == len(acked) == TOTAL
    posted_at = time.monotonic()

    def missing() -> set[str]:
        return set(acked) - {r.webhook_id for r in receiver.received}

    with contextlib.suppress(AssertionError):
        await wait_for(lambda: not missing(), within=60, every=0.05)
    assert not missing(), f"{len(missing())} acknowledged messages never arrived"
    delivered_at = time.monotonic()

    async with api(server) as http:

        async def all_succeeded() -> bool:
            succeeded = {d["message_id"] for d in await deliveries(http, key, state="succeeded")}
            return set(acked) <= succeeded

        with contextlib.suppress(AssertionError):
            await wait_for(all_succeeded, within=30, every=0.2)
        state = {d["message_id"]: d["state"] for d in await deliveries(http, key)}
        assert Counter(state[m] for m in acked) == {"succeeded": TOTAL}
        # Nothing is left pending, in flight or dead, not even the unacknowledged messages
        # that were committed just before the kill.
        assert set(state.values()) == {"succeeded"}, Counter(state.values())

    first, repeats = first_and_repeats(receiver.received, lambda r: r.webhook_id)
    # At-least-once, but not much more: a slot is released only after its attempt's result
    # is committed, so at the kill at most MAX_IN_FLIGHT attempts to the endpoint had been
    # sent without a committed result. Only those are sent again after the restart, so
    # duplicates are bounded by the in-flight cap times the number of kills.
    assert len(repeats) <= MAX_IN_FLIGHT * 1, [r.webhook_id for r in repeats]
    for again in repeats:
        # Same webhook-id (the count is by id) and the very same body: a receiver dedupes.
        assert again.body == first[again.webhook_id].body
        # The repeated attempt was one the killed server had made.
        assert first[again.webhook_id].at < restarted_at
    assert all(r.verified for r in receiver.received), "every delivery is signed"

    print(
        f"acked before kill {kill.acked}, lost at kill {kill.lost}, delivered before kill "
        f"{kill.received}, in flight at receiver {kill.handling}; arrivals "
        f"{len(receiver.received)} for {len(first)} messages, duplicates {len(repeats)}; "
        f"kill at {killed_at - began:.1f}s, restarted at {restarted_at - began:.1f}s, "
        f"all posted at {posted_at - began:.1f}s, all delivered at {delivered_at - began:.1f}s"
    )


async def test_kill_9_right_after_202_keeps_the_message(
    server: Server, make_receiver: Callable[..., Any]
) -> None:
    gate = asyncio.Event()

    async def gated(request: web.Request) -> web.StreamResponse:
        # Until the kill no attempt is answered, so no result can be committed before it:
        # whatever succeeds later was sent by the restarted server from the stored message.
        await gate.wait()
        return web.Response(status=204)

    receiver: Receiver = await make_receiver(behaviour=gated)
    server.start()
    await server.ready()
    async with api(server) as http:
        key, _ = await setup_endpoint(http, receiver, max_in_flight=MAX_IN_FLIGHT)
    async with poster(server, CONCURRENCY) as session:
        message_id = await post(session, key, 42)
        status = server.kill()
    assert status == -signal.SIGKILL, "the server died before it was killed"
    gate.set()
    await asyncio.sleep(0.2)  # let the receiver finish reading what the dead server sent
    restarted_at = time.monotonic()

    server.start()
    await server.ready()
    async with api(server) as http:
        response = await http.get(f"/v1/messages/{message_id}", headers=bearer(key))
        assert response.status_code == 200, response.text
        assert response.json()["payload"] == {"n": 42, "note": "message 42"}

        def arrived_again() -> bool:
            return any(
                r.webhook_id == message_id and r.at > restarted_at for r in receiver.received
            )

        await wait_for(arrived_again, within=10 + LEASE_S)

        async def succeeded() -> bool:
            found = await deliveries(http, key, message_id=message_id)
            return [d["state"] for d in found] == ["succeeded"]

        await wait_for(succeeded, within=10, every=0.1)
        response = await http.get(f"/v1/messages/{message_id}", headers=bearer(key))
        (delivery,) = response.json()["deliveries"]
        # The killed server's attempt (if it made one) left no record; the restarted one's did.
        assert [a["status_code"] for a in delivery["attempt_log"]] == [204]
    assert all(r.verified for r in receiver.received)
