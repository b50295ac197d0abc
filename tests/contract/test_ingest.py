"""Ingest: fan-out to endpoints, idempotency keys, a tenant's email lane."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import given
from given import NOW, TTL
from tidings.domain.models import (
    Accepted,
    DeliveryFilter,
    DeliveryState,
    EndpointKind,
    EndpointState,
    NewMessage,
)
from tidings.exceptions import Conflict
from tidings.store import Store


async def test_ingest_fans_out_to_matching_active_endpoints(store: Store) -> None:
    tenant_id = await given.tenant(store)
    everything = await given.endpoint(store, tenant_id)
    orders = await given.endpoint(store, tenant_id, ("order.paid",))
    await given.endpoint(store, tenant_id, ("user.created",))
    other_tenant = await given.tenant(store)
    await given.endpoint(store, other_tenant)

    [accepted] = await given.accept(store, given.message(tenant_id))

    assert sorted(e for _, e in accepted.deliveries) == sorted([everything, orders])


async def test_operational_events_go_only_where_named_and_never_to_disabled_endpoints(
    store: Store,
) -> None:
    tenant_id = await given.tenant(store)
    await given.endpoint(store, tenant_id)  # every event type, but not operational ones
    named = await given.endpoint(store, tenant_id, ("endpoint.suspended",))
    await given.endpoint(store, tenant_id, state=EndpointState.DISABLED)

    [accepted] = await given.accept(
        store, given.message(tenant_id, event_type="endpoint.suspended")
    )

    assert [e for _, e in accepted.deliveries] == [named]


async def test_a_suspended_endpoint_gets_its_delivery_held_and_a_schedule_delays_the_first(
    store: Store,
) -> None:
    tenant_id = await given.tenant(store)
    held = await given.endpoint(store, tenant_id, state=EndpointState.SUSPENDED)
    late = await given.endpoint(store, tenant_id, retry_schedule=(30.0, 60.0))

    [accepted] = await given.accept(store, given.message(tenant_id))

    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    by_endpoint = {d.endpoint_id: d for d in page.items}
    assert {e for _, e in accepted.deliveries} == {held, late}
    assert by_endpoint[held].state is DeliveryState.HELD
    assert by_endpoint[late].state is DeliveryState.PENDING
    assert by_endpoint[late].next_attempt_at == NOW + timedelta(seconds=30)
    assert by_endpoint[held].next_attempt_at == NOW


async def test_idempotency_key_replays_or_conflicts_within_one_batch_and_across(
    store: Store,
) -> None:
    tenant_id = await given.tenant(store)
    await given.endpoint(store, tenant_id)

    first, again, other = await store.ingest(
        [
            given.message(tenant_id, "k1"),
            given.message(tenant_id, "k1"),
            given.message(tenant_id, "k1", b'{"x":1}'),
        ],
        NOW,
        TTL,
    )
    later = (await store.ingest([given.message(tenant_id, "k1")], NOW + timedelta(hours=1), TTL))[0]

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


async def test_an_idempotency_key_is_the_tenants_own(store: Store) -> None:
    first_tenant = await given.tenant(store)
    second_tenant = await given.tenant(store)

    [mine] = await given.accept(store, given.message(first_tenant, "k"))
    [theirs] = await given.accept(store, given.message(second_tenant, "k", b'{"other": 1}'))

    assert not theirs.replayed
    assert theirs.message_id != mine.message_id


async def test_a_conflict_with_a_later_body_is_answered_across_batches(store: Store) -> None:
    tenant_id = await given.tenant(store)
    [first] = await given.accept(store, given.message(tenant_id, "k"))

    [other] = await store.ingest([given.message(tenant_id, "k", b"[1]")], NOW, TTL)

    assert isinstance(other, Conflict)
    assert "Idempotency-Key 'k'" in other.detail
    assert await store.get_message(tenant_id, first.message_id) is not None


async def test_an_idempotency_key_past_its_ttl_is_new_again(store: Store) -> None:
    tenant_id = await given.tenant(store)
    [first] = await given.accept(store, given.message(tenant_id, "k"))

    [second] = await store.ingest([given.message(tenant_id, "k")], NOW + timedelta(hours=25), TTL)

    assert isinstance(second, Accepted)
    assert not second.replayed
    assert second.message_id != first.message_id


async def test_purge_forgets_old_idempotency_keys(store: Store) -> None:
    tenant_id = await given.tenant(store)
    await given.accept(store, given.message(tenant_id, "old"))

    assert await store.purge_idempotency_keys(NOW + timedelta(seconds=1)) == 1
    assert await store.purge_idempotency_keys(NOW + timedelta(seconds=1)) == 0


async def test_concurrent_writers_all_commit(store: Store) -> None:
    tenant_id = await given.tenant(store)
    await given.endpoint(store, tenant_id)

    await asyncio.gather(*(given.accept(store, given.message(tenant_id)) for _ in range(50)))

    assert (await store.queue_depth())[DeliveryState.PENDING] == 50


async def test_a_tenants_first_email_makes_its_email_lane_once(store: Store) -> None:
    tenant_id = await given.tenant(store)
    await given.endpoint(store, tenant_id)  # a webhook endpoint gets no email

    first, second = await given.accept(store, given.email(tenant_id), given.email(tenant_id))
    [third] = await given.accept(store, given.email(tenant_id, "bob@example.com"))

    lanes = [e for e in await store.active_endpoints() if e.kind is EndpointKind.EMAIL]
    assert [lane.tenant_id for lane in lanes] == [tenant_id]
    assert {e for a in (first, second, third) for _, e in a.deliveries} == {lanes[0].id}
    assert first.message_id.startswith("eml_")
    detail = await store.get_email(tenant_id, third.message_id)
    assert detail is not None
    assert detail.email.to_address == "bob@example.com"
    assert detail.email.template == "confirm"
    assert detail.email.delivery_id == third.deliveries[0][0]
    assert [d.endpoint_id for d in detail.message.deliveries] == [lanes[0].id]
    assert await store.get_endpoint(tenant_id, lanes[0].id) is None  # not the API's to see
    listed = await store.list_endpoints(tenant_id, cursor=None, limit=10)
    assert lanes[0].id not in {e.id for e in listed.items}
    assert await store.get_email(await given.tenant(store), third.message_id) is None


async def test_a_message_is_its_tenants_own(store: Store) -> None:
    tenant_id = await given.tenant(store)
    await given.endpoint(store, tenant_id)
    [accepted] = await given.accept(store, given.message(tenant_id, body=b'{"n": 1}'))

    detail = await store.get_message(tenant_id, accepted.message_id)

    assert detail is not None
    assert detail.message.payload == b'{"n": 1}'
    assert detail.message.event_type == "order.paid"
    assert detail.message.created_at == NOW
    assert [d.id for d in detail.deliveries] == [d for d, _ in accepted.deliveries]
    assert detail.attempts == {}
    assert await store.get_message(await given.tenant(store), accepted.message_id) is None
    assert await store.get_message(tenant_id, "msg_missing") is None


async def test_messages_without_matching_endpoints_are_kept_with_no_delivery(
    store: Store,
) -> None:
    tenant_id = await given.tenant(store)

    [accepted] = await given.accept(store, NewMessage(tenant_id, "x", b"{}", None, "h"))

    assert accepted.deliveries == ()
    detail = await store.get_message(tenant_id, accepted.message_id)
    assert detail is not None
    assert detail.deliveries == ()
