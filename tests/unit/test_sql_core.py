"""The SQL store's hand-off decorators: each transaction runs where its kind must run.

Reads on a reader thread, writes on the writer thread under the write lock, hot-path
writes inline when the backend allows it and no write holds the lock (else on the
writer thread); errors come back to the caller as they were raised.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from tidings.store.sql.core import SqlCore, reads, writes, writes_hot


class Where(SqlCore):
    """Transactions that say which thread ran them and whether the write lock was held."""

    @reads
    def read(self, tag: str, *, twice: bool = False) -> tuple[str, bool, str]:
        """A read."""
        name = threading.current_thread().name
        return name, self._write_lock.locked(), tag * (2 if twice else 1)

    @writes
    def write(self) -> tuple[str, bool]:
        return threading.current_thread().name, self._write_lock.locked()

    @writes_hot
    def write_hot(self) -> tuple[str, bool]:
        return threading.current_thread().name, self._write_lock.locked()

    @writes
    def fail(self) -> None:
        raise ValueError("from the transaction")


@pytest.fixture
async def where(tmp_path: Path) -> AsyncIterator[Where]:
    url = f"sqlite+pysqlite:///{tmp_path / 'core.db'}"
    store = Where(create_engine(url), create_engine(url), readers=2)
    yield store
    await store.close()


async def test_a_read_runs_on_a_reader_thread_without_the_write_lock(where: Where) -> None:
    name, locked, tag = await where.read("x", twice=True)
    assert name.startswith("tidings-store-reader")
    assert not locked
    assert tag == "xx"


async def test_a_write_runs_on_the_writer_thread_under_the_write_lock(where: Where) -> None:
    name, locked = await where.write()
    assert name.startswith("tidings-store-writer")
    assert locked


async def test_a_hot_write_runs_on_the_writer_thread_unless_the_backend_allows_inline(
    where: Where,
) -> None:
    name, locked = await where.write_hot()
    assert name.startswith("tidings-store-writer")
    assert locked
    where.inline_hot_paths = True
    name, locked = await where.write_hot()
    assert name == threading.current_thread().name  # the event loop's
    assert locked


async def test_a_hot_write_waits_its_turn_on_the_writer_thread_while_a_write_runs(
    where: Where,
) -> None:
    where.inline_hot_paths = True
    with where._write_lock:  # another write under way
        pending = asyncio.ensure_future(where.write_hot())
        await asyncio.sleep(0.05)
        assert not pending.done()
    name, locked = await pending
    assert name.startswith("tidings-store-writer")
    assert locked


async def test_a_transaction_error_reaches_the_caller(where: Where) -> None:
    with pytest.raises(ValueError, match="from the transaction"):
        await where.fail()


def test_the_method_keeps_the_transaction_name_and_docstring() -> None:
    assert Where.read.__name__ == "read"
    assert Where.read.__doc__ == "A read."
    assert inspect.iscoroutinefunction(Where.read)
