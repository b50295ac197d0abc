"""The Store's contract, in roles: what the API, the engine and the CLI ask of persistence.

Each role is a small :class:`~typing.Protocol` over one kind of record (tenants, API
keys, endpoints, messages, claims, …), so a caller that needs one kind is typed with
that role alone (the API key cache takes :class:`ApiKeys`), and :class:`Store` is all
of them: what a backend (SQLite, PostgreSQL, memory) implements whole. Callers never
see SQL. Every method that writes commits before it returns, so a caller that got an
answer may rely on it surviving a crash. Methods that take a batch exist so a backend
can commit many writes with one flush (group commit).

:class:`Change` is what a write tells the other processes on the same store (see
:meth:`Lifecycle.listen`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from tidings.crypto import Keyring
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
from tidings.exceptions import Conflict


class Change(StrEnum):
    """What a committed write changed, as listeners hear of it (the values travel
    as PostgreSQL NOTIFY payloads: they must not change)."""

    WORK = "work"  # new deliveries are due now
    ENDPOINTS = "endpoints"  # endpoints (or their policies) changed
    SCHEDULE = "schedule"  # deliveries were made due at times no worker wrote
    KEYS = "keys"  # an API key was revoked: forget what was cached of keys


@dataclass(frozen=True, slots=True)
class Changed:
    """What one committed write changed, as :meth:`Lifecycle.listen` tells it: the
    :class:`Change` and, when the write knows them, the endpoints it concerns (those an
    ingest made deliveries for), so that a dispatcher in the same process looks at
    those alone. News from another process names no endpoint."""

    news: Change
    endpoint_ids: tuple[str, ...] = ()


class Lifecycle(Protocol):
    """How the store starts, stops and stands among other processes."""

    async def migrate(self) -> None:
        """Bring the schema to the newest migration."""

    async def close(self) -> None:
        """Release connections."""

    async def listen(self, hear: Callable[[Changed], None]) -> None:
        """From now until :meth:`close`, call ``hear(changed)`` (from any thread) right
        after each write that changed something commits: this process's writes at
        once (naming the endpoints concerned where known) and, on a store shared by
        several processes, the others' too. A write that rolls back is never heard. A
        missed ``WORK``, ``ENDPOINTS`` or ``SCHEDULE`` only delays work until the
        dispatcher's next look at the store; a missed ``KEYS`` lets a revoked key work
        until its cache entry expires. Whenever another process's news may have been
        missed (the listening connection was lost and made again), every kind is heard
        once, so that each cache reads what it keeps again. ``hear`` must be quick and
        must not raise; it may run on any thread (the caller's, as a write's answer
        comes back, or one of the store's own)."""

    async def lead(self) -> bool:
        """Whether this process is the one that runs the singleton duties (health
        evaluation, retention): it holds the store's leadership, taking it now if no
        live process does."""

    async def ping(self) -> None:
        """Raise :class:`~tidings.exceptions.StoreUnavailable` unless the store answers
        and takes writes: after a failed write (a full disk, a read-only database), until
        a write succeeds again."""


class Secrets(Protocol):
    """The keys that seal endpoints' signing secrets at rest."""

    def key_file(self) -> Path | None:
        """Where the encryption key is kept when none is given: beside the database for
        a store in a file; None where it must be given (a database server)."""
        return None

    async def open_secrets(self, keyring: Keyring) -> int:
        """Keep secrets sealed by ``keyring`` from now on: check that it opens the store
        (:class:`~tidings.exceptions.EncryptionKeyError` if not), seal what was kept in
        plaintext, and return how many endpoints that was. Until this is called, an
        endpoint's secret can be neither written nor read."""

    async def stale_secrets(self) -> int:
        """How many endpoints keep a secret sealed under a key other than the sealing one."""

    async def reseal_secrets(self, limit: int) -> int:
        """Seal up to ``limit`` endpoints' secrets again under the sealing key; how many.
        0 means none is left (and the store no longer needs the other keys)."""


class Settings(Protocol):
    """Small named values the service keeps for itself (not :class:`tidings.config.Settings`,
    which is read from the environment)."""

    async def get_setting(self, key: str) -> str | None: ...

    async def set_setting(self, key: str, value: str) -> None: ...


class Tenants(Protocol):
    """Tenants, and their alarm policies."""

    async def create_tenant(self, tenant: Tenant) -> None: ...

    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...

    async def list_tenants(self, *, cursor: str | None, limit: int) -> Page[Tenant]: ...

    async def update_tenant(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant | None:
        """Apply ``changes`` (column to value); None if there is no such tenant."""


class ApiKeys(Protocol):
    """Tenants' API keys, kept as hashes."""

    async def create_api_key(self, key: ApiKey) -> None: ...

    async def api_key_for_hash(self, key_hash: str) -> ApiKey | None:
        """The API key with this SHA-256 hash, if there is one and it is not revoked."""

    async def list_api_keys(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[ApiKey]:
        """The tenant's API keys, revoked ones included, newest first."""

    async def revoke_api_key(self, tenant_id: str, key_id: str, now: datetime) -> ApiKey | None:
        """Revoke the tenant's key ``key_id`` (a revoked one keeps its first revocation
        time) and tell every process (``"keys"``); None if the tenant has no such key."""

    async def touch_api_key(self, key_id: str, now: datetime) -> None:
        """Record that the key was used at ``now``."""


class Endpoints(Protocol):
    """Where a tenant's messages go."""

    async def create_endpoint(self, endpoint: Endpoint) -> None: ...

    async def get_endpoint(self, tenant_id: str, endpoint_id: str) -> Endpoint | None:
        """The endpoint, unless it is another tenant's or deleted."""

    async def list_endpoints(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[Endpoint]: ...

    async def update_endpoint(
        self, tenant_id: str, endpoint_id: str, changes: Mapping[str, Any], now: datetime
    ) -> Endpoint | None:
        """Apply ``changes`` (field name to new value); None if there is no such endpoint."""

    async def delete_endpoint(self, tenant_id: str, endpoint_id: str, now: datetime) -> int | None:
        """Disable the endpoint for good and end its waiting deliveries (``deleted: …``).

        Returns how many deliveries that ended, or None if there is no such endpoint.
        """

    async def active_endpoints(self) -> list[Endpoint]:
        """Every endpoint deliveries may be sent to now (for the dispatcher)."""

    async def suspended_endpoints(self) -> list[Endpoint]: ...


class Messages(Protocol):
    """What producers send, the deliveries it fans out to, and their replay."""

    async def ingest(
        self, batch: Sequence[NewMessage], now: datetime, idempotency_ttl_s: float
    ) -> list[Accepted | Conflict]:
        """Store each message with one delivery per matching endpoint, in one commit.

        A message whose idempotency key was seen with the same request hash
        answers the first :class:`Accepted` again (``replayed=True``) and stores
        nothing; with another hash it is a :class:`Conflict`.
        """

    async def get_message(self, tenant_id: str, message_id: str) -> MessageDetail | None: ...

    async def list_deliveries(
        self, tenant_id: str, where: DeliveryFilter, *, cursor: str | None, limit: int
    ) -> Page[Delivery]:
        """Newest first; ``cursor`` is the ``next_cursor`` of the page before."""

    async def replay(self, tenant_id: str, selector: ReplaySelector, now: datetime) -> int:
        """Return the selected dead or held deliveries of active endpoints to pending."""

    async def purge_idempotency_keys(self, before: datetime) -> int:
        """Forget idempotency keys created before ``before``; return how many."""


class Queue(Protocol):
    """The engine's side of deliveries: claims (leases), results, and the queue's shape."""

    async def claim(self, slots: Mapping[str, int], now: datetime, lease_until: datetime) -> Claims:
        """Lease up to ``slots[endpoint_id]`` due deliveries of each endpoint, oldest due
        first (fewer where a store-wide cap holds them back: see :class:`Claims`)."""

    async def release(self, claimed: Sequence[Claimed], now: datetime) -> int:
        """Return claimed deliveries that were not attempted to pending; how many.

        Deliveries of an endpoint that was disabled or deleted meanwhile end as
        dead instead (as :meth:`reclaim_expired_leases` does for lapsed leases).
        """

    async def reclaim_expired_leases(self, now: datetime) -> int:
        """Return in-flight deliveries whose lease ran out (a crashed worker's) to pending."""

    async def record_results(self, results: Sequence[AttemptResult], now: datetime) -> int:
        """Write back finished attempts and the deliveries' new states, in one commit.

        Waiting deliveries of an endpoint found disabled (by a 410 in this batch or
        before) end as dead (``disabled: …``); returns how many did.
        """

    async def next_wakeup(self, now: datetime) -> datetime | None:
        """The earliest future time a pending delivery falls due or a lease runs out."""

    async def queue_depth(self) -> dict[DeliveryState, int]: ...

    async def oldest_due(self, now: datetime) -> datetime | None:
        """When the delivery that has waited longest since it fell due fell due (of
        endpoints whose breaker is closed: the others' deliveries wait on purpose)."""


class Templates(Protocol):
    """Tenants' email templates."""

    async def put_template(self, template: StoredTemplate, *, create: bool) -> bool:
        """Create (``create``) or replace a template; False if it already exists
        (create) or does not (replace)."""

    async def get_template(self, tenant_id: str, name: str) -> StoredTemplate | None: ...

    async def list_templates(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[StoredTemplate]:
        """By name; ``cursor`` is the ``next_cursor`` of the page before."""

    async def template_names(self) -> list[str]:
        """Every template name in use, across tenants (for the metrics' series)."""

    async def delete_template(self, tenant_id: str, name: str) -> bool:
        """False if there was no such template. Emails accepted before and not yet
        sent then fail: their template is gone."""


class Emails(Protocol):
    """Emails as sent, and the embedded mail sink's inbox."""

    async def get_email(self, tenant_id: str, email_id: str) -> EmailDetail | None: ...

    async def add_sink_email(self, email: SinkEmail) -> None:
        """Keep an email the embedded mail sink received (again: a resend replaces it)."""

    async def list_sink_emails(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[SinkEmail]:
        """Newest first; ``cursor`` is the ``next_cursor`` of the page before."""


class Health(Protocol):
    """Endpoint health: breakers, per-minute results, suspensions, held deliveries and
    owner notices."""

    async def suspend_endpoint(
        self, tenant_id: str, endpoint_id: str, reason: str, by: str, now: datetime
    ) -> tuple[Suspension, int] | None:
        """Suspend an active endpoint and hold its waiting deliveries: the suspension
        and how many were held. None if there is no such endpoint;
        :class:`~tidings.exceptions.Conflict` if it is not active."""

    async def resume_endpoint(
        self, tenant_id: str, endpoint_id: str, by: str, now: datetime
    ) -> tuple[Suspension, int] | None:
        """Resume a suspended endpoint, close its breaker, and make its held deliveries
        due one after another in the order they were created, at its drain rate (its
        policy's, or its rate limit if lower): the suspension ended and how many
        drain. None if there is no such endpoint;
        :class:`~tidings.exceptions.Conflict` if it is not suspended."""

    async def endpoint_health(self, endpoint_ids: Sequence[str]) -> dict[str, EndpointHealth]:
        """The breaker, held count and suspension history of each endpoint."""

    async def breakers(self) -> dict[str, tuple[Breaker, datetime]]:
        """Every endpoint's breaker as last written, and when it was."""

    async def endpoint_minutes(self, since: datetime) -> dict[str, list[Minute]]:
        """The per-minute results of every webhook endpoint from ``since`` on."""

    async def last_errors(
        self, endpoint_id: str, since: datetime, limit: int
    ) -> list[tuple[datetime, str]]:
        """The endpoint's latest failed attempts since ``since``: (time, error), newest first."""

    async def held_counts(self) -> dict[str, int]:
        """Held deliveries per endpoint (those with none are left out)."""

    async def last_notice_at(self, endpoint_id: str, url: str, kind: str) -> datetime | None:
        """When the last notice of ``kind`` about the endpoint at ``url`` was sent."""

    async def publish_notice(
        self, notice: Notice, published: Sequence[NewMessage], dedupe_since: datetime | None
    ) -> bool:
        """Record ``notice`` and ingest what it publishes (its email, its event), in one
        commit; unless (with ``dedupe_since``) a notice of its kind about its endpoint
        and URL was sent after that time: then nothing, and False."""

    async def expire_held(self, before: datetime, reason: str, now: datetime) -> int:
        """Deliveries held since before ``before`` die with ``reason``; how many."""

    async def prune_minutes(self, before: datetime) -> int:
        """Forget per-minute results from before ``before``."""


class Store(
    Lifecycle,
    Secrets,
    Settings,
    Tenants,
    ApiKeys,
    Endpoints,
    Messages,
    Queue,
    Templates,
    Emails,
    Health,
    Protocol,
):
    """Persistence of tenants, endpoints, messages, deliveries and attempts: every role."""
