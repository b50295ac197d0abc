"""Standard Webhooks signing, with the ``standardwebhooks`` reference library.

Each attempt carries ``webhook-id`` (the message id: the same on every attempt
and for every endpoint, so receivers dedupe on it), ``webhook-timestamp`` (set
afresh per attempt) and ``webhook-signature``: a space-separated ``v1,<base64>``
for each secret in force — the current one and, during a rotation's grace
period, the previous one, so a receiver still holding the old secret verifies.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


@lru_cache(maxsize=4096)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)


def signature_headers(
    secrets: Sequence[str], msg_id: str, timestamp: datetime, body: str
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    signatures = " ".join(_signer(s).sign(msg_id, timestamp, body) for s in secrets)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signatures,
    }
