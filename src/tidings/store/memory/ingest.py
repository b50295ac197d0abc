"""Ingest into memory: idempotency keys, fan-out to endpoints, a tenant's email lane.

The same steps as the SQL stores' ingest transaction, in the same order, so the
answers are the same: a key past its time-to-live is forgotten before the batch
is looked up; a key seen before (in the store or earlier in the batch) answers
its first acceptance again with the same request hash, or a conflict; each new
message gets one delivery per subscribed endpoint, or (an email) one to the
tenant's email lane, made by its first email.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tidings import ids
from tidings.domain.models import (
    Accepted,
    DeliveryState,
    EmailRecord,
    Endpoint,
    EndpointKind,
    EndpointState,
    Message,
    NewMessage,
)
from tidings.exceptions import Conflict
from tidings.store.memory.tables import DeliveryRow, IdempotencyRow, Tables, require

EMAIL_LANE_MAX_IN_FLIGHT = 10  # emails of one tenant in flight at once (as the SQL stores)


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one new message goes, and how its delivery starts."""

    endpoint: Endpoint
    state: DeliveryState
    due: datetime


def _fan_out(new: NewMessage, endpoints: Sequence[Endpoint], now: datetime) -> list[_Target]:
    """The business rules of ingest, in one place: which of the tenant's endpoints
    (active or suspended, email lane included) get ``new``, and how each delivery
    starts. A webhook message goes to every webhook endpoint that accepts its type, an
    email to the lane alone. A suspended endpoint's delivery is held; an endpoint's own
    retry schedule may delay even the first attempt (its first entry)."""
    if new.email is None:
        chosen = [
            ep for ep in endpoints if ep.kind is EndpointKind.WEBHOOK and ep.accepts(new.event_type)
        ]
    else:
        chosen = [ep for ep in endpoints if ep.kind is EndpointKind.EMAIL][:1]
    return [
        _Target(
            endpoint=ep,
            state=(
                DeliveryState.HELD if ep.state is EndpointState.SUSPENDED else DeliveryState.PENDING
            ),
            due=now + timedelta(seconds=ep.retry_schedule[0] if ep.retry_schedule else 0.0),
        )
        for ep in chosen
    ]


def ingest(
    tables: Tables, batch: Sequence[NewMessage], now: datetime, keys_since: datetime
) -> list[Accepted | Conflict]:
    """Store ``batch`` (see :meth:`~tidings.store.base.Store.ingest`); keys created
    before ``keys_since`` count as never seen."""
    for new in batch:  # checked before anything is written: the batch is stored whole or not
        require(tables.tenants, new.tenant_id, "tenant")
    seen = _known_keys(tables, batch, keys_since)
    fan_out: dict[str, list[Endpoint]] = {}
    results: list[Accepted | Conflict] = []
    for new in batch:
        key = (new.tenant_id, new.idempotency_key) if new.idempotency_key else None
        if key and key in seen:
            results.append(_replay_or_conflict(seen[key], new))
            continue
        if new.tenant_id not in fan_out:
            fan_out[new.tenant_id] = _endpoints_of(tables, new.tenant_id)
        endpoints = fan_out[new.tenant_id]
        if new.email is not None and not any(ep.kind is EndpointKind.EMAIL for ep in endpoints):
            endpoints.append(_make_email_lane(tables, new.tenant_id, now))
        accepted = _accept(tables, new, endpoints, now)
        results.append(accepted)
        if key:
            seen[key] = IdempotencyRow(new.request_hash, accepted, now)
            tables.idempotency[key] = IdempotencyRow(
                new.request_hash, Accepted(accepted.message_id, accepted.deliveries), now
            )
    return results


def _accept(tables: Tables, new: NewMessage, endpoints: list[Endpoint], now: datetime) -> Accepted:
    message_id = ids.new_id(ids.MESSAGE if new.email is None else ids.EMAIL)
    targets = _fan_out(new, endpoints, now)
    pairs = tuple((ids.new_id(ids.DELIVERY), target) for target in targets)
    tables.messages[message_id] = Message(
        id=message_id,
        tenant_id=new.tenant_id,
        event_type=new.event_type,
        payload=new.payload,
        idempotency_key=new.idempotency_key,
        created_at=now,
    )
    for delivery_id, target in pairs:
        tables.add_delivery(
            DeliveryRow(
                id=delivery_id,
                message_id=message_id,
                tenant_id=new.tenant_id,
                endpoint_id=target.endpoint.id,
                state=target.state,
                next_attempt_at=target.due,
                created_at=now,
                updated_at=now,
            )
        )
    if new.email is not None:
        tables.emails[message_id] = EmailRecord(
            id=message_id,
            tenant_id=new.tenant_id,
            delivery_id=pairs[0][0],
            to_address=new.email.to,
            template=new.email.template,
            reference=new.email.reference,
            variant=None,
            variant_reason=None,
            subject=None,
            created_at=now,
            sent_at=None,
        )
    return Accepted(message_id, tuple((d_id, t.endpoint.id) for d_id, t in pairs))


def _make_email_lane(tables: Tables, tenant_id: str, now: datetime) -> Endpoint:
    """The tenant's email lane, made by its first email."""
    lane = Endpoint(
        id=ids.new_id(ids.ENDPOINT),
        tenant_id=tenant_id,
        url="email:",
        description="the tenant's emails",
        event_types=(),
        secret="",
        previous_secret=None,
        previous_secret_expires_at=None,
        max_in_flight=EMAIL_LANE_MAX_IN_FLIGHT,
        rate_limit_per_s=None,
        retry_schedule=None,
        state=EndpointState.ACTIVE,
        disabled_reason=None,
        created_at=now,
        updated_at=now,
        kind=EndpointKind.EMAIL,
    )
    tables.put_endpoint(lane)
    return tables.endpoint(lane.id)


def _known_keys(
    tables: Tables, batch: Sequence[NewMessage], keys_since: datetime
) -> dict[tuple[str, str], IdempotencyRow]:
    keys = {(m.tenant_id, m.idempotency_key) for m in batch if m.idempotency_key}
    found: dict[tuple[str, str], IdempotencyRow] = {}
    for key in keys:
        row = tables.idempotency.get(key)
        if row is not None and row.created_at < keys_since:
            del tables.idempotency[key]
        elif row is not None:
            found[key] = row
    return found


def _endpoints_of(tables: Tables, tenant_id: str) -> list[Endpoint]:
    """The tenant's endpoints that take messages (active or suspended), by id."""
    return [
        tables.endpoint(ep.id)
        for ep in sorted(tables.endpoints.values(), key=lambda ep: ep.id)
        if ep.tenant_id == tenant_id and ep.state in (EndpointState.ACTIVE, EndpointState.SUSPENDED)
    ]


def _replay_or_conflict(first: IdempotencyRow, new: NewMessage) -> Accepted | Conflict:
    if first.request_hash != new.request_hash:
        return Conflict(
            f"Idempotency-Key {new.idempotency_key!r} was already used with a different "
            "request body; use a new key for a new message"
        )
    accepted = first.accepted
    return Accepted(message_id=accepted.message_id, deliveries=accepted.deliveries, replayed=True)
