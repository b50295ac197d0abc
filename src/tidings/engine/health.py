"""The health monitor: alarms, owner notices, suspension and resumption.

Every ``TIDINGS_HEALTH_INTERVAL`` it reads each webhook endpoint's per-minute
results from the store and asks :func:`~tidings.domain.alarms.assess` what
they mean under the endpoint's policy:

* a **warning** sends the owner a notice (and publishes ``endpoint.warning``),
  at most once per endpoint URL per :data:`NOTICE_EVERY`;
* a **critical** alarm suspends the endpoint (policy ``suspend: auto``), which
  sends a ``suspended`` notice, or (``alert_only``) sends a ``critical``
  notice, at most once per URL per :data:`NOTICE_EVERY`.

It also probes the endpoints it suspended itself whose policy has
``auto_resume`` (a signed ``{"type":"tidings.health_check"}``, answered 2xx
within :data:`PROBE_TIMEOUT_S`), resumes those that answer (an endpoint
suspended by hand waits for a hand to resume it), lets held deliveries
older than ``TIDINGS_HELD_RETENTION`` die as ``expired`` (counted), and
forgets per-minute results older than any window.

Suspending and resuming by hand (the API) go through :meth:`suspend` and
:meth:`resume` too, so every suspension and resumption sends its notice.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import orjson
import structlog

from tidings import ids
from tidings.channels.webhook import WebhookRequest, WebhookTransport
from tidings.clock import Clock
from tidings.config import Settings
from tidings.domain.alarms import DEFAULT, MAX_WINDOW_S, Assessment, assess
from tidings.domain.models import Endpoint, EndpointKind, Suspension
from tidings.domain.notices import Facts, NoticeKind
from tidings.domain.retry import DeadReason
from tidings.email.notices import LAST_ERRORS, notice
from tidings.events import Bus, DeliveriesEnded, HeldCounted, NoticeSent
from tidings.exceptions import Conflict, NotFound
from tidings.store.ports import Store

log = structlog.get_logger(__name__)

NOTICE_EVERY = timedelta(hours=24)
PROBE_TIMEOUT_S = 2.0
HEALTH_CHECK_BODY = orjson.dumps({"type": "tidings.health_check"}).decode()
BY_TIDINGS = "tidings"
PRUNE_EVERY = timedelta(hours=1)


@dataclass(slots=True)
class _Probing:
    """When a suspended endpoint is probed next, and the wait before it (doubled after
    each failed probe, up to the breaker's longest cool-down)."""

    at: datetime
    wait: timedelta


class HealthMonitor:
    def __init__(
        self,
        store: Store,
        channel: WebhookTransport,
        events: Bus,
        clock: Clock,
        settings: Settings,
    ) -> None:
        self._store = store
        self._channel = channel
        self._events = events
        self._clock = clock
        self._settings = settings
        self._probing: dict[str, _Probing] = {}
        # (endpoint, URL, kind) -> when its last deduplicated notice went: a warning that
        # lasts is checked against this, not the store, every round.
        self._noticed: dict[tuple[str, str, NoticeKind], datetime | None] = {}
        self._pruned_at: datetime | None = None

    # the periodic evaluation ---------------------------------------------------------

    async def evaluate(self) -> None:
        """One round: alarms, auto-resumption probes, held retention, housekeeping."""
        now = self._clock.now()
        active = [e for e in await self._store.active_endpoints() if e.kind is EndpointKind.WEBHOOK]
        lookback = max((e.policy.lookback for e in active), default=DEFAULT.lookback)
        minutes = await self._store.endpoint_minutes(now - lookback)
        for endpoint in active:
            found = minutes.get(endpoint.id)
            if found:
                await self._act(endpoint, assess(endpoint.policy, found, now), now)
        suspended = await self._store.suspended_endpoints()
        await self._probe(suspended, now)
        await self._expire_held(now)
        held = await self._store.held_counts()
        self._events.emit(HeldCounted(held, frozenset(e.id for e in suspended)))
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY:
            await self._store.prune_minutes(now - timedelta(seconds=MAX_WINDOW_S) - PRUNE_EVERY)
            self._pruned_at = now

    async def _act(self, endpoint: Endpoint, verdict: Assessment, now: datetime) -> None:
        if verdict.warning and await self._may_notify(NoticeKind.WARNING, endpoint, now):
            facts = await self._facts(endpoint, verdict, now)
            await self._notify(NoticeKind.WARNING, endpoint, facts, now, dedupe=True)
        if not verdict.critical:
            return
        if endpoint.policy.suspend == "auto":
            with contextlib.suppress(Conflict, NotFound):  # suspended or deleted meanwhile
                await self.suspend(
                    endpoint, f"critical alarm: {verdict.reason}", BY_TIDINGS, verdict
                )
        elif await self._may_notify(NoticeKind.CRITICAL, endpoint, now):
            facts = await self._facts(endpoint, verdict, now)
            await self._notify(NoticeKind.CRITICAL, endpoint, facts, now, dedupe=True)

    async def _may_notify(self, kind: NoticeKind, endpoint: Endpoint, now: datetime) -> bool:
        """Whether no notice of ``kind`` about the endpoint's URL went out within
        :data:`NOTICE_EVERY` (as far as this process knows: the notice's own
        transaction checks again)."""
        key = (endpoint.id, endpoint.url, kind)
        if key not in self._noticed:
            self._noticed[key] = await self._store.last_notice_at(*key)
        last = self._noticed[key]
        return last is None or last <= now - NOTICE_EVERY

    async def _facts(
        self, endpoint: Endpoint, verdict: Assessment | None, now: datetime, held: int = 0
    ) -> Facts:
        """What a notice reports: ``verdict``'s counts (assessed now if not given), the
        last errors, and ``held``."""
        since = now - endpoint.policy.lookback
        errors = await self._store.last_errors(endpoint.id, since, LAST_ERRORS)
        if verdict is None:
            minutes = await self._store.endpoint_minutes(since)
            verdict = assess(endpoint.policy, minutes.get(endpoint.id, []), now)
        return Facts(
            reason=verdict.reason,
            failed_attempts=verdict.failed_attempts,
            dead_deliveries=verdict.dead_deliveries,
            failing_since=verdict.failing_since,
            last_errors=errors,
            held=held,
        )

    async def _notify(
        self, kind: NoticeKind, endpoint: Endpoint, facts: Facts, now: datetime, *, dedupe: bool
    ) -> bool:
        """Send the owner the notice of ``kind`` and publish its event; with ``dedupe``,
        not if one was sent for the endpoint's URL within :data:`NOTICE_EVERY`."""
        tenant = await self._store.get_tenant(endpoint.tenant_id)
        if tenant is None:
            return False
        record, published = notice(kind, tenant, endpoint, facts, now, self._settings.api_url)
        since = now - NOTICE_EVERY if dedupe else None
        published_now = await self._store.publish_notice(record, published, since)
        self._noticed.pop((endpoint.id, endpoint.url, kind), None)  # read it again next time
        if not published_now:
            return False
        log.warning("endpoint_notice", kind=kind, endpoint_id=endpoint.id, reason=facts.reason)
        # The email (and the event's deliveries) are due now, and the email may have made
        # the tenant's email lane: the store told the dispatcher so ("endpoints").
        self._events.emit(NoticeSent(kind, endpoint.id))
        return True

    # suspension and resumption -------------------------------------------------------

    async def suspend(
        self, endpoint: Endpoint, reason: str, by: str, verdict: Assessment | None = None
    ) -> Suspension:
        """Suspend ``endpoint``: hold its deliveries, tell its owner (``suspended``).
        Raises :class:`~tidings.exceptions.Conflict` unless it is active."""
        now = self._clock.now()
        done = await self._store.suspend_endpoint(endpoint.tenant_id, endpoint.id, reason, by, now)
        if done is None:
            raise NotFound(f"no endpoint {endpoint.id!r}")
        suspension, held = done
        log.warning("endpoint_suspended", endpoint_id=endpoint.id, reason=reason, by=by, held=held)
        policy = endpoint.policy
        self._probing[endpoint.id] = _Probing(
            now + timedelta(seconds=policy.breaker_cool_down_s),
            timedelta(seconds=policy.breaker_cool_down_s),
        )
        facts = await self._facts(endpoint, verdict, now, held)
        facts = replace(facts, reason=reason, by=by)
        await self._notify(NoticeKind.SUSPENDED, endpoint, facts, now, dedupe=False)
        return suspension

    async def resume(self, endpoint: Endpoint, by: str) -> tuple[Suspension, int]:
        """Resume ``endpoint``: its held deliveries drain, paced; tell its owner
        (``resumed``). Raises :class:`~tidings.exceptions.Conflict` unless it is
        suspended."""
        now = self._clock.now()
        # The outage's counts, read before the resumption clears them.
        before = await self._facts(endpoint, None, now)
        done = await self._store.resume_endpoint(endpoint.tenant_id, endpoint.id, by, now)
        if done is None:
            raise NotFound(f"no endpoint {endpoint.id!r}")
        suspension, drained = done
        log.info("endpoint_resumed", endpoint_id=endpoint.id, by=by, drained=drained)
        self._probing.pop(endpoint.id, None)
        facts = replace(before, reason=f"resumed by {by}", held=drained, drained=drained, by=by)
        await self._notify(NoticeKind.RESUMED, endpoint, facts, now, dedupe=False)
        return suspension, drained

    async def _probe(self, suspended: list[Endpoint], now: datetime) -> None:
        """Probe the suspended endpoints that may resume on their own and are due: those
        with ``auto_resume`` that tidings suspended, not a person."""
        candidates = [
            e for e in suspended if e.policy.auto_resume and e.kind is EndpointKind.WEBHOOK
        ]
        health = await self._store.endpoint_health([e.id for e in candidates])
        for endpoint in candidates:
            history = health[endpoint.id].suspensions  # newest first: the open one
            if not history or history[0].suspended_by != BY_TIDINGS:
                continue
            probing = self._probing.get(endpoint.id)
            if probing is None:  # suspended before this process led: from its suspension
                first = timedelta(seconds=endpoint.policy.breaker_cool_down_s)
                probing = self._probing[endpoint.id] = _Probing(
                    history[0].suspended_at + first, first
                )
            if now < probing.at:
                continue
            if await self._healthy(endpoint, now):
                with contextlib.suppress(Conflict, NotFound):  # resumed or deleted meanwhile
                    await self.resume(endpoint, f"{BY_TIDINGS}: the health check passed")
                continue
            longest = timedelta(seconds=endpoint.policy.breaker_max_cool_down_s)
            probing.wait = min(probing.wait * 2, longest)
            probing.at = now + probing.wait

    async def _healthy(self, endpoint: Endpoint, now: datetime) -> bool:
        """Whether the endpoint answers a signed health check with a 2xx in time."""
        request = WebhookRequest(
            endpoint.url,
            endpoint.signing_secrets(now),
            ids.new_id(ids.HEALTH_CHECK),
            HEALTH_CHECK_BODY,
        )
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                sent = await self._channel.send(request, now)
        except TimeoutError:
            log.info("health_check", endpoint_id=endpoint.id, result="timeout")
            return False
        log.info("health_check", endpoint_id=endpoint.id, result=sent.outcome.summary)
        return sent.outcome.succeeded

    async def _expire_held(self, now: datetime) -> None:
        retention = self._settings.held_retention
        reason = DeadReason.EXPIRED.because(f"held for longer than {_days(retention)}")
        expired = await self._store.expire_held(now - retention, reason, now)
        if expired:
            log.warning("held_deliveries_expired", count=expired)
            self._events.emit(DeliveriesEnded(DeadReason.EXPIRED, expired))


def _days(span: timedelta) -> str:
    days = span / timedelta(days=1)
    return f"{days:g} days" if days >= 1 else f"{span.total_seconds():g} s"
