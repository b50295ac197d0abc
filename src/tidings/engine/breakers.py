"""The endpoints' circuit breakers, as this delivering process holds them.

Each endpoint's :class:`~tidings.domain.circuit.Breaker` (a pure value: closed,
open until a time, half-open) is fed every attempt's outcome here and read
before every claim and start. A change of state is written to the store with
the attempt's result, so other processes take it over; this process takes
theirs over when it re-reads the endpoints (:meth:`Breakers.adopt`).

What a change means for the dispatcher (hand back what waits for an opened
endpoint, wake up for a closed one) is the dispatcher's to act on: these
methods say what changed and when something falls due, and change nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog

from tidings.clock import Clock
from tidings.domain.circuit import Breaker, BreakerPolicy, CircuitState
from tidings.domain.outcome import Outcome

log = structlog.get_logger(__name__)

ANY = 1 << 30
"""The room of a closed breaker: no limit of its own."""
_CLOSED_ROOM: tuple[int, None] = (ANY, None)


class Breakers:
    """Every endpoint's breaker in this process, and when each last changed here."""

    def __init__(self, clock: Clock, policy_of: Callable[[str], BreakerPolicy]) -> None:
        self._clock = clock
        self._policy_of = policy_of
        self._breakers: dict[str, Breaker] = {}
        # When this process last changed each breaker: a later change in the store is
        # another process's (or a resumption's), and is taken over.
        self._changed: dict[str, datetime] = {}

    def adopt(self, stored: dict[str, tuple[Breaker, datetime]]) -> bool:
        """Take the store's breakers that changed after this process last changed its
        own: another process (or a resumption) closed or opened them since. The
        counts that open a closed breaker stay this process's own. True if one that
        was taken over is closed (its endpoint's deliveries may go again)."""
        closed = False
        for endpoint_id, (breaker, changed_at) in stored.items():
            mine = self._breakers.get(endpoint_id, Breaker())
            if _same_period(mine, breaker):
                continue  # this process's own change, or one it already knows
            known = self._changed.get(endpoint_id)
            if known is None or changed_at > known:
                self._breakers[endpoint_id] = breaker
                self._changed[endpoint_id] = changed_at
                closed = closed or breaker.state is CircuitState.CLOSED
        return closed

    def room(self, endpoint_id: str, busy: int) -> tuple[int, datetime | None]:
        """How many deliveries the endpoint's breaker lets the dispatcher claim now,
        with ``busy`` of them claimed or in flight: any while it is closed, none while
        it is open, one (the probe) once the cool-down has passed. An endpoint behind
        an open breaker gets no attempts, so its deliveries wait as they are,
        spending none of their retries. Second: when a still-open breaker lets its
        probe go (to wake up for), else None."""
        breaker = self._breakers.get(endpoint_id)
        if breaker is None or breaker.state is CircuitState.CLOSED:
            return _CLOSED_ROOM
        policy = self._policy_of(endpoint_id)
        allowed, _ = breaker.allows(policy, self._clock.now())
        if not allowed:
            return 0, breaker.retry_at(policy)
        return (0 if busy else 1), None

    def lets_one_go(self, endpoint_id: str) -> bool:
        """Whether one more attempt may start now (a half-open breaker's probe is
        taken by the first that asks)."""
        breaker = self._breakers.get(endpoint_id)
        if breaker is None or breaker.state is CircuitState.CLOSED:
            return True
        policy = self._policy_of(endpoint_id)
        allowed, self._breakers[endpoint_id] = breaker.allows(policy, self._clock.now())
        return allowed

    def record(self, endpoint_id: str, outcome: Outcome, now: datetime) -> Breaker | None:
        """Feed an attempt's outcome to its endpoint's breaker; the breaker if its state
        changed (the result writes it to the store). An answer, even a refusal for
        good (an SMTP 5xx for one recipient), is a server that is up; a failure
        status, a timeout or a refused connection is not; an address the guard
        refused or an email that could not be built says nothing."""
        if outcome.error is not None and outcome.error.says_nothing_of_the_receiver:
            return None
        policy = self._policy_of(endpoint_id)
        before = self._breakers.get(endpoint_id, Breaker())
        after = before.record(policy, outcome.succeeded or outcome.permanent, now)
        self._breakers[endpoint_id] = after
        if after.state is before.state:
            return None
        self._changed[endpoint_id] = now
        if after.state is CircuitState.OPEN:
            log.warning("breaker_opened", endpoint_id=endpoint_id, retry_at=after.retry_at())
        elif after.state is CircuitState.CLOSED:
            log.info("breaker_closed", endpoint_id=endpoint_id)
        return after

    def retry_at(self, endpoint_id: str) -> datetime | None:
        """When the endpoint's open breaker lets its probe go, under its policy."""
        breaker = self._breakers.get(endpoint_id)
        return None if breaker is None else breaker.retry_at(self._policy_of(endpoint_id))

    def next_probe_in(self, now: datetime) -> float | None:
        """Seconds until the first breaker still waiting lets its probe go (None: none
        waits). One whose wait is over lets its probe go with the next claim that
        finds work for it: only one still waiting needs waking up for."""
        soonest: float | None = None
        for endpoint_id, breaker in self._breakers.items():
            retry_at = breaker.retry_at(self._policy_of(endpoint_id))
            if retry_at is not None and retry_at > now:
                wait = (retry_at - now).total_seconds()
                soonest = wait if soonest is None else min(soonest, wait)
        return soonest


def _same_period(a: Breaker, b: Breaker) -> bool:
    """Whether two breakers are in the same closed or open period (half-open is part
    of the open period it ends)."""
    closed = CircuitState.CLOSED
    return (a.state is closed) == (b.state is closed) and a.opened_at == b.opened_at
