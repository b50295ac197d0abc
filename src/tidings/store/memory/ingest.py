"""Ingest into memory: idempotency keys, fan-out to endpoints, a tenant's email lane.

The same steps as the SQL stores' ingest transaction, in the same order, and the
same rules (:mod:`tidings.domain.fanout`), so the answers are the same: a key past
its time-to-live is forgotten before the batch is looked up; a key seen before (in
the store or earlier in the batch) answers its first acceptance again with the same
request hash, or a conflict; each new message gets one delivery per subscribed
endpoint, or (an email) one to the tenant's email lane, made by its first email.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from tidings import ids
from tidings.domain import fanout
from tidings.domain.models import (
    Accepted,
    EmailRecord,
    Endpoint,
    Message,
    NewMessage,
)
from tidings.exceptions import Conflict
from tidings.store.memory.tables import DeliveryRow, IdempotencyRow, Tables, require


def ingest(
    tables: Tables, batch: Sequence[NewMessage], now: datetime, keys_since: datetime
) -> list[Accepted | Conflict]:
    """Store ``batch`` (see :meth:`~tidings.store.ports.Messages.ingest`); keys created
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
        if new.email is not None and fanout.email_lane(endpoints) is None:
            lane = fanout.new_email_lane(ids.new_id(ids.ENDPOINT), new.tenant_id, now)
            tables.put_endpoint(lane)
            endpoints.append(tables.endpoint(lane.id))
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
    if new.email is None:
        targets = fanout.targets(new, endpoints)
    else:
        lane = fanout.email_lane(endpoints)
        assert lane is not None, "ingest makes a tenant's lane before its first email"
        targets = [lane]
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
                endpoint_id=target.id,
                state=fanout.first_state(target),
                next_attempt_at=fanout.first_attempt_at(target, now),
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
    return Accepted(message_id, tuple((d_id, target.id) for d_id, target in pairs))


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
        if ep.tenant_id == tenant_id and fanout.receives(ep)
    ]


def _replay_or_conflict(first: IdempotencyRow, new: NewMessage) -> Accepted | Conflict:
    if first.request_hash != new.request_hash:
        return Conflict(
            f"Idempotency-Key {new.idempotency_key!r} was already used with a different "
            "request body; use a new key for a new message"
        )
    accepted = first.accepted
    return Accepted(message_id=accepted.message_id, deliveries=accepted.deliveries, replayed=True)
