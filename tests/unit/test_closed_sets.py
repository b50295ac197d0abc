"""The closed sets: their values are stored, logged and sent as labels, so they never change."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from tidings.domain.alarms import Level
from tidings.domain.lookup import LookupReason
from tidings.domain.notices import NoticeKind
from tidings.domain.outcome import ErrorClass, Outcome
from tidings.domain.retry import DeadReason, Decision, Verdict, decide

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_values_are_the_stored_strings() -> None:
    assert [e.value for e in ErrorClass] == [
        "timeout",
        "connect_error",
        "connection_closed",
        "client_error",
        "protocol_error",
        "blocked",
        "invalid_message",
        "unsendable",
    ]
    assert [r.value for r in DeadReason] == [
        "exhausted",
        "expired",
        "gone",
        "blocked",
        "rejected",
        "disabled",
        "deleted",
    ]
    assert [k.value for k in NoticeKind] == ["warning", "critical", "suspended", "resumed"]
    assert LookupReason.NONE == ""


def test_a_dead_reason_writes_its_stable_prefix() -> None:
    assert DeadReason.DELETED.because("the endpoint was deleted") == (
        "deleted: the endpoint was deleted"
    )
    assert f"{ErrorClass.TIMEOUT}: late" == "timeout: late"  # as attempt records keep it


@pytest.mark.parametrize(
    ("outcome", "attempt", "cause"),
    [
        (Outcome(None, ErrorClass.BLOCKED, detail="10.0.0.5 is private"), 1, DeadReason.BLOCKED),
        (Outcome(550, permanent=True, protocol="SMTP"), 1, DeadReason.REJECTED),
        (Outcome(410), 1, DeadReason.GONE),
        (Outcome(503), 8, DeadReason.EXHAUSTED),
    ],
)
def test_every_dead_decision_carries_the_cause_its_reason_names(
    outcome: Outcome, attempt: int, cause: DeadReason
) -> None:
    decision = decide(outcome, attempt=attempt, created_at=T0, now=T0, rng=random.Random(1))

    assert decision.cause is cause
    assert decision.reason is not None
    assert decision.reason.startswith(f"{cause.value}: ")


def test_an_expired_decision_names_its_cause() -> None:
    late = T0 + timedelta(days=3)
    decision = decide(Outcome(503), attempt=2, created_at=T0, now=late, rng=random.Random(1))

    assert decision.cause is DeadReason.EXPIRED
    assert decision.reason is not None
    assert decision.reason.startswith("expired: ")


def test_only_a_dead_decision_has_a_cause() -> None:
    with pytest.raises(ValueError, match="cause"):
        Decision(Verdict.DEAD, detail="1 attempt")
    with pytest.raises(ValueError, match="cause"):
        Decision(Verdict.SUCCEEDED, cause=DeadReason.GONE)


def test_alarm_kinds_are_the_warning_and_the_critical_ones() -> None:
    assert {k: k.alarm for k in NoticeKind if k.alarm} == {
        NoticeKind.WARNING: Level.WARNING,
        NoticeKind.CRITICAL: Level.CRITICAL,
    }
    assert [level.value for level in Level] == ["warning", "critical"]
    assert NoticeKind.SUSPENDED.headline == "was suspended"


def test_only_refusals_before_the_receiver_leave_its_breaker_alone() -> None:
    quiet = {e for e in ErrorClass if e.says_nothing_of_the_receiver}
    assert quiet == {ErrorClass.BLOCKED, ErrorClass.UNSENDABLE, ErrorClass.INVALID_MESSAGE}
