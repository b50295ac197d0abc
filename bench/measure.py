"""Measuring: a /metrics poller, delivery-rate arithmetic, and CPU accounting from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp

from bench.server import SUCCEEDED

POLL_S = 0.2


class Counters(Protocol):
    """Where the counters are read: one tidings, or the sum over several workers."""

    async def metrics(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Point:
    t: float
    count: float


@dataclass
class Poller:
    """Samples one counter of tidings' /metrics every ``POLL_S`` seconds."""

    server: Counters
    metric: str = SUCCEEDED
    points: list[Point] = field(default_factory=list)

    _first: asyncio.Event = field(default_factory=asyncio.Event)

    async def sampled(self, within_s: float = 5.0) -> None:
        """Wait until the poller has at least one sample (a baseline)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), within_s)

    async def run(self, target: float, within_s: float) -> bool:
        """Poll until the counter reaches ``target``; False if ``within_s`` ran out first."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            try:
                value = (await self.server.metrics()).get(self.metric, 0.0)
            except (aiohttp.ClientError, OSError):
                value = self.points[-1].count if self.points else 0.0
            self.points.append(Point(time.monotonic(), value))
            self._first.set()
            if value >= target:
                return True
            await asyncio.sleep(POLL_S)
        return False


@dataclass(frozen=True)
class Rates:
    """Delivery rates over three windows of one run (deliveries/s)."""

    overall: float  # first delivery seen to the last one
    while_ingesting: float | None  # first delivery seen to the end of the pre-load
    drain: float | None  # end of the pre-load to the last delivery (delivery alone)
    drain_share: float  # the part of the deliveries that happened in the drain window
    first_s: float  # first delivery seen, seconds after the pre-load started
    last_s: float  # last delivery seen, seconds after the pre-load started
    complete: bool


def rates(points: list[Point], expected: float, started: float, ingest_end: float) -> Rates:
    """Rates from counter samples: windows start and end on samples (0.2 s apart)."""
    moving = [p for p in points if p.count > 0]
    if len(moving) < 2:
        raise RuntimeError("fewer than two samples with deliveries: nothing to measure")
    first = moving[0]
    done = next((p for p in moving if p.count >= expected), moving[-1])
    overall = (done.count - first.count) / max(done.t - first.t, 1e-9)
    mid = next((p for p in moving if p.t >= ingest_end), done)
    during = (mid.count - first.count) / (mid.t - first.t) if mid.t - first.t >= 0.5 else None
    drained = done.count - mid.count
    window = done.t - mid.t
    drain = drained / window if window >= 1.0 and drained >= 0.05 * expected else None
    return Rates(
        overall=overall,
        while_ingesting=during,
        drain=drain,
        drain_share=drained / max(done.count, 1.0),
        first_s=first.t - started,
        last_s=done.t - started,
        complete=done.count >= expected,
    )


@dataclass(frozen=True)
class Drain:
    """Delivering a backlog that was released at ``released`` (deliveries/s)."""

    rate: float  # between the first and the last sample that moved: the steady rate
    from_release: float  # from the release to the last sample, ramp-up included
    first_s: float  # first delivery seen, seconds after the release
    seconds: float  # release to last delivery seen
    delivered: float
    complete: bool


def drain(points: list[Point], expected: float, released: float) -> Drain:
    """Rates of a backlog's delivery from counter samples taken every ``POLL_S``."""
    before = [p for p in points if p.t < released]
    after = [p for p in points if p.t >= released]
    if not before or len(after) < 2:
        raise RuntimeError("too few samples around the release: nothing to measure")
    base = before[-1].count
    moving = [p for p in after if p.count > base]
    if len(moving) < 2:
        raise RuntimeError("the backlog did not move: nothing was delivered")
    first = moving[0]
    done = next((p for p in moving if p.count >= expected), moving[-1])
    return Drain(
        rate=(done.count - first.count) / max(done.t - first.t, 1e-9),
        from_release=(done.count - base) / max(done.t - released, 1e-9),
        first_s=first.t - released,
        seconds=done.t - released,
        delivered=done.count - base,
        complete=done.count >= expected,
    )


def per_second(points: list[Point], since: float, until_count: float) -> list[int]:
    """Deliveries in each whole second after ``since``, until the counter reaches a value."""
    series: list[int] = []
    mark, last = since + 1.0, None
    for p in points:
        if p.t < since:
            last = p.count
            continue
        if p.t >= mark and last is not None:
            series.append(round(p.count - last))
            last, mark = p.count, mark + 1.0
        if p.count >= until_count:
            break
    return series


# CPU ------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / _TICK, sum(values) / _TICK


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (tidings' sender processes)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found


@dataclass
class CpuMeter:
    """CPU used by named groups of processes over a window, as % of one core.

    Counted per process: one that starts during the window counts from its start,
    one that ends during it counts nothing (rather than less than nothing).
    """

    groups: dict[str, Callable[[], Iterable[int]]]
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _wall: float = 0.0
    _machine: tuple[float, float] = (0.0, 0.0)

    def _read(self) -> dict[str, dict[int, float]]:
        used = {name: {p: _proc_cpu(p) for p in pids()} for name, pids in self.groups.items()}
        times = os.times()
        used["bench"] = {0: times.user + times.system}
        used["wrk"] = {0: times.children_user + times.children_system}  # children that exited
        return used

    def start(self) -> None:
        self._start = self._read()
        self._wall = time.monotonic()
        self._machine = _machine()

    def _used(self, name: str, now: dict[int, float]) -> float:
        before = self._start.get(name, {})
        return sum(max(cpu - before.get(pid, 0.0), 0.0) for pid, cpu in now.items() if cpu)

    def stop(self) -> dict[str, float]:
        """% of one core per group, and the machine's busy % of all its cores."""
        wall = max(time.monotonic() - self._wall, 1e-9)
        now = self._read()
        busy, total = _machine()
        found = {name: round(100 * self._used(name, now[name]) / wall, 1) for name in now}
        machine_pct = 100 * (busy - self._machine[0]) / max(total - self._machine[1], 1e-9)
        found["machine_busy_pct_all_cores"] = round(machine_pct, 1)
        # What everything else on the machine used (other engineers' tests, say).
        ours = sum(found[name] for name in now)
        found["others"] = round(max(machine_pct * (os.cpu_count() or 1) - ours, 0.0), 1)
        return found


async def machine_busy(window_s: float) -> float:
    """How busy the whole machine is over ``window_s`` seconds, in % of all its cores."""
    busy0, total0 = _machine()
    await asyncio.sleep(window_s)
    busy1, total1 = _machine()
    return 100 * (busy1 - busy0) / max(total1 - total0, 1e-9)
