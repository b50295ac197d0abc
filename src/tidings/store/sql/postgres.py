"""The PostgreSQL store: any number of tidings processes on one database.

The transactions are :class:`~tidings.store.sql.store.SqlStore`'s, the same
synchronous functions SQLite runs, on psycopg 3 connections in worker threads.
Unlike SQLite's, writes are not serialised in the process: PostgreSQL locks
rows, so several write transactions run at once, from this process and others.

* **Durability.** What a caller is promised (a message, an endpoint) commits
  with ``synchronous_commit=on``. The engine's own bookkeeping (claims, leases,
  results) commits with ``synchronous_commit=off``: a crash of the database
  server may lose its last moments, and then a delivery is sent again, which
  at-least-once allows.
* **Claims** take each endpoint's oldest due deliveries ``FOR UPDATE SKIP
  LOCKED``, so two workers never claim the same delivery. The store is the
  source of truth for each endpoint's caps: a claim takes no more than its
  ``max_in_flight`` less what is in flight on every worker, and no more than
  its rate limit's token bucket, kept in the store, holds. Claims from one
  endpoint are serialised by an advisory lock of its own, for the moment of
  the claim.
* **Migrations** hold an advisory lock for their transaction: several
  processes may run ``tidings migrate`` (or start) at once, and one migrates
  while the others wait, then find nothing to do.
* **Reads** each see one snapshot (``REPEATABLE READ``, read only).
* **Other processes** hear of what a write changed (new work, endpoints, a
  drain's schedule) through ``LISTEN``/``NOTIFY`` on channel ``tidings``, sent
  in the write's own transaction, so it arrives only once it committed.
* **Leadership**: the process holding a session-level advisory lock runs the
  singleton duties (health evaluation, retention); when it dies, its session
  ends, the lock is free, and the next process to ask takes it.
* **Conflicts.** A transaction PostgreSQL aborts as a deadlock or a
  serialisation failure ran in full or not at all; it is run again, up to
  :data:`RETRIES` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import psycopg
import structlog
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection

from tidings.domain.models import AttemptResult, Claimed, Claims, DeliveryState
from tidings.domain.ratelimit import TokenBucket
from tidings.exceptions import StoreError, StoreUnavailable
from tidings.store.ports import Change, Changed
from tidings.store.sql.core import Turn, writes_hot
from tidings.store.sql.hot import apply_results
from tidings.store.sql.schema import from_micros, to_micros
from tidings.store.sql.store import SqlStore

log = structlog.get_logger(__name__)

T = TypeVar("T")
WRITERS = 8
READERS = 4
RETRIES = 5
# The advisory lock of migrations: one key for every tidings database.
MIGRATION_LOCK = 7_142_816_001
LEADER_LOCK = 7_142_816_002  # held by the process that runs the singleton duties
CLAIM_LOCKS = 7_142_816  # the first key of each endpoint's claim lock (int4)
# The first key of the locks ingest takes turns on (see SqlStore._take_turns).
TURN_LOCKS = {Turn.IDEMPOTENCY_KEY: 7_142_817, Turn.EMAIL_LANE: 7_142_818}
CHANNEL = "tidings"  # LISTEN/NOTIFY
LISTEN_POLL_S = 1.0  # how often the listener looks up from waiting, to stop
RECONNECT_S = 1.0
CONNECT_TIMEOUT_S = 5  # a server that takes a connection and says nothing is given up on
# Every connection asks the kernel to probe an idle peer: a server that vanished without
# a word (a cut network, a host gone) is noticed within about 25 s, not hours.
CONNECTION_OPTIONS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
_RETRYABLE = ("40001", "40P01")  # serialization_failure, deadlock_detected


class PostgresStore(SqlStore):
    def __init__(self, url: str) -> None:
        self._url = driver_url(url)
        engine = create_engine(
            self._url,
            pool_size=WRITERS + READERS,
            max_overflow=0,
            pool_pre_ping=True,
            connect_args=CONNECTION_OPTIONS,
        )
        event.listen(engine, "begin", _begin)
        super().__init__(engine, engine, readers=READERS)
        self._writer.shutdown(wait=False)
        self._writer = ThreadPoolExecutor(WRITERS, thread_name_prefix="tidings-store-writer")
        self._listening = threading.Event()  # set: the listener should stop
        self._listener: threading.Thread | None = None
        self._leader: psycopg.Connection[Any] | None = None  # holds the leadership lock

    # other processes -----------------------------------------------------------------

    def _take_turns(self, conn: Connection, turn: Turn, names: Collection[str]) -> None:
        """A transaction-level advisory lock for each name, taken in the order of the
        locks' keys (as the claims' are): released by the commit, after which the
        next holder's statements see what this one wrote."""
        if names:
            conn.exec_driver_sql(_TAKE_TURNS, {"space": TURN_LOCKS[turn], "names": sorted(names)})

    def _announce(self, conn: Connection, news: Change, endpoint_ids: Sequence[str] = ()) -> None:
        """This process's listeners, and the other processes by a NOTIFY, which
        PostgreSQL sends at the commit (the endpoints stay in this process)."""
        super()._announce(conn, news, endpoint_ids)
        conn.exec_driver_sql(f"SELECT pg_notify('{CHANNEL}', %(news)s)", {"news": news})

    async def listen(self, hear: Callable[[Changed], None]) -> None:
        """This process's writes as on every backend, and the other processes': LISTEN
        on a connection of its own, in a thread of its own; a lost connection is made
        again after :data:`RECONNECT_S`. Whatever was announced while no one listened
        is lost: once listening again, ``hear`` is told every kind of news, so that each
        cache reads what it keeps again. (A NOTIFY of this process's own is heard
        twice, at once and from the listener: harmless, news only makes one look.)"""
        await super().listen(hear)

        def run() -> None:
            while not self._listening.is_set():
                try:
                    with self._connect() as conn:
                        conn.execute(f"LISTEN {CHANNEL}")
                        for news in Change:
                            hear(Changed(news))
                        while not self._listening.is_set():
                            for note in conn.notifies(timeout=LISTEN_POLL_S):
                                hear(Changed(Change(note.payload)))
                except psycopg.Error as exc:
                    log.warning("store_listener_reconnecting", error=str(exc))
                    self._listening.wait(RECONNECT_S)

        self._listener = threading.Thread(target=run, name="tidings-store-listener", daemon=True)
        self._listener.start()

    async def lead(self) -> bool:
        return await self._reading(self._lead)

    def _lead(self) -> bool:
        """Hold the leadership lock on a session of its own: it is released when this
        process's session ends, however the process ends."""
        try:
            if self._leader is not None:
                self._leader.execute("SELECT 1")
                return True
            conn = self._connect()
            try:
                row = conn.execute(f"SELECT pg_try_advisory_lock({LEADER_LOCK})").fetchone()
            except BaseException:
                conn.close()
                raise
            if row and row[0]:
                self._leader = conn
                log.info("store_leadership_taken")
                return True
            conn.close()
            return False
        except psycopg.Error as exc:
            log.warning("store_leadership_lost", error=str(exc))
            if self._leader is not None:
                self._leader.close()
                self._leader = None
            return False

    def _close_tx(self) -> None:
        self._listening.set()
        if self._listener is not None:
            self._listener.join()
        if self._leader is not None:
            self._leader.close()
            self._leader = None
        super()._close_tx()

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection of its own (the listener's, the leader's), outside the pool."""
        return psycopg.connect(self._libpq_url(), autocommit=True, **CONNECTION_OPTIONS)

    def _libpq_url(self) -> str:
        return "postgresql://" + self._url.removeprefix("postgresql+psycopg://")

    async def _writing(self, fn: Callable[[], T]) -> T:
        """Run a write transaction on a writer thread, again if PostgreSQL aborted it as
        a deadlock or a serialisation failure."""
        loop = asyncio.get_running_loop()
        for attempt in range(1, RETRIES + 1):
            try:
                done = await loop.run_in_executor(self._writer, partial(self._collecting, fn))
                return self._told(done)
            except StoreError as exc:
                if attempt == RETRIES or not _retryable(exc):
                    raise
                log.info("store_transaction_retried", attempt=attempt, error=str(exc))
        raise AssertionError("unreachable")

    async def _writing_hot(self, fn: Callable[[], T]) -> T:
        return await self._writing(fn)

    def _prepare(self, conn: Connection, *, durable: bool) -> None:
        conn.info["durable"] = durable

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only snapshot: a read of several statements (an email and its
        delivery) sees one moment, as SQLite's read transactions do."""
        with super()._read() as conn:
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield conn

    def _lock_migrations(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")

    @writes_hot
    def claim(self, slots: Mapping[str, int], now: datetime, lease_until: datetime) -> Claims:
        wanted = sorted((endpoint_id, n) for endpoint_id, n in slots.items() if n > 0)
        if not wanted:
            return Claims()
        now_us, lease_us = to_micros(now), to_micros(lease_until)
        rows: list[Any] = []
        with self._write(durable=False) as conn, _driver_errors():
            cursor = _driver(conn).cursor()
            allowed, buckets, full = _allowed(cursor, dict(wanted), now)
            if allowed:
                ids, counts = list(allowed), list(allowed.values())
                cursor.execute(_CLAIM, (ids, counts, now_us, lease_us, now_us))
                rows = cursor.fetchall()
                if buckets:
                    _spend(cursor, buckets, [row[2] for row in rows], now)
            # Held back at the cap, not for want of work: did they get all they could?
            got = Counter(row[2] for row in rows)
            full = [e for e in full if got[e] == allowed.get(e, 0)]
            if full:
                cursor.execute(_WAITING, (full, now_us))
                full = [row[0] for row in cursor.fetchall()]
        rows.sort(key=lambda row: (row[9], row[0]))  # oldest due first, as SQLite's
        claimed = [
            Claimed(
                delivery_id=row[0],
                message_id=row[1],
                endpoint_id=row[2],
                attempts=row[3],
                retry_base=row[4],
                created_at=from_micros(row[5]),  # type: ignore[arg-type]
                event_type=row[6],
                payload=bytes(row[7]),
                message_created_at=from_micros(row[8]),  # type: ignore[arg-type]
                lease_until=lease_until,
            )
            for row in rows
        ]
        return Claims(claimed, capped=full)

    @writes_hot
    def record_results(self, results: Sequence[AttemptResult], now: datetime) -> int:
        if not results:
            return 0
        with self._write(durable=False) as conn, _driver_errors():
            cursor = _driver(conn).cursor()
            if not any(r.email for r in results):
                return apply_results(cursor, results, now, percent=True)
            return self._record_with_emails(conn, cursor, results, now, percent=True)


def _allowed(
    cursor: psycopg.Cursor[Any], wanted: Mapping[str, int], now: datetime
) -> tuple[dict[str, int], dict[str, TokenBucket], list[str]]:
    """How many of ``wanted`` each endpoint may have claimed now, whichever worker asks:
    no more than its ``max_in_flight`` in flight across all workers, and no more than
    its rate limit's bucket (kept in the store) holds; the buckets read; and the
    endpoints whose ``max_in_flight`` allowed fewer than wanted. The endpoints' claims
    are serialised by a lock each, held to the end of the transaction; taken in the
    order of their keys, so two claims never wait for each other in a cycle."""
    ids = list(wanted)
    cursor.execute(_LOCK_ENDPOINTS, (ids,))
    cursor.execute(_LIMITS, (ids,))
    allowed: dict[str, int] = {}
    buckets: dict[str, TokenBucket] = {}
    full: list[str] = []
    at = now.timestamp()
    for endpoint_id, max_in_flight, rate, in_flight, tokens, updated_us in cursor.fetchall():
        room = min(wanted[endpoint_id], max_in_flight - in_flight)
        if room < wanted[endpoint_id]:
            full.append(endpoint_id)
        if rate:
            bucket = TokenBucket.full(rate, at)
            if tokens is not None:
                bucket = TokenBucket(rate, tokens, from_micros(updated_us).timestamp())  # type: ignore[union-attr]
            room = min(room, bucket.available(at))
            buckets[endpoint_id] = bucket
        if room > 0:
            allowed[endpoint_id] = room
    return allowed, buckets, full


def _spend(
    cursor: psycopg.Cursor[Any],
    buckets: Mapping[str, TokenBucket],
    claimed: Sequence[str],
    now: datetime,
) -> None:
    """Take a token for each delivery claimed from a rate-limited endpoint, and store
    every bucket read, refilled or not."""
    at = now.timestamp()
    for endpoint_id in claimed:
        if endpoint_id in buckets:
            buckets[endpoint_id].take(1, at)
    cursor.executemany(
        _SAVE_BUCKET,
        [(e, b.tokens, round(b.updated * 1_000_000)) for e, b in buckets.items()],
    )


def driver_url(url: str) -> str:
    """``postgresql://…`` (or ``postgres://``, ``postgresql+psycopg://``) for psycopg 3."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver


def _begin(conn: Connection) -> None:
    """Bookkeeping commits without waiting for the WAL flush (see the module's doc)."""
    if not conn.info.pop("durable", True):
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")


def _retryable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a deadlock or serialisation failure."""
    seen: BaseException | None = exc
    while seen is not None:
        state = getattr(getattr(seen, "orig", seen), "sqlstate", None)
        if state in _RETRYABLE:
            return True
        seen = seen.__cause__
    return False


@contextlib.contextmanager
def _driver_errors() -> Iterator[None]:
    """psycopg's own errors (from the driver's cursor) as the store's."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"the store failed: {exc}") from exc
    except psycopg.Error as exc:
        raise StoreError(f"the store failed: {exc}") from exc


# One lock per endpoint claimed from (the parameter: the ids), in the order of the
# locks' keys: two ids may hash alike and share one.
_LOCK_ENDPOINTS = (
    f"SELECT pg_advisory_xact_lock({CLAIM_LOCKS}, h)"
    " FROM (SELECT DISTINCT hashtext(e) AS h FROM unnest(%s::text[]) AS e ORDER BY h) AS ordered"
)

# One lock per name (in the lock space of the first parameter), in the order of the
# locks' keys.
_TAKE_TURNS = (
    "SELECT pg_advisory_xact_lock(%(space)s, h) FROM (SELECT DISTINCT hashtext(n) AS h"
    " FROM unnest(%(names)s::text[]) AS n ORDER BY h) AS ordered"
)

# Each endpoint's caps, how many of its deliveries are in flight (any worker's), and
# its stored token bucket.
_LIMITS = (
    "SELECT e.id, e.max_in_flight, e.rate_limit_per_s,"
    f" (SELECT count(*) FROM deliveries AS d WHERE d.endpoint_id = e.id"
    f" AND d.state = '{DeliveryState.IN_FLIGHT}'),"
    " b.tokens, b.updated_at"
    " FROM endpoints AS e LEFT JOIN rate_buckets AS b ON b.endpoint_id = e.id"
    " WHERE e.id = ANY(%s::text[])"
)

# Which of the endpoints (the parameter: their ids) still have due pending deliveries.
_WAITING = (
    "SELECT e FROM unnest(%s::text[]) AS e WHERE EXISTS (SELECT 1 FROM deliveries AS d"
    f" WHERE d.endpoint_id = e AND d.state = '{DeliveryState.PENDING}'"
    " AND d.next_attempt_at <= %s)"
)

_SAVE_BUCKET = (
    "INSERT INTO rate_buckets (endpoint_id, tokens, updated_at) VALUES (%s, %s, %s)"
    " ON CONFLICT (endpoint_id) DO UPDATE SET tokens = excluded.tokens,"
    " updated_at = excluded.updated_at"
)

# Up to ``n`` due pending deliveries of each endpoint (the parameters: the endpoint
# ids, the counts, now, the lease's end, now), locked as they are taken; those
# another transaction holds are skipped, not waited for.
_CLAIM = (
    "WITH wanted AS (SELECT * FROM unnest(%s::text[], %s::int[]) AS w(endpoint_id, n)),"
    " picked AS (SELECT p.id FROM wanted AS w CROSS JOIN LATERAL ("
    " SELECT d.id FROM deliveries AS d"
    f" WHERE d.endpoint_id = w.endpoint_id AND d.state = '{DeliveryState.PENDING}'"
    " AND d.next_attempt_at <= %s"
    " ORDER BY d.next_attempt_at LIMIT w.n FOR UPDATE SKIP LOCKED) AS p)"
    f" UPDATE deliveries AS d SET state = '{DeliveryState.IN_FLIGHT}',"
    " lease_expires_at = %s, updated_at = %s"
    " FROM picked, messages AS m WHERE d.id = picked.id AND m.id = d.message_id"
    " RETURNING d.id, d.message_id, d.endpoint_id, d.attempts, d.retry_base, d.created_at,"
    " m.event_type, m.payload, m.created_at, d.next_attempt_at"
)
