from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest
from pydantic import ValidationError

from tidings.config import Settings


def test_defaults_match_the_documentation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # no .env
    settings = Settings()

    assert settings.database_url == "sqlite:///./tidings.db"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.admin_token is None
    assert settings.allow_networks == ()
    assert settings.max_body_bytes == 256 * 1024
    assert settings.connect_timeout == timedelta(seconds=5)
    assert settings.request_timeout == timedelta(seconds=15)
    assert settings.endpoint_max_in_flight == 10
    assert settings.retention == timedelta(days=3)
    assert settings.secret_grace == timedelta(hours=24)
    assert settings.idempotency_ttl == timedelta(hours=24)
    assert settings.senders is None
    assert settings.smtp_url is None
    assert settings.smtp_connections == 10
    assert settings.email_from == "tidings@localhost"
    assert settings.health_interval == timedelta(seconds=15)
    assert settings.held_retention == timedelta(days=7)
    assert settings.api_url == "http://127.0.0.1:8000"  # no TIDINGS_PUBLIC_URL


@pytest.mark.parametrize(("cpus", "senders"), [(1, 0), (2, 2), (4, 4), (16, 4), (None, 0)])
def test_sender_processes_default_to_one_per_cpu_up_to_four(
    monkeypatch: pytest.MonkeyPatch, cpus: int | None, senders: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cpus)

    assert Settings(senders=None).sender_count == senders
    assert Settings(senders=3).sender_count == 3  # a set value is taken as it is


def test_environment_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_ALLOW_NETWORKS", "127.0.0.0/8, ::1/128")
    monkeypatch.setenv("TIDINGS_REQUEST_TIMEOUT", "2.5")
    monkeypatch.setenv("TIDINGS_RETENTION", "P7D")

    settings = Settings()

    assert settings.allow_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert settings.request_timeout == timedelta(seconds=2.5)
    assert settings.retention == timedelta(days=7)


def test_the_public_url_is_where_owner_notices_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_PUBLIC_URL", "https://tidings.example.com/")
    assert Settings().api_url == "https://tidings.example.com"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TIDINGS_ALLOW_NETWORKS", "not-a-network"),
        ("TIDINGS_PORT", "70000"),
        ("TIDINGS_LEASE", "10"),  # shorter than the 15 s request timeout
        ("TIDINGS_HEALTH_INTERVAL", "0"),
        ("TIDINGS_HELD_RETENTION", "60"),  # under an hour: a typo, not a policy
        ("TIDINGS_PUBLIC_URL", "tidings.example.com"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_a_bad_smtp_url_stops_the_start_without_showing_its_password() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(smtp_url="smtpx://user:hunter2@mail.example.com")

    assert "smtp_url" in str(caught.value)
    assert "smtp:// or smtps://" in str(caught.value)
    assert "hunter2" not in str(caught.value)
