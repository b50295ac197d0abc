"""The store's side of endpoint health: per-minute results, breakers, suspensions.

These are the bodies of the health transactions (see
:mod:`~tidings.store.sql.health_records`), each a function of an open connection,
and the rows the result write-back adds (:func:`minute_rows`, :func:`breaker_row`),
which every backend's hot path writes in its own SQL.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.engine import Connection

from tidings import ids
from tidings.domain import fanout
from tidings.domain.alarms import Minute
from tidings.domain.circuit import Breaker, CircuitState
from tidings.domain.models import (
    AttemptResult,
    DeliveryState,
    EndpointHealth,
    EndpointKind,
    EndpointState,
    Suspension,
)
from tidings.exceptions import Conflict
from tidings.store.sql.rows import fields_of
from tidings.store.sql.schema import (
    attempts,
    breakers,
    deliveries,
    endpoint_minutes,
    endpoints,
    notices,
    suspensions,
    to_micros,
)

_d = deliveries
SUSPENSIONS_SHOWN = 20
_MINUTE_US = 60_000_000


# what the result write-back adds ------------------------------------------------------


def minute_rows(results: Sequence[AttemptResult], now: datetime) -> list[tuple[Any, ...]]:
    """``(endpoint_id, minute, attempts, failures, successes, dead)`` to add, one per
    endpoint of ``results``, in the minute of ``now``, in the order of the ids."""
    minute = to_micros(now) // _MINUTE_US * _MINUTE_US  # type: ignore[operator]
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for result in results:
        row = counts[result.endpoint_id]
        row[0] += 1
        if result.state is DeliveryState.SUCCEEDED:
            row[2] += 1
        else:
            row[1] += 1
            row[3] += result.state is DeliveryState.DEAD
    return [(endpoint_id, minute, *counts[endpoint_id]) for endpoint_id in sorted(counts)]


def breaker_row(result: AttemptResult, now_us: int | None) -> tuple[Any, ...]:
    """``(endpoint_id, state, opened_at, cool_down_ms, changed_at)`` of a result's breaker."""
    breaker = result.breaker
    assert breaker is not None
    cool_down = breaker.cool_down
    return (
        result.endpoint_id,
        breaker.state.value,
        to_micros(breaker.opened_at),
        None if cool_down is None else cool_down // timedelta(milliseconds=1),
        now_us,
    )


def _breaker(row: Any) -> tuple[Breaker, datetime]:
    cool_down = None if row.cool_down_ms is None else timedelta(milliseconds=row.cool_down_ms)
    state = CircuitState(row.state)
    breaker = Breaker(state=state, opened_at=row.opened_at, cool_down=cool_down)
    return breaker, row.changed_at


# reads --------------------------------------------------------------------------------


def stored_breakers(conn: Connection) -> dict[str, tuple[Breaker, datetime]]:
    """Every endpoint's breaker as last written, and when."""
    return {row.endpoint_id: _breaker(row) for row in conn.execute(select(breakers))}


def health_of(conn: Connection, endpoint_ids: Sequence[str]) -> dict[str, EndpointHealth]:
    """The breaker, held deliveries and suspensions of each endpoint of ``endpoint_ids``."""
    if not endpoint_ids:
        return {}
    found = {
        row.endpoint_id: _breaker(row)[0]
        for row in conn.execute(select(breakers).where(breakers.c.endpoint_id.in_(endpoint_ids)))
    }
    held: dict[str, int] = {
        endpoint_id: int(n)
        for endpoint_id, n in conn.execute(
            select(_d.c.endpoint_id, func.count())
            .where(_d.c.state == DeliveryState.HELD, _d.c.endpoint_id.in_(endpoint_ids))
            .group_by(_d.c.endpoint_id)
        )
    }
    history: dict[str, list[Suspension]] = defaultdict(list)
    rows = conn.execute(
        select(suspensions)
        .where(suspensions.c.endpoint_id.in_(endpoint_ids))
        .order_by(suspensions.c.endpoint_id, suspensions.c.id.desc())
    )
    for row in rows:
        kept = history[row.endpoint_id]
        if len(kept) < SUSPENSIONS_SHOWN:
            kept.append(Suspension(**row._asdict()))
    return {
        e: EndpointHealth(found.get(e), held.get(e, 0), tuple(history[e])) for e in endpoint_ids
    }


def held_counts(conn: Connection) -> dict[str, int]:
    """Held deliveries of each endpoint that has any."""
    rows = conn.execute(
        select(_d.c.endpoint_id, func.count())
        .where(_d.c.state == DeliveryState.HELD)
        .group_by(_d.c.endpoint_id)
    )
    return {endpoint_id: int(n) for endpoint_id, n in rows}


def minutes_since(conn: Connection, since: datetime) -> dict[str, list[Minute]]:
    """The per-minute results of every webhook endpoint from ``since`` on."""
    m = endpoint_minutes.c
    rows = conn.execute(
        select(endpoint_minutes)
        .join(endpoints, endpoints.c.id == m.endpoint_id)
        .where(m.minute >= since, endpoints.c.kind == EndpointKind.WEBHOOK)
    )
    found: dict[str, list[Minute]] = defaultdict(list)
    for row in rows:
        found[row.endpoint_id].append(
            Minute(row.minute, row.attempts, row.failures, row.successes, row.dead)
        )
    return dict(found)


def last_errors(
    conn: Connection, endpoint_id: str, since: datetime, limit: int
) -> list[tuple[datetime, str]]:
    """The latest failed attempts' times and errors (status or error class), newest first."""
    a = attempts.c
    rows = conn.execute(
        select(a.started_at, a.status_code, a.error)
        .join(_d, _d.c.id == a.delivery_id)
        .where(
            _d.c.endpoint_id == endpoint_id,
            _d.c.updated_at >= since,
            a.started_at >= since,
            (a.error.is_not(None)) | (a.status_code < 200) | (a.status_code >= 300),
        )
        .order_by(a.started_at.desc())
        .limit(limit)
    )
    return [(row.started_at, _error_text(row.status_code, row.error)) for row in rows]


def last_notice_at(conn: Connection, endpoint_id: str, url: str, kind: str) -> datetime | None:
    """When the last notice of ``kind`` about the endpoint at ``url`` went out."""
    n = notices.c
    return conn.scalar(  # type: ignore[no-any-return]
        select(func.max(n.sent_at)).where(
            n.endpoint_id == endpoint_id, n.url == url, n.kind == kind
        )
    )


def _error_text(status: int | None, error: str | None) -> str:
    if error and status:
        return f"HTTP {status}: {error}"
    return error or f"HTTP {status}"


# writes -------------------------------------------------------------------------------


def suspend(
    conn: Connection, endpoint_id: str, reason: str, by: str, now: datetime
) -> tuple[Suspension, int]:
    """Suspend the (active) endpoint: its waiting deliveries are held from now on.
    Returns the suspension and how many deliveries it held."""
    state = conn.scalar(select(endpoints.c.state).where(endpoints.c.id == endpoint_id))
    if state != EndpointState.ACTIVE:
        raise Conflict(f"the endpoint is {state}, not active: only an active one can be suspended")
    tenant_id = conn.scalar(select(endpoints.c.tenant_id).where(endpoints.c.id == endpoint_id))
    conn.execute(
        update(endpoints)
        .where(endpoints.c.id == endpoint_id)
        .values(state=EndpointState.SUSPENDED, updated_at=now)
    )
    suspension = Suspension(
        id=ids.new_id(ids.SUSPENSION),
        endpoint_id=endpoint_id,
        tenant_id=str(tenant_id),
        suspended_at=now,
        reason=reason,
        suspended_by=by,
    )
    conn.execute(suspensions.insert().values(**fields_of(suspension)))
    held = conn.execute(
        update(_d)
        .where(_d.c.endpoint_id == endpoint_id, _d.c.state == DeliveryState.PENDING)
        .values(state=DeliveryState.HELD, updated_at=now)
    )
    return suspension, int(held.rowcount)


def resume(
    conn: Connection, endpoint_id: str, by: str, now: datetime, drain_rate_per_s: float
) -> tuple[Suspension, int]:
    """Resume the (suspended) endpoint; its held deliveries go back to pending, due one
    after another in the order they were created, ``drain_rate_per_s`` a second.
    Its breaker closes: whoever resumed it says it is up. Its alarms count afresh:
    the outage's per-minute results are forgotten, or they would suspend it again.
    Returns the suspension ended and how many deliveries drain."""
    state = conn.scalar(select(endpoints.c.state).where(endpoints.c.id == endpoint_id))
    if state != EndpointState.SUSPENDED:
        raise Conflict(f"the endpoint is {state}, not suspended: there is nothing to resume")
    conn.execute(
        update(endpoints)
        .where(endpoints.c.id == endpoint_id)
        .values(state=EndpointState.ACTIVE, updated_at=now)
    )
    current = conn.execute(
        select(suspensions)
        .where(suspensions.c.endpoint_id == endpoint_id, suspensions.c.resumed_at.is_(None))
        .order_by(suspensions.c.id.desc())
    ).first()
    assert current is not None, "a suspended endpoint has an open suspension"
    conn.execute(
        update(suspensions)
        .where(suspensions.c.id == current.id)
        .values(resumed_at=now, resumed_by=by)
    )
    held = conn.execute(
        select(_d.c.id)
        .where(_d.c.endpoint_id == endpoint_id, _d.c.state == DeliveryState.HELD)
        .order_by(_d.c.created_at, _d.c.id)
    ).scalars()
    drained = _drain(conn, held, now, drain_rate_per_s)
    conn.execute(delete(endpoint_minutes).where(endpoint_minutes.c.endpoint_id == endpoint_id))
    conn.execute(delete(breakers).where(breakers.c.endpoint_id == endpoint_id))
    conn.execute(
        breakers.insert().values(endpoint_id=endpoint_id, state=CircuitState.CLOSED, changed_at=now)
    )
    ended = Suspension(**{**current._asdict(), "resumed_at": now, "resumed_by": by})
    return ended, drained


def _drain(conn: Connection, held: Iterable[str], now: datetime, rate_per_s: float) -> int:
    schedule = fanout.drain_schedule(held, now, rate_per_s)
    rows = [{"b_id": d, "b_due": due, "b_now": now} for d, due in schedule]
    if rows:
        conn.execute(_DRAIN, rows)
    return len(rows)


def expire_held(conn: Connection, before: datetime, reason: str, now: datetime) -> int:
    """Deliveries held since before ``before`` die with ``reason``; how many did. (A held
    delivery is not written again until it drains: its last write is when it was held.)"""
    result = conn.execute(
        update(_d)
        .where(_d.c.state == DeliveryState.HELD, _d.c.updated_at < before)
        .values(state=DeliveryState.DEAD, dead_reason=reason, updated_at=now)
    )
    return int(result.rowcount)


def prune_minutes(conn: Connection, before: datetime) -> int:
    """Forget per-minute results older than any window looks back."""
    result = conn.execute(delete(endpoint_minutes).where(endpoint_minutes.c.minute < before))
    return int(result.rowcount)


# A held delivery goes back to pending with a fresh retry schedule, due at its turn.
_DRAIN = (
    update(_d)
    .where(_d.c.id == bindparam("b_id"), _d.c.state == DeliveryState.HELD)
    .values(
        state=DeliveryState.PENDING,
        retry_base=_d.c.attempts,
        next_attempt_at=bindparam("b_due", type_=_d.c.next_attempt_at.type),
        updated_at=bindparam("b_now", type_=_d.c.updated_at.type),
    )
)
