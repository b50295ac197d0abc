"""The stores tests run on: the store key, PostgreSQL's test databases, migrating."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tidings.crypto import Keyring
from tidings.store import Changed, open_store

# The test suite's store key (base64url of b"tidings test encryption key 0001").
ENCRYPTION_KEY = "dGlkaW5ncyB0ZXN0IGVuY3J5cHRpb24ga2V5IDAwMDE"
KEYRING = Keyring.parse(ENCRYPTION_KEY)
POSTGRES_URL = os.environ.get(
    "TIDINGS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


# ``pytestmark = BOTH_BACKENDS``: every test of the module runs on SQLite and PostgreSQL.
BOTH_BACKENDS = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@dataclass
class PostgresServer:
    """The test PostgreSQL server: makes and drops the tests' databases."""

    admin: psycopg.Connection[Any]

    def url_of(self, name: str) -> str:
        return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"

    def create(self, template: str | None) -> str:
        name = f"tidings_test_{uuid.uuid4().hex[:16]}"
        copy = f" TEMPLATE {template}" if template else ""
        self.admin.execute(f"CREATE DATABASE {name}{copy}")
        return name

    def drop(self, name: str) -> None:
        self.admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """The server of ``TIDINGS_TEST_POSTGRES_URL``; its tests are skipped, loudly, when it
    cannot be reached, and fail instead under ``CI=true``."""
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        why = f"PostgreSQL NOT reachable at {POSTGRES_URL}: its tests did NOT run ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    with admin:
        yield PostgresServer(admin)


def migrate(url: str) -> None:
    """Migrate the database at ``url`` (from a thread of its own: a fixture may be set
    up while a test's event loop runs)."""

    async def run() -> None:
        store = open_store(url)
        await store.migrate()
        await store.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def hearing(heard: list[Changed]) -> Callable[[Changed], None]:
    """A store listener that keeps what this process's own writes told (on the thread
    that wrote), not what PostgreSQL's listener relays (another process's, or its echo)."""

    def hear(changed: Changed) -> None:
        if threading.current_thread().name != "tidings-store-listener":
            heard.append(changed)

    return hear
