"""Alarm policies and their verdicts: is an endpoint healthy, degraded or down?

Everything here is pure. The store counts every endpoint's attempts per minute
(:class:`Minute`); :func:`assess` reads the minutes of the windows an
:class:`AlarmPolicy` names and says which alarms are raised at ``now``. The
health monitor (:mod:`tidings.engine.health`) acts on the verdict.

Counts are sums of attempts and deliveries over a window, never averages of
ratios. A window covers every minute that overlaps it, so it may count up to
a minute more than its length.

* **warning**: at least ``warning_failed_attempts`` failed attempts in
  ``warning_window_s``;
* **critical**: at least ``critical_dead_deliveries`` deliveries died in
  ``critical_dead_window_s``, or the endpoint has failed with no success for
  ``critical_silence_s``, with at least ``critical_silence_failed_attempts``
  failed attempts (probes count) in that time.

A policy is the defaults below, overridden field by field by the tenant's
settings and then by the endpoint's (:func:`policy_of`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any, Literal

from tidings.domain.circuit import BreakerPolicy

__all__ = ["AlarmPolicy", "Assessment", "Minute", "assess", "policy_of"]

MINUTE = timedelta(minutes=1)
_SAMPLES = BreakerPolicy().max_samples  # the most attempts the ratio rule looks at
Suspend = Literal["auto", "alert_only"]


class Level(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class AlarmPolicy:
    """When an endpoint's alarms are raised and what follows (every field may be
    set per tenant and per endpoint)."""

    warning_failed_attempts: int = 5
    warning_window_s: float = 15 * 60
    critical_dead_deliveries: int = 10
    critical_dead_window_s: float = 30 * 60
    critical_silence_s: float = 30 * 60
    critical_silence_failed_attempts: int = 10
    breaker_consecutive_failures: int = 5
    breaker_failure_ratio: float = 0.5
    breaker_min_attempts: int = 10
    breaker_window_s: float = 60
    breaker_cool_down_s: float = 30
    breaker_max_cool_down_s: float = 10 * 60
    suspend: Suspend = "auto"
    """``auto``: a critical alarm suspends the endpoint; ``alert_only``: it only tells."""
    auto_resume: bool = False
    """Resume a suspended endpoint once a health probe succeeds."""
    drain_rate_per_s: float = 50.0
    """How fast held deliveries go once resumed (the endpoint's rate limit, if lower)."""

    def __post_init__(self) -> None:
        for name in (
            "warning_failed_attempts",
            "critical_dead_deliveries",
            "critical_silence_failed_attempts",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("warning_window_s", "critical_dead_window_s", "critical_silence_s"):
            if not MINUTE.total_seconds() <= getattr(self, name) <= MAX_WINDOW_S:
                raise ValueError(f"{name} must be between 60 and {MAX_WINDOW_S:.0f} seconds")
        if self.suspend not in ("auto", "alert_only"):
            raise ValueError("suspend must be 'auto' or 'alert_only'")
        if not 0 < self.drain_rate_per_s <= 10_000:
            raise ValueError("drain_rate_per_s must be above 0 and at most 10000")
        self._check_breaker()

    def _check_breaker(self) -> None:
        """The breaker's own checks, named as this policy's fields."""
        if self.breaker_consecutive_failures < 1:
            raise ValueError("breaker_consecutive_failures must be at least 1")
        if not 0 < self.breaker_failure_ratio <= 1:
            raise ValueError("breaker_failure_ratio must be above 0 and at most 1")
        if not 1 <= self.breaker_min_attempts <= _SAMPLES:
            raise ValueError(f"breaker_min_attempts must be between 1 and {_SAMPLES}")
        for name in ("breaker_window_s", "breaker_cool_down_s", "breaker_max_cool_down_s"):
            if not 0 < getattr(self, name) <= MAX_WINDOW_S:
                raise ValueError(f"{name} must be above 0 and at most {MAX_WINDOW_S:.0f} seconds")
        if self.breaker_max_cool_down_s < self.breaker_cool_down_s:
            raise ValueError(
                f"breaker_max_cool_down_s ({self.breaker_max_cool_down_s:g}) must be at least "
                f"breaker_cool_down_s ({self.breaker_cool_down_s:g})"
            )

    @property
    def breaker(self) -> BreakerPolicy:
        return _breaker(
            self.breaker_consecutive_failures,
            self.breaker_failure_ratio,
            self.breaker_min_attempts,
            self.breaker_window_s,
            self.breaker_cool_down_s,
            self.breaker_max_cool_down_s,
        )

    @property
    def lookback(self) -> timedelta:
        """How far back :func:`assess` needs the minutes."""
        longest = max(self.warning_window_s, self.critical_dead_window_s, self.critical_silence_s)
        return timedelta(seconds=longest) + 2 * MINUTE

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


MAX_WINDOW_S = 24 * 3600.0
FIELDS = frozenset(f.name for f in fields(AlarmPolicy))


@lru_cache(maxsize=256)
def _breaker(
    consecutive: int, ratio: float, min_attempts: int, window_s: float, cool_s: float, max_s: float
) -> BreakerPolicy:
    return BreakerPolicy(
        consecutive_failures=consecutive,
        failure_ratio=ratio,
        min_attempts=min_attempts,
        window=timedelta(seconds=window_s),
        cool_down=timedelta(seconds=cool_s),
        max_cool_down=timedelta(seconds=max_s),
    )


DEFAULT = AlarmPolicy()


@lru_cache(maxsize=4096)
def policy_of(tenant_overrides: str | None, endpoint_overrides: str | None) -> AlarmPolicy:
    """The policy in force: the defaults, then the tenant's overrides, then the
    endpoint's (each stored as a JSON object of the fields it sets)."""
    if not tenant_overrides and not endpoint_overrides:
        return DEFAULT
    merged = {**_fields_of(tenant_overrides), **_fields_of(endpoint_overrides)}
    return AlarmPolicy(**merged)


@lru_cache(maxsize=4096)
def policy_in_force(tenant_overrides: str | None, endpoint_overrides: str | None) -> AlarmPolicy:
    """:func:`policy_of`, for the engine: never raises. The API checks each level as it is
    set, but a tenant's change and an endpoint's made at once could each pass alone
    and clash together; then the endpoint's own fields win over the tenant's, and a
    level that cannot apply at all is left out."""
    for tenant, endpoint in (
        (tenant_overrides, endpoint_overrides),
        (None, endpoint_overrides),
        (tenant_overrides, None),
    ):
        try:
            return policy_of(tenant, endpoint)
        except (ValueError, TypeError, OverflowError):
            continue
    return DEFAULT


def _fields_of(overrides: str | None) -> dict[str, Any]:
    if not overrides:
        return {}
    data = json.loads(overrides)
    # A field a newer version stored and this one does not know is skipped.
    return {k: v for k, v in data.items() if k in FIELDS}


def merged_overrides(current: str | None, changes: Mapping[str, Any]) -> str | None:
    """Stored overrides after a PATCH: a value sets a field, None removes it. Fields this
    version does not know (a newer one stored them) are kept."""
    data: dict[str, Any] = json.loads(current) if current else {}
    for name, value in changes.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return json.dumps(data, separators=(",", ":")) if data else None


# the verdict ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Minute:
    """One endpoint's results within the minute starting at ``start``."""

    start: datetime
    attempts: int = 0
    failures: int = 0
    successes: int = 0
    dead: int = 0


@dataclass(frozen=True, slots=True)
class Assessment:
    """The alarms raised, and the counts that raised them (or did not)."""

    warning: bool
    critical: bool
    failed_attempts: int
    """Failed attempts in the warning window."""
    dead_deliveries: int
    """Deliveries that died in the critical window."""
    failing_since: datetime | None
    """Start of the minute of the first failure since the last success (None: no
    failure since the last success)."""
    failures_since: int
    """Failed attempts since then."""
    reason: str
    """Why the highest alarm was raised ("" when none was)."""

    @property
    def level(self) -> Level | None:
        if self.critical:
            return Level.CRITICAL
        return Level.WARNING if self.warning else None


def assess(policy: AlarmPolicy, minutes: Sequence[Minute], now: datetime) -> Assessment:
    """The alarms of an endpoint whose recorded ``minutes`` (any order, from at least
    ``policy.lookback`` ago) are these."""
    ordered = sorted(minutes, key=lambda m: m.start)
    failed = _sum(ordered, now, policy.warning_window_s, "failures")
    dead = _sum(ordered, now, policy.critical_dead_window_s, "dead")
    failing_since, failures_since = _failing_streak(ordered)
    silence = timedelta(seconds=policy.critical_silence_s)
    silent = (
        failing_since is not None
        and failing_since <= now - silence
        and failures_since >= policy.critical_silence_failed_attempts
    )
    dying = dead >= policy.critical_dead_deliveries
    reason = ""
    if dying:
        reason = (
            f"{dead} deliveries died in the last {_minutes(policy.critical_dead_window_s)}"
            f" (critical at {policy.critical_dead_deliveries})"
        )
    elif silent:
        reason = (
            f"no success for {_minutes(policy.critical_silence_s)},"
            f" with {failures_since} failed attempts"
            f" (critical at {policy.critical_silence_failed_attempts})"
        )
    elif failed >= policy.warning_failed_attempts:
        reason = (
            f"{failed} failed attempts in the last {_minutes(policy.warning_window_s)}"
            f" (warning at {policy.warning_failed_attempts})"
        )
    return Assessment(
        warning=failed >= policy.warning_failed_attempts,
        critical=dying or silent,
        failed_attempts=failed,
        dead_deliveries=dead,
        failing_since=failing_since,
        failures_since=failures_since,
        reason=reason,
    )


def _sum(ordered: Sequence[Minute], now: datetime, window_s: float, name: str) -> int:
    """The sum of ``name`` over the minutes that overlap the window ending at ``now``."""
    since = now - timedelta(seconds=window_s)
    return sum(getattr(m, name) for m in ordered if m.start + MINUTE > since)


def _failing_streak(ordered: Sequence[Minute]) -> tuple[datetime | None, int]:
    """When the failures since the last minute with a success began, and how many."""
    since: datetime | None = None
    count = 0
    for minute in reversed(ordered):
        if minute.successes:
            break
        if minute.failures:
            since = minute.start
            count += minute.failures
    return since, count


def _minutes(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:g} min" if minutes < 120 else f"{minutes / 60:g} h"
