"""The engine's side of the in-memory store: claims, leases, results, replay.

Each function is the body of one of the SQL stores' transactions over
:class:`~tidings.store.memory.tables.Tables`, with the same conditions: a lease
is the claim's proof, so a release or a result applies only while the delivery
is still in flight under the lease it was claimed with, and a late one (its
lease ran out, and it was perhaps claimed again) changes nothing but the
attempts' history. As on SQLite, one process keeps the store, so a claim takes
what the dispatcher's own slots ask for and holds nothing back (no caps of the
store's own: :attr:`~tidings.domain.models.Claims.capped` stays empty).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from tidings.domain import fanout
from tidings.domain.circuit import Breaker, CircuitState
from tidings.domain.models import (
    AttemptResult,
    Claimed,
    Claims,
    DeliveryState,
    EndpointState,
    ReplaySelector,
)
from tidings.domain.retry import ENDED_BY_DELETE, ENDED_BY_DISABLE, ENDPOINT_GONE
from tidings.store.memory.tables import DeliveryRow, Tables, minute_of

_WAITING = (DeliveryState.PENDING, DeliveryState.HELD)


def claim(tables: Tables, slots: Mapping[str, int], now: datetime, lease_until: datetime) -> Claims:
    """Lease up to ``slots[endpoint]`` due pending deliveries of each endpoint, oldest
    due first; all of them ordered by when they fell due (then as they were written)."""
    picked: list[DeliveryRow] = []
    for endpoint_id, n in slots.items():
        if n <= 0:
            continue
        due = (
            row
            for row in tables.waiting_of(endpoint_id, DeliveryState.PENDING)
            if row.next_attempt_at is not None and row.next_attempt_at <= now
        )
        picked += heapq.nsmallest(n, due, key=_due_order)
    picked.sort(key=_due_order)
    claimed = []
    for row in picked:
        tables.move(row, DeliveryState.IN_FLIGHT, now)
        row.lease_expires_at = lease_until
        message = tables.messages[row.message_id]
        claimed.append(
            Claimed(
                delivery_id=row.id,
                message_id=row.message_id,
                endpoint_id=row.endpoint_id,
                event_type=message.event_type,
                payload=message.payload,
                attempts=row.attempts,
                retry_base=row.retry_base,
                created_at=row.created_at,
                message_created_at=message.created_at,
                lease_until=lease_until,
            )
        )
    return Claims(claimed)


def _due_order(row: DeliveryRow) -> tuple[datetime, int]:
    """Oldest due first; of one instant, the first written first."""
    assert row.next_attempt_at is not None
    return row.next_attempt_at, row.seq


def _holds_lease(row: DeliveryRow | None, lease: datetime) -> bool:
    return (
        row is not None and row.state is DeliveryState.IN_FLIGHT and row.lease_expires_at == lease
    )


def release(tables: Tables, claimed: Sequence[Claimed], now: datetime) -> int:
    """Claimed deliveries still under their lease go back to pending; how many."""
    released = 0
    for job in claimed:
        row = tables.deliveries.get(job.delivery_id)
        if row is not None and _holds_lease(row, job.lease_until):
            tables.move(row, DeliveryState.PENDING, now)
            row.lease_expires_at = None
            released += 1
    end_orphans(tables, now)
    return released


def reclaim_expired_leases(tables: Tables, now: datetime) -> int:
    """In-flight deliveries whose lease ran out go back to pending; how many."""
    lapsed = [
        row
        for row in tables.in_state[DeliveryState.IN_FLIGHT].values()
        if row.lease_expires_at is not None and row.lease_expires_at <= now
    ]
    for row in lapsed:
        tables.move(row, DeliveryState.PENDING, now)
        row.lease_expires_at = None
    if lapsed:
        end_orphans(tables, now)
    return len(lapsed)


def end_orphans(tables: Tables, now: datetime) -> None:
    """Waiting deliveries of endpoints disabled or deleted meanwhile end as dead;
    those of endpoints suspended meanwhile are held."""
    for endpoint in list(tables.endpoints.values()):
        if endpoint.id in tables.deleted_at:
            kill_waiting(tables, [endpoint.id], ENDED_BY_DELETE, now)
        elif endpoint.state is EndpointState.DISABLED:
            kill_waiting(tables, [endpoint.id], ENDED_BY_DISABLE, now)
        elif endpoint.state is EndpointState.SUSPENDED:
            for row in tables.waiting_of(endpoint.id, DeliveryState.PENDING):
                tables.move(row, DeliveryState.HELD, now)


def kill_waiting(tables: Tables, endpoint_ids: Iterable[str], reason: str, now: datetime) -> int:
    """Waiting deliveries of endpoints that will never be sent to again die with ``reason``."""
    killed = 0
    for endpoint_id in endpoint_ids:
        for row in tables.waiting_of(endpoint_id, *_WAITING):
            tables.move(row, DeliveryState.DEAD, now)
            row.dead_reason = reason
            killed += 1
    return killed


def record_results(
    tables: Tables, results: Sequence[AttemptResult], now: datetime, applied: set[str]
) -> int:
    """Write ``results`` back (as the SQL stores' ``apply_results``); the ids of those
    that still held their lease are added to ``applied``. Returns how many waiting
    deliveries of endpoints found disabled ended."""
    for result in results:
        tables.attempts.setdefault(result.delivery_id, []).append(result.attempt)
    for result in results:
        if _apply(tables, result, now):
            applied.add(result.delivery_id)
    _count_minutes(tables, results, now)
    for result in results:
        if result.breaker is not None:
            tables.breakers[result.endpoint_id] = (_as_stored(result.breaker), now)
    gone = {r.endpoint_id for r in results if r.disable_endpoint}
    for endpoint_id in sorted(gone):
        endpoint = tables.endpoints.get(endpoint_id)
        if endpoint is not None and endpoint.state in (
            EndpointState.ACTIVE,
            EndpointState.SUSPENDED,
        ):
            tables.endpoints[endpoint_id] = replace(
                endpoint,
                state=EndpointState.DISABLED,
                disabled_reason=ENDPOINT_GONE,
                updated_at=now,
            )
    waiting = {r.endpoint_id for r in results if r.state is DeliveryState.PENDING}
    return _end_waiting(tables, waiting, gone, now)


def _apply(tables: Tables, result: AttemptResult, now: datetime) -> bool:
    """The delivery's new state, if it still holds the lease the result was made under."""
    row = tables.deliveries.get(result.delivery_id)
    if row is None or not _holds_lease(row, result.lease_until):
        return False
    tables.move(row, result.state, now)
    row.attempts += 1
    row.next_attempt_at = result.next_attempt_at
    row.lease_expires_at = None
    row.last_status = result.attempt.status_code
    row.last_error = result.attempt.error
    row.dead_reason = result.dead_reason
    row.succeeded_at = now if result.state is DeliveryState.SUCCEEDED else None
    return True


def _end_waiting(tables: Tables, waiting: set[str], gone: set[str], now: datetime) -> int:
    """Retries of an endpoint disabled meanwhile (by a 410 in this batch or earlier)
    would wait for ever: they end now; how many. Those of one suspended meanwhile
    are held."""
    for endpoint_id in waiting:
        endpoint = tables.endpoints.get(endpoint_id)
        if endpoint is not None and endpoint.state is EndpointState.SUSPENDED:
            for row in tables.waiting_of(endpoint_id, DeliveryState.PENDING):
                tables.move(row, DeliveryState.HELD, now)
    disabled = [
        e
        for e in sorted(waiting | gone)
        if e in tables.endpoints and tables.endpoints[e].state is EndpointState.DISABLED
    ]
    return kill_waiting(tables, disabled, ENDED_BY_DISABLE, now)


def _count_minutes(tables: Tables, results: Sequence[AttemptResult], now: datetime) -> None:
    """Add each result to its endpoint's count of the minute of ``now``."""
    minute = minute_of(now)
    for result in results:
        counts = tables.minutes.setdefault((result.endpoint_id, minute), [0, 0, 0, 0])
        counts[0] += 1
        if result.state is DeliveryState.SUCCEEDED:
            counts[2] += 1
        else:
            counts[1] += 1
            counts[3] += result.state is DeliveryState.DEAD


def _as_stored(breaker: Breaker) -> Breaker:
    """The breaker as the SQL stores keep it: its state, when it opened and for how long
    (to the millisecond); the counts that led there are the engine's alone."""
    cool_down = breaker.cool_down
    if cool_down is not None:
        cool_down = timedelta(milliseconds=cool_down // timedelta(milliseconds=1))
    return Breaker(state=breaker.state, opened_at=breaker.opened_at, cool_down=cool_down)


def replay(tables: Tables, tenant_id: str, selector: ReplaySelector, now: datetime) -> int:
    """Dead and held deliveries of active endpoints go back to pending, due now; dead
    ones of suspended endpoints are held, to drain when the endpoint resumes."""
    chosen = set(selector.ids)
    replayed = 0
    for row in list(tables.deliveries.values()):
        if (
            row.tenant_id != tenant_id
            or (chosen and row.id not in chosen)
            or (selector.endpoint_id and row.endpoint_id != selector.endpoint_id)
            or (selector.since and row.created_at < selector.since)
            or (selector.until and row.created_at >= selector.until)
        ):
            continue
        endpoint = tables.endpoints.get(row.endpoint_id)
        to = None if endpoint is None else fanout.replayed(endpoint.state, row.state)
        if to is None:
            continue
        tables.move(row, to, now)
        if to is DeliveryState.PENDING:
            row.next_attempt_at = now
        row.retry_base = row.attempts
        row.dead_reason = None
        replayed += 1
    return replayed


def next_wakeup(tables: Tables, now: datetime) -> datetime | None:
    """The earliest future time a pending delivery falls due or a lease runs out."""
    times = [
        row.next_attempt_at
        for row in tables.in_state[DeliveryState.PENDING].values()
        if row.next_attempt_at is not None and row.next_attempt_at > now
    ]
    times += [
        row.lease_expires_at
        for row in tables.in_state[DeliveryState.IN_FLIGHT].values()
        if row.lease_expires_at is not None
    ]
    return min(times, default=None)


def oldest_due(tables: Tables, now: datetime) -> datetime | None:
    """When the longest-waiting due delivery fell due, of endpoints whose breaker is
    closed (the others' deliveries wait on purpose)."""
    tripped = {e for e, (b, _) in tables.breakers.items() if b.state is not CircuitState.CLOSED}
    return min(
        (
            row.next_attempt_at
            for row in tables.in_state[DeliveryState.PENDING].values()
            if row.next_attempt_at is not None
            and row.next_attempt_at <= now
            and row.endpoint_id not in tripped
        ),
        default=None,
    )
