"""Crash safety across processes on one PostgreSQL database, end to end.

Three ``tidings worker`` processes and two ``tidings serve --role api`` processes
run as subprocesses on the test's own database. Under load, the worker that
holds the store's leadership and one API process are killed with SIGKILL at the
same moment, while an attempt of that worker's is in flight. The producer posts
every message with an ``Idempotency-Key`` of its own and, when its API process
dies under a post, posts it again to the other one. Every message acknowledged
must reach the receiver at least once; the only messages that may arrive twice
are those the killed worker had sent without a committed result (no more than
the endpoint's ``max_in_flight``, a cap the store holds across all workers); and
the leadership, with the singleton duties it carries, moves to a live worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web

from support.api import bearer, deliveries, setup_endpoint
from support.processes import LEASE_S, Node, api, killed_at_the_end, poster
from support.receivers import Jittery, Receiver, first_and_repeats
from support.waiting import wait_for
from tidings.store.sql.postgres import LEADER_LOCK

pytestmark = pytest.mark.slow

TOTAL = 1500  # messages acknowledged in all, over both API processes
CONCURRENCY = 32  # requests posted at a time
MAX_IN_FLIGHT = 10  # the endpoint's cap on concurrent attempts, which the store holds
KILL_AFTER = 500  # acknowledgements before the kill, at a moment the victim sends one...
KILL_BY = 1000  # ...or at the latest (deliveries must have begun) when this many are
WORKERS = 3
APIS = 2
PORTS_EVERY_S = 0.2  # how often the kill trigger looks up the worker's connections again
LEADERSHIP_MOVES_WITHIN_S = 10.0  # TIDINGS_HEALTH_INTERVAL is 1 s: survivors ask each second


# the processes under test --------------------------------------------------------------


@dataclass
class Cluster:
    database_url: str
    workers: list[Node]
    apis: list[Node]

    @property
    def nodes(self) -> list[Node]:
        return self.workers + self.apis

    def named(self, name: str) -> Node:
        (found,) = [node for node in self.nodes if node.name == name]
        return found

    async def start(self, nodes: list[Node]) -> None:
        for node in nodes:
            node.start()
        await asyncio.gather(*(node.ready() for node in nodes))


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """The processes, not yet started; every one is killed at the end (before the database
    is dropped), and their output is shown if the test fails."""

    def node(name: str, args: list[str]) -> Node:
        return Node(tmp_path / name, name, args, postgres_url)

    found = Cluster(
        postgres_url,
        workers=[node(f"worker-{i}", ["worker"]) for i in range(1, WORKERS + 1)],
        apis=[node(f"api-{i}", ["serve", "--role", "api"]) for i in range(1, APIS + 1)],
    )
    with killed_at_the_end(*found.nodes):
        yield found


# the leadership, as PostgreSQL sees it -------------------------------------------------

# A bigint advisory lock key is shown in pg_locks as two int4 halves, objsubid 1.
_LEADER_SQL = (
    "SELECT a.application_name FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    f" AND l.classid = {LEADER_LOCK >> 32} AND l.objid = {LEADER_LOCK & 0xFFFFFFFF}"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _leader_now(database_url: str) -> str | None:
    with psycopg.connect(database_url, autocommit=True, application_name="test") as conn:
        names = [row[0] for row in conn.execute(_LEADER_SQL).fetchall()]
    assert len(names) <= 1, names
    return names[0] if names else None


async def leader(database_url: str) -> str | None:
    """The name of the process whose session holds the leadership lock, if any."""
    return await asyncio.to_thread(_leader_now, database_url)


async def sessions_gone(database_url: str, names: set[str]) -> bool:
    """Whether no process of ``names`` has a session left (PostgreSQL ends a killed
    process's sessions, and releases their locks, as their connections close)."""

    def none_left() -> bool:
        with psycopg.connect(database_url, autocommit=True, application_name="test") as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s)"
            row = conn.execute(query, (sorted(names),)).fetchone()
        return row is not None and row[0] == 0

    return await asyncio.to_thread(none_left)


async def leader_among(database_url: str, names: set[str], within: float) -> str:
    """Wait until a process of ``names`` holds the leadership; its name."""
    held: list[str | None] = [None]

    async def led() -> bool:
        held[0] = await leader(database_url)
        return held[0] in names

    try:
        await wait_for(led, within=within, every=0.05)
    except AssertionError:
        raise AssertionError(
            f"the leadership is held by {held[0]!r}, not one of {sorted(names)}, after {within}s"
        ) from None
    assert held[0] is not None
    return held[0]


# which process sent what ----------------------------------------------------------------


class Traced(Jittery):
    """Jittery's answers, and the client port each delivery came from (which says which
    worker sent it: see ``ports_of``)."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[tuple[str, int]] = []  # (webhook-id, client port)
        self.handling_on: Counter[int] = Counter()  # client port -> deliveries being answered

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        port = int(request.transport.get_extra_info("peername")[1])
        self.sources.append((request.headers["webhook-id"], port))
        self.handling_on[port] += 1
        try:
            return await super().__call__(request)
        finally:
            self.handling_on[port] -= 1


def ports_of(pid: int, remote_port: int) -> set[int]:
    """The local ports of process ``pid``'s TCP connections to ``remote_port`` (Linux)."""
    inodes: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    found.add(int(local.rsplit(":", 1)[1], 16))
    return found


# the producer ---------------------------------------------------------------------------


def _body(n: int) -> dict[str, Any]:
    return {"event_type": "order.paid", "payload": {"n": n, "note": f"message {n}"}}


async def post_keyed(session: aiohttp.ClientSession, key: str, n: int) -> tuple[str, bool]:
    """Post message ``n`` with Idempotency-Key ``message-n``: its id once the API answered
    202, and whether that answer replayed an earlier post's."""
    headers = bearer(key) | {"idempotency-key": f"message-{n}"}
    async with session.post("/v1/messages", json=_body(n), headers=headers) as response:
        text = await response.text()
        replayed = response.headers.get("idempotent-replayed") == "true"
    assert response.status == 202, text
    body: dict[str, Any] = json.loads(text)
    assert len(body["deliveries"]) == 1, body
    return str(body["id"]), replayed


@dataclass
class Producer:
    """Posts messages ``0 .. TOTAL - 1``, ``CONCURRENCY`` at a time, spread over the API
    processes; a post whose API process was killed under it is posted again, with the same
    Idempotency-Key, to a live one, as a producer would."""

    key: str
    sessions: dict[str, aiohttp.ClientSession]  # API process name -> its session
    dead: set[str] = field(default_factory=set)
    acked: dict[int, str] = field(default_factory=dict)  # n -> message id
    failed_over: set[int] = field(default_factory=set)
    replayed: set[int] = field(default_factory=set)

    async def run(self, hold: Callable[[], bool], after_each: Callable[[], None]) -> None:
        todo = iter(range(TOTAL))

        async def one_at_a_time() -> None:
            for n in todo:  # shared by the coroutines: TOTAL posts in all
                if hold():  # until deliveries have begun
                    await wait_for(lambda: not hold(), within=30, every=0.01)
                await self.post(n)
                after_each()

        await asyncio.gather(*(one_at_a_time() for _ in range(CONCURRENCY)))

    async def post(self, n: int) -> None:
        names = sorted(self.sessions)
        preferred = names[n % len(names)]
        for name in [preferred, *(other for other in names if other != preferred)]:
            if name in self.dead:
                continue
            try:
                message_id, replayed = await post_keyed(self.sessions[name], self.key, n)
            except (aiohttp.ClientError, TimeoutError):
                if name not in self.dead:
                    raise
                self.failed_over.add(n)  # not acknowledged: post it again elsewhere
                continue
            self.acked[n] = message_id
            if replayed:
                self.replayed.add(n)
            return
        raise AssertionError(f"no live API process to post message {n} to")


# the kill ---------------------------------------------------------------------------------


@dataclass
class Kill:
    """The processes to kill, and what was going on when they were."""

    worker: Node
    api: Node
    acked: int = 0  # acknowledgements before the kill
    received: int = 0  # deliveries the receiver had seen
    victim_sending: int = 0  # deliveries of the worker's the receiver was answering
    victim_ports: set[int] = field(default_factory=set)  # the worker's connections to it
    statuses: tuple[int | None, int | None] = (None, None)
    at: float = 0.0


def kill_now(kill: Kill, producer: Producer, receiver: Receiver, answer: Traced) -> None:
    """SIGKILL the worker and the API process at once. The worker is stopped first, for
    the moment it takes to note its connections to the receiver (no attempt can start or
    end meanwhile), then killed: it runs no code of its own in between."""
    kill.worker.signal(signal.SIGSTOP)
    kill.victim_ports = ports_of(kill.worker.pid, receiver.port)
    kill.victim_sending = sum(answer.handling_on[p] for p in kill.victim_ports)
    producer.dead.add(kill.api.name)  # from now on a failed post was never acknowledged
    kill.worker.signal(signal.SIGKILL)
    kill.api.signal(signal.SIGKILL)
    kill.at = time.monotonic()
    kill.acked, kill.received = len(producer.acked), len(receiver.received)
    kill.statuses = (kill.worker.kill(), kill.api.kill())


def kill_trigger(
    kill: Kill, producer: Producer, receiver: Receiver, answer: Traced
) -> Callable[[], None]:
    """Called after each acknowledgement: kills once ``KILL_AFTER`` messages are acknowledged
    and deliveries have begun, at a moment the worker to kill has a delivery being answered
    (if that comes by ``KILL_BY``). The worker's connections are looked up again at most
    every ``PORTS_EVERY_S``: a look-up blocks the event loop, and the receiver with it."""
    ports: set[int] = set()
    looked = -PORTS_EVERY_S

    def check() -> None:
        nonlocal ports, looked
        acked = len(producer.acked)
        if kill.at or acked < KILL_AFTER or not receiver.received:
            return
        if time.monotonic() - looked >= PORTS_EVERY_S:
            ports, looked = ports_of(kill.worker.pid, receiver.port), time.monotonic()
        if acked >= KILL_BY or any(answer.handling_on[p] for p in ports):
            kill_now(kill, producer, receiver, answer)

    return check


# the scenario ---------------------------------------------------------------------------


async def test_kill_9_a_leading_worker_and_an_api_process_under_load(
    cluster: Cluster, make_receiver: Callable[..., Any]
) -> None:
    began = time.monotonic()
    answer = Traced()
    receiver: Receiver = await make_receiver(behaviour=answer)

    # The workers first: the one that leads is known before the API processes start.
    await cluster.start(cluster.workers)
    workers = {node.name for node in cluster.workers}
    leading = cluster.named(await leader_among(cluster.database_url, workers, within=10))
    await cluster.start(cluster.apis)
    assert await leader(cluster.database_url) == leading.name, "the leadership moved"
    started_at = time.monotonic()

    doomed_api, surviving_api = cluster.apis
    kill = Kill(worker=leading, api=doomed_api)
    async with api(surviving_api) as http:
        key, endpoint_id = await setup_endpoint(http, receiver, max_in_flight=MAX_IN_FLIGHT)
    async with contextlib.AsyncExitStack() as stack:
        sessions = {
            node.name: await stack.enter_async_context(poster(node, CONCURRENCY))
            for node in cluster.apis
        }
        producer = Producer(key, sessions)
        survivors = workers - {leading.name}

        async def leadership_moves() -> tuple[str, float]:
            """Once the kill came: the killed processes' sessions end, and a surviving
            worker takes the leadership, with the singleton duties it carries (API
            processes never ask for it); who, and how long after the kill."""
            await wait_for(lambda: bool(kill.at), within=60, every=0.01)
            killed = {leading.name, doomed_api.name}
            await wait_for(
                lambda: sessions_gone(cluster.database_url, killed), within=5, every=0.05
            )
            name = await leader_among(
                cluster.database_url, survivors, within=LEADERSHIP_MOVES_WITHIN_S
            )
            return name, time.monotonic() - kill.at

        async with asyncio.TaskGroup() as group:  # a failure of either cancels the other
            moved = group.create_task(leadership_moves())
            group.create_task(
                producer.run(
                    hold=lambda: (
                        not kill.at and len(producer.acked) >= KILL_BY and not receiver.received
                    ),
                    after_each=kill_trigger(kill, producer, receiver, answer),
                )
            )
        new_leader, led_after = moved.result()
    posted_at = time.monotonic()
    assert kill.at, "the kill never came"
    assert kill.statuses == (-signal.SIGKILL, -signal.SIGKILL), "died before it was killed"
    assert kill.victim_ports, "the killed worker had never connected to the receiver"
    acked = set(producer.acked.values())
    assert len(producer.acked) == len(acked) == TOTAL, "an acknowledged id was given twice"
    # A post replays an earlier one only when it was posted again after the kill.
    assert producer.replayed <= producer.failed_over

    def missing() -> set[str]:
        return acked - {r.webhook_id for r in receiver.received}

    with contextlib.suppress(AssertionError):
        await wait_for(lambda: not missing(), within=45, every=0.05)
    assert not missing(), f"{len(missing())} acknowledged messages never arrived"
    delivered_at = time.monotonic()

    async with api(surviving_api) as http:

        async def all_succeeded() -> bool:
            found = await deliveries(http, key, endpoint_id=endpoint_id, state="succeeded")
            return acked <= {d["message_id"] for d in found}

        with contextlib.suppress(AssertionError):
            await wait_for(all_succeeded, within=10 + LEASE_S, every=0.2)
        found = await deliveries(http, key, endpoint_id=endpoint_id)
        state = {d["message_id"]: d["state"] for d in found}
    # Each message stored once (a post again was a replay, not a second message), and
    # nothing is left pending, in flight or dead. (The endpoint's only: the leader may also
    # have emailed its tenant's owner a notice about it.)
    assert set(state) == acked, f"{len(set(state) - acked)} messages never acknowledged"
    assert Counter(state.values()) == {"succeeded": TOTAL}

    first, repeats = first_and_repeats(receiver.received, lambda r: r.webhook_id)
    # Who sent what: the killed worker, over the connections it had at the kill, or a
    # survivor (its own new connections may reuse such a port, but never in a way that
    # fails these checks when they should pass).
    by_victim = {m for m, port in answer.sources if port in kill.victim_ports}
    by_survivors = Counter(m for m, port in answer.sources if port not in kill.victim_ports)
    twice = [m for m, n in by_survivors.items() if n > 1]
    assert not twice, f"surviving workers sent {len(twice)} messages twice: {twice[:5]}"
    # At-least-once, but not much more: the store lets no more than MAX_IN_FLIGHT of the
    # endpoint's deliveries be claimed at once across all workers, and releases a claim
    # only with its committed result, so at the kill the killed worker had at most that
    # many sent without a committed result. Only those are sent again.
    assert len(repeats) <= MAX_IN_FLIGHT, [r.webhook_id for r in repeats]
    for again in repeats:
        message_id = again.webhook_id
        assert again.body == first[message_id].body, "a repeat is the very same body"
        assert message_id in by_victim, (
            f"{message_id} arrived twice; the killed worker never sent it"
        )
        assert again.at > kill.at, f"{message_id} arrived again before the kill"
    assert all(r.verified for r in receiver.received), "every delivery is signed"

    print(
        f"killed {leading.name} (leader) and {doomed_api.name} after {kill.acked} acks and "
        f"{kill.received} arrivals "
        f"(start {started_at - began:.1f}s, kill {kill.at - began:.1f}s); the worker had "
        f"sent {len(by_victim)}, was sending {kill.victim_sending}, on "
        f"{len(kill.victim_ports)} connections; "
        f"{len(producer.failed_over)} posts failed over, {len(producer.replayed)} replayed; "
        f"{new_leader} led {led_after:.2f}s after the kill; arrivals "
        f"{len(receiver.received)} for {len(first)} messages, duplicates {len(repeats)}; "
        f"all posted at {posted_at - began:.1f}s, delivered at {delivered_at - began:.1f}s"
    )


async def test_a_worker_leads_even_if_an_api_process_started_first(cluster: Cluster) -> None:
    first_api, first_worker = cluster.apis[0], cluster.workers[0]
    await cluster.start([first_api])
    await cluster.start([first_worker])
    # The worker asks every TIDINGS_HEALTH_INTERVAL (1 s) to run the health duty.
    await leader_among(cluster.database_url, {first_worker.name}, within=5)
