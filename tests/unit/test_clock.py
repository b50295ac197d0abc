"""The clocks' two readings."""

from __future__ import annotations

import time
from datetime import timedelta

from tidings.clock import FakeClock, SystemClock


def test_the_fake_clock_s_monotonic_reading_moves_with_it_and_never_back() -> None:
    clock = FakeClock()
    start_wall, start = clock.now(), clock.monotonic()

    clock.advance(timedelta(minutes=2))
    moved = clock.monotonic()
    clock.advance(-30)  # the wall time may go back; the monotonic reading may not

    assert clock.now() == start_wall + timedelta(seconds=90)
    assert moved - start >= 120
    assert clock.monotonic() >= moved


def test_the_system_clock_s_monotonic_reading_moves_with_time() -> None:
    clock = SystemClock()
    first = clock.monotonic()
    time.sleep(0.01)

    assert clock.monotonic() - first >= 0.01
    assert clock.now().tzinfo is not None
