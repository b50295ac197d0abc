"""One ingest transaction: idempotency checks, fan-out, and the inserts.

Producers' messages, owner notices' messages and emails' status callbacks are all
ingested here, on the connection of the transaction that publishes them; which
endpoints get a message, and how its deliveries start, are the rules of
:mod:`tidings.domain.fanout`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, delete, insert, select, tuple_
from sqlalchemy.engine import Connection

from tidings import ids
from tidings.domain import fanout
from tidings.domain.models import Accepted, Endpoint, NewMessage
from tidings.exceptions import Conflict
from tidings.store.sql.core import Turn
from tidings.store.sql.rows import endpoint_of, endpoint_row, endpoint_select
from tidings.store.sql.schema import deliveries, emails, endpoints, idempotency_keys, messages


class Ingest:
    """One ingest transaction: idempotency checks, fan-out, and the inserts."""

    def __init__(
        self,
        conn: Connection,
        now: datetime,
        keys_since: datetime,
        take_turns: Callable[[Turn, Collection[str]], None],
    ) -> None:
        self._conn = conn
        self._take_turns = take_turns
        self._now = now
        self._keys_since = keys_since
        self._rows: dict[Any, list[dict[str, Any]]] = {
            table: [] for table in (messages, deliveries, emails, idempotency_keys)
        }

    def run(self, batch: Sequence[NewMessage]) -> list[Accepted | Conflict]:
        # Another process may be ingesting the same key at this instant: whoever comes
        # second waits for the first to commit, then finds its answer and replays it.
        self._take_turns(
            Turn.IDEMPOTENCY_KEY,
            {f"{m.tenant_id}/{m.idempotency_key}" for m in batch if m.idempotency_key},
        )
        seen = self._known_keys(batch)
        fan_out = self._endpoints_by_tenant({m.tenant_id for m in batch})
        self._await_lanes(batch, fan_out)
        results: list[Accepted | Conflict] = []
        for new in batch:
            key = (new.tenant_id, new.idempotency_key) if new.idempotency_key else None
            if key and key in seen:
                results.append(replay_or_conflict(seen[key], new))
                continue
            accepted = self._accept(new, fan_out.setdefault(new.tenant_id, []))
            results.append(accepted)
            if key:
                seen[key] = (new.request_hash, accepted)
                self._rows[idempotency_keys].append(
                    {
                        "tenant_id": new.tenant_id,
                        "key": new.idempotency_key,
                        "request_hash": new.request_hash,
                        "message_id": accepted.message_id,
                        "response": encode_accepted(accepted),
                        "created_at": self._now,
                    }
                )
        for table, rows in self._rows.items():  # in an order the foreign keys allow
            if rows:
                self._conn.execute(insert(table), rows)
        return results

    def _accept(self, new: NewMessage, tenant_endpoints: list[Endpoint]) -> Accepted:
        """The rows of one new message; a webhook message goes to every subscribed
        endpoint, an email to the tenant's email lane."""
        now = self._now
        if new.email is None:
            message_id = ids.new_id(ids.MESSAGE)
            targets = fanout.targets(new, tenant_endpoints)
        else:
            message_id = ids.new_id(ids.EMAIL)
            targets = [self._email_lane(new.tenant_id, tenant_endpoints)]
        pairs = tuple((ids.new_id(ids.DELIVERY), ep) for ep in targets)
        self._rows[messages].append(
            {
                "id": message_id,
                "tenant_id": new.tenant_id,
                "event_type": new.event_type,
                "payload": new.payload,
                "idempotency_key": new.idempotency_key,
                "created_at": now,
            }
        )
        self._rows[deliveries].extend(
            new_delivery(d_id, ep, message_id, new, now) for d_id, ep in pairs
        )
        if new.email is not None:
            self._rows[emails].append(
                {
                    "id": message_id,
                    "tenant_id": new.tenant_id,
                    "delivery_id": pairs[0][0],
                    "to_address": new.email.to,
                    "template": new.email.template,
                    "reference": new.email.reference,
                    "variant": None,
                    "variant_reason": None,
                    "subject": None,
                    "created_at": now,
                    "sent_at": None,
                }
            )
        return Accepted(message_id, tuple((d_id, ep.id) for d_id, ep in pairs))

    def _await_lanes(self, batch: Sequence[NewMessage], fan_out: dict[str, list[Endpoint]]) -> None:
        """Tenants of the batch's emails that have no email lane yet may be making one
        in another process this instant: wait for it, and read their endpoints again
        (each tenant has one lane, made once)."""
        lacking = {
            m.tenant_id
            for m in batch
            if m.email is not None and fanout.email_lane(fan_out.get(m.tenant_id, ())) is None
        }
        if lacking:
            self._take_turns(Turn.EMAIL_LANE, lacking)
            fan_out.update(self._endpoints_by_tenant(lacking))

    def _email_lane(self, tenant_id: str, tenant_endpoints: list[Endpoint]) -> Endpoint:
        """The tenant's email lane, made now if this is its first email."""
        lane = fanout.email_lane(tenant_endpoints)
        if lane is not None:
            return lane
        lane = fanout.new_email_lane(ids.new_id(ids.ENDPOINT), tenant_id, self._now)
        self._conn.execute(insert(endpoints).values(**endpoint_row(lane)))
        tenant_endpoints.append(lane)
        return lane

    def _known_keys(
        self, batch: Sequence[NewMessage]
    ) -> dict[tuple[str, str], tuple[str, Accepted]]:
        keys = {(m.tenant_id, m.idempotency_key) for m in batch if m.idempotency_key}
        if not keys:
            return {}
        k = idempotency_keys.c
        stale = and_(tuple_(k.tenant_id, k.key).in_(keys), k.created_at < self._keys_since)
        self._conn.execute(delete(idempotency_keys).where(stale))
        rows = self._conn.execute(
            select(k.tenant_id, k.key, k.request_hash, k.response).where(
                tuple_(k.tenant_id, k.key).in_(keys)
            )
        )
        return {
            (row.tenant_id, row.key): (row.request_hash, decode_accepted(row.response))
            for row in rows
        }

    def _endpoints_by_tenant(self, tenant_ids: set[str]) -> dict[str, list[Endpoint]]:
        rows = self._conn.execute(
            endpoint_select()
            .where(
                endpoints.c.tenant_id.in_(tenant_ids),
                endpoints.c.state.in_(fanout.RECEIVING_STATES),
            )
            .order_by(endpoints.c.id)
        )
        found: dict[str, list[Endpoint]] = {}
        for row in rows:
            found.setdefault(row.tenant_id, []).append(endpoint_of(row))
        return found


def replay_or_conflict(first: tuple[str, Accepted], new: NewMessage) -> Accepted | Conflict:
    request_hash, accepted = first
    if request_hash != new.request_hash:
        return Conflict(
            f"Idempotency-Key {new.idempotency_key!r} was already used with a different "
            "request body; use a new key for a new message"
        )
    return Accepted(message_id=accepted.message_id, deliveries=accepted.deliveries, replayed=True)


def new_delivery(
    delivery_id: str, endpoint: Endpoint, message_id: str, new: NewMessage, now: datetime
) -> dict[str, Any]:
    return {
        "id": delivery_id,
        "message_id": message_id,
        "tenant_id": new.tenant_id,
        "endpoint_id": endpoint.id,
        "state": fanout.first_state(endpoint),
        "attempts": 0,
        "retry_base": 0,
        "next_attempt_at": fanout.first_attempt_at(endpoint, now),
        "lease_expires_at": None,
        "last_status": None,
        "last_error": None,
        "dead_reason": None,
        "created_at": now,
        "updated_at": now,
        "succeeded_at": None,
    }


def encode_accepted(accepted: Accepted) -> str:
    return orjson.dumps({"id": accepted.message_id, "deliveries": accepted.deliveries}).decode()


def decode_accepted(text: str) -> Accepted:
    data = orjson.loads(text)
    return Accepted(message_id=data["id"], deliveries=tuple((d, e) for d, e in data["deliveries"]))
