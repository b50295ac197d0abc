"""The result write-back in the driver's own SQL, for every backend.

A result batch is the engine's hottest write (one per few deliveries), so it
runs as plain SQL on the driver's own cursor rather than through SQLAlchemy:
through SQLAlchemy a transaction cost about 100 µs more than the SQL in it.
The statements are standard SQL (``INSERT … ON CONFLICT`` included) written
with ``?`` placeholders; a driver that takes ``%s`` (psycopg) gets them
converted by :func:`apply_results`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from tidings.domain.models import AttemptResult, DeliveryState, EndpointState
from tidings.domain.retry import ENDED_BY_DISABLE, ENDPOINT_GONE
from tidings.store.sql.health import breaker_row, minute_rows
from tidings.store.sql.schema import to_micros


class Cursor(Protocol):
    """What the write-back needs of a DB-API cursor (sqlite3's, psycopg's)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Any) -> Any: ...

    def executemany(self, sql: str, params: Any) -> Any: ...


def apply_results(
    cursor: Cursor,
    results: Sequence[AttemptResult],
    now: datetime,
    *,
    applied: set[str] | None = None,
    percent: bool = False,
) -> int:
    """Write ``results`` in the open transaction of ``cursor``; how many waiting
    deliveries of endpoints found disabled ended. With ``applied``, the results are
    written one by one and the ids of those that still held their lease are added to
    it. ``percent``: the driver takes ``%s`` placeholders."""

    def run(sql: str, rows: Any) -> int:
        cursor.executemany(_sql(sql, percent), rows)
        return cursor.rowcount

    now_us = to_micros(now)
    run(
        _INSERT_ATTEMPT,
        [
            (
                a.id,
                a.delivery_id,
                a.number,
                to_micros(a.started_at),
                a.duration_ms,
                a.status_code,
                a.error,
                a.response_excerpt,
            )
            for a in (r.attempt for r in results)
        ],
    )
    updates = [
        (
            r.state.value,
            to_micros(r.next_attempt_at),
            r.attempt.status_code,
            r.attempt.error,
            r.dead_reason,
            now_us if r.state is DeliveryState.SUCCEEDED else None,
            now_us,
            r.delivery_id,
            to_micros(r.lease_until),
        )
        for r in results
    ]
    if applied is None:
        run(_RESULT_UPDATE, updates)
    else:
        for result, update in zip(results, updates, strict=True):
            cursor.execute(_sql(_RESULT_UPDATE, percent), update)
            if cursor.rowcount:
                applied.add(result.delivery_id)
    # Rows other workers' batches also write (an endpoint's minute, breaker, state) are
    # written in the order of the endpoints' ids, so two batches never deadlock.
    run(_ADD_MINUTE, minute_rows(results, now))
    changed = sorted((r for r in results if r.breaker is not None), key=lambda r: r.endpoint_id)
    if changed:  # (a stable sort: an endpoint's last change is written last)
        run(_SAVE_BREAKER, [breaker_row(r, now_us) for r in changed])
    gone = sorted({r.endpoint_id for r in results if r.disable_endpoint})
    if gone:
        run(_DISABLE_ENDPOINT, [(ENDPOINT_GONE, now_us, e) for e in gone])
    # Retries of an endpoint disabled meanwhile (by a 410 here or earlier) would
    # wait for ever: they end now. Those of one suspended meanwhile are held.
    waiting = sorted({r.endpoint_id for r in results if r.state is DeliveryState.PENDING})
    if not gone and not waiting:
        return 0
    if waiting:
        run(_HOLD_WAITING_OF_SUSPENDED, [(now_us, e) for e in waiting])
    ended = sorted({*waiting, *gone})
    return run(_KILL_WAITING_OF_DISABLED, [(ENDED_BY_DISABLE, now_us, e) for e in ended])


@lru_cache(maxsize=64)
def _sql(sql: str, percent: bool) -> str:
    return sql.replace("?", "%s") if percent else sql


_INSERT_ATTEMPT = (
    "INSERT INTO attempts (id, delivery_id, number, started_at, duration_ms, status_code,"
    " error, response_excerpt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

# A result applies only while the delivery is still in flight under the lease it
# was claimed with: a late one (its lease ran out, and it was perhaps claimed
# again) is kept as an attempt, nothing more.
_RESULT_UPDATE = (
    "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?,"
    " lease_expires_at = NULL, last_status = ?, last_error = ?, dead_reason = ?,"
    " succeeded_at = ?, updated_at = ?"
    f" WHERE id = ? AND state = '{DeliveryState.IN_FLIGHT}' AND lease_expires_at = ?"
)

_DISABLE_ENDPOINT = (
    f"UPDATE endpoints SET state = '{EndpointState.DISABLED}', disabled_reason = ?,"
    f" updated_at = ? WHERE id = ?"
    f" AND state IN ('{EndpointState.ACTIVE}', '{EndpointState.SUSPENDED}')"
)

_HOLD_WAITING_OF_SUSPENDED = (
    f"UPDATE deliveries SET state = '{DeliveryState.HELD}', updated_at = ?"
    " WHERE endpoint_id = (SELECT id FROM endpoints"
    f" WHERE id = ? AND state = '{EndpointState.SUSPENDED}')"
    f" AND state = '{DeliveryState.PENDING}'"
)

_ADD_MINUTE = (
    "INSERT INTO endpoint_minutes (endpoint_id, minute, attempts, failures, successes, dead)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (endpoint_id, minute) DO UPDATE SET"
    " attempts = endpoint_minutes.attempts + excluded.attempts,"
    " failures = endpoint_minutes.failures + excluded.failures,"
    " successes = endpoint_minutes.successes + excluded.successes,"
    " dead = endpoint_minutes.dead + excluded.dead"
)

_SAVE_BREAKER = (
    "INSERT INTO breakers (endpoint_id, state, opened_at, cool_down_ms, changed_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint_id) DO UPDATE SET"
    " state = excluded.state, opened_at = excluded.opened_at,"
    " cool_down_ms = excluded.cool_down_ms, changed_at = excluded.changed_at"
)

_KILL_WAITING_OF_DISABLED = (
    f"UPDATE deliveries SET state = '{DeliveryState.DEAD}', dead_reason = ?, updated_at = ?"
    " WHERE endpoint_id = (SELECT id FROM endpoints"
    f" WHERE id = ? AND state = '{EndpointState.DISABLED}')"
    f" AND state IN ('{DeliveryState.PENDING}', '{DeliveryState.HELD}')"
)
