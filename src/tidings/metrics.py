"""Every Prometheus metric of tidings, on one registry owned by the app.

Metrics are one subscriber of the events (:mod:`tidings.events`): the engine,
the email pipeline and the use cases say what happened (the queue's count
too), and :meth:`Metrics.observe` counts it. Every label combination is
created up front, so a rate over a counter that has not moved yet reads 0, not
"no data".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tidings.domain.alarms import Level
from tidings.domain.lookup import LookupOutcome, LookupReason, LookupResult
from tidings.domain.models import DeliveryState
from tidings.domain.notices import NoticeKind
from tidings.domain.retry import DeadReason, Verdict
from tidings.events import (
    AttemptFinished,
    DeliveriesCreated,
    DeliveriesEnded,
    Event,
    HeldCounted,
    LookupDone,
    MessageAccepted,
    NoticeSent,
    QueueCounted,
    TemplateKnown,
)

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none", "other")
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 86400)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "tidings_messages_accepted",
            "Messages accepted (202), by whether the Idempotency-Key replayed an earlier one.",
            ["replayed"],
            registry=r,
        )
        self.deliveries = Counter(
            "tidings_deliveries",
            "Deliveries that finished an attempt, by what became of them.",
            ["outcome"],
            registry=r,
        )
        self.dead = Counter(
            "tidings_deliveries_dead",
            "Deliveries that died, by reason.",
            ["reason"],
            registry=r,
        )
        self.attempts = Counter(
            "tidings_attempts",
            "Delivery attempts, by outcome and HTTP status class ('none': no response).",
            ["outcome", "status_class"],
            registry=r,
        )
        self.attempt_duration = Histogram(
            "tidings_attempt_duration_seconds",
            "Time from sending an attempt to its answer or error.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "tidings_delivery_latency_seconds",
            "End-to-end time from a message's acceptance to its successful delivery.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "tidings_queue_depth",
            "Deliveries in each state, as last counted.",
            ["state"],
            registry=r,
        )
        self.lookups = Counter(
            "tidings_lookup",
            "Template lookups, by template, outcome and (for errors) reason; each error "
            "sent the template's default content.",
            ["template", "outcome", "reason"],
            registry=r,
        )
        # Per endpoint: what the shipped alert rules need to tell one endpoint gone
        # silent (deploy/prometheus/alerts.yml). Series are made on first use.
        self.endpoint_attempts = Counter(
            "tidings_endpoint_attempts",
            "Delivery attempts per endpoint, by outcome.",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.endpoint_deliveries = Counter(
            "tidings_endpoint_deliveries",
            "Deliveries created per endpoint: the messages that arrived for it.",
            ["endpoint"],
            registry=r,
        )
        self.endpoint_held = Gauge(
            "tidings_endpoint_held",
            "Deliveries held per suspended endpoint, as last counted.",
            ["endpoint"],
            registry=r,
        )
        self.endpoint_suspended = Gauge(
            "tidings_endpoint_suspended",
            "1 while the endpoint is suspended, as last seen.",
            ["endpoint"],
            registry=r,
        )
        self.oldest_due = Gauge(
            "tidings_oldest_pending_age_seconds",
            "How long the delivery waiting longest since it fell due has waited (0: none).",
            registry=r,
        )
        self.alarms = Counter(
            "tidings_alarms",
            "Endpoint alarms raised, by level (each raised alarm counts once per evaluation).",
            ["level"],
            registry=r,
        )
        self.notices = Counter(
            "tidings_notices",
            "Notices sent to tenants' owners, by kind.",
            ["kind"],
            registry=r,
        )
        self._templates: set[str] = set()
        self._held: set[str] = set()
        self._initialise_labels()

    def _initialise_labels(self) -> None:
        for replayed in ("false", "true"):
            self.messages.labels(replayed)
        for verdict in Verdict:
            self.deliveries.labels(verdict.value)
        for cause in DeadReason:
            self.dead.labels(cause.value)
        for outcome in ("success", "failure"):
            for status_class in STATUS_CLASSES:
                self.attempts.labels(outcome, status_class)
        for state in DeliveryState:
            self.queue_depth.labels(state.value)
        for level in Level:
            self.alarms.labels(level.value)
        for kind in NoticeKind:
            self.notices.labels(kind.value)

    def observe(self, event: Event) -> None:
        """Count what ``event`` says happened (subscribed to the process's event bus);
        an event no metric counts is ignored."""
        match event:
            case AttemptFinished():
                self._attempted(event)
            case LookupDone(template, result):
                self._looked_up(template, result)
            case DeliveriesEnded(cause, count):
                self.ended(cause, count)
            case NoticeSent(kind):
                self.notices.labels(kind.value).inc()
                if kind.alarm is not None:
                    self.alarms.labels(kind.alarm.value).inc()
            case HeldCounted(held, suspended):
                self._set_endpoints_held(held, suspended)
            case _:
                self._observe_use_case(event)

    def _observe_use_case(self, event: Event) -> None:
        """Count what a use case of the service says it did."""
        match event:
            case MessageAccepted(_, replayed):
                self.accepted(replayed=replayed)
            case DeliveriesCreated(_, endpoint_ids):
                self.created(endpoint_ids)
            case TemplateKnown(name):
                self.template_known(name)
            case QueueCounted(depth, oldest_due_s):
                self.set_queue_depth(depth, oldest_due_s)

    def template_known(self, template: str) -> None:
        """Create the lookup series of ``template`` (once), so they read 0 from the start."""
        if template in self._templates:
            return
        self._templates.add(template)
        for outcome in LookupOutcome:
            reasons = LookupReason if outcome is LookupOutcome.ERROR else (LookupReason.NONE,)
            for reason in reasons:
                self.lookups.labels(template, outcome.value, reason.value)

    def _looked_up(self, template: str, result: LookupResult) -> None:
        self.template_known(template)
        self.lookups.labels(template, result.outcome.value, result.reason.value).inc()

    def accepted(self, *, replayed: bool) -> None:
        self.messages.labels("true" if replayed else "false").inc()

    def _attempted(self, event: AttemptFinished) -> None:
        """Count one finished attempt and what the policy made of it."""
        outcome, decision = event.outcome, event.decision
        success = outcome.succeeded
        self.attempts.labels("success" if success else "failure", outcome.status_class).inc()
        self.endpoint_attempts.labels(event.endpoint_id, "success" if success else "failure").inc()
        self.attempt_duration.observe(event.duration_ms / 1000)
        self.deliveries.labels(decision.verdict.value).inc()
        if decision.cause is not None:
            self.dead.labels(decision.cause.value).inc()
        if success:
            elapsed = (event.finished_at - event.accepted_at).total_seconds()
            self.latency.observe(max(elapsed, 0.0))

    def ended(self, cause: DeadReason, count: int) -> None:
        """Count deliveries that died without an attempt (their endpoint went away)."""
        self.deliveries.labels(Verdict.DEAD.value).inc(count)
        self.dead.labels(cause.value).inc(count)

    def set_queue_depth(self, depth: Mapping[DeliveryState, int], oldest_due_s: float) -> None:
        for state, count in depth.items():
            self.queue_depth.labels(state.value).set(count)
        self.oldest_due.set(oldest_due_s)

    def created(self, endpoint_ids: Iterable[str]) -> None:
        """Count the deliveries of an accepted message, per endpoint."""
        for endpoint_id in endpoint_ids:
            self.endpoint_deliveries.labels(endpoint_id).inc()

    def _set_endpoints_held(self, held: Mapping[str, int], suspended: frozenset[str]) -> None:
        """The held deliveries and suspended endpoints as last counted; endpoints that
        left either read 0 (their series stay, so a rate over them stays defined)."""
        for endpoint_id in self._held | held.keys() | suspended:
            self.endpoint_held.labels(endpoint_id).set(held.get(endpoint_id, 0))
            self.endpoint_suspended.labels(endpoint_id).set(int(endpoint_id in suspended))
        self._held |= held.keys() | suspended
