"""The embedded SQLite store: WAL, ``synchronous=FULL``, one writer at a time.

Durability: every commit is fsynced (``synchronous=FULL``) before the caller
hears of it. Throughput: writers are serialised by an in-process lock (SQLite
allows one writer anyway, and waiting on a lock is cheaper than on
``SQLITE_BUSY``), and callers that write much (ingest, result write-back)
batch their work so one fsync covers many rows. Readers run beside the writer
on their own connections, as WAL allows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from tidings.store.sql import SqlStore

BUSY_TIMEOUT_MS = 10_000


class SqliteStore(SqlStore):
    def __init__(self, url: str) -> None:
        writer = create_async_engine(_async_url(url), pool_size=1, max_overflow=0)
        event.listen(writer.sync_engine, "connect", _configure)
        event.listen(writer.sync_engine, "begin", _begin("BEGIN IMMEDIATE"))
        readers = create_async_engine(_async_url(url), pool_size=8, max_overflow=0)
        event.listen(readers.sync_engine, "connect", _configure)
        event.listen(readers.sync_engine, "begin", _begin("BEGIN"))
        super().__init__(writer, readers)
        self._writer = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self._writer, super()._write() as conn:
            yield conn


def _async_url(url: str) -> str:
    if url.startswith("sqlite+aiosqlite://"):
        return url
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.removeprefix("sqlite://")
    raise ValueError(f"not a SQLite URL: {url!r}")


def _configure(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (see _begin_immediate).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin(statement: str) -> Callable[[Any], None]:
    """Emit our own BEGIN: IMMEDIATE for writers, so a write transaction takes the
    write lock at once and never fails to upgrade a read lock half-way (another
    process, e.g. ``tidings migrate``); plain for readers, a consistent snapshot."""

    def begin(conn: Any) -> None:
        conn.exec_driver_sql(statement)

    return begin
