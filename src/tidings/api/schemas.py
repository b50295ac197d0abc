"""Request and response bodies of the v1 API (pydantic; FastAPI validates and documents them)."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
)

from tidings.delivery.circuit import Breaker, CircuitState
from tidings.delivery.policy import validate_schedule
from tidings.models import (
    Attempt,
    Delivery,
    DeliveryState,
    Endpoint,
    EndpointState,
    Tenant,
)

T = TypeVar("T")

EventType = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/-]+$")]
_EMAIL = re.compile(r"^[^@\s\"(),:;<>\[\\\]]{1,64}@(?=.{1,255}$)[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):  # not match: its $ would let a final newline through
        raise ValueError("not an email address of the form name@example.com")
    return value


def _schedule(value: object) -> list[float]:
    if not isinstance(value, list):
        raise ValueError("a retry schedule is a list of seconds")
    return list(validate_schedule(value))


Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]
# validate_schedule sees the raw JSON, so `true` or "5" are refused, not coerced.
Schedule = Annotated[list[float], BeforeValidator(_schedule)]


def _finite(value: JsonValue) -> JsonValue:
    """Refuse NaN and Infinity anywhere in a payload: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN and Infinity are not JSON numbers")
    if isinstance(value, list):
        for item in value:
            _finite(item)
    elif isinstance(value, dict):
        for item in value.values():
            _finite(item)
    return value


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantIn(_In):
    name: str = Field(min_length=1, max_length=200)
    owner_email: Email


class TenantOut(BaseModel):
    id: str
    name: str
    owner_email: str
    created_at: datetime

    @classmethod
    def of(cls, tenant: Tenant) -> TenantOut:
        return cls(**{name: getattr(tenant, name) for name in cls.model_fields})


class ApiKeyOut(BaseModel):
    id: str
    tenant_id: str
    prefix: str
    key: str = Field(description="The API key. It is shown only this once; store it now.")
    created_at: datetime


class EndpointIn(_In):
    url: str = Field(min_length=1, max_length=2048)
    description: str = Field(default="", max_length=1000)
    event_types: list[EventType] = Field(
        default_factory=list, max_length=100, description="Empty: every event type."
    )
    max_in_flight: int | None = Field(default=None, ge=1, le=1000)
    rate_limit_per_s: float | None = Field(default=None, gt=0, le=100_000)
    retry_schedule: Schedule | None = Field(
        default=None, description="Seconds before each attempt; overrides the default schedule."
    )


class EndpointPatch(_In):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    description: str | None = Field(default=None, max_length=1000)
    event_types: list[EventType] | None = Field(default=None, max_length=100)
    max_in_flight: int | None = Field(default=None, ge=1, le=1000)
    rate_limit_per_s: float | None = Field(default=None, gt=0, le=100_000)
    retry_schedule: Schedule | None = None


class BreakerOut(BaseModel):
    state: Literal["closed", "open", "half_open"] = Field(
        description="open: the endpoint gets no attempts until `retry_at`; half_open: "
        "one probe is out."
    )
    opened_at: datetime | None
    retry_at: datetime | None = Field(description="When the next probe may go.")

    @classmethod
    def of(cls, breaker: Breaker | None) -> BreakerOut:
        if breaker is None or breaker.state is CircuitState.CLOSED:
            return cls(state="closed", opened_at=None, retry_at=None)
        return cls(
            state=breaker.state.value,
            opened_at=breaker.opened_at,
            retry_at=breaker.retry_at(),
        )


class EndpointOut(BaseModel):
    id: str
    url: str
    description: str
    event_types: list[str]
    secret: str
    max_in_flight: int
    rate_limit_per_s: float | None
    retry_schedule: list[float] | None
    state: EndpointState
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    breaker: BreakerOut = Field(description="The endpoint's circuit breaker, as it is now.")

    @classmethod
    def of(cls, ep: Endpoint, breaker: Breaker | None = None) -> EndpointOut:
        return cls(
            id=ep.id,
            url=ep.url,
            description=ep.description,
            event_types=list(ep.event_types),
            secret=ep.secret,
            max_in_flight=ep.max_in_flight,
            rate_limit_per_s=ep.rate_limit_per_s,
            retry_schedule=list(ep.retry_schedule) if ep.retry_schedule else None,
            state=ep.state,
            disabled_reason=ep.disabled_reason,
            created_at=ep.created_at,
            updated_at=ep.updated_at,
            breaker=BreakerOut.of(breaker),
        )


class MessageIn(_In):
    event_type: EventType
    payload: Annotated[JsonValue, AfterValidator(_finite)] = Field(
        description="Any JSON value; delivered as the envelope's `data`."
    )


class AcceptedDelivery(BaseModel):
    id: str
    endpoint_id: str


class AcceptedOut(BaseModel):
    id: str
    deliveries: list[AcceptedDelivery]


class AttemptOut(BaseModel):
    id: str
    number: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None

    @classmethod
    def of(cls, a: Attempt) -> AttemptOut:
        return cls(**{name: getattr(a, name) for name in cls.model_fields})


class DeliveryOut(BaseModel):
    id: str
    message_id: str
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

    @classmethod
    def of(cls, d: Delivery) -> DeliveryOut:
        return cls(**{name: getattr(d, name) for name in cls.model_fields})


class DeliveryWithAttempts(DeliveryOut):
    attempt_log: list[AttemptOut]


class MessageOut(BaseModel):
    id: str
    event_type: str
    payload: Any
    idempotency_key: str | None
    created_at: datetime
    deliveries: list[DeliveryWithAttempts]


class ReplayIn(_In):
    ids: list[str] | None = Field(default=None, max_length=1000)
    endpoint_id: str | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None


class ReplayOut(BaseModel):
    replayed: int


class PageOut(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )
