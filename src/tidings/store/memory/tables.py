"""The in-memory store's records: what the SQL stores keep in tables, as plain data.

Each table is a dict keyed as its SQL table is (so a lookup by key costs what an
index lookup does), plus the few indexes the store's queries lean on: deliveries by
state, by endpoint and by message. Rows the store changes in place (deliveries,
endpoints' deletion times) are mutable here; everything handed out is the frozen
record of :mod:`tidings.domain.models`, built afresh, so a caller never holds a
row the store will change under it.

One event loop drives the store and no method awaits half-way, so each method runs
whole before the next starts: that is the transaction, and nothing here locks.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from tidings.domain.circuit import Breaker
from tidings.domain.models import (
    Accepted,
    ApiKey,
    Attempt,
    Delivery,
    DeliveryState,
    EmailRecord,
    Endpoint,
    EndpointKind,
    Message,
    Page,
    SinkEmail,
    StoredTemplate,
    Suspension,
    Tenant,
)
from tidings.domain.notices import Notice
from tidings.exceptions import StoreError

T = TypeVar("T")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


@dataclass(slots=True)
class DeliveryRow:
    """A delivery as stored: the record's fields plus the lease and the retry base,
    which only the engine's claims read. Its state changes only through
    :meth:`Tables.move`, which keeps the index by state."""

    id: str
    message_id: str
    tenant_id: str
    endpoint_id: str
    state: DeliveryState
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    attempts: int = 0
    retry_base: int = 0
    lease_expires_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    dead_reason: str | None = None
    succeeded_at: datetime | None = None
    seq: int = 0
    """Its place in the order deliveries were written: what breaks a tie between two of
    one instant, as SQLite's row order does (ids sort by time only to the millisecond,
    and a store in memory writes several in one)."""

    def record(self) -> Delivery:
        return Delivery(
            id=self.id,
            message_id=self.message_id,
            tenant_id=self.tenant_id,
            endpoint_id=self.endpoint_id,
            state=self.state,
            attempts=self.attempts,
            next_attempt_at=self.next_attempt_at,
            last_status=self.last_status,
            last_error=self.last_error,
            dead_reason=self.dead_reason,
            created_at=self.created_at,
            updated_at=self.updated_at,
            succeeded_at=self.succeeded_at,
        )


@dataclass(slots=True)
class IdempotencyRow:
    request_hash: str
    accepted: Accepted
    created_at: datetime


@dataclass(slots=True)
class Tables:
    """Every record the store keeps."""

    settings: dict[str, str] = field(default_factory=dict)
    tenants: dict[str, Tenant] = field(default_factory=dict)
    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    api_key_of_hash: dict[str, str] = field(default_factory=dict)
    """Key hash to key id: each request's authentication looks one up."""
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    """Kept without their tenant's alarm policy: :meth:`endpoint` adds it as read."""
    deleted_at: dict[str, datetime] = field(default_factory=dict)
    """Deleted endpoints (kept, disabled, for their deliveries' history)."""
    messages: dict[str, Message] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], IdempotencyRow] = field(default_factory=dict)
    deliveries: dict[str, DeliveryRow] = field(default_factory=dict)
    attempts: dict[str, list[Attempt]] = field(default_factory=dict)
    """By delivery, in the order they were written."""
    templates: dict[tuple[str, str], StoredTemplate] = field(default_factory=dict)
    emails: dict[str, EmailRecord] = field(default_factory=dict)
    sink_emails: dict[str, SinkEmail] = field(default_factory=dict)
    breakers: dict[str, tuple[Breaker, datetime]] = field(default_factory=dict)
    minutes: dict[tuple[str, datetime], list[int]] = field(default_factory=dict)
    """``(endpoint, minute)``: attempts, failures, successes, dead."""
    suspensions: dict[str, list[Suspension]] = field(default_factory=dict)
    """By endpoint."""
    notices: list[Notice] = field(default_factory=list)
    # indexes of deliveries
    in_state: dict[DeliveryState, dict[str, DeliveryRow]] = field(
        default_factory=lambda: {state: {} for state in DeliveryState}
    )
    of_endpoint: dict[str, dict[str, DeliveryRow]] = field(default_factory=dict)
    of_endpoint_in: dict[tuple[str, DeliveryState], dict[str, DeliveryRow]] = field(
        default_factory=dict
    )
    """By endpoint and state: what a claim or a suspension looks through is what waits,
    not every delivery the endpoint ever had."""
    of_message: dict[str, list[DeliveryRow]] = field(default_factory=dict)

    # deliveries ---------------------------------------------------------------------

    def add_delivery(self, row: DeliveryRow) -> None:
        if row.id in self.deliveries:
            raise StoreError(f"the store failed: delivery {row.id} exists already")
        row.seq = len(self.deliveries)
        self.deliveries[row.id] = row
        self.in_state[row.state][row.id] = row
        self.of_endpoint.setdefault(row.endpoint_id, {})[row.id] = row
        self.of_endpoint_in.setdefault((row.endpoint_id, row.state), {})[row.id] = row
        self.of_message.setdefault(row.message_id, []).append(row)

    def move(self, row: DeliveryRow, state: DeliveryState, now: datetime) -> None:
        """Put ``row`` in ``state`` (written at ``now``)."""
        del self.in_state[row.state][row.id]
        del self.of_endpoint_in[row.endpoint_id, row.state][row.id]
        row.state = state
        row.updated_at = now
        self.in_state[state][row.id] = row
        self.of_endpoint_in.setdefault((row.endpoint_id, state), {})[row.id] = row

    def waiting_of(self, endpoint_id: str, *states: DeliveryState) -> list[DeliveryRow]:
        """The endpoint's deliveries in any of ``states``."""
        return [
            row
            for state in states
            for row in self.of_endpoint_in.get((endpoint_id, state), {}).values()
        ]

    # endpoints ----------------------------------------------------------------------

    def endpoint(self, endpoint_id: str) -> Endpoint:
        """The endpoint, with its tenant's alarm policy (as the SQL stores join it)."""
        found = self.endpoints[endpoint_id]
        tenant = self.tenants.get(found.tenant_id)
        return replace(found, tenant_alarm_policy=tenant.alarm_policy if tenant else None)

    def webhook_endpoint(self, tenant_id: str, endpoint_id: str) -> Endpoint | None:
        """The tenant's endpoint as the API may see it: not deleted, not an email lane."""
        found = self.endpoints.get(endpoint_id)
        if (
            found is None
            or found.tenant_id != tenant_id
            or endpoint_id in self.deleted_at
            or found.kind is not EndpointKind.WEBHOOK
        ):
            return None
        return self.endpoint(endpoint_id)

    def put_endpoint(self, endpoint: Endpoint) -> None:
        self.endpoints[endpoint.id] = replace(endpoint, tenant_alarm_policy=None)


def require(table: Collection[str], key: str, what: str) -> None:
    """A foreign key: refuse a row that names a ``what`` the store does not keep."""
    if key not in table:
        raise StoreError(f"the store failed: FOREIGN KEY constraint failed ({what} {key})")


def unique(table: Collection[Any], key: object, what: str) -> None:
    """A primary key: refuse a second row with the same key."""
    if key in table:
        raise StoreError(f"the store failed: UNIQUE constraint failed ({what} {key})")


def minute_of(now: datetime) -> datetime:
    """The start of the minute ``now`` is in (UTC), as the per-minute rows are keyed."""
    return EPOCH + (now - EPOCH) // MINUTE * MINUTE


def page(
    items: Iterable[T],
    sort_key: Callable[[T], str],
    *,
    after: str | None,
    newest_first: bool,
    limit: int,
) -> Page[T]:
    """One page of ``items`` ordered by ``sort_key`` (descending for ``newest_first``),
    starting past the cursor ``after``; the cursor of the next page is the last
    item's key when more follow (as the SQL stores' keyset pages)."""
    if after:
        items = [i for i in items if (sort_key(i) < after if newest_first else sort_key(i) > after)]
    ordered = sorted(items, key=sort_key, reverse=newest_first)
    shown = ordered[:limit]
    more = len(ordered) > limit
    return Page(items=tuple(shown), next_cursor=sort_key(shown[-1]) if more and shown else None)
