"""Identifiers that say what they are (``msg_…``, ``ep_…``) and sort by time.

The part after the prefix is a ULID: 48 bits of milliseconds since the epoch and
80 random bits in Crockford base32, so ids created later sort later, which the
cursor pagination relies on.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

TENANT = "tnt"
API_KEY = "key"
ENDPOINT = "ep"
MESSAGE = "msg"
DELIVERY = "dlv"
ATTEMPT = "atm"
EMAIL = "eml"
SUSPENSION = "sus"
NOTICE = "ntc"
HEALTH_CHECK = "hc"


def new_id(prefix: str, now_ms: int | None = None) -> str:
    """A new id ``<prefix>_<ulid>``; ``now_ms`` fixes the time part (tests, cursors)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
