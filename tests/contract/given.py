"""What the contract's tests start from: records put in a store, and the results
an engine would write back. Each builder names its defaults once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from support.factories import an_endpoint
from tidings import ids
from tidings.domain.models import (
    Accepted,
    Attempt,
    AttemptResult,
    Claimed,
    DeliveryFilter,
    DeliveryState,
    EmailRequest,
    NewMessage,
    Tenant,
)
from tidings.store import Store

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TTL = 24 * 3600.0
LEASE = NOW + timedelta(minutes=1)


async def tenant(store: Store, name: str = "acme") -> str:
    record = Tenant(ids.new_id(ids.TENANT), name, "ops@acme.example", NOW)
    await store.create_tenant(record)
    return record.id


async def endpoint(
    store: Store, tenant_id: str, event_types: tuple[str, ...] = (), **fields: Any
) -> str:
    record = an_endpoint(tenant_id=tenant_id, event_types=event_types, now=NOW, **fields)
    await store.create_endpoint(record)
    return record.id


def message(
    tenant_id: str, key: str | None = None, body: bytes = b"{}", event_type: str = "order.paid"
) -> NewMessage:
    return NewMessage(tenant_id, event_type, body, key, f"hash-of-{body!r}")


def email(tenant_id: str, to: str = "ada@example.com") -> NewMessage:
    return NewMessage(tenant_id, "email", b"{}", None, "h", EmailRequest(to, "confirm"))


async def accept(store: Store, *batch: NewMessage, at: datetime = NOW) -> list[Accepted]:
    results = await store.ingest(batch, at, TTL)
    assert all(isinstance(r, Accepted) for r in results)
    return results  # type: ignore[return-value]


def result(
    claimed: Claimed,
    state: DeliveryState,
    status: int | None = 204,
    next_at: datetime | None = None,
    reason: str | None = None,
    *,
    at: datetime = NOW,
    error: str | None = None,
    **fields: Any,
) -> AttemptResult:
    number = claimed.attempts + 1
    attempt = Attempt(
        ids.new_id(ids.ATTEMPT), claimed.delivery_id, number, at, 3.5, status, error, ""
    )
    return AttemptResult(
        claimed.delivery_id,
        claimed.endpoint_id,
        attempt,
        state,
        next_at,
        reason,
        claimed.lease_until,
        **fields,
    )


async def states(store: Store, tenant_id: str) -> dict[str, DeliveryState]:
    """Each of the tenant's deliveries' state, by delivery id."""
    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=1000)
    return {d.id: d.state for d in page.items}
