"""Endpoint health in memory: suspensions and their drain, breakers, minutes, notices.

The bodies of the SQL stores' health transactions (``tidings.store.health``)
over :class:`~tidings.store.memory.tables.Tables`, with the same rules: a
suspension holds the endpoint's waiting deliveries; a resumption closes its
breaker, forgets its outage's per-minute results (or they would suspend it again)
and makes its held deliveries due one after another, in the order they were
created, at the drain rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from tidings import ids
from tidings.domain import fanout
from tidings.domain.alarms import Minute
from tidings.domain.circuit import Breaker, CircuitState
from tidings.domain.models import (
    DeliveryState,
    EndpointHealth,
    EndpointKind,
    EndpointState,
    Suspension,
)
from tidings.exceptions import Conflict
from tidings.store.memory.tables import Tables

SUSPENSIONS_SHOWN = 20


def suspend(
    tables: Tables, endpoint_id: str, reason: str, by: str, now: datetime
) -> tuple[Suspension, int]:
    """Suspend the (active) endpoint and hold its pending deliveries: the suspension
    and how many were held."""
    endpoint = tables.endpoints[endpoint_id]
    if endpoint.state is not EndpointState.ACTIVE:
        raise Conflict(
            f"the endpoint is {endpoint.state}, not active: only an active one can be suspended"
        )
    tables.endpoints[endpoint_id] = replace(endpoint, state=EndpointState.SUSPENDED, updated_at=now)
    suspension = Suspension(
        id=ids.new_id(ids.SUSPENSION),
        endpoint_id=endpoint_id,
        tenant_id=endpoint.tenant_id,
        suspended_at=now,
        reason=reason,
        suspended_by=by,
    )
    tables.suspensions.setdefault(endpoint_id, []).append(suspension)
    pending = tables.waiting_of(endpoint_id, DeliveryState.PENDING)
    for row in pending:
        tables.move(row, DeliveryState.HELD, now)
    return suspension, len(pending)


def resume(
    tables: Tables, endpoint_id: str, by: str, now: datetime, drain_rate_per_s: float
) -> tuple[Suspension, int]:
    """Resume the (suspended) endpoint: the suspension ended and how many drain."""
    endpoint = tables.endpoints[endpoint_id]
    if endpoint.state is not EndpointState.SUSPENDED:
        raise Conflict(
            f"the endpoint is {endpoint.state}, not suspended: there is nothing to resume"
        )
    tables.endpoints[endpoint_id] = replace(endpoint, state=EndpointState.ACTIVE, updated_at=now)
    history = tables.suspensions.get(endpoint_id, [])
    current = next((s for s in reversed(history) if s.resumed_at is None), None)
    assert current is not None, "a suspended endpoint has an open suspension"
    ended = replace(current, resumed_at=now, resumed_by=by)
    history[history.index(current)] = ended
    held = sorted(
        tables.waiting_of(endpoint_id, DeliveryState.HELD), key=lambda r: (r.created_at, r.seq)
    )
    for row, due in fanout.drain_schedule(held, now, drain_rate_per_s):
        tables.move(row, DeliveryState.PENDING, now)
        row.retry_base = row.attempts
        row.next_attempt_at = due
    for key in [k for k in tables.minutes if k[0] == endpoint_id]:
        del tables.minutes[key]
    tables.breakers[endpoint_id] = (Breaker(state=CircuitState.CLOSED), now)
    return ended, len(held)


def health_of(tables: Tables, endpoint_ids: Sequence[str]) -> dict[str, EndpointHealth]:
    """The breaker, held deliveries and suspensions (newest first) of each endpoint."""
    found = {}
    for endpoint_id in endpoint_ids:
        stored = tables.breakers.get(endpoint_id)
        # Newest first: in the order they were made (their ids sort so only to the
        # millisecond).
        history = tables.suspensions.get(endpoint_id, [])[::-1]
        found[endpoint_id] = EndpointHealth(
            None if stored is None else stored[0],
            len(tables.waiting_of(endpoint_id, DeliveryState.HELD)),
            tuple(history[:SUSPENSIONS_SHOWN]),
        )
    return found


def held_counts(tables: Tables) -> dict[str, int]:
    """Held deliveries of each endpoint that has any."""
    counts: dict[str, int] = {}
    for row in tables.in_state[DeliveryState.HELD].values():
        counts[row.endpoint_id] = counts.get(row.endpoint_id, 0) + 1
    return counts


def minutes_since(tables: Tables, since: datetime) -> dict[str, list[Minute]]:
    """The per-minute results of every webhook endpoint from ``since`` on."""
    found: dict[str, list[Minute]] = {}
    for (endpoint_id, minute), counts in sorted(tables.minutes.items()):
        endpoint = tables.endpoints.get(endpoint_id)
        if minute >= since and endpoint is not None and endpoint.kind is EndpointKind.WEBHOOK:
            found.setdefault(endpoint_id, []).append(Minute(minute, *counts))
    return found


def last_errors(
    tables: Tables, endpoint_id: str, since: datetime, limit: int
) -> list[tuple[datetime, str]]:
    """The endpoint's latest failed attempts' times and errors, newest first."""
    failed = [
        (attempt.started_at, _error_text(attempt.status_code, attempt.error))
        for row in tables.of_endpoint.get(endpoint_id, {}).values()
        if row.updated_at >= since
        for attempt in tables.attempts.get(row.id, ())
        if attempt.started_at >= since
        and (
            attempt.error is not None
            or (attempt.status_code is not None and not 200 <= attempt.status_code < 300)
        )
    ]
    failed.sort(key=lambda found: found[0], reverse=True)
    return failed[:limit]


def _error_text(status: int | None, error: str | None) -> str:
    if error and status:
        return f"HTTP {status}: {error}"
    return error or f"HTTP {status}"


def last_notice_at(tables: Tables, endpoint_id: str, url: str, kind: str) -> datetime | None:
    """When the last notice of ``kind`` about the endpoint at ``url`` went out."""
    return max(
        (
            n.sent_at
            for n in tables.notices
            if n.endpoint_id == endpoint_id and n.url == url and n.kind == kind
        ),
        default=None,
    )


def expire_held(tables: Tables, before: datetime, reason: str, now: datetime) -> int:
    """Deliveries held since before ``before`` die with ``reason``; how many did."""
    expired = [
        row for row in tables.in_state[DeliveryState.HELD].values() if row.updated_at < before
    ]
    for row in expired:
        tables.move(row, DeliveryState.DEAD, now)
        row.dead_reason = reason
    return len(expired)


def prune_minutes(tables: Tables, before: datetime) -> int:
    """Forget per-minute results older than any window looks back."""
    old = [key for key in tables.minutes if key[1] < before]
    for key in old:
        del tables.minutes[key]
    return len(old)
