"""The Store on SQLAlchemy Core: one query layer for SQLite and, later, PostgreSQL.

Every store call is one transaction written as a plain synchronous function
(``_<name>_tx``) and run whole in a worker thread (or, for a backend that
allows it, a hot-path write inline: see ``_writing_hot``); the async methods of
the :class:`~tidings.store.ports.Store` contract at the end of the class only
hand it over. Backend specifics (connection pragmas, flush levels, the
engine's hot paths in the driver's own SQL) live in subclasses; everything
else is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
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
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from tidings import ids
from tidings.crypto import Keyring
from tidings.domain import fanout
from tidings.domain.alarms import Minute
from tidings.domain.circuit import Breaker, CircuitState
from tidings.domain.models import (
    REPLAYABLE_STATES,
    Accepted,
    ApiKey,
    Attempt,
    AttemptResult,
    Claimed,
    Claims,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    EmailDetail,
    EmailRecord,
    Endpoint,
    EndpointHealth,
    EndpointKind,
    EndpointState,
    Message,
    MessageDetail,
    NewMessage,
    Notice,
    Page,
    ReplaySelector,
    SinkEmail,
    StoredTemplate,
    Suspension,
    Tenant,
)
from tidings.exceptions import Conflict, EncryptionKeyError, StoreError, StoreUnavailable
from tidings.store import health, sealing
from tidings.store.hot import DISABLED, Cursor, apply_results
from tidings.store.ports import Change, Store
from tidings.store.schema import (
    api_keys,
    attempts,
    breakers,
    deliveries,
    emails,
    endpoints,
    idempotency_keys,
    messages,
    notices,
    settings,
    sink_emails,
    templates,
    tenants,
)

_d = deliveries
T = TypeVar("T")
_DELIVERY_COLUMNS = [c for c in _d.c if c.name not in ("lease_expires_at", "retry_base")]
DELETED = "deleted: the endpoint was deleted"
PING_TIMEOUT_S = 2.0
# While writes fail, readiness tries one of its own at most this often (a probe must not
# become a load on the writer).
WRITE_PROBE_EVERY_S = 1.0
PROBE_SETTING = "write_probe_at"


class Turn(StrEnum):
    """What concurrent ingest transactions (of any process) must take turns on, each
    name of it on its own: a name is looked up, then written if it was not found."""

    IDEMPOTENCY_KEY = "idempotency_key"  # a tenant's Idempotency-Key
    EMAIL_LANE = "email_lane"  # a tenant's email lane, made by its first email


# Only a delivery still in flight under the lease it was claimed with goes back:
# one whose lease ran out (and was perhaps claimed again) is left alone.
_RELEASE = (
    update(_d)
    .where(
        _d.c.id == bindparam("b_id"),
        _d.c.state == DeliveryState.IN_FLIGHT,
        _d.c.lease_expires_at == bindparam("b_lease", type_=_d.c.lease_expires_at.type),
    )
    .values(
        state=DeliveryState.PENDING,
        lease_expires_at=None,
        updated_at=bindparam("b_now", type_=_d.c.updated_at.type),
    )
)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into the store's own: callers never see a driver exception.
    A lost or refused connection (the server restarting, say) is "unavailable": the
    same call may well succeed a moment later."""
    try:
        yield
    except DBAPIError as exc:
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            raise StoreUnavailable(f"the store connection was lost: {exc.orig}") from exc
        raise StoreError(f"the store failed: {exc.orig}") from exc


def _connect(engine: Engine) -> Connection:
    try:
        return engine.connect()
    except (DBAPIError, OSError) as exc:
        raise StoreUnavailable(f"the store cannot be reached: {exc}") from exc


class SqlStore(Store):
    """The Store on SQLAlchemy Core; each transaction is one synchronous function.

    A transaction runs whole in a worker thread: writes on the one writer
    thread (so they are serialised, as SQLite needs), reads on a small pool;
    a hot-path write may run inline instead, under the same write lock.
    One hand-off per transaction instead of one per statement is what makes
    SQLite fast here: a claim costs a fraction of a millisecond, not several.
    """

    inline_hot_paths = False
    """Run a hot-path write in the caller's thread when no other write is under way
    (a backend whose short writes are cheaper than a thread hand-off)."""

    def __init__(self, writer: Engine, reader: Engine, readers: int = 4) -> None:
        self._engine = writer
        self._read_engine = reader
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tidings-store-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="tidings-store-reader")
        # Held by whichever thread runs a write transaction: the writer thread, or
        # the event loop's for an inline hot-path write.
        self._write_lock = threading.Lock()
        self._write_failure: StoreError | None = None  # the last write's, if it failed
        self._probed_at = -1e9  # monotonic
        self._keyring: Keyring | None = None

    async def _writing(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._writer, partial(self._locked, fn)
        )

    async def _writing_hot(self, fn: Callable[[], T]) -> T:
        """A claim or a result write: inline if allowed and the store is free, else
        on the writer thread. Inline, a transaction waits for nothing: the lock
        is free, so no other write holds the database."""
        if self.inline_hot_paths and self._write_lock.acquire(blocking=False):
            try:
                return fn()
            finally:
                self._write_lock.release()
        return await self._writing(fn)

    def _locked(self, fn: Callable[[], T]) -> T:
        with self._write_lock:
            return fn()

    async def _reading(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn)

    # transactions (run in a worker thread) -----------------------------------------

    @contextlib.contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[Connection]:
        """A connection in a transaction that commits on exit.

        ``durable=False`` marks the engine's own bookkeeping (claims, leases,
        results): losing it to a power cut (not to a process crash) only means a
        delivery is sent again, so a backend may commit it without a flush.
        """
        with self._noting_writes(), translate_errors():
            conn = _connect(self._engine)
            try:
                self._prepare(conn, durable=durable)
                with conn.begin():
                    yield conn
            finally:
                conn.close()

    @contextlib.contextmanager
    def _noting_writes(self) -> Iterator[None]:
        """Remember it if the write around which this runs failed in the store, for
        readiness (see :meth:`ping`). Only readiness's own write forgets it: on a full
        disk a small write may well succeed while the next batch fails."""
        try:
            yield
        except StoreError as exc:
            self._write_failure = exc
            raise

    def _prepare(self, conn: Connection, *, durable: bool) -> None:
        """Set up ``conn`` before a write transaction (backend hook)."""

    def _take_turns(self, conn: Connection, turn: Turn, names: Collection[str]) -> None:
        """Wait until no other transaction holds ``names`` of ``turn``, then hold them to the
        end of ``conn``'s transaction (backend hook: SQLite's one writer at a time
        already takes turns on everything)."""

    def _announce(self, conn: Connection, news: Change) -> None:
        """Tell the other processes on this store, once ``conn``'s transaction commits,
        what it changed (backend hook: one process per SQLite file has no one to tell)."""

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with translate_errors():
            conn = _connect(self._read_engine)
            try:
                yield conn
            finally:
                conn.close()

    # lifecycle -------------------------------------------------------------------

    def _migrate_tx(self) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(resources.files("tidings.store") / "migrations"))
        with self._write() as conn:
            self._lock_migrations(conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def _lock_migrations(self, conn: Connection) -> None:
        """Keep other processes from migrating until ``conn``'s transaction ends (backend
        hook; SQLite's write transaction already excludes every other writer)."""

    def _close_tx(self) -> None:
        self._engine.dispose()
        self._read_engine.dispose()

    def _ping_tx(self) -> None:
        with self._read() as conn:
            conn.execute(select(1))

    def _probe_write_tx(self, now: datetime) -> None:
        """A write of readiness's own, to learn whether writes succeed again."""
        self._set_setting_tx(PROBE_SETTING, now.isoformat())
        self._write_failure = None

    # the secrets' keys -----------------------------------------------------------------

    @property
    def _keys(self) -> Keyring:
        if self._keyring is None:
            raise EncryptionKeyError("the store's secrets are locked: no encryption key given")
        return self._keyring

    def _open_secrets_tx(self, keyring: Keyring) -> int:
        with self._write() as conn:
            self._lock_migrations(conn)
            upgraded = sealing.unlock(conn, keyring)
        self._keyring = keyring
        return upgraded

    def _stale_secrets_tx(self) -> int:
        with self._read() as conn:
            return sealing.stale_count(conn, self._keys)

    def _reseal_secrets_tx(self, limit: int) -> int:
        with self._write() as conn:
            self._lock_migrations(conn)
            return sealing.reseal(conn, self._keys, limit)

    # settings, tenants, keys -------------------------------------------------------

    def _get_setting_tx(self, key: str) -> str | None:
        with self._read() as conn:
            value = conn.scalar(select(settings.c.value).where(settings.c.key == key))
        return None if value is None else str(value)

    def _set_setting_tx(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(delete(settings).where(settings.c.key == key))
            conn.execute(insert(settings).values(key=key, value=value))

    def _create_tenant_tx(self, tenant: Tenant) -> None:
        with self._write() as conn:
            conn.execute(insert(tenants).values(**_fields(tenant)))

    def _get_tenant_tx(self, tenant_id: str) -> Tenant | None:
        with self._read() as conn:
            row = (conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
        return None if row is None else Tenant(**row._asdict())

    def _list_tenants_tx(self, *, cursor: str | None, limit: int) -> Page[Tenant]:
        query = select(tenants).order_by(tenants.c.id.desc()).limit(limit + 1)
        if cursor:
            query = query.where(tenants.c.id < cursor)
        with self._read() as conn:
            rows = (conn.execute(query)).all()
        return _page([Tenant(**row._asdict()) for row in rows], limit)

    def _create_api_key_tx(self, key: ApiKey) -> None:
        with self._write() as conn:
            conn.execute(insert(api_keys).values(**_fields(key)))

    def _api_key_for_hash_tx(self, key_hash: str) -> ApiKey | None:
        query = select(api_keys).where(
            api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else ApiKey(**row._asdict())

    def _list_api_keys_tx(self, tenant_id: str, *, cursor: str | None, limit: int) -> Page[ApiKey]:
        query = (
            select(api_keys)
            .where(api_keys.c.tenant_id == tenant_id)
            .order_by(api_keys.c.id.desc())
            .limit(limit + 1)
        )
        if cursor:
            query = query.where(api_keys.c.id < cursor)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return _page([ApiKey(**row._asdict()) for row in rows], limit)

    def _revoke_api_key_tx(self, tenant_id: str, key_id: str, now: datetime) -> ApiKey | None:
        mine = and_(api_keys.c.id == key_id, api_keys.c.tenant_id == tenant_id)
        with self._write() as conn:
            revoked = conn.execute(
                update(api_keys).where(mine, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
            ).rowcount
            row = conn.execute(select(api_keys).where(mine)).first()
            if revoked:
                self._announce(conn, Change.KEYS)
        return None if row is None else ApiKey(**row._asdict())

    def _touch_api_key_tx(self, key_id: str, now: datetime) -> None:
        with self._write(durable=False) as conn:
            conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=now))

    # endpoints -------------------------------------------------------------------

    def _create_endpoint_tx(self, endpoint: Endpoint) -> None:
        with self._write() as conn:
            row = sealing.sealed_row(_endpoint_row(endpoint), self._keys)
            conn.execute(insert(endpoints).values(**row))
            self._announce(conn, Change.ENDPOINTS)

    def _get_endpoint_tx(self, tenant_id: str, endpoint_id: str) -> Endpoint | None:
        with self._read() as conn:
            endpoint = _get_endpoint(conn, tenant_id, endpoint_id)
        return None if endpoint is None else sealing.opened(endpoint, self._keys)

    def _list_endpoints_tx(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[Endpoint]:
        query = (
            _endpoint_select()
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
        return _page([sealing.opened(_endpoint(row), self._keys) for row in rows], limit)

    def _update_endpoint_tx(
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
            if _get_endpoint(conn, tenant_id, endpoint_id) is None:
                return None
            conn.execute(
                update(endpoints)
                .where(endpoints.c.id == endpoint_id)
                .values(**values, updated_at=now)
            )
            self._announce(conn, Change.ENDPOINTS)
            endpoint = _get_endpoint(conn, tenant_id, endpoint_id)
        return None if endpoint is None else sealing.opened(endpoint, self._keys)

    def _delete_endpoint_tx(self, tenant_id: str, endpoint_id: str, now: datetime) -> int | None:
        with self._write() as conn:
            if _get_endpoint(conn, tenant_id, endpoint_id) is None:
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
            return _kill_waiting(conn, [endpoint_id], DELETED, now)

    def _active_endpoints_tx(self) -> list[Endpoint]:
        with self._read() as conn:
            rows = conn.execute(_endpoint_select().where(endpoints.c.state == EndpointState.ACTIVE))
            return [sealing.opened(_endpoint(row), self._keys) for row in rows]

    # messages and deliveries ---------------------------------------------------------

    def _ingest_tx(
        self, batch: Sequence[NewMessage], now: datetime, idempotency_ttl_s: float
    ) -> list[Accepted | Conflict]:
        with self._write() as conn:
            self._announce(conn, Change.WORK)
            keys_since = now - timedelta(seconds=idempotency_ttl_s)
            return _Ingest(conn, now, keys_since, partial(self._take_turns, conn)).run(batch)

    def _get_message_tx(self, tenant_id: str, message_id: str) -> MessageDetail | None:
        with self._read() as conn:
            return _message_detail(conn, tenant_id, message_id)

    def _list_deliveries_tx(
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
        with self._read() as conn:
            rows = (conn.execute(query.limit(limit + 1))).all()
        return _page([_delivery(row) for row in rows], limit)

    def _replay_tx(self, tenant_id: str, selector: ReplaySelector, now: datetime) -> int:
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
            pending = conn.execute(
                update(_d)
                .where(*conditions, _d.c.state.in_(REPLAYABLE_STATES), of(EndpointState.ACTIVE))
                .values(
                    state=DeliveryState.PENDING,
                    retry_base=_d.c.attempts,
                    next_attempt_at=now,
                    dead_reason=None,
                    updated_at=now,
                )
            )
            held = conn.execute(
                update(_d)
                .where(
                    *conditions,
                    _d.c.state == DeliveryState.DEAD,
                    of(EndpointState.SUSPENDED),
                )
                .values(
                    state=DeliveryState.HELD,
                    retry_base=_d.c.attempts,
                    dead_reason=None,
                    updated_at=now,
                )
            )
            self._announce(conn, Change.WORK)
        return int(pending.rowcount) + int(held.rowcount)

    # email -----------------------------------------------------------------------

    def _put_template_tx(self, template: StoredTemplate, *, create: bool) -> bool:
        t = templates.c
        with self._write() as conn:
            exists = conn.scalar(
                select(t.name).where(t.tenant_id == template.tenant_id, t.name == template.name)
            )
            if create:
                if exists is not None:
                    return False
                conn.execute(insert(templates).values(**_fields(template)))
                return True
            if exists is None:
                return False
            conn.execute(
                update(templates)
                .where(t.tenant_id == template.tenant_id, t.name == template.name)
                .values(definition=template.definition, updated_at=template.updated_at)
            )
            return True

    def _get_template_tx(self, tenant_id: str, name: str) -> StoredTemplate | None:
        t = templates.c
        with self._read() as conn:
            row = conn.execute(
                select(templates).where(t.tenant_id == tenant_id, t.name == name)
            ).first()
        return None if row is None else StoredTemplate(**row._asdict())

    def _list_templates_tx(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[StoredTemplate]:
        t = templates.c
        query = select(templates).where(t.tenant_id == tenant_id).order_by(t.name).limit(limit + 1)
        if cursor:
            query = query.where(t.name > cursor)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return _page([StoredTemplate(**row._asdict()) for row in rows], limit, key="name")

    def _template_names_tx(self) -> list[str]:
        with self._read() as conn:
            names = select(templates.c.name).distinct().order_by(templates.c.name)
            return list(conn.scalars(names))

    def _delete_template_tx(self, tenant_id: str, name: str) -> bool:
        t = templates.c
        with self._write() as conn:
            result = conn.execute(delete(templates).where(t.tenant_id == tenant_id, t.name == name))
        return bool(result.rowcount)

    def _get_email_tx(self, tenant_id: str, email_id: str) -> EmailDetail | None:
        with self._read() as conn:
            row = conn.execute(
                select(emails).where(emails.c.id == email_id, emails.c.tenant_id == tenant_id)
            ).first()
            detail = None if row is None else _message_detail(conn, tenant_id, email_id)
        if row is None or detail is None:
            return None
        return EmailDetail(EmailRecord(**row._asdict()), detail)

    def _add_sink_email_tx(self, email: SinkEmail) -> None:
        with self._write(durable=False) as conn:
            conn.execute(delete(sink_emails).where(sink_emails.c.email_id == email.email_id))
            conn.execute(insert(sink_emails).values(**_fields(email)))

    def _list_sink_emails_tx(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[SinkEmail]:
        k = sink_emails.c
        query = (
            select(sink_emails)
            .where(k.tenant_id == tenant_id)
            .order_by(k.email_id.desc())
            .limit(limit + 1)
        )
        if cursor:
            query = query.where(k.email_id < cursor)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return _page([SinkEmail(**row._asdict()) for row in rows], limit, key="email_id")

    def _record_with_emails(
        self,
        conn: Connection,
        cursor: Cursor,
        results: Sequence[AttemptResult],
        now: datetime,
        *,
        percent: bool = False,
    ) -> int:
        """Write a result batch with emails in it: ``cursor`` is the driver's own, on
        ``conn``'s transaction. Emails' results also publish their status callbacks,
        through the ingest on SQLAlchemy's connection, so the batch commits whole."""
        applied: set[str] = set()
        ended = apply_results(cursor, results, now, applied=applied, percent=percent)
        # Only a result that still held its lease settles its email: a late one (the
        # email was claimed again meanwhile) publishes no callback.
        self._record_email_outcomes(conn, [r for r in results if r.delivery_id in applied], now)
        return ended

    def _record_email_outcomes(
        self, conn: Connection, results: Sequence[AttemptResult], now: datetime
    ) -> None:
        """What emails' attempts add to their results, in the results' transaction: the
        variant and subject sent, and the status callbacks, published as messages."""
        outcomes = [r.email for r in results if r.email is not None]
        for outcome in outcomes:
            conn.execute(
                update(emails)
                .where(emails.c.id == outcome.email_id)
                .values(
                    variant=outcome.variant,
                    variant_reason=outcome.variant_reason,
                    subject=outcome.subject,
                    sent_at=outcome.sent_at,
                )
            )
        callbacks = [o.callback for o in outcomes if o.callback is not None]
        if callbacks:
            _Ingest(conn, now, now, partial(self._take_turns, conn)).run(callbacks)

    # engine ----------------------------------------------------------------------

    def _reclaim_expired_leases_tx(self, now: datetime) -> int:
        with self._write(durable=False) as conn:
            result = conn.execute(
                update(_d)
                .where(_d.c.state == DeliveryState.IN_FLIGHT, _d.c.lease_expires_at <= now)
                .values(state=DeliveryState.PENDING, lease_expires_at=None, updated_at=now)
            )
            if result.rowcount:
                _end_orphans(conn, now)
        return int(result.rowcount)

    def _release_tx(self, claimed: Sequence[Claimed], now: datetime) -> int:
        if not claimed:
            return 0
        with self._write(durable=False) as conn:
            self._announce(conn, Change.WORK)  # due now, for any worker (this one may be stopping)
            result = conn.execute(
                _RELEASE,
                [{"b_id": c.delivery_id, "b_lease": c.lease_until, "b_now": now} for c in claimed],
            )
            _end_orphans(conn, now)
        return int(result.rowcount)

    # The engine's hot paths, claim and result write-back, run once per few
    # deliveries: each backend writes them with its own driver (see SqliteStore).

    @abstractmethod
    def _claim_tx(
        self, slots: Mapping[str, int], now: datetime, lease_until: datetime
    ) -> Claims: ...

    @abstractmethod
    def _record_results_tx(self, results: Sequence[AttemptResult], now: datetime) -> int: ...

    def _next_wakeup_tx(self, now: datetime) -> datetime | None:
        due = select(func.min(_d.c.next_attempt_at)).where(
            _d.c.state == DeliveryState.PENDING, _d.c.next_attempt_at > now
        )
        lease = select(func.min(_d.c.lease_expires_at)).where(_d.c.state == DeliveryState.IN_FLIGHT)
        with self._read() as conn:
            times = [conn.scalar(due), conn.scalar(lease)]
        known = [t for t in times if t is not None]
        return min(known) if known else None

    def _queue_depth_tx(self) -> dict[DeliveryState, int]:
        with self._read() as conn:
            rows = conn.execute(select(_d.c.state, func.count()).group_by(_d.c.state))
            counts = {DeliveryState(state): int(n) for state, n in rows}
        return {state: counts.get(state, 0) for state in DeliveryState}

    def _purge_idempotency_keys_tx(self, before: datetime) -> int:
        with self._write() as conn:
            result = conn.execute(
                delete(idempotency_keys).where(idempotency_keys.c.created_at < before)
            )
        return int(result.rowcount)

    # endpoint health -------------------------------------------------------------------

    def _update_tenant_tx(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant | None:
        with self._write() as conn:
            if changes:
                conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(**changes))
                self._announce(conn, Change.ENDPOINTS)  # their alarm policies
            row = conn.execute(select(tenants).where(tenants.c.id == tenant_id)).first()
        return None if row is None else Tenant(**row._asdict())

    def _suspend_tx(
        self, tenant_id: str, endpoint_id: str, reason: str, by: str, now: datetime
    ) -> tuple[Suspension, int] | None:
        with self._write() as conn:
            if _get_endpoint(conn, tenant_id, endpoint_id) is None:
                return None
            self._announce(conn, Change.ENDPOINTS)
            return health.suspend(conn, endpoint_id, reason, by, now)

    def _resume_tx(
        self, tenant_id: str, endpoint_id: str, by: str, now: datetime
    ) -> tuple[Suspension, int] | None:
        with self._write() as conn:
            endpoint = _get_endpoint(conn, tenant_id, endpoint_id)
            if endpoint is None:
                return None
            self._announce(conn, Change.SCHEDULE)
            return health.resume(conn, endpoint_id, by, now, fanout.drain_rate(endpoint))

    def _endpoint_health_tx(self, endpoint_ids: Sequence[str]) -> dict[str, EndpointHealth]:
        with self._read() as conn:
            return health.health_of(conn, endpoint_ids)

    def _breakers_tx(self) -> dict[str, tuple[Breaker, datetime]]:
        with self._read() as conn:
            return health.stored_breakers(conn)

    def _suspended_endpoints_tx(self) -> list[Endpoint]:
        with self._read() as conn:
            rows = conn.execute(
                _endpoint_select().where(endpoints.c.state == EndpointState.SUSPENDED)
            )
            return [sealing.opened(_endpoint(row), self._keys) for row in rows]

    def _endpoint_minutes_tx(self, since: datetime) -> dict[str, list[Minute]]:
        with self._read() as conn:
            return health.minutes_since(conn, since)

    def _last_errors_tx(
        self, endpoint_id: str, since: datetime, limit: int
    ) -> list[tuple[datetime, str]]:
        with self._read() as conn:
            return health.last_errors(conn, endpoint_id, since, limit)

    def _held_counts_tx(self) -> dict[str, int]:
        with self._read() as conn:
            return health.held_counts(conn)

    def _oldest_due_tx(self, now: datetime) -> datetime | None:
        with self._read() as conn:
            # Deliveries waiting behind an open breaker wait on purpose: not counted.
            tripped = select(breakers.c.endpoint_id).where(breakers.c.state != CircuitState.CLOSED)
            return conn.scalar(  # type: ignore[no-any-return]
                select(func.min(_d.c.next_attempt_at)).where(
                    _d.c.state == DeliveryState.PENDING,
                    _d.c.next_attempt_at <= now,
                    _d.c.endpoint_id.not_in(tripped),
                )
            )

    def _last_notice_at_tx(self, endpoint_id: str, url: str, kind: str) -> datetime | None:
        with self._read() as conn:
            return health.last_notice_at(conn, endpoint_id, url, kind)

    def _publish_notice_tx(
        self, notice: Notice, published: Sequence[NewMessage], dedupe_since: datetime | None
    ) -> bool:
        with self._write() as conn:
            if dedupe_since is not None:
                last = health.last_notice_at(conn, notice.endpoint_id, notice.url, notice.kind)
                if last is not None and last > dedupe_since:
                    return False
            self._announce(conn, Change.ENDPOINTS)  # its email may have made the email lane
            at = notice.sent_at
            accepted = _Ingest(conn, at, at, partial(self._take_turns, conn)).run(published)
            emailed = [
                a.message_id
                for new, a in zip(published, accepted, strict=True)
                if new.email is not None and isinstance(a, Accepted)
            ]
            row = {**_fields(notice), "email_id": emailed[0] if emailed else None}
            conn.execute(insert(notices).values(**row))
        return True

    def _expire_held_tx(self, before: datetime, reason: str, now: datetime) -> int:
        with self._write() as conn:
            return health.expire_held(conn, before, reason, now)

    def _prune_minutes_tx(self, before: datetime) -> int:
        with self._write(durable=False) as conn:
            return health.prune_minutes(conn, before)

    async def update_tenant(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant | None:
        return await self._writing(partial(self._update_tenant_tx, tenant_id, changes))

    async def suspend_endpoint(
        self, tenant_id: str, endpoint_id: str, reason: str, by: str, now: datetime
    ) -> tuple[Suspension, int] | None:
        return await self._writing(
            partial(self._suspend_tx, tenant_id, endpoint_id, reason, by, now)
        )

    async def resume_endpoint(
        self, tenant_id: str, endpoint_id: str, by: str, now: datetime
    ) -> tuple[Suspension, int] | None:
        return await self._writing(partial(self._resume_tx, tenant_id, endpoint_id, by, now))

    async def endpoint_health(self, endpoint_ids: Sequence[str]) -> dict[str, EndpointHealth]:
        return await self._reading(partial(self._endpoint_health_tx, endpoint_ids))

    async def breakers(self) -> dict[str, tuple[Breaker, datetime]]:
        return await self._reading(self._breakers_tx)

    async def suspended_endpoints(self) -> list[Endpoint]:
        return await self._reading(self._suspended_endpoints_tx)

    async def endpoint_minutes(self, since: datetime) -> dict[str, list[Minute]]:
        return await self._reading(partial(self._endpoint_minutes_tx, since))

    async def last_errors(
        self, endpoint_id: str, since: datetime, limit: int
    ) -> list[tuple[datetime, str]]:
        return await self._reading(partial(self._last_errors_tx, endpoint_id, since, limit))

    async def held_counts(self) -> dict[str, int]:
        return await self._reading(self._held_counts_tx)

    async def oldest_due(self, now: datetime) -> datetime | None:
        return await self._reading(partial(self._oldest_due_tx, now))

    async def last_notice_at(self, endpoint_id: str, url: str, kind: str) -> datetime | None:
        return await self._reading(partial(self._last_notice_at_tx, endpoint_id, url, kind))

    async def publish_notice(
        self, notice: Notice, published: Sequence[NewMessage], dedupe_since: datetime | None
    ) -> bool:
        return await self._writing(
            partial(self._publish_notice_tx, notice, published, dedupe_since)
        )

    async def expire_held(self, before: datetime, reason: str, now: datetime) -> int:
        return await self._writing(partial(self._expire_held_tx, before, reason, now))

    async def prune_minutes(self, before: datetime) -> int:
        return await self._writing(partial(self._prune_minutes_tx, before))

    # the Store contract: each call is one transaction in a worker thread ------------

    async def migrate(self) -> None:
        return await self._writing(self._migrate_tx)

    async def open_secrets(self, keyring: Keyring) -> int:
        return await self._writing(partial(self._open_secrets_tx, keyring))

    async def stale_secrets(self) -> int:
        return await self._reading(self._stale_secrets_tx)

    async def reseal_secrets(self, limit: int) -> int:
        return await self._writing(partial(self._reseal_secrets_tx, limit))

    async def get_setting(self, key: str) -> str | None:
        return await self._reading(partial(self._get_setting_tx, key))

    async def set_setting(self, key: str, value: str) -> None:
        return await self._writing(partial(self._set_setting_tx, key, value))

    async def create_tenant(self, tenant: Tenant) -> None:
        return await self._writing(partial(self._create_tenant_tx, tenant))

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return await self._reading(partial(self._get_tenant_tx, tenant_id))

    async def list_tenants(self, *, cursor: str | None, limit: int) -> Page[Tenant]:
        return await self._reading(partial(self._list_tenants_tx, cursor=cursor, limit=limit))

    async def create_api_key(self, key: ApiKey) -> None:
        return await self._writing(partial(self._create_api_key_tx, key))

    async def api_key_for_hash(self, key_hash: str) -> ApiKey | None:
        return await self._reading(partial(self._api_key_for_hash_tx, key_hash))

    async def list_api_keys(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[ApiKey]:
        return await self._reading(
            partial(self._list_api_keys_tx, tenant_id, cursor=cursor, limit=limit)
        )

    async def revoke_api_key(self, tenant_id: str, key_id: str, now: datetime) -> ApiKey | None:
        return await self._writing(partial(self._revoke_api_key_tx, tenant_id, key_id, now))

    async def touch_api_key(self, key_id: str, now: datetime) -> None:
        await self._writing(partial(self._touch_api_key_tx, key_id, now))

    async def create_endpoint(self, endpoint: Endpoint) -> None:
        return await self._writing(partial(self._create_endpoint_tx, endpoint))

    async def get_endpoint(self, tenant_id: str, endpoint_id: str) -> Endpoint | None:
        return await self._reading(partial(self._get_endpoint_tx, tenant_id, endpoint_id))

    async def delete_endpoint(self, tenant_id: str, endpoint_id: str, now: datetime) -> int | None:
        return await self._writing(partial(self._delete_endpoint_tx, tenant_id, endpoint_id, now))

    async def active_endpoints(self) -> list[Endpoint]:
        return await self._reading(self._active_endpoints_tx)

    async def get_message(self, tenant_id: str, message_id: str) -> MessageDetail | None:
        return await self._reading(partial(self._get_message_tx, tenant_id, message_id))

    async def replay(self, tenant_id: str, selector: ReplaySelector, now: datetime) -> int:
        return await self._writing(partial(self._replay_tx, tenant_id, selector, now))

    async def reclaim_expired_leases(self, now: datetime) -> int:
        return await self._writing(partial(self._reclaim_expired_leases_tx, now))

    async def next_wakeup(self, now: datetime) -> datetime | None:
        return await self._reading(partial(self._next_wakeup_tx, now))

    async def record_results(self, results: Sequence[AttemptResult], now: datetime) -> int:
        return await self._writing_hot(partial(self._record_results_tx, results, now))

    async def queue_depth(self) -> dict[DeliveryState, int]:
        return await self._reading(self._queue_depth_tx)

    async def purge_idempotency_keys(self, before: datetime) -> int:
        return await self._writing(partial(self._purge_idempotency_keys_tx, before))

    async def list_endpoints(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[Endpoint]:
        return await self._reading(
            partial(self._list_endpoints_tx, tenant_id, cursor=cursor, limit=limit)
        )

    async def update_endpoint(
        self, tenant_id: str, endpoint_id: str, changes: Mapping[str, Any], now: datetime
    ) -> Endpoint | None:
        return await self._writing(
            partial(self._update_endpoint_tx, tenant_id, endpoint_id, changes, now)
        )

    async def ingest(
        self, batch: Sequence[NewMessage], now: datetime, idempotency_ttl_s: float
    ) -> list[Accepted | Conflict]:
        return await self._writing(partial(self._ingest_tx, batch, now, idempotency_ttl_s))

    async def put_template(self, template: StoredTemplate, *, create: bool) -> bool:
        return await self._writing(partial(self._put_template_tx, template, create=create))

    async def get_template(self, tenant_id: str, name: str) -> StoredTemplate | None:
        return await self._reading(partial(self._get_template_tx, tenant_id, name))

    async def list_templates(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[StoredTemplate]:
        return await self._reading(
            partial(self._list_templates_tx, tenant_id, cursor=cursor, limit=limit)
        )

    async def template_names(self) -> list[str]:
        return await self._reading(self._template_names_tx)

    async def delete_template(self, tenant_id: str, name: str) -> bool:
        return await self._writing(partial(self._delete_template_tx, tenant_id, name))

    async def get_email(self, tenant_id: str, email_id: str) -> EmailDetail | None:
        return await self._reading(partial(self._get_email_tx, tenant_id, email_id))

    async def add_sink_email(self, email: SinkEmail) -> None:
        return await self._writing(partial(self._add_sink_email_tx, email))

    async def list_sink_emails(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[SinkEmail]:
        return await self._reading(
            partial(self._list_sink_emails_tx, tenant_id, cursor=cursor, limit=limit)
        )

    async def list_deliveries(
        self, tenant_id: str, where: DeliveryFilter, *, cursor: str | None, limit: int
    ) -> Page[Delivery]:
        return await self._reading(
            partial(self._list_deliveries_tx, tenant_id, where, cursor=cursor, limit=limit)
        )

    async def claim(self, slots: Mapping[str, int], now: datetime, lease_until: datetime) -> Claims:
        return await self._writing_hot(partial(self._claim_tx, slots, now, lease_until))

    async def release(self, claimed: Sequence[Claimed], now: datetime) -> int:
        return await self._writing(partial(self._release_tx, claimed, now))

    async def listen(self, hear: Callable[[Change], None]) -> None:
        """Nothing to hear: one process per SQLite file."""

    async def lead(self) -> bool:
        return True

    async def close(self) -> None:
        """Let running transactions finish, then close every connection (one still in
        use by a transaction would otherwise be dropped unclosed)."""

        def finish() -> None:
            self._writer.shutdown(wait=True)
            self._readers.shutdown(wait=True)
            with self._write_lock:  # an inline hot-path write of SQLite's
                self._close_tx()

        await asyncio.get_running_loop().run_in_executor(None, finish)

    async def ping(self) -> None:
        """The store answers a read; and, if the last write failed, a write of the probe's
        own succeeds (tried at most every :data:`WRITE_PROBE_EVERY_S`: in between, the
        last outcome stands). Writes that work cost readiness nothing."""
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await self._reading(self._ping_tx)
                if self._write_failure is not None:
                    if time.monotonic() - self._probed_at >= WRITE_PROBE_EVERY_S:
                        self._probed_at = time.monotonic()
                        now = datetime.now(UTC)
                        with contextlib.suppress(StoreError):
                            await self._writing(partial(self._probe_write_tx, now))
                    if self._write_failure is not None:
                        raise StoreUnavailable(
                            f"the store takes no writes: {self._write_failure.detail}"
                        )
        except TimeoutError as exc:
            raise StoreUnavailable(f"the store did not answer within {PING_TIMEOUT_S:g} s") from exc


class _Ingest:
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
                results.append(_replay_or_conflict(seen[key], new))
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
                        "response": _encode_accepted(accepted),
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
            _new_delivery(d_id, ep, message_id, new, now) for d_id, ep in pairs
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
        self._conn.execute(insert(endpoints).values(**_endpoint_row(lane)))
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
            (row.tenant_id, row.key): (row.request_hash, _decode_accepted(row.response))
            for row in rows
        }

    def _endpoints_by_tenant(self, tenant_ids: set[str]) -> dict[str, list[Endpoint]]:
        rows = self._conn.execute(
            _endpoint_select()
            .where(
                endpoints.c.tenant_id.in_(tenant_ids),
                endpoints.c.state.in_(fanout.RECEIVING_STATES),
            )
            .order_by(endpoints.c.id)
        )
        found: dict[str, list[Endpoint]] = {}
        for row in rows:
            found.setdefault(row.tenant_id, []).append(_endpoint(row))
        return found


def _message_detail(conn: Connection, tenant_id: str, message_id: str) -> MessageDetail | None:
    row = (
        conn.execute(
            select(messages).where(messages.c.id == message_id, messages.c.tenant_id == tenant_id)
        )
    ).first()
    if row is None:
        return None
    rows = conn.execute(
        select(*_DELIVERY_COLUMNS).where(_d.c.message_id == message_id).order_by(_d.c.id)
    )
    found = tuple(_delivery(r) for r in rows)
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


def _encode_accepted(accepted: Accepted) -> str:
    return orjson.dumps({"id": accepted.message_id, "deliveries": accepted.deliveries}).decode()


def _decode_accepted(text: str) -> Accepted:
    data = orjson.loads(text)
    return Accepted(message_id=data["id"], deliveries=tuple((d, e) for d, e in data["deliveries"]))


def _end_orphans(conn: Connection, now: datetime) -> None:
    """Waiting deliveries of endpoints disabled or deleted meanwhile end as dead;
    those of endpoints suspended meanwhile are held."""
    e = endpoints.c
    deleted = select(e.id).where(e.deleted_at.is_not(None))
    disabled = select(e.id).where(e.state == EndpointState.DISABLED, e.deleted_at.is_(None))
    _kill_waiting(conn, deleted, DELETED, now)
    _kill_waiting(conn, disabled, DISABLED, now)
    conn.execute(
        update(_d)
        .where(
            _d.c.endpoint_id.in_(select(e.id).where(e.state == EndpointState.SUSPENDED)),
            _d.c.state == DeliveryState.PENDING,
        )
        .values(state=DeliveryState.HELD, updated_at=now)
    )


def _kill_waiting(conn: Connection, endpoint_ids: Any, reason: str, now: datetime) -> int:
    """Waiting deliveries of endpoints that will never be sent to again die with ``reason``."""
    result = conn.execute(
        update(_d)
        .where(
            _d.c.endpoint_id.in_(endpoint_ids),
            or_(_d.c.state == DeliveryState.PENDING, _d.c.state == DeliveryState.HELD),
        )
        .values(state=DeliveryState.DEAD, dead_reason=reason, updated_at=now)
    )
    return int(result.rowcount)


def _get_endpoint(conn: Connection, tenant_id: str, endpoint_id: str) -> Endpoint | None:
    row = (
        conn.execute(
            _endpoint_select().where(
                endpoints.c.id == endpoint_id,
                endpoints.c.tenant_id == tenant_id,
                endpoints.c.deleted_at.is_(None),
                endpoints.c.kind == EndpointKind.WEBHOOK,
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
    data["kind"] = EndpointKind(data["kind"])
    return Endpoint(**data)


def _endpoint_select() -> Any:
    """Endpoints, each with its tenant's alarm policy (for the one in force)."""
    return select(endpoints, tenants.c.alarm_policy.label("tenant_alarm_policy")).join(
        tenants, tenants.c.id == endpoints.c.tenant_id
    )


def _endpoint_row(endpoint: Endpoint) -> dict[str, Any]:
    row = _fields(endpoint)
    del row["tenant_alarm_policy"]
    row["event_types"] = orjson.dumps(list(endpoint.event_types)).decode()
    row["retry_schedule"] = (
        orjson.dumps(list(endpoint.retry_schedule)).decode() if endpoint.retry_schedule else None
    )
    row["deleted_at"] = None
    return row


def _fields(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


def _page(items: list[T], limit: int, key: str = "id") -> Page[T]:
    """One page of ``items`` fetched with ``limit + 1``: the extra row says there is more.
    The cursor is the last item's ``key``."""
    more = len(items) > limit
    items = items[:limit]
    cursor = getattr(items[-1], key, None) if more and items else None
    return Page(items=tuple(items), next_cursor=cursor)
