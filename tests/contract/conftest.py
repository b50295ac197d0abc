"""The Store contract's backends: every test here runs once on each, its id naming it
(``test_x[memory]``, ``test_x[sqlite]``, ``test_x[postgresql]``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from support.stores import KEYRING
from tidings.store import Store, open_store

BACKENDS = ["memory", "sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[Store]]]:
    """Open (and migrate) stores of the test's backend, all on one database: as many
    as the test asks for, each with its secrets still locked; closed at the end."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = "memory://"
    opened: list[Store] = []

    async def make() -> Store:
        if opened and url == "memory://":
            return opened[0]  # one process's memory: the same store again
        found = open_store(url)
        opened.append(found)
        await found.migrate()
        return found

    yield make
    for found in opened:
        await found.close()


@pytest.fixture
async def store(make_store: Callable[[], Awaitable[Store]]) -> Store:
    """A fresh, migrated store of the test's backend, its secrets open."""
    found = await make_store()
    await found.open_secrets(KEYRING)
    return found
