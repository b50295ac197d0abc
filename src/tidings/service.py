"""The use cases: what a tenant or an operator can do, once, for every front end.

The API's routers, the operator console and the CLI all change tidings through
:class:`Service`: accept a message, make, change, suspend, resume or delete an
endpoint, rotate its secret, replay deliveries, keep templates, make tenants and
their API keys. A front end parses its input and shapes the answer; the rules
(what is checked, in which order, what a change brings with it) live here, so two
front ends cannot drift apart.

A use case writes through the store and says what it did on the
:class:`~tidings.events.Bus`. It never pokes the engine: the store tells
its listeners what each write changed once it has committed, and the dispatcher's
wake-ups and the key cache subscribe to that (see :mod:`tidings.app`). Errors are
the :mod:`tidings.exceptions` tree (a 404 is a :class:`NotFound`), translated to
problem documents at the API's edge.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import structlog

from tidings import ids
from tidings.channels.signing import new_secret
from tidings.channels.ssrf import SsrfGuard
from tidings.clock import Clock
from tidings.config import Settings
from tidings.domain.alarms import merged_overrides, policy_of
from tidings.domain.models import (
    Accepted,
    ApiKey,
    EmailRequest,
    Endpoint,
    EndpointState,
    NewMessage,
    ReplaySelector,
    StoredTemplate,
    Suspension,
    Tenant,
)
from tidings.domain.retry import DeadReason
from tidings.email.sending import EmailSender
from tidings.email.stored import template_from, template_of
from tidings.engine.batcher import Batcher
from tidings.engine.health import HealthMonitor
from tidings.events import (
    Bus,
    DeliveriesCreated,
    DeliveriesEnded,
    MessageAccepted,
    QueueCounted,
    TemplateKnown,
)
from tidings.exceptions import (
    Conflict,
    InvalidEndpointUrl,
    InvalidInput,
    InvalidTemplate,
    MissingField,
    NotFound,
)
from tidings.store.ports import Store

log = structlog.get_logger(__name__)

KEY_PREFIX = "tdk_"
_TEMPLATED_ORIGIN = re.compile(r"^[^/]*//[^/?#]*[{%]")  # a placeholder in scheme, host or port
_REQUIRED_ENDPOINT_FIELDS = ("url", "description", "max_in_flight")  # null: left as is
_REQUIRED_TENANT_FIELDS = ("name", "owner_email")


def message_request_hash(event_type: str, payload: bytes) -> str:
    """What an Idempotency-Key's request is compared by: the same key with another hash
    is a conflict."""
    return hashlib.sha256(event_type.encode() + b"\n" + payload).hexdigest()


def email_request_hash(request: bytes) -> str:
    """As :func:`message_request_hash`, for an email. Keys are shared with messages,
    whose hash starts with an event type: a space never occurs in one, so no message's
    hash can be an email's."""
    return hashlib.sha256(b"email request\n" + request).hexdigest()


def sha256(value: str) -> str:
    """How a credential (an API key, the admin token) is kept: its SHA-256, in hex."""
    return hashlib.sha256(value.encode()).hexdigest()


class Service:
    """The use cases, over one process's store, engine and bus."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: Settings,
        guard: SsrfGuard,
        events: Bus,
        health: HealthMonitor,
        emails: EmailSender,
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self._guard = guard
        self._events = events
        self._health = health
        self._emails = emails
        # Ingest commits many requests' messages in one transaction (group commit): the
        # app runs the batcher as a supervised task and drains it at shutdown.
        self.ingest: Batcher[NewMessage, Accepted | Conflict] = Batcher("ingest", self._ingest)

    # messages -----------------------------------------------------------------------

    async def accept(self, message: NewMessage) -> Accepted:
        """Store ``message`` durably (with group commit); the answer once it is committed.
        Raises :class:`Conflict` for an Idempotency-Key reused with another body."""
        result = await self.ingest.submit(message)
        if isinstance(result, Conflict):
            raise result
        self._events.emit(MessageAccepted(result.message_id, result.replayed))
        if result.deliveries and not result.replayed:
            endpoint_ids = tuple(endpoint_id for _, endpoint_id in result.deliveries)
            self._events.emit(DeliveriesCreated(result.message_id, endpoint_ids))
        return result

    async def accept_email(
        self,
        tenant_id: str,
        email: EmailRequest,
        personalisation: Mapping[str, Any],
        request: bytes,
        idempotency_key: str | None,
    ) -> Accepted:
        """Accept an email of the tenant's template ``email.template``, once every field
        the template uses has a value (``to`` always has); ``request`` is the whole
        request as the email's message keeps it."""
        stored = await self._store.get_template(tenant_id, email.template)
        if stored is None:
            raise InvalidInput(f"template: no template {email.template!r}")
        values = {**personalisation, "to": email.to}
        missing = sorted(await self._emails.renderer.fields(template_of(stored)) - values.keys())
        if missing:
            raise MissingField(
                "personalisation: the template uses "
                + ", ".join(repr(name) for name in missing)
                + ", which "
                + ("is" if len(missing) == 1 else "are")
                + " missing"
            )
        hashed = email_request_hash(request)
        return await self.accept(
            NewMessage(tenant_id, "email", request, idempotency_key, hashed, email)
        )

    async def count_queue(self) -> None:
        """The deliveries in each state, and how long the one waiting longest since it
        fell due has waited (0: none), as told to the bus (:class:`QueueCounted`)."""
        now = self._clock.now()
        oldest = await self._store.oldest_due(now)
        waited = 0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0)
        depth = await self._store.queue_depth()
        self._events.emit(QueueCounted(depth, waited))

    async def purge_idempotency_keys(self) -> None:
        """Forget the Idempotency-Keys older than ``TIDINGS_IDEMPOTENCY_TTL`` (logged)."""
        before = self._clock.now() - self._settings.idempotency_ttl
        purged = await self._store.purge_idempotency_keys(before)
        if purged:
            log.info("idempotency_keys_purged", count=purged)

    async def _ingest(self, batch: Sequence[NewMessage]) -> list[Accepted | Conflict]:
        ttl = self._settings.idempotency_ttl.total_seconds()
        return await self._store.ingest(batch, self._clock.now(), ttl)

    async def replay(self, tenant_id: str, selector: ReplaySelector) -> int:
        """Return the selected dead or held deliveries to pending (held, for a suspended
        endpoint); how many. Refuses a selector that names nothing."""
        if not (selector.ids or selector.endpoint_id or selector.since or selector.until):
            raise InvalidInput("name the deliveries to replay: ids, endpoint_id, since or until")
        if selector.endpoint_id:
            await self.endpoint(tenant_id, selector.endpoint_id)
        return await self._store.replay(tenant_id, selector, self._clock.now())

    # endpoints ------------------------------------------------------------------------

    async def endpoint(self, tenant_id: str, endpoint_id: str) -> Endpoint:
        """The tenant's endpoint; another tenant's is as missing as one never made."""
        endpoint = await self._store.get_endpoint(tenant_id, endpoint_id)
        if endpoint is None:
            raise _no_endpoint(endpoint_id)
        return endpoint

    async def create_endpoint(
        self,
        tenant_id: str,
        *,
        url: str,
        description: str,
        event_types: Sequence[str],
        max_in_flight: int | None,
        rate_limit_per_s: float | None,
        retry_schedule: Sequence[float] | None,
        alarm_policy: Mapping[str, Any] | None,
    ) -> Endpoint:
        """A new active endpoint with a fresh signing secret. ``alarm_policy``: the
        fields it sets over its tenant's policy (None: none)."""
        self._guard.check_url(url)
        now = self._clock.now()
        endpoint = Endpoint(
            id=ids.new_id(ids.ENDPOINT),
            tenant_id=tenant_id,
            url=url,
            description=description,
            event_types=tuple(dict.fromkeys(event_types)),
            secret=new_secret(),
            previous_secret=None,
            previous_secret_expires_at=None,
            max_in_flight=max_in_flight or self._settings.endpoint_max_in_flight,
            rate_limit_per_s=rate_limit_per_s,
            retry_schedule=tuple(retry_schedule) if retry_schedule else None,
            state=EndpointState.ACTIVE,
            disabled_reason=None,
            created_at=now,
            updated_at=now,
            alarm_policy=await self._endpoint_policy(tenant_id, None, alarm_policy),
        )
        await self._store.create_endpoint(endpoint)
        return await self.endpoint(tenant_id, endpoint.id)

    async def update_endpoint(
        self, tenant_id: str, endpoint_id: str, patch: Mapping[str, Any]
    ) -> Endpoint:
        """Apply ``patch`` (the fields given; a null ``url``, ``description`` or
        ``max_in_flight`` leaves it as it is; ``alarm_policy`` is itself a patch of the
        fields the endpoint sets over its tenant's policy, null: none)."""
        changes = dict(patch)
        if changes.get("url") is not None:
            self._guard.check_url(changes["url"])
        for required in _REQUIRED_ENDPOINT_FIELDS:
            if required in changes and changes[required] is None:
                del changes[required]
        if "event_types" in changes:
            changes["event_types"] = list(dict.fromkeys(changes["event_types"] or []))
        if "alarm_policy" in changes:
            endpoint = await self.endpoint(tenant_id, endpoint_id)
            changes["alarm_policy"] = await self._endpoint_policy(
                tenant_id, endpoint.alarm_policy, changes["alarm_policy"]
            )
        return await self._update_endpoint(tenant_id, endpoint_id, changes)

    async def rotate_secret(self, tenant_id: str, endpoint_id: str) -> Endpoint:
        """A new signing secret; the old one keeps signing alongside it for the grace
        period (``TIDINGS_SECRET_GRACE``)."""
        endpoint = await self.endpoint(tenant_id, endpoint_id)
        changes = {
            "secret": new_secret(),
            "previous_secret": endpoint.secret,
            "previous_secret_expires_at": self._clock.now() + self._settings.secret_grace,
        }
        return await self._update_endpoint(tenant_id, endpoint_id, changes)

    async def delete_endpoint(self, tenant_id: str, endpoint_id: str) -> None:
        """Delete the endpoint; its deliveries not yet done die (``deleted``)."""
        ended = await self._store.delete_endpoint(tenant_id, endpoint_id, self._clock.now())
        if ended is None:
            raise _no_endpoint(endpoint_id)
        self._events.emit(DeliveriesEnded(DeadReason.DELETED, ended))

    async def suspend(self, tenant_id: str, endpoint_id: str, reason: str, by: str) -> Suspension:
        """Hold the endpoint's deliveries until it is resumed, and tell its owner
        (through the engine's health monitor, which also suspends on its own).
        Raises :class:`Conflict` unless it is active."""
        endpoint = await self.endpoint(tenant_id, endpoint_id)
        return await self._health.suspend(endpoint, reason, by)

    async def resume(self, tenant_id: str, endpoint_id: str, by: str) -> tuple[Suspension, int]:
        """Resume the endpoint: its held deliveries drain, paced; the suspension ended
        and how many drain. Raises :class:`Conflict` unless it is suspended."""
        endpoint = await self.endpoint(tenant_id, endpoint_id)
        return await self._health.resume(endpoint, by)

    async def _update_endpoint(
        self, tenant_id: str, endpoint_id: str, changes: Mapping[str, Any]
    ) -> Endpoint:
        now = self._clock.now()
        endpoint = await self._store.update_endpoint(tenant_id, endpoint_id, changes, now)
        if endpoint is None:
            raise _no_endpoint(endpoint_id)
        return endpoint

    async def _endpoint_policy(
        self, tenant_id: str, current: str | None, patch: Mapping[str, Any] | None
    ) -> str | None:
        """The endpoint's alarm policy fields after ``patch`` (None: all removed), checked
        against its tenant's policy."""
        if patch is None:
            return None
        overrides = merged_overrides(current, patch)
        tenant = await self._store.get_tenant(tenant_id)
        try:
            policy_of(tenant.alarm_policy if tenant else None, overrides)
        except ValueError as exc:
            raise InvalidInput(f"alarm_policy: {exc}") from None
        return overrides

    # templates ------------------------------------------------------------------------

    async def put_template(
        self, tenant_id: str, definition: Mapping[str, Any], *, create: bool
    ) -> StoredTemplate:
        """Make (``create``) or replace the template ``definition`` describes (its
        ``name``, ``subject``, ``text``, ``html``, ``lookup``, ``variants`` as the API
        shows them), once it is known to work. Raises :class:`Conflict` when making
        one that exists, :class:`NotFound` when replacing one that does not."""
        name = definition["name"]
        await self._check_template(definition)
        now = self._clock.now()
        stored = StoredTemplate(tenant_id, name, orjson.dumps(definition).decode(), now, now)
        if not await self._store.put_template(stored, create=create):
            if create:
                raise Conflict(
                    f"a template {name!r} exists already; replace it with PUT /v1/templates/{name}"
                )
            raise _no_template(name)
        self._events.emit(TemplateKnown(name))
        self._emails.forget(tenant_id, name)
        return stored if create else await self.template(tenant_id, name)

    async def delete_template(self, tenant_id: str, name: str) -> None:
        """Delete the template; its emails not yet sent fail (``email.failed``)."""
        if not await self._store.delete_template(tenant_id, name):
            raise _no_template(name)
        self._emails.forget(tenant_id, name)

    async def template(self, tenant_id: str, name: str) -> StoredTemplate:
        stored = await self._store.get_template(tenant_id, name)
        if stored is None:
            raise _no_template(name)
        return stored

    async def _check_template(self, definition: Mapping[str, Any]) -> None:
        """Refuse a template that cannot work (compiled by the renderer: a template's
        compile is bounded in time and memory too), or whose lookup could reach what
        the SSRF guard forbids."""
        await self._emails.renderer.check(template_from(definition))
        lookup = definition.get("lookup")
        if lookup is not None:
            url = lookup["url"]
            if _TEMPLATED_ORIGIN.match(url):
                raise InvalidTemplate("lookup.url: the scheme and host must be written out")
            try:
                self._guard.check_url(url)
            except InvalidEndpointUrl as exc:
                raise InvalidTemplate(f"lookup.url: {exc.detail}") from None

    # tenants and their keys -----------------------------------------------------------

    async def tenant(self, tenant_id: str) -> Tenant:
        tenant = await self._store.get_tenant(tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id!r}")
        return tenant

    async def create_tenant(
        self, name: str, owner_email: str, alarm_policy: Mapping[str, Any] | None
    ) -> Tenant:
        """A new tenant; ``alarm_policy``: the fields it sets over the defaults."""
        tenant = Tenant(
            id=ids.new_id(ids.TENANT),
            name=name,
            owner_email=owner_email,
            created_at=self._clock.now(),
            alarm_policy=_tenant_policy(None, alarm_policy),
        )
        await self._store.create_tenant(tenant)
        return tenant

    async def update_tenant(self, tenant_id: str, patch: Mapping[str, Any]) -> Tenant:
        """Apply ``patch`` (the fields given; a null ``name`` or ``owner_email`` leaves
        it as it is; ``alarm_policy`` is itself a patch, null: back to the defaults),
        refusing a policy that would make one of its endpoints' invalid."""
        tenant = await self.tenant(tenant_id)
        changes = {k: v for k, v in patch.items() if k != "alarm_policy"}
        for required in _REQUIRED_TENANT_FIELDS:
            if required in changes and changes[required] is None:
                del changes[required]
        if "alarm_policy" in patch:
            policy = _tenant_policy(tenant.alarm_policy, patch["alarm_policy"])
            await self._check_endpoints(tenant_id, policy)
            changes["alarm_policy"] = policy
        updated = await self._store.update_tenant(tenant_id, changes)
        if updated is None:
            raise NotFound(f"no tenant {tenant_id!r}")
        return updated

    async def create_api_key(self, tenant_id: str) -> tuple[ApiKey, str]:
        """A new API key of the tenant: its record and the key itself, which is shown
        this once (only its hash is kept)."""
        await self.tenant(tenant_id)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            id=ids.new_id(ids.API_KEY),
            tenant_id=tenant_id,
            prefix=key[:12],
            key_hash=sha256(key),
            created_at=self._clock.now(),
        )
        await self._store.create_api_key(record)
        return record, key

    async def revoke_api_key(self, tenant_id: str, key_id: str) -> None:
        """Revoke the key: every process on the store refuses it from now on (the store
        tells each that keys changed). Revoking a revoked key changes nothing."""
        await self.tenant(tenant_id)
        if await self._store.revoke_api_key(tenant_id, key_id, self._clock.now()) is None:
            raise NotFound(f"tenant {tenant_id!r} has no API key {key_id!r}")

    async def _check_endpoints(self, tenant_id: str, policy: str | None) -> None:
        """Refuse a tenant policy that, with the fields an endpoint sets itself, would make
        that endpoint's policy invalid (a cool-down above its own maximum, say)."""
        cursor = None
        while True:
            page = await self._store.list_endpoints(tenant_id, cursor=cursor, limit=1000)
            for endpoint in page.items:
                try:
                    policy_of(policy, endpoint.alarm_policy)
                except ValueError as exc:
                    raise InvalidInput(
                        f"alarm_policy: with the fields endpoint {endpoint.id} sets itself, {exc}"
                    ) from None
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


def _tenant_policy(current: str | None, patch: Mapping[str, Any] | None) -> str | None:
    """The tenant's alarm policy fields after ``patch`` (None: all removed), checked."""
    if patch is None:
        return None
    fields = merged_overrides(current, patch)
    try:
        policy_of(fields, None)
    except ValueError as exc:
        raise InvalidInput(f"alarm_policy: {exc}") from None
    return fields


def _no_endpoint(endpoint_id: str) -> NotFound:
    return NotFound(f"no endpoint {endpoint_id!r}")


def _no_template(name: str) -> NotFound:
    return NotFound(f"no template {name!r}")


__all__ = [
    "KEY_PREFIX",
    "Service",
    "email_request_hash",
    "message_request_hash",
    "sha256",
]
