"""(g) delivery on PostgreSQL: one worker, two workers, and SQLite as the reference.

The backlog drain of (a) at ``IN_FLIGHT`` in flight, three times, each on a
fresh store:

* ``g-sqlite``: ``tidings serve`` on a fresh SQLite file, what (a) does: the
  reference, on the same machine in the same run.
* ``g-pg-1``: a fresh PostgreSQL database (``CREATE DATABASE bench_<hex>``,
  dropped ``WITH (FORCE)`` afterwards), one ``tidings serve --role api`` that
  takes the pre-load and the PATCH, and one ``tidings worker`` that delivers.
* ``g-pg-2``: the same with two workers, which coordinate only through
  PostgreSQL.

The endpoint has (a)'s settings (``max_in_flight`` ``IN_FLIGHT``, held by a
rate limit while the backlog is pre-loaded). On PostgreSQL the store caps each
claim at ``max_in_flight`` less what every worker has in flight, so two workers
share the endpoint's ``IN_FLIGHT`` slots rather than getting as many each. The
succeeded counter is the sum of the workers' ``/metrics``. The CPU table has
every process: the API, each worker and its sender processes, nginx, and
PostgreSQL's processes (children of the postmaster, found through ``/proc``):
``postgres`` for the backends and autovacuum workers of the run's database,
``postgres aux`` for the server's shared ones (WAL writer, checkpointer, ...).
Backends of other databases count in ``others``.

Rows: deliveries/s of each, ``postgresql / sqlite`` (one worker; target
>= 50 %) and ``two workers / one`` (target >= 1.5x where the machine's cores
allow it; this one has ``nproc`` in the row's detail).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bench.context import Context
from bench.measure import CpuMeter, children
from bench.results import Row, redacted, verdict
from bench.scenarios.delivery import EVENT, HOLD_RATE, backlog_drain, describe_drain
from bench.server import SUCCEEDED, TidingsServer

IN_FLIGHT = 256  # the endpoint's max_in_flight, as in (a)'s second run
PG_OVER_SQLITE_TARGET = 0.50
TWO_OVER_ONE_TARGET = 1.5
CONNECT_TIMEOUT_S = 10
# PostgreSQL's settings that bear on the figures, recorded with the results.
SERVER_SETTINGS = (
    "server_version",
    "max_connections",
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "wal_writer_delay",
    "commit_delay",
    "autovacuum",
)
SAMPLE_S = 0.1  # pg_stat_activity, during the drain
ACTIVITY_MAX_S = 900.0
_ACTIVITY = (
    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity"
    " WHERE datname = %s AND backend_type = 'client backend'"
)
# One past the highest completed transaction id (reading it assigns none), and the
# database's committed and rolled back transactions.
_COUNTERS = (
    "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, xact_commit, xact_rollback"
    " FROM pg_stat_database WHERE datname = %s"
)
_CLIENT_ADDRESS = re.compile(r"\(\d+\)$|^\[local\]$")  # 127.0.0.1(54321), [local]


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)


def _local_parent(pid: int) -> int | None:
    """The parent of PostgreSQL process ``pid`` if it runs on this machine: both are
    ``postgres`` processes here (a server elsewhere has pids that mean nothing here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        parent = int(stat.rpartition(")")[2].split()[1])
        names = [Path(f"/proc/{p}/comm").read_text().strip() for p in (pid, parent)]
    except (OSError, ValueError, IndexError):
        return None
    return parent if all(n.startswith(("postgres", "postmaster")) for n in names) else None


def _server_info(admin_url: str) -> dict[str, Any]:
    """The server's settings, and its postmaster's pid when it runs on this machine:
    the parent of this connection's backend."""
    found: dict[str, Any] = {}
    with _connect(admin_url) as conn:
        for name in SERVER_SETTINGS:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            found[name] = row[0] if row else None
        backend = conn.info.backend_pid
    found["postmaster_pid"] = _local_parent(backend)
    return found


def _create(admin_url: str, name: str) -> None:
    with _connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop(admin_url: str, name: str) -> None:
    with _connect(admin_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _tally(url: str) -> dict[str, Any]:
    """What the store holds after the drain: deliveries by state, and the attempts."""
    with _connect(url) as conn:
        states = conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall()
        attempts = conn.execute("SELECT count(*) FROM attempts").fetchone()
        tried_again = conn.execute("SELECT count(*) FROM deliveries WHERE attempts > 1").fetchone()
    return {
        "deliveries_by_state": {str(state): int(n) for state, n in states},
        "attempts": int(attempts[0]) if attempts else None,
        "deliveries_with_more_than_one_attempt": int(tried_again[0]) if tried_again else None,
    }


@contextlib.asynccontextmanager
async def fresh_database(ctx: Context, admin_url: str) -> AsyncIterator[str]:
    """A database of its own on the server (its URL); dropped at the end, with whatever
    is still connected to it, unless ``--keep-temp``."""
    name = f"bench_{uuid.uuid4().hex}"
    await asyncio.to_thread(_create, admin_url, name)
    try:
        yield _with_database(admin_url, name)
    finally:
        if ctx.options.keep_temp:
            ctx.results.note(f"kept database {name}")
        else:
            await asyncio.to_thread(_drop, admin_url, name)


@dataclass(frozen=True)
class PostgresProcesses:
    """PostgreSQL's processes on this machine: the postmaster's children, told apart by
    the title each sets (``postgres: 15/main: postgres bench_… 127.0.0.1(5432) idle``,
    ``postgres: 15/main: walwriter``)."""

    postmaster: int | None
    database: str

    def _titles(self) -> list[tuple[int, list[str]]]:
        if self.postmaster is None:
            return []
        found = []
        for pid in children(self.postmaster):
            with contextlib.suppress(OSError):
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                found.append((pid, title.decode(errors="replace").split()))
        return found

    def ours(self) -> list[int]:
        """The backends (and autovacuum workers) of the run's database."""
        return [pid for pid, words in self._titles() if self.database in words]

    def shared(self) -> list[int]:
        """The server's own processes (WAL writer, checkpointer, ...): no database's
        backends."""
        return [
            pid
            for pid, words in self._titles()
            if self.database not in words and not any(_CLIENT_ADDRESS.search(w) for w in words)
        ]


class Activity:
    """What the run's database's backends do during the drain: ``pg_stat_activity``
    sampled every ``SAMPLE_S`` by a thread of its own, on the maintenance database (so
    its own backend is not one of them); and the server's transaction counters."""

    def __init__(self, admin_url: str, database: str) -> None:
        self._admin_url = admin_url
        self._database = database
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples = 0
        self._states: Counter[str] = Counter()
        self._before: tuple[int, int, int] | None = None
        self._after: tuple[int, int, int] | None = None
        self._error: str | None = None
        self._started = self._ended = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-pg-activity", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """Stop sampling (blocks for a moment: run it in a thread)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(SAMPLE_S * 10 + CONNECT_TIMEOUT_S)
        return self._summary()

    def _counters(self, conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
        row = conn.execute(_COUNTERS, (self._database,)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def _run(self) -> None:
        deadline = time.monotonic() + ACTIVITY_MAX_S
        try:
            with _connect(self._admin_url) as conn:
                self._before, self._started = self._counters(conn), time.monotonic()
                while not self._stopping.is_set() and time.monotonic() < deadline:
                    for state, kind, event in conn.execute(_ACTIVITY, (self._database,)):
                        waiting = f" {kind}:{event}" if kind and state == "active" else ""
                        self._states[f"{state}{waiting}"] += 1
                    self._samples += 1
                    self._stopping.wait(SAMPLE_S)
                self._after, self._ended = self._counters(conn), time.monotonic()
        except psycopg.Error as exc:
            self._error = str(exc)

    def _summary(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "samples": self._samples,
            "sample_every_s": SAMPLE_S,
            # the run's database's backends in each state, on average over the samples
            "backends_by_state": {
                state: round(n / max(self._samples, 1), 2)
                for state, n in self._states.most_common()
            },
        }
        if self._before and self._after:
            seconds = max(self._ended - self._started, 1e-9)
            xids, commits, rollbacks = (
                b - a for a, b in zip(self._before, self._after, strict=True)
            )
            found.update(
                seconds=round(seconds, 2),
                # write transactions on the whole server (exact, but counts other databases')
                xids_assigned=xids,
                # the run's database, reads included: statistics that lag (an undercount)
                xact_commit=commits,
                xact_rollback=rollbacks,
            )
        if self._error:
            found["error"] = self._error
        return found


class Workers:
    """The workers' counters, summed: each delivers its own share of the backlog."""

    def __init__(self, servers: Sequence[TidingsServer]) -> None:
        self.servers = list(servers)

    async def metrics(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for metrics in await asyncio.gather(*(s.metrics() for s in self.servers)):
            for name, value in metrics.items():
                found[name] = found.get(name, 0.0) + value
        return found


def _cpu_meter(
    ctx: Context, api: TidingsServer, workers: Sequence[TidingsServer], pg: PostgresProcesses
) -> CpuMeter:
    def one(pid: int) -> Callable[[], Iterable[int]]:
        return lambda: [pid]

    def senders_of(pid: int) -> Callable[[], Iterable[int]]:
        return lambda: children(pid)

    groups: dict[str, Callable[[], Iterable[int]]] = {"api": one(api.pid)}
    for number, worker in enumerate(workers, 1):
        groups[f"worker{number}"] = one(worker.pid)
        groups[f"worker{number} senders"] = senders_of(worker.pid)
    groups["postgres"] = pg.ours
    groups["postgres aux"] = pg.shared
    groups["nginx"] = lambda: ctx.nginx.pids
    return CpuMeter(groups)


def _settings(ctx: Context) -> dict[str, Any]:
    return {
        "endpoint_max_in_flight": IN_FLIGHT,
        "TIDINGS_MAX_IN_FLIGHT": IN_FLIGHT,
        "TIDINGS_SENDERS": ctx.options.senders if ctx.options.senders is not None else "default",
        "messages": ctx.options.messages,
        "preload_concurrency": ctx.options.concurrency,
    }


async def _sqlite_run(ctx: Context) -> tuple[float, dict[str, Any]]:
    env = {"TIDINGS_MAX_IN_FLIGHT": str(IN_FLIGHT)}
    async with ctx.tidings("g-sqlite", env) as server:
        key = await server.new_tenant()
        endpoint = await server.new_endpoint(
            key, ctx.nginx.url, [EVENT], max_in_flight=IN_FLIGHT, rate_limit_per_s=HOLD_RATE
        )
        rate, detail = await backlog_drain(
            ctx, server, key, [endpoint], lambda _: EVENT, ctx.options.messages
        )
        detail["sender_processes"] = len(children(server.pid))
    detail["store"] = "sqlite"
    detail["settings"] = _settings(ctx)
    ctx.results.note(f"g-sqlite: {describe_drain(detail)}")
    return rate, detail


async def _pg_run(
    ctx: Context, name: str, workers: int, server: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    """The backlog drain with one API process and ``workers`` workers on a fresh database."""
    admin_url = _with_database(ctx.options.postgres_url, "postgres")
    async with fresh_database(ctx, admin_url) as url, contextlib.AsyncExitStack() as stack:
        env = {"TIDINGS_DATABASE_URL": url, "TIDINGS_MAX_IN_FLIGHT": str(IN_FLIGHT)}
        api = await stack.enter_async_context(
            ctx.tidings(f"{name}-api", env, ("serve", "--role", "api"))
        )
        pool = [
            await stack.enter_async_context(ctx.tidings(f"{name}-worker{n}", env, ("worker",)))
            for n in range(1, workers + 1)
        ]
        key = await api.new_tenant()
        endpoint = await api.new_endpoint(
            key, ctx.nginx.url, [EVENT], max_in_flight=IN_FLIGHT, rate_limit_per_s=HOLD_RATE
        )
        database = urlsplit(url).path.lstrip("/")
        pg = PostgresProcesses(server["postmaster_pid"], database)
        fleet = Workers(pool)
        activity = Activity(admin_url, database)
        try:
            rate, detail = await backlog_drain(
                ctx,
                api,
                key,
                [endpoint],
                lambda _: EVENT,
                ctx.options.messages,
                on_release=activity.start,
                counters=fleet,
                cpu=_cpu_meter(ctx, api, pool, pg),
            )
        finally:
            during = await asyncio.to_thread(activity.stop)
        detail["postgres_during_drain"] = during
        per_worker = [(await w.metrics()).get(SUCCEEDED, 0.0) for w in pool]
        detail["succeeded_per_worker"] = per_worker
        detail["sender_processes_per_worker"] = [len(children(w.pid)) for w in pool]
        detail["api_child_processes"] = len(children(api.pid))
        detail["postgres_backends_of_the_database"] = len(pg.ours())
        detail["store_after_drain"] = await asyncio.to_thread(_tally, url)
    detail["store"] = "postgresql"
    detail["workers"] = workers
    detail["settings"] = _settings(ctx)
    split = ", ".join(f"{n:.0f}" for n in per_worker)
    ctx.results.note(f"{name}: {describe_drain(detail)}; per worker {split}")
    return rate, detail


async def run(ctx: Context) -> list[Row]:
    admin_url = _with_database(ctx.options.postgres_url, "postgres")
    try:
        server = await asyncio.to_thread(_server_info, admin_url)
    except psycopg.Error as exc:
        raise RuntimeError(
            f"no PostgreSQL at {redacted(admin_url)} (--postgres-url): {exc}"
        ) from exc
    server["url"] = redacted(ctx.options.postgres_url)
    if server["postmaster_pid"] is None:
        ctx.results.note("PostgreSQL does not run on this machine: its CPU is not measured")
    sqlite, sqlite_detail = await _sqlite_run(ctx)
    one, one_detail = await _pg_run(ctx, "g-pg-1", 1, server)
    two, two_detail = await _pg_run(ctx, "g-pg-2", 2, server)
    one_detail["postgres_server"] = two_detail["postgres_server"] = server
    pg_ratio = one / sqlite
    scaling = two / one
    cores = os.cpu_count() or 1
    rows = [
        Row(
            "g",
            f"sqlite, serve, {IN_FLIGHT} in flight",
            sqlite,
            "deliveries/s",
            detail=sqlite_detail,
        ),
        Row(
            "g",
            f"postgresql, 1 worker, {IN_FLIGHT} in flight",
            one,
            "deliveries/s",
            detail=one_detail,
        ),
        Row(
            "g",
            f"postgresql, 2 workers, {IN_FLIGHT} in flight",
            two,
            "deliveries/s",
            detail=two_detail,
        ),
        Row(
            "g",
            "postgresql / sqlite",
            100 * pg_ratio,
            "%",
            target=f">= {PG_OVER_SQLITE_TARGET:.0%}",
            verdict=verdict(pg_ratio >= PG_OVER_SQLITE_TARGET),
            detail={"workers": 1},
        ),
        Row(
            "g",
            "two workers / one",
            scaling,
            "x",
            target=f">= {TWO_OVER_ONE_TARGET}x",
            verdict=verdict(scaling >= TWO_OVER_ONE_TARGET),
            detail={
                "nproc": cores,
                "target_applies": "where the machine's cores allow it",
                "cpu_one_worker": one_detail["cpu_pct_of_one_core"],
                "cpu_two_workers": two_detail["cpu_pct_of_one_core"],
            },
        ),
    ]
    for row in rows:
        ctx.results.add(row)
    return rows
