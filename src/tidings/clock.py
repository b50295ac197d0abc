"""Time, behind a seam so tests can hold it still.

The engine asks a :class:`Clock` for the time and never calls ``datetime.now``
or ``time.monotonic`` itself; tests pass a :class:`FakeClock` and move it by hand.
A clock has two readings: :meth:`Clock.now`, the wall time that is stored and
compared with stored times, and :meth:`Clock.monotonic`, seconds that never go
back, for pacing within one process (rate limits, how often to re-read).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; never goes back, even when ``now`` does."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock whose wall time moves only when told to.

    Its monotonic reading runs with real time *plus* every :meth:`advance`: an
    engine under test still paces itself (re-reads endpoints, refills rate-limit
    tokens) while the wall time stands still, and moving the clock on moves its
    pacing on as far.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._advanced_s = 0.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return time.monotonic() + self._advanced_s

    def advance(self, delta: timedelta | float) -> None:
        delta = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        self._now += delta
        self._advanced_s += max(delta.total_seconds(), 0.0)
