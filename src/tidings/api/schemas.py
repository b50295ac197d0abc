"""Request and response bodies of the v1 API (pydantic; FastAPI validates and documents them)."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
)

from tidings.domain.alarms import MAX_WINDOW_S, AlarmPolicy
from tidings.domain.circuit import Breaker, CircuitState
from tidings.domain.models import (
    ApiKey,
    Attempt,
    Delivery,
    DeliveryState,
    Endpoint,
    EndpointHealth,
    EndpointState,
    Suspension,
    Tenant,
)
from tidings.domain.retry import MAX_SCHEDULE_DELAY, MAX_SCHEDULE_LENGTH, validate_schedule

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


# The patterns below document in the OpenAPI document what a validator checks (in code:
# pydantic's regex engine has no lookahead, and some checks give a better message).
Email = Annotated[
    str,
    Field(max_length=320, json_schema_extra={"pattern": _EMAIL.pattern}),
    AfterValidator(_email),
]
# validate_schedule sees the raw JSON, so `true` or "5" are refused, not coerced.
Schedule = Annotated[
    list[Annotated[float, Field(ge=0, le=MAX_SCHEDULE_DELAY.total_seconds())]],
    Field(min_length=1, max_length=MAX_SCHEDULE_LENGTH),
    BeforeValidator(_schedule),
]
PORT_PATTERN = (
    r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
)
URL_PATTERN = (
    r"^https?://(?:[A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*"
    rf"(?::{PORT_PATTERN})?(?:[/?#][^\x00-\x20\x7f]*)?$"
)
_URL_RULES = (
    "An http or https URL naming its host (the pattern). An IP literal is accepted too, "
    "where the SSRF guard allows its address; a name is checked when it is resolved."
)
Url = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        description=_URL_RULES,
        json_schema_extra={"pattern": URL_PATTERN},
    ),
]


def _rfc3339(value: object) -> object:
    """Refuse a number for an instant: pydantic would read ``0.5`` as a Unix time, and the
    document says date-time. Everything else is left to pydantic's own messages."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("give a date and time with a time zone, as 2026-03-01T12:00:00Z")
    return value


_NUMBER = re.compile(r"\s*[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?\s*")
Instant = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what orjson writes, and receivers read back


def _numbers(value: JsonValue) -> JsonValue:
    """Refuse the numbers tidings could not send on as written: NaN and Infinity (not
    JSON numbers), and numbers beyond the 64-bit integer range, which the envelope's
    serialiser refuses (integers) and most receivers would read rounded. One range for
    integers and fractions alike, so the OpenAPI document can say it exactly. The error
    says where the number is."""
    found = _bad_number(value)
    if found is not None:
        where, what = found
        where = where or "/"
        if what == "nan":
            raise ValueError(f"NaN and Infinity are not JSON numbers (at {where})")
        raise ValueError(
            f"the number at {where} is beyond 64 bits (from {INT_MIN} to {INT_MAX}); "
            "send a number that large as a string"
        )
    return value


def _bad_number(value: JsonValue) -> tuple[str, str] | None:
    """Where the first bad number is, and what is wrong (``nan`` or ``range``). The path
    is built only on the way back from a bad number: ingest walks every payload."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return "", "nan"
        return None if INT_MIN <= value <= INT_MAX else ("", "range")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(item, str) and (found := _bad_number(item)) is not None:
                return f"/{key}{found[0]}", found[1]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, str) and (found := _bad_number(item)) is not None:
                return f"/{index}{found[0]}", found[1]
    return None


def _json_value_schema(depth: int) -> dict[str, Any]:
    """What a payload may be, as JSON Schema: any JSON, its integers within 64 bits (its
    strings without NUL, as every string: see tidings.api.nul). Written out ``depth``
    levels deep, anything below (the document holds no recursive schema)."""
    if depth == 0:
        return {}
    inner = _json_value_schema(depth - 1)
    return {
        "anyOf": [
            {"type": "string"},
            {"type": "number", "minimum": INT_MIN, "maximum": INT_MAX},
            {"type": "boolean"},
            {"type": "null"},
            {"type": "array", "items": inner},
            {"type": "object", "additionalProperties": inner},
        ]
    }


JSON_VALUE_SCHEMA = _json_value_schema(3)
PortableJson = Annotated[
    JsonValue, AfterValidator(_numbers), WithJsonSchema(JSON_VALUE_SCHEMA, mode="validation")
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The slowest rate: one a thousand seconds (a rate of 5e-324 was a 500: 1/rate overflows).
MIN_RATE = 0.001
Window = Annotated[float, Field(ge=60, le=MAX_WINDOW_S, description="Seconds.")]


def _whole(value: object) -> object:
    """``5.0`` is the count 5 (JSON, and the document, do not tell them apart); ``true``
    and ``"5"`` are still refused, strictly."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Count = Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(_whole)]


class AlarmPolicyPatch(_In):
    """Fields of an alarm policy to set (a value) or to stop setting (null: the
    tenant's value, or the default, applies again). Omitted fields stay as they are."""

    # Strict: `true` is not a count, nor "5" a number (a policy misread is an alarm
    # that never fires, or one that fires on every failure).
    model_config = ConfigDict(extra="forbid", strict=True)

    warning_failed_attempts: Count | None = Field(
        default=None, description="Warning: at least this many failed attempts ..."
    )
    warning_window_s: Window | None = Field(default=None, description="... in this window.")
    critical_dead_deliveries: Count | None = Field(
        default=None, description="Critical: at least this many deliveries died ..."
    )
    critical_dead_window_s: Window | None = Field(default=None, description="... in this window,")
    critical_silence_s: Window | None = Field(
        default=None, description="or the endpoint failed with no success for this long ..."
    )
    critical_silence_failed_attempts: Count | None = Field(
        default=None, description="... with at least this many failed attempts."
    )
    breaker_consecutive_failures: Count | None = None
    breaker_failure_ratio: float | None = Field(default=None, gt=0, le=1)
    breaker_min_attempts: Annotated[int, Field(ge=1, le=100), BeforeValidator(_whole)] | None = None
    breaker_window_s: float | None = Field(default=None, gt=0, le=MAX_WINDOW_S)
    breaker_cool_down_s: float | None = Field(default=None, gt=0, le=MAX_WINDOW_S)
    breaker_max_cool_down_s: float | None = Field(default=None, gt=0, le=MAX_WINDOW_S)
    suspend: Literal["auto", "alert_only"] | None = Field(
        default=None, description="auto: a critical alarm suspends the endpoint."
    )
    auto_resume: bool | None = Field(
        default=None, description="Resume a suspended endpoint once a health check passes."
    )
    drain_rate_per_s: float | None = Field(
        default=None,
        ge=MIN_RATE,
        le=10_000,
        description="Held deliveries sent per second on resume.",
    )


def alarm_patch(patch: AlarmPolicyPatch | None) -> dict[str, Any] | None:
    """The fields of an alarm policy a request sets (a value) or unsets (None), as the
    service takes them; None for no policy at all."""
    return None if patch is None else patch.model_dump(exclude_unset=True)


class AlarmPolicyOut(BaseModel):
    """The alarm policy in force: the defaults, the tenant's fields, the endpoint's."""

    warning_failed_attempts: int
    warning_window_s: float
    critical_dead_deliveries: int
    critical_dead_window_s: float
    critical_silence_s: float
    critical_silence_failed_attempts: int
    breaker_consecutive_failures: int
    breaker_failure_ratio: float
    breaker_min_attempts: int
    breaker_window_s: float
    breaker_cool_down_s: float
    breaker_max_cool_down_s: float
    suspend: Literal["auto", "alert_only"]
    auto_resume: bool
    drain_rate_per_s: float

    @classmethod
    def of(cls, policy: AlarmPolicy) -> AlarmPolicyOut:
        return cls(**policy.as_dict())


class TenantIn(_In):
    name: str = Field(min_length=1, max_length=200)
    owner_email: Email
    alarm_policy: AlarmPolicyPatch | None = None


class TenantPatch(_In):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    owner_email: Email | None = None
    alarm_policy: AlarmPolicyPatch | None = Field(
        default=None, description="The fields to change; null: back to the defaults."
    )


class TenantOut(BaseModel):
    id: str
    name: str
    owner_email: str
    created_at: datetime
    alarm_policy: AlarmPolicyOut

    @classmethod
    def of(cls, tenant: Tenant) -> TenantOut:
        return cls(
            id=tenant.id,
            name=tenant.name,
            owner_email=tenant.owner_email,
            created_at=tenant.created_at,
            alarm_policy=AlarmPolicyOut.of(tenant.policy),
        )


class ApiKeyOut(BaseModel):
    id: str
    tenant_id: str
    prefix: str
    key: str = Field(description="The API key. It is shown only this once; store it now.")
    created_at: datetime


class ApiKeyInfo(BaseModel):
    """An API key as listed: never the key itself, which only its creation showed."""

    id: str
    tenant_id: str
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: datetime
    last_used_at: datetime | None = Field(
        description="When the key last authenticated a request, to the minute; null: never."
    )
    revoked_at: datetime | None = Field(description="When the key was revoked; null: it is live.")

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyInfo:
        """The listed fields, read off the record (its hash is not one of them)."""
        return cls.model_validate(key, from_attributes=True)


class EndpointIn(_In):
    url: Url
    description: str = Field(default="", max_length=1000)
    event_types: list[EventType] = Field(
        default_factory=list, max_length=100, description="Empty: every event type."
    )
    max_in_flight: int | None = Field(default=None, ge=1, le=1000)
    rate_limit_per_s: float | None = Field(default=None, ge=MIN_RATE, le=100_000)
    retry_schedule: Schedule | None = Field(
        default=None, description="Seconds before each attempt; overrides the default schedule."
    )
    alarm_policy: AlarmPolicyPatch | None = Field(
        default=None, description="Fields set over the tenant's alarm policy."
    )


class EndpointPatch(_In):
    url: Url | None = None
    description: str | None = Field(default=None, max_length=1000)
    event_types: list[EventType] | None = Field(default=None, max_length=100)
    max_in_flight: int | None = Field(default=None, ge=1, le=1000)
    rate_limit_per_s: float | None = Field(default=None, ge=MIN_RATE, le=100_000)
    retry_schedule: Schedule | None = None
    alarm_policy: AlarmPolicyPatch | None = Field(
        default=None,
        description="The fields to change over the tenant's policy; null: the tenant's again.",
    )


class SuspendIn(_In):
    reason: str = Field(min_length=1, max_length=1000, description="Why; kept in its history.")


class SuspensionOut(BaseModel):
    id: str
    suspended_at: datetime
    reason: str
    suspended_by: str
    resumed_at: datetime | None
    resumed_by: str | None

    @classmethod
    def of(cls, s: Suspension) -> SuspensionOut:
        return cls(**{name: getattr(s, name) for name in cls.model_fields})


class ResumedOut(BaseModel):
    suspension: SuspensionOut
    draining: int = Field(description="Held deliveries now sent again, paced.")


class BreakerOut(BaseModel):
    state: Literal["closed", "open", "half_open"] = Field(
        description="open: the endpoint gets no attempts until `retry_at`; half_open: "
        "the cool-down is over, and the next attempt is the one probe."
    )
    opened_at: datetime | None
    retry_at: datetime | None = Field(description="When the next probe may go.")

    @classmethod
    def of(cls, breaker: Breaker | None, now: datetime) -> BreakerOut:
        if breaker is None or breaker.state is CircuitState.CLOSED:
            return cls(state="closed", opened_at=None, retry_at=None)
        retry_at = breaker.retry_at()
        waiting = retry_at is None or retry_at > now
        return cls(
            state="open" if waiting else "half_open",
            opened_at=breaker.opened_at,
            retry_at=retry_at,
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
    held: int = Field(description="Deliveries held while it is suspended.")
    suspensions: list[SuspensionOut] = Field(
        description="Its suspensions, newest first (the last 20): the first is the current "
        "one while it is `suspended`."
    )
    alarm_policy: AlarmPolicyOut
    alarm_policy_overrides: dict[str, Any] = Field(
        description="The fields of `alarm_policy` set on the endpoint itself."
    )

    @classmethod
    def of(cls, ep: Endpoint, health: EndpointHealth, now: datetime) -> EndpointOut:
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
            breaker=BreakerOut.of(health.breaker, now),
            held=health.held,
            suspensions=[SuspensionOut.of(s) for s in health.suspensions],
            alarm_policy=AlarmPolicyOut.of(ep.policy),
            alarm_policy_overrides=orjson.loads(ep.alarm_policy or "{}"),
        )


class MessageIn(_In):
    event_type: EventType
    payload: PortableJson = Field(description="Any JSON value; delivered as the envelope's `data`.")


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


_SOME_TEXT: dict[str, JsonValue] = {"type": "string", "minLength": 1}


class ReplayIn(_In):
    """Name the deliveries by at least one of ``ids`` (not empty), ``endpoint_id``,
    ``since`` or ``until``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["ids"], "properties": {"ids": {"type": "array", "minItems": 1}}},
                {"required": ["endpoint_id"], "properties": {"endpoint_id": _SOME_TEXT}},
                {"required": ["since"], "properties": {"since": _SOME_TEXT}},
                {"required": ["until"], "properties": {"until": _SOME_TEXT}},
            ]
        },
    )

    ids: list[str] | None = Field(default=None, max_length=1000)
    endpoint_id: str | None = None
    since: Instant | None = None
    until: Instant | None = None


class ReplayOut(BaseModel):
    replayed: int


class PageOut(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )
