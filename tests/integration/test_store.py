"""The Store contract, run against every backend."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from support import KEYRING, an_endpoint
from tidings import ids
from tidings.domain.models import (
    Accepted,
    Attempt,
    AttemptResult,
    Claimed,
    DeliveryFilter,
    DeliveryState,
    EmailOutcome,
    EmailRequest,
    NewMessage,
    ReplaySelector,
    Tenant,
)
from tidings.exceptions import Conflict, StoreError, StoreUnavailable
from tidings.store import Changed, Store, open_store
from tidings.store.sql.store import SqlStore

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TTL = 24 * 3600.0


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


async def _tenant(store: Store) -> str:
    tenant = Tenant(ids.new_id(ids.TENANT), "acme", "ops@acme.example", NOW)
    await store.create_tenant(tenant)
    return tenant.id


async def _endpoint(store: Store, tenant_id: str, event_types: tuple[str, ...] = ()) -> str:
    endpoint = an_endpoint(tenant_id=tenant_id, event_types=event_types, now=NOW)
    await store.create_endpoint(endpoint)
    return endpoint.id


def _message(tenant_id: str, key: str | None = None, body: bytes = b"{}") -> NewMessage:
    return NewMessage(tenant_id, "order.paid", body, key, f"hash-of-{body!r}")


async def _accept(store: Store, *batch: NewMessage) -> list[Accepted]:
    results = await store.ingest(batch, NOW, TTL)
    assert all(isinstance(r, Accepted) for r in results)
    return results  # type: ignore[return-value]


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


async def test_ingest_fans_out_to_matching_active_endpoints(store: Store) -> None:
    tenant_id = await _tenant(store)
    everything = await _endpoint(store, tenant_id)
    orders = await _endpoint(store, tenant_id, ("order.paid",))
    await _endpoint(store, tenant_id, ("user.created",))
    other_tenant = await _tenant(store)
    await _endpoint(store, other_tenant)

    [accepted] = await _accept(store, _message(tenant_id))

    assert sorted(e for _, e in accepted.deliveries) == sorted([everything, orders])


async def test_idempotency_key_replays_or_conflicts_within_one_batch_and_across(
    store: Store,
) -> None:
    tenant_id = await _tenant(store)
    await _endpoint(store, tenant_id)

    first, again, other = await store.ingest(
        [
            _message(tenant_id, "k1"),
            _message(tenant_id, "k1"),
            _message(tenant_id, "k1", b'{"x":1}'),
        ],
        NOW,
        TTL,
    )
    later = (await store.ingest([_message(tenant_id, "k1")], NOW + timedelta(hours=1), TTL))[0]

    assert isinstance(first, Accepted)
    assert not first.replayed
    assert isinstance(again, Accepted)
    assert again.replayed
    assert again.message_id == first.message_id
    assert again.deliveries == first.deliveries
    assert isinstance(other, Conflict)
    assert isinstance(later, Accepted)
    assert later.message_id == first.message_id
    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=100)
    assert len(page.items) == 1


async def test_an_idempotency_key_past_its_ttl_is_new_again(store: Store) -> None:
    tenant_id = await _tenant(store)
    [first] = await _accept(store, _message(tenant_id, "k"))

    [second] = await store.ingest([_message(tenant_id, "k")], NOW + timedelta(hours=25), TTL)

    assert isinstance(second, Accepted)
    assert not second.replayed
    assert second.message_id != first.message_id


async def test_claim_is_fair_across_endpoints(store: Store) -> None:
    tenant_id = await _tenant(store)
    busy = await _endpoint(store, tenant_id, ("bulk",))
    quiet = await _endpoint(store, tenant_id, ("single",))
    bulk = [NewMessage(tenant_id, "bulk", b"{}", None, "h") for _ in range(500)]
    await _accept(store, *bulk)
    await _accept(store, NewMessage(tenant_id, "single", b"{}", None, "h"))

    claimed = await store.claim({busy: 10, quiet: 10}, NOW, NOW + timedelta(minutes=1))

    per_endpoint = {e: sum(1 for c in claimed if c.endpoint_id == e) for e in (busy, quiet)}
    assert per_endpoint == {busy: 10, quiet: 1}
    again = await store.claim({busy: 10, quiet: 10}, NOW, NOW + timedelta(minutes=1))
    assert not {c.delivery_id for c in again} & {c.delivery_id for c in claimed}


async def test_an_expired_lease_returns_the_delivery_to_pending(store: Store) -> None:
    tenant_id = await _tenant(store)
    endpoint = await _endpoint(store, tenant_id)
    await _accept(store, _message(tenant_id))
    [claimed] = await store.claim({endpoint: 5}, NOW, NOW + timedelta(seconds=30))

    assert await store.reclaim_expired_leases(NOW + timedelta(seconds=29)) == 0
    assert await store.claim({endpoint: 5}, NOW, NOW + timedelta(seconds=30)) == []
    assert await store.next_wakeup(NOW) == NOW + timedelta(seconds=30)
    assert await store.reclaim_expired_leases(NOW + timedelta(seconds=30)) == 1

    [again] = await store.claim({endpoint: 5}, NOW, NOW + timedelta(seconds=30))
    assert again.delivery_id == claimed.delivery_id


def _result(
    claimed: Claimed,
    state: DeliveryState,
    status: int = 204,
    next_at: datetime | None = None,
    reason: str | None = None,
) -> AttemptResult:
    attempt = Attempt(ids.new_id(ids.ATTEMPT), claimed.delivery_id, 1, NOW, 3.5, status, None, "")
    return AttemptResult(
        claimed.delivery_id,
        claimed.endpoint_id,
        attempt,
        state,
        next_at,
        reason,
        claimed.lease_until,
    )


async def test_results_are_written_back_and_counted(store: Store) -> None:
    tenant_id = await _tenant(store)
    endpoint = await _endpoint(store, tenant_id)
    accepted = await _accept(store, _message(tenant_id), _message(tenant_id))
    first, second = await store.claim({endpoint: 5}, NOW, NOW + timedelta(minutes=1))
    retry_at = NOW + timedelta(seconds=5)

    await store.record_results(
        [
            _result(first, DeliveryState.SUCCEEDED),
            _result(second, DeliveryState.PENDING, 503, next_at=retry_at),
        ],
        NOW,
    )

    depth = await store.queue_depth()
    assert depth[DeliveryState.SUCCEEDED] == 1
    assert depth[DeliveryState.PENDING] == 1
    assert await store.next_wakeup(NOW) == retry_at
    detail = await store.get_message(tenant_id, accepted[1].message_id)
    assert detail is not None
    attempts = [a for batch in detail.attempts.values() for a in batch]
    assert len(attempts) == 1
    assert attempts[0].duration_ms == 3.5


async def test_a_result_under_a_lost_lease_changes_nothing(store: Store) -> None:
    tenant_id = await _tenant(store)
    endpoint = await _endpoint(store, tenant_id)
    await _accept(store, _message(tenant_id))
    [stale] = await store.claim({endpoint: 5}, NOW, NOW + timedelta(seconds=1))
    later = NOW + timedelta(seconds=2)
    await store.reclaim_expired_leases(later)
    [fresh] = await store.claim({endpoint: 5}, later, later + timedelta(minutes=1))

    await store.record_results([_result(stale, DeliveryState.DEAD, 500, reason="x: y")], later)

    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    [delivery] = page.items
    assert delivery.state is DeliveryState.IN_FLIGHT  # the fresh claim still decides
    await store.record_results([_result(fresh, DeliveryState.SUCCEEDED)], later)
    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    assert page.items[0].state is DeliveryState.SUCCEEDED
    assert page.items[0].attempts == 1


async def test_replay_returns_dead_deliveries_to_pending(store: Store) -> None:
    tenant_id = await _tenant(store)
    endpoint = await _endpoint(store, tenant_id)
    await _accept(store, _message(tenant_id))
    [claimed] = await store.claim({endpoint: 5}, NOW, NOW + timedelta(minutes=1))
    await store.record_results(
        [_result(claimed, DeliveryState.DEAD, 500, reason="exhausted: x")], NOW
    )

    other_tenant = await _tenant(store)
    assert await store.replay(other_tenant, ReplaySelector(ids=(claimed.delivery_id,)), NOW) == 0
    assert await store.replay(tenant_id, ReplaySelector(endpoint_id=endpoint), NOW) == 1

    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    [delivery] = page.items
    assert delivery.state is DeliveryState.PENDING
    assert delivery.attempts == 1  # the history stays
    assert delivery.dead_reason is None
    [again] = await store.claim({endpoint: 5}, NOW, NOW + timedelta(minutes=1))
    assert again.attempt_in_round == 1  # the retry schedule starts over


def _hearing(heard: list[Changed]) -> Callable[[Changed], None]:
    """A listener that keeps what this process's own writes told (on the thread that
    wrote), not what PostgreSQL's listener relays (another process's, or its echo)."""

    def hear(changed: Changed) -> None:
        if threading.current_thread().name != "tidings-store-listener":
            heard.append(changed)

    return hear


async def test_a_committed_write_is_heard_in_process_before_it_returns(store: Store) -> None:
    heard: list[Changed] = []
    await store.listen(_hearing(heard))
    tenant_id = await _tenant(store)
    assert heard == []  # a new tenant changes nothing a listener keeps
    endpoint = await _endpoint(store, tenant_id)
    assert heard == [Changed("endpoints")]
    heard.clear()

    await _accept(store, _message(tenant_id, key="k1"), _message(tenant_id, key="k2"))
    assert heard == [Changed("work", (endpoint,))]  # the endpoints named, once each
    heard.clear()
    await _accept(store, _message(tenant_id, key="k1"))  # replayed: nothing new
    assert heard == []


async def test_a_write_that_rolls_back_is_never_heard(store: Store) -> None:
    assert isinstance(store, SqlStore)
    heard: list[Changed] = []
    await store.listen(_hearing(heard))

    def announce_then_fail() -> None:
        with store._write() as conn:
            store._announce(conn, "work", ["ep_1"])
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await store._writing(announce_then_fail)
    tenant_id = await _tenant(store)
    await _endpoint(store, tenant_id)  # the next write is heard, alone
    assert heard == [Changed("endpoints")]


async def test_concurrent_writers_all_commit(store: Store) -> None:
    tenant_id = await _tenant(store)
    await _endpoint(store, tenant_id)

    await asyncio.gather(*(_accept(store, _message(tenant_id)) for _ in range(50)))

    assert (await store.queue_depth())[DeliveryState.PENDING] == 50


async def test_purge_forgets_old_idempotency_keys(store: Store) -> None:
    tenant_id = await _tenant(store)
    await _accept(store, _message(tenant_id, "old"))

    assert await store.purge_idempotency_keys(NOW + timedelta(seconds=1)) == 1
    assert await store.purge_idempotency_keys(NOW + timedelta(seconds=1)) == 0


async def test_a_store_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'missing-dir' / 'store.db'}")
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreError):  # StoreUnavailable is a StoreError
        await store.migrate()
    await store.close()


async def test_release_returns_unstarted_claims_and_ends_those_of_gone_endpoints(
    store: Store,
) -> None:
    tenant_id = await _tenant(store)
    kept = await _endpoint(store, tenant_id, ("a",))
    deleted = await _endpoint(store, tenant_id, ("b",))
    await _accept(store, NewMessage(tenant_id, "a", b"{}", None, "h"))
    await _accept(store, NewMessage(tenant_id, "b", b"{}", None, "h"))
    claimed = await store.claim({kept: 5, deleted: 5}, NOW, NOW + timedelta(minutes=1))
    await store.delete_endpoint(tenant_id, deleted, NOW)

    assert await store.release(claimed, NOW) == 2

    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    states = {d.endpoint_id: (d.state, d.dead_reason) for d in page.items}
    assert states[kept] == (DeliveryState.PENDING, None)
    assert states[deleted] == (DeliveryState.DEAD, "deleted: the endpoint was deleted")


async def test_a_late_email_result_settles_nothing_and_publishes_no_callback(
    store: Store,
) -> None:
    """The first claim's lease ran out and the email was claimed again: the first
    attempt's result is kept as an attempt, but neither the email nor its callback
    follow it; the second's do."""
    tenant_id = await _tenant(store)
    await _endpoint(store, tenant_id, event_types=("email.failed", "email.delivered"))
    request = EmailRequest("ada@example.com", "confirm")
    [accepted] = await _accept(store, NewMessage(tenant_id, "email", b"{}", None, "h", request))
    [(delivery_id, lane_id)] = accepted.deliveries

    first_lease = NOW + timedelta(seconds=60)
    [first] = await store.claim({lane_id: 1}, NOW, first_lease)
    later = first_lease + timedelta(seconds=1)
    assert await store.reclaim_expired_leases(later) == 1
    second_lease = later + timedelta(seconds=60)
    [second] = await store.claim({lane_id: 1}, later, second_lease)

    def result(job: Claimed, state: DeliveryState, event: str) -> AttemptResult:
        callback = NewMessage(tenant_id, event, b'{"by": "%s"}' % event.encode(), None, "")
        outcome = EmailOutcome(job.message_id, None, "no lookup", event, None, callback)
        attempt = Attempt(ids.new_id(ids.ATTEMPT), delivery_id, 1, later, 1.0, 250, None, "")
        reason = "rejected: SMTP 550" if state is DeliveryState.DEAD else None
        return AttemptResult(
            delivery_id, lane_id, attempt, state, None, reason, job.lease_until, email=outcome
        )

    await store.record_results([result(first, DeliveryState.DEAD, "email.failed")], later)
    detail = await store.get_email(tenant_id, accepted.message_id)
    assert detail is not None
    assert detail.email.subject is None  # untouched by the late result
    assert detail.message.deliveries[0].state is DeliveryState.IN_FLIGHT
    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    assert [d.message_id for d in page.items] == [accepted.message_id]  # no callback

    await store.record_results([result(second, DeliveryState.SUCCEEDED, "email.delivered")], later)
    detail = await store.get_email(tenant_id, accepted.message_id)
    assert detail is not None
    assert detail.email.subject == "email.delivered"
    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    assert len(page.items) == 2  # the email's and its callback's


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
    from support import postgres_server

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
