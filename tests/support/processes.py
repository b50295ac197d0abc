"""``tidings`` run as a subprocess, as a user runs it: started on a port of its own,
waited for until healthy, killed with SIGKILL (no shutdown hook, no drain, no flush)
and started again on the same store; and clients of its API over the network."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import httpx

from support.api import ADMIN_TOKEN
from support.sockets import free_port
from support.stores import ENCRYPTION_KEY

LEASE_S = 2  # a killed process's claims return to pending this soon after the restart
REQUEST_TIMEOUT_S = 1  # must be shorter than the lease; the receivers answer within 5 ms


def tidings_command() -> list[str]:
    """How to run the ``tidings`` command of this environment (without its arguments)."""
    script = shutil.which("tidings", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "tidings"]


class Server:
    """``tidings serve`` in a subprocess, on one SQLite file and one port across restarts."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        self.env = inherited | {
            "TIDINGS_DATABASE_URL": f"sqlite:///{workdir / 'tidings.db'}",
            "TIDINGS_PORT": str(self.port),
            "TIDINGS_ADMIN_TOKEN": ADMIN_TOKEN,
            "TIDINGS_ALLOW_NETWORKS": "127.0.0.0/8",
            "TIDINGS_LEASE": str(LEASE_S),
            "TIDINGS_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
            "TIDINGS_LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
        }
        self.name = "server"
        self.args = ["serve"]
        self.logs: list[Path] = []
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self._proc is None, "already running"
        log = self.workdir / f"{self.name}-{len(self.logs) + 1}.log"
        self.logs.append(log)
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            self._proc = subprocess.Popen(
                [*tidings_command(), *self.args],
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self._proc is not None, f"{self.name} is not running"
        return self._proc.pid

    async def ready(self, within: float = 30.0) -> None:
        """Wait for ``/healthz`` (the store is migrated and the dispatcher runs by then)."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.url, timeout=1.0) as http:
            while True:
                assert self._proc is not None, "not started"
                if self._proc.poll() is not None:
                    raise AssertionError(f"tidings serve exited ({self._proc.returncode})")
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"tidings serve not healthy within {within}s")
                await asyncio.sleep(0.05)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> int | None:
        """SIGKILL the server and reap it; its exit status (``-9`` if it was still running)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=10)

    def output(self) -> str:
        return "\n".join(
            f"----- {log.name} -----\n{log.read_text(errors='replace')}"
            for log in self.logs
            if log.exists()
        )


class Node(Server):
    """One tidings process (``serve --role api`` or ``worker``) on a PostgreSQL database.
    Its connections carry its name as their ``application_name``, so that
    ``pg_stat_activity`` says which process holds a lock."""

    def __init__(self, workdir: Path, name: str, args: list[str], database_url: str) -> None:
        workdir.mkdir()
        super().__init__(workdir)
        self.name = name
        self.args = args
        self.env |= {
            "TIDINGS_DATABASE_URL": database_url,
            "TIDINGS_ENCRYPTION_KEY": ENCRYPTION_KEY,  # required on PostgreSQL
            "TIDINGS_SENDERS": "0",
            "TIDINGS_HEALTH_INTERVAL": "1",
            "PGAPPNAME": name,  # libpq's default application_name
        }


def children() -> list[int]:
    """The processes this one started that are still running (Linux: read from /proc)."""
    found = []
    for pid in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError):  # gone meanwhile, or not a process
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                found.append(int(pid))
    return found


@contextlib.contextmanager
def killed_at_the_end(*servers: Server) -> Iterator[None]:
    """Every one of ``servers`` is killed at the end, whatever happened, and its output
    printed: captured, so pytest shows it only for a failed test."""
    try:
        yield
    finally:
        for each in servers:
            each.kill()
        for each in servers:
            print(each.output())


@contextlib.asynccontextmanager
async def api(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    """The API, for setting up and for reading back."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
        yield http


@contextlib.asynccontextmanager
async def poster(server: Server, connections: int = 32) -> AsyncIterator[aiohttp.ClientSession]:
    """The API, for posting messages in bulk, over at most ``connections`` at a time.

    Not httpx: it costs ~3 ms of CPU a request and stalls in its pool at 32 at a time,
    on the same CPUs as the server, which would make the crash tests several times slower.
    """
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(server.url, connector=connector, timeout=timeout) as session:
        yield session
