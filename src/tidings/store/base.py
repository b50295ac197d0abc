"""The Store contract: everything the API and the engine ask of persistence.

A backend implements this class; callers never see SQL. Every method that
writes commits before it returns, so a caller that got an answer may rely on
it surviving a crash. Methods that take a batch exist so a backend can commit
many writes with one flush (group commit).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from tidings.exceptions import Conflict
from tidings.models import (
    Accepted,
    ApiKey,
    AttemptResult,
    Claimed,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    EmailDetail,
    Endpoint,
    MessageDetail,
    NewMessage,
    Page,
    ReplaySelector,
    SinkEmail,
    StoredTemplate,
    Tenant,
)


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
    async def ping(self) -> None:
        """Raise :class:`~tidings.exceptions.StoreUnavailable` unless the store answers."""

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
    async def tenant_for_key(self, key_hash: str) -> str | None:
        """The tenant id owning the API key with this SHA-256 hash, if any."""

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
    async def claim(
        self, slots: Mapping[str, int], now: datetime, lease_until: datetime
    ) -> list[Claimed]:
        """Lease up to ``slots[endpoint_id]`` due deliveries of each endpoint, oldest due first."""

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
    async def purge_idempotency_keys(self, before: datetime) -> int:
        """Forget idempotency keys created before ``before``; return how many."""
