"""Fan-out: which endpoints get a message, and how its new deliveries start.

These are the rules an ingest transaction applies, and a resumption's drain: pure
functions of the endpoints read and the time, so that every store (SQL or in
memory) makes the same deliveries from the same message, and each rule is tested
without a database. The store does the reading, the id making and the writing.

* A webhook message goes to each of its tenant's webhook endpoints that is active
  or suspended and whose event-type filter accepts it (:func:`targets`); a
  disabled or deleted endpoint gets nothing.
* An email goes to its tenant's email lane, whatever the tenant's webhooks
  subscribe to. A tenant's lane is made by its first email (:func:`new_email_lane`),
  once: a tenant has at most one.
* A new delivery to a suspended endpoint is held, never dropped; one to an active
  endpoint is pending (:func:`first_state`). It is due at once, unless the
  endpoint's own retry schedule delays even the first attempt
  (:func:`first_attempt_at`).
* A replay gives a dead or held delivery of an active endpoint another go, due at
  once, and holds a dead one of a suspended endpoint, to drain when it resumes; a
  disabled endpoint's deliveries stay as they are (:data:`REPLAYS`, :func:`replayed`).
* On resumption the held deliveries drain paced, oldest first, at the endpoint's
  drain rate, never faster than its own rate limit (:func:`drain_rate`,
  :func:`drain_schedule`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TypeVar

from tidings.domain.models import (
    REPLAYABLE_STATES,
    DeliveryState,
    Endpoint,
    EndpointKind,
    EndpointState,
    NewMessage,
)

T = TypeVar("T")

RECEIVING_STATES = (EndpointState.ACTIVE, EndpointState.SUSPENDED)
"""The states of endpoints that are given new deliveries (held, while suspended)."""

EMAIL_LANE_URL = "email:"
EMAIL_LANE_DESCRIPTION = "the tenant's emails"
EMAIL_LANE_MAX_IN_FLIGHT = 10  # emails of one tenant in flight at once


def receives(endpoint: Endpoint) -> bool:
    """Whether ``endpoint`` is given new deliveries at all (of any message)."""
    return endpoint.state in RECEIVING_STATES


def targets(new: NewMessage, tenant_endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """The webhook endpoints, of those of ``new``'s tenant, that ``new`` goes to, in the
    order given. An email goes to none of them: it goes to the email lane."""
    if new.email is not None:
        return []
    return [
        ep
        for ep in tenant_endpoints
        if ep.kind is EndpointKind.WEBHOOK and receives(ep) and ep.accepts(new.event_type)
    ]


def email_lane(tenant_endpoints: Iterable[Endpoint]) -> Endpoint | None:
    """The tenant's email lane among its endpoints, if it has one yet."""
    for endpoint in tenant_endpoints:
        if endpoint.kind is EndpointKind.EMAIL:
            return endpoint
    return None


def new_email_lane(lane_id: str, tenant_id: str, now: datetime) -> Endpoint:
    """The email lane a tenant's first email makes: an endpoint of kind email, active,
    subscribed to nothing (emails reach it whatever their type), with no secret (the
    email channel signs nothing) and the tenant's cap on emails in flight at once."""
    return Endpoint(
        id=lane_id,
        tenant_id=tenant_id,
        url=EMAIL_LANE_URL,
        description=EMAIL_LANE_DESCRIPTION,
        event_types=(),
        secret="",
        previous_secret=None,
        previous_secret_expires_at=None,
        max_in_flight=EMAIL_LANE_MAX_IN_FLIGHT,
        rate_limit_per_s=None,
        retry_schedule=None,
        state=EndpointState.ACTIVE,
        disabled_reason=None,
        created_at=now,
        updated_at=now,
        kind=EndpointKind.EMAIL,
    )


def first_state(endpoint: Endpoint) -> DeliveryState:
    """A new delivery's state: held while its endpoint is suspended, else pending."""
    return (
        DeliveryState.HELD if endpoint.state is EndpointState.SUSPENDED else DeliveryState.PENDING
    )


def first_delay(endpoint: Endpoint) -> float:
    """Seconds before a new delivery's first attempt: an endpoint's own schedule may
    delay even the first (its first entry); else none."""
    return endpoint.retry_schedule[0] if endpoint.retry_schedule else 0.0


def first_attempt_at(endpoint: Endpoint, now: datetime) -> datetime:
    """When a delivery made at ``now`` is first due (its ``next_attempt_at``)."""
    return now + timedelta(seconds=first_delay(endpoint))


REPLAYS: dict[EndpointState, tuple[frozenset[DeliveryState], DeliveryState]] = {
    EndpointState.ACTIVE: (frozenset(REPLAYABLE_STATES), DeliveryState.PENDING),
    EndpointState.SUSPENDED: (frozenset({DeliveryState.DEAD}), DeliveryState.HELD),
}
"""By the endpoint's state: which delivery states a replay takes, and the state it
gives them (a pending one is due at once)."""


def replayed(endpoint_state: EndpointState, state: DeliveryState) -> DeliveryState | None:
    """The state a replay gives a delivery in ``state`` of an endpoint in
    ``endpoint_state``, or None when the replay leaves it alone."""
    taken, to = REPLAYS.get(endpoint_state, (frozenset(), state))
    return to if state in taken else None


def drain_rate(endpoint: Endpoint) -> float:
    """Held deliveries a second that a resumed endpoint drains at: its alarm policy's
    drain rate, lowered to its own rate limit if it has a lower one (a drain must not
    be what trips its receiver again)."""
    rate = endpoint.policy.drain_rate_per_s
    if endpoint.rate_limit_per_s:
        rate = min(rate, endpoint.rate_limit_per_s)
    return rate


def drain_schedule(held: Iterable[T], now: datetime, rate_per_s: float) -> list[tuple[T, datetime]]:
    """Each of ``held`` (oldest first) with the time it is due again: the first now, each
    next one ``1 / rate_per_s`` seconds after the one before."""
    step = timedelta(seconds=1 / rate_per_s)
    return [(item, now + i * step) for i, item in enumerate(held)]
