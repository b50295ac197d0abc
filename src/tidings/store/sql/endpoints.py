"""Endpoints: where a tenant's messages go (its signing secrets sealed at rest)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import insert, update

from tidings.domain.models import Endpoint, EndpointKind, EndpointState, Page
from tidings.domain.retry import ENDED_BY_DELETE
from tidings.store.ports import Change
from tidings.store.sql import sealing
from tidings.store.sql.core import SqlCore, reads, writes
from tidings.store.sql.deliveries import kill_waiting
from tidings.store.sql.rows import (
    endpoint_of,
    endpoint_row,
    endpoint_select,
    find_endpoint,
    page_of,
)
from tidings.store.sql.schema import endpoints


class EndpointRecords(SqlCore):
    """The Endpoints role."""

    @writes
    def create_endpoint(self, endpoint: Endpoint) -> None:
        with self._write() as conn:
            row = sealing.sealed_row(endpoint_row(endpoint), self._keys)
            conn.execute(insert(endpoints).values(**row))
            self._announce(conn, Change.ENDPOINTS)

    @reads
    def get_endpoint(self, tenant_id: str, endpoint_id: str) -> Endpoint | None:
        with self._read() as conn:
            endpoint = find_endpoint(conn, tenant_id, endpoint_id)
        return None if endpoint is None else sealing.opened(endpoint, self._keys)

    @reads
    def list_endpoints(self, tenant_id: str, *, cursor: str | None, limit: int) -> Page[Endpoint]:
        query = (
            endpoint_select()
            .where(
                endpoints.c.tenant_id == tenant_id,
                endpoints.c.deleted_at.is_(None),
                endpoints.c.kind == EndpointKind.WEBHOOK,
            )
            .order_by(endpoints.c.id.desc())
            .limit(limit + 1)
        )
        if cursor:
            query = query.where(endpoints.c.id < cursor)
        with self._read() as conn:
            rows = (conn.execute(query)).all()
        return page_of([sealing.opened(endpoint_of(row), self._keys) for row in rows], limit)

    @writes
    def update_endpoint(
        self, tenant_id: str, endpoint_id: str, changes: Mapping[str, Any], now: datetime
    ) -> Endpoint | None:
        values = dict(changes)
        if "event_types" in values:  # empty or null: every event type
            values["event_types"] = orjson.dumps(list(values["event_types"] or [])).decode()
        if values.get("retry_schedule") is not None:  # null: the default schedule
            values["retry_schedule"] = orjson.dumps(list(values["retry_schedule"])).decode()
        values = sealing.sealed_row({**values, "id": endpoint_id}, self._keys)
        del values["id"]
        with self._write() as conn:
            if find_endpoint(conn, tenant_id, endpoint_id) is None:
                return None
            conn.execute(
                update(endpoints)
                .where(endpoints.c.id == endpoint_id)
                .values(**values, updated_at=now)
            )
            self._announce(conn, Change.ENDPOINTS)
            endpoint = find_endpoint(conn, tenant_id, endpoint_id)
        return None if endpoint is None else sealing.opened(endpoint, self._keys)

    @writes
    def delete_endpoint(self, tenant_id: str, endpoint_id: str, now: datetime) -> int | None:
        with self._write() as conn:
            if find_endpoint(conn, tenant_id, endpoint_id) is None:
                return None
            conn.execute(
                update(endpoints)
                .where(endpoints.c.id == endpoint_id)
                .values(
                    state=EndpointState.DISABLED,
                    disabled_reason="deleted",
                    deleted_at=now,
                    updated_at=now,
                )
            )
            self._announce(conn, Change.ENDPOINTS)
            return kill_waiting(conn, [endpoint_id], ENDED_BY_DELETE, now)

    @reads
    def active_endpoints(self) -> list[Endpoint]:
        with self._read() as conn:
            rows = conn.execute(endpoint_select().where(endpoints.c.state == EndpointState.ACTIVE))
            return [sealing.opened(endpoint_of(row), self._keys) for row in rows]

    @reads
    def suspended_endpoints(self) -> list[Endpoint]:
        with self._read() as conn:
            rows = conn.execute(
                endpoint_select().where(endpoints.c.state == EndpointState.SUSPENDED)
            )
            return [sealing.opened(endpoint_of(row), self._keys) for row in rows]
