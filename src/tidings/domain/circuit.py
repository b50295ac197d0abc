"""A circuit breaker: when to stop trying a destination that keeps failing, and when to retry it.

Everything here is pure: a :class:`Breaker` is a value, and every transition is a
function of (breaker, event, now) that returns a new one. The caller keeps the
breaker, passes its :class:`~tidings.clock.Clock`'s ``now()`` (timezone-aware)
and stores what comes back. Nothing here does I/O or reads the time itself.

The states, with the :class:`BreakerPolicy` fields that move between them:

* **CLOSED**: every attempt may go. Each result is counted, and the breaker
  opens on a failure that makes

  - ``consecutive_failures`` failures in a row, or
  - (when ``failure_ratio`` is set) failures make up at least ``failure_ratio``
    of the attempts of the last ``window``, counting at least ``min_attempts``
    of them (and at most the last ``max_samples``: the state stays small however
    busy the destination). A success never opens the breaker.

* **OPEN**: no attempt may go until ``cool_down`` has passed since it opened.
  The first open period lasts ``policy.cool_down``.
* **HALF_OPEN**: the first attempt asked for after the cool-down is the one
  *probe*; every other attempt is refused while it is out. A successful probe
  closes the breaker and forgets everything (counts and cool-down); a failed one
  opens it again for twice the last cool-down, capped at ``max_cool_down``.
  A probe whose result is never recorded (its caller was cancelled) is taken
  as lost after one cool-down, and the next attempt asked for becomes the probe,
  so a breaker cannot stay half-open for ever.

Results recorded while OPEN belong to attempts let through before it opened and
are ignored. The breaker cannot tell such a late result from the probe's while
HALF_OPEN; callers whose attempts are bounded well below ``cool_down`` never
have one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = ["Breaker", "BreakerPolicy", "CircuitState"]


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and for how long."""

    consecutive_failures: int = 5
    """Open after this many failures in a row."""
    failure_ratio: float | None = 0.5
    """Or open when failures / attempts reaches this (``None``: no ratio rule) ..."""
    min_attempts: int = 10
    """... over at least this many attempts ..."""
    window: timedelta = timedelta(seconds=60)
    """... made within this window."""
    cool_down: timedelta = timedelta(seconds=30)
    """How long the first open period lasts."""
    max_cool_down: timedelta = timedelta(minutes=10)
    """Each failed probe doubles the open period, up to this."""
    max_samples: int = 100
    """The ratio rule looks at no more than this many of the most recent attempts."""

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError(f"consecutive_failures must be >= 1, got {self.consecutive_failures}")
        if self.failure_ratio is not None and not 0 < self.failure_ratio <= 1:
            raise ValueError(f"failure_ratio must be in (0, 1], got {self.failure_ratio}")
        if not 1 <= self.min_attempts <= self.max_samples:
            raise ValueError(
                f"min_attempts must be between 1 and max_samples ({self.max_samples}), "
                f"got {self.min_attempts}"
            )
        if self.window <= timedelta(0) or self.cool_down <= timedelta(0):
            raise ValueError("window and cool_down must be positive")
        if self.max_cool_down < self.cool_down:
            raise ValueError("max_cool_down must be at least cool_down")


@dataclass(frozen=True, slots=True)
class Breaker:
    """The whole state of one breaker; a value, never changed in place."""

    state: CircuitState = CircuitState.CLOSED
    consecutive: int = 0
    """Failures in a row (CLOSED)."""
    recent: tuple[tuple[datetime, bool], ...] = ()
    """``(when, succeeded)`` of recent attempts, oldest first (CLOSED, ratio rule only)."""
    opened_at: datetime | None = None
    """When the current (or last) open period began."""
    cool_down: timedelta | None = None
    """How long the current (or last) open period lasts."""
    probing: bool = False
    """HALF_OPEN: the one probe is out."""
    probe_at: datetime | None = None
    """HALF_OPEN: when the probe was let through."""

    def retry_at(self, policy: BreakerPolicy | None = None) -> datetime | None:
        """When the next attempt may go: the end of the open period, or of a lost
        probe's wait. None while CLOSED (any time) or when that is not known."""
        if self.state is CircuitState.CLOSED:
            return None
        started = self.opened_at if self.state is CircuitState.OPEN else self.probe_at
        cool_down = self.cool_down or (policy or BreakerPolicy()).cool_down
        return None if started is None else started + cool_down

    def allows(self, policy: BreakerPolicy, now: datetime) -> tuple[bool, Breaker]:
        """Whether an attempt may go at ``now``, and the breaker to keep.

        CLOSED: yes. OPEN: no until ``opened_at + cool_down``; from then on the
        first call turns the breaker HALF_OPEN and lets that one attempt through
        as the probe. HALF_OPEN: no while the probe is out.
        """
        _require_aware(now)
        if self.state is CircuitState.CLOSED:
            return True, self
        cool_down = self.cool_down or policy.cool_down
        if self.state is CircuitState.OPEN:
            if self.opened_at is not None and now < self.opened_at + cool_down:
                return False, self
        elif self.probing and self.probe_at is not None and now < self.probe_at + cool_down:
            return False, self
        return True, replace(
            self, state=CircuitState.HALF_OPEN, cool_down=cool_down, probing=True, probe_at=now
        )

    def record(self, policy: BreakerPolicy, succeeded: bool, now: datetime) -> Breaker:
        """The breaker after an attempt finished at ``now``, ``succeeded`` or not."""
        _require_aware(now)
        if self.state is CircuitState.CLOSED:
            return self._counted(policy, succeeded, now)
        if self.state is CircuitState.OPEN:
            return self  # a late result of an attempt let through before it opened
        if succeeded:
            return Breaker()
        doubled = (self.cool_down or policy.cool_down) * 2
        return _opened(now, min(doubled, policy.max_cool_down))

    def _counted(self, policy: BreakerPolicy, succeeded: bool, now: datetime) -> Breaker:
        consecutive = 0 if succeeded else self.consecutive + 1
        recent = self.recent
        if policy.failure_ratio is not None:
            # Samples are in the order they were recorded, so those that left the
            # window are at the front: slicing keeps this cheap on every attempt.
            horizon = now - policy.window
            start = 0
            while start < len(recent) and recent[start][0] <= horizon:
                start += 1
            start = max(start, len(recent) + 1 - policy.max_samples)
            recent = (*recent[start:], (now, succeeded))
        if not succeeded and (
            consecutive >= policy.consecutive_failures or _ratio_reached(policy, recent)
        ):
            return _opened(now, policy.cool_down)
        # CLOSED: the other fields keep what the last open period left.
        return Breaker(self.state, consecutive, recent, self.opened_at, self.cool_down)


def _opened(now: datetime, cool_down: timedelta) -> Breaker:
    return Breaker(state=CircuitState.OPEN, opened_at=now, cool_down=cool_down)


def _ratio_reached(policy: BreakerPolicy, recent: tuple[tuple[datetime, bool], ...]) -> bool:
    if policy.failure_ratio is None or len(recent) < policy.min_attempts:
        return False
    failures = sum(1 for _, succeeded in recent if not succeeded)
    return failures / len(recent) >= policy.failure_ratio


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
