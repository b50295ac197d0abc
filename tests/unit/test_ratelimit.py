from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.domain.ratelimit import TokenBucket


def test_a_full_bucket_allows_a_burst_of_the_rate_then_waits() -> None:
    bucket = TokenBucket.full(rate=5, now=0.0)

    assert bucket.available(0.0) == 5
    bucket.take(5, 0.0)
    assert bucket.available(0.0) == 0
    assert bucket.wait(0.0) == 0.2
    assert bucket.available(0.2) == 1


def test_a_slow_rate_allows_one_attempt_at_a_time() -> None:
    bucket = TokenBucket.full(rate=0.5, now=0.0)

    assert bucket.available(0.0) == 1
    bucket.take(1, 0.0)
    assert bucket.wait(0.0) == 2.0
    assert bucket.available(1.9) == 0
    assert bucket.available(2.0) == 1


def test_an_earlier_time_refills_nothing_and_sets_no_clock_back() -> None:
    """Processes share a stored bucket with clocks a little apart: a claim that read an
    earlier time must not make a later one refill the same interval again."""
    bucket = TokenBucket.full(rate=10, now=10.0)
    bucket.take(10, 10.0)
    assert bucket.available(9.1) == 0
    assert bucket.available(10.0) == 0  # not the 9 tokens of 9.1 s to 10 s
    assert bucket.updated == 10.0


@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    steps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=50),
)
def test_attempts_never_exceed_burst_plus_rate_times_elapsed(
    rate: float, steps: list[float]
) -> None:
    bucket = TokenBucket.full(rate, now=0.0)
    now = 0.0
    taken = 0
    for step in steps:
        now += step
        n = bucket.available(now)
        bucket.take(n, now)
        taken += n
    assert taken <= max(1.0, rate) + rate * now + 1e-6
