"""(f) a receiver that is down gets a handful of attempts, and the healthy one keeps its pace.

One tenant, two endpoints, each subscribed to its own event type (the filter
is an exact match): ``ok.x`` at nginx, and ``down.x`` at the down receiver, an
aiohttp server in the bench process that answers every request at once with
``503`` and counts it. ``down.x`` has the retry schedule ``SCHEDULE`` (six
attempts in about a minute), so without a breaker its ``DOWN_MESSAGES``
messages would make 6,000 attempts within the run.

Measured as the backlog drain of (a), with the default 10 slots per endpoint:
the endpoints start rate-limited, ``--messages`` healthy messages (at most
``HEALTHY_CAP``) are pre-loaded, both limits are lifted together, and the
succeeded counter is polled until every healthy message is delivered (the
down endpoint never succeeds, so every success is a healthy one). Three runs,
each on a fresh tidings: alone (the healthy endpoint only), beside (the same
healthy messages with the 1,000 down ones interleaved evenly), alone again.
The reference is the mean of the two alone runs, so a drift of the machine's
speed over the scenario cancels out. The beside run goes on for ``WATCH_S``
after the release (all 1,000 were accepted before it), long enough for the
breaker's first two probes (at about 30 s and 90 s), then counts the down
endpoint's deliveries by state through ``GET /v1/deliveries``.

Targets: at most 100 attempts reach the down receiver; the healthy rate beside
it is at least 90 % of its rate alone.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from aiohttp import web

from bench.context import Context
from bench.receivers import free_port
from bench.results import Row, verdict
from bench.scenarios.delivery import HOLD_RATE, backlog_drain, describe_drain
from bench.server import TidingsServer

HEALTHY_EVENT = "ok.x"
DOWN_EVENT = "down.x"
DOWN_MESSAGES = 1_000
HEALTHY_CAP = 20_000  # healthy messages per run at most, whatever --messages says
SCHEDULE = [0, 1, 2, 5, 10, 30]  # six attempts, the last ~48 s (+-20 %) after the first
WATCH_S = 100.0  # the beside run lasts this long after the release
BURST_S = 5.0  # attempts within this of the release count as the breaker's opening burst
ATTEMPTS_TARGET = 100
RATIO_TARGET = 0.90
PAGE = 1000  # deliveries per page of GET /v1/deliveries
MAX_PAGES = 20  # per state: room for 20,000 deliveries, far more than the 1,000
STATES = ("pending", "in_flight", "held", "dead", "succeeded")
FIVE_XX = 'tidings_attempts_total{outcome="failure",status_class="5xx"}'


class DownReceiver:
    """aiohttp on 127.0.0.1, in the bench's event loop: ``503`` at once to every
    request, each counted (and, for the first ``KEEP`` of them, timed)."""

    KEEP = 10_000

    def __init__(self) -> None:
        self.port = 0
        self.received = 0
        self.times: list[float] = []  # time.monotonic() of each request, the first KEEP
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.received += 1
        if len(self.times) < self.KEEP:
            self.times.append(time.monotonic())
        return web.Response(status=503, text="down")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._hook)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await asyncio.wait_for(runner.cleanup(), 10)


def is_down(i: int, total: int) -> bool:
    """Message ``i`` of ``total`` goes to the down endpoint: exactly ``DOWN_MESSAGES``
    of them, spread evenly (one in 21 of 21,000)."""
    return (i + 1) * DOWN_MESSAGES // total > i * DOWN_MESSAGES // total


async def _get(ctx: Context, server: TidingsServer, key: str, path: str) -> Any:
    headers = {"authorization": f"Bearer {key}"}
    async with ctx.session.get(f"{server.base}{path}", headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {await response.text()}")
        return await response.json()


async def _down_deliveries(
    ctx: Context, server: TidingsServer, key: str, endpoint_id: str
) -> dict[str, Any]:
    """The down endpoint's deliveries by state, and the attempts they record."""
    counts: dict[str, int] = {}
    attempts = most = tried = 0
    for state in STATES:
        counts[state] = 0
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            path = f"/v1/deliveries?endpoint_id={endpoint_id}&state={state}&limit={PAGE}"
            page = await _get(ctx, server, key, path + (f"&cursor={cursor}" if cursor else ""))
            for delivery in page["data"]:
                counts[state] += 1
                attempts += delivery["attempts"]
                most = max(most, delivery["attempts"])
                tried += 1 if delivery["attempts"] else 0
            cursor = page["next_cursor"]
            if not cursor:
                break
    return {
        "by_state": counts,
        "total": sum(counts.values()),
        "attempts_recorded": attempts,
        "deliveries_attempted": tried,
        "most_attempts_on_one": most,
    }


async def _watch(
    ctx: Context,
    server: TidingsServer,
    key: str,
    endpoint_id: str,
    down: DownReceiver,
    released: float,
) -> dict[str, Any]:
    """Let the beside run go on until ``WATCH_S`` after the release; what the down
    endpoint got and what became of its deliveries."""
    cpu = ctx.cpu(server)
    cpu.start()
    started = time.monotonic()
    await asyncio.sleep(max(0.0, min(released + WATCH_S - started, WATCH_S)))
    idle = cpu.stop()
    ended = time.monotonic()
    endpoint = await _get(ctx, server, key, f"/v1/endpoints/{endpoint_id}")
    metrics = await server.metrics()
    return {
        "watched_after_release_s": round(ended - released, 1),
        "cpu_after_drain_pct_of_one_core": idle,
        "after_drain_s": round(ended - started, 1),
        "tidings_5xx_attempts": metrics.get(FIVE_XX, 0.0),
        "breaker_at_end": endpoint.get("breaker"),
        "down_deliveries": await _down_deliveries(ctx, server, key, endpoint_id),
    }


async def _measure(
    ctx: Context, name: str, count: int, down: DownReceiver | None
) -> tuple[float, dict[str, Any]]:
    """One backlog drain of ``count`` healthy messages, with the down endpoint's
    ``DOWN_MESSAGES`` interleaved when ``down`` is given."""
    total = count + (DOWN_MESSAGES if down else 0)

    def event_type(i: int) -> str:
        return DOWN_EVENT if down is not None and is_down(i, total) else HEALTHY_EVENT

    async with ctx.tidings(name) as server:
        key = await server.new_tenant()
        endpoints = [
            await server.new_endpoint(
                key, ctx.nginx.url, [HEALTHY_EVENT], rate_limit_per_s=HOLD_RATE
            )
        ]
        down_id: str | None = None
        if down is not None:
            down_id = await server.new_endpoint(
                key, down.url, [DOWN_EVENT], rate_limit_per_s=HOLD_RATE
            )
            await server.patch_endpoint(key, down_id, {"retry_schedule": SCHEDULE})
            endpoints.append(down_id)
        received_before = down.received if down else 0
        marks: dict[str, float] = {}

        def on_release() -> None:
            marks["received"] = down.received if down else 0
            marks["released"] = time.monotonic()

        rate, detail = await backlog_drain(
            ctx, server, key, endpoints, event_type, count, preload=total, on_release=on_release
        )
        detail["down_messages"] = total - count
        released, received_at_release = marks["released"], int(marks["received"])
        if down is not None and down_id is not None:
            detail.update(await _watch(ctx, server, key, down_id, down, released))
            after = [round(t - released, 2) for t in down.times[received_before:]]
            detail["down_attempts"] = {
                "total": down.received - received_before,
                "during_preload": received_at_release - received_before,
                "within_burst_s_of_release": sum(1 for t in after if 0 <= t < BURST_S),
                "later": sum(1 for t in after if t >= BURST_S),
                "burst_s": BURST_S,
                "later_at_s_after_release": [t for t in after if t >= BURST_S],
            }
    return rate, detail


def _describe_down(detail: dict[str, Any]) -> str:
    got = detail["down_attempts"]
    found = detail["down_deliveries"]
    cpu = detail["cpu_after_drain_pct_of_one_core"]
    return (
        f"down receiver: {got['total']} attempts ({got['during_preload']} during the pre-load, "
        f"{got['within_burst_s_of_release']} within {BURST_S:.0f}s of the release, then at "
        f"{got['later_at_s_after_release']} s); tidings counted "
        f"{detail['tidings_5xx_attempts']:.0f}; after {detail['watched_after_release_s']}s "
        f"its {found['total']} deliveries: {found['by_state']}, most attempts on one "
        f"{found['most_attempts_on_one']}; breaker {detail['breaker_at_end']}; "
        f"cpu after the drain: tidings {cpu['tidings']}, senders {cpu['senders']}"
    )


async def run(ctx: Context) -> list[Row]:
    count = min(ctx.options.messages, HEALTHY_CAP)
    if count < ctx.options.messages:
        ctx.results.note(
            f"(f) sends {count:,} healthy messages per run (capped at {HEALTHY_CAP:,})"
        )
    down = DownReceiver()
    alone: list[tuple[float, dict[str, Any]]] = []
    try:
        await down.start()
        # alone, beside, alone: the reference is the mean of the two around the beside run
        alone.append(await _measure(ctx, "f-alone", count, None))
        ctx.results.note(f"f-alone: {describe_drain(alone[-1][1])}")
        beside, beside_detail = await _measure(ctx, "f-beside", count, down)
        ctx.results.note(f"f-beside: {describe_drain(beside_detail)}")
        ctx.results.note(_describe_down(beside_detail))
        alone.append(await _measure(ctx, "f-alone", count, None))
        ctx.results.note(f"f-alone: {describe_drain(alone[-1][1])}")
    finally:
        await down.stop()
    attempts = beside_detail["down_attempts"]["total"]
    reference = statistics.mean(rate for rate, _ in alone)
    ratio = beside / reference
    rows = [
        Row(
            "f",
            "attempts to the down endpoint",
            attempts,
            "attempts",
            target=f"<= {ATTEMPTS_TARGET}",
            verdict=verdict(attempts <= ATTEMPTS_TARGET),
            detail={
                "down_messages": DOWN_MESSAGES,
                "retry_schedule": SCHEDULE,
                "attempts_without_a_breaker": DOWN_MESSAGES * len(SCHEDULE),
                "receiver_total_received": down.received,
                **{k: beside_detail[k] for k in ("down_attempts", "down_deliveries")},
                "tidings_5xx_attempts": beside_detail["tidings_5xx_attempts"],
                "breaker_at_end": beside_detail["breaker_at_end"],
                "watched_after_release_s": beside_detail["watched_after_release_s"],
            },
        ),
        Row(
            "f",
            "healthy alone",
            reference,
            "deliveries/s",
            detail={"rates": [round(rate) for rate, _ in alone], "runs": [d for _, d in alone]},
        ),
        Row("f", "healthy beside the down one", beside, "deliveries/s", detail=beside_detail),
        Row(
            "f",
            "beside / alone",
            100 * ratio,
            "%",
            target=f">= {RATIO_TARGET:.0%}",
            verdict=verdict(ratio >= RATIO_TARGET),
            detail={"alone_runs": len(alone), "order": "alone, beside, alone"},
        ),
    ]
    for row in rows:
        ctx.results.add(row)
    return rows
