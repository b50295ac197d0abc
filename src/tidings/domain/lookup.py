"""What a template's lookup found, or why it found nothing: the closed sets and the record.

The lookup itself (a guarded HTTP GET, a JSON Pointer into the answer, one
breaker per key) is :mod:`tidings.channels.lookup`'s; its result is a value
the email pipeline, the events and the metrics read.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["LookupOutcome", "LookupReason", "LookupResult"]


class LookupOutcome(StrEnum):
    FOUND = "found"
    NOT_FOUND = "not_found"
    ERROR = "error"


class LookupReason(StrEnum):
    """Why a lookup failed (the email then has the template's default content); the
    ``reason`` label of ``tidings_lookup``."""

    NONE = ""
    """Not an error: found, or not found."""
    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"
    STATUS = "status"
    NOT_JSON = "not_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    TOO_LARGE = "too_large"
    BLOCKED = "blocked"
    BREAKER_OPEN = "breaker_open"


@dataclass(frozen=True, slots=True)
class LookupResult:
    """What a lookup found, or why it found nothing."""

    outcome: LookupOutcome
    reason: LookupReason
    """:attr:`LookupReason.NONE` unless :attr:`LookupOutcome.ERROR`."""
    value: str | None
    """The selected value as a string; ``None`` on error."""
    detail: str
    """Human text for logs and the email's "why this variant" record."""
