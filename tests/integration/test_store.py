"""What only one backend of the store does: SQLite's file and its flush level, PostgreSQL's
several processes on one database. The behaviour every backend shares is the contract
suite's (``tests/contract``)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from support.factories import an_endpoint
from support.stores import KEYRING, hearing
from tidings import ids
from tidings.domain.models import (
    Accepted,
    Claimed,
    NewMessage,
    Tenant,
)
from tidings.exceptions import StoreError, StoreUnavailable
from tidings.store import Changed, Store, open_store
from tidings.store.sql.store import SqlStore

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TTL = 24 * 3600.0


async def _tenant(store: Store) -> str:
    tenant = Tenant(ids.new_id(ids.TENANT), "acme", "ops@acme.example", NOW)
    await store.create_tenant(tenant)
    return tenant.id


def _message(tenant_id: str, key: str | None = None, body: bytes = b"{}") -> NewMessage:
    return NewMessage(tenant_id, "order.paid", body, key, f"hash-of-{body!r}")


async def _accept(store: Store, *batch: NewMessage) -> list[Accepted]:
    results = await store.ingest(batch, NOW, TTL)
    assert all(isinstance(r, Accepted) for r in results)
    return results  # type: ignore[return-value]


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'store.db'}"
    found = open_store(url)
    await found.migrate()
    await found.open_secrets(KEYRING)
    yield found
    await found.close()


async def test_sqlite_commits_are_durable(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'durable.db'}")
    await store.migrate()
    tenant_id = await _tenant(store)
    await store.close()
    raw = sqlite3.connect(tmp_path / "durable.db")
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert raw.execute("SELECT id FROM tenants").fetchall() == [(tenant_id,)]
    raw.close()


async def test_sqlite_connections_sync_fully(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    await store.migrate()
    with store._engine.connect() as conn:  # type: ignore[attr-defined]
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    await store.close()


async def test_a_write_that_rolls_back_is_never_heard(store: Store) -> None:
    assert isinstance(store, SqlStore)
    heard: list[Changed] = []
    await store.listen(hearing(heard))

    def announce_then_fail() -> None:
        with store._write() as conn:
            store._announce(conn, "work", ["ep_1"])
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await store._writing(announce_then_fail)
    tenant_id = await _tenant(store)
    endpoint = an_endpoint(tenant_id=tenant_id, now=NOW)
    await store.create_endpoint(endpoint)  # the next write is heard, alone
    assert heard == [Changed("endpoints")]


async def test_a_store_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'missing-dir' / 'store.db'}")
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreError):  # StoreUnavailable is a StoreError
        await store.migrate()
    await store.close()


# PostgreSQL: several processes on one database --------------------------------------


async def test_workers_on_one_postgresql_never_claim_the_same_delivery(postgres_url: str) -> None:
    """Three stores (three processes' worth) claim at once: SKIP LOCKED hands each
    delivery to exactly one of them, and none waits for another's claim."""
    stores = [open_store(postgres_url) for _ in range(3)]
    tenant_id = await _tenant(stores[0])
    wide = an_endpoint(tenant_id=tenant_id, max_in_flight=1000, now=NOW)
    await stores[0].open_secrets(KEYRING)
    await stores[0].create_endpoint(wide)
    endpoint = wide.id
    await _accept(stores[0], *[_message(tenant_id, body=b'{"n": %d}' % n) for n in range(300)])

    async def claim_all(store: Store) -> list[str]:
        taken: list[str] = []
        while claimed := await store.claim({endpoint: 7}, NOW, NOW + timedelta(minutes=1)):
            taken += [c.delivery_id for c in claimed]
        return taken

    taken = await asyncio.gather(*(claim_all(s) for s in stores))
    every = [d for per_store in taken for d in per_store]
    assert len(every) == 300
    assert len(set(every)) == 300  # no delivery claimed twice
    assert all(per_store for per_store in taken)  # each worker got some
    for store in stores:
        await store.close()


async def test_migrations_run_from_several_processes_at_once(postgres_template: str) -> None:
    """``tidings migrate`` on several processes at once: the advisory lock lets one
    migrate, the others then find the schema current."""
    from support.stores import postgres_server

    with postgres_server() as server:
        name = server.create(template=None)
        try:
            stores = [open_store(server.url_of(name)) for _ in range(4)]
            await asyncio.gather(*(s.migrate() for s in stores))
            tenant_id = await _tenant(stores[1])
            assert await stores[2].get_tenant(tenant_id) is not None
            for store in stores:
                await store.close()
        finally:
            server.drop(name)


async def test_an_endpoints_caps_hold_across_workers_on_postgresql(postgres_url: str) -> None:
    """The store, not each worker, bounds what is in flight and what the rate allows."""
    stores = [open_store(postgres_url) for _ in range(3)]
    tenant_id = await _tenant(stores[0])
    capped = an_endpoint(tenant_id=tenant_id, max_in_flight=5, now=NOW)
    limited = an_endpoint(tenant_id=tenant_id, max_in_flight=100, rate_limit_per_s=2.0, now=NOW)
    await stores[0].open_secrets(KEYRING)
    for endpoint in (capped, limited):
        await stores[0].create_endpoint(endpoint)
    await _accept(stores[0], *[_message(tenant_id, body=b'{"n": %d}' % n) for n in range(40)])
    lease = NOW + timedelta(minutes=1)

    async def claim(at: datetime) -> list[Claimed]:
        found = await asyncio.gather(
            *(s.claim({capped.id: 10, limited.id: 10}, at, lease) for s in stores)
        )
        return [c for per_store in found for c in per_store]

    first = await claim(NOW)
    assert sum(c.endpoint_id == capped.id for c in first) == 5  # its max_in_flight, in all
    assert sum(c.endpoint_id == limited.id for c in first) == 2  # its burst: 2 tokens

    later = await claim(NOW + timedelta(seconds=1))
    assert sum(c.endpoint_id == capped.id for c in later) == 0  # its 5 are still in flight
    assert sum(c.endpoint_id == limited.id for c in later) == 2  # a second's worth
    for store in stores:
        await store.close()


async def test_a_claim_held_back_at_the_cap_says_so_while_work_waits(postgres_url: str) -> None:
    """Another worker's attempts end unannounced: a claim the cap held back says which
    endpoints still have work waiting, so that its worker looks again soon."""
    first, second = open_store(postgres_url), open_store(postgres_url)
    tenant_id = await _tenant(first)
    busy = an_endpoint(tenant_id=tenant_id, max_in_flight=3, now=NOW)
    await first.open_secrets(KEYRING)
    await first.create_endpoint(busy)
    await _accept(first, *[_message(tenant_id, body=b'{"n": %d}' % n) for n in range(5)])
    lease = NOW + timedelta(minutes=1)

    taken = await first.claim({busy.id: 3}, NOW, lease)
    assert (len(taken), taken.capped) == (3, frozenset())  # all it asked for
    held = await second.claim({busy.id: 3}, NOW, lease)
    assert (len(held), held.capped) == (0, {busy.id})  # 3 in flight elsewhere, 2 wait

    await first.release(taken[:1], NOW)  # a slot frees up
    some = await second.claim({busy.id: 3}, NOW, lease)
    assert (len(some), some.capped) == (1, {busy.id})  # its one slot; 2 still wait

    other_tenant = await _tenant(first)
    quiet = an_endpoint(tenant_id=other_tenant, max_in_flight=3, now=NOW)
    await first.create_endpoint(quiet)
    await _accept(first, *[_message(other_tenant, body=b'{"n": %d}' % n) for n in range(3)])
    every = await first.claim({quiet.id: 6}, NOW, lease)
    assert (len(every), every.capped) == (3, frozenset())  # held back, but nothing waits
    none = await second.claim({quiet.id: 6}, NOW, lease)
    assert (len(none), none.capped) == (0, frozenset())  # at the cap, and nothing waits
    for store in (first, second):
        await store.close()
