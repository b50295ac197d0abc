"""One attempt of one claimed delivery, and the result it writes back.

:meth:`Attempts.run` hands the job to the channel of its endpoint's kind,
bounded by the request timeout; judges the outcome with the retry policy
(:func:`~tidings.domain.retry.decide`); says what happened
(:class:`~tidings.events.AttemptFinished`), feeds the endpoint's breaker, logs
the attempt, and returns the :class:`~tidings.domain.models.AttemptResult` for
the dispatcher to write back. It never raises for anything the receiver did.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from datetime import datetime

import structlog

from tidings.channels.base import Channel, Sent
from tidings.clock import Clock
from tidings.config import Settings
from tidings.domain.circuit import Breaker
from tidings.domain.models import (
    Attempt,
    AttemptResult,
    Claimed,
    DeliveryState,
    Endpoint,
    EndpointKind,
)
from tidings.domain.outcome import ErrorClass, Outcome
from tidings.domain.retry import DEFAULT_SCHEDULE, Decision, Verdict, decide
from tidings.events import AttemptFinished, Bus
from tidings.ids import ATTEMPT, new_id

log = structlog.get_logger(__name__)

_STATE_OF = {
    Verdict.SUCCEEDED: DeliveryState.SUCCEEDED,
    Verdict.RETRY: DeliveryState.PENDING,
    Verdict.DEAD: DeliveryState.DEAD,
}

HealthRecorder = Callable[[str, Outcome, datetime], Breaker | None]
"""Feeds an outcome to its endpoint's breaker: the breaker if its state changed."""


class Attempts:
    """Makes attempts through ``channels`` (one per endpoint kind) and judges them."""

    def __init__(
        self,
        channels: Mapping[EndpointKind, Channel],
        settings: Settings,
        clock: Clock,
        events: Bus,
        rng: random.Random,
        record_health: HealthRecorder,
    ) -> None:
        self._channels = channels
        self._settings = settings
        self._timeout_s = settings.request_timeout.total_seconds()
        self._clock = clock
        self._events = events
        self._rng = rng
        self._record_health = record_health

    async def run(self, endpoint: Endpoint, job: Claimed) -> AttemptResult:
        """Attempt ``job`` once and judge it: the result to write back."""
        channel = self._channels[endpoint.kind]
        started_at = self._clock.now()
        sent = await self._send(channel, endpoint, job, started_at)
        now = self._clock.now()
        number = job.attempts + 1
        decision = decide(
            sent.outcome,
            attempt=job.attempt_in_round,
            created_at=job.created_at,
            now=now,
            schedule=endpoint.retry_schedule or DEFAULT_SCHEDULE,
            retention=self._settings.retention,
            retry_after_max=self._settings.retry_after_max,
            rng=self._rng,
        )
        self._events.emit(
            AttemptFinished(
                endpoint.id, sent.outcome, decision, sent.duration_ms, job.message_created_at, now
            )
        )
        breaker = self._record_health(endpoint.id, sent.outcome, now)
        _log_outcome(endpoint, job, number, sent.outcome.summary, decision)
        attempt = Attempt(
            id=new_id(ATTEMPT),
            delivery_id=job.delivery_id,
            number=number,
            started_at=started_at,
            duration_ms=sent.duration_ms,
            status_code=sent.outcome.status,
            error=_error_text(sent.outcome),
            response_excerpt=sent.excerpt,
        )
        return AttemptResult(
            delivery_id=job.delivery_id,
            endpoint_id=endpoint.id,
            attempt=attempt,
            state=_STATE_OF[decision.verdict],
            next_attempt_at=decision.next_attempt_at,
            dead_reason=decision.reason,
            lease_until=job.lease_until,
            disable_endpoint=decision.disable_endpoint,
            email=channel.settle(endpoint, job, sent, decision, now),
            breaker=breaker,
        )

    async def _send(
        self, channel: Channel, endpoint: Endpoint, job: Claimed, started_at: datetime
    ) -> Sent:
        """One attempt, bounded by the request timeout whatever it does: a job is
        started only with that much of its lease left (see the dispatcher's
        ``_start``), so an attempt that ran on could be claimed and sent again while
        it is still running. An email's attempt (lookup, SMTP pool, SMTP commands)
        has no other such bound."""
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(self._timeout_s):
                return await channel.deliver(endpoint, job, started_at)
        except TimeoutError:
            elapsed_ms = round((self._clock.monotonic() - started) * 1000, 3)
            outcome = Outcome(
                None, ErrorClass.TIMEOUT, detail="the attempt outlasted the request timeout"
            )
            return Sent(outcome, elapsed_ms, None)


def _error_text(outcome: Outcome) -> str | None:
    """What the attempt record keeps of an error: its class and, if known, the detail."""
    if outcome.error is None:
        return None
    error = outcome.error.value
    return f"{error}: {outcome.detail}" if outcome.detail else error


def _log_outcome(
    endpoint: Endpoint, job: Claimed, number: int, summary: str, decision: Decision
) -> None:
    log.info(
        "attempt",
        delivery_id=job.delivery_id,
        message_id=job.message_id,
        endpoint_id=endpoint.id,
        attempt=number,
        result=summary,
        verdict=decision.verdict.value,
        next_attempt_at=decision.next_attempt_at.isoformat() if decision.next_attempt_at else None,
        reason=decision.reason,
    )
