"""Rows to records and back, and the reads every kind of record shares.

The mappers between the tables of :mod:`~tidings.store.sql.schema` and the frozen
records of :mod:`~tidings.domain.models`, and a few statements more than one module
runs (an endpoint by id, a message with its deliveries, one page of a listing).
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from sqlalchemy import Row, delete, insert, select
from sqlalchemy.engine import Connection

from tidings.domain.models import (
    Attempt,
    Delivery,
    DeliveryState,
    Endpoint,
    EndpointKind,
    EndpointState,
    Message,
    MessageDetail,
    Page,
)
from tidings.store.sql.schema import attempts, deliveries, endpoints, messages, settings, tenants

_d = deliveries
T = TypeVar("T")
DELIVERY_COLUMNS = [c for c in _d.c if c.name not in ("lease_expires_at", "retry_base")]


def fields_of(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


def page_of(items: list[T], limit: int, key: str = "id") -> Page[T]:
    """One page of ``items`` fetched with ``limit + 1``: the extra row says there is more.
    The cursor is the last item's ``key``."""
    more = len(items) > limit
    items = items[:limit]
    cursor = getattr(items[-1], key, None) if more and items else None
    return Page(items=tuple(items), next_cursor=cursor)


def delivery_of(row: Row[Any]) -> Delivery:
    data = row._asdict()
    data["state"] = DeliveryState(data["state"])
    return Delivery(**data)


def endpoint_of(row: Row[Any]) -> Endpoint:
    data = row._asdict()
    data.pop("deleted_at", None)
    data["event_types"] = tuple(orjson.loads(data["event_types"]))
    schedule = data["retry_schedule"]
    data["retry_schedule"] = tuple(orjson.loads(schedule)) if schedule else None
    data["state"] = EndpointState(data["state"])
    data["kind"] = EndpointKind(data["kind"])
    return Endpoint(**data)


def endpoint_select() -> Any:
    """Endpoints, each with its tenant's alarm policy (for the one in force)."""
    return select(endpoints, tenants.c.alarm_policy.label("tenant_alarm_policy")).join(
        tenants, tenants.c.id == endpoints.c.tenant_id
    )


def endpoint_row(endpoint: Endpoint) -> dict[str, Any]:
    row = fields_of(endpoint)
    del row["tenant_alarm_policy"]
    row["event_types"] = orjson.dumps(list(endpoint.event_types)).decode()
    row["retry_schedule"] = (
        orjson.dumps(list(endpoint.retry_schedule)).decode() if endpoint.retry_schedule else None
    )
    row["deleted_at"] = None
    return row


def find_endpoint(conn: Connection, tenant_id: str, endpoint_id: str) -> Endpoint | None:
    row = (
        conn.execute(
            endpoint_select().where(
                endpoints.c.id == endpoint_id,
                endpoints.c.tenant_id == tenant_id,
                endpoints.c.deleted_at.is_(None),
                endpoints.c.kind == EndpointKind.WEBHOOK,
            )
        )
    ).first()
    return None if row is None else endpoint_of(row)


def message_detail(conn: Connection, tenant_id: str, message_id: str) -> MessageDetail | None:
    row = (
        conn.execute(
            select(messages).where(messages.c.id == message_id, messages.c.tenant_id == tenant_id)
        )
    ).first()
    if row is None:
        return None
    rows = conn.execute(
        select(*DELIVERY_COLUMNS).where(_d.c.message_id == message_id).order_by(_d.c.id)
    )
    found = tuple(delivery_of(r) for r in rows)
    attempt_rows = conn.execute(
        select(attempts)
        .where(attempts.c.delivery_id.in_([d.id for d in found]))
        .order_by(attempts.c.delivery_id, attempts.c.number)
    )
    by_delivery: dict[str, list[Attempt]] = {}
    for a in attempt_rows:
        by_delivery.setdefault(a.delivery_id, []).append(Attempt(**a._asdict()))
    return MessageDetail(
        message=Message(**row._asdict()),
        deliveries=found,
        attempts={k: tuple(v) for k, v in by_delivery.items()},
    )


def put_setting(conn: Connection, key: str, value: str) -> None:
    """Keep ``value`` under ``key``, in place of what was kept there."""
    conn.execute(delete(settings).where(settings.c.key == key))
    conn.execute(insert(settings).values(key=key, value=value))
