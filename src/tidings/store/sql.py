"""The Store on SQLAlchemy Core (async): one query layer for SQLite and PostgreSQL.

Backend specifics (connection pragmas, how writers are serialised, how rows
are locked while claiming) live in subclasses; everything else is here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    Row,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings import ids
from tidings.exceptions import Conflict, StoreError, StoreUnavailable
from tidings.models import (
    REPLAYABLE_STATES,
    Accepted,
    ApiKey,
    Attempt,
    AttemptResult,
    Claimed,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    Endpoint,
    EndpointState,
    Message,
    MessageDetail,
    NewMessage,
    Page,
    ReplaySelector,
    Tenant,
)
from tidings.store.base import Store
from tidings.store.schema import (
    api_keys,
    attempts,
    deliveries,
    endpoints,
    idempotency_keys,
    messages,
    settings,
    tenants,
)

_d = deliveries
T = TypeVar("T")
_ENDPOINT_JSON_FIELDS = ("event_types", "retry_schedule")
_DELIVERY_COLUMNS = [c for c in _d.c if c.name not in ("lease_expires_at", "retry_base")]
_CLAIM_CHUNK = 100
DISABLED = "disabled: the endpoint was disabled after answering 410 Gone"
DELETED = "deleted: the endpoint was deleted"  # per-endpoint subqueries per statement


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into the store's own: callers never see a driver exception."""
    try:
        yield
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(f"the store connection was lost: {exc.orig}") from exc
        raise StoreError(f"the store failed: {exc.orig}") from exc


async def _connect(engine: AsyncEngine) -> AsyncConnection:
    try:
        return await engine.connect()
    except (DBAPIError, OSError) as exc:
        raise StoreUnavailable(f"the store cannot be reached: {exc}") from exc


class SqlStore(Store):
    """Shared SQL implementation; subclasses provide the engine and the write discipline."""

    def __init__(self, engine: AsyncEngine, read_engine: AsyncEngine | None = None) -> None:
        self._engine = engine
        self._read_engine = read_engine or engine

    # write discipline ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction that commits on exit."""
        with translate_errors():
            conn = await _connect(self._engine)
            try:
                async with conn.begin():
                    yield conn
            finally:
                await conn.close()

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with translate_errors():
            conn = await _connect(self._read_engine)
            try:
                yield conn
            finally:
                await conn.close()

    # lifecycle -------------------------------------------------------------------

    async def migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        script_location = str(resources.files("tidings.store") / "migrations")

        def upgrade(sync_conn: Any) -> None:
            cfg = Config()
            cfg.set_main_option("script_location", script_location)
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        async with self._write() as conn:
            await conn.run_sync(upgrade)

    async def close(self) -> None:
        await self._engine.dispose()
        await self._read_engine.dispose()

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(2), self._read() as conn:
                await conn.execute(select(1))
        except TimeoutError as exc:
            raise StoreUnavailable("the store did not answer within 2 s") from exc

    # settings, tenants, keys -------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        async with self._read() as conn:
            value = await conn.scalar(select(settings.c.value).where(settings.c.key == key))
        return None if value is None else str(value)

    async def set_setting(self, key: str, value: str) -> None:
        async with self._write() as conn:
            await conn.execute(delete(settings).where(settings.c.key == key))
            await conn.execute(insert(settings).values(key=key, value=value))

    async def create_tenant(self, tenant: Tenant) -> None:
        async with self._write() as conn:
            await conn.execute(insert(tenants).values(**_fields(tenant)))

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._read() as conn:
            row = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
        return None if row is None else Tenant(**row._asdict())

    async def list_tenants(self, *, cursor: str | None, limit: int) -> Page[Tenant]:
        query = select(tenants).order_by(tenants.c.id.desc()).limit(limit + 1)
        if cursor:
            query = query.where(tenants.c.id < cursor)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return _page([Tenant(**row._asdict()) for row in rows], limit)

    async def create_api_key(self, key: ApiKey) -> None:
        async with self._write() as conn:
            await conn.execute(insert(api_keys).values(**_fields(key)))

    async def tenant_for_key(self, key_hash: str) -> str | None:
        async with self._read() as conn:
            value = await conn.scalar(
                select(api_keys.c.tenant_id).where(api_keys.c.key_hash == key_hash)
            )
        return None if value is None else str(value)

    # endpoints -------------------------------------------------------------------

    async def create_endpoint(self, endpoint: Endpoint) -> None:
        async with self._write() as conn:
            await conn.execute(insert(endpoints).values(**_endpoint_row(endpoint)))

    async def get_endpoint(self, tenant_id: str, endpoint_id: str) -> Endpoint | None:
        async with self._read() as conn:
            return await _get_endpoint(conn, tenant_id, endpoint_id)

    async def list_endpoints(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[Endpoint]:
        query = (
            select(endpoints)
            .where(endpoints.c.tenant_id == tenant_id, endpoints.c.deleted_at.is_(None))
            .order_by(endpoints.c.id.desc())
            .limit(limit + 1)
        )
        if cursor:
            query = query.where(endpoints.c.id < cursor)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return _page([_endpoint(row) for row in rows], limit)

    async def update_endpoint(
        self, tenant_id: str, endpoint_id: str, changes: Mapping[str, Any], now: datetime
    ) -> Endpoint | None:
        values = {
            key: orjson.dumps(value).decode() if key in _ENDPOINT_JSON_FIELDS and value else value
            for key, value in changes.items()
        }
        async with self._write() as conn:
            if await _get_endpoint(conn, tenant_id, endpoint_id) is None:
                return None
            await conn.execute(
                update(endpoints)
                .where(endpoints.c.id == endpoint_id)
                .values(**values, updated_at=now)
            )
            return await _get_endpoint(conn, tenant_id, endpoint_id)

    async def delete_endpoint(self, tenant_id: str, endpoint_id: str, now: datetime) -> int | None:
        async with self._write() as conn:
            if await _get_endpoint(conn, tenant_id, endpoint_id) is None:
                return None
            await conn.execute(
                update(endpoints)
                .where(endpoints.c.id == endpoint_id)
                .values(
                    state=EndpointState.DISABLED,
                    disabled_reason="deleted",
                    deleted_at=now,
                    updated_at=now,
                )
            )
            return await _kill_waiting(conn, [endpoint_id], DELETED, now)

    async def active_endpoints(self) -> list[Endpoint]:
        async with self._read() as conn:
            rows = await conn.execute(
                select(endpoints).where(endpoints.c.state == EndpointState.ACTIVE)
            )
            return [_endpoint(row) for row in rows]

    # messages and deliveries ---------------------------------------------------------

    async def ingest(
        self, batch: Sequence[NewMessage], now: datetime, idempotency_ttl_s: float
    ) -> list[Accepted | Conflict]:
        async with self._write() as conn:
            return await _Ingest(conn, now, now - timedelta(seconds=idempotency_ttl_s)).run(batch)

    async def get_message(self, tenant_id: str, message_id: str) -> MessageDetail | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(messages).where(
                        messages.c.id == message_id, messages.c.tenant_id == tenant_id
                    )
                )
            ).first()
            if row is None:
                return None
            rows = await conn.execute(
                select(*_DELIVERY_COLUMNS).where(_d.c.message_id == message_id).order_by(_d.c.id)
            )
            found = tuple(_delivery(r) for r in rows)
            attempt_rows = await conn.execute(
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
            attempts={key: tuple(value) for key, value in by_delivery.items()},
        )

    async def list_deliveries(
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
        query = select(*_DELIVERY_COLUMNS).where(*conditions).order_by(_d.c.id.desc())
        async with self._read() as conn:
            rows = (await conn.execute(query.limit(limit + 1))).all()
        return _page([_delivery(row) for row in rows], limit)

    async def replay(self, tenant_id: str, selector: ReplaySelector, now: datetime) -> int:
        conditions = [
            _d.c.tenant_id == tenant_id,
            _d.c.state.in_(REPLAYABLE_STATES),
            _d.c.endpoint_id.in_(
                select(endpoints.c.id).where(endpoints.c.state == EndpointState.ACTIVE)
            ),
        ]
        if selector.ids:
            conditions.append(_d.c.id.in_(selector.ids))
        if selector.endpoint_id:
            conditions.append(_d.c.endpoint_id == selector.endpoint_id)
        if selector.since:
            conditions.append(_d.c.created_at >= selector.since)
        if selector.until:
            conditions.append(_d.c.created_at < selector.until)
        async with self._write() as conn:
            result = await conn.execute(
                update(_d)
                .where(*conditions)
                .values(
                    state=DeliveryState.PENDING,
                    retry_base=_d.c.attempts,
                    next_attempt_at=now,
                    dead_reason=None,
                    updated_at=now,
                )
            )
        return int(result.rowcount)

    # engine ----------------------------------------------------------------------

    async def reclaim_expired_leases(self, now: datetime) -> int:
        async with self._write() as conn:
            result = await conn.execute(
                update(_d)
                .where(_d.c.state == DeliveryState.IN_FLIGHT, _d.c.lease_expires_at <= now)
                .values(state=DeliveryState.PENDING, lease_expires_at=None, updated_at=now)
            )
        return int(result.rowcount)

    async def claim(
        self, slots: Mapping[str, int], now: datetime, lease_until: datetime
    ) -> list[Claimed]:
        wanted = [(endpoint_id, n) for endpoint_id, n in slots.items() if n > 0]
        claimed: list[Claimed] = []
        async with self._write() as conn:
            for start in range(0, len(wanted), _CLAIM_CHUNK):
                chunk = wanted[start : start + _CLAIM_CHUNK]
                claimed.extend(await self._claim_chunk(conn, chunk, now, lease_until))
        return claimed

    async def _claim_chunk(
        self,
        conn: AsyncConnection,
        chunk: Sequence[tuple[str, int]],
        now: datetime,
        lease_until: datetime,
    ) -> list[Claimed]:
        picks = [self._due(endpoint_id, n, now).subquery() for endpoint_id, n in chunk]
        chosen = union_all(*(select(pick.c.id) for pick in picks)).subquery()
        rows = (
            await conn.execute(
                select(
                    _d.c.id,
                    _d.c.message_id,
                    _d.c.endpoint_id,
                    _d.c.attempts,
                    _d.c.retry_base,
                    _d.c.created_at,
                    messages.c.event_type,
                    messages.c.payload,
                    messages.c.created_at.label("message_created_at"),
                )
                .join(messages, messages.c.id == _d.c.message_id)
                .where(_d.c.id.in_(select(chosen.c.id)))
            )
        ).all()
        if not rows:
            return []
        await conn.execute(
            update(_d)
            .where(_d.c.id.in_([row.id for row in rows]))
            .values(state=DeliveryState.IN_FLIGHT, lease_expires_at=lease_until, updated_at=now)
        )
        return [
            Claimed(
                delivery_id=row.id,
                message_id=row.message_id,
                endpoint_id=row.endpoint_id,
                event_type=row.event_type,
                payload=row.payload,
                attempts=row.attempts,
                retry_base=row.retry_base,
                created_at=row.created_at,
                message_created_at=row.message_created_at,
                lease_until=lease_until,
            )
            for row in rows
        ]

    def _due(self, endpoint_id: str, limit: int, now: datetime) -> Any:
        """The ids of ``endpoint_id``'s due pending deliveries, oldest due first."""
        return (
            select(_d.c.id)
            .where(
                _d.c.endpoint_id == endpoint_id,
                _d.c.state == DeliveryState.PENDING,
                _d.c.next_attempt_at <= now,
            )
            .order_by(_d.c.next_attempt_at)
            .limit(limit)
        )

    async def next_wakeup(self, now: datetime) -> datetime | None:
        due = select(func.min(_d.c.next_attempt_at)).where(
            _d.c.state == DeliveryState.PENDING, _d.c.next_attempt_at > now
        )
        lease = select(func.min(_d.c.lease_expires_at)).where(_d.c.state == DeliveryState.IN_FLIGHT)
        async with self._read() as conn:
            times = [await conn.scalar(due), await conn.scalar(lease)]
        known = [t for t in times if t is not None]
        return min(known) if known else None

    async def record_results(self, results: Sequence[AttemptResult], now: datetime) -> int:
        if not results:
            return 0
        async with self._write() as conn:
            await conn.execute(insert(attempts), [_fields(r.attempt) for r in results])
            await conn.execute(
                update(_d)
                # A result whose lease ran out (and was perhaps claimed again) is
                # kept as an attempt but changes nothing: the newer claim decides.
                .where(
                    _d.c.id == bindparam("b_id"),
                    _d.c.state == DeliveryState.IN_FLIGHT,
                    _d.c.lease_expires_at == bindparam("b_lease", type_=_d.c.lease_expires_at.type),
                )
                .values(
                    state=bindparam("b_state"),
                    attempts=_d.c.attempts + 1,
                    next_attempt_at=bindparam("b_next", type_=_d.c.next_attempt_at.type),
                    lease_expires_at=None,
                    last_status=bindparam("b_status"),
                    last_error=bindparam("b_error"),
                    dead_reason=bindparam("b_reason"),
                    succeeded_at=bindparam("b_succeeded", type_=_d.c.succeeded_at.type),
                    updated_at=now,
                ),
                [
                    {
                        "b_id": r.delivery_id,
                        "b_lease": r.lease_until,
                        "b_state": r.state,
                        "b_next": r.next_attempt_at,
                        "b_status": r.attempt.status_code,
                        "b_error": r.attempt.error,
                        "b_reason": r.dead_reason,
                        "b_succeeded": now if r.state is DeliveryState.SUCCEEDED else None,
                    }
                    for r in results
                ],
            )
            gone = sorted({r.endpoint_id for r in results if r.disable_endpoint})
            if gone:
                await conn.execute(
                    update(endpoints)
                    .where(endpoints.c.id.in_(gone), endpoints.c.state == EndpointState.ACTIVE)
                    .values(
                        state=EndpointState.DISABLED,
                        disabled_reason="the endpoint answered 410 Gone",
                        updated_at=now,
                    )
                )
            disabled = select(endpoints.c.id).where(
                endpoints.c.id.in_({r.endpoint_id for r in results}),
                endpoints.c.state == EndpointState.DISABLED,
            )
            return await _kill_waiting(conn, disabled, DISABLED, now)

    async def queue_depth(self) -> dict[DeliveryState, int]:
        async with self._read() as conn:
            rows = await conn.execute(select(_d.c.state, func.count()).group_by(_d.c.state))
            counts = {DeliveryState(state): int(n) for state, n in rows}
        return {state: counts.get(state, 0) for state in DeliveryState}

    async def purge_idempotency_keys(self, before: datetime) -> int:
        async with self._write() as conn:
            result = await conn.execute(
                delete(idempotency_keys).where(idempotency_keys.c.created_at < before)
            )
        return int(result.rowcount)


class _Ingest:
    """One ingest transaction: idempotency checks, fan-out, and the inserts."""

    def __init__(self, conn: AsyncConnection, now: datetime, keys_since: datetime) -> None:
        self._conn = conn
        self._now = now
        self._keys_since = keys_since

    async def run(self, batch: Sequence[NewMessage]) -> list[Accepted | Conflict]:
        seen = await self._known_keys(batch)
        fan_out = await self._endpoints_by_tenant({m.tenant_id for m in batch})
        results: list[Accepted | Conflict] = []
        message_rows: list[dict[str, Any]] = []
        delivery_rows: list[dict[str, Any]] = []
        key_rows: list[dict[str, Any]] = []
        now = self._now
        for new in batch:
            key = (new.tenant_id, new.idempotency_key) if new.idempotency_key else None
            if key and key in seen:
                results.append(_replay_or_conflict(seen[key], new))
                continue
            message_id = ids.new_id(ids.MESSAGE)
            targets = [ep for ep in fan_out.get(new.tenant_id, ()) if ep.accepts(new.event_type)]
            pairs = tuple((ids.new_id(ids.DELIVERY), ep) for ep in targets)
            accepted = Accepted(message_id, tuple((d_id, ep.id) for d_id, ep in pairs))
            results.append(accepted)
            message_rows.append(
                {
                    "id": message_id,
                    "tenant_id": new.tenant_id,
                    "event_type": new.event_type,
                    "payload": new.payload,
                    "idempotency_key": new.idempotency_key,
                    "created_at": now,
                }
            )
            delivery_rows.extend(
                _new_delivery(d_id, ep, message_id, new, now) for d_id, ep in pairs
            )
            if key:
                seen[key] = (new.request_hash, accepted)
                key_rows.append(
                    {
                        "tenant_id": new.tenant_id,
                        "key": new.idempotency_key,
                        "request_hash": new.request_hash,
                        "message_id": message_id,
                        "response": _encode_accepted(accepted),
                        "created_at": now,
                    }
                )
        for table, rows in (
            (messages, message_rows),
            (deliveries, delivery_rows),
            (idempotency_keys, key_rows),
        ):
            if rows:
                await self._conn.execute(insert(table), rows)
        return results

    async def _known_keys(
        self, batch: Sequence[NewMessage]
    ) -> dict[tuple[str, str], tuple[str, Accepted]]:
        keys = {(m.tenant_id, m.idempotency_key) for m in batch if m.idempotency_key}
        if not keys:
            return {}
        k = idempotency_keys.c
        stale = and_(tuple_(k.tenant_id, k.key).in_(keys), k.created_at < self._keys_since)
        await self._conn.execute(delete(idempotency_keys).where(stale))
        rows = await self._conn.execute(
            select(k.tenant_id, k.key, k.request_hash, k.response).where(
                tuple_(k.tenant_id, k.key).in_(keys)
            )
        )
        return {
            (row.tenant_id, row.key): (row.request_hash, _decode_accepted(row.response))
            for row in rows
        }

    async def _endpoints_by_tenant(self, tenant_ids: set[str]) -> dict[str, list[Endpoint]]:
        rows = await self._conn.execute(
            select(endpoints)
            .where(
                endpoints.c.tenant_id.in_(tenant_ids),
                endpoints.c.state == EndpointState.ACTIVE,
            )
            .order_by(endpoints.c.id)
        )
        found: dict[str, list[Endpoint]] = {}
        for row in rows:
            found.setdefault(row.tenant_id, []).append(_endpoint(row))
        return found


def _replay_or_conflict(first: tuple[str, Accepted], new: NewMessage) -> Accepted | Conflict:
    request_hash, accepted = first
    if request_hash != new.request_hash:
        return Conflict(
            f"Idempotency-Key {new.idempotency_key!r} was already used with a different "
            "request body; use a new key for a new message"
        )
    return Accepted(message_id=accepted.message_id, deliveries=accepted.deliveries, replayed=True)


def _new_delivery(
    delivery_id: str, endpoint: Endpoint, message_id: str, new: NewMessage, now: datetime
) -> dict[str, Any]:
    # An endpoint's own schedule may delay even the first attempt (its first entry).
    first_delay = endpoint.retry_schedule[0] if endpoint.retry_schedule else 0.0
    return {
        "id": delivery_id,
        "message_id": message_id,
        "tenant_id": new.tenant_id,
        "endpoint_id": endpoint.id,
        "state": DeliveryState.PENDING,
        "attempts": 0,
        "retry_base": 0,
        "next_attempt_at": now + timedelta(seconds=first_delay),
        "lease_expires_at": None,
        "last_status": None,
        "last_error": None,
        "dead_reason": None,
        "created_at": now,
        "updated_at": now,
        "succeeded_at": None,
    }


def _encode_accepted(accepted: Accepted) -> str:
    return orjson.dumps({"id": accepted.message_id, "deliveries": accepted.deliveries}).decode()


def _decode_accepted(text: str) -> Accepted:
    data = orjson.loads(text)
    return Accepted(message_id=data["id"], deliveries=tuple((d, e) for d, e in data["deliveries"]))


async def _kill_waiting(
    conn: AsyncConnection, endpoint_ids: Any, reason: str, now: datetime
) -> int:
    """Waiting deliveries of endpoints that will never be sent to again die with ``reason``."""
    result = await conn.execute(
        update(_d)
        .where(
            _d.c.endpoint_id.in_(endpoint_ids),
            or_(_d.c.state == DeliveryState.PENDING, _d.c.state == DeliveryState.HELD),
        )
        .values(state=DeliveryState.DEAD, dead_reason=reason, updated_at=now)
    )
    return int(result.rowcount)


async def _get_endpoint(conn: AsyncConnection, tenant_id: str, endpoint_id: str) -> Endpoint | None:
    row = (
        await conn.execute(
            select(endpoints).where(
                endpoints.c.id == endpoint_id,
                endpoints.c.tenant_id == tenant_id,
                endpoints.c.deleted_at.is_(None),
            )
        )
    ).first()
    return None if row is None else _endpoint(row)


def _delivery(row: Row[Any]) -> Delivery:
    data = row._asdict()
    data["state"] = DeliveryState(data["state"])
    return Delivery(**data)


def _endpoint(row: Row[Any]) -> Endpoint:
    data = row._asdict()
    data.pop("deleted_at", None)
    data["event_types"] = tuple(orjson.loads(data["event_types"]))
    schedule = data["retry_schedule"]
    data["retry_schedule"] = tuple(orjson.loads(schedule)) if schedule else None
    data["state"] = EndpointState(data["state"])
    return Endpoint(**data)


def _endpoint_row(endpoint: Endpoint) -> dict[str, Any]:
    row = _fields(endpoint)
    row["event_types"] = orjson.dumps(list(endpoint.event_types)).decode()
    row["retry_schedule"] = (
        orjson.dumps(list(endpoint.retry_schedule)).decode() if endpoint.retry_schedule else None
    )
    row["deleted_at"] = None
    return row


def _fields(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


def _page(items: list[T], limit: int) -> Page[T]:
    """One page of ``items`` fetched with ``limit + 1``: the extra row says there is more."""
    more = len(items) > limit
    items = items[:limit]
    cursor = getattr(items[-1], "id", None) if more and items else None
    return Page(items=tuple(items), next_cursor=cursor)
