"""Endpoint health in the store: suspension, resumption and its drain, notices, expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest

import given
from given import LEASE, NOW
from tidings import ids
from tidings.domain.circuit import Breaker, CircuitState
from tidings.domain.models import (
    DeliveryFilter,
    DeliveryState,
    EndpointKind,
    EndpointState,
)
from tidings.domain.notices import Notice, NoticeKind
from tidings.exceptions import Conflict
from tidings.store import Store


async def test_a_suspension_holds_waiting_deliveries_and_is_kept_in_the_history(
    store: Store,
) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, *[given.message(tenant_id) for _ in range(3)])
    [in_flight] = await store.claim({endpoint: 1}, NOW, LEASE)

    suspended = await store.suspend_endpoint(tenant_id, endpoint, "too many 503s", "health", NOW)

    assert suspended is not None
    suspension, held = suspended
    assert held == 2
    assert (suspension.endpoint_id, suspension.tenant_id, suspension.reason) == (
        endpoint,
        tenant_id,
        "too many 503s",
    )
    assert (suspension.suspended_by, suspension.suspended_at, suspension.resumed_at) == (
        "health",
        NOW,
        None,
    )
    found = await store.get_endpoint(tenant_id, endpoint)
    assert found is not None
    assert found.state is EndpointState.SUSPENDED
    assert [e.id for e in await store.suspended_endpoints()] == [endpoint]
    assert endpoint not in {e.id for e in await store.active_endpoints()}
    assert await store.held_counts() == {endpoint: 2}
    health = (await store.endpoint_health([endpoint]))[endpoint]
    assert (health.held, health.suspensions, health.breaker) == (2, (suspension,), None)
    assert await store.claim({endpoint: 5}, NOW, LEASE) == []
    [accepted] = await given.accept(store, given.message(tenant_id))  # new ones are held too
    assert (await given.states(store, tenant_id))[accepted.deliveries[0][0]] is DeliveryState.HELD
    assert in_flight.delivery_id in await given.states(store, tenant_id)


async def test_only_an_active_endpoint_is_suspended_and_only_a_suspended_one_resumed(
    store: Store,
) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    disabled = await given.endpoint(store, tenant_id, state=EndpointState.DISABLED)

    with pytest.raises(Conflict, match="not suspended"):
        await store.resume_endpoint(tenant_id, endpoint, "ops", NOW)
    with pytest.raises(Conflict, match="the endpoint is disabled, not active"):
        await store.suspend_endpoint(tenant_id, disabled, "x", "ops", NOW)
    await store.suspend_endpoint(tenant_id, endpoint, "x", "ops", NOW)
    with pytest.raises(Conflict, match="the endpoint is suspended, not active"):
        await store.suspend_endpoint(tenant_id, endpoint, "x", "ops", NOW)

    other = await given.tenant(store)
    assert await store.suspend_endpoint(other, endpoint, "x", "ops", NOW) is None
    assert await store.resume_endpoint(other, endpoint, "ops", NOW) is None
    assert await store.suspend_endpoint(tenant_id, "ep_missing", "x", "ops", NOW) is None
    [history] = (await store.endpoint_health([endpoint]))[endpoint].suspensions
    assert history.suspended_by == "ops"  # the refused ones left nothing


async def test_a_resumption_drains_held_deliveries_in_order_at_the_drain_rate(
    store: Store,
) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id, rate_limit_per_s=4.0)
    first = await given.accept(store, given.message(tenant_id), given.message(tenant_id))
    [claimed] = await store.claim({endpoint: 1}, NOW, LEASE)
    await store.record_results(
        [given.result(claimed, DeliveryState.PENDING, 503, NOW + timedelta(seconds=9))], NOW
    )
    await store.suspend_endpoint(tenant_id, endpoint, "down", "health", NOW)
    [later] = await given.accept(store, given.message(tenant_id), at=NOW + timedelta(seconds=1))
    resumed_at = NOW + timedelta(minutes=5)

    resumed = await store.resume_endpoint(tenant_id, endpoint, "ops", resumed_at)

    assert resumed is not None
    ended, drained = resumed
    assert drained == 3
    assert (ended.resumed_at, ended.resumed_by, ended.suspended_by) == (resumed_at, "ops", "health")
    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    due = {d.message_id: d.next_attempt_at for d in page.items}
    step = timedelta(seconds=0.25)  # the rate limit, below the policy's drain rate
    # in the order they were created (those of one instant in any order between them)
    assert {due[a.message_id] for a in first} == {resumed_at, resumed_at + step}
    assert due[later.message_id] == resumed_at + 2 * step
    assert {d.state for d in page.items} == {DeliveryState.PENDING}
    breaker, changed_at = (await store.breakers())[endpoint]
    assert (breaker.state, changed_at) == (CircuitState.CLOSED, resumed_at)
    assert await store.endpoint_minutes(NOW) == {}  # the outage's results are forgotten
    health = (await store.endpoint_health([endpoint]))[endpoint]
    assert health.held == 0
    assert health.suspensions == (ended,)
    found = await store.get_endpoint(tenant_id, endpoint)
    assert found is not None
    assert found.state is EndpointState.ACTIVE
    assert await store.suspended_endpoints() == []
    claims = await store.claim({endpoint: 5}, resumed_at + step, LEASE + timedelta(hours=1))
    retried = [c for c in claims if c.attempts == 1]
    assert [c.attempt_in_round for c in retried] == [1]  # its retries start over


async def test_suspensions_are_shown_newest_first(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    for n in range(3):
        at = NOW + timedelta(hours=n)
        await store.suspend_endpoint(tenant_id, endpoint, f"reason {n}", "ops", at)
        await store.resume_endpoint(tenant_id, endpoint, "ops", at + timedelta(minutes=1))

    health = await store.endpoint_health([endpoint, "ep_unknown"])

    assert [s.reason for s in health[endpoint].suspensions] == ["reason 2", "reason 1", "reason 0"]
    assert all(s.resumed_by == "ops" for s in health[endpoint].suspensions)
    assert (health["ep_unknown"].breaker, health["ep_unknown"].held) == (None, 0)
    assert health["ep_unknown"].suspensions == ()
    assert await store.endpoint_health([]) == {}


async def test_deliveries_held_too_long_expire(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, given.message(tenant_id))
    await store.suspend_endpoint(tenant_id, endpoint, "down", "ops", NOW)
    [late] = await given.accept(store, given.message(tenant_id), at=NOW + timedelta(days=1))
    then = NOW + timedelta(days=3)

    assert await store.expire_held(NOW, "expired: held too long", then) == 0
    assert await store.expire_held(NOW + timedelta(hours=1), "expired: held too long", then) == 1

    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    shown = {d.id: (d.state, d.dead_reason) for d in page.items}
    assert shown.pop(late.deliveries[0][0]) == (DeliveryState.HELD, None)
    assert list(shown.values()) == [(DeliveryState.DEAD, "expired: held too long")]
    assert await store.held_counts() == {endpoint: 1}


def _notice(tenant_id: str, endpoint_id: str, kind: NoticeKind, minutes: int) -> Notice:
    return Notice(
        id=ids.new_id(ids.NOTICE),
        tenant_id=tenant_id,
        endpoint_id=endpoint_id,
        url="http://127.0.0.1:9/hook",
        kind=kind,
        sent_at=NOW + timedelta(minutes=minutes),
        email_id=None,
        detail="{}",
    )


async def test_a_notice_is_published_once_per_kind_within_its_dedupe_window(
    store: Store,
) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    listener = await given.endpoint(store, tenant_id, ("endpoint.warning",))
    url = "http://127.0.0.1:9/hook"
    event = given.message(tenant_id, event_type="endpoint.warning")

    first = _notice(tenant_id, endpoint, NoticeKind.WARNING, 0)
    assert await store.publish_notice(first, [given.email(tenant_id), event], None)
    assert await store.last_notice_at(endpoint, url, "warning") == first.sent_at
    assert await store.last_notice_at(endpoint, url, "critical") is None
    assert await store.last_notice_at(endpoint, "http://elsewhere/", "warning") is None

    again = _notice(tenant_id, endpoint, NoticeKind.WARNING, 10)
    assert not await store.publish_notice(again, [event], NOW + timedelta(minutes=-1))
    assert await store.last_notice_at(endpoint, url, "warning") == first.sent_at
    later = _notice(tenant_id, endpoint, NoticeKind.WARNING, 20)
    assert await store.publish_notice(later, [event], first.sent_at)
    assert await store.last_notice_at(endpoint, url, "warning") == later.sent_at

    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    lanes = [e for e in await store.active_endpoints() if e.kind is EndpointKind.EMAIL]
    assert sorted(d.endpoint_id for d in page.items) == sorted([lanes[0].id, listener, listener])
    assert {d.created_at for d in page.items} == {first.sent_at, later.sent_at}


async def test_results_of_a_breaker_and_resumption_rewrite_the_breaker_row(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, given.message(tenant_id))
    [job] = await store.claim({endpoint: 1}, NOW, LEASE)
    half = Breaker(state=CircuitState.HALF_OPEN, opened_at=NOW, cool_down=timedelta(seconds=1.5))
    await store.record_results(
        [given.result(job, DeliveryState.PENDING, 503, NOW, breaker=half)], NOW
    )

    breaker, _ = (await store.breakers())[endpoint]
    assert (breaker.state, breaker.cool_down) == (CircuitState.HALF_OPEN, timedelta(seconds=1.5))
    assert await store.oldest_due(NOW) is None
    await store.suspend_endpoint(tenant_id, endpoint, "x", "ops", NOW)
    await store.resume_endpoint(tenant_id, endpoint, "ops", NOW)
    assert (await store.breakers())[endpoint][0].state is CircuitState.CLOSED
    assert await store.oldest_due(NOW) == NOW
