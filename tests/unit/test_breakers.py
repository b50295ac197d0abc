"""The engine's breakers on a fake clock: what they let go, what they record, what they adopt."""

from __future__ import annotations

from datetime import timedelta

from tidings.clock import FakeClock
from tidings.domain.circuit import Breaker, BreakerPolicy, CircuitState
from tidings.domain.outcome import ErrorClass, Outcome
from tidings.engine.breakers import ANY, Breakers

POLICY = BreakerPolicy(consecutive_failures=2, cool_down=timedelta(seconds=30))
FAILED = Outcome(503)


def _breakers(clock: FakeClock) -> Breakers:
    return Breakers(clock, lambda endpoint_id: POLICY)


def _open(breakers: Breakers, clock: FakeClock, endpoint_id: str = "ep_1") -> Breaker:
    assert breakers.record(endpoint_id, FAILED, clock.now()) is None  # one failure: still closed
    opened = breakers.record(endpoint_id, FAILED, clock.now())
    assert opened is not None
    assert opened.state is CircuitState.OPEN
    return opened


def test_a_closed_breaker_sets_no_limit_of_its_own() -> None:
    clock = FakeClock()
    breakers = _breakers(clock)

    assert breakers.room("ep_1", busy=7) == (ANY, None)
    assert breakers.lets_one_go("ep_1")
    assert breakers.next_probe_in(clock.now()) is None


def test_an_open_breaker_lets_nothing_go_until_its_probe_is_due() -> None:
    clock = FakeClock()
    breakers = _breakers(clock)
    _open(breakers, clock)

    assert breakers.room("ep_1", busy=0) == (0, clock.now() + POLICY.cool_down)
    assert not breakers.lets_one_go("ep_1")
    assert breakers.next_probe_in(clock.now()) == POLICY.cool_down.total_seconds()

    clock.advance(POLICY.cool_down)
    assert breakers.room("ep_1", busy=1) == (0, None)  # one is already on its way
    assert breakers.room("ep_1", busy=0) == (1, None)  # the probe
    assert breakers.lets_one_go("ep_1")
    assert not breakers.lets_one_go("ep_1")  # one probe at a time


def test_a_successful_probe_closes_the_breaker() -> None:
    clock = FakeClock()
    breakers = _breakers(clock)
    _open(breakers, clock)
    clock.advance(POLICY.cool_down)
    assert breakers.lets_one_go("ep_1")

    closed = breakers.record("ep_1", Outcome(200), clock.now())

    assert closed is not None
    assert closed.state is CircuitState.CLOSED


def test_refusals_before_the_receiver_leave_its_breaker_alone() -> None:
    clock = FakeClock()
    breakers = _breakers(clock)

    for error in (ErrorClass.BLOCKED, ErrorClass.UNSENDABLE, ErrorClass.INVALID_MESSAGE):
        for _ in range(3):
            outcome = Outcome(None, error, permanent=error is not ErrorClass.BLOCKED)
            assert breakers.record("ep_1", outcome, clock.now()) is None

    assert breakers.room("ep_1", busy=0) == (ANY, None)


def test_a_permanent_refusal_is_a_server_that_is_up() -> None:
    clock = FakeClock()
    breakers = _breakers(clock)
    rejected = Outcome(550, permanent=True, protocol="SMTP")

    for _ in range(5):
        assert breakers.record("ep_1", rejected, clock.now()) is None

    assert breakers.lets_one_go("ep_1")


def test_another_process_s_later_change_is_adopted_and_a_closing_says_so() -> None:
    clock = FakeClock()
    breakers = _breakers(clock)
    opened = _open(breakers, clock)
    changed_here = clock.now()

    # The store holds this process's own change: nothing to adopt.
    assert not breakers.adopt({"ep_1": (opened, changed_here)})
    assert not breakers.lets_one_go("ep_1")

    # Another process (or a resumption) closed it later: taken over, and said.
    clock.advance(5)
    assert breakers.adopt({"ep_1": (Breaker(), clock.now())})
    assert breakers.lets_one_go("ep_1")


def test_an_older_change_in_the_store_is_not_adopted() -> None:
    clock = FakeClock()
    breakers = _breakers(clock)
    clock.advance(60)
    _open(breakers, clock)

    assert not breakers.adopt({"ep_1": (Breaker(), clock.now() - timedelta(seconds=30))})
    assert not breakers.lets_one_go("ep_1")
