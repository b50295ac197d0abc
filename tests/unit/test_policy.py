"""The retry policy, on a fake clock and seeded randomness."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.clock import FakeClock
from tidings.domain.outcome import Outcome
from tidings.domain.retry import (
    DEFAULT_SCHEDULE,
    JITTER,
    Decision,
    Verdict,
    decide,
    is_expired,
    jittered,
    parse_retry_after,
    validate_schedule,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RETENTION = timedelta(days=3)
SEED = 1234

# No example database: these tests must not write into the working tree.
quick = settings(database=None, max_examples=200, deadline=None)


def _decide(
    outcome: Outcome,
    *,
    attempt: int = 1,
    now: datetime = T0,
    created_at: datetime = T0,
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE,
    retention: timedelta = RETENTION,
    retry_after_max: timedelta = timedelta(hours=1),
) -> Decision:
    return decide(
        outcome,
        attempt=attempt,
        created_at=created_at,
        now=now,
        schedule=schedule,
        retention=retention,
        retry_after_max=retry_after_max,
        rng=random.Random(SEED),
    )


def _within_jitter(actual: timedelta, nominal: float) -> bool:
    seconds = actual.total_seconds()
    slack = 1e-6  # timedelta keeps microseconds
    return nominal * (1 - JITTER) - slack <= seconds <= nominal * (1 + JITTER) + slack


# --- Outcome ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "succeeded", "status_class"),
    [
        (200, True, "2xx"),
        (204, True, "2xx"),
        (299, True, "2xx"),
        (101, False, "1xx"),
        (301, False, "3xx"),
        (304, False, "3xx"),
        (404, False, "4xx"),
        (503, False, "5xx"),
        (None, False, "none"),
        (999, False, "other"),
    ],
)
def test_outcome_success_and_status_class(
    status: int | None, succeeded: bool, status_class: str
) -> None:
    outcome = Outcome(status, error="timeout" if status is None else None)
    assert outcome.succeeded is succeeded
    assert outcome.status_class == status_class


# --- each verdict ----------------------------------------------------------------------


def test_2xx_succeeds() -> None:
    decision = _decide(Outcome(200))
    assert decision == Decision(Verdict.SUCCEEDED)


def test_success_wins_even_on_the_last_attempt_and_after_expiry() -> None:
    late = T0 + timedelta(days=10)
    assert _decide(Outcome(201), attempt=8, now=late).verdict is Verdict.SUCCEEDED


def test_3xx_is_a_retry_not_a_success() -> None:
    decision = _decide(Outcome(302))
    assert decision.verdict is Verdict.RETRY
    assert decision.next_attempt_at is not None
    assert _within_jitter(decision.next_attempt_at - T0, DEFAULT_SCHEDULE[1])


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(500),
        Outcome(503),
        Outcome(429),
        Outcome(400),
        Outcome(404),
        Outcome(None, error="timeout"),
        Outcome(None, error="connect_error", detail="Connection refused"),
        Outcome(None, error="connection_closed"),
        Outcome(None),
    ],
)
def test_failures_are_retried_on_the_schedule(outcome: Outcome) -> None:
    clock = FakeClock(T0 + timedelta(hours=1))
    for attempt in range(1, len(DEFAULT_SCHEDULE)):
        decision = _decide(outcome, attempt=attempt, now=clock.now())
        assert decision.verdict is Verdict.RETRY, attempt
        assert decision.next_attempt_at is not None
        assert _within_jitter(decision.next_attempt_at - clock.now(), DEFAULT_SCHEDULE[attempt])
        assert decision.reason is None
        assert not decision.disable_endpoint
        clock.advance(decision.next_attempt_at - clock.now())


def test_410_is_dead_and_disables_the_endpoint() -> None:
    decision = _decide(Outcome(410), attempt=1)
    assert decision.verdict is Verdict.DEAD
    assert decision.reason == "gone: endpoint answered 410"
    assert decision.disable_endpoint is True
    assert decision.next_attempt_at is None


def test_blocked_is_dead_at_once_with_the_detail() -> None:
    outcome = Outcome(None, error="blocked", detail="10.0.0.5 is a private address")
    decision = _decide(outcome, attempt=1)
    assert decision.verdict is Verdict.DEAD
    assert decision.reason == "blocked: 10.0.0.5 is a private address"
    assert not decision.disable_endpoint


def test_blocked_without_detail_still_has_a_reason() -> None:
    decision = _decide(Outcome(None, error="blocked"))
    assert decision.reason is not None
    assert decision.reason.startswith("blocked: ")


def test_a_permanent_refusal_is_dead_at_once_and_names_the_reply() -> None:
    outcome = Outcome(550, detail="5.1.1 no such user", permanent=True, protocol="SMTP")
    decision = _decide(outcome, attempt=1)
    assert decision.verdict is Verdict.DEAD
    assert decision.reason == "rejected: SMTP 550 5.1.1 no such user"
    assert not decision.disable_endpoint


def test_a_temporary_smtp_reply_is_retried() -> None:
    decision = _decide(Outcome(451, protocol="SMTP"), attempt=1)
    assert decision.verdict is Verdict.RETRY


# --- exhaustion ------------------------------------------------------------------------


def test_exhausted_after_len_schedule_attempts() -> None:
    decision = _decide(Outcome(503), attempt=len(DEFAULT_SCHEDULE))
    assert decision.verdict is Verdict.DEAD
    assert decision.reason == "exhausted: 8 attempts, last: HTTP 503"
    assert not decision.disable_endpoint


def test_exhausted_reason_names_the_error_when_there_was_no_response() -> None:
    decision = _decide(Outcome(None, error="timeout"), attempt=8)
    assert decision.reason == "exhausted: 8 attempts, last: timeout"


def test_attempt_beyond_the_schedule_is_exhausted_too() -> None:
    assert _decide(Outcome(500), attempt=12).verdict is Verdict.DEAD


@pytest.mark.parametrize(
    "schedule", [(0,), (0, 10), (0, 1, 1, 1), tuple(float(i) for i in range(20))]
)
def test_custom_schedule_exhausts_after_its_length(schedule: tuple[float, ...]) -> None:
    clock = FakeClock(T0)
    attempts = 0
    while True:
        attempts += 1
        decision = _decide(Outcome(502), attempt=attempts, now=clock.now(), schedule=schedule)
        if decision.verdict is not Verdict.RETRY:
            break
        assert decision.next_attempt_at is not None
        assert _within_jitter(decision.next_attempt_at - clock.now(), schedule[attempts])
        clock.advance(decision.next_attempt_at - clock.now())
    assert attempts == len(schedule)
    noun = "attempt" if attempts == 1 else "attempts"
    assert decision.reason == f"exhausted: {attempts} {noun}, last: HTTP 502"


# --- expiry ----------------------------------------------------------------------------


def test_expired_when_retention_has_passed() -> None:
    clock = FakeClock(T0)
    clock.advance(RETENTION)
    decision = _decide(Outcome(503), attempt=2, now=clock.now())
    assert decision.verdict is Verdict.DEAD
    assert decision.reason is not None
    assert decision.reason.startswith("expired: older than 3 days")


def test_expired_when_the_next_attempt_would_fall_past_retention() -> None:
    clock = FakeClock(T0)
    clock.advance(RETENTION - timedelta(hours=1))  # still inside, but the next delay is 10 h
    decision = _decide(Outcome(503), attempt=6, now=clock.now())
    assert decision.verdict is Verdict.DEAD
    assert decision.reason is not None
    assert decision.reason.startswith("expired: ")


def test_not_expired_when_the_next_attempt_fits() -> None:
    clock = FakeClock(T0)
    clock.advance(RETENTION - timedelta(hours=1))
    decision = _decide(Outcome(503), attempt=1, now=clock.now())  # next delay ~5 s
    assert decision.verdict is Verdict.RETRY


def test_custom_retention() -> None:
    decision = _decide(
        Outcome(503), attempt=2, now=T0 + timedelta(minutes=1), retention=timedelta(minutes=2)
    )
    assert decision.verdict is Verdict.DEAD  # 5 min ± 20 % overshoots the 2 minutes left
    assert decision.reason == "expired: older than 2 minutes after 2 attempts, last: HTTP 503"


def test_is_expired_boundary() -> None:
    assert not is_expired(T0, T0 + RETENTION - timedelta(microseconds=1), RETENTION)
    assert is_expired(T0, T0 + RETENTION, RETENTION)
    assert is_expired(T0, T0 + RETENTION + timedelta(seconds=1), RETENTION)


# --- Retry-After -----------------------------------------------------------------------


def test_retry_after_seconds_replaces_the_schedule() -> None:
    decision = _decide(Outcome(429, retry_after="120"), attempt=1)
    assert decision.next_attempt_at == T0 + timedelta(seconds=120)  # no jitter, not 5 s


def test_retry_after_http_date_replaces_the_schedule() -> None:
    when = T0 + timedelta(minutes=10)
    decision = _decide(Outcome(503, retry_after=format_datetime(when, usegmt=True)), attempt=4)
    assert decision.next_attempt_at == when  # not the ~2 h the schedule says


def test_retry_after_is_clamped_high() -> None:
    decision = _decide(Outcome(503, retry_after="86400"), attempt=1)
    assert decision.next_attempt_at == T0 + timedelta(hours=1)
    custom = _decide(
        Outcome(503, retry_after="86400"), attempt=1, retry_after_max=timedelta(minutes=5)
    )
    assert custom.next_attempt_at == T0 + timedelta(minutes=5)


@pytest.mark.parametrize("value", ["0", "Sun, 06 Nov 1994 08:49:37 GMT"])
def test_retry_after_is_clamped_low(value: str) -> None:
    decision = _decide(Outcome(429, retry_after=value), attempt=1)
    assert decision.next_attempt_at == T0 + timedelta(seconds=1)


def test_garbage_retry_after_falls_back_to_the_schedule() -> None:
    decision = _decide(Outcome(429, retry_after="soon, please"), attempt=3)
    assert decision.next_attempt_at is not None
    assert _within_jitter(decision.next_attempt_at - T0, DEFAULT_SCHEDULE[3])


def test_retry_after_does_not_add_attempts_or_outlive_retention() -> None:
    assert _decide(Outcome(429, retry_after="1"), attempt=8).verdict is Verdict.DEAD
    late = T0 + RETENTION - timedelta(minutes=1)
    decision = _decide(Outcome(429, retry_after="3600"), attempt=1, now=late)
    assert decision.verdict is Verdict.DEAD
    assert decision.reason is not None
    assert decision.reason.startswith("expired: ")


def test_retry_after_on_410_is_still_gone() -> None:
    assert _decide(Outcome(410, retry_after="5")).reason == "gone: endpoint answered 410"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", timedelta(seconds=120)),
        ("  7 ", timedelta(seconds=7)),
        ("0", timedelta(0)),
        ("007", timedelta(seconds=7)),
        ("Thu, 01 Jan 2026 00:02:00 GMT", timedelta(minutes=2)),  # IMF-fixdate
        ("Thursday, 01-Jan-26 00:02:00 GMT", timedelta(minutes=2)),  # obsolete RFC 850
        ("Thu Jan  1 00:02:00 2026", timedelta(minutes=2)),  # obsolete asctime, UTC
        ("Thu, 01 Jan 2026 01:02:00 +0100", timedelta(minutes=2)),
        ("Sun, 06 Nov 1994 08:49:37 GMT", timedelta(0)),  # in the past
    ],
)
def test_parse_retry_after(value: str, expected: timedelta) -> None:
    assert parse_retry_after(value, T0) == expected


@pytest.mark.parametrize(
    "value",
    ["", "   ", "soon", "-5", "1.5", "+5", "1e3", "²", "5 s", "Mon, 31 Feb 2026 00:00:00 GMT"],
)
def test_parse_retry_after_garbage(value: str) -> None:
    assert parse_retry_after(value, T0) is None


def test_parse_retry_after_huge_seconds_does_not_overflow() -> None:
    parsed = parse_retry_after("9" * 5000, T0)
    assert parsed is not None
    assert parsed > timedelta(days=365)


@quick
@given(st.text())
def test_parse_retry_after_never_raises(value: str) -> None:
    parsed = parse_retry_after(value, T0)
    assert parsed is None or parsed >= timedelta(0)


@quick
@given(st.integers(min_value=0, max_value=10**12))
def test_parse_retry_after_roundtrips_seconds(seconds: int) -> None:
    # Absurd values are capped at 10**9 s (~31 years) instead of overflowing.
    assert parse_retry_after(str(seconds), T0) == timedelta(seconds=min(seconds, 10**9))


# --- jitter ----------------------------------------------------------------------------


def test_jitter_keeps_zero() -> None:
    assert jittered(0, random.Random(SEED)) == 0


@quick
@given(
    st.floats(min_value=0, max_value=7 * 86400, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=2**64),
)
def test_jitter_bounds(delay: float, seed: int) -> None:
    value = jittered(delay, random.Random(seed))
    assert 0.8 * delay <= value <= 1.2 * delay


def test_jitter_spreads_and_is_reproducible() -> None:
    values = [jittered(100, random.Random(seed)) for seed in range(200)]
    assert min(values) < 85
    assert max(values) > 115
    assert jittered(100, random.Random(SEED)) == jittered(100, random.Random(SEED))


@pytest.mark.parametrize("delay", [-1.0, math.nan, math.inf])
def test_jitter_rejects_bad_delays(delay: float) -> None:
    with pytest.raises(ValueError, match="delay"):
        jittered(delay, random.Random(SEED))


# --- validate_schedule -----------------------------------------------------------------


def test_validate_schedule_accepts_and_normalises() -> None:
    assert validate_schedule([0, 5, 60.5]) == (0.0, 5.0, 60.5)
    assert validate_schedule(DEFAULT_SCHEDULE) == DEFAULT_SCHEDULE
    assert validate_schedule([7 * 86400] * 20) == (7 * 86400.0,) * 20


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ([], "1 to 20 entries"),
        ([1] * 21, "1 to 20 entries"),
        ([0, -1], "entry 1 must be between 0"),
        ([0, 7 * 86400 + 1], "entry 1 must be between 0"),
        ([math.nan], "entry 0"),
        ([0, math.inf], "entry 1"),
        ([True], "must be a number"),
        (["5"], "must be a number"),
        ("05", "must be a list"),
    ],
)
def test_validate_schedule_rejects(schedule: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_schedule(schedule)


# --- decide's guards -------------------------------------------------------------------


def test_decide_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="1-based"):
        _decide(Outcome(500), attempt=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        _decide(Outcome(500), now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="retry_after_max"):
        _decide(Outcome(500), retry_after_max=timedelta(0))


def test_decision_invariants() -> None:
    with pytest.raises(ValueError, match="reason"):
        Decision(Verdict.DEAD)
    with pytest.raises(ValueError, match="next_attempt_at"):
        Decision(Verdict.RETRY)
    with pytest.raises(ValueError, match="next_attempt_at"):
        Decision(Verdict.SUCCEEDED, next_attempt_at=T0)


# --- properties ------------------------------------------------------------------------

retry_after_values = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=10**6).map(str),
    st.text(max_size=30),
    st.integers(min_value=-86400, max_value=86400 * 10).map(
        lambda s: format_datetime(T0 + timedelta(seconds=s), usegmt=True)
    ),
)
outcomes = st.builds(
    Outcome,
    status=st.one_of(st.none(), st.integers(min_value=100, max_value=599)),
    error=st.sampled_from([None, "timeout", "connect_error", "connection_closed", "blocked"]),
    retry_after=retry_after_values,
    detail=st.one_of(st.none(), st.text(max_size=20)),
)
schedules = st.one_of(
    st.just(DEFAULT_SCHEDULE),
    st.lists(
        st.floats(min_value=0, max_value=7 * 86400, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=20,
    ).map(validate_schedule),
)


@quick
@given(
    outcome=outcomes,
    attempt=st.integers(min_value=1, max_value=25),
    age=st.timedeltas(min_value=timedelta(hours=-1), max_value=timedelta(days=10)),
    schedule=schedules,
    retention=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=14)),
    retry_after_max=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=1)),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_decide_properties(
    outcome: Outcome,
    attempt: int,
    age: timedelta,
    schedule: tuple[float, ...],
    retention: timedelta,
    retry_after_max: timedelta,
    seed: int,
) -> None:
    now = T0 + age
    decision = decide(
        outcome,
        attempt=attempt,
        created_at=T0,
        now=now,
        schedule=schedule,
        retention=retention,
        retry_after_max=retry_after_max,
        rng=random.Random(seed),
    )
    if decision.verdict is Verdict.RETRY:
        assert decision.next_attempt_at is not None
        assert now <= decision.next_attempt_at <= T0 + retention
        assert attempt < len(schedule)
        assert not outcome.succeeded
        assert outcome.status != 410
        assert outcome.error != "blocked"
    elif decision.verdict is Verdict.DEAD:
        assert decision.reason
        assert decision.reason.split(":")[0] in {"expired", "exhausted", "gone", "blocked"}
        assert decision.next_attempt_at is None
    else:
        assert outcome.succeeded
    assert decision.disable_endpoint == (
        decision.verdict is Verdict.DEAD and decision.reason == "gone: endpoint answered 410"
    )


def test_a_permanent_failure_without_a_reply_names_its_error_and_why() -> None:
    outcome = Outcome(
        None, "unsendable", detail="the template 'confirm' was deleted", permanent=True
    )
    decision = _decide(outcome, attempt=1)
    assert decision.reason == "rejected: unsendable: the template 'confirm' was deleted"


def test_an_smtp_410_is_not_http_gone() -> None:
    decision = _decide(Outcome(410, protocol="SMTP"), attempt=1)
    assert decision.verdict is Verdict.RETRY
    assert not decision.disable_endpoint
