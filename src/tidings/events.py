"""What happened, said once: frozen event records and a small in-process bus.

The engine and the email pipeline say what happened (an attempt finished, a
notice went out, a lookup was done, deliveries ended without an attempt), and so
do the use cases of :mod:`tidings.service` (a message accepted, its deliveries
made, a template known, the queue counted), by emitting a record on the
process's :class:`Bus`; whoever cares subscribes.
Metrics are one subscriber (:meth:`tidings.metrics.Metrics.observe`), so no
business code touches a metric.

The bus is synchronous and in process: :meth:`Bus.emit` calls each subscriber
in turn, at once, on the emitter's own stack (an attempt's event costs a
function call per subscriber, no task and no queue). A subscriber that raises
is logged and skipped: what watches the engine must never stop it.

Every record is an :class:`Event`; a new kind of event is a new frozen record
here, and subscribers match the kinds they know and ignore the rest. What the
store changed is not carried here: the store tells its listeners itself, after
each commit (:meth:`~tidings.store.ports.Lifecycle.listen`), and the dispatcher's
wake-ups and the key cache subscribe to that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import structlog

from tidings.domain.lookup import LookupResult
from tidings.domain.models import DeliveryState
from tidings.domain.notices import NoticeKind
from tidings.domain.outcome import Outcome
from tidings.domain.retry import DeadReason, Decision

__all__ = [
    "AttemptFinished",
    "Bus",
    "DeliveriesCreated",
    "DeliveriesEnded",
    "Event",
    "HeldCounted",
    "LookupDone",
    "MessageAccepted",
    "NoticeSent",
    "QueueCounted",
    "Subscriber",
    "TemplateKnown",
]

log = structlog.get_logger(__name__)


class Event:
    """Something that happened; the base of every record a :class:`Bus` carries."""

    __slots__ = ()


Subscriber = Callable[[Event], None]


class Bus:
    """Hands each emitted event to every subscriber, in the order they subscribed."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception(
                    "event_subscriber_failed",
                    kind=type(event).__name__,
                    subscriber=repr(subscriber),
                )


# what the engine says --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptFinished(Event):
    """One delivery attempt ended, and the retry policy judged it."""

    endpoint_id: str
    outcome: Outcome
    decision: Decision
    duration_ms: float
    accepted_at: datetime
    """When the message was accepted: a success's end-to-end latency runs from here."""
    finished_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveriesEnded(Event):
    """``count`` deliveries died without an attempt: their endpoint went away
    (disabled, deleted) or they were held past the held retention (expired)."""

    cause: DeadReason
    count: int


@dataclass(frozen=True, slots=True)
class NoticeSent(Event):
    """A notice went out to an endpoint's owner (with its event)."""

    kind: NoticeKind
    endpoint_id: str


@dataclass(frozen=True, slots=True)
class HeldCounted(Event):
    """The held deliveries per suspended endpoint, and which endpoints are suspended,
    as the health monitor last counted them."""

    held: Mapping[str, int]
    suspended: frozenset[str]


@dataclass(frozen=True, slots=True)
class LookupDone(Event):
    """An email template's lookup ended (found, not found, or failed to the default)."""

    template: str
    result: LookupResult


# what the use cases say ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageAccepted(Event):
    """A message (or an email) was accepted: committed, or found already committed
    under its Idempotency-Key (``replayed``)."""

    message_id: str
    replayed: bool


@dataclass(frozen=True, slots=True)
class DeliveriesCreated(Event):
    """An accepted message made one delivery to each of these endpoints."""

    message_id: str
    endpoint_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TemplateKnown(Event):
    """A template of this name exists (made, replaced, or found at start): its lookup
    series should read 0 from now, not "no data"."""

    name: str


@dataclass(frozen=True, slots=True)
class QueueCounted(Event):
    """The deliveries in each state, and how long the one waiting longest since it fell
    due has waited (0: none), as just counted."""

    depth: Mapping[DeliveryState, int]
    oldest_due_s: float
