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
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.pool import QueuePool

from tidings.store.sql import SqlStore

BUSY_TIMEOUT_MS = 10_000
READERS = 4


class SqliteStore(SqlStore):
    def __init__(self, url: str) -> None:
        writer = _engine(url, pool_size=1)
        event.listen(writer, "begin", _begin_write)
        reader = _engine(url, pool_size=READERS)
        event.listen(reader, "begin", _begin_read)
        super().__init__(writer, reader, readers=READERS)

    def _prepare(self, conn: Connection, *, durable: bool) -> None:
        conn.info["want_synchronous"] = "FULL" if durable else "NORMAL"


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
