"""The SQL store's machinery, written once: threads, the write lock, transactions,
error translation, backend hooks, and the store's lifecycle.

Every store call is one transaction written as a plain synchronous method, and
run whole in a worker thread (or, for a backend that allows it, a hot-path write
inline: see :meth:`SqlCore._writing_hot`). The decorators :func:`reads`,
:func:`writes` and :func:`writes_hot` turn such a method into the async method
of the :class:`~tidings.store.ports.Store` contract that hands it over, so each
kind of record (one module each, beside this one) is written as transactions
alone. Backend specifics (connection pragmas, flush levels, the engine's hot
paths in the driver's own SQL) live in the backends' subclasses.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial, wraps
from importlib import resources
from typing import Any, Concatenate, ParamSpec, TypeVar

import structlog
from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from tidings.crypto import Keyring
from tidings.exceptions import EncryptionKeyError, StoreError, StoreUnavailable
from tidings.store.ports import Change, Changed
from tidings.store.sql.rows import put_setting

log = structlog.get_logger(__name__)
T = TypeVar("T")
P = ParamSpec("P")
Core = TypeVar("Core", bound="SqlCore")
PING_TIMEOUT_S = 2.0
# While writes fail, readiness tries one of its own at most this often (a probe must not
# become a load on the writer).
WRITE_PROBE_EVERY_S = 1.0
PROBE_SETTING = "write_probe_at"


class Turn(StrEnum):
    """What concurrent ingest transactions (of any process) must take turns on, each
    name of it on its own: a name is looked up, then written if it was not found."""

    IDEMPOTENCY_KEY = "idempotency_key"  # a tenant's Idempotency-Key
    EMAIL_LANE = "email_lane"  # a tenant's email lane, made by its first email


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into the store's own: callers never see a driver exception.
    A lost or refused connection (the server restarting, say) is "unavailable": the
    same call may well succeed a moment later."""
    try:
        yield
    except DBAPIError as exc:
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            raise StoreUnavailable(f"the store connection was lost: {exc.orig}") from exc
        raise StoreError(f"the store failed: {exc.orig}") from exc


def _connect(engine: Engine) -> Connection:
    try:
        return engine.connect()
    except (DBAPIError, OSError) as exc:
        raise StoreUnavailable(f"the store cannot be reached: {exc}") from exc


def reads(
    tx: Callable[Concatenate[Core, P], T],
) -> Callable[Concatenate[Core, P], Coroutine[Any, Any, T]]:
    """The contract's async method for the read transaction ``tx``: it runs whole on a
    reader thread (see :meth:`SqlCore._reading`)."""

    @wraps(tx)
    async def method(self: Core, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._reading(partial(tx, self, *args, **kwargs))

    return method


def writes(
    tx: Callable[Concatenate[Core, P], T],
) -> Callable[Concatenate[Core, P], Coroutine[Any, Any, T]]:
    """The contract's async method for the write transaction ``tx``: it runs whole on a
    writer thread, under the write lock (see :meth:`SqlCore._writing`)."""

    @wraps(tx)
    async def method(self: Core, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._writing(partial(tx, self, *args, **kwargs))

    return method


def writes_hot(
    tx: Callable[Concatenate[Core, P], T],
) -> Callable[Concatenate[Core, P], Coroutine[Any, Any, T]]:
    """The contract's async method for the hot-path write ``tx`` (a claim, a result
    batch): inline where the backend allows it (see :meth:`SqlCore._writing_hot`)."""

    @wraps(tx)
    async def method(self: Core, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._writing_hot(partial(tx, self, *args, **kwargs))

    return method


class SqlCore:
    """What every transaction runs on: the threads, the write lock, the connections in
    a transaction, the backend hooks, and the store's lifecycle.

    A transaction runs whole in a worker thread: writes on the one writer
    thread (so they are serialised, as SQLite needs), reads on a small pool;
    a hot-path write may run inline instead, under the same write lock.
    One hand-off per transaction instead of one per statement is what makes
    SQLite fast here: a claim costs a fraction of a millisecond, not several.
    """

    inline_hot_paths = False
    """Run a hot-path write in the caller's thread when no other write is under way
    (a backend whose short writes are cheaper than a thread hand-off)."""

    def __init__(self, writer: Engine, reader: Engine, readers: int = 4) -> None:
        self._engine = writer
        self._read_engine = reader
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tidings-store-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="tidings-store-reader")
        # Held by whichever thread runs a write transaction: the writer thread, or
        # the event loop's for an inline hot-path write.
        self._write_lock = threading.Lock()
        self._write_failure: StoreError | None = None  # the last write's, if it failed
        self._probed_at = -1e9  # monotonic
        self._keyring: Keyring | None = None
        self._hearers: list[Callable[[Changed], None]] = []  # see listen
        # What each write transaction under way announced, told once it commits. By
        # connection, not in its ``info``: a connection lost mid-write gets a new one.
        self._news: dict[Connection, list[Changed]] = {}
        self._local = threading.local()  # a writer thread's: what its hand-off will tell

    async def _writing(self, fn: Callable[[], T]) -> T:
        done = await asyncio.get_running_loop().run_in_executor(
            self._writer, partial(self._locked, partial(self._collecting, fn))
        )
        return self._told(done)

    def _collecting(self, fn: Callable[[], T]) -> tuple[T, list[Changed]]:
        """Run ``fn`` on a writer thread, keeping what its writes committed for the
        hand-off to tell (:meth:`_told`) once the answer is back on the caller's loop: a
        listener then hears of a write as its caller gets the answer, not before (the
        replies to an ingest go out before the dispatcher it wakes claims). What was
        committed before ``fn`` failed is told at once."""
        news: list[Changed] = []
        self._local.news = news
        try:
            return fn(), news
        except BaseException:
            for changed in news:
                self._tell(changed)
            raise
        finally:
            self._local.news = None

    def _told(self, done: tuple[T, list[Changed]]) -> T:
        result, news = done
        for changed in news:
            self._tell(changed)
        return result

    async def _writing_hot(self, fn: Callable[[], T]) -> T:
        """A claim or a result write: inline if allowed and the store is free, else
        on the writer thread. Inline, a transaction waits for nothing: the lock
        is free, so no other write holds the database."""
        if self.inline_hot_paths and self._write_lock.acquire(blocking=False):
            try:
                return fn()
            finally:
                self._write_lock.release()
        return await self._writing(fn)

    def _locked(self, fn: Callable[[], T]) -> T:
        with self._write_lock:
            return fn()

    async def _reading(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn)

    # transactions (run in a worker thread) -----------------------------------------

    @contextlib.contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[Connection]:
        """A connection in a transaction that commits on exit.

        ``durable=False`` marks the engine's own bookkeeping (claims, leases,
        results): losing it to a power cut (not to a process crash) only means a
        delivery is sent again, so a backend may commit it without a flush.
        """
        news: list[Changed] = []
        with self._noting_writes(), translate_errors():
            conn = _connect(self._engine)
            self._news[conn] = news
            try:
                self._prepare(conn, durable=durable)
                with conn.begin():
                    yield conn
            finally:
                del self._news[conn]
                conn.close()
        # Committed (a rollback raised above): now, and only now, it may be heard; by
        # the hand-off running this write if there is one (see _collecting), else now.
        pending: list[Changed] | None = getattr(self._local, "news", None)
        if pending is not None:
            pending.extend(news)
        else:
            for changed in news:
                self._tell(changed)

    def _tell(self, changed: Changed) -> None:
        """Tell this process's listeners (see :meth:`listen`); one that fails is logged,
        never the write's failure: the write has committed."""
        for hear in self._hearers:
            try:
                hear(changed)
            except Exception:
                log.exception("store_listener_failed", news=changed.news)

    @contextlib.contextmanager
    def _noting_writes(self) -> Iterator[None]:
        """Remember it if the write around which this runs failed in the store, for
        readiness (see :meth:`ping`). Only readiness's own write forgets it: on a full
        disk a small write may well succeed while the next batch fails."""
        try:
            yield
        except StoreError as exc:
            self._write_failure = exc
            raise

    def _prepare(self, conn: Connection, *, durable: bool) -> None:
        """Set up ``conn`` before a write transaction (backend hook)."""

    def _take_turns(self, conn: Connection, turn: Turn, names: Collection[str]) -> None:
        """Wait until no other transaction holds ``names`` of ``turn``, then hold them to the
        end of ``conn``'s transaction (backend hook: SQLite's one writer at a time
        already takes turns on everything)."""

    def _announce(self, conn: Connection, news: Change, endpoint_ids: Sequence[str] = ()) -> None:
        """Tell this process's listeners, once ``conn``'s transaction commits, what it
        changed, and the endpoints concerned if known. A backend shared by several
        processes tells them too (one process per SQLite file has no one else to tell)."""
        self._news[conn].append(Changed(news, tuple(endpoint_ids)))

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with translate_errors():
            conn = _connect(self._read_engine)
            try:
                yield conn
            finally:
                conn.close()

    # lifecycle -------------------------------------------------------------------

    @writes
    def migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option(
            "script_location", str(resources.files("tidings.store.sql") / "migrations")
        )
        with self._write() as conn:
            self._lock_migrations(conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def _lock_migrations(self, conn: Connection) -> None:
        """Keep other processes from migrating until ``conn``'s transaction ends (backend
        hook; SQLite's write transaction already excludes every other writer)."""

    def _close_tx(self) -> None:
        self._engine.dispose()
        self._read_engine.dispose()

    def _ping_tx(self) -> None:
        with self._read() as conn:
            conn.execute(select(1))

    def _probe_write_tx(self, now: datetime) -> None:
        """A write of readiness's own, to learn whether writes succeed again."""
        with self._write() as conn:
            put_setting(conn, PROBE_SETTING, now.isoformat())
        self._write_failure = None

    @property
    def _keys(self) -> Keyring:
        if self._keyring is None:
            raise EncryptionKeyError("the store's secrets are locked: no encryption key given")
        return self._keyring

    async def listen(self, hear: Callable[[Changed], None]) -> None:
        """This process's writes, told in the thread that wrote right after each commit
        (on SQLite, one process per file, there are no others to hear)."""
        self._hearers.append(hear)

    async def lead(self) -> bool:
        return True

    async def close(self) -> None:
        """Let running transactions finish, then close every connection (one still in
        use by a transaction would otherwise be dropped unclosed)."""

        def finish() -> None:
            self._writer.shutdown(wait=True)
            self._readers.shutdown(wait=True)
            with self._write_lock:  # an inline hot-path write of SQLite's
                self._close_tx()

        await asyncio.get_running_loop().run_in_executor(None, finish)

    async def ping(self) -> None:
        """The store answers a read; and, if the last write failed, a write of the probe's
        own succeeds (tried at most every :data:`WRITE_PROBE_EVERY_S`: in between, the
        last outcome stands). Writes that work cost readiness nothing."""
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await self._reading(self._ping_tx)
                if self._write_failure is not None:
                    if time.monotonic() - self._probed_at >= WRITE_PROBE_EVERY_S:
                        self._probed_at = time.monotonic()
                        now = datetime.now(UTC)
                        with contextlib.suppress(StoreError):
                            await self._writing(partial(self._probe_write_tx, now))
                    if self._write_failure is not None:
                        raise StoreUnavailable(
                            f"the store takes no writes: {self._write_failure.detail}"
                        )
        except TimeoutError as exc:
            raise StoreUnavailable(f"the store did not answer within {PING_TIMEOUT_S:g} s") from exc
