"""The dispatcher: claims due deliveries fairly, sends them, writes results back.

Each round it asks the store for due deliveries *per endpoint*, as many as
fill that endpoint's window (``max_in_flight`` in flight plus as many ready to
go, and no more than its rate limit allows), within the global cap, starting
from a rotating endpoint so no endpoint is always first. A backlog on one
endpoint therefore never delays another's next delivery, and a hung receiver
holds only its own slots. A freed slot is refilled from the ready queue at
once, without waiting for the store.

A slot is released only after the attempt's result is committed, so after a
crash at most the in-flight deliveries are sent again. Claims are leased: a
crashed process's claimed deliveries return to pending when the lease ends,
and a stopping one hands back those it has not started.

The dispatcher sleeps until it is woken (new work, a freed slot, an endpoint
change) or until the next retry or lease falls due; there is no polling delay.
It reads that time from the store only when it does not know it: its own
writes (a retry scheduled, a lease left to lapse) only move it earlier, and
work that is due at once (new messages, replays) wakes it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import orjson
import structlog

from tidings.channels.webhook import Channel, Sent, WebhookRequest
from tidings.clock import Clock
from tidings.config import Settings
from tidings.domain.alarms import DEFAULT as DEFAULT_POLICY
from tidings.domain.circuit import Breaker, BreakerPolicy, CircuitState
from tidings.domain.models import (
    Attempt,
    AttemptResult,
    Claimed,
    DeliveryState,
    EmailOutcome,
    Endpoint,
    EndpointKind,
    NewMessage,
)
from tidings.domain.outcome import Outcome
from tidings.domain.ratelimit import TokenBucket
from tidings.domain.retry import DEFAULT_SCHEDULE, Decision, Verdict, decide
from tidings.email.notices import BUILTIN_TEMPLATES
from tidings.email.sending import Choice, EmailSender
from tidings.engine.batcher import Batcher
from tidings.ids import ATTEMPT, new_id
from tidings.metrics import Metrics
from tidings.store.ports import Store

log = structlog.get_logger(__name__)

ENDPOINT_REFRESH_S = 1.0
IDLE_WAKEUP_S = 5.0  # a safety net: re-read the store at least this often when idle
# How soon to claim again when the store held an endpoint back at its max_in_flight
# while its deliveries wait: other workers' attempts end unannounced.
CAPPED_RETRY_S = 0.05

_STATE_OF = {
    Verdict.SUCCEEDED: DeliveryState.SUCCEEDED,
    Verdict.RETRY: DeliveryState.PENDING,
    Verdict.DEAD: DeliveryState.DEAD,
}


class Dispatcher:
    def __init__(
        self,
        store: Store,
        channel: Channel,
        settings: Settings,
        metrics: Metrics,
        clock: Clock,
        rng: random.Random | None = None,
        emails: EmailSender | None = None,
    ) -> None:
        self._store = store
        self._channel = channel
        self._emails = emails
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._wakeup = asyncio.Event()
        self._endpoints: dict[str, Endpoint] = {}
        self._endpoints_read_at = -1e9
        self._in_flight: Counter[str] = Counter()
        self._in_flight_total = 0  # the sum of _in_flight, kept rather than summed per start
        self._ready: dict[str, deque[Claimed]] = defaultdict(deque)
        self._buckets: dict[str, TokenBucket] = {}
        self._throttled: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rotation = itertools.count()
        self._breakers: dict[str, Breaker] = {}
        # When this process last changed each breaker: a later change in the store is
        # another process's (or a resumption's), and is taken over.
        self._breaker_changed: dict[str, datetime] = {}
        self._handed_back: list[Claimed] = []  # claimed, not to be sent: back to pending
        self._capped = False  # the last claim was held back by a store-wide cap
        # The earliest future time a retry falls due or a lease runs out, when known.
        self._due: datetime | None = None
        self._due_known = False
        self.results: Batcher[AttemptResult, None] = Batcher("results", self._write_results)

    # signals -------------------------------------------------------------------------

    def wake(self, endpoint_ids: Iterable[str] = ()) -> None:
        """New or changed work: look again now (and read the endpoints again if
        ``endpoint_ids`` names one this dispatcher has not seen yet, such as a
        tenant's email lane made by its first email)."""
        for endpoint_id in endpoint_ids:
            endpoint = self._endpoints.get(endpoint_id)
            if endpoint is None:
                self._endpoints_read_at = -1e9
            elif endpoint.retry_schedule and endpoint.retry_schedule[0] > 0:
                # Its schedule delays even the first attempt: wake up for that.
                first = timedelta(seconds=endpoint.retry_schedule[0])
                self._expect(self._clock.now() + first)
        self._wakeup.set()

    def endpoints_changed(self) -> None:
        self._endpoints_read_at = -1e9
        self.wake()

    def schedule_changed(self) -> None:
        """Deliveries were made due at times this process did not write (a resumed
        endpoint's drain): read the endpoints and the next due time again."""
        self._due_known = False
        self.endpoints_changed()

    # the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and send forever; meant to run as a supervised task."""
        while True:
            self._wakeup.clear()
            await self._refresh_endpoints()
            claimed = await self._claim_round()
            if not claimed:
                await self._sleep()

    async def drain(self, grace_s: float) -> None:
        """Hand back claimed deliveries not yet started, wait up to ``grace_s``
        seconds for in-flight attempts, then flush results.

        Attempts still running after that are cancelled; their leases run out and
        the next process sends them again.
        """
        waiting = [job for queue in self._ready.values() for job in queue] + self._handed_back
        self._ready.clear()
        self._handed_back = []
        if waiting:
            await self._store.release(waiting, self._clock.now())
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace_s)
        await self.results.drain()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _refresh_endpoints(self) -> None:
        if time.monotonic() - self._endpoints_read_at < ENDPOINT_REFRESH_S:
            return
        self._endpoints = {ep.id: ep for ep in await self._store.active_endpoints()}
        self._endpoints_read_at = time.monotonic()
        self._adopt_breakers(await self._store.breakers())
        gone = [
            job for e in list(self._ready) if e not in self._endpoints for job in self._ready.pop(e)
        ]
        if gone:
            await self._store.release(gone, self._clock.now())

    def _slots(self, now: float) -> dict[str, int]:
        """How many deliveries to claim for each endpoint, within the global cap.

        An endpoint holds up to twice its ``max_in_flight``: that many in flight
        and as many claimed and ready to go, so a freed slot is refilled at once
        and claims come in batches. It claims again when its ready queue is half
        empty; a rate-limited endpoint claims no more than its tokens allow.
        """
        held = self._in_flight_total + sum(len(q) for q in self._ready.values())
        free_total = 2 * self._settings.max_in_flight - held
        endpoint_ids = list(self._endpoints)
        if not endpoint_ids or free_total <= 0:
            return {}
        start = next(self._rotation) % len(endpoint_ids)
        slots: dict[str, int] = {}
        for endpoint_id in endpoint_ids[start:] + endpoint_ids[:start]:
            endpoint = self._endpoints[endpoint_id]
            ready = len(self._ready[endpoint_id])
            if ready > endpoint.max_in_flight // 2:
                continue
            take = 2 * endpoint.max_in_flight - self._in_flight[endpoint_id] - ready
            take = min(take, self._breaker_room(endpoint_id))
            bucket = self._bucket(endpoint, now)
            if bucket:
                take = min(take, bucket.available(now) - ready)
            take = min(take, free_total)
            if take > 0:
                slots[endpoint_id] = take
                free_total -= take
        return slots

    def _adopt_breakers(self, stored: dict[str, tuple[Breaker, datetime]]) -> None:
        """Take the store's breakers that changed after this process last changed its
        own: another process (or a resumption) closed or opened them since. The
        counts that open a closed breaker stay this process's own."""
        for endpoint_id, (breaker, changed_at) in stored.items():
            mine = self._breakers.get(endpoint_id, Breaker())
            if _same_period(mine, breaker):
                continue  # this process's own change, or one it already knows
            known = self._breaker_changed.get(endpoint_id)
            if known is None or changed_at > known:
                self._breakers[endpoint_id] = breaker
                self._breaker_changed[endpoint_id] = changed_at
                if breaker.state is CircuitState.CLOSED:
                    self.wake()

    def _breaker_policy(self, endpoint_id: str) -> BreakerPolicy:
        endpoint = self._endpoints.get(endpoint_id)
        return (endpoint.policy if endpoint else DEFAULT_POLICY).breaker

    def _breaker_room(self, endpoint_id: str) -> int:
        """How many deliveries the endpoint's breaker lets the dispatcher claim now:
        any while it is closed, none while it is open, one (the probe) once the
        cool-down has passed. An endpoint behind an open breaker gets no attempts,
        so its deliveries wait as they are, spending none of their retries."""
        breaker = self._breakers.get(endpoint_id)
        if breaker is None or breaker.state is CircuitState.CLOSED:
            return 1 << 30
        busy = self._in_flight[endpoint_id] + len(self._ready[endpoint_id])
        policy = self._breaker_policy(endpoint_id)
        allowed, _ = breaker.allows(policy, self._clock.now())
        if not allowed:
            self._expect(breaker.retry_at(policy))
        return 1 if allowed and not busy else 0

    def _start(self, endpoint_id: str) -> None:
        """Start ready deliveries of ``endpoint_id`` while it has free slots and tokens."""
        endpoint = self._endpoints.get(endpoint_id)
        queue = self._ready.get(endpoint_id)
        if endpoint is None or not queue:
            return
        tick = time.monotonic()
        bucket = self._bucket(endpoint, tick)
        # A job must be able to finish inside its lease, or a claim after the lease
        # ends could send it a second time: older ones are left to lapse.
        fresh_until = self._clock.now() + self._settings.request_timeout
        while queue and self._in_flight[endpoint_id] < endpoint.max_in_flight:
            if self._in_flight_total >= self._settings.max_in_flight:
                return
            if bucket and bucket.available(tick) < 1:
                self._throttled.add(endpoint_id)
                return
            if not self._breaker_lets_one_go(endpoint_id):
                # Claimed before the breaker opened: back to pending, as they were.
                self._handed_back.extend(queue)
                queue.clear()
                self.wake()
                return
            job = queue.popleft()
            if job.lease_until < fresh_until:
                self._expect(job.lease_until)
                continue
            if bucket:
                bucket.take(1, tick)
            self._in_flight[endpoint_id] += 1
            self._in_flight_total += 1
            task = asyncio.create_task(self._deliver(job), name=f"deliver {job.delivery_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._throttled.discard(endpoint_id)

    def _breaker_lets_one_go(self, endpoint_id: str) -> bool:
        breaker = self._breakers.get(endpoint_id)
        if breaker is None or breaker.state is CircuitState.CLOSED:
            return True
        policy = self._breaker_policy(endpoint_id)
        allowed, self._breakers[endpoint_id] = breaker.allows(policy, self._clock.now())
        return allowed

    def _bucket(self, endpoint: Endpoint, now: float) -> TokenBucket | None:
        rate = endpoint.rate_limit_per_s
        if not rate:
            return None
        bucket = self._buckets.get(endpoint.id)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[endpoint.id] = TokenBucket.full(rate, now)
        return bucket

    async def _claim_round(self) -> int:
        if self._handed_back:
            waiting, self._handed_back = self._handed_back, []
            try:
                await self._store.release(waiting, self._clock.now())
            except BaseException:
                self._handed_back.extend(waiting)  # to be handed back at the next round
                raise
        slots = self._slots(time.monotonic())
        self._capped = False
        if not slots:
            return 0
        now = self._clock.now()
        claimed = await self._store.claim(slots, now, now + self._settings.lease)
        self._capped = bool(claimed.capped)
        for job in claimed:
            self._ready[job.endpoint_id].append(job)
        for endpoint_id in {job.endpoint_id for job in claimed}:
            self._start(endpoint_id)
        return len(claimed)

    def _expect(self, when: datetime | None) -> None:
        """Something falls due at ``when``: wake up by then."""
        if when is not None and self._due_known and (self._due is None or when < self._due):
            self._due = when

    async def _sleep(self) -> None:
        now = self._clock.now()
        timeout = CAPPED_RETRY_S if self._capped else IDLE_WAKEUP_S
        if self._throttled:
            tick = time.monotonic()
            timeout = min(timeout, *(self._buckets[e].wait(tick) for e in self._throttled))
            for endpoint_id in list(self._throttled):
                self._start(endpoint_id)
        if not self._due_known:
            self._due = await self._store.next_wakeup(now)
            self._due_known = True
        due = self._due
        if due is not None:
            timeout = min(timeout, max((due - now).total_seconds(), 0.0))
        for endpoint_id, breaker in self._breakers.items():
            # A breaker whose wait is over lets its probe go with the next claim that
            # finds work for it; only one still waiting needs waking up for.
            retry_at = breaker.retry_at(self._breaker_policy(endpoint_id))
            if retry_at is not None and retry_at > now:
                timeout = min(timeout, (retry_at - now).total_seconds())
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the wait ends, and shutdown would hang.
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
        except TimeoutError:
            # Due, or idle for a while: read the time from the store again (the
            # safety net against anything this process did not see).
            self._due_known = False
            if due is not None and due <= self._clock.now():
                await self._store.reclaim_expired_leases(self._clock.now())

    # one delivery ----------------------------------------------------------------------

    async def _deliver(self, job: Claimed) -> None:
        try:
            endpoint = self._endpoints[job.endpoint_id]
            result = await self._attempt(endpoint, job)
            await self.results.submit(result)
        except Exception:
            # The lease runs out and the delivery is claimed again: nothing is lost.
            log.exception("delivery_failed_unrecorded", delivery_id=job.delivery_id)
            self._expect(job.lease_until)
        finally:
            self._in_flight[job.endpoint_id] -= 1
            self._in_flight_total -= 1
            self._start(job.endpoint_id)
            self.wake()

    async def _send(
        self, endpoint: Endpoint, job: Claimed, started_at: datetime
    ) -> tuple[Sent, Choice | None]:
        """One attempt, bounded by the request timeout whatever it does: a job is
        started only with that much of its lease left (see ``_start``), so an attempt
        that ran on could be claimed and sent again while it is still running. An
        email's attempt (lookup, SMTP pool, SMTP commands) has no other such bound."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.request_timeout.total_seconds()):
                if endpoint.kind is EndpointKind.EMAIL:
                    assert self._emails is not None, "an email lane needs the email sender"
                    return await self._emails.send(endpoint, job, started_at)
                request = WebhookRequest.of(endpoint, job, started_at)
                return await self._channel.send(request, started_at), None
        except TimeoutError:
            elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
            outcome = Outcome(None, "timeout", detail="the attempt outlasted the request timeout")
            choice = Choice(None, "not sent: the attempt timed out", None)
            return Sent(outcome, elapsed_ms, None), (
                choice if endpoint.kind is EndpointKind.EMAIL else None
            )

    async def _attempt(self, endpoint: Endpoint, job: Claimed) -> AttemptResult:
        started_at = self._clock.now()
        sent, choice = await self._send(endpoint, job, started_at)
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
        self._metrics.attempted(
            endpoint.id, sent.outcome, decision, sent.duration_ms, job.message_created_at, now
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
            email=None if choice is None else _email_outcome(endpoint, job, choice, decision, now),
            breaker=breaker,
        )

    def _record_health(self, endpoint_id: str, outcome: Outcome, now: datetime) -> Breaker | None:
        """Feed an attempt's outcome to its endpoint's breaker; the breaker if its state
        changed (the result writes it to the store). An answer, even a refusal for
        good (an SMTP 5xx for one recipient), is a server that is up; a failure
        status, a timeout or a refused connection is not; an address the guard
        refused or an email that could not be built says nothing."""
        if outcome.error in ("blocked", "unsendable", "invalid_message"):
            return None
        policy = self._breaker_policy(endpoint_id)
        before = self._breakers.get(endpoint_id, Breaker())
        after = before.record(policy, outcome.succeeded or outcome.permanent, now)
        self._breakers[endpoint_id] = after
        if after.state is before.state:
            return None
        self._breaker_changed[endpoint_id] = now
        if after.state is CircuitState.OPEN:
            log.warning("breaker_opened", endpoint_id=endpoint_id, retry_at=after.retry_at())
            self._expect(after.retry_at(policy))
            # What waits to be sent to it goes back to pending, as it was.
            self._handed_back.extend(self._ready.pop(endpoint_id, ()))
        elif after.state is CircuitState.CLOSED:
            log.info("breaker_closed", endpoint_id=endpoint_id)
            self.wake()
        return after

    async def _write_results(self, results: Sequence[AttemptResult]) -> list[None]:
        ended = await self._store.record_results(results, self._clock.now())
        for result in results:
            self._expect(result.next_attempt_at)
        if ended:
            self._metrics.ended("disabled", ended)
        gone = {r.endpoint_id for r in results if r.disable_endpoint}
        for endpoint_id in gone:
            # Start nothing more for it; the refresh hands its ready queue back.
            self._endpoints.pop(endpoint_id, None)
        if gone:
            self.endpoints_changed()
        return [None] * len(results)


def _same_period(a: Breaker, b: Breaker) -> bool:
    """Whether two breakers are in the same closed or open period (half-open is part
    of the open period it ends)."""
    closed = CircuitState.CLOSED
    return (a.state is closed) == (b.state is closed) and a.opened_at == b.opened_at


def _email_outcome(
    lane: Endpoint, job: Claimed, choice: Choice, decision: Decision, now: datetime
) -> EmailOutcome:
    """What an email's attempt records, and its status callback once its fate is settled:
    ``email.delivered`` (the SMTP server accepted it) or ``email.failed``."""
    delivered = decision.verdict is Verdict.SUCCEEDED
    callback = None
    request = None if decision.verdict is Verdict.RETRY else orjson.loads(job.payload)
    # tidings' own emails (owner notices) are not the tenant's: no callback for them.
    if request is not None and request["template"] not in BUILTIN_TEMPLATES:
        status = "delivered" if delivered else "failed"
        event = {
            "id": job.message_id,
            "reference": request.get("reference"),
            "to": request["to"],
            "status": status,
            "time": now,
            "variant": choice.variant,
            "reason": decision.reason,
        }
        payload = orjson.dumps(event, option=orjson.OPT_UTC_Z)
        callback = NewMessage(lane.tenant_id, f"email.{status}", payload, None, "")
    return EmailOutcome(
        email_id=job.message_id,
        variant=choice.variant,
        variant_reason=choice.reason,
        subject=choice.subject,
        sent_at=now if delivered else None,
        callback=callback,
    )


def _error_text(outcome: Outcome) -> str | None:
    """What the attempt record keeps of an error: its class and, if known, the detail."""
    if outcome.error is None:
        return None
    return f"{outcome.error}: {outcome.detail}" if outcome.detail else outcome.error


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
