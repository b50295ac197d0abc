"""(b) the ceiling: a bare aiohttp ClientSession POSTing webhook envelopes to nginx.

The same payload in the same Standard Webhooks envelope, with the same headers
(``webhook-id``, ``-timestamp``, ``-signature``, content type, user agent) as
tidings sends, ``in_flight`` at a time, nothing stored. The bodies and their
signatures are prepared before the clock starts (a pool of 256), so this is the
cost of the HTTP exchange alone on this machine's event loop (uvloop, as tidings).
"""

from __future__ import annotations

from bench import load
from bench.context import Context
from bench.measure import CpuMeter
from bench.results import Row

POOL = 256


async def run(ctx: Context) -> list[Row]:
    pool = [load.envelope("order.paid", f"msg_BENCH{i:021d}") for i in range(POOL)]
    url = ctx.nginx.url

    def request(i: int) -> tuple[str, bytes, dict[str, str]]:
        body, headers = pool[i % POOL]
        return url, body, headers

    rows: list[Row] = []
    for in_flight in ctx.options.in_flight:
        cpu = CpuMeter({"nginx": lambda: ctx.nginx.pids})
        await ctx.settle()
        cpu.start()
        async with load.client(in_flight) as session:
            stats = await load.drive(
                session,
                request,
                count=ctx.options.messages,
                concurrency=in_flight,
                ok_status=204,
                within_s=120,
            )
        detail = {
            "in_flight": in_flight,
            "requests": stats.sent,
            "ok": stats.ok,
            "errors": stats.errors,
            "seconds": round(stats.elapsed, 2),
            "body_bytes": len(pool[0][0]),
            "cpu_pct_of_one_core": cpu.stop(),
        }
        row = Row(
            "b", f"bare aiohttp, {in_flight} in flight", stats.rate, "requests/s", detail=detail
        )
        ctx.results.add(row)
        ctx.results.note(
            f"{stats.ok} ok in {stats.elapsed:.2f}s; cpu {detail['cpu_pct_of_one_core']}"
        )
        rows.append(row)
    return rows
