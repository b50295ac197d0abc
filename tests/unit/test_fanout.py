"""Fan-out rules: who gets a message, how its deliveries start, how a resumption drains."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.domain import fanout
from tidings.domain.models import (
    DeliveryState,
    EmailRequest,
    Endpoint,
    EndpointKind,
    EndpointState,
    NewMessage,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
quick = settings(database=None, max_examples=200, deadline=None)


def _endpoint(endpoint_id: str = "ep_1", **changes: object) -> Endpoint:
    endpoint = Endpoint(
        id=endpoint_id,
        tenant_id="ten_1",
        url="https://example.com/hook",
        description="",
        event_types=(),
        secret="whsec_x",
        previous_secret=None,
        previous_secret_expires_at=None,
        max_in_flight=10,
        rate_limit_per_s=None,
        retry_schedule=None,
        state=EndpointState.ACTIVE,
        disabled_reason=None,
        created_at=NOW,
        updated_at=NOW,
    )
    return dataclasses.replace(endpoint, **changes)  # type: ignore[arg-type]


def _message(event_type: str = "order.paid", *, email: bool = False) -> NewMessage:
    return NewMessage(
        tenant_id="ten_1",
        event_type=event_type,
        payload=b"{}",
        idempotency_key=None,
        request_hash="h",
        email=EmailRequest(to="a@example.com", template="t") if email else None,
    )


def test_a_message_goes_to_every_endpoint_whose_filter_accepts_it_in_order() -> None:
    every = _endpoint("ep_1")
    paid = _endpoint("ep_2", event_types=("order.paid",))
    other = _endpoint("ep_3", event_types=("order.shipped",))
    assert fanout.targets(_message("order.paid"), [every, paid, other]) == [every, paid]
    assert fanout.targets(_message("order.shipped"), [every, paid, other]) == [every, other]


def test_operational_events_go_only_where_asked_for_by_name() -> None:
    every = _endpoint("ep_1")
    asked = _endpoint("ep_2", event_types=("endpoint.suspended",))
    assert fanout.targets(_message("endpoint.suspended"), [every, asked]) == [asked]


def test_suspended_endpoints_get_deliveries_disabled_ones_do_not() -> None:
    suspended = _endpoint("ep_1", state=EndpointState.SUSPENDED)
    disabled = _endpoint("ep_2", state=EndpointState.DISABLED)
    assert fanout.targets(_message(), [suspended, disabled]) == [suspended]
    assert fanout.receives(suspended)
    assert not fanout.receives(disabled)
    assert set(fanout.RECEIVING_STATES) == {EndpointState.ACTIVE, EndpointState.SUSPENDED}


def test_the_email_lane_gets_no_webhook_message_and_webhooks_get_no_email() -> None:
    webhook = _endpoint("ep_1")
    lane = fanout.new_email_lane("ep_2", "ten_1", NOW)
    assert fanout.targets(_message(), [webhook, lane]) == [webhook]
    assert fanout.targets(_message(email=True), [webhook, lane]) == []


def test_a_tenant_without_a_lane_has_none_until_its_first_email_makes_one() -> None:
    webhook = _endpoint("ep_1")
    assert fanout.email_lane([webhook]) is None
    lane = fanout.new_email_lane("ep_2", "ten_1", NOW)
    assert fanout.email_lane([webhook, lane]) is lane


def test_the_email_lane_shape() -> None:
    lane = fanout.new_email_lane("ep_9", "ten_1", NOW)
    assert lane.id == "ep_9"
    assert lane.tenant_id == "ten_1"
    assert lane.kind is EndpointKind.EMAIL
    assert lane.state is EndpointState.ACTIVE
    assert lane.url == "email:"
    assert lane.event_types == ()
    assert lane.secret == ""
    assert lane.max_in_flight == fanout.EMAIL_LANE_MAX_IN_FLIGHT == 10
    assert lane.rate_limit_per_s is None
    assert lane.retry_schedule is None
    assert lane.created_at == lane.updated_at == NOW


def test_a_new_delivery_is_held_while_its_endpoint_is_suspended() -> None:
    assert fanout.first_state(_endpoint()) is DeliveryState.PENDING
    suspended = _endpoint(state=EndpointState.SUSPENDED)
    assert fanout.first_state(suspended) is DeliveryState.HELD


def test_a_new_delivery_is_due_now_unless_its_endpoint_schedule_delays_the_first() -> None:
    assert fanout.first_delay(_endpoint()) == 0.0
    assert fanout.first_attempt_at(_endpoint(), NOW) == NOW
    delayed = _endpoint(retry_schedule=(30.0, 60.0))
    assert fanout.first_delay(delayed) == 30.0
    assert fanout.first_attempt_at(delayed, NOW) == NOW + timedelta(seconds=30)


def test_a_drain_is_paced_by_the_policy_and_never_faster_than_the_rate_limit() -> None:
    assert fanout.drain_rate(_endpoint()) == 50.0  # the default policy's
    assert fanout.drain_rate(_endpoint(rate_limit_per_s=5.0)) == 5.0
    assert fanout.drain_rate(_endpoint(rate_limit_per_s=500.0)) == 50.0
    tenant_policy = '{"drain_rate_per_s": 2.0}'
    assert fanout.drain_rate(_endpoint(tenant_alarm_policy=tenant_policy)) == 2.0


def test_a_drain_schedule_starts_now_and_keeps_the_order() -> None:
    schedule = fanout.drain_schedule(["d1", "d2", "d3"], NOW, 4.0)
    assert schedule == [
        ("d1", NOW),
        ("d2", NOW + timedelta(seconds=0.25)),
        ("d3", NOW + timedelta(seconds=0.5)),
    ]
    assert fanout.drain_schedule([], NOW, 4.0) == []


@quick
@given(count=st.integers(0, 200), rate=st.floats(0.01, 10_000))
def test_a_drain_never_runs_faster_than_its_rate(count: int, rate: float) -> None:
    schedule = fanout.drain_schedule(range(count), NOW, rate)
    assert [item for item, _ in schedule] == list(range(count))
    times = [due for _, due in schedule]
    assert all(due >= NOW for due in times)
    for i, due in enumerate(times):  # each i / rate after the first, to the microsecond
        assert abs((due - NOW).total_seconds() - i / rate) <= 1e-6 * (i + 1)


def test_a_replay_retries_what_an_active_endpoint_lost_and_holds_what_a_suspended_one_did() -> None:
    E, D = EndpointState, DeliveryState
    expected = {
        (E.ACTIVE, D.DEAD): D.PENDING,
        (E.ACTIVE, D.HELD): D.PENDING,
        (E.SUSPENDED, D.DEAD): D.HELD,
    }

    for endpoint_state, state in itertools.product(E, D):
        assert fanout.replayed(endpoint_state, state) == expected.get((endpoint_state, state)), (
            endpoint_state,
            state,
        )
