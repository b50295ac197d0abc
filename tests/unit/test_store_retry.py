"""How long a background task waits after store errors in a row (see Tidings._supervise)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.app import STORE_RETRY_MAX_S, STORE_RETRY_S, store_retry_delay


def test_the_wait_doubles_from_the_first_up_to_the_longest() -> None:
    waits = [store_retry_delay(n) for n in range(1, 8)]
    assert waits[:3] == [STORE_RETRY_S, STORE_RETRY_S * 2, STORE_RETRY_S * 4]
    assert waits[-1] == STORE_RETRY_MAX_S


@given(st.integers(min_value=1, max_value=10**9))
def test_the_wait_is_never_longer_than_the_longest(failures: int) -> None:
    assert STORE_RETRY_S <= store_retry_delay(failures) <= STORE_RETRY_MAX_S
