from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from support import an_endpoint
from tidings.channels.signing import new_secret, signature_headers
from tidings.models import Endpoint

NOW = datetime.now(UTC).replace(microsecond=0)


def _endpoint(previous: str | None, expires: datetime | None) -> Endpoint:
    return an_endpoint(
        url="https://example.com/hook",
        previous_secret=previous,
        previous_secret_expires_at=expires,
        now=NOW,
    )


def test_new_secrets_are_distinct_whsec_strings() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(s.startswith("whsec_") for s in secrets)


def test_headers_verify_with_the_reference_library() -> None:
    secret = new_secret()
    body = '{"type":"a","data":{}}'

    headers = signature_headers([secret], "msg_1", NOW, body)

    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    assert Webhook(secret).verify(body, headers) == {"type": "a", "data": {}}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + " ", headers)


def test_during_a_rotation_both_secrets_sign_and_after_it_only_the_new_one() -> None:
    old = new_secret()
    endpoint = _endpoint(previous=old, expires=NOW + timedelta(hours=24))
    body = "{}"

    during = signature_headers(endpoint.signing_secrets(NOW), "msg_1", NOW, body)
    later = NOW + timedelta(hours=25)
    after = signature_headers(endpoint.signing_secrets(later), "msg_1", NOW, body)

    assert len(during["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, during)
    Webhook(endpoint.secret).verify(body, during)
    assert len(after["webhook-signature"].split(" ")) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, after)
