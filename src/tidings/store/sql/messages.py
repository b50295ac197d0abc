"""Messages and their deliveries as producers see them: ingest, reads, replay."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import delete, select, update

from tidings.domain import fanout
from tidings.domain.models import (
    Accepted,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    EndpointState,
    MessageDetail,
    NewMessage,
    Page,
    ReplaySelector,
)
from tidings.exceptions import Conflict
from tidings.store.ports import Change
from tidings.store.sql.core import SqlCore, reads, writes
from tidings.store.sql.ingest import Ingest
from tidings.store.sql.rows import DELIVERY_COLUMNS, delivery_of, message_detail, page_of
from tidings.store.sql.schema import deliveries, endpoints, idempotency_keys

_d = deliveries


class MessageRecords(SqlCore):
    """The Messages role."""

    @writes
    def ingest(
        self, batch: Sequence[NewMessage], now: datetime, idempotency_ttl_s: float
    ) -> list[Accepted | Conflict]:
        with self._write() as conn:
            keys_since = now - timedelta(seconds=idempotency_ttl_s)
            results = Ingest(conn, now, keys_since, partial(self._take_turns, conn)).run(batch)
            made = [
                endpoint_id
                for result in results
                if isinstance(result, Accepted) and not result.replayed
                for _, endpoint_id in result.deliveries
            ]
            if made:  # the endpoints named, so that a dispatcher looks at those alone
                self._announce(conn, Change.WORK, list(dict.fromkeys(made)))
            return results

    @reads
    def get_message(self, tenant_id: str, message_id: str) -> MessageDetail | None:
        with self._read() as conn:
            return message_detail(conn, tenant_id, message_id)

    @reads
    def list_deliveries(
        self, tenant_id: str, where: DeliveryFilter, *, cursor: str | None, limit: int
    ) -> Page[Delivery]:
        conditions = [_d.c.tenant_id == tenant_id]
        if where.state:
            conditions.append(_d.c.state == where.state)
        if where.endpoint_id:
            conditions.append(_d.c.endpoint_id == where.endpoint_id)
        if where.message_id:
            conditions.append(_d.c.message_id == where.message_id)
        if where.since:
            conditions.append(_d.c.created_at >= where.since)
        if where.until:
            conditions.append(_d.c.created_at < where.until)
        if cursor:
            conditions.append(_d.c.id < cursor)
        query = select(*DELIVERY_COLUMNS).where(*conditions).order_by(_d.c.id.desc())
        with self._read() as conn:
            rows = (conn.execute(query.limit(limit + 1))).all()
        return page_of([delivery_of(row) for row in rows], limit)

    @writes
    def replay(self, tenant_id: str, selector: ReplaySelector, now: datetime) -> int:
        """Dead and held deliveries of active endpoints go back to pending, due now; dead
        ones of suspended endpoints are held, to drain when the endpoint resumes."""
        conditions = [_d.c.tenant_id == tenant_id]
        if selector.ids:
            conditions.append(_d.c.id.in_(selector.ids))
        if selector.endpoint_id:
            conditions.append(_d.c.endpoint_id == selector.endpoint_id)
        if selector.since:
            conditions.append(_d.c.created_at >= selector.since)
        if selector.until:
            conditions.append(_d.c.created_at < selector.until)

        def of(state: EndpointState) -> Any:
            return _d.c.endpoint_id.in_(select(endpoints.c.id).where(endpoints.c.state == state))

        with self._write() as conn:
            replayed = 0
            for endpoint_state, (taken, to) in fanout.REPLAYS.items():
                due = {"next_attempt_at": now} if to is DeliveryState.PENDING else {}
                replayed += conn.execute(
                    update(_d)
                    .where(*conditions, _d.c.state.in_(taken), of(endpoint_state))
                    .values(
                        state=to,
                        retry_base=_d.c.attempts,
                        dead_reason=None,
                        updated_at=now,
                        **due,
                    )
                ).rowcount
            self._announce(conn, Change.WORK)
        return replayed

    @writes
    def purge_idempotency_keys(self, before: datetime) -> int:
        with self._write() as conn:
            result = conn.execute(
                delete(idempotency_keys).where(idempotency_keys.c.created_at < before)
            )
        return int(result.rowcount)
