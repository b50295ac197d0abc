"""Deliveries as the engine sees them: leases, their release, the queue's shape.

The claims and the result write-back, the hottest writes, are each backend's own
(in the driver's SQL): see :mod:`~tidings.store.sql.sqlite`,
:mod:`~tidings.store.sql.postgres` and :mod:`~tidings.store.sql.hot`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.engine import Connection

from tidings.domain.circuit import CircuitState
from tidings.domain.models import Claimed, DeliveryState, EndpointState
from tidings.domain.retry import ENDED_BY_DELETE, ENDED_BY_DISABLE
from tidings.store.ports import Change
from tidings.store.sql.core import SqlCore, reads, writes
from tidings.store.sql.schema import breakers, deliveries, endpoints

_d = deliveries

# Only a delivery still in flight under the lease it was claimed with goes back:
# one whose lease ran out (and was perhaps claimed again) is left alone.
_RELEASE = (
    update(_d)
    .where(
        _d.c.id == bindparam("b_id"),
        _d.c.state == DeliveryState.IN_FLIGHT,
        _d.c.lease_expires_at == bindparam("b_lease", type_=_d.c.lease_expires_at.type),
    )
    .values(
        state=DeliveryState.PENDING,
        lease_expires_at=None,
        updated_at=bindparam("b_now", type_=_d.c.updated_at.type),
    )
)


class DeliveryRecords(SqlCore):
    """The Queue role, but for its hot paths: ``claim`` and ``record_results`` run once
    per few deliveries, and each backend writes them with its own driver (see
    SqliteStore and PostgresStore)."""

    @writes
    def reclaim_expired_leases(self, now: datetime) -> int:
        with self._write(durable=False) as conn:
            result = conn.execute(
                update(_d)
                .where(_d.c.state == DeliveryState.IN_FLIGHT, _d.c.lease_expires_at <= now)
                .values(state=DeliveryState.PENDING, lease_expires_at=None, updated_at=now)
            )
            if result.rowcount:
                end_orphans(conn, now)
        return int(result.rowcount)

    @writes
    def release(self, claimed: Sequence[Claimed], now: datetime) -> int:
        if not claimed:
            return 0
        with self._write(durable=False) as conn:
            self._announce(conn, Change.WORK)  # due now, for any worker (this one may be stopping)
            result = conn.execute(
                _RELEASE,
                [{"b_id": c.delivery_id, "b_lease": c.lease_until, "b_now": now} for c in claimed],
            )
            end_orphans(conn, now)
        return int(result.rowcount)

    @reads
    def next_wakeup(self, now: datetime) -> datetime | None:
        due = select(func.min(_d.c.next_attempt_at)).where(
            _d.c.state == DeliveryState.PENDING, _d.c.next_attempt_at > now
        )
        lease = select(func.min(_d.c.lease_expires_at)).where(_d.c.state == DeliveryState.IN_FLIGHT)
        with self._read() as conn:
            times = [conn.scalar(due), conn.scalar(lease)]
        known = [t for t in times if t is not None]
        return min(known) if known else None

    @reads
    def queue_depth(self) -> dict[DeliveryState, int]:
        with self._read() as conn:
            rows = conn.execute(select(_d.c.state, func.count()).group_by(_d.c.state))
            counts = {DeliveryState(state): int(n) for state, n in rows}
        return {state: counts.get(state, 0) for state in DeliveryState}

    @reads
    def oldest_due(self, now: datetime) -> datetime | None:
        with self._read() as conn:
            # Deliveries waiting behind an open breaker wait on purpose: not counted.
            tripped = select(breakers.c.endpoint_id).where(breakers.c.state != CircuitState.CLOSED)
            return conn.scalar(  # type: ignore[no-any-return]
                select(func.min(_d.c.next_attempt_at)).where(
                    _d.c.state == DeliveryState.PENDING,
                    _d.c.next_attempt_at <= now,
                    _d.c.endpoint_id.not_in(tripped),
                )
            )


def end_orphans(conn: Connection, now: datetime) -> None:
    """Waiting deliveries of endpoints disabled or deleted meanwhile end as dead;
    those of endpoints suspended meanwhile are held."""
    e = endpoints.c
    deleted = select(e.id).where(e.deleted_at.is_not(None))
    disabled = select(e.id).where(e.state == EndpointState.DISABLED, e.deleted_at.is_(None))
    kill_waiting(conn, deleted, ENDED_BY_DELETE, now)
    kill_waiting(conn, disabled, ENDED_BY_DISABLE, now)
    conn.execute(
        update(_d)
        .where(
            _d.c.endpoint_id.in_(select(e.id).where(e.state == EndpointState.SUSPENDED)),
            _d.c.state == DeliveryState.PENDING,
        )
        .values(state=DeliveryState.HELD, updated_at=now)
    )


def kill_waiting(conn: Connection, endpoint_ids: Any, reason: str, now: datetime) -> int:
    """Waiting deliveries of endpoints that will never be sent to again die with ``reason``."""
    result = conn.execute(
        update(_d)
        .where(
            _d.c.endpoint_id.in_(endpoint_ids),
            or_(_d.c.state == DeliveryState.PENDING, _d.c.state == DeliveryState.HELD),
        )
        .values(state=DeliveryState.DEAD, dead_reason=reason, updated_at=now)
    )
    return int(result.rowcount)
