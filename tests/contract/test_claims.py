"""Claims, leases and their release: what the dispatcher leases, and when it comes back."""

from __future__ import annotations

from datetime import timedelta

import given
from given import LEASE, NOW
from tidings.domain.models import DeliveryFilter, DeliveryState, NewMessage
from tidings.store import Store


async def test_claim_is_fair_across_endpoints(store: Store) -> None:
    tenant_id = await given.tenant(store)
    busy = await given.endpoint(store, tenant_id, ("bulk",))
    quiet = await given.endpoint(store, tenant_id, ("single",))
    bulk = [NewMessage(tenant_id, "bulk", b"{}", None, "h") for _ in range(500)]
    await given.accept(store, *bulk)
    await given.accept(store, NewMessage(tenant_id, "single", b"{}", None, "h"))

    claimed = await store.claim({busy: 10, quiet: 10}, NOW, NOW + timedelta(minutes=1))

    per_endpoint = {e: sum(1 for c in claimed if c.endpoint_id == e) for e in (busy, quiet)}
    assert per_endpoint == {busy: 10, quiet: 1}
    again = await store.claim({busy: 10, quiet: 10}, NOW, NOW + timedelta(minutes=1))
    assert not {c.delivery_id for c in again} & {c.delivery_id for c in claimed}


async def test_a_claim_takes_the_oldest_due_first_and_nothing_not_yet_due(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    [late] = await given.accept(store, given.message(tenant_id), at=NOW + timedelta(seconds=2))
    [early] = await given.accept(store, given.message(tenant_id), at=NOW)
    [future] = await given.accept(store, given.message(tenant_id), at=NOW + timedelta(hours=1))
    at = NOW + timedelta(seconds=10)

    claimed = await store.claim({endpoint: 10}, at, at + timedelta(minutes=1))

    assert [c.message_id for c in claimed] == [early.message_id, late.message_id]
    assert await store.next_wakeup(at) == at + timedelta(minutes=1)  # the leases run out
    assert await store.oldest_due(at) is None  # nothing due waits
    first = claimed[0]
    assert (first.attempts, first.retry_base, first.attempt_in_round) == (0, 0, 1)
    assert first.event_type == "order.paid"
    assert first.payload == b"{}"
    assert first.created_at == NOW
    assert first.message_created_at == NOW
    assert first.lease_until == at + timedelta(minutes=1)
    assert await store.claim({endpoint: 10}, at, at) == []
    assert future.deliveries


async def test_a_claim_takes_only_what_its_slots_ask(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, *[given.message(tenant_id) for _ in range(3)])

    assert await store.claim({endpoint: 0}, NOW, LEASE) == []
    assert await store.claim({"ep_unknown": 5}, NOW, LEASE) == []
    one = await store.claim({endpoint: 1}, NOW, LEASE)
    assert len(one) == 1
    assert one.capped == frozenset()

    depth = await store.queue_depth()
    assert (depth[DeliveryState.PENDING], depth[DeliveryState.IN_FLIGHT]) == (2, 1)
    assert await store.oldest_due(NOW) == NOW


async def test_an_expired_lease_returns_the_delivery_to_pending(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, given.message(tenant_id))
    [claimed] = await store.claim({endpoint: 5}, NOW, NOW + timedelta(seconds=30))

    assert await store.reclaim_expired_leases(NOW + timedelta(seconds=29)) == 0
    assert await store.claim({endpoint: 5}, NOW, NOW + timedelta(seconds=30)) == []
    assert await store.next_wakeup(NOW) == NOW + timedelta(seconds=30)
    assert await store.reclaim_expired_leases(NOW + timedelta(seconds=30)) == 1

    [again] = await store.claim({endpoint: 5}, NOW, NOW + timedelta(seconds=30))
    assert again.delivery_id == claimed.delivery_id


async def test_release_returns_unstarted_claims_and_ends_those_of_gone_endpoints(
    store: Store,
) -> None:
    tenant_id = await given.tenant(store)
    kept = await given.endpoint(store, tenant_id, ("a",))
    deleted = await given.endpoint(store, tenant_id, ("b",))
    await given.accept(store, NewMessage(tenant_id, "a", b"{}", None, "h"))
    await given.accept(store, NewMessage(tenant_id, "b", b"{}", None, "h"))
    claimed = await store.claim({kept: 5, deleted: 5}, NOW, NOW + timedelta(minutes=1))
    await store.delete_endpoint(tenant_id, deleted, NOW)

    assert await store.release(claimed, NOW) == 2

    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    states = {d.endpoint_id: (d.state, d.dead_reason) for d in page.items}
    assert states[kept] == (DeliveryState.PENDING, None)
    assert states[deleted] == (DeliveryState.DEAD, "deleted: the endpoint was deleted")


async def test_a_release_under_a_lost_lease_changes_nothing(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, given.message(tenant_id))
    [stale] = await store.claim({endpoint: 1}, NOW, NOW + timedelta(seconds=1))
    later = NOW + timedelta(seconds=2)
    assert await store.reclaim_expired_leases(later) == 1
    [fresh] = await store.claim({endpoint: 1}, later, later + timedelta(minutes=1))

    assert await store.release([stale], later) == 0
    assert await store.release([], later) == 0

    assert (await store.queue_depth())[DeliveryState.IN_FLIGHT] == 1
    assert await store.release([fresh], later) == 1
    assert (await store.queue_depth())[DeliveryState.PENDING] == 1


async def test_a_lapsed_lease_of_a_suspended_endpoint_comes_back_held(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, given.message(tenant_id))
    await store.claim({endpoint: 1}, NOW, NOW + timedelta(seconds=1))
    await store.suspend_endpoint(tenant_id, endpoint, "down", "test", NOW)

    assert await store.reclaim_expired_leases(NOW + timedelta(seconds=1)) == 1

    assert list((await given.states(store, tenant_id)).values()) == [DeliveryState.HELD]
    assert await store.held_counts() == {endpoint: 1}
