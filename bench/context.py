"""What every scenario gets: options, the nginx receiver, a temp dir, results, tidings."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.measure import CpuMeter, children, machine_busy
from bench.options import PROJECT_DIR, Options
from bench.receivers import Nginx
from bench.results import Results
from bench.server import TidingsServer, running

PROFILE_MAX_S = 900
QUIET_PCT = 25.0  # % of all cores: "the machine is quiet enough to measure"


@dataclass
class Context:
    options: Options
    tmp: Path
    nginx: Nginx
    session: aiohttp.ClientSession  # the control plane: API calls and /metrics
    results: Results
    _runs: int = field(default=0)

    @contextlib.asynccontextmanager
    async def tidings(
        self, name: str, env: dict[str, str] | None = None, command: Sequence[str] = ("serve",)
    ) -> AsyncIterator[TidingsServer]:
        """A fresh tidings (own database) for one measurement; py-spy on it if asked.

        ``command`` is what follows ``tidings`` (``worker``, ``serve --role api``);
        ``env`` may point it at a shared database with ``TIDINGS_DATABASE_URL``.
        """
        self._runs += 1
        workdir = self.tmp / f"{self._runs:02d}-{name}"
        env = dict(env or {})
        if self.options.senders is not None:
            env["TIDINGS_SENDERS"] = str(self.options.senders)
        async with running(self.options.tidings, workdir, self.session, env, command) as server:
            profiler = await self._profile(server, name)
            try:
                yield server
            finally:
                if profiler is not None:
                    await _stop_profiler(profiler)

    async def settle(self) -> None:
        """Wait (at most ``--settle`` seconds) until the rest of the machine is quiet.

        Other work on a 2-core machine (a test suite, say) halves what tidings
        gets; this waits for a quiet second before a measurement starts.
        """
        limit = self.options.settle
        if limit <= 0:
            return
        started = time.monotonic()
        busy = await machine_busy(1.0)
        while busy >= QUIET_PCT and time.monotonic() - started < limit:
            busy = await machine_busy(1.0)
        waited = time.monotonic() - started
        if busy >= QUIET_PCT:
            self.results.note(f"the machine is still {busy:.0f}% busy after {waited:.0f}s: noisy")
        elif waited > 1.5:
            self.results.note(f"waited {waited:.0f}s for a quiet machine")

    def cpu(self, server: TidingsServer) -> CpuMeter:
        return CpuMeter(
            {
                "tidings": lambda: [server.pid],
                "senders": lambda: children(server.pid),
                "nginx": lambda: self.nginx.pids,
            }
        )

    async def _profile(self, server: TidingsServer, name: str) -> asyncio.subprocess.Process | None:
        if not self.options.profile:
            return None
        py_spy = PROJECT_DIR / ".venv" / "bin" / "py-spy"
        binary = str(py_spy) if py_spy.exists() else shutil.which("py-spy")
        if binary is None:
            self.results.note("--profile: py-spy is not installed (.venv/bin/pip install py-spy)")
            return None
        out = self.options.results_dir / f"{self.results.run_id}-{self._runs:02d}-{name}.folded"
        self.results.note(f"profiling tidings (pid {server.pid}) into {out}")
        return await asyncio.create_subprocess_exec(
            binary,
            "record",
            "--pid",
            str(server.pid),
            "--gil",  # only the thread holding the GIL: where tidings' Python CPU goes
            "--rate",
            "250",
            "--format",
            "raw",
            "--duration",
            str(PROFILE_MAX_S),
            "--output",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )


async def _stop_profiler(profiler: asyncio.subprocess.Process) -> None:
    if profiler.returncode is None:
        profiler.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(profiler.wait(), 30)
    except TimeoutError:
        profiler.kill()
        await profiler.wait()
