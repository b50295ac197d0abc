"""Per-endpoint rate limits: a token bucket, pure in (state, now).

An endpoint with ``rate_limit_per_s = r`` gets at most ``r`` attempts a
second on average, with bursts of up to ``max(1, r)``. The dispatcher asks how
many attempts it may start now and, when none, how long until the next one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, now: float) -> TokenBucket:
        return cls(rate, max(1.0, rate), now)

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate)

    def available(self, now: float) -> int:
        """Whole attempts that may start at ``now``."""
        self._refill(now)
        return int(self.tokens)

    def take(self, n: int, now: float) -> None:
        self._refill(now)
        self.tokens -= n

    def wait(self, now: float) -> float:
        """Seconds until one attempt may start (0 if one may start now)."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        # Never back: a shared bucket is read by clocks a little apart (several
        # processes), and an earlier time would have the same interval refilled twice.
        self.updated = max(self.updated, now)
