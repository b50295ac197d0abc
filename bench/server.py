"""tidings as a subprocess (``tidings serve``) on a fresh SQLite file, and its HTTP API.

A scenario may run another command (``tidings worker``, ``tidings serve --role api``)
and point it at another database through ``TIDINGS_DATABASE_URL`` in ``env``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.receivers import free_port

ADMIN_TOKEN = "bench-admin-token"
# One key for every process of a run (required on PostgreSQL): base64url of 32 bytes.
ENCRYPTION_KEY = "YmVuY2gtZW5jcnlwdGlvbi1rZXktMzItYnl0ZXMhISE"
START_WITHIN_S = 30.0
STOP_WITHIN_S = 25.0  # tidings gives in-flight attempts 10 s at shutdown


class TidingsServer:
    """One ``tidings serve`` process (or ``command``) with its own database in ``workdir``."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        session: aiohttp.ClientSession,
        env: dict[str, str] | None = None,
        command: Sequence[str] = ("serve",),
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.command = tuple(command)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._session = session
        self._extra_env = env or {}
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def log(self) -> Path:
        return self.workdir / "tidings.log"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            TIDINGS_DATABASE_URL=f"sqlite:///{self.workdir / 'tidings.db'}",
            TIDINGS_HOST="127.0.0.1",
            TIDINGS_PORT=str(self.port),
            TIDINGS_ADMIN_TOKEN=ADMIN_TOKEN,
            TIDINGS_ENCRYPTION_KEY=ENCRYPTION_KEY,
            TIDINGS_ALLOW_NETWORKS="127.0.0.0/8",
            TIDINGS_LOG_LEVEL="warning",
        )
        env.update(self._extra_env)
        return env

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                str(self.binary),
                *self.command,
                cwd=self.workdir,  # so no stray .env is read
                env=self._env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_WITHIN_S
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self._session.get(f"{self.base}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        await self.stop()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"tidings did not become healthy on {self.base}:\n{tail}")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_WITHIN_S)
        except TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)

    # the API ---------------------------------------------------------------------------

    async def _call(self, method: str, path: str, token: str, body: Any = None) -> Any:
        headers = {"authorization": f"Bearer {token}"}
        async with self._session.request(
            method, f"{self.base}{path}", json=body, headers=headers
        ) as response:
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")
            return await response.json()

    async def new_tenant(self, name: str = "bench") -> str:
        """A tenant and an API key for it; returns the key."""
        tenant = await self._call(
            "POST", "/v1/tenants", ADMIN_TOKEN, {"name": name, "owner_email": "ops@bench.example"}
        )
        key = await self._call("POST", f"/v1/tenants/{tenant['id']}/api-keys", ADMIN_TOKEN)
        return str(key["key"])

    async def new_endpoint(
        self,
        key: str,
        url: str,
        event_types: Sequence[str] = (),
        max_in_flight: int | None = None,
        rate_limit_per_s: float | None = None,
    ) -> str:
        body: dict[str, Any] = {"url": url, "event_types": list(event_types)}
        if max_in_flight is not None:
            body["max_in_flight"] = max_in_flight
        if rate_limit_per_s is not None:
            body["rate_limit_per_s"] = rate_limit_per_s
        endpoint = await self._call("POST", "/v1/endpoints", key, body)
        return str(endpoint["id"])

    async def patch_endpoint(self, key: str, endpoint_id: str, changes: dict[str, Any]) -> None:
        await self._call("PATCH", f"/v1/endpoints/{endpoint_id}", key, changes)

    async def metrics(self) -> dict[str, float]:
        """Every sample of ``GET /metrics``, keyed by name and labels as exposed."""
        async with self._session.get(f"{self.base}/metrics") as response:
            text = await response.text()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                found[name] = float(value)
        return found


SUCCEEDED = 'tidings_deliveries_total{outcome="succeeded"}'
RETRIED = 'tidings_deliveries_total{outcome="retry"}'
DEAD = 'tidings_deliveries_total{outcome="dead"}'
ACCEPTED = 'tidings_messages_accepted_total{replayed="false"}'


@contextlib.asynccontextmanager
async def running(
    binary: Path,
    workdir: Path,
    session: aiohttp.ClientSession,
    env: dict[str, str] | None = None,
    command: Sequence[str] = ("serve",),
) -> AsyncIterator[TidingsServer]:
    server = TidingsServer(binary, workdir, session, env, command)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
