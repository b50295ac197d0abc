"""The circuit breaker, on a fake clock and with hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.clock import FakeClock
from tidings.domain.circuit import Breaker, BreakerPolicy, CircuitState

POLICY = BreakerPolicy()
CONSECUTIVE_ONLY = BreakerPolicy(failure_ratio=None)

# No example database: these tests must not write into the working tree.
quick = settings(database=None, max_examples=300, deadline=None)


def _record(breaker: Breaker, clock: FakeClock, *results: bool, every: float = 0.0) -> Breaker:
    for succeeded in results:
        clock.advance(every)
        breaker = breaker.record(POLICY, succeeded, clock.now())
    return breaker


def _opened(clock: FakeClock) -> Breaker:
    """A breaker just opened by five failures in a row."""
    breaker = _record(Breaker(), clock, *[False] * 5)
    assert breaker.state is CircuitState.OPEN
    return breaker


def test_closed_allows_and_keeps_its_state() -> None:
    allowed, breaker = Breaker().allows(POLICY, FakeClock().now())
    assert allowed
    assert breaker == Breaker()


def test_opens_after_five_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = _record(Breaker(), clock, *[False] * 4)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.consecutive == 4
    breaker = _record(breaker, clock, False)
    assert breaker.state is CircuitState.OPEN
    assert breaker.opened_at == clock.now()
    assert breaker.cool_down == POLICY.cool_down


def test_a_success_resets_the_consecutive_count() -> None:
    clock = FakeClock()
    breaker = _record(Breaker(), clock, False, False, False, False, True)
    assert breaker.consecutive == 0
    breaker = _record(breaker, clock, False, False, False, False)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.consecutive == 4


def test_ratio_opens_at_half_failures_over_ten_attempts() -> None:
    clock = FakeClock()
    # S F S F ... : never two failures in a row; the 10th attempt is the 5th failure.
    breaker = _record(Breaker(), clock, *[True, False] * 4, True, every=1)
    assert breaker.state is CircuitState.CLOSED
    assert len(breaker.recent) == 9
    breaker = _record(breaker, clock, False, every=1)
    assert breaker.state is CircuitState.OPEN


def test_ratio_needs_ten_attempts() -> None:
    clock = FakeClock()
    # 5 failures of 9 attempts (56 %) but only 9 attempts: stays closed.
    breaker = _record(Breaker(), clock, False, True, False, True, False, True, False, True)
    breaker = _record(breaker, clock, False)
    assert len(breaker.recent) == 9
    assert breaker.state is CircuitState.CLOSED


def test_ratio_below_half_stays_closed() -> None:
    clock = FakeClock()
    breaker = _record(Breaker(), clock, *[True, True, False] * 10, every=1)
    assert breaker.state is CircuitState.CLOSED


def test_a_success_never_opens_the_breaker() -> None:
    clock = FakeClock()
    # F S F S ... ending on a success: 5 of 10 failed, but the last attempt worked.
    breaker = _record(Breaker(), clock, *[False, True] * 5, every=1)
    assert breaker.state is CircuitState.CLOSED
    breaker = _record(breaker, clock, False, every=1)  # 6 of 11
    assert breaker.state is CircuitState.OPEN


def test_attempts_older_than_the_window_are_dropped() -> None:
    clock = FakeClock()
    breaker = _record(Breaker(), clock, *[False, True] * 4, every=1)  # 4 of 8 failed
    clock.advance(timedelta(seconds=60))
    # The old eight have left the window: the ratio starts over.
    breaker = _record(breaker, clock, True, False)
    assert breaker.state is CircuitState.CLOSED
    assert [succeeded for _, succeeded in breaker.recent] == [True, False]


def test_the_window_excludes_an_attempt_exactly_window_old() -> None:
    clock = FakeClock()
    breaker = _record(Breaker(), clock, True)
    clock.advance(POLICY.window)
    breaker = _record(breaker, clock, True)
    assert len(breaker.recent) == 1


def test_ratio_rule_can_be_turned_off() -> None:
    clock = FakeClock()
    breaker = Breaker()
    for succeeded in [True, False] * 20:
        breaker = breaker.record(CONSECUTIVE_ONLY, succeeded, clock.now())
    assert breaker.state is CircuitState.CLOSED
    assert breaker.recent == ()


def test_samples_are_bounded() -> None:
    clock = FakeClock()
    policy = BreakerPolicy(min_attempts=4, max_samples=4)
    breaker = Breaker()
    for _ in range(10):
        breaker = breaker.record(policy, True, clock.now())
    assert len(breaker.recent) == 4
    # The last four hold one failure and three successes: 25 %, closed.
    breaker = breaker.record(policy, False, clock.now())
    assert breaker.state is CircuitState.CLOSED
    breaker = breaker.record(policy, False, clock.now())  # 2 of the last 4
    assert breaker.state is CircuitState.OPEN


def test_open_refuses_until_the_cool_down_has_passed() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(POLICY.cool_down - timedelta(microseconds=1))
    allowed, after = breaker.allows(POLICY, clock.now())
    assert not allowed
    assert after == breaker
    clock.advance(timedelta(microseconds=1))
    allowed, after = breaker.allows(POLICY, clock.now())
    assert allowed
    assert after.state is CircuitState.HALF_OPEN
    assert after.probing


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(POLICY.cool_down)
    allowed, breaker = breaker.allows(POLICY, clock.now())
    assert allowed
    for _ in range(5):
        clock.advance(1)
        again, breaker = breaker.allows(POLICY, clock.now())
        assert not again
    assert breaker.state is CircuitState.HALF_OPEN


def test_a_successful_probe_closes_and_forgets() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(POLICY.cool_down)
    _, breaker = breaker.allows(POLICY, clock.now())
    breaker = breaker.record(POLICY, True, clock.now())
    assert breaker == Breaker()
    # Forgotten: the next open period is the first one again.
    breaker = _record(breaker, clock, *[False] * 5)
    assert breaker.cool_down == POLICY.cool_down


def test_a_failed_probe_doubles_the_cool_down_up_to_the_cap() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    seen = []
    for _ in range(8):
        assert breaker.cool_down is not None
        clock.advance(breaker.cool_down)
        allowed, breaker = breaker.allows(POLICY, clock.now())
        assert allowed
        breaker = breaker.record(POLICY, False, clock.now())
        assert breaker.state is CircuitState.OPEN
        assert breaker.opened_at == clock.now()
        seen.append(breaker.cool_down)
    assert seen == [timedelta(seconds=s) for s in (60, 120, 240, 480, 600, 600, 600, 600)]


def test_reopened_breaker_refuses_for_its_new_cool_down() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(POLICY.cool_down)
    _, breaker = breaker.allows(POLICY, clock.now())
    breaker = breaker.record(POLICY, False, clock.now())
    clock.advance(timedelta(seconds=59))
    assert not breaker.allows(POLICY, clock.now())[0]
    clock.advance(timedelta(seconds=1))
    assert breaker.allows(POLICY, clock.now())[0]


def test_a_lost_probe_is_replaced_after_a_cool_down() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(POLICY.cool_down)
    _, breaker = breaker.allows(POLICY, clock.now())  # the probe never reports back
    clock.advance(POLICY.cool_down - timedelta(microseconds=1))
    assert not breaker.allows(POLICY, clock.now())[0]
    clock.advance(timedelta(microseconds=1))
    allowed, breaker = breaker.allows(POLICY, clock.now())
    assert allowed
    assert breaker.probe_at == clock.now()


def test_results_recorded_while_open_are_ignored() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    assert breaker.record(POLICY, True, clock.now()) == breaker
    assert breaker.record(POLICY, False, clock.now()) == breaker


def test_naive_times_are_refused() -> None:
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        Breaker().allows(POLICY, naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        Breaker().record(POLICY, True, naive)


@pytest.mark.parametrize(
    "fields",
    [
        {"consecutive_failures": 0},
        {"failure_ratio": 0.0},
        {"failure_ratio": 1.5},
        {"min_attempts": 0},
        {"min_attempts": 101},
        {"window": timedelta(0)},
        {"cool_down": timedelta(0)},
        {"cool_down": timedelta(minutes=11)},
    ],
)
def test_policy_refuses_nonsense(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each field has its own message
        BreakerPolicy(**fields)  # type: ignore[arg-type]


policies = st.builds(
    BreakerPolicy,
    consecutive_failures=st.integers(1, 6),
    failure_ratio=st.sampled_from([None, 0.25, 0.5, 1.0]),
    min_attempts=st.integers(1, 12),
    window=st.integers(1, 120).map(lambda s: timedelta(seconds=s)),
    cool_down=st.integers(1, 60).map(lambda s: timedelta(seconds=s)),
    max_cool_down=st.integers(60, 600).map(lambda s: timedelta(seconds=s)),
    max_samples=st.integers(12, 20),
)
events = st.lists(
    st.tuples(st.sampled_from(["ask", "success", "failure"]), st.integers(0, 90_000)),
    max_size=200,
)


@quick
@given(policy=policies, steps=events)
def test_never_allows_while_open_before_the_cool_down(
    policy: BreakerPolicy, steps: list[tuple[str, int]]
) -> None:
    """Whatever happens, an open breaker refuses until its cool-down, computed here
    independently, has passed; and the cool-down never exceeds the cap."""
    clock = FakeClock()
    breaker = Breaker()
    open_until: datetime | None = None
    cool_down = policy.cool_down
    for kind, step_ms in steps:
        clock.advance(timedelta(milliseconds=step_ms))
        now = clock.now()
        before = breaker
        if kind == "ask":
            allowed, breaker = breaker.allows(policy, now)
            if before.state is CircuitState.OPEN:
                assert open_until is not None
                assert allowed == (now >= open_until)
            if before.state is CircuitState.HALF_OPEN and before.probing:
                assert before.probe_at is not None
                assert allowed == (now >= before.probe_at + cool_down)
        else:
            breaker = breaker.record(policy, kind == "success", now)
        if breaker.state is CircuitState.OPEN and before.state is not CircuitState.OPEN:
            first = before.state is CircuitState.CLOSED
            cool_down = policy.cool_down if first else min(cool_down * 2, policy.max_cool_down)
            open_until = now + cool_down
            assert breaker.cool_down == cool_down
        assert breaker.cool_down is None or breaker.cool_down <= policy.max_cool_down
        if breaker.state is not CircuitState.CLOSED:
            assert breaker.recent == ()


def test_retry_at_is_the_end_of_the_open_period_or_of_a_lost_probe() -> None:
    policy = BreakerPolicy()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    breaker = Breaker()
    assert breaker.retry_at(policy) is None
    for n in range(policy.consecutive_failures):
        breaker = breaker.record(policy, False, start + timedelta(seconds=n))
    opened = start + timedelta(seconds=policy.consecutive_failures - 1)
    assert breaker.retry_at(policy) == opened + timedelta(seconds=30)

    _, probing = breaker.allows(policy, opened + timedelta(seconds=31))
    assert probing.retry_at(policy) == opened + timedelta(seconds=61)
