"""Frozen value objects and state enums shared by the store, the engine and the API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Generic, TypeVar

from tidings.domain.alarms import AlarmPolicy, policy_in_force
from tidings.domain.circuit import Breaker

T = TypeVar("T")


class EndpointState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"  # its deliveries are held until it resumes
    DISABLED = "disabled"


class EndpointKind(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"  # a tenant's email lane: its emails' deliveries, sent by the email channel


class DeliveryState(StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    HELD = "held"


REPLAYABLE_STATES = (DeliveryState.DEAD, DeliveryState.HELD)
OPERATIONAL_PREFIX = "endpoint."


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    owner_email: str
    created_at: datetime
    alarm_policy: str | None = None
    """JSON: the alarm policy fields it sets (None: the defaults)."""

    @property
    def policy(self) -> AlarmPolicy:
        return policy_in_force(self.alarm_policy, None)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant_id: str
    prefix: str
    key_hash: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    tenant_id: str
    url: str
    description: str
    event_types: tuple[str, ...]
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    max_in_flight: int
    rate_limit_per_s: float | None
    retry_schedule: tuple[float, ...] | None
    state: EndpointState
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    kind: EndpointKind = EndpointKind.WEBHOOK
    alarm_policy: str | None = None
    """JSON: the alarm policy fields it sets over its tenant's."""
    tenant_alarm_policy: str | None = None
    """JSON: its tenant's (as read with it)."""

    @property
    def policy(self) -> AlarmPolicy:
        """The alarm policy in force for it: the defaults, its tenant's, its own."""
        return policy_in_force(self.tenant_alarm_policy, self.alarm_policy)

    def accepts(self, event_type: str) -> bool:
        """Whether a message of ``event_type`` goes to this endpoint (empty filter: all).

        Operational events (``endpoint.…``) go only where they were asked for by
        name: an endpoint taking every event type would otherwise hear of its own
        suspension, while suspended.
        """
        if event_type.startswith(OPERATIONAL_PREFIX):
            return event_type in self.event_types
        return not self.event_types or event_type in self.event_types

    def signing_secrets(self, now: datetime) -> tuple[str, ...]:
        """The secrets to sign with now: the current one, and the previous during its grace."""
        if (
            self.previous_secret
            and self.previous_secret_expires_at
            and now < (self.previous_secret_expires_at)
        ):
            return (self.secret, self.previous_secret)
        return (self.secret,)


@dataclass(frozen=True, slots=True)
class EmailRequest:
    """What an email's message carries besides its payload (which is the whole request)."""

    to: str
    template: str
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message as the producer sent it, before it is stored.

    With ``email`` set it is an email: one delivery, to the tenant's email lane,
    whatever the tenant's webhook endpoints subscribe to.
    """

    tenant_id: str
    event_type: str
    payload: bytes
    idempotency_key: str | None
    request_hash: str
    email: EmailRequest | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """The answer to an ingest: a stored message and its deliveries (or the first answer again)."""

    message_id: str
    deliveries: tuple[tuple[str, str], ...]  # (delivery id, endpoint id)
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    tenant_id: str
    event_type: str
    payload: bytes
    idempotency_key: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    message_id: str
    tenant_id: str
    endpoint_id: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    dead_reason: str | None
    created_at: datetime
    updated_at: datetime
    succeeded_at: datetime | None


@dataclass(frozen=True, slots=True)
class Attempt:
    id: str
    delivery_id: str
    number: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None


@dataclass(frozen=True, slots=True)
class MessageDetail:
    message: Message
    deliveries: tuple[Delivery, ...]
    attempts: Mapping[str, tuple[Attempt, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery the dispatcher leased, with what it needs to send it."""

    delivery_id: str
    message_id: str
    endpoint_id: str
    event_type: str
    payload: bytes
    attempts: int
    retry_base: int
    created_at: datetime
    message_created_at: datetime
    lease_until: datetime

    @property
    def attempt_in_round(self) -> int:
        """The number of the next attempt counted from the last replay (1-based)."""
        return self.attempts - self.retry_base + 1


class Claims(list[Claimed]):
    """What one claim leased, and ``capped``: the endpoints the store held back at their
    ``max_in_flight`` (attempts in flight on every worker) while due deliveries wait.
    Their slots free up as other workers' attempts end, which nobody announces, so
    the claimer looks again soon."""

    def __init__(self, claimed: Iterable[Claimed] = (), capped: Iterable[str] = ()) -> None:
        super().__init__(claimed)
        self.capped = frozenset(capped)


@dataclass(frozen=True, slots=True)
class EmailOutcome:
    """What an email's attempt adds to its result: what was chosen and sent, and the
    status callback to publish when the email's fate is settled."""

    email_id: str
    variant: str | None
    variant_reason: str
    subject: str | None
    sent_at: datetime | None
    callback: NewMessage | None = None


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What the engine writes back for one finished attempt."""

    delivery_id: str
    endpoint_id: str
    attempt: Attempt
    state: DeliveryState
    next_attempt_at: datetime | None
    dead_reason: str | None
    lease_until: datetime
    """The claim's lease: the result applies only while the delivery still holds it."""
    disable_endpoint: bool = False
    email: EmailOutcome | None = None
    breaker: Breaker | None = None
    """The endpoint's breaker, when this attempt changed its state."""


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    state: DeliveryState | None = None
    endpoint_id: str | None = None
    message_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReplaySelector:
    ids: tuple[str, ...] = ()
    endpoint_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    """An email template as stored: its definition is the JSON the API shows."""

    tenant_id: str
    name: str
    definition: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EmailRecord:
    id: str
    tenant_id: str
    delivery_id: str
    to_address: str
    template: str
    reference: str | None
    variant: str | None
    variant_reason: str | None
    subject: str | None
    created_at: datetime
    sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class EmailDetail:
    email: EmailRecord
    message: MessageDetail


@dataclass(frozen=True, slots=True)
class SinkEmail:
    """An email the embedded mail sink received."""

    email_id: str
    tenant_id: str
    message_id_header: str
    sender: str
    to_address: str
    subject: str
    text: str
    html: str | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Suspension:
    """One suspension of an endpoint; kept after it resumed."""

    id: str
    endpoint_id: str
    tenant_id: str
    suspended_at: datetime
    reason: str
    suspended_by: str
    resumed_at: datetime | None = None
    resumed_by: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """What the store knows of an endpoint's health."""

    breaker: Breaker | None
    """As its last change left it (None: it never opened)."""
    held: int
    """Deliveries held while it is suspended."""
    suspensions: tuple[Suspension, ...] = ()
    """Newest first (the first is the current one while it is suspended)."""
