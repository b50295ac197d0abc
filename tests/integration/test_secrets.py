"""Endpoint secrets at rest: encrypted in the store, opened only with the right key.

Each test reads the raw rows of the real database (the SQLite file, PostgreSQL)
and starts tidings through its real start path.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
import structlog
from pydantic import SecretStr

from support.api import bearer, new_endpoint, new_tenant, send
from support.receivers import Receiver
from support.served import served, started
from support.stores import BOTH_BACKENDS, ENCRYPTION_KEY
from support.waiting import wait_for
from tidings.app import Tidings, load_keys, open_secrets
from tidings.config import Settings
from tidings.crypto import Keyring, generate_key, is_sealed, key_id_of
from tidings.exceptions import EncryptionKeyError

OTHER_KEY = generate_key()


def raw(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` read (or written) straight from the database, past tidings."""
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = db.execute(sql.replace("%s", "?"), params).fetchall()
            db.commit()
            return rows
        finally:
            db.close()
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def stored_secrets(url: str, endpoint_id: str) -> tuple[str, str | None]:
    [(secret, previous)] = raw(
        url, "SELECT secret, previous_secret FROM endpoints WHERE id = %s", endpoint_id
    )
    return secret, previous


@BOTH_BACKENDS
async def test_secrets_are_stored_encrypted_and_still_sign(
    make_settings: Callable[..., Settings], database_url: str, receiver: Receiver
) -> None:
    async with served(make_settings()) as (_, client):
        _, key = await new_tenant(client)
        endpoint = await new_endpoint(client, key, receiver.url)
        first = endpoint["secret"]
        rotated = await client.post(
            f"/v1/endpoints/{endpoint['id']}/rotate-secret", headers=bearer(key)
        )
        current = rotated.json()["secret"]
        receiver.secret = first  # the previous secret still signs during its grace
        await send(client, key)
        await wait_for(lambda: len(receiver.received) == 1)

    secret, previous = stored_secrets(database_url, endpoint["id"])
    assert first.startswith("whsec_")
    assert current.startswith("whsec_")
    assert is_sealed(secret)
    assert previous is not None
    assert is_sealed(previous)
    assert current not in secret
    assert first not in previous
    assert receiver.received[0].verified is True
    dump = raw(database_url, "SELECT * FROM endpoints")
    assert "whsec_" not in repr(dump)


@BOTH_BACKENDS
async def test_a_store_read_with_the_wrong_key_is_a_clear_start_up_error(
    make_settings: Callable[..., Settings], database_url: str, receiver: Receiver
) -> None:
    async with served(make_settings(encryption_key=SecretStr(ENCRYPTION_KEY))) as (_, client):
        _, key = await new_tenant(client)
        await new_endpoint(client, key, receiver.url)

    wrong = Tidings(make_settings(encryption_key=SecretStr(OTHER_KEY)))
    with pytest.raises(EncryptionKeyError) as caught:
        await wrong.start()
    await wrong.store.close()

    message = caught.value.detail
    assert message.startswith("TIDINGS_ENCRYPTION_KEY does not open this store's secrets")
    assert Keyring.parse(ENCRYPTION_KEY).sealing_id in message  # the key it needs
    assert Keyring.parse(OTHER_KEY).sealing_id in message  # the key given
    assert ENCRYPTION_KEY not in message
    assert OTHER_KEY not in message


@BOTH_BACKENDS
async def test_a_store_without_endpoints_still_refuses_the_wrong_key(
    make_settings: Callable[..., Settings],
) -> None:
    async with served(make_settings(encryption_key=SecretStr(ENCRYPTION_KEY))):
        pass

    wrong = Tidings(make_settings(encryption_key=SecretStr(OTHER_KEY)))
    with pytest.raises(EncryptionKeyError, match="does not open this store's secrets"):
        await wrong.start()
    await wrong.store.close()


@BOTH_BACKENDS
async def test_plaintext_secrets_of_an_older_store_are_encrypted_at_the_first_start(
    make_settings: Callable[..., Settings],
    database_url: str,
    make_receiver: Callable[..., Awaitable[Receiver]],
) -> None:
    settings = make_settings(encryption_key=SecretStr(ENCRYPTION_KEY))
    receivers = [await make_receiver(), await make_receiver()]
    async with served(settings) as (_, client):
        _, key = await new_tenant(client)
        endpoints = [await new_endpoint(client, key, r.url) for r in receivers]
    # The store as tidings kept it before: secrets in plaintext, and no canary.
    for endpoint in endpoints:
        raw(
            database_url,
            "UPDATE endpoints SET secret = %s, previous_secret = NULL WHERE id = %s",
            endpoint["secret"],
            endpoint["id"],
        )
    raw(database_url, "DELETE FROM settings WHERE key = 'encryption_canary'")

    with structlog.testing.capture_logs() as logs:
        async with served(settings) as (_, client):
            for receiver, endpoint in zip(receivers, endpoints, strict=True):
                receiver.secret = endpoint["secret"]
            await send(client, key)
            await wait_for(lambda: all(r.received for r in receivers))

    upgraded = [e for e in logs if e["event"] == "plaintext_secrets_encrypted"]
    assert [e["endpoints"] for e in upgraded] == [2]
    for endpoint in endpoints:
        secret, _ = stored_secrets(database_url, endpoint["id"])
        assert is_sealed(secret)
        assert endpoint["secret"] not in secret
    assert [r.received[0].verified for r in receivers] == [True, True]


@BOTH_BACKENDS
async def test_a_sealed_secret_copied_to_another_endpoint_does_not_open(
    make_settings: Callable[..., Settings], database_url: str, receiver: Receiver
) -> None:
    settings = make_settings(encryption_key=SecretStr(ENCRYPTION_KEY))
    async with served(settings) as (_, client):
        tenant_id, key = await new_tenant(client)
        mine, theirs = [await new_endpoint(client, key, receiver.url) for _ in range(2)]
    stolen, _ = stored_secrets(database_url, theirs["id"])
    raw(database_url, "UPDATE endpoints SET secret = %s WHERE id = %s", stolen, mine["id"])

    async with started(settings) as app:
        with pytest.raises(EncryptionKeyError, match=f"endpoint:{mine['id']}:secret does not"):
            await app.store.get_endpoint(tenant_id, mine["id"])


@BOTH_BACKENDS
async def test_the_key_file_is_used_only_for_sqlite(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """Unset, the key is a file beside an SQLite database; PostgreSQL refuses to start."""
    app = Tidings(make_settings(encryption_key=None))
    if database_url.startswith("sqlite"):
        await app.start()
        await app.stop()
        assert app.new_key_file is not None
        assert app.new_key_file.name == "tidings.db.key"
        return
    with pytest.raises(EncryptionKeyError) as caught:
        await app.start()
    await app.store.close()
    assert "TIDINGS_ENCRYPTION_KEY is required with PostgreSQL" in caught.value.detail
    assert "tidings generate-encryption-key" in caught.value.detail


async def test_a_lost_key_file_is_named_and_not_replaced(
    make_settings: Callable[..., Settings], database_url: str, receiver: Receiver
) -> None:
    """On SQLite (the database_url fixture's default): only there is a key file kept."""
    settings = make_settings(encryption_key=None)
    async with served(settings) as (_, client):
        _, key = await new_tenant(client)
        await new_endpoint(client, key, receiver.url)
    key_file = database_url.removeprefix("sqlite:///") + ".key"
    os.remove(key_file)

    app = Tidings(settings)
    with pytest.raises(EncryptionKeyError, match=r"the key file .*tidings.db.key is missing"):
        await app.start()
    await app.store.close()

    # Not replaced by a fresh key, so the next start still says what is wrong.
    assert os.path.basename(key_file) not in os.listdir(os.path.dirname(key_file))


@BOTH_BACKENDS
async def test_after_re_encryption_the_old_key_can_go(
    make_settings: Callable[..., Settings], database_url: str, receiver: Receiver
) -> None:
    new = generate_key()
    async with served(make_settings(encryption_key=SecretStr(ENCRYPTION_KEY))) as (_, client):
        _, key = await new_tenant(client)
        endpoint = await new_endpoint(client, key, receiver.url)
        await client.post(f"/v1/endpoints/{endpoint['id']}/rotate-secret", headers=bearer(key))

    rotating = Tidings(make_settings(encryption_key=SecretStr(f"{new},{ENCRYPTION_KEY}")))
    await open_secrets(rotating.store, load_keys(rotating.settings, rotating.store))
    assert await rotating.store.stale_secrets() == 1
    assert await rotating.store.reseal_secrets(limit=10) == 1
    assert await rotating.store.reseal_secrets(limit=10) == 0
    await rotating.store.close()

    new_id = Keyring.parse(new).sealing_id
    assert {key_id_of(s) for s in stored_secrets(database_url, endpoint["id"]) if s} == {new_id}
    receiver.secret = endpoint["secret"]  # the previous secret, still in its grace
    async with served(make_settings(encryption_key=SecretStr(new))) as (_, client):
        await send(client, key)
        await wait_for(lambda: len(receiver.received) == 1)
    assert receiver.received[0].verified is True
