"""The Store contract in memory: the SQL stores' behaviour with nothing persisted.

What it is for: the engine and the API tested fast, against a store that behaves
as SQLite and PostgreSQL do (the contract suite in ``tests/contract`` runs the
same tests on all three), and a ``tidings`` started with ``memory://`` to try
things without a database. What it is not: durable. A process that stops
forgets everything, so it never backs a real deployment.

It keeps what one process keeps, as SQLite does: claims take what the dispatcher's
slots ask (its own counts are the caps), :meth:`lead` is always True. Secrets are
kept as given, never sealed, yet the keyring is asked for as the SQL stores ask for
it (an endpoint's secret can be neither written nor read before
:meth:`open_secrets`), and the store remembers which keys opened it, so a second
:meth:`open_secrets` with other keys fails as it would on a database. Whatever a
write announces (a :class:`~tidings.store.ports.Changed`) is heard by every
:meth:`listen` er once the write is done, as the SQL stores tell this process's.

Every method runs whole on the event loop without awaiting half-way: that is its
transaction, and two calls never interleave.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from tidings.crypto import PREFIX, Keyring
from tidings.domain import fanout
from tidings.domain.alarms import Minute
from tidings.domain.circuit import Breaker
from tidings.domain.models import (
    Accepted,
    ApiKey,
    AttemptResult,
    Claimed,
    Claims,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    EmailDetail,
    Endpoint,
    EndpointHealth,
    EndpointKind,
    EndpointState,
    MessageDetail,
    NewMessage,
    Page,
    ReplaySelector,
    SinkEmail,
    StoredTemplate,
    Suspension,
    Tenant,
)
from tidings.domain.notices import Notice
from tidings.domain.retry import ENDED_BY_DELETE
from tidings.exceptions import Conflict, EncryptionKeyError, StoreUnavailable
from tidings.store.memory import health, work
from tidings.store.memory.ingest import ingest
from tidings.store.memory.tables import Tables, page, require, unique
from tidings.store.ports import Change, Changed, Store
from tidings.store.sql import sealing

log = structlog.get_logger(__name__)


class MemoryStore(Store):
    """Every record in :class:`~tidings.store.memory.tables.Tables`, on one event loop."""

    def __init__(self) -> None:
        self._tables = Tables()
        self._keyring: Keyring | None = None
        self._listeners: list[Callable[[Changed], None]] = []
        self._closed = False

    @property
    def _t(self) -> Tables:
        return self._open()

    def _open(self) -> Tables:
        """The tables, while the store is open (a closed store answers nothing, as the
        SQL stores' closed connections do)."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        return self._tables

    def _given_keys(self) -> Keyring:
        """The keys from :meth:`open_secrets`: asked for wherever the SQL stores would
        seal or open a secret, so that a caller who forgot them fails here too."""
        if self._keyring is None:
            raise EncryptionKeyError("the store's secrets are locked: no encryption key given")
        return self._keyring

    def _announce(self, news: Change, endpoint_ids: Sequence[str] = ()) -> None:
        """Tell every listener what the write that just ran changed (see :meth:`listen`);
        one that fails is logged, never the write's failure: the write is done."""
        changed = Changed(news, tuple(endpoint_ids))
        for hear in self._listeners:
            try:
                hear(changed)
            except Exception:
                log.exception("store_listener_failed", news=news)

    # lifecycle -----------------------------------------------------------------------

    async def migrate(self) -> None:
        """Nothing to migrate: the tables are the records themselves."""
        self._open()

    async def close(self) -> None:
        self._closed = True
        self._listeners.clear()

    async def listen(self, hear: Callable[[Changed], None]) -> None:
        self._open()
        self._listeners.append(hear)

    async def lead(self) -> bool:
        """One process keeps the store: it always leads."""
        self._open()
        return True

    async def ping(self) -> None:
        self._open()

    # the secrets' keys ------------------------------------------------------------------

    def key_file(self) -> Path | None:
        """None: nothing is kept beside a store in memory, so the key must be given."""
        return None

    async def open_secrets(self, keyring: Keyring) -> int:
        """Check ``keyring`` against the canary the first keys sealed (kept in the
        settings, as the SQL stores keep it); nothing is sealed, so nothing to seal."""
        settings = self._t.settings
        canary = settings.get(sealing.CANARY)
        if canary is not None:
            keyring.open(canary, sealing.CANARY_CONTEXT)
        else:
            settings[sealing.CANARY] = keyring.seal(sealing.CANARY_TEXT, sealing.CANARY_CONTEXT)
        self._keyring = keyring
        return 0

    async def stale_secrets(self) -> int:
        self._open()
        self._given_keys()
        return 0

    async def reseal_secrets(self, limit: int) -> int:
        """No secret is sealed; the canary is sealed again under the sealing key, so the
        old key can go (as on a database once every secret was sealed again)."""
        keyring, settings = self._given_keys(), self._t.settings
        canary = settings.get(sealing.CANARY)
        if canary is None or not canary.startswith(f"{PREFIX}{keyring.sealing_id}:"):
            settings[sealing.CANARY] = keyring.seal(sealing.CANARY_TEXT, sealing.CANARY_CONTEXT)
        return 0

    # settings, tenants, keys --------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        return self._t.settings.get(key)

    async def set_setting(self, key: str, value: str) -> None:
        self._t.settings[key] = value

    async def create_tenant(self, tenant: Tenant) -> None:
        unique(self._t.tenants, tenant.id, "tenant")
        self._t.tenants[tenant.id] = tenant

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return self._t.tenants.get(tenant_id)

    async def list_tenants(self, *, cursor: str | None, limit: int) -> Page[Tenant]:
        return page(self._t.tenants.values(), _id, after=cursor, newest_first=True, limit=limit)

    async def update_tenant(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant | None:
        tenants = self._t.tenants
        if changes:
            if tenant_id in tenants:
                tenants[tenant_id] = replace(tenants[tenant_id], **changes)
            self._announce(Change.ENDPOINTS)  # their alarm policies
        return tenants.get(tenant_id)

    async def create_api_key(self, key: ApiKey) -> None:
        t = self._t
        require(t.tenants, key.tenant_id, "tenant")
        unique(t.api_keys, key.id, "api key")
        unique(t.api_key_of_hash, key.key_hash, "api key hash")
        t.api_keys[key.id] = key
        t.api_key_of_hash[key.key_hash] = key.id

    async def api_key_for_hash(self, key_hash: str) -> ApiKey | None:
        t = self._t
        key = t.api_keys.get(t.api_key_of_hash.get(key_hash, ""))
        return key if key is not None and key.revoked_at is None else None

    async def list_api_keys(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[ApiKey]:
        mine = (k for k in self._t.api_keys.values() if k.tenant_id == tenant_id)
        return page(mine, _id, after=cursor, newest_first=True, limit=limit)

    async def revoke_api_key(self, tenant_id: str, key_id: str, now: datetime) -> ApiKey | None:
        keys = self._t.api_keys
        key = keys.get(key_id)
        if key is None or key.tenant_id != tenant_id:
            return None
        if key.revoked_at is None:
            key = keys[key_id] = replace(key, revoked_at=now)
            self._announce(Change.KEYS)
        return key

    async def touch_api_key(self, key_id: str, now: datetime) -> None:
        keys = self._t.api_keys
        if key_id in keys:
            keys[key_id] = replace(keys[key_id], last_used_at=now)

    # endpoints --------------------------------------------------------------------------

    async def create_endpoint(self, endpoint: Endpoint) -> None:
        t = self._t
        self._given_keys()
        require(t.tenants, endpoint.tenant_id, "tenant")
        unique(t.endpoints, endpoint.id, "endpoint")
        # As stored: a schedule with no entry is no schedule of its own.
        t.put_endpoint(replace(endpoint, retry_schedule=endpoint.retry_schedule or None))
        self._announce(Change.ENDPOINTS)

    def _opened(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        """Endpoints handed out: their secrets need the keys, as the SQL stores' do
        (which ask for them only when they have a secret to open)."""
        if endpoints:
            self._given_keys()
        return endpoints

    async def get_endpoint(self, tenant_id: str, endpoint_id: str) -> Endpoint | None:
        found = self._t.webhook_endpoint(tenant_id, endpoint_id)
        return None if found is None else self._opened([found])[0]

    async def list_endpoints(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[Endpoint]:
        t = self._t
        mine = (
            t.endpoint(e.id)
            for e in t.endpoints.values()
            if e.tenant_id == tenant_id
            and e.id not in t.deleted_at
            and e.kind is EndpointKind.WEBHOOK
        )
        shown = page(mine, _id, after=cursor, newest_first=True, limit=limit)
        return Page(tuple(self._opened(list(shown.items))), shown.next_cursor)

    async def update_endpoint(
        self, tenant_id: str, endpoint_id: str, changes: Mapping[str, Any], now: datetime
    ) -> Endpoint | None:
        t = self._t
        self._given_keys()
        values = dict(changes)
        if "event_types" in values:  # empty or null: every event type
            values["event_types"] = tuple(values["event_types"] or ())
        if values.get("retry_schedule") is not None:  # null: the default schedule
            values["retry_schedule"] = tuple(values["retry_schedule"])
        if t.webhook_endpoint(tenant_id, endpoint_id) is None:
            return None
        t.put_endpoint(replace(t.endpoints[endpoint_id], **values, updated_at=now))
        self._announce(Change.ENDPOINTS)
        return t.webhook_endpoint(tenant_id, endpoint_id)

    async def delete_endpoint(self, tenant_id: str, endpoint_id: str, now: datetime) -> int | None:
        t = self._t
        endpoint = t.webhook_endpoint(tenant_id, endpoint_id)
        if endpoint is None:
            return None
        t.put_endpoint(
            replace(
                endpoint, state=EndpointState.DISABLED, disabled_reason="deleted", updated_at=now
            )
        )
        t.deleted_at[endpoint_id] = now
        self._announce(Change.ENDPOINTS)
        return work.kill_waiting(t, [endpoint_id], ENDED_BY_DELETE, now)

    async def active_endpoints(self) -> list[Endpoint]:
        return self._endpoints_in(EndpointState.ACTIVE)

    async def suspended_endpoints(self) -> list[Endpoint]:
        return self._endpoints_in(EndpointState.SUSPENDED)

    def _endpoints_in(self, state: EndpointState) -> list[Endpoint]:
        t = self._t
        return self._opened([t.endpoint(e.id) for e in t.endpoints.values() if e.state is state])

    # messages and deliveries ------------------------------------------------------------

    async def ingest(
        self, batch: Sequence[NewMessage], now: datetime, idempotency_ttl_s: float
    ) -> list[Accepted | Conflict]:
        accepted = ingest(self._t, batch, now, now - timedelta(seconds=idempotency_ttl_s))
        made = [
            endpoint_id
            for result in accepted
            if isinstance(result, Accepted) and not result.replayed
            for _, endpoint_id in result.deliveries
        ]
        if made:  # the endpoints named, so that a dispatcher looks at those alone
            self._announce(Change.WORK, list(dict.fromkeys(made)))
        return accepted

    async def get_message(self, tenant_id: str, message_id: str) -> MessageDetail | None:
        return self._message_detail(tenant_id, message_id)

    def _message_detail(self, tenant_id: str, message_id: str) -> MessageDetail | None:
        t = self._t
        message = t.messages.get(message_id)
        if message is None or message.tenant_id != tenant_id:
            return None
        rows = sorted(t.of_message.get(message_id, ()), key=_id)
        attempts = {
            row.id: tuple(sorted(t.attempts[row.id], key=lambda a: a.number))
            for row in rows
            if t.attempts.get(row.id)
        }
        return MessageDetail(message, tuple(row.record() for row in rows), attempts)

    async def list_deliveries(
        self, tenant_id: str, where: DeliveryFilter, *, cursor: str | None, limit: int
    ) -> Page[Delivery]:
        t = self._t
        if where.message_id is not None:
            rows: Any = t.of_message.get(where.message_id, ())
        elif where.endpoint_id is not None:
            rows = t.of_endpoint.get(where.endpoint_id, {}).values()
        elif where.state is not None:
            rows = t.in_state[where.state].values()
        else:
            rows = t.deliveries.values()
        found = [
            row
            for row in rows
            if row.tenant_id == tenant_id
            and (not where.state or row.state is where.state)
            and (not where.endpoint_id or row.endpoint_id == where.endpoint_id)
            and (not where.message_id or row.message_id == where.message_id)
            and (not where.since or row.created_at >= where.since)
            and (not where.until or row.created_at < where.until)
        ]
        shown = page(found, _id, after=cursor, newest_first=True, limit=limit)
        return Page(tuple(row.record() for row in shown.items), shown.next_cursor)

    async def replay(self, tenant_id: str, selector: ReplaySelector, now: datetime) -> int:
        replayed = work.replay(self._t, tenant_id, selector, now)
        self._announce(Change.WORK)
        return replayed

    # email --------------------------------------------------------------------------------

    async def put_template(self, template: StoredTemplate, *, create: bool) -> bool:
        templates = self._t.templates
        key = (template.tenant_id, template.name)
        if create:
            if key in templates:
                return False
            require(self._t.tenants, template.tenant_id, "tenant")
            templates[key] = template
            return True
        if key not in templates:
            return False
        templates[key] = replace(
            templates[key], definition=template.definition, updated_at=template.updated_at
        )
        return True

    async def get_template(self, tenant_id: str, name: str) -> StoredTemplate | None:
        return self._t.templates.get((tenant_id, name))

    async def list_templates(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[StoredTemplate]:
        mine = (tp for (owner, _), tp in self._t.templates.items() if owner == tenant_id)
        return page(mine, lambda tp: tp.name, after=cursor, newest_first=False, limit=limit)

    async def template_names(self) -> list[str]:
        return sorted({name for _, name in self._t.templates})

    async def delete_template(self, tenant_id: str, name: str) -> bool:
        return self._t.templates.pop((tenant_id, name), None) is not None

    async def get_email(self, tenant_id: str, email_id: str) -> EmailDetail | None:
        email = self._t.emails.get(email_id)
        if email is None or email.tenant_id != tenant_id:
            return None
        detail = self._message_detail(tenant_id, email_id)
        return None if detail is None else EmailDetail(email, detail)

    async def add_sink_email(self, email: SinkEmail) -> None:
        self._t.sink_emails[email.email_id] = email

    async def list_sink_emails(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[SinkEmail]:
        mine = (e for e in self._t.sink_emails.values() if e.tenant_id == tenant_id)
        return page(mine, lambda e: e.email_id, after=cursor, newest_first=True, limit=limit)

    # engine -----------------------------------------------------------------------------

    async def reclaim_expired_leases(self, now: datetime) -> int:
        return work.reclaim_expired_leases(self._t, now)

    async def claim(self, slots: Mapping[str, int], now: datetime, lease_until: datetime) -> Claims:
        return work.claim(self._t, slots, now, lease_until)

    async def release(self, claimed: Sequence[Claimed], now: datetime) -> int:
        if not claimed:
            return 0
        released = work.release(self._t, claimed, now)
        self._announce(Change.WORK)  # due now, for any worker (this one may be stopping)
        return released

    async def next_wakeup(self, now: datetime) -> datetime | None:
        return work.next_wakeup(self._t, now)

    async def record_results(self, results: Sequence[AttemptResult], now: datetime) -> int:
        t = self._t
        applied: set[str] = set()
        ended = work.record_results(t, results, now, applied)
        # Only a result that still held its lease settles its email: a late one (the
        # email was claimed again meanwhile) publishes no callback.
        outcomes = [r.email for r in results if r.email is not None and r.delivery_id in applied]
        for outcome in outcomes:
            if outcome.email_id in t.emails:
                t.emails[outcome.email_id] = replace(
                    t.emails[outcome.email_id],
                    variant=outcome.variant,
                    variant_reason=outcome.variant_reason,
                    subject=outcome.subject,
                    sent_at=outcome.sent_at,
                )
        callbacks = [o.callback for o in outcomes if o.callback is not None]
        if callbacks:
            ingest(t, callbacks, now, now)
        return ended

    async def queue_depth(self) -> dict[DeliveryState, int]:
        return {state: len(rows) for state, rows in self._t.in_state.items()}

    async def oldest_due(self, now: datetime) -> datetime | None:
        return work.oldest_due(self._t, now)

    async def purge_idempotency_keys(self, before: datetime) -> int:
        keys = self._t.idempotency
        old = [key for key, row in keys.items() if row.created_at < before]
        for key in old:
            del keys[key]
        return len(old)

    # endpoint health ------------------------------------------------------------------

    async def suspend_endpoint(
        self, tenant_id: str, endpoint_id: str, reason: str, by: str, now: datetime
    ) -> tuple[Suspension, int] | None:
        t = self._t
        if t.webhook_endpoint(tenant_id, endpoint_id) is None:
            return None
        suspended = health.suspend(t, endpoint_id, reason, by, now)
        self._announce(Change.ENDPOINTS)
        return suspended

    async def resume_endpoint(
        self, tenant_id: str, endpoint_id: str, by: str, now: datetime
    ) -> tuple[Suspension, int] | None:
        t = self._t
        endpoint = t.webhook_endpoint(tenant_id, endpoint_id)
        if endpoint is None:
            return None
        resumed = health.resume(t, endpoint_id, by, now, fanout.drain_rate(endpoint))
        self._announce(Change.SCHEDULE)
        return resumed

    async def endpoint_health(self, endpoint_ids: Sequence[str]) -> dict[str, EndpointHealth]:
        return health.health_of(self._t, endpoint_ids)

    async def breakers(self) -> dict[str, tuple[Breaker, datetime]]:
        return dict(self._t.breakers)

    async def endpoint_minutes(self, since: datetime) -> dict[str, list[Minute]]:
        return health.minutes_since(self._t, since)

    async def last_errors(
        self, endpoint_id: str, since: datetime, limit: int
    ) -> list[tuple[datetime, str]]:
        return health.last_errors(self._t, endpoint_id, since, limit)

    async def held_counts(self) -> dict[str, int]:
        return health.held_counts(self._t)

    async def last_notice_at(self, endpoint_id: str, url: str, kind: str) -> datetime | None:
        return health.last_notice_at(self._t, endpoint_id, url, kind)

    async def publish_notice(
        self, notice: Notice, published: Sequence[NewMessage], dedupe_since: datetime | None
    ) -> bool:
        t = self._t
        if dedupe_since is not None:
            last = health.last_notice_at(t, notice.endpoint_id, notice.url, notice.kind)
            if last is not None and last > dedupe_since:
                return False
        at = notice.sent_at
        accepted = ingest(t, published, at, at)
        emailed = [
            a.message_id
            for new, a in zip(published, accepted, strict=True)
            if new.email is not None and isinstance(a, Accepted)
        ]
        t.notices.append(replace(notice, email_id=emailed[0] if emailed else None))
        self._announce(Change.ENDPOINTS)  # its email may have made the email lane
        return True

    async def expire_held(self, before: datetime, reason: str, now: datetime) -> int:
        return health.expire_held(self._t, before, reason, now)

    async def prune_minutes(self, before: datetime) -> int:
        return health.prune_minutes(self._t, before)


def _id(record: Any) -> str:
    return str(record.id)
