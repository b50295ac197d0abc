"""The Store contract: everything the API and the engine ask of persistence.

A backend implements this class; callers never see SQL. Every method that
writes commits before it returns, so a caller that got an answer may rely on
it surviving a crash. Methods that take a batch exist so a backend can commit
many writes with one flush (group commit).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

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
    Notice,
    Page,
    ReplaySelector,
    SinkEmail,
    StoredTemplate,
    Suspension,
    Tenant,
)
from tidings.exceptions import Conflict


class Store(ABC):
    """Persistence of tenants, endpoints, messages, deliveries and attempts."""

    # lifecycle -----------------------------------------------------------------

    @abstractmethod
    async def migrate(self) -> None:
        """Bring the schema to the newest migration."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abstractmethod
    async def listen(self, hear: Callable[[str], None]) -> None:
        """From now until :meth:`close`, call ``hear(news)`` (from any thread) whenever
        another process's write committed ``news``: ``"work"`` (deliveries due now),
        ``"endpoints"`` (endpoints or policies changed), ``"schedule"`` (deliveries
        made due later) or ``"keys"`` (an API key was revoked). Missing one of the first
        three only delays work until the dispatcher's next look at the store; a missed
        ``"keys"`` lets a revoked key work until its cache entry expires. Whenever news
        may have been missed (the listening connection was lost and made again), every
        kind is heard once, so that each cache reads what it keeps again."""

    @abstractmethod
    async def lead(self) -> bool:
        """Whether this process is the one that runs the singleton duties (health
        evaluation, retention): it holds the store's leadership, taking it now if no
        live process does."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise :class:`~tidings.exceptions.StoreUnavailable` unless the store answers
        and takes writes: after a failed write (a full disk, a read-only database), until
        a write succeeds again."""

    # the secrets' keys -----------------------------------------------------------

    def key_file(self) -> Path | None:
        """Where the encryption key is kept when none is given: beside the database for
        a store in a file; None where it must be given (a database server)."""
        return None

    @abstractmethod
    async def open_secrets(self, keyring: Keyring) -> int:
        """Keep secrets sealed by ``keyring`` from now on: check that it opens the store
        (:class:`~tidings.exceptions.EncryptionKeyError` if not), seal what was kept in
        plaintext, and return how many endpoints that was. Until this is called, an
        endpoint's secret can be neither written nor read."""

    @abstractmethod
    async def stale_secrets(self) -> int:
        """How many endpoints keep a secret sealed under a key other than the sealing one."""

    @abstractmethod
    async def reseal_secrets(self, limit: int) -> int:
        """Seal up to ``limit`` endpoints' secrets again under the sealing key; how many.
        0 means none is left (and the store no longer needs the other keys)."""

    # settings, tenants, keys -----------------------------------------------------

    @abstractmethod
    async def get_setting(self, key: str) -> str | None: ...

    @abstractmethod
    async def set_setting(self, key: str, value: str) -> None: ...

    @abstractmethod
    async def create_tenant(self, tenant: Tenant) -> None: ...

    @abstractmethod
    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...

    @abstractmethod
    async def list_tenants(self, *, cursor: str | None, limit: int) -> Page[Tenant]: ...

    @abstractmethod
    async def create_api_key(self, key: ApiKey) -> None: ...

    @abstractmethod
    async def api_key_for_hash(self, key_hash: str) -> ApiKey | None:
        """The API key with this SHA-256 hash, if there is one and it is not revoked."""

    @abstractmethod
    async def list_api_keys(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[ApiKey]:
        """The tenant's API keys, revoked ones included, newest first."""

    @abstractmethod
    async def revoke_api_key(self, tenant_id: str, key_id: str, now: datetime) -> ApiKey | None:
        """Revoke the tenant's key ``key_id`` (a revoked one keeps its first revocation
        time) and tell every process (``"keys"``); None if the tenant has no such key."""

    @abstractmethod
    async def touch_api_key(self, key_id: str, now: datetime) -> None:
        """Record that the key was used at ``now``."""

    # endpoints -----------------------------------------------------------------

    @abstractmethod
    async def create_endpoint(self, endpoint: Endpoint) -> None: ...

    @abstractmethod
    async def get_endpoint(self, tenant_id: str, endpoint_id: str) -> Endpoint | None:
        """The endpoint, unless it is another tenant's or deleted."""

    @abstractmethod
    async def list_endpoints(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[Endpoint]: ...

    @abstractmethod
    async def update_endpoint(
        self, tenant_id: str, endpoint_id: str, changes: Mapping[str, Any], now: datetime
    ) -> Endpoint | None:
        """Apply ``changes`` (field name to new value); None if there is no such endpoint."""

    @abstractmethod
    async def delete_endpoint(self, tenant_id: str, endpoint_id: str, now: datetime) -> int | None:
        """Disable the endpoint for good and end its waiting deliveries (``deleted: …``).

        Returns how many deliveries that ended, or None if there is no such endpoint.
        """

    @abstractmethod
    async def active_endpoints(self) -> list[Endpoint]:
        """Every endpoint deliveries may be sent to now (for the dispatcher)."""

    # messages and deliveries -------------------------------------------------------

    @abstractmethod
    async def ingest(
        self, batch: Sequence[NewMessage], now: datetime, idempotency_ttl_s: float
    ) -> list[Accepted | Conflict]:
        """Store each message with one delivery per matching endpoint, in one commit.

        A message whose idempotency key was seen with the same request hash
        answers the first :class:`Accepted` again (``replayed=True``) and stores
        nothing; with another hash it is a :class:`Conflict`.
        """

    @abstractmethod
    async def get_message(self, tenant_id: str, message_id: str) -> MessageDetail | None: ...

    # email ------------------------------------------------------------------------

    @abstractmethod
    async def put_template(self, template: StoredTemplate, *, create: bool) -> bool:
        """Create (``create``) or replace a template; False if it already exists
        (create) or does not (replace)."""

    @abstractmethod
    async def get_template(self, tenant_id: str, name: str) -> StoredTemplate | None: ...

    @abstractmethod
    async def list_templates(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[StoredTemplate]:
        """By name; ``cursor`` is the ``next_cursor`` of the page before."""

    @abstractmethod
    async def template_names(self) -> list[str]:
        """Every template name in use, across tenants (for the metrics' series)."""

    @abstractmethod
    async def delete_template(self, tenant_id: str, name: str) -> bool:
        """False if there was no such template. Emails accepted before and not yet
        sent then fail: their template is gone."""

    @abstractmethod
    async def get_email(self, tenant_id: str, email_id: str) -> EmailDetail | None: ...

    @abstractmethod
    async def add_sink_email(self, email: SinkEmail) -> None:
        """Keep an email the embedded mail sink received (again: a resend replaces it)."""

    @abstractmethod
    async def list_sink_emails(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[SinkEmail]:
        """Newest first; ``cursor`` is the ``next_cursor`` of the page before."""

    @abstractmethod
    async def list_deliveries(
        self, tenant_id: str, where: DeliveryFilter, *, cursor: str | None, limit: int
    ) -> Page[Delivery]:
        """Newest first; ``cursor`` is the ``next_cursor`` of the page before."""

    @abstractmethod
    async def replay(self, tenant_id: str, selector: ReplaySelector, now: datetime) -> int:
        """Return the selected dead or held deliveries of active endpoints to pending."""

    # engine ----------------------------------------------------------------------

    @abstractmethod
    async def reclaim_expired_leases(self, now: datetime) -> int:
        """Return in-flight deliveries whose lease ran out (a crashed worker's) to pending."""

    @abstractmethod
    async def claim(self, slots: Mapping[str, int], now: datetime, lease_until: datetime) -> Claims:
        """Lease up to ``slots[endpoint_id]`` due deliveries of each endpoint, oldest due
        first (fewer where a store-wide cap holds them back: see :class:`Claims`)."""

    @abstractmethod
    async def release(self, claimed: Sequence[Claimed], now: datetime) -> int:
        """Return claimed deliveries that were not attempted to pending; how many.

        Deliveries of an endpoint that was disabled or deleted meanwhile end as
        dead instead (as :meth:`reclaim_expired_leases` does for lapsed leases).
        """

    @abstractmethod
    async def next_wakeup(self, now: datetime) -> datetime | None:
        """The earliest future time a pending delivery falls due or a lease runs out."""

    @abstractmethod
    async def record_results(self, results: Sequence[AttemptResult], now: datetime) -> int:
        """Write back finished attempts and the deliveries' new states, in one commit.

        Waiting deliveries of an endpoint found disabled (by a 410 in this batch or
        before) end as dead (``disabled: …``); returns how many did.
        """

    @abstractmethod
    async def queue_depth(self) -> dict[DeliveryState, int]: ...

    @abstractmethod
    async def oldest_due(self, now: datetime) -> datetime | None:
        """When the delivery that has waited longest since it fell due fell due (of
        endpoints whose breaker is closed: the others' deliveries wait on purpose)."""

    # endpoint health ---------------------------------------------------------------

    @abstractmethod
    async def update_tenant(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant | None:
        """Apply ``changes`` (column to value); None if there is no such tenant."""

    @abstractmethod
    async def suspend_endpoint(
        self, tenant_id: str, endpoint_id: str, reason: str, by: str, now: datetime
    ) -> tuple[Suspension, int] | None:
        """Suspend an active endpoint and hold its waiting deliveries: the suspension
        and how many were held. None if there is no such endpoint;
        :class:`~tidings.exceptions.Conflict` if it is not active."""

    @abstractmethod
    async def resume_endpoint(
        self, tenant_id: str, endpoint_id: str, by: str, now: datetime
    ) -> tuple[Suspension, int] | None:
        """Resume a suspended endpoint, close its breaker, and make its held deliveries
        due one after another in the order they were created, at its drain rate (its
        policy's, or its rate limit if lower): the suspension ended and how many
        drain. None if there is no such endpoint;
        :class:`~tidings.exceptions.Conflict` if it is not suspended."""

    @abstractmethod
    async def endpoint_health(self, endpoint_ids: Sequence[str]) -> dict[str, EndpointHealth]:
        """The breaker, held count and suspension history of each endpoint."""

    @abstractmethod
    async def breakers(self) -> dict[str, tuple[Breaker, datetime]]:
        """Every endpoint's breaker as last written, and when it was."""

    @abstractmethod
    async def suspended_endpoints(self) -> list[Endpoint]: ...

    @abstractmethod
    async def endpoint_minutes(self, since: datetime) -> dict[str, list[Minute]]:
        """The per-minute results of every webhook endpoint from ``since`` on."""

    @abstractmethod
    async def last_errors(
        self, endpoint_id: str, since: datetime, limit: int
    ) -> list[tuple[datetime, str]]:
        """The endpoint's latest failed attempts since ``since``: (time, error), newest first."""

    @abstractmethod
    async def held_counts(self) -> dict[str, int]:
        """Held deliveries per endpoint (those with none are left out)."""

    @abstractmethod
    async def last_notice_at(self, endpoint_id: str, url: str, kind: str) -> datetime | None:
        """When the last notice of ``kind`` about the endpoint at ``url`` was sent."""

    @abstractmethod
    async def publish_notice(
        self, notice: Notice, published: Sequence[NewMessage], dedupe_since: datetime | None
    ) -> bool:
        """Record ``notice`` and ingest what it publishes (its email, its event), in one
        commit; unless (with ``dedupe_since``) a notice of its kind about its endpoint
        and URL was sent after that time: then nothing, and False."""

    @abstractmethod
    async def expire_held(self, before: datetime, reason: str, now: datetime) -> int:
        """Deliveries held since before ``before`` die with ``reason``; how many."""

    @abstractmethod
    async def prune_minutes(self, before: datetime) -> int:
        """Forget per-minute results from before ``before``."""

    @abstractmethod
    async def purge_idempotency_keys(self, before: datetime) -> int:
        """Forget idempotency keys created before ``before``; return how many."""
