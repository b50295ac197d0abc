from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from support.factories import an_endpoint
from tidings.channels.signing import new_secret, signature_headers
from tidings.domain.models import Endpoint


def _now() -> datetime:
    """The time a signature is made at. The reference library checks it against the real
    clock (5 minutes' tolerance), so each test takes it when it runs, not at import."""
    return datetime.now(UTC).replace(microsecond=0)


def _endpoint(previous: str | None, expires: datetime | None, now: datetime) -> Endpoint:
    return an_endpoint(
        url="https://example.com/hook",
        previous_secret=previous,
        previous_secret_expires_at=expires,
        now=now,
    )


def test_new_secrets_are_distinct_whsec_strings() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(s.startswith("whsec_") for s in secrets)


def test_headers_verify_with_the_reference_library() -> None:
    secret = new_secret()
    body = '{"type":"a","data":{}}'
    now = _now()

    headers = signature_headers([secret], "msg_1", now, body)

    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert Webhook(secret).verify(body, headers) == {"type": "a", "data": {}}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + " ", headers)


def test_during_a_rotation_both_secrets_sign_and_after_it_only_the_new_one() -> None:
    now = _now()
    old = new_secret()
    endpoint = _endpoint(previous=old, expires=now + timedelta(hours=24), now=now)
    body = "{}"

    during = signature_headers(endpoint.signing_secrets(now), "msg_1", now, body)
    later = now + timedelta(hours=25)
    after = signature_headers(endpoint.signing_secrets(later), "msg_1", now, body)

    assert len(during["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, during)
    Webhook(endpoint.secret).verify(body, during)
    assert len(after["webhook-signature"].split(" ")) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, after)
