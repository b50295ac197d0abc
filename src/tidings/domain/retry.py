"""The retry policy: what one delivery attempt's outcome means, and when to try again.

Everything here is a pure function: the current time and the random source are
parameters, so the engine passes its :class:`~tidings.clock.Clock`'s ``now()`` and
a ``random.Random``, and tests pass fixed datetimes and a seeded generator.

The policy, in the order :func:`decide` applies it:

* **Success** is a ``2xx`` answer and nothing else. A ``3xx`` is *not* success:
  redirects are not followed (a redirect could point the request anywhere, past
  the address guard), so it is retried like any other failure.
* **Blocked**: an attempt the address guard refused (``ErrorClass.BLOCKED``, an
  SSRF refusal) is dead at once and never retried; the reason carries its detail.
* **Rejected**: a refusal the channel marks as permanent (an SMTP ``5xx`` reply)
  is dead at once and never retried.
* **Gone**: ``410 Gone`` is the receiver saying the endpoint is gone for good;
  the message is dead and the decision asks for the endpoint to be disabled.
* Everything else (other ``3xx``/``4xx``/``5xx``, timeouts, connection errors,
  no response at all) is **retryable**, along a schedule:

  - ``schedule[i]`` is the delay in seconds before attempt ``i + 1``, and
    ``len(schedule)`` is the most attempts a message gets. :data:`DEFAULT_SCHEDULE`
    sends at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h later.
    After the last attempt fails the message is dead, *exhausted*.
  - Each non-zero delay gets ±20 % uniform **jitter** (:data:`JITTER`), so the
    retries of many messages that failed together do not arrive together.
  - A parseable **Retry-After** header (seconds or an HTTP-date, on any retryable
    status, typically 429 or 503) *replaces* the scheduled delay, clamped to
    ``[1 s, retry_after_max]`` so a receiver can neither make us hammer it nor
    park a message for a week. It does not add attempts.
* **Expiry**: a message is kept at most ``retention`` after it was created. When
  that has passed, or the next attempt would fall after it, the message is dead,
  *expired*, rather than retried.

A dead :class:`Decision` always has a :class:`DeadReason` (its ``cause``) and a
``reason``, human-readable, which that cause wrote: it starts with the cause's
stable prefix (``expired:``, ``exhausted:``, ``gone:``, ``blocked:``,
``rejected:``), which is what is stored and shown; the cause itself is what code
reads, so nothing parses the text again.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum

from tidings.domain.outcome import ErrorClass, Outcome

__all__ = [
    "DEFAULT_SCHEDULE",
    "JITTER",
    "MAX_SCHEDULE_DELAY",
    "MAX_SCHEDULE_LENGTH",
    "DeadReason",
    "Decision",
    "Verdict",
    "decide",
    "is_expired",
    "jittered",
    "parse_retry_after",
    "validate_schedule",
]

DEFAULT_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
"""Seconds before each attempt; ``len(DEFAULT_SCHEDULE)`` is the maximum number of attempts."""

JITTER = 0.2
"""Each non-zero delay is drawn uniformly from ``[delay * (1 - JITTER), delay * (1 + JITTER)]``."""

MAX_SCHEDULE_LENGTH = 20
"""The most entries (hence attempts) a user-supplied schedule may have."""

MAX_SCHEDULE_DELAY = timedelta(days=7)
"""The longest single delay a user-supplied schedule may ask for."""

RETRY_AFTER_MIN = timedelta(seconds=1)
"""The shortest delay a Retry-After header can obtain."""

_DELTA_SECONDS = re.compile(r"[0-9]+")
# Longer digit strings are capped rather than parsed: int() refuses > 4300 digits
# and timedelta overflows long before that. ~31 years is "very long" for any caller.
_DELTA_SECONDS_MAX_DIGITS = 9
_DELTA_SECONDS_CAP = 10**_DELTA_SECONDS_MAX_DIGITS


class Verdict(StrEnum):
    """What becomes of a message after an attempt."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"
    DEAD = "dead"


class DeadReason(StrEnum):
    """Why a delivery died, by cause. The value is the stable prefix of the stored
    ``dead_reason`` (which :meth:`because` writes) and the ``reason`` label of the
    ``tidings_deliveries_dead`` metric."""

    EXHAUSTED = "exhausted"
    """Its last attempt failed."""
    EXPIRED = "expired"
    """It outlived its retention (or its endpoint's held retention)."""
    GONE = "gone"
    """Its endpoint answered ``410 Gone``."""
    BLOCKED = "blocked"
    """The address guard refused its destination."""
    REJECTED = "rejected"
    """The receiver refused it for good (an SMTP 5xx, an email that cannot be built)."""
    DISABLED = "disabled"
    """Its endpoint was disabled (after a 410) while it waited."""
    DELETED = "deleted"
    """Its endpoint was deleted while it waited."""

    def because(self, detail: str) -> str:
        """The stored reason: ``"expired: <detail>"``."""
        return f"{self.value}: {detail}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer to one outcome."""

    verdict: Verdict
    next_attempt_at: datetime | None = None
    """When to try again; set for :attr:`Verdict.RETRY` only."""
    detail: str | None = None
    """What made it dead, in words (``"8 attempts"``); set for :attr:`Verdict.DEAD` only."""
    disable_endpoint: bool = False
    """True when the endpoint answered ``410 Gone`` and should be disabled."""
    cause: DeadReason | None = None
    """Why the message is dead, as code reads it; set for :attr:`Verdict.DEAD` only."""

    def __post_init__(self) -> None:
        if (self.verdict is Verdict.RETRY) != (self.next_attempt_at is not None):
            raise ValueError("next_attempt_at is required for RETRY and only for RETRY")
        dead = self.verdict is Verdict.DEAD
        if (dead and (self.cause is None or self.detail is None)) or (
            not dead and (self.cause is not None or self.detail is not None)
        ):
            raise ValueError(
                "a DEAD decision, and only a DEAD one, has a reason: a cause and its detail"
            )

    @property
    def reason(self) -> str | None:
        """Why the message is dead, as stored and shown: its :attr:`cause` writes it from
        :attr:`detail` (see :meth:`DeadReason.because`)."""
        return None if self.cause is None else self.cause.because(self.detail or "")

    @classmethod
    def dead(cls, cause: DeadReason, detail: str, *, disable_endpoint: bool = False) -> Decision:
        """A DEAD decision whose reason ``cause`` writes from ``detail``."""
        return cls(Verdict.DEAD, detail=detail, disable_endpoint=disable_endpoint, cause=cause)


ENDPOINT_GONE = "the endpoint answered 410 Gone"
"""Why an endpoint was disabled: its receiver said it is gone for good."""
ENDED_BY_DISABLE = DeadReason.DISABLED.because("the endpoint was disabled after answering 410 Gone")
"""The reason of a waiting delivery whose endpoint was disabled."""
ENDED_BY_DELETE = DeadReason.DELETED.because("the endpoint was deleted")
"""The reason of a waiting delivery whose endpoint was deleted."""


def decide(
    outcome: Outcome,
    *,
    attempt: int,
    created_at: datetime,
    now: datetime,
    schedule: Sequence[float] = DEFAULT_SCHEDULE,
    retention: timedelta = timedelta(days=3),
    retry_after_max: timedelta = timedelta(hours=1),
    rng: random.Random,
) -> Decision:
    """Decide what follows ``outcome``, the result of attempt number ``attempt`` (1-based).

    ``created_at`` is when the message was created and ``now`` when the attempt
    finished, both timezone-aware. See the module docstring for the policy.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    if retry_after_max < RETRY_AFTER_MIN:
        raise ValueError(
            f"retry_after_max must be at least {RETRY_AFTER_MIN}, got {retry_after_max}"
        )
    _require_aware(created_at=created_at, now=now)

    final = _final(outcome)
    if final is not None:
        return final

    last = f"{attempt} attempt{'' if attempt == 1 else 's'}, last: {outcome.summary}"
    if attempt >= len(schedule):
        return Decision.dead(DeadReason.EXHAUSTED, last)

    delay = timedelta(seconds=jittered(schedule[attempt], rng))
    if outcome.retry_after is not None:
        asked = parse_retry_after(outcome.retry_after, now)
        if asked is not None:
            delay = min(max(asked, RETRY_AFTER_MIN), retry_after_max)

    next_attempt_at = now + delay
    if is_expired(created_at, now, retention) or next_attempt_at > created_at + retention:
        return Decision.dead(DeadReason.EXPIRED, f"older than {_human(retention)} after {last}")
    return Decision(Verdict.RETRY, next_attempt_at=next_attempt_at)


def _final(outcome: Outcome) -> Decision | None:
    """The decision for an outcome that ends the delivery whatever the schedule says."""
    if outcome.succeeded:
        return Decision(Verdict.SUCCEEDED)
    if outcome.error == ErrorClass.BLOCKED:
        return Decision.dead(DeadReason.BLOCKED, outcome.detail or "destination address refused")
    if outcome.permanent:
        # "rejected: SMTP 550 5.1.1 no such user", "rejected: unsendable: <why>"
        separator = " " if outcome.status is not None else ": "
        detail = f"{separator}{outcome.detail}" if outcome.detail else ""
        return Decision.dead(DeadReason.REJECTED, f"{outcome.summary}{detail}")
    if outcome.status == 410 and outcome.protocol == "HTTP":
        return Decision.dead(DeadReason.GONE, "endpoint answered 410", disable_endpoint=True)
    return None


def parse_retry_after(value: str, now: datetime) -> timedelta | None:
    """How long a ``Retry-After`` header value asks to wait, or ``None`` if it is garbage.

    Accepts delta-seconds (a non-negative integer) and an HTTP-date (RFC 9110
    IMF-fixdate, and the obsolete RFC 850 and asctime forms; a date without a zone
    is taken as UTC). A date in the past gives ``timedelta(0)``. Never raises.
    """
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        digits = text.lstrip("0")
        if len(digits) > _DELTA_SECONDS_MAX_DIGITS:
            return timedelta(seconds=_DELTA_SECONDS_CAP)
        return timedelta(seconds=int(digits or "0"))
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        wait = when - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(wait, timedelta(0))


def jittered(delay: float, rng: random.Random) -> float:
    """``delay`` seconds with ±:data:`JITTER` uniform jitter; ``0`` stays ``0``."""
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(f"a delay must be a finite number of seconds >= 0, got {delay!r}")
    if delay == 0:
        return 0.0
    low, high = delay * (1 - JITTER), delay * (1 + JITTER)
    # Clamp: float rounding in uniform() may land a hair outside [low, high].
    return min(max(rng.uniform(low, high), low), high)


def validate_schedule(schedule: Sequence[float]) -> tuple[float, ...]:
    """Check a user-supplied retry schedule and return it as a tuple of floats.

    It must have 1 to :data:`MAX_SCHEDULE_LENGTH` entries, each a finite number of
    seconds between 0 and :data:`MAX_SCHEDULE_DELAY`. Raises ``ValueError`` otherwise.
    """
    if isinstance(schedule, str | bytes) or not isinstance(schedule, Sequence):
        raise ValueError("retry schedule must be a list of delays in seconds")
    if not 1 <= len(schedule) <= MAX_SCHEDULE_LENGTH:
        raise ValueError(
            f"retry schedule must have 1 to {MAX_SCHEDULE_LENGTH} entries, got {len(schedule)}"
        )
    limit = MAX_SCHEDULE_DELAY.total_seconds()
    for index, delay in enumerate(schedule):
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise ValueError(f"retry schedule entry {index} must be a number, got {delay!r}")
        if not math.isfinite(delay) or not 0 <= delay <= limit:
            raise ValueError(
                f"retry schedule entry {index} must be between 0 and {limit:g} seconds "
                f"({_human(MAX_SCHEDULE_DELAY)}), got {delay!r}"
            )
    return tuple(float(delay) for delay in schedule)


def is_expired(created_at: datetime, now: datetime, retention: timedelta) -> bool:
    """True once ``now`` is at or past ``created_at + retention``."""
    return now >= created_at + retention


def _require_aware(**moments: datetime) -> None:
    for name, moment in moments.items():
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware, got {moment!r}")


def _human(span: timedelta) -> str:
    """``timedelta(days=3)`` -> ``"3 days"``; the largest unit that divides ``span`` exactly."""
    seconds = span.total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds:g} seconds"
