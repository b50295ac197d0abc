"""The `tidings` command as a user runs it."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tidings import __version__

TIDINGS = [sys.executable, "-m", "tidings"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(
        TIDINGS_DATABASE_URL=f"sqlite:///{tmp_path / 'tidings.db'}",
        TIDINGS_LOG_LEVEL="warning",
        **extra,
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """Start `tidings serve`; returns (base URL, stderr text once stopped)."""
    started: list[subprocess.Popen[str]] = []

    def start(**extra: str) -> tuple[str, subprocess.Popen[str]]:
        port = _free_port()
        process = subprocess.Popen(
            [*TIDINGS, "serve"],
            env=_env(tmp_path, TIDINGS_PORT=str(port), **extra),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    return base, process
            except httpx.TransportError:
                time.sleep(0.1)
        process.kill()
        raise AssertionError(f"tidings did not start: {process.communicate()[1]}")

    yield start
    for process in started:
        process.kill()
        process.communicate()


def _stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    _, stderr = process.communicate(timeout=20)
    return stderr


def test_version_prints_the_version(tmp_path: Path) -> None:
    result = subprocess.run(
        [*TIDINGS, "version"], env=_env(tmp_path), capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == __version__


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    subprocess.run([*TIDINGS, "migrate"], env=_env(tmp_path), capture_output=True, check=True)

    db = sqlite3.connect(tmp_path / "tidings.db")
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert {"tenants", "endpoints", "messages", "deliveries", "attempts"} <= tables


def test_first_start_prints_an_admin_token_once_and_stores_only_its_hash(
    tmp_path: Path, serve: object
) -> None:
    base, process = serve()  # type: ignore[operator]
    first = _stop(process)
    tokens = re.findall(r"tda_[A-Za-z0-9_-]{20,}", first)
    assert len(set(tokens)) == 1
    token = tokens[0]

    base, process = serve()  # type: ignore[operator]
    answer = httpx.post(
        f"{base}/v1/tenants",
        json={"name": "acme", "owner_email": "ops@acme.example"},
        headers={"authorization": f"Bearer {token}"},
    )
    second = _stop(process)

    assert answer.status_code == 201, answer.text
    assert "tda_" not in second
    assert token.encode() not in (tmp_path / "tidings.db").read_bytes()


def test_sigterm_stops_the_server_cleanly(tmp_path: Path, serve: object) -> None:
    _, process = serve(TIDINGS_ADMIN_TOKEN="t")  # type: ignore[operator]
    stderr = _stop(process)

    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("command", [["worker"], ["serve", "--role", "api"]])
def test_split_roles_on_sqlite_are_refused_with_the_reason(
    tmp_path: Path, command: list[str]
) -> None:
    done = subprocess.run(
        [*TIDINGS, *command], env=_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "split roles need PostgreSQL" in done.stderr


def test_an_unknown_role_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [*TIDINGS, "serve", "--role", "everything"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "'everything' is not one of" in done.stderr
