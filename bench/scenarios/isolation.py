"""(c) a hung endpoint must not slow the healthy ones.

Ten endpoints of one tenant, each subscribed to its own event type (the filter
is an exact match): nine at nginx (``fast.0`` .. ``fast.8``), the tenth
(``slow.0``) at a receiver that accepts connections and never answers. Messages
cycle through the ten types, so each endpoint gets 10 %. The hung endpoint
holds its 10 slots for the 15 s request timeout, then retries.

Measured as the backlog drain of (a): every endpoint starts rate-limited, the
messages are pre-loaded, the ten limits are lifted, and the healthy endpoints'
deliveries (every succeeded delivery is a healthy one) are timed. The reference
is the same run with the tenth endpoint at nginx too. Each setup runs twice,
alternating (hung, healthy, healthy, hung), and the figures are the means: one
run varies by +-15 % on a shared 2-core machine. Target: hung / all healthy
>= 90 %.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.context import Context
from bench.receivers import HungReceiver
from bench.results import Row, verdict
from bench.scenarios.delivery import HOLD_RATE, backlog_drain, describe_drain

ENDPOINTS = 10
TARGET = 0.90
PAIRS = 2  # runs of each setup; the figure is their mean


def event_type(i: int) -> str:
    slot = i % ENDPOINTS
    return "slow.0" if slot == ENDPOINTS - 1 else f"fast.{slot}"


async def _measure(ctx: Context, hung_url: str | None) -> tuple[float, dict[str, Any]]:
    name = "c-hung" if hung_url else "c-healthy"
    count = ctx.options.messages
    async with ctx.tidings(name) as server:
        key = await server.new_tenant()
        urls = [ctx.nginx.url] * (ENDPOINTS - 1) + [hung_url or ctx.nginx.url]
        types = [f"fast.{i}" for i in range(ENDPOINTS - 1)] + ["slow.0"]
        endpoints = [
            await server.new_endpoint(key, url, [kind], rate_limit_per_s=HOLD_RATE)
            for url, kind in zip(urls, types, strict=True)
        ]
        healthy = sum(1 for i in range(count) if hung_url is None or event_type(i) != "slow.0")
        rate, detail = await backlog_drain(ctx, server, key, endpoints, event_type, healthy)
    detail["healthy_deliveries"] = healthy
    ctx.results.note(f"{name}: {describe_drain(detail)}")
    return rate, detail


async def run(ctx: Context) -> list[Row]:
    """``PAIRS`` runs of each setup, alternating which goes first, so drift cancels out."""
    hung = HungReceiver()
    await hung.start()
    runs: dict[str, list[tuple[float, dict[str, Any]]]] = {"hung": [], "healthy": []}
    try:
        for pair in range(PAIRS):
            order = ("hung", "healthy") if pair % 2 == 0 else ("healthy", "hung")
            for setup in order:
                url = hung.url if setup == "hung" else None
                runs[setup].append(await _measure(ctx, url))
    finally:
        await hung.stop()
    slow = statistics.mean(rate for rate, _ in runs["hung"])
    fast = statistics.mean(rate for rate, _ in runs["healthy"])
    ratio = slow / fast
    rows = [
        Row("c", "10 endpoints, all healthy", fast, "deliveries/s", detail=_runs(runs["healthy"])),
        Row(
            "c",
            "9 healthy + 1 hung: healthy rate",
            slow,
            "deliveries/s",
            detail=_runs(runs["hung"]),
        ),
        Row(
            "c",
            "hung / all healthy",
            100 * ratio,
            "%",
            target=f">= {TARGET:.0%}",
            verdict=verdict(ratio >= TARGET),
            detail={"pairs": PAIRS, "hung_connections_accepted": hung.accepted},
        ),
    ]
    for row in rows:
        ctx.results.add(row)
    return rows


def _runs(found: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    return {"rates": [round(rate) for rate, _ in found], "runs": [detail for _, detail in found]}
