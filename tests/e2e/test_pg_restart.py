"""PostgreSQL restarted under load: tidings rides it out, end to end.

A PostgreSQL server of the test's own (``initdb`` into a temporary directory, on a free
loopback port: never the shared one, which others' tests use) serves one
``tidings serve --role api`` and two ``tidings worker`` processes. While a producer
posts, the server is stopped at once (``pg_ctl stop -m immediate``: every connection
dropped mid-transaction) and started again, three times. Every process must still be running,
every message acknowledged must be delivered, and delivery must resume within
:data:`RESUMES_WITHIN_S` of the server coming back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support.api import bearer, setup_endpoint
from support.processes import Node, api, killed_at_the_end, poster
from support.receivers import Jittery, Receiver
from support.sockets import free_port
from support.waiting import wait_for

pytestmark = pytest.mark.slow

PG_BIN = Path(os.environ.get("TIDINGS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
CONCURRENCY = 8  # posts at a time
BEFORE_S = 1.5  # posting before the stop
DOWN_S = 0.5  # how long the server stays down
AFTER_S = 1.5  # posting after it is back, before the next stop
RESTARTS = 3  # a worker that did not ride out a restart would often survive just one
RESUMES_WITHIN_S = 10.0
MAX_IN_FLIGHT = 10  # the endpoint's cap on concurrent attempts


@dataclass
class PrivateServer:
    """A PostgreSQL cluster of the test's own, run as the ``postgres`` OS user when the
    test runs as root (PostgreSQL refuses to run as root)."""

    datadir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={self.datadir} -c fsync=off"
        )
        log = str(self.datadir / "server.log")
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-o", options, "-l", log, "-w", "start"
        )

    def stop(self, mode: str = "immediate") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")


@pytest.fixture
def private_postgres() -> Iterator[PrivateServer]:
    missing = [name for name in ("initdb", "pg_ctl") if not (PG_BIN / name).exists()]
    if missing or (os.geteuid() == 0 and shutil.which("runuser") is None):
        why = f"PostgreSQL server binaries NOT found in {PG_BIN}: the restart test did NOT run"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    # Not under pytest's tmp_path: its parents are the test user's alone.
    parent = Path(tempfile.mkdtemp(prefix="tidings-pg-"))
    parent.chmod(0o755)
    datadir = parent / "data"
    datadir.mkdir(mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
    server = PrivateServer(datadir, free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            server.stop("immediate")
        shutil.rmtree(parent, ignore_errors=True)


@dataclass
class Producer:
    """Posts messages with an Idempotency-Key each, ``CONCURRENCY`` at a time, until told to
    stop; a post that is not answered 202 (the store is down) is posted again, as a
    producer would."""

    key: str
    session: aiohttp.ClientSession
    acked: dict[int, tuple[str, float]] = field(default_factory=dict)  # n -> (id, when)
    refused: int = 0
    stopping: bool = False

    async def run(self) -> None:
        counter = iter(range(1_000_000))

        async def one_at_a_time() -> None:
            while not self.stopping:
                await self.post(next(counter))

        await asyncio.gather(*(one_at_a_time() for _ in range(CONCURRENCY)))

    async def post(self, n: int) -> None:
        headers = bearer(self.key) | {"idempotency-key": f"message-{n}"}
        body = {"event_type": "order.paid", "payload": {"n": n}}
        while True:
            try:
                async with self.session.post("/v1/messages", json=body, headers=headers) as answer:
                    if answer.status == 202:
                        self.acked[n] = (str((await answer.json())["id"]), time.monotonic())
                        return
                    assert answer.status == 503, await answer.text()
            except (aiohttp.ClientError, TimeoutError):
                pass
            self.refused += 1
            await asyncio.sleep(0.05)


async def test_postgres_restarted_under_load(
    private_postgres: PrivateServer, tmp_path: Path, make_receiver: Callable[..., Any]
) -> None:
    receiver: Receiver = await make_receiver(behaviour=Jittery())
    url = private_postgres.url
    nodes = [
        Node(tmp_path / "api", "api", ["serve", "--role", "api"], url),
        Node(tmp_path / "worker-1", "worker-1", ["worker"], url),
        Node(tmp_path / "worker-2", "worker-2", ["worker"], url),
    ]
    with killed_at_the_end(*nodes):
        nodes[1].start()  # the first migrates; the others find nothing to do
        await nodes[1].ready()
        for node in nodes[::2]:
            node.start()
        await asyncio.gather(*(node.ready() for node in nodes))
        async with api(nodes[0]) as http:
            key, _ = await setup_endpoint(http, receiver, max_in_flight=MAX_IN_FLIGHT)
        async with poster(nodes[0]) as session:
            producer = Producer(key, session)
            posting = asyncio.create_task(producer.run())
            await asyncio.sleep(BEFORE_S)
            await wait_for(lambda: bool(receiver.received), within=10)

            backs = []
            for _ in range(RESTARTS):
                await asyncio.to_thread(private_postgres.stop, "immediate")
                await asyncio.sleep(DOWN_S)
                await asyncio.to_thread(private_postgres.start)
                backs.append(time.monotonic())
                await asyncio.sleep(AFTER_S)
                # Delivery resumed within RESUMES_WITHIN_S of the server coming back.
                await wait_for(
                    lambda: any(r.at > backs[-1] for r in receiver.received),
                    within=max(RESUMES_WITHIN_S - AFTER_S, 0.1),
                )
            producer.stopping = True
            await posting

        delivered: set[str] = set()
        await wait_for(
            lambda: {i for i, _ in producer.acked.values()} <= delivered_now(receiver, delivered),
            within=RESUMES_WITHIN_S,
        )
        assert any(at > backs[-1] for _, at in producer.acked.values()), "no post after restarts"
        for node in nodes:
            assert node._proc is not None
            assert node._proc.poll() is None, f"{node.name} stopped"


def delivered_now(receiver: Receiver, seen: set[str]) -> set[str]:
    seen.update(r.webhook_id for r in receiver.received)
    return seen
