"""The tables, as SQLAlchemy Core objects shared by every backend.

Times are stored as integer microseconds since the Unix epoch (:class:`Timestamp`):
one portable, indexable representation for SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def to_micros(value: datetime | None) -> int | None:
    """A datetime as stored: microseconds since the epoch."""
    return None if value is None else (value - EPOCH) // _MICRO


def from_micros(value: Any) -> datetime | None:
    """A stored time back as a timezone-aware UTC datetime."""
    return None if value is None else EPOCH + int(value) * _MICRO


class Timestamp(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime stored as microseconds since the epoch."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> int | None:
        return to_micros(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return from_micros(value)


metadata = MetaData()

settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("owner_email", String(320), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("alarm_policy", Text),  # JSON: the fields of the alarm policy it sets
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id"), nullable=False, index=True),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", Timestamp, nullable=False),
    Column("last_used_at", Timestamp),  # to the minute (see api.auth.KeyCache)
    Column("revoked_at", Timestamp),  # set: the key no longer authenticates
)

endpoints = Table(
    "endpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id"), nullable=False),
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("event_types", Text, nullable=False),  # JSON array
    Column("secret", Text, nullable=False),  # sealed (see sealing.py)
    Column("previous_secret", Text),
    Column("previous_secret_expires_at", Timestamp),
    Column("max_in_flight", Integer, nullable=False),
    Column("rate_limit_per_s", Float),
    Column("retry_schedule", Text),  # JSON array of seconds, or NULL for the default
    Column("state", String(16), nullable=False),
    Column("disabled_reason", Text),
    Column("deleted_at", Timestamp),
    # "webhook", or "email": a tenant's email lane (one, made with its first email)
    Column("kind", String(16), nullable=False, server_default="webhook"),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("alarm_policy", Text),  # JSON: the fields it sets over its tenant's policy
    Index("ix_endpoints_tenant", "tenant_id", "id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id"), nullable=False),
    Column("event_type", String(200), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("idempotency_key", String(200)),
    Column("created_at", Timestamp, nullable=False),
    Index("ix_messages_tenant", "tenant_id", "id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", String(40), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("message_id", String(40), nullable=False),
    Column("response", Text, nullable=False),  # JSON of the first answer
    Column("created_at", Timestamp, nullable=False, index=True),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("message_id", String(40), ForeignKey("messages.id"), nullable=False, index=True),
    Column("tenant_id", String(40), nullable=False),
    Column("endpoint_id", String(40), ForeignKey("endpoints.id"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    # attempts made before the last replay: the retry schedule counts from here
    Column("retry_base", Integer, nullable=False),
    Column("next_attempt_at", Timestamp),
    Column("lease_expires_at", Timestamp),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("dead_reason", Text),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("succeeded_at", Timestamp),
    Index("ix_deliveries_claim", "endpoint_id", "state", "next_attempt_at"),
    Index("ix_deliveries_due", "state", "next_attempt_at"),
    Index("ix_deliveries_lease", "state", "lease_expires_at"),
    Index("ix_deliveries_tenant", "tenant_id", "id"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("delivery_id", String(40), ForeignKey("deliveries.id"), nullable=False, index=True),
    Column("number", Integer, nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("response_excerpt", Text),
)

templates = Table(
    "templates",
    metadata,
    Column("tenant_id", String(40), ForeignKey("tenants.id"), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("definition", Text, nullable=False),  # JSON: the template as the API shows it
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

# One row per email: what was asked (the message row has the request) and what
# the worker chose when it sent it.
emails = Table(
    "emails",
    metadata,
    Column("id", String(40), ForeignKey("messages.id"), primary_key=True),
    Column("tenant_id", String(40), nullable=False),
    Column("delivery_id", String(40), nullable=False),
    Column("to_address", String(320), nullable=False),
    Column("template", String(100), nullable=False),
    Column("reference", String(200)),
    Column("variant", String(200)),  # NULL: the template's own content
    Column("variant_reason", Text),
    Column("subject", Text),  # as last sent
    Column("created_at", Timestamp, nullable=False),
    Column("sent_at", Timestamp),
    Index("ix_emails_tenant", "tenant_id", "id"),
)

# The embedded mail sink: what tidings "sent" when no SMTP server is configured.
sink_emails = Table(
    "sink_emails",
    metadata,
    Column("email_id", String(40), primary_key=True),
    Column("tenant_id", String(40), nullable=False),
    Column("message_id_header", String(200), nullable=False),
    Column("sender", String(320), nullable=False),
    Column("to_address", String(320), nullable=False),
    Column("subject", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("html", Text),
    Column("received_at", Timestamp, nullable=False),
    Index("ix_sink_emails_tenant", "tenant_id", "email_id"),
)

# Endpoint health --------------------------------------------------------------------

# Each endpoint's circuit breaker as its last change left it, for every process.
breakers = Table(
    "breakers",
    metadata,
    Column("endpoint_id", String(40), ForeignKey("endpoints.id"), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("opened_at", Timestamp),
    Column("cool_down_ms", BigInteger),
    Column("changed_at", Timestamp, nullable=False),
)

# Each endpoint's results per minute (the start of the minute): what alarms count.
endpoint_minutes = Table(
    "endpoint_minutes",
    metadata,
    Column("endpoint_id", String(40), primary_key=True),
    Column("minute", Timestamp, primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("successes", Integer, nullable=False),
    Column("dead", Integer, nullable=False),
    Index("ix_endpoint_minutes_minute", "minute"),
)

# Every suspension of an endpoint, kept after it resumed.
suspensions = Table(
    "suspensions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("endpoint_id", String(40), ForeignKey("endpoints.id"), nullable=False),
    Column("tenant_id", String(40), nullable=False),
    Column("suspended_at", Timestamp, nullable=False),
    Column("reason", Text, nullable=False),
    Column("suspended_by", String(200), nullable=False),
    Column("resumed_at", Timestamp),
    Column("resumed_by", String(200)),
    Index("ix_suspensions_endpoint", "endpoint_id", "id"),
)

# Every notice sent to a tenant's owner about an endpoint (warnings are sent at
# most once per endpoint URL per day: this is how that is known).
notices = Table(
    "notices",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(40), nullable=False),
    Column("endpoint_id", String(40), nullable=False),
    Column("url", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("sent_at", Timestamp, nullable=False),
    Column("email_id", String(40)),
    Column("detail", Text, nullable=False),  # JSON: what the notice said
    Index("ix_notices_endpoint", "endpoint_id", "kind", "sent_at"),
)

# Each rate-limited endpoint's token bucket, where several workers share it
# (PostgreSQL); a single SQLite process keeps its buckets in memory.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("endpoint_id", String(40), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)
