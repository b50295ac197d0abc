"""Command-line options of ``python -m bench``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = ("a", "b", "c", "d")  # the default set: what `make bench` runs
KNOWN_SCENARIOS = (*SCENARIOS, "e", "f", "g")  # e: emails, f: a down receiver, g: PostgreSQL
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"  # (g): a database of its own per run
BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent


@dataclass(frozen=True)
class Options:
    scenarios: tuple[str, ...]
    messages: int
    duration: float
    concurrency: int
    in_flight: tuple[int, ...]
    connections: tuple[int, ...]
    load_generator: str
    repeat: int
    results_dir: Path
    tidings: Path
    profile: bool
    keep_temp: bool
    settle: float
    senders: int | None
    postgres_url: str = POSTGRES_URL


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("give at least one positive integer")
    return values


def _scenarios(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [s for s in chosen if s not in KNOWN_SCENARIOS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"scenarios are a comma-separated subset of {','.join(KNOWN_SCENARIOS)}: {text}"
        )
    return chosen


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark tidings against a local nginx receiver (loopback only).",
    )
    add = parser.add_argument
    add("--scenario", type=_scenarios, default=SCENARIOS, help="a,b,c,d,e,f,g (default: a,b,c,d)")
    add(
        "--messages",
        type=int,
        default=20_000,
        help="messages per run of a, b, c, g; emails for e, at most 5000; healthy messages for "
        "f, at most 20000 (20000)",
    )
    add("--duration", type=float, default=20.0, help="seconds of load per run of d (20)")
    add("--concurrency", type=int, default=64, help="concurrent POSTs when pre-loading (64)")
    add("--in-flight", type=_ints, default=(10, 256), help="in flight for a and b (10,256)")
    add("--connections", type=_ints, default=(64, 128), help="connections for d (64,128)")
    add("--load-generator", choices=("wrk", "aiohttp"), default="wrk", help="for d (wrk)")
    add("--repeat", type=int, default=1, help="run the chosen scenarios this many times (1)")
    add("--results-dir", type=Path, default=BENCH_DIR / "results", help="(bench/results)")
    add(
        "--tidings",
        type=Path,
        default=PROJECT_DIR / ".venv" / "bin" / "tidings",
        help="the tidings command to benchmark (.venv/bin/tidings)",
    )
    add("--profile", action="store_true", help="py-spy record each tidings process (if present)")
    add("--settle", type=float, default=30.0, help="wait up to S s for a quiet machine (30)")
    add("--senders", type=int, default=None, help="TIDINGS_SENDERS (tidings' own default)")
    add("--keep-temp", action="store_true", help="keep the temp dir (configs, logs, databases)")
    add(
        "--postgres-url",
        default=POSTGRES_URL,
        help="the PostgreSQL server for g; each run creates and drops a database of its own "
        f"on it ({POSTGRES_URL})",
    )
    ns = parser.parse_args(argv)
    if not 1 <= ns.messages <= 1_000_000:
        parser.error("--messages must be between 1 and 1000000")
    if not 1 <= ns.duration <= 600:
        parser.error("--duration must be between 1 and 600 seconds")
    if not 1 <= ns.concurrency <= 1024 or not 1 <= ns.repeat <= 10:
        parser.error("--concurrency must be in 1..1024 and --repeat in 1..10")
    return Options(
        scenarios=ns.scenario,
        messages=ns.messages,
        duration=ns.duration,
        concurrency=ns.concurrency,
        in_flight=ns.in_flight,
        connections=ns.connections,
        load_generator=ns.load_generator,
        repeat=ns.repeat,
        results_dir=ns.results_dir,
        tidings=ns.tidings,
        profile=ns.profile,
        keep_temp=ns.keep_temp,
        settle=max(0.0, min(ns.settle, 600.0)),
        senders=ns.senders,
        postgres_url=ns.postgres_url,
    )
