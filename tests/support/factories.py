"""Records built in memory with test defaults, for tests that hand them to the store or
the engine directly rather than through the API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tidings import ids
from tidings.channels.signing import new_secret
from tidings.domain.models import Endpoint, EndpointState


def an_endpoint(**fields: Any) -> Endpoint:
    """An active endpoint record with test defaults; ``fields`` override any of them."""
    now = fields.pop("now", datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    values: dict[str, Any] = {
        "id": ids.new_id(ids.ENDPOINT),
        "tenant_id": "tnt_1",
        "url": "http://127.0.0.1:9/hook",
        "description": "",
        "event_types": (),
        "secret": new_secret(),
        "previous_secret": None,
        "previous_secret_expires_at": None,
        "max_in_flight": 10,
        "rate_limit_per_s": None,
        "retry_schedule": None,
        "state": EndpointState.ACTIVE,
        "disabled_reason": None,
        "created_at": now,
        "updated_at": now,
    }
    return Endpoint(**{**values, **fields})
