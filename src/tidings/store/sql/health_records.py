"""Endpoint health's transactions: suspensions, breakers, per-minute results, held
deliveries and owner notices. Their statements are :mod:`~tidings.store.sql.health`'s."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import partial

from sqlalchemy import insert

from tidings.domain import fanout
from tidings.domain.alarms import Minute
from tidings.domain.circuit import Breaker
from tidings.domain.models import Accepted, EndpointHealth, NewMessage, Suspension
from tidings.domain.notices import Notice
from tidings.store.ports import Change
from tidings.store.sql import health
from tidings.store.sql.core import SqlCore, reads, writes
from tidings.store.sql.ingest import Ingest
from tidings.store.sql.rows import fields_of, find_endpoint
from tidings.store.sql.schema import notices


class HealthRecords(SqlCore):
    """The Health role."""

    @writes
    def suspend_endpoint(
        self, tenant_id: str, endpoint_id: str, reason: str, by: str, now: datetime
    ) -> tuple[Suspension, int] | None:
        with self._write() as conn:
            if find_endpoint(conn, tenant_id, endpoint_id) is None:
                return None
            self._announce(conn, Change.ENDPOINTS)
            return health.suspend(conn, endpoint_id, reason, by, now)

    @writes
    def resume_endpoint(
        self, tenant_id: str, endpoint_id: str, by: str, now: datetime
    ) -> tuple[Suspension, int] | None:
        with self._write() as conn:
            endpoint = find_endpoint(conn, tenant_id, endpoint_id)
            if endpoint is None:
                return None
            self._announce(conn, Change.SCHEDULE)
            return health.resume(conn, endpoint_id, by, now, fanout.drain_rate(endpoint))

    @reads
    def endpoint_health(self, endpoint_ids: Sequence[str]) -> dict[str, EndpointHealth]:
        with self._read() as conn:
            return health.health_of(conn, endpoint_ids)

    @reads
    def breakers(self) -> dict[str, tuple[Breaker, datetime]]:
        with self._read() as conn:
            return health.stored_breakers(conn)

    @reads
    def endpoint_minutes(self, since: datetime) -> dict[str, list[Minute]]:
        with self._read() as conn:
            return health.minutes_since(conn, since)

    @reads
    def last_errors(
        self, endpoint_id: str, since: datetime, limit: int
    ) -> list[tuple[datetime, str]]:
        with self._read() as conn:
            return health.last_errors(conn, endpoint_id, since, limit)

    @reads
    def held_counts(self) -> dict[str, int]:
        with self._read() as conn:
            return health.held_counts(conn)

    @reads
    def last_notice_at(self, endpoint_id: str, url: str, kind: str) -> datetime | None:
        with self._read() as conn:
            return health.last_notice_at(conn, endpoint_id, url, kind)

    @writes
    def publish_notice(
        self, notice: Notice, published: Sequence[NewMessage], dedupe_since: datetime | None
    ) -> bool:
        with self._write() as conn:
            if dedupe_since is not None:
                last = health.last_notice_at(conn, notice.endpoint_id, notice.url, notice.kind)
                if last is not None and last > dedupe_since:
                    return False
            self._announce(conn, Change.ENDPOINTS)  # its email may have made the email lane
            at = notice.sent_at
            accepted = Ingest(conn, at, at, partial(self._take_turns, conn)).run(published)
            emailed = [
                a.message_id
                for new, a in zip(published, accepted, strict=True)
                if new.email is not None and isinstance(a, Accepted)
            ]
            row = {**fields_of(notice), "email_id": emailed[0] if emailed else None}
            conn.execute(insert(notices).values(**row))
        return True

    @writes
    def expire_held(self, before: datetime, reason: str, now: datetime) -> int:
        with self._write() as conn:
            return health.expire_held(conn, before, reason, now)

    @writes
    def prune_minutes(self, before: datetime) -> int:
        with self._write(durable=False) as conn:
            return health.prune_minutes(conn, before)
