"""(a) deliveries/s from tidings to the fast nginx receiver, one endpoint.

Backlog drain (the headline, once per ``--in-flight`` level): the endpoint is
created with ``rate_limit_per_s = 0.001``, so the dispatcher holds its
deliveries back (one slips through); ``--messages`` messages are pre-loaded
with ``--concurrency`` concurrent POSTs; then a ``PATCH`` lifts the limit and
``tidings_deliveries_total{outcome="succeeded"}`` is polled every 0.2 s until
every message is delivered. The rate is taken between the first and the last
sample that moved, so it is delivery and nothing else, comparable with (b).

Delivery while ingesting (once, at the first ``--in-flight`` level): no limit;
the deliveries start with the first committed message and run beside the
pre-load. Recorded: the rate from the first delivery to the last, the rate
while the pre-load ran and the rate after it ended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import load
from bench.context import Context
from bench.measure import Counters, CpuMeter, Poller, drain, per_second, rates
from bench.results import Row
from bench.server import DEAD, RETRIED, TidingsServer

EVENT = "order.paid"
HOLD_RATE = 0.001  # deliveries/s while the backlog is built: about none


def _round(value: float | None) -> float | None:
    return None if value is None else round(value)


async def _preload(
    ctx: Context,
    server: TidingsServer,
    key: str,
    event_type: Callable[[int], str],
    count: int | None = None,
) -> load.LoadStats:
    count = ctx.options.messages if count is None else count
    stats = await load.ingest(
        server.base,
        key,
        event_type,
        count=count,
        concurrency=ctx.options.concurrency,
        within_s=60 + count / 20,
    )
    if stats.ok < count:
        raise RuntimeError(f"pre-load: {stats.ok} of {count} accepted; errors {stats.errors}")
    return stats


async def backlog_drain(
    ctx: Context,
    server: TidingsServer,
    key: str,
    endpoints: Sequence[str],
    event_type: Callable[[int], str],
    expected: int,
    *,
    preload: int | None = None,
    on_release: Callable[[], None] | None = None,
    counters: Counters | None = None,
    cpu: CpuMeter | None = None,
) -> tuple[float, dict[str, Any]]:
    """Pre-load behind a rate limit, lift it, and time the delivery of the backlog.

    ``endpoints`` were created with ``rate_limit_per_s = HOLD_RATE``; ``expected``
    is the value of the succeeded counter once the backlog is delivered.
    ``preload`` messages are sent (default ``--messages``); ``on_release`` is
    called just before the limits are lifted. ``server`` takes the messages and
    the PATCH; the counters are read from ``counters`` (default: ``server``), and
    ``cpu`` measures the drain (default: ``server``, its senders and nginx).
    """
    stats = await _preload(ctx, server, key, event_type, preload)
    counters = server if counters is None else counters
    poller = Poller(counters)
    cpu = ctx.cpu(server) if cpu is None else cpu
    polling = asyncio.create_task(poller.run(expected, within_s=60 + expected / 20))
    try:
        await ctx.settle()
        await poller.sampled()  # a baseline before the release
        if on_release is not None:
            on_release()
        cpu.start()
        released = time.monotonic()
        for endpoint_id in endpoints:
            await server.patch_endpoint(key, endpoint_id, {"rate_limit_per_s": None})
        await polling
    finally:
        polling.cancel()
    used = cpu.stop()
    measured = drain(poller.points, expected, released)
    metrics = await counters.metrics()
    detail = {
        "messages": stats.sent,
        "preload_per_s": round(stats.rate),
        "preload_s": round(stats.elapsed, 2),
        "delivered": measured.delivered,
        "steady_per_s": round(measured.rate),
        "from_release_per_s": round(measured.from_release),
        "first_delivery_after_release_s": round(measured.first_s, 2),
        "drain_s": round(measured.seconds, 2),
        "complete": measured.complete,
        "retried": metrics.get(RETRIED, 0.0),
        "dead": metrics.get(DEAD, 0.0),
        "cpu_pct_of_one_core": used,
        "per_second": per_second(poller.points, released, expected),
    }
    return measured.rate, detail


async def while_ingesting(
    ctx: Context, server: TidingsServer, key: str, event_type: Callable[[int], str]
) -> tuple[float, dict[str, Any]]:
    """Pre-load with delivery running beside it; rate from the first delivery to the last."""
    count = ctx.options.messages
    poller = Poller(server)
    cpu = ctx.cpu(server)
    await ctx.settle()
    cpu.start()
    started = time.monotonic()
    polling = asyncio.create_task(poller.run(count, within_s=120 + count / 20))
    try:
        stats = await _preload(ctx, server, key, event_type)
        await polling
    finally:
        polling.cancel()
    used = cpu.stop()
    measured = rates(poller.points, count, started, stats.finished)
    detail = {
        "messages": count,
        "preload_per_s": round(stats.rate),
        "preload_s": round(stats.elapsed, 2),
        "overall_per_s": round(measured.overall),
        "while_ingesting_per_s": _round(measured.while_ingesting),
        "after_ingest_per_s": _round(measured.drain),
        "after_ingest_share": round(measured.drain_share, 3),
        "first_delivery_s": round(measured.first_s, 2),
        "last_delivery_s": round(measured.last_s, 2),
        "complete": measured.complete,
        "cpu_pct_of_one_core": used,
    }
    return measured.overall, detail


async def _drain_run(ctx: Context, in_flight: int) -> Row:
    env = {"TIDINGS_MAX_IN_FLIGHT": str(max(256, in_flight))}
    async with ctx.tidings(f"a-drain-{in_flight}", env) as server:
        key = await server.new_tenant()
        endpoint = await server.new_endpoint(
            key, ctx.nginx.url, [EVENT], max_in_flight=in_flight, rate_limit_per_s=HOLD_RATE
        )
        rate, detail = await backlog_drain(
            ctx, server, key, [endpoint], lambda _: EVENT, ctx.options.messages
        )
    detail["in_flight"] = in_flight
    row = Row("a", f"tidings backlog, {in_flight} in flight", rate, "deliveries/s", detail=detail)
    ctx.results.add(row)
    ctx.results.note(describe_drain(detail))
    return row


async def _mixed_run(ctx: Context, in_flight: int) -> Row:
    env = {"TIDINGS_MAX_IN_FLIGHT": str(max(256, in_flight))}
    async with ctx.tidings(f"a-mixed-{in_flight}", env) as server:
        key = await server.new_tenant()
        await server.new_endpoint(key, ctx.nginx.url, [EVENT], max_in_flight=in_flight)
        rate, detail = await while_ingesting(ctx, server, key, lambda _: EVENT)
    detail["in_flight_mixed"] = in_flight
    row = Row("a", f"tidings + ingest, {in_flight} in flight", rate, "deliveries/s", detail=detail)
    ctx.results.add(row)
    ctx.results.note(
        f"while ingesting {detail['while_ingesting_per_s']}/s, "
        f"after {detail['after_ingest_per_s']}/s "
        f"({detail['after_ingest_share']:.0%} of deliveries); "
        f"pre-load {detail['preload_per_s']}/s; cpu {detail['cpu_pct_of_one_core']}"
    )
    return row


def describe_drain(detail: dict[str, Any]) -> str:
    return (
        f"steady {detail['steady_per_s']}/s, from release {detail['from_release_per_s']}/s, "
        f"{detail['delivered']:.0f} in {detail['drain_s']}s, complete={detail['complete']}; "
        f"pre-load {detail['preload_per_s']}/s; cpu {detail['cpu_pct_of_one_core']}"
    )


async def run(ctx: Context) -> list[Row]:
    rows = [await _drain_run(ctx, in_flight) for in_flight in ctx.options.in_flight]
    rows.append(await _mixed_run(ctx, ctx.options.in_flight[0]))
    return rows
