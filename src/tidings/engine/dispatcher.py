"""The dispatcher: claims due deliveries fairly, starts them in slots, writes results back.

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

The rest is not its own: an attempt (through the channel of its endpoint's
kind, judged by the retry policy) is :mod:`tidings.engine.attempt`'s, the
endpoints' circuit breakers are :mod:`tidings.engine.breakers`', and what
happened is said on the event bus (:mod:`tidings.events`) for metrics and
anyone else to hear. It reads one clock: the :class:`~tidings.clock.Clock` it
is given, wall time for what is stored, its monotonic reading for pacing.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

import structlog

from tidings.channels.base import Channel
from tidings.clock import Clock
from tidings.config import Settings
from tidings.domain.alarms import DEFAULT as DEFAULT_POLICY
from tidings.domain.circuit import Breaker, BreakerPolicy, CircuitState
from tidings.domain.models import AttemptResult, Claimed, Endpoint, EndpointKind
from tidings.domain.outcome import Outcome
from tidings.domain.ratelimit import TokenBucket
from tidings.domain.retry import DeadReason
from tidings.engine.attempt import Attempts
from tidings.engine.batcher import Batcher
from tidings.engine.breakers import Breakers
from tidings.events import Bus, DeliveriesEnded
from tidings.store.ports import Store

log = structlog.get_logger(__name__)

ENDPOINT_REFRESH_S = 1.0
IDLE_WAKEUP_S = 5.0  # a safety net: re-read the store at least this often when idle
# How soon to claim again when the store held an endpoint back at its max_in_flight
# while its deliveries wait: other workers' attempts end unannounced.
CAPPED_RETRY_S = 0.05


class Dispatcher:
    def __init__(
        self,
        store: Store,
        channels: Mapping[EndpointKind, Channel],
        settings: Settings,
        events: Bus,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._events = events
        self._clock = clock
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
        self._breakers = Breakers(clock, self._breaker_policy)
        self._attempts = Attempts(
            channels, settings, clock, events, rng or random.Random(), self._record_health
        )
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
        if self._clock.monotonic() - self._endpoints_read_at < ENDPOINT_REFRESH_S:
            return
        self._endpoints = {ep.id: ep for ep in await self._store.active_endpoints()}
        self._endpoints_read_at = self._clock.monotonic()
        if self._breakers.adopt(await self._store.breakers()):
            self.wake()
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
            in_flight = self._in_flight[endpoint_id]
            take = 2 * endpoint.max_in_flight - in_flight - ready
            room, probe_at = self._breakers.room(endpoint_id, busy=in_flight + ready)
            if probe_at is not None:
                self._expect(probe_at)
            take = min(take, room)
            bucket = self._bucket(endpoint, now)
            if bucket:
                take = min(take, bucket.available(now) - ready)
            take = min(take, free_total)
            if take > 0:
                slots[endpoint_id] = take
                free_total -= take
        return slots

    def _breaker_policy(self, endpoint_id: str) -> BreakerPolicy:
        endpoint = self._endpoints.get(endpoint_id)
        return (endpoint.policy if endpoint else DEFAULT_POLICY).breaker

    def _start(self, endpoint_id: str) -> None:
        """Start ready deliveries of ``endpoint_id`` while it has free slots and tokens."""
        endpoint = self._endpoints.get(endpoint_id)
        queue = self._ready.get(endpoint_id)
        if endpoint is None or not queue:
            return
        tick = self._clock.monotonic()
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
            if not self._breakers.lets_one_go(endpoint_id):
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
        slots = self._slots(self._clock.monotonic())
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
            tick = self._clock.monotonic()
            timeout = min(timeout, *(self._buckets[e].wait(tick) for e in self._throttled))
            for endpoint_id in list(self._throttled):
                self._start(endpoint_id)
        if not self._due_known:
            self._due = await self._store.next_wakeup(now)
            self._due_known = True
        due = self._due
        if due is not None:
            timeout = min(timeout, max((due - now).total_seconds(), 0.0))
        probe_in = self._breakers.next_probe_in(now)
        if probe_in is not None:
            timeout = min(timeout, probe_in)
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
            result = await self._attempts.run(endpoint, job)
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

    def _record_health(self, endpoint_id: str, outcome: Outcome, now: datetime) -> Breaker | None:
        """Feed an attempt's outcome to its endpoint's breaker (see
        :meth:`Breakers.record`) and act on a change: an opened breaker's endpoint
        gets nothing more until its probe, a closed one's gets going again."""
        after = self._breakers.record(endpoint_id, outcome, now)
        if after is None:
            return None
        if after.state is CircuitState.OPEN:
            self._expect(self._breakers.retry_at(endpoint_id))
            # What waits to be sent to it goes back to pending, as it was.
            self._handed_back.extend(self._ready.pop(endpoint_id, ()))
        elif after.state is CircuitState.CLOSED:
            self.wake()
        return after

    async def _write_results(self, results: Sequence[AttemptResult]) -> list[None]:
        ended = await self._store.record_results(results, self._clock.now())
        for result in results:
            self._expect(result.next_attempt_at)
        if ended:
            self._events.emit(DeliveriesEnded(DeadReason.DISABLED, ended))
        gone = {r.endpoint_id for r in results if r.disable_endpoint}
        for endpoint_id in gone:
            # Start nothing more for it; the refresh hands its ready queue back.
            self._endpoints.pop(endpoint_id, None)
        if gone:
            self.endpoints_changed()
        return [None] * len(results)
