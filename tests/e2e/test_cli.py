"""The `tidings` command as a user runs it."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from support.api import bearer, new_endpoint, send
from support.receivers import Receiver
from support.sockets import free_port
from support.waiting import wait_for
from tidings import __version__
from tidings.crypto import Keyring, generate_key, key_id_of

TIDINGS = [sys.executable, "-m", "tidings"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(
        TIDINGS_DATABASE_URL=f"sqlite:///{tmp_path / 'tidings.db'}",
        TIDINGS_LOG_LEVEL="warning",
        **extra,
    )
    return env


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """Start `tidings serve`; returns (base URL, stderr text once stopped)."""
    started: list[subprocess.Popen[str]] = []

    def start(**extra: str) -> tuple[str, subprocess.Popen[str]]:
        port = free_port()
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


def test_first_start_makes_a_key_file_readable_by_its_owner_and_says_so_once(
    tmp_path: Path, serve: object
) -> None:
    _, process = serve(TIDINGS_ADMIN_TOKEN="t")  # type: ignore[operator]
    first = _stop(process)
    _, process = serve(TIDINGS_ADMIN_TOKEN="t")  # type: ignore[operator]
    second = _stop(process)

    key_file = tmp_path / "tidings.db.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "encryption key" in first
    assert f"made {key_file} (readable by its owner only)" in first
    assert "encryption key" not in second
    key = key_file.read_text().strip()
    assert key not in first
    assert key not in second


def test_serve_with_the_wrong_key_stops_with_the_reason(tmp_path: Path, serve: object) -> None:
    _, process = serve(TIDINGS_ADMIN_TOKEN="t", TIDINGS_ENCRYPTION_KEY=generate_key())  # type: ignore[operator]
    _stop(process)
    wrong = generate_key()

    result = subprocess.run(
        [*TIDINGS, "serve"],
        env=_env(tmp_path, TIDINGS_ADMIN_TOKEN="t", TIDINGS_ENCRYPTION_KEY=wrong),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "TIDINGS_ENCRYPTION_KEY does not open this store's secrets" in message
    assert "Traceback" not in result.stderr
    assert wrong not in result.stderr


async def test_rotate_encryption_key_re_encrypts_so_the_old_key_can_go(
    tmp_path: Path, serve: object
) -> None:
    """NEW,OLD; rotate; then NEW alone opens the store and still signs as before."""
    old, new = generate_key(), generate_key()
    receiver = Receiver()
    await receiver.start()
    start = functools.partial(serve, TIDINGS_ADMIN_TOKEN="t", TIDINGS_ALLOW_NETWORKS="127.0.0.0/8")
    try:
        base, process = await asyncio.to_thread(start, TIDINGS_ENCRYPTION_KEY=old)
        async with httpx.AsyncClient(base_url=base) as client:
            _, key = await new_tenant_with(client, "t")
            endpoints = [await new_endpoint(client, key, receiver.url) for _ in range(3)]
        await asyncio.to_thread(_stop, process)

        rotation = await asyncio.to_thread(
            subprocess.run,
            [*TIDINGS, "rotate-encryption-key"],
            env=_env(tmp_path, TIDINGS_ENCRYPTION_KEY=f"{new},{old}"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rotation.returncode == 0, rotation.stderr
        assert "re-encrypting" in rotation.stderr
        new_id = Keyring.parse(new).sealing_id
        assert f"every secret is encrypted with key {new_id}" in rotation.stderr
        db = sqlite3.connect(tmp_path / "tidings.db")
        stored = db.execute("SELECT secret FROM endpoints WHERE kind = 'webhook'").fetchall()
        db.close()
        assert {key_id_of(secret) for (secret,) in stored} == {new_id}

        base, process = await asyncio.to_thread(start, TIDINGS_ENCRYPTION_KEY=new)
        async with httpx.AsyncClient(base_url=base) as client:
            await send(client, key)
            await wait_for(lambda: len(receiver.received) == 3)
        await asyncio.to_thread(_stop, process)
    finally:
        await receiver.stop()

    # Each delivery is signed with its own endpoint's secret, as it was before the rotation.
    signers = [
        [e["secret"] for e in endpoints if _signed_with(e["secret"], r.body, r.headers)]
        for r in receiver.received
    ]
    assert sorted(s for found in signers for s in found) == sorted(e["secret"] for e in endpoints)


def _signed_with(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


async def new_tenant_with(client: httpx.AsyncClient, admin_token: str) -> tuple[str, str]:
    """A tenant and its API key, made with ``admin_token``."""
    admin = bearer(admin_token)
    created = await client.post(
        "/v1/tenants", json={"name": "acme", "owner_email": "ops@acme.example"}, headers=admin
    )
    assert created.status_code == 201, created.text
    tenant_id = created.json()["id"]
    issued = await client.post(f"/v1/tenants/{tenant_id}/api-keys", headers=admin)
    assert issued.status_code == 201, issued.text
    return tenant_id, issued.json()["key"]
