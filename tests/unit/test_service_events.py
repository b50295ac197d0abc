"""The metrics count what the service's use cases tell the event bus."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest

from tidings.domain.models import DeliveryState
from tidings.domain.retry import DeadReason
from tidings.events import (
    Bus,
    DeliveriesCreated,
    DeliveriesEnded,
    MessageAccepted,
    QueueCounted,
    TemplateKnown,
)
from tidings.metrics import Metrics


def test_the_use_cases_records_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        MessageAccepted("msg_1", replayed=False).replayed = True  # type: ignore[misc]


def test_the_metrics_count_what_the_use_cases_tell() -> None:
    bus = Bus()
    metrics = Metrics()
    bus.subscribe(metrics.observe)

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    bus.emit(MessageAccepted("msg_1", replayed=False))
    bus.emit(MessageAccepted("msg_1", replayed=True))
    bus.emit(DeliveriesCreated("msg_1", ("ep_1", "ep_2")))
    bus.emit(DeliveriesEnded(DeadReason.DELETED, 3))
    bus.emit(TemplateKnown("welcome"))
    bus.emit(QueueCounted({DeliveryState.PENDING: 7}, 1.5))

    assert value("tidings_messages_accepted_total", replayed="false") == 1.0
    assert value("tidings_messages_accepted_total", replayed="true") == 1.0
    assert value("tidings_endpoint_deliveries_total", endpoint="ep_2") == 1.0
    assert value("tidings_deliveries_dead_total", reason="deleted") == 3.0
    assert value("tidings_lookup_total", template="welcome", outcome="found", reason="") == 0.0
    assert value("tidings_queue_depth", state="pending") == 7.0
    assert value("tidings_oldest_pending_age_seconds") == 1.5
