"""(d) accepted messages/s on ``POST /v1/messages``, every one committed durably.

One tenant with one endpoint at nginx, so each message also creates a delivery
and the dispatcher delivers them while the load runs (its rate is recorded).
The load is ``wrk`` (Debian's, one thread: C, so it leaves the second core to
tidings and nginx) with ``bench/ingest.lua``, ``--connections`` connections for
``--duration`` seconds; ``--load-generator aiohttp`` uses a Python client
instead, which competes with tidings for the CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from typing import Any

from bench import load
from bench.context import Context
from bench.options import BENCH_DIR
from bench.results import Row, verdict
from bench.server import ACCEPTED, SUCCEEDED, TidingsServer

EVENT = "order.paid"
TARGET = 1500
WRK_HINT = "wrk is not installed: apt-get install -y wrk (or use --load-generator aiohttp)"


async def _wrk(server: TidingsServer, key: str, connections: int, seconds: float) -> dict[str, Any]:
    env = dict(os.environ, BENCH_KEY=key, BENCH_BODY=load.message_body(EVENT).decode())
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:.0f}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH_DIR / "ingest.lua"),
        f"{server.base}/v1/messages",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{text}")
    found: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    seconds_run = found["duration_us"] / 1e6
    found["ok_per_s"] = (found["requests"] - found["non_2xx_3xx"]) / seconds_run
    return found


async def _aiohttp(
    server: TidingsServer, key: str, connections: int, seconds: float
) -> dict[str, Any]:
    stats = await load.ingest(
        server.base,
        key,
        lambda _: EVENT,
        count=int(seconds * 20_000),
        concurrency=connections,
        within_s=seconds,
    )
    return {"requests": stats.sent, "errors": stats.errors, "ok_per_s": stats.rate}


async def _one(ctx: Context, connections: int) -> Row:
    seconds = ctx.options.duration
    generator = ctx.options.load_generator
    async with ctx.tidings(f"d-{connections}") as server:
        key = await server.new_tenant()
        await server.new_endpoint(key, ctx.nginx.url, [EVENT])
        await ctx.settle()
        before = await server.metrics()
        cpu = ctx.cpu(server)
        cpu.start()
        started = time.monotonic()
        drive = _wrk if generator == "wrk" else _aiohttp
        found = await drive(server, key, connections, seconds)
        wall = time.monotonic() - started
        used = cpu.stop()
        after = await server.metrics()
    accepted = after.get(ACCEPTED, 0.0) - before.get(ACCEPTED, 0.0)
    delivered = after.get(SUCCEEDED, 0.0) - before.get(SUCCEEDED, 0.0)
    detail = {
        "load_generator": generator,
        "connections": connections,
        **found,
        "accepted_by_metrics": accepted,
        "accepted_per_s_by_metrics": round(accepted / wall),
        "delivered_meanwhile_per_s": round(delivered / wall),
        "backlog_at_end": accepted - delivered,
        "cpu_pct_of_one_core": used,
    }
    rate = float(found["ok_per_s"])
    variant = f"ingest, {generator} {connections} conns"
    row = Row("d", variant, rate, "accepted/s", f">= {TARGET:,}/s", verdict(rate >= TARGET), detail)
    ctx.results.add(row)
    ctx.results.note(
        f"delivered meanwhile {detail['delivered_meanwhile_per_s']}/s, backlog at end "
        f"{detail['backlog_at_end']:.0f}; latency p50/p99 {found.get('latency_p50_ms')}/"
        f"{found.get('latency_p99_ms')} ms; cpu {used}"
    )
    return row


async def run(ctx: Context) -> list[Row]:
    if ctx.options.load_generator == "wrk" and shutil.which("wrk") is None:
        raise RuntimeError(WRK_HINT)
    return [await _one(ctx, connections) for connections in ctx.options.connections]
