"""(e) emails/s through the whole pipeline: ``POST /v1/emails``, the email lane, SMTP.

tidings sends to a local SMTP sink: aiosmtpd in a thread of the bench process,
on 127.0.0.1, whose handler counts each message at DATA and answers ``250``.
One tenant, one template with a lookup, and ``--messages`` emails, but at most
``EMAIL_CAP`` (5,000): an email costs far more CPU than a webhook, and the run is
kept short. There is no rate limit to hold the email lane back, so this is
(a)'s "delivery while ingesting": the emails are pre-loaded with
``--concurrency`` concurrent POSTs while the lane delivers them, and the rate
is taken from ``tidings_deliveries_total{outcome="succeeded"}`` between the
first and the last delivered email.

Two variants, each on a fresh tidings:

* **e1**: the template's lookup goes to a healthy lookup server (aiohttp, in
  the bench process) that answers ``{"subscribed": true}`` at once.
* **e2**: the same template with the lookup server hung (it accepts and never
  answers); the lookup's ``timeout_ms`` is 2000. ``WARM_UP`` emails are sent
  first and delivered (each waits out its timeout, and five failures open the
  template's circuit breaker for 30 s), so the measured emails go without a
  lookup.

e1 gets the same warm-up, so both start with a warm SMTP pool. Target: e2 /
e1 >= 80 % (with the lookup hung, once the breaker is open, emails go at least
80 % as fast as with it healthy).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

from bench import load
from bench.context import Context
from bench.measure import Point, Poller, per_second, rates
from bench.receivers import HungReceiver, free_port
from bench.results import Row, verdict
from bench.server import DEAD, RETRIED, SUCCEEDED, TidingsServer

EMAIL_CAP = 5_000  # emails per run at most, whatever --messages says
WARM_UP = 10  # emails sent and delivered before the measurement
WARM_UP_WITHIN_S = 30.0  # e2's warm-up waits out one 2 s lookup timeout
TIMEOUT_MS = 2000  # the lookup's timeout
TARGET = 0.80
TEMPLATE_NAME = "welcome"
_LOOKUP = re.compile(r'^tidings_lookup_total\{.*outcome="([^"]*)".*reason="([^"]*)"')


def template(lookup_base: str) -> dict[str, Any]:
    """A welcome email whose lookup (``/subscribed`` of the recipient) picks a variant."""
    return {
        "name": TEMPLATE_NAME,
        "subject": "Welcome, {{ name }}",
        "text": "Hello {{ name }},\n\nthanks for order {{ order }}. It ships tomorrow.\n",
        "html": "<p>Hello {{ name }},</p><p>thanks for order <b>{{ order }}</b>.</p>",
        "lookup": {
            "url": lookup_base + "/subscribed?email={{ to }}",
            "timeout_ms": TIMEOUT_MS,
            "select": "/subscribed",
        },
        "variants": {"true": {"subject": "Welcome back, {{ name }}"}},
    }


def email_body(i: int) -> bytes:
    """The body of ``POST /v1/emails`` number ``i``."""
    return orjson.dumps(
        {
            "to": f"customer{i}@example.com",
            "template": TEMPLATE_NAME,
            "personalisation": {"name": "Jane Doe", "order": f"ord_{i:08d}"},
            "reference": f"bench-{i}",
        }
    )


# the SMTP sink and the lookup server ------------------------------------------------------


class SmtpSink:
    """aiosmtpd on 127.0.0.1, in its own thread of the bench process: counts each
    message at DATA and answers ``250``."""

    def __init__(self) -> None:
        self.received = 0
        self.port = 0
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        self.received += 1
        return "250 2.0.0 OK: counted"

    async def start(self) -> None:
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        await asyncio.to_thread(self._controller.start)  # it waits for its thread to serve

    async def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            await asyncio.to_thread(controller.stop)  # closes its connections, joins its thread


class LookupServer:
    """aiohttp on 127.0.0.1, in the bench's event loop: ``{"subscribed": true}`` at once."""

    ANSWER = b'{"subscribed":true}'

    def __init__(self) -> None:
        self.port = 0
        self.answered = 0
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _subscribed(self, request: web.Request) -> web.StreamResponse:
        self.answered += 1
        return web.Response(body=self.ANSWER, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/subscribed", self._subscribed)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await asyncio.wait_for(runner.cleanup(), 10)


# measuring -------------------------------------------------------------------------------


def lookups(metrics: dict[str, float]) -> dict[str, float]:
    """Lookups so far by outcome (``found``, ``not_found``) or, for errors, by reason."""
    found: dict[str, float] = {}
    for name, value in metrics.items():
        match = _LOOKUP.match(name)
        if match and value:
            key = match.group(2) or match.group(1)
            found[key] = found.get(key, 0.0) + value
    return found


def _since(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


async def _create_template(ctx: Context, server: TidingsServer, key: str, lookup: str) -> None:
    headers = {"authorization": f"Bearer {key}"}
    async with ctx.session.post(
        f"{server.base}/v1/templates", json=template(lookup), headers=headers
    ) as response:
        if response.status != 201:
            raise RuntimeError(f"POST /v1/templates: {response.status} {await response.text()}")


async def _post_emails(
    ctx: Context, server: TidingsServer, key: str, first: int, count: int
) -> load.LoadStats:
    """POST ``count`` emails (numbered from ``first``); every one must be accepted."""
    url = f"{server.base}/v1/emails"
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}

    def request(i: int) -> tuple[str, bytes, dict[str, str]]:
        return url, email_body(first + i), headers

    concurrency = min(ctx.options.concurrency, count)
    async with load.client(concurrency) as session:
        stats = await load.drive(
            session,
            request,
            count=count,
            concurrency=concurrency,
            ok_status=202,
            within_s=60 + count / 20,
        )
    if stats.ok < count:
        raise RuntimeError(f"POST /v1/emails: {stats.ok} of {count} accepted; {stats.errors}")
    return stats


async def _delivered(server: TidingsServer, target: float, within_s: float, what: str) -> None:
    """Wait until the succeeded counter reaches ``target``; a clear error if it does not."""
    poller = Poller(server)
    if not await poller.run(target, within_s):
        metrics = await server.metrics()
        raise RuntimeError(
            f"{what}: {metrics.get(SUCCEEDED, 0.0):.0f} of {target:.0f} emails delivered "
            f"within {within_s:.0f}s (retried {metrics.get(RETRIED, 0.0):.0f}, dead "
            f"{metrics.get(DEAD, 0.0):.0f}); --keep-temp keeps tidings' log"
        )


async def _measure(
    ctx: Context, name: str, lookup: str, sink: SmtpSink
) -> tuple[float, dict[str, Any]]:
    """One variant: a fresh tidings sending to ``sink``, its template's lookup at ``lookup``."""
    count = min(ctx.options.messages, EMAIL_CAP)
    async with ctx.tidings(name, {"TIDINGS_SMTP_URL": sink.url}) as server:
        key = await server.new_tenant()
        await _create_template(ctx, server, key, lookup)
        await ctx.settle()  # before the warm-up: e2's breaker stays open only 30 s
        warm_up_started = time.monotonic()
        await _post_emails(ctx, server, key, 0, WARM_UP)
        await _delivered(server, WARM_UP, WARM_UP_WITHIN_S, f"{name} warm-up")
        warm_up_s = time.monotonic() - warm_up_started

        before = await server.metrics()
        base = before.get(SUCCEEDED, 0.0)
        sink_before = sink.received
        poller = Poller(server)
        cpu = ctx.cpu(server)
        cpu.start()
        started = time.monotonic()
        within_s = 120 + count / 20
        polling = asyncio.create_task(poller.run(base + count, within_s))
        try:
            stats = await _post_emails(ctx, server, key, WARM_UP, count)
            complete = await polling
        finally:
            polling.cancel()
        used = cpu.stop()
        after = await server.metrics()
    if not complete:
        done = after.get(SUCCEEDED, 0.0) - base
        raise RuntimeError(
            f"{name}: {done:.0f} of {count} emails delivered within {within_s:.0f}s "
            f"(retried {after.get(RETRIED, 0.0):.0f}, dead {after.get(DEAD, 0.0):.0f})"
        )
    points = [Point(p.t, p.count - base) for p in poller.points]
    measured = rates(points, count, started, stats.finished)
    detail = {
        "emails": count,
        "warm_up_emails": WARM_UP,
        "warm_up_s": round(warm_up_s, 2),
        "preload_per_s": round(stats.rate),
        "preload_s": round(stats.elapsed, 2),
        "overall_per_s": round(measured.overall),
        "while_ingesting_per_s": None
        if measured.while_ingesting is None
        else round(measured.while_ingesting),
        "after_ingest_per_s": None if measured.drain is None else round(measured.drain),
        "after_ingest_share": round(measured.drain_share, 3),
        "first_delivery_s": round(measured.first_s, 2),
        "last_delivery_s": round(measured.last_s, 2),
        "complete": measured.complete,
        "sink_received": sink.received - sink_before,
        "retried": after.get(RETRIED, 0.0) - before.get(RETRIED, 0.0),
        "dead": after.get(DEAD, 0.0) - before.get(DEAD, 0.0),
        "lookups_in_warm_up": lookups(before),
        "lookups_measured": _since(lookups(after), lookups(before)),
        "cpu_pct_of_one_core": used,
        "per_second": per_second(points, started, count),
    }
    return measured.overall, detail


def _describe(name: str, detail: dict[str, Any]) -> str:
    cpu = detail["cpu_pct_of_one_core"]
    return (
        f"{name}: {detail['emails']} emails, {detail['overall_per_s']}/s first to last "
        f"(while ingesting {detail['while_ingesting_per_s']}/s, after "
        f"{detail['after_ingest_per_s']}/s); pre-load {detail['preload_per_s']}/s; "
        f"sink got {detail['sink_received']}; lookups {detail['lookups_measured']} "
        f"(warm-up {detail['lookups_in_warm_up']}); cpu tidings {cpu['tidings']}, "
        f"senders {cpu['senders']}, bench+sink {cpu['bench']}, others {cpu['others']}"
    )


async def run(ctx: Context) -> list[Row]:
    count = min(ctx.options.messages, EMAIL_CAP)
    if count < ctx.options.messages:
        ctx.results.note(f"(e) sends {count:,} emails per run (capped at {EMAIL_CAP:,})")
    sink, healthy, hung = SmtpSink(), LookupServer(), HungReceiver()
    rows: list[Row] = []
    try:
        await sink.start()
        await healthy.start()
        await hung.start()
        fast, detail = await _measure(ctx, "e1-lookup-healthy", healthy.base, sink)
        detail["lookup_server_answered"] = healthy.answered
        rows.append(Row("e", "e1 lookup healthy", fast, "emails/s", detail=detail))
        ctx.results.add(rows[-1])
        ctx.results.note(_describe("e1", detail))
        hung_base = f"http://127.0.0.1:{hung.port}"
        slow, detail = await _measure(ctx, "e2-lookup-hung", hung_base, sink)
        detail["hung_connections_accepted"] = hung.accepted
        rows.append(Row("e", "e2 lookup hung, breaker open", slow, "emails/s", detail=detail))
        ctx.results.add(rows[-1])
        ctx.results.note(_describe("e2", detail))
    finally:
        await hung.stop()
        await healthy.stop()
        await sink.stop()
    ratio = slow / fast
    rows.append(
        Row(
            "e",
            "e2/e1 lookup hung / healthy",
            100 * ratio,
            "%",
            target=f">= {TARGET:.0%}",
            verdict=verdict(ratio >= TARGET),
        )
    )
    ctx.results.add(rows[-1])
    return rows
