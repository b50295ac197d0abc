"""Settings: the only place that reads the environment.

Every setting is a ``TIDINGS_*`` environment variable (or a line in ``.env``),
read once at start into a frozen :class:`Settings`. Durations accept seconds
(``15``, ``0.5``) or an ISO 8601 duration (``PT15S``, ``P3D``).
"""

from __future__ import annotations

import ipaddress
import os
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _seconds(value: object) -> object:
    """Read a bare number in an environment string as seconds."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Duration = Annotated[timedelta, BeforeValidator(_seconds)]


class Settings(BaseSettings):
    """Typed configuration of one tidings process."""

    model_config = SettingsConfigDict(
        env_prefix="TIDINGS_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        # An error names the setting and what is wrong, never the value: it may
        # hold a password (TIDINGS_SMTP_URL), the admin token or an encryption key.
        hide_input_in_errors=True,
    )

    database_url: str = "sqlite:///./tidings.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    admin_token: SecretStr | None = None
    # Keys that encrypt the secrets the store keeps: base64url of 32 bytes each,
    # comma-separated; the first encrypts, every one decrypts (list the old one second
    # while rotating). Unset on SQLite: a key file beside the database, made on first
    # start (mode 0600). Required on PostgreSQL.
    encryption_key: SecretStr | None = None
    allow_networks: Annotated[tuple[IPNetwork, ...], NoDecode] = ()

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    connect_timeout: Duration = timedelta(seconds=5)
    request_timeout: Duration = timedelta(seconds=15)
    max_in_flight: int = Field(default=256, ge=1)
    # Processes that make the HTTP requests, beside the one that owns the store;
    # 0 sends from the main process. Unset: one per CPU, at most 4 (0 on one CPU).
    senders: int | None = Field(default=None, ge=0, le=32)
    endpoint_max_in_flight: int = Field(default=10, ge=1, le=1000)
    # Email: without an SMTP URL, emails go to the embedded mail sink (GET /v1/sink/emails).
    smtp_url: SecretStr | None = None
    smtp_connections: int = Field(default=10, ge=1, le=1000)
    email_from: str = Field(
        default="tidings@localhost", max_length=320, pattern=r"^[^@\s<>]+@[^@\s<>]+$"
    )
    lease: Duration = timedelta(seconds=60)
    retention: Duration = timedelta(days=3)
    retry_after_max: Duration = timedelta(hours=1)
    secret_grace: Duration = timedelta(hours=24)
    idempotency_ttl: Duration = timedelta(hours=24)
    # Endpoint health: how often alarms are evaluated, and how long a suspended
    # endpoint's held deliveries are kept before they die as expired.
    health_interval: Duration = Field(default=timedelta(seconds=15), ge=timedelta(seconds=1))
    held_retention: Duration = Field(default=timedelta(days=7), ge=timedelta(hours=1))
    # Where users reach the API, for the links in owner notices (unset: http://HOST:PORT).
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")

    @property
    def api_url(self) -> str:
        """The API's base URL as users reach it (``public_url``, or the listen address)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    @property
    def sender_count(self) -> int:
        """How many sender processes to run (``senders``, or one per CPU, at most 4).

        On one CPU a sender process only adds its hand-offs, so there it is 0.
        """
        if self.senders is not None:
            return self.senders
        cpus = os.cpu_count() or 1
        return min(cpus, 4) if cpus > 1 else 0

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        """Comma-separated CIDRs; host bits are ignored (``10.1.2.3/16`` is ``10.1.0.0/16``)."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return tuple(ipaddress.ip_network(str(net), strict=False) for net in value)
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from tidings.smtp_url import parse_smtp_url

            parse_smtp_url(value.get_secret_value())  # its errors never show the password
        return value

    @field_validator("encryption_key")
    @classmethod
    def _encryption_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from tidings.crypto import Keyring

            Keyring.parse(value.get_secret_value())  # its errors name a key's place, never it
        return value

    @model_validator(mode="after")
    def _lease_outlives_a_request(self) -> Settings:
        if self.lease <= self.request_timeout:
            raise ValueError(
                "TIDINGS_LEASE must be longer than TIDINGS_REQUEST_TIMEOUT, or a slow "
                "attempt's delivery would be claimed again while it is still running"
            )
        return self
