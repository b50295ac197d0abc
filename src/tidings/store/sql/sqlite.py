"""The embedded SQLite store: WAL, one writer thread, fsync where it was promised.

Durability: every commit of what a caller was promised (a message, an
endpoint) is fsynced (``synchronous=FULL``) before the caller hears of it; the
engine's own bookkeeping (claims, results) is committed with
``synchronous=NORMAL``, which WAL keeps across a process crash (a power cut
may lose it, and then a delivery is sent again: at-least-once still holds).

Throughput: SQLite allows one writer, so every write transaction runs on the
one writer thread, and callers that write much (ingest, result write-back)
batch their work so one commit covers many rows. Readers run beside the
writer on their own connections and threads, as WAL allows.

The engine's hot paths (claims and result write-back, several per few
deliveries) are plain SQL on a connection of their own, kept at
``synchronous=NORMAL``: through SQLAlchemy a transaction costs ~100 µs more
than the SQL in it, which was a third of the cost of a delivery. They run in
the event loop's thread when no other write is under way, since such a
transaction (no fsync) takes less time than handing it to a thread, and an
in-flight slot is held until its result is committed. That connection never
checkpoints the WAL as it commits (a checkpoint fsyncs); the writer thread
does, every ``CHECKPOINT_EVERY`` commits of it.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import QueuePool

from tidings.domain.models import AttemptResult, Claimed, Claims, DeliveryState
from tidings.exceptions import StoreError, StoreUnavailable
from tidings.store.sql.core import writes_hot
from tidings.store.sql.hot import apply_results
from tidings.store.sql.schema import from_micros, to_micros
from tidings.store.sql.store import SqlStore

log = structlog.get_logger(__name__)

BUSY_TIMEOUT_MS = 10_000
READERS = 4
CLAIM_CHUNK = 100  # endpoints per claim statement
CHECKPOINT_EVERY = 200  # hot-path commits between WAL checkpoints
# Readiness wants this much free space beside the database before it says writes work
# again (a probe's own small write may find room where an ingest batch finds none).
READY_FREE_BYTES = 1 << 20


class SqliteStore(SqlStore):
    inline_hot_paths = True

    def __init__(self, url: str) -> None:
        self._path = make_url(_sync_url(url)).database or ""
        if self._path in ("", ":memory:"):
            raise ValueError(f"tidings keeps its SQLite store in a file: {url!r} names none")
        writer = _engine(url, pool_size=1)
        event.listen(writer, "begin", _begin_write)
        reader = _engine(url, pool_size=READERS)
        event.listen(reader, "begin", _begin_read)
        self._hot_conn: sqlite3.Connection | None = None
        self._hot_commits = 0
        super().__init__(writer, reader, readers=READERS)

    def key_file(self) -> Path:
        """``<database>.key``: kept, and backed up, with the database it opens."""
        return Path(f"{self._path}.key")

    def _prepare(self, conn: Connection, *, durable: bool) -> None:
        conn.info["want_synchronous"] = "FULL" if durable else "NORMAL"

    def _probe_write_tx(self, now: datetime) -> None:
        with self._noting_writes():
            free = shutil.disk_usage(Path(self._path).parent).free
            if free < READY_FREE_BYTES:
                raise StoreUnavailable(f"database or disk is full: {free} bytes free")
        super()._probe_write_tx(now)

    def _close_tx(self) -> None:
        if self._hot_conn is not None:
            self._hot_conn.close()
            self._hot_conn = None
        super()._close_tx()

    # the hot paths: plain SQL, under the write lock (inline or on the writer thread) ---

    @contextlib.contextmanager
    def _hot(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the hot-path connection (under the write lock)."""
        with self._noting_writes(), _driver_errors():
            if self._hot_conn is None:
                conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                _configure(conn, None)
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA wal_autocheckpoint=0")
                self._hot_conn = conn
            conn = self._hot_conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # After a failed COMMIT (disk full, I/O error) SQLite may keep the
                # transaction, and with it the write lock, open: end it here.
                if conn.in_transaction:
                    conn.rollback()
                raise
            self._hot_commits += 1
            if self._hot_commits % CHECKPOINT_EVERY == 0:
                self._writer.submit(self._locked, self._checkpoint)

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database, as far as readers allow."""
        try:
            if self._hot_conn is not None:
                self._hot_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            log.exception("wal_checkpoint_failed")

    @writes_hot
    def claim(self, slots: Mapping[str, int], now: datetime, lease_until: datetime) -> Claims:
        """One process per file: the dispatcher's own counts are the caps, so none is
        held back here."""
        wanted = [(endpoint_id, n) for endpoint_id, n in slots.items() if n > 0]
        now_us, lease_us = to_micros(now), to_micros(lease_until)
        rows: list[Any] = []
        with self._hot() as conn:
            for start in range(0, len(wanted), CLAIM_CHUNK):
                chunk = wanted[start : start + CLAIM_CHUNK]
                params = [p for endpoint_id, n in chunk for p in (endpoint_id, now_us, n)]
                rows += conn.execute(_claim_select(len(chunk)), params).fetchall()
            conn.executemany(_CLAIM_UPDATE, [(lease_us, now_us, row[0]) for row in rows])
        return Claims(
            Claimed(
                delivery_id=delivery_id,
                message_id=message_id,
                endpoint_id=endpoint_id,
                event_type=event_type,
                payload=payload,
                attempts=attempts,
                retry_base=retry_base,
                created_at=from_micros(created_at),  # type: ignore[arg-type]
                message_created_at=from_micros(message_created_at),  # type: ignore[arg-type]
                lease_until=lease_until,
            )
            for (
                delivery_id,
                message_id,
                endpoint_id,
                attempts,
                retry_base,
                created_at,
                event_type,
                payload,
                message_created_at,
            ) in rows
        )

    @writes_hot
    def record_results(self, results: Sequence[AttemptResult], now: datetime) -> int:
        if not results:
            return 0
        if not any(r.email for r in results):
            with self._hot() as conn:
                return apply_results(conn.cursor(), results, now)
        with self._write(durable=False) as conn, _driver_errors():
            driver = conn.connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            return self._record_with_emails(conn, driver.cursor(), results, now)


@contextlib.contextmanager
def _driver_errors() -> Iterator[None]:
    """The driver's errors as the store's own (SQLAlchemy's are translated elsewhere)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(f"the store failed: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"the store failed: {exc}") from exc


def _engine(url: str, pool_size: int) -> Any:
    engine = create_engine(
        _sync_url(url),
        poolclass=QueuePool,
        pool_size=pool_size,
        max_overflow=0,
        connect_args={"check_same_thread": False},
    )
    event.listen(engine, "connect", _configure)
    return engine


def _sync_url(url: str) -> str:
    for prefix in ("sqlite+pysqlite://", "sqlite://"):
        if url.startswith(prefix):
            return "sqlite+pysqlite://" + url.removeprefix(prefix)
    raise ValueError(f"not a SQLite URL: {url!r}")


def _configure(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (see _begin_write).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_write(conn: Any) -> None:
    """BEGIN IMMEDIATE, after setting the flush level the transaction asked for.

    IMMEDIATE takes the write lock at once, so a write transaction never fails
    to upgrade a read lock half-way (another process, e.g. ``tidings migrate``);
    SQLite changes ``synchronous`` only outside a transaction.
    """
    wanted = conn.info.pop("want_synchronous", "FULL")
    if conn.info.get("synchronous", "FULL") != wanted:
        conn.exec_driver_sql(f"PRAGMA synchronous={wanted}")
        conn.info["synchronous"] = wanted
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _begin_read(conn: Any) -> None:
    """A plain BEGIN for readers: each read sees one consistent snapshot."""
    conn.exec_driver_sql("BEGIN")


# The hot-path statements. Every delivery row they touch is named by its id;
# a claim picks, per endpoint, the oldest due pending deliveries.


@lru_cache(maxsize=CLAIM_CHUNK)
def _claim_select(endpoint_count: int) -> str:
    """Up to ``n`` due pending deliveries of each of ``endpoint_count`` endpoints (the
    parameters are ``endpoint_id, now, n`` for each), oldest due first, with what
    sending them needs."""
    pick = (
        "SELECT id FROM (SELECT id FROM deliveries"
        f" WHERE endpoint_id = ? AND state = '{DeliveryState.PENDING}' AND next_attempt_at <= ?"
        " ORDER BY next_attempt_at LIMIT ?)"
    )
    return (
        "SELECT d.id, d.message_id, d.endpoint_id, d.attempts, d.retry_base, d.created_at,"
        " m.event_type, m.payload, m.created_at"
        " FROM deliveries AS d JOIN messages AS m ON m.id = d.message_id"
        f" WHERE d.id IN ({' UNION ALL '.join([pick] * endpoint_count)})"
        " ORDER BY d.next_attempt_at, d.id"
    )


_CLAIM_UPDATE = (
    f"UPDATE deliveries SET state = '{DeliveryState.IN_FLIGHT}', lease_expires_at = ?,"
    " updated_at = ? WHERE id = ?"
)
