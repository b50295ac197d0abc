"""Results written back: attempts, new states, breakers, per-minute counts, 410s; replay."""

from __future__ import annotations

from datetime import datetime, timedelta

import given
from given import LEASE, NOW
from tidings import ids
from tidings.domain.circuit import Breaker, CircuitState
from tidings.domain.models import (
    Attempt,
    AttemptResult,
    Claimed,
    DeliveryFilter,
    DeliveryState,
    EmailOutcome,
    EmailRequest,
    EndpointState,
    NewMessage,
    ReplaySelector,
)
from tidings.store import Store


async def test_results_are_written_back_and_counted(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    accepted = await given.accept(store, given.message(tenant_id), given.message(tenant_id))
    first, second = await store.claim({endpoint: 5}, NOW, NOW + timedelta(minutes=1))
    retry_at = NOW + timedelta(seconds=5)

    await store.record_results(
        [
            given.result(first, DeliveryState.SUCCEEDED),
            given.result(second, DeliveryState.PENDING, 503, next_at=retry_at),
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


async def test_a_result_sets_what_the_delivery_shows(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, given.message(tenant_id), given.message(tenant_id))
    ok, failed = await store.claim({endpoint: 5}, NOW, LEASE)
    later = NOW + timedelta(seconds=3)

    assert (
        await store.record_results(
            [
                given.result(ok, DeliveryState.SUCCEEDED, at=later),
                given.result(failed, DeliveryState.DEAD, None, reason="x: y", error="timeout"),
            ],
            later,
        )
        == 0
    )

    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    shown = {d.id: d for d in page.items}
    good, bad = shown[ok.delivery_id], shown[failed.delivery_id]
    assert (good.state, good.attempts, good.last_status, good.succeeded_at) == (
        DeliveryState.SUCCEEDED,
        1,
        204,
        later,
    )
    assert good.updated_at == later
    assert good.next_attempt_at is None
    assert (bad.state, bad.dead_reason, bad.last_error, bad.last_status) == (
        DeliveryState.DEAD,
        "x: y",
        "timeout",
        None,
    )
    assert bad.succeeded_at is None


async def test_a_result_under_a_lost_lease_changes_nothing(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, given.message(tenant_id))
    [stale] = await store.claim({endpoint: 5}, NOW, NOW + timedelta(seconds=1))
    later = NOW + timedelta(seconds=2)
    await store.reclaim_expired_leases(later)
    [fresh] = await store.claim({endpoint: 5}, later, later + timedelta(minutes=1))

    await store.record_results([given.result(stale, DeliveryState.DEAD, 500, reason="x: y")], later)

    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    [delivery] = page.items
    assert delivery.state is DeliveryState.IN_FLIGHT  # the fresh claim still decides
    await store.record_results([given.result(fresh, DeliveryState.SUCCEEDED)], later)
    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    assert page.items[0].state is DeliveryState.SUCCEEDED
    assert page.items[0].attempts == 1


async def test_a_410_disables_the_endpoint_and_ends_its_waiting_deliveries(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, *[given.message(tenant_id) for _ in range(4)])
    [gone] = await store.claim({endpoint: 1}, NOW, LEASE)

    ended = await store.record_results(
        [given.result(gone, DeliveryState.DEAD, 410, reason="gone: 410", disable_endpoint=True)],
        NOW,
    )

    assert ended == 3
    found = await store.get_endpoint(tenant_id, endpoint)
    assert found is not None
    assert found.state is EndpointState.DISABLED
    assert found.disabled_reason == "the endpoint answered 410 Gone"
    assert endpoint not in {e.id for e in await store.active_endpoints()}
    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    reasons = sorted(str(d.dead_reason) for d in page.items)
    assert reasons == ["disabled: the endpoint was disabled after answering 410 Gone"] * 3 + [
        "gone: 410"
    ]


async def test_a_retry_of_an_endpoint_disabled_meanwhile_ends_and_one_suspended_is_held(
    store: Store,
) -> None:
    tenant_id = await given.tenant(store)
    disabled = await given.endpoint(store, tenant_id, ("a",))
    suspended = await given.endpoint(store, tenant_id, ("b",))
    await given.accept(store, given.message(tenant_id, event_type="a"))
    await given.accept(store, given.message(tenant_id, event_type="b"))
    claimed = await store.claim({disabled: 1, suspended: 1}, NOW, LEASE)
    await store.update_endpoint(tenant_id, disabled, {"state": EndpointState.DISABLED}, NOW)
    await store.suspend_endpoint(tenant_id, suspended, "down", "test", NOW)
    retry = NOW + timedelta(seconds=5)

    ended = await store.record_results(
        [given.result(c, DeliveryState.PENDING, 503, next_at=retry) for c in claimed], NOW
    )

    assert ended == 1
    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    shown = {d.endpoint_id: (d.state, d.attempts) for d in page.items}
    assert shown == {disabled: (DeliveryState.DEAD, 1), suspended: (DeliveryState.HELD, 1)}


async def test_breakers_and_minutes_are_kept_from_results(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, *[given.message(tenant_id) for _ in range(3)])
    first, second, third = await store.claim({endpoint: 3}, NOW, LEASE)
    opened = Breaker(
        state=CircuitState.OPEN, consecutive=5, opened_at=NOW, cool_down=timedelta(seconds=30)
    )
    at = NOW + timedelta(seconds=90, microseconds=5)

    await store.record_results(
        [
            given.result(first, DeliveryState.SUCCEEDED, at=at),
            given.result(second, DeliveryState.PENDING, 503, at, at=at),
            given.result(third, DeliveryState.DEAD, 500, None, "x", at=at, breaker=opened),
        ],
        at,
    )

    breaker, changed_at = (await store.breakers())[endpoint]
    assert (breaker.state, breaker.opened_at, breaker.cool_down) == (
        CircuitState.OPEN,
        NOW,
        timedelta(seconds=30),
    )
    assert changed_at == at
    health = (await store.endpoint_health([endpoint]))[endpoint]
    assert health.breaker is not None
    assert health.breaker.state is CircuitState.OPEN
    assert await store.oldest_due(at + timedelta(seconds=1)) is None  # it waits on purpose
    [minute] = (await store.endpoint_minutes(NOW))[endpoint]
    assert minute.start == NOW + timedelta(minutes=1)
    assert (minute.attempts, minute.failures, minute.successes, minute.dead) == (3, 2, 1, 1)
    assert await store.endpoint_minutes(NOW + timedelta(minutes=2)) == {}
    errors = await store.last_errors(endpoint, NOW, 10)
    assert sorted(text for _, text in errors) == ["HTTP 500", "HTTP 503"]
    assert all(when == at for when, _ in errors)
    assert await store.last_errors(endpoint, NOW, 1) == errors[:1]
    assert await store.prune_minutes(NOW + timedelta(minutes=1)) == 0
    assert await store.prune_minutes(NOW + timedelta(minutes=2)) == 1
    assert await store.endpoint_minutes(NOW) == {}


async def test_last_errors_are_the_newest_failures_with_their_status_and_error(
    store: Store,
) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, *[given.message(tenant_id) for _ in range(4)])
    claimed = await store.claim({endpoint: 4}, NOW, LEASE)
    times = [NOW + timedelta(seconds=s) for s in (1, 2, 3, 4)]

    await store.record_results(
        [
            given.result(claimed[0], DeliveryState.PENDING, 500, LEASE, at=times[0]),
            given.result(claimed[1], DeliveryState.PENDING, None, LEASE, at=times[1], error="tls"),
            given.result(claimed[2], DeliveryState.SUCCEEDED, 200, at=times[2]),
            given.result(claimed[3], DeliveryState.PENDING, 429, LEASE, at=times[3], error="slow"),
        ],
        times[3],
    )

    assert await store.last_errors(endpoint, NOW, 10) == [
        (times[3], "HTTP 429: slow"),
        (times[1], "tls"),
        (times[0], "HTTP 500"),
    ]
    assert await store.last_errors(endpoint, times[1], 10) == [
        (times[3], "HTTP 429: slow"),
        (times[1], "tls"),
    ]
    assert await store.last_errors(endpoint, NOW, 1) == [(times[3], "HTTP 429: slow")]


async def test_replay_returns_dead_deliveries_to_pending(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, given.message(tenant_id))
    [claimed] = await store.claim({endpoint: 5}, NOW, NOW + timedelta(minutes=1))
    await store.record_results(
        [given.result(claimed, DeliveryState.DEAD, 500, reason="exhausted: x")], NOW
    )

    other_tenant = await given.tenant(store)
    assert await store.replay(other_tenant, ReplaySelector(ids=(claimed.delivery_id,)), NOW) == 0
    assert await store.replay(tenant_id, ReplaySelector(endpoint_id=endpoint), NOW) == 1

    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    [delivery] = page.items
    assert delivery.state is DeliveryState.PENDING
    assert delivery.attempts == 1  # the history stays
    assert delivery.dead_reason is None
    [again] = await store.claim({endpoint: 5}, NOW, NOW + timedelta(minutes=1))
    assert again.attempt_in_round == 1  # the retry schedule starts over


async def _dead(store: Store, tenant_id: str, endpoint: str, at: datetime) -> str:
    [accepted] = await given.accept(store, given.message(tenant_id), at=at)
    [claimed] = await store.claim({endpoint: 1}, at, at + timedelta(minutes=1))
    await store.record_results([given.result(claimed, DeliveryState.DEAD, 500, reason="x")], at)
    return accepted.deliveries[0][0]


async def test_replay_selects_by_id_and_time_and_holds_those_of_suspended_endpoints(
    store: Store,
) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id, ("order.paid",))
    resting = await given.endpoint(store, tenant_id, ("other",))
    early = await _dead(store, tenant_id, endpoint, NOW)
    middle = await _dead(store, tenant_id, endpoint, NOW + timedelta(hours=1))
    late = await _dead(store, tenant_id, endpoint, NOW + timedelta(hours=2))
    [other] = await given.accept(store, given.message(tenant_id, event_type="other"))
    [claimed] = await store.claim({resting: 1}, NOW, LEASE)
    await store.record_results([given.result(claimed, DeliveryState.DEAD, 500, reason="x")], NOW)
    await store.suspend_endpoint(tenant_id, resting, "down", "test", NOW)
    then = NOW + timedelta(hours=3)

    window = ReplaySelector(since=NOW + timedelta(minutes=30), until=NOW + timedelta(hours=2))
    assert await store.replay(tenant_id, window, then) == 1
    assert await store.replay(tenant_id, ReplaySelector(ids=(late,)), then) == 1
    assert await store.replay(tenant_id, ReplaySelector(ids=(late,)), then) == 0  # pending now
    assert await store.replay(tenant_id, ReplaySelector(endpoint_id=resting), then) == 1

    states = await given.states(store, tenant_id)
    assert states[early] is DeliveryState.DEAD
    assert states[middle] is DeliveryState.PENDING
    assert states[late] is DeliveryState.PENDING
    assert states[other.deliveries[0][0]] is DeliveryState.HELD  # drains when it resumes
    page = await store.list_deliveries(
        tenant_id, DeliveryFilter(state=DeliveryState.PENDING), cursor=None, limit=10
    )
    assert {d.next_attempt_at for d in page.items} == {then}


async def test_replay_leaves_deliveries_of_disabled_endpoints_dead(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    dead = await _dead(store, tenant_id, endpoint, NOW)
    await store.delete_endpoint(tenant_id, endpoint, NOW)

    assert await store.replay(tenant_id, ReplaySelector(), NOW) == 0
    assert (await given.states(store, tenant_id))[dead] is DeliveryState.DEAD


async def test_a_late_email_result_settles_nothing_and_publishes_no_callback(
    store: Store,
) -> None:
    """The first claim's lease ran out and the email was claimed again: the first
    attempt's result is kept as an attempt, but neither the email nor its callback
    follow it; the second's do."""
    tenant_id = await given.tenant(store)
    await given.endpoint(store, tenant_id, event_types=("email.failed", "email.delivered"))
    request = EmailRequest("ada@example.com", "confirm")
    [accepted] = await given.accept(
        store, NewMessage(tenant_id, "email", b"{}", None, "h", request)
    )
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


async def test_an_emails_outcome_is_kept_with_it(store: Store) -> None:
    tenant_id = await given.tenant(store)
    [accepted] = await given.accept(store, given.email(tenant_id))
    [job] = await store.claim({accepted.deliveries[0][1]: 1}, NOW, LEASE)
    sent = NOW + timedelta(seconds=1)
    outcome = EmailOutcome(job.message_id, "formal", "lookup said so", "Welcome", sent)

    await store.record_results([given.result(job, DeliveryState.SUCCEEDED, email=outcome)], sent)

    detail = await store.get_email(tenant_id, accepted.message_id)
    assert detail is not None
    record = detail.email
    assert (record.variant, record.variant_reason, record.subject, record.sent_at) == (
        "formal",
        "lookup said so",
        "Welcome",
        sent,
    )
    [attempt] = detail.message.attempts[job.delivery_id]
    assert attempt.number == 1
