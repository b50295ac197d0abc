"""The event bus, and the metrics that one subscriber of it keeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from tidings.domain.lookup import LookupOutcome, LookupReason, LookupResult
from tidings.domain.notices import NoticeKind
from tidings.domain.outcome import ErrorClass, Outcome
from tidings.domain.retry import DeadReason, Decision, Verdict
from tidings.events import (
    AttemptFinished,
    Bus,
    DeliveriesEnded,
    Event,
    HeldCounted,
    LookupDone,
    NoticeSent,
)
from tidings.metrics import Metrics

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _finished(outcome: Outcome, decision: Decision, endpoint_id: str = "ep_1") -> AttemptFinished:
    return AttemptFinished(endpoint_id, outcome, decision, 250.0, T0, T0 + timedelta(seconds=3))


def test_every_subscriber_hears_every_event_in_order() -> None:
    bus = Bus()
    heard: list[tuple[str, Event]] = []
    bus.subscribe(lambda event: heard.append(("first", event)))
    bus.subscribe(lambda event: heard.append(("second", event)))
    event = NoticeSent(NoticeKind.WARNING, "ep_1")

    bus.emit(event)

    assert heard == [("first", event), ("second", event)]


def test_a_failing_subscriber_is_logged_and_stops_nothing() -> None:
    bus = Bus()
    heard: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("a broken subscriber")

    bus.subscribe(broken)
    bus.subscribe(heard.append)
    event = DeliveriesEnded(DeadReason.DELETED, 2)

    with capture_logs() as logs:
        bus.emit(event)  # does not raise

    assert heard == [event]
    assert [(log["event"], log["log_level"]) for log in logs] == [
        ("event_subscriber_failed", "error")
    ]
    assert logs[0]["kind"] == "DeliveriesEnded"


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def test_a_dead_attempt_counts_under_its_cause() -> None:
    metrics = Metrics()
    decision = Decision.dead(DeadReason.EXHAUSTED, "8 attempts, last: HTTP 503")

    metrics.observe(_finished(Outcome(503), decision))

    assert _value(metrics, "tidings_attempts_total", outcome="failure", status_class="5xx") == 1
    assert (
        _value(metrics, "tidings_endpoint_attempts_total", endpoint="ep_1", outcome="failure") == 1
    )
    assert _value(metrics, "tidings_deliveries_total", outcome="dead") == 1
    assert _value(metrics, "tidings_deliveries_dead_total", reason="exhausted") == 1
    assert _value(metrics, "tidings_delivery_latency_seconds_count") == 0


def test_a_success_counts_its_latency_from_acceptance() -> None:
    metrics = Metrics()

    metrics.observe(_finished(Outcome(200), Decision(Verdict.SUCCEEDED)))

    assert _value(metrics, "tidings_attempts_total", outcome="success", status_class="2xx") == 1
    assert _value(metrics, "tidings_deliveries_total", outcome="succeeded") == 1
    assert _value(metrics, "tidings_delivery_latency_seconds_sum") == 3.0
    assert _value(metrics, "tidings_attempt_duration_seconds_sum") == 0.25


def test_an_error_without_an_answer_counts_as_none() -> None:
    metrics = Metrics()
    retry = Decision(Verdict.RETRY, next_attempt_at=T0)

    metrics.observe(_finished(Outcome(None, ErrorClass.TIMEOUT), retry))

    assert _value(metrics, "tidings_attempts_total", outcome="failure", status_class="none") == 1
    assert _value(metrics, "tidings_deliveries_total", outcome="retry") == 1


def test_deliveries_ended_without_an_attempt_count_as_dead() -> None:
    metrics = Metrics()

    metrics.observe(DeliveriesEnded(DeadReason.DISABLED, 3))

    assert _value(metrics, "tidings_deliveries_total", outcome="dead") == 3
    assert _value(metrics, "tidings_deliveries_dead_total", reason="disabled") == 3


def test_notices_count_by_kind_and_alarms_by_level() -> None:
    metrics = Metrics()

    for kind in NoticeKind:
        metrics.observe(NoticeSent(kind, "ep_1"))

    for kind in NoticeKind:
        assert _value(metrics, "tidings_notices_total", kind=kind.value) == 1
    assert _value(metrics, "tidings_alarms_total", level="warning") == 1
    assert _value(metrics, "tidings_alarms_total", level="critical") == 1
    assert metrics.registry.get_sample_value("tidings_alarms_total", {"level": "suspended"}) is None


def test_a_lookup_counts_under_its_template_outcome_and_reason() -> None:
    metrics = Metrics()
    failed = LookupResult(LookupOutcome.ERROR, LookupReason.TIMEOUT, None, "timed out")

    metrics.observe(LookupDone("welcome", failed))

    assert (
        _value(
            metrics, "tidings_lookup_total", template="welcome", outcome="error", reason="timeout"
        )
        == 1
    )
    assert (
        _value(metrics, "tidings_lookup_total", template="welcome", outcome="found", reason="") == 0
    )


def test_held_counts_leave_zeros_for_endpoints_that_left() -> None:
    metrics = Metrics()

    metrics.observe(HeldCounted({"ep_1": 4}, frozenset({"ep_1", "ep_2"})))
    metrics.observe(HeldCounted({}, frozenset()))

    assert _value(metrics, "tidings_endpoint_held", endpoint="ep_1") == 0
    assert _value(metrics, "tidings_endpoint_suspended", endpoint="ep_2") == 0


def test_events_no_metric_counts_are_ignored() -> None:
    class Unknown(Event):
        __slots__ = ()

    metrics = Metrics()
    before = [(s.name, s.labels, s.value) for m in metrics.registry.collect() for s in m.samples]

    metrics.observe(Unknown())

    after = [(s.name, s.labels, s.value) for m in metrics.registry.collect() for s in m.samples]
    assert after == before
