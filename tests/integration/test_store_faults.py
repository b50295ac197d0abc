"""Faults of the store: writes refused, connections dropped, a server that says nothing.

Readiness must follow whether the store takes writes (a full disk, made real for
SQLite, imitated in its own database for PostgreSQL), not only whether it answers a
read; the connections a PostgreSQL store keeps of its own (the listener's, the leader's) must
notice a dead peer, give up on a silent one, and after a reconnect hear again of
everything they may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from support.api import bearer, new_endpoint, new_tenant
from support.problems import assert_problem
from support.receivers import Receiver
from support.served import served
from support.stores import postgres_server
from support.waiting import wait_for
from tidings.config import Settings
from tidings.store import open_store
from tidings.store.ports import Change
from tidings.store.sql.core import WRITE_PROBE_EVERY_S
from tidings.store.sql.postgres import CONNECT_TIMEOUT_S

TINY_DISK = "4m"


def _name_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _end_sessions(database: str) -> None:
    """End every session on ``database`` (not the server: others' tests use it), as a
    server restart would, for the test's own database alone."""
    with postgres_server() as server:
        server.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )


_DISK_FULL = """
CREATE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
  RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full';
END $$;
DO $$ DECLARE t text; BEGIN
  FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
    EXECUTE format('CREATE TRIGGER test_disk_full BEFORE INSERT OR UPDATE OR DELETE ON %I'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION test_disk_full()', t);
  END LOOP;
END $$;
"""


def _disk_full(url: str, full: bool) -> None:
    """Make every write to the test's own database fail as a full disk does (PostgreSQL's
    error 53100), or stop doing so. Reads still work, as they do on a full disk."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_DISK_FULL if full else "DROP FUNCTION test_disk_full CASCADE")


async def _post(client: httpx.AsyncClient, key: str, size: int = 10) -> httpx.Response:
    return await client.post(
        "/v1/messages",
        json={"event_type": "order.paid", "payload": {"pad": "x" * size}},
        headers=bearer(key),
    )


# readiness ---------------------------------------------------------------------------------


async def test_readyz_is_not_ready_while_postgres_disk_is_full(
    postgres_url: str, make_settings: type[Settings]
) -> None:
    async with served(make_settings(database_url=postgres_url)) as (_, client):
        _, key = await new_tenant(client)
        assert (await client.get("/readyz")).status_code == 200
        try:
            await asyncio.to_thread(_disk_full, postgres_url, True)
            assert_problem(await _post(client, key), 503, "No space left")
            not_ready = await client.get("/readyz")
            assert_problem(not_ready, 503, "takes no writes")
            assert (await client.get("/healthz")).status_code == 200  # alive all the same
        finally:
            await asyncio.to_thread(_disk_full, postgres_url, False)

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await wait_for(ready, within=WRITE_PROBE_EVERY_S * 5)
        assert (await _post(client, key)).status_code == 202


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A filesystem of :data:`TINY_DISK` of its own (a tmpfs), so that it can really fill."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TINY_DISK}", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        why = f"could NOT mount a tmpfs (root?): the full-disk test did NOT run: {mounted.stderr!r}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; the file that does it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    failed: OSError | None = None
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        failed = exc
    finally:
        os.close(fd)
    assert failed is not None
    assert failed.errno == errno.ENOSPC, failed
    return filler


async def test_readyz_is_not_ready_while_the_sqlite_disk_is_full(
    tiny_disk: Path, make_settings: type[Settings], receiver: Receiver
) -> None:
    """And the delivery engine rides it out: its writes fail for a while, then work."""
    settings = make_settings(database_url=f"sqlite:///{tiny_disk / 'tidings.db'}")
    async with served(settings) as (app, client):
        _, key = await new_tenant(client)
        await new_endpoint(client, key, receiver.url)
        assert (await client.get("/readyz")).status_code == 200
        accepted: set[str] = set()
        filler = _fill(tiny_disk)
        for _ in range(100):  # until the WAL wants room the disk has not got
            answer = await _post(client, key, size=20_000)
            if answer.status_code != 202:
                break
            accepted.add(answer.json()["id"])
        assert_problem(answer, 503, "full")
        assert_problem(await client.get("/readyz"), 503, "takes no writes")
        await asyncio.sleep(WRITE_PROBE_EVERY_S)  # its own write is tried again: still full
        assert_problem(await client.get("/readyz"), 503, "takes no writes")
        assert not app.failed.is_set()

        filler.unlink()

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await wait_for(ready, within=WRITE_PROBE_EVERY_S * 5)
        answer = await _post(client, key)
        assert answer.status_code == 202
        accepted.add(answer.json()["id"])
        await wait_for(lambda: accepted <= {r.webhook_id for r in receiver.received})
        assert not app.failed.is_set()


# the store's own connections ---------------------------------------------------------------


def _keepalives(port: int) -> dict[str, tuple[int, int]]:
    """This process's TCP connections to ``port`` (by socket inode): whether each probes
    its peer when idle, and after how many seconds (Linux)."""
    found: dict[str, tuple[int, int]] = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if not target.startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(fd))) as sock:
                inet = sock.family in (socket.AF_INET, socket.AF_INET6)
                if inet and sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == port:
                    found[target] = (
                        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    )
    return found


async def test_every_connection_of_the_store_probes_a_silent_peer(postgres_url: str) -> None:
    """TCP keepalives on each: a server gone without a word is noticed, not waited on."""
    port = int(postgres_url.rsplit(":", 1)[1].split("/", 1)[0])
    before = set(_keepalives(port))
    store = open_store(postgres_url)
    try:
        await store.listen(lambda news: None)
        assert await store.lead() is True
        await store.ping()
        await asyncio.sleep(0.5)  # the listener has connected
        new = {k: v for k, v in _keepalives(port).items() if k not in before}
        assert len(new) >= 3, new  # the pool's, the listener's, the leader's
        for keepalive, idle_s in new.values():
            assert keepalive == 1
            assert idle_s <= 60
    finally:
        await store.close()


async def test_a_server_that_says_nothing_is_given_up_on() -> None:
    """It takes the connection and never answers: the leader's connect gives up after
    CONNECT_TIMEOUT_S instead of hanging the process's duties for good."""
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(silent.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    store = open_store(f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/none")
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 4):
            assert await store.lead() is False
    finally:
        silent.close()
        for conn in accepted:
            conn.close()
        await store.close()


async def test_the_listener_hears_of_everything_again_after_a_reconnect(postgres_url: str) -> None:
    """News announced while the listener's connection was down is lost: once it listens
    again, it is told every kind, so each cache reads what it keeps again."""
    store = open_store(postgres_url)
    heard: list[str] = []
    try:
        await store.listen(lambda changed: heard.append(changed.news))
        await wait_for(lambda: set(Change) <= set(heard))
        heard.clear()
        await asyncio.to_thread(_end_sessions, _name_of(postgres_url))
        await wait_for(lambda: set(Change) <= set(heard))
    finally:
        await store.close()


async def test_a_worker_rides_out_its_sessions_ended_under_load(
    postgres_url: str, make_settings: type[Settings], receiver: Receiver
) -> None:
    """Every session of the process ends, again and again, while it delivers: the
    dispatcher logs the store's errors and goes on, and every message accepted is
    delivered."""
    database = _name_of(postgres_url)
    async with served(make_settings(database_url=postgres_url)) as (app, client):
        _, key = await new_tenant(client)
        await new_endpoint(client, key, receiver.url, max_in_flight=5)
        accepted: set[str] = set()
        for round_ in range(10):
            for _ in range(20):
                answer = await _post(client, key)
                if answer.status_code == 202:
                    accepted.add(answer.json()["id"])
            await asyncio.to_thread(_end_sessions, database)
            assert not app.failed.is_set(), f"a background task died in round {round_}"

        def delivered() -> bool:
            return accepted <= {r.webhook_id for r in receiver.received}

        await wait_for(delivered, within=20)
        assert not app.failed.is_set()
