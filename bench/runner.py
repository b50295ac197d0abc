"""Runs the chosen scenarios around one nginx and prints the ratios against the targets."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from bench import options as opts
from bench.context import Context
from bench.receivers import Nginx, nginx_missing
from bench.results import Results, Row, verdict
from bench.scenarios import ceiling, delivery, email, health, ingest, isolation, postgres

Scenario = Callable[[Context], Awaitable[list[Row]]]
SCENARIOS: dict[str, Scenario] = {
    "a": delivery.run,
    "b": ceiling.run,
    "c": isolation.run,
    "d": ingest.run,
    "e": email.run,  # not in the default set (options.SCENARIOS): --scenario e
    "f": health.run,  # nor is this one: --scenario f
    "g": postgres.run,  # nor this: --scenario g (needs a PostgreSQL server, --postgres-url)
}
A_OVER_B_TARGET = 0.50


def ratios(rows: list[Row]) -> list[Row]:
    """(a)/(b) at each in-flight level measured by both."""
    found: list[Row] = []
    tidings = {r.detail.get("in_flight"): r for r in rows if r.scenario == "a"}
    bare = {r.detail.get("in_flight"): r for r in rows if r.scenario == "b"}
    for in_flight in sorted(set(tidings) & set(bare), key=lambda n: n or 0):
        ratio = tidings[in_flight].value / bare[in_flight].value
        found.append(
            Row(
                "a/b",
                f"tidings / bare aiohttp, {in_flight} in flight",
                100 * ratio,
                "%",
                f">= {A_OVER_B_TARGET:.0%}",
                verdict(ratio >= A_OVER_B_TARGET),
            )
        )
    return found


async def _session(ctx_options: opts.Options, tmp: Path, results: Results) -> None:
    nginx = Nginx(tmp / "nginx")
    await nginx.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            ctx = Context(ctx_options, tmp, nginx, session, results)
            for round_ in range(ctx_options.repeat):
                rows: list[Row] = []
                for name in ctx_options.scenarios:
                    rows.extend(await _scenario(ctx, name, round_))
                for row in ratios(rows):
                    results.add(row)
    finally:
        await nginx.stop()


async def _scenario(ctx: Context, name: str, round_: int) -> list[Row]:
    label = f" (round {round_ + 1})" if ctx.options.repeat > 1 else ""
    ctx.results.note(f"--- scenario {name}{label}")
    try:
        return await SCENARIOS[name](ctx)
    except Exception as exc:  # one scenario failing should not lose the others
        ctx.results.note(f"scenario {name} failed: {exc}")
        traceback.print_exc()
        return []


def _run(main: Awaitable[None]) -> None:
    try:
        import uvloop  # tidings runs on uvloop; the load generators do too
    except ImportError:  # pragma: no cover
        asyncio.run(main)  # type: ignore[arg-type]
    else:
        uvloop.run(main)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    options = opts.parse(argv)
    problem = nginx_missing()
    if problem:
        print(problem)
        return 2
    if not options.tidings.exists():
        print(f"{options.tidings} does not exist: run `make run` or `pip install -e .` first")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    try:
        results = Results(options)
        _run(_session(options, tmp, results))
        print(f"results: {results.path}")
    finally:
        if options.keep_temp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0
