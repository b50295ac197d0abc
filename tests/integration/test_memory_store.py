"""What only the in-memory store does: a whole tidings on ``memory://``, and hearing
its own announcements in process. The behaviour it shares with SQLite and PostgreSQL
is the contract suite's (``tests/contract``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from support.api import delivery_states, new_endpoint, new_tenant, send
from support.factories import an_endpoint
from support.receivers import Receiver
from support.served import served
from support.stores import ENCRYPTION_KEY, KEYRING
from support.waiting import wait_for
from tidings.app import Tidings
from tidings.config import Settings
from tidings.domain.models import ApiKey, NewMessage, Tenant
from tidings.exceptions import EncryptionKeyError, StoreUnavailable
from tidings.store import open_store
from tidings.store.memory import MemoryStore
from tidings.store.ports import Change, Changed

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def test_a_tidings_on_memory_delivers_a_message_signed(
    make_settings: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = make_settings(database_url="memory://", encryption_key=SecretStr(ENCRYPTION_KEY))
    async with served(settings) as (app, client):
        assert isinstance(app.store, MemoryStore)
        _, key = await new_tenant(client)
        hook = await new_endpoint(client, key, receiver.url)
        receiver.secret = hook["secret"]

        accepted = await send(client, key, payload={"order": 42})

        await wait_for(lambda: len(receiver.received) == 1)
        assert receiver.received[0].verified is True
        assert receiver.received[0].webhook_id == accepted["id"]

        async def succeeded() -> bool:
            return await delivery_states(client, key, accepted["id"]) == ["succeeded"]

        await wait_for(succeeded)


async def test_every_listener_hears_what_each_write_announces() -> None:
    """Right after each write, as the SQL stores tell this process's listeners."""
    store = open_store("memory://")
    await store.migrate()
    await store.open_secrets(KEYRING)
    heard: list[Changed] = []
    await store.listen(heard.append)
    await store.create_tenant(Tenant("tnt_1", "acme", "ops@acme.example", NOW))
    await store.create_api_key(ApiKey("key_1", "tnt_1", "tdk_1", "hash-1", NOW))
    assert heard == []  # nothing any process caches

    endpoint = an_endpoint(tenant_id="tnt_1")
    await store.create_endpoint(endpoint)
    await store.ingest([NewMessage("tnt_1", "order.paid", b"{}", None, "h")], NOW, 60.0)
    await store.suspend_endpoint("tnt_1", endpoint.id, "down", "ops", NOW)
    await store.resume_endpoint("tnt_1", endpoint.id, "ops", NOW)
    await store.revoke_api_key("tnt_1", "key_1", NOW)
    await store.revoke_api_key("tnt_1", "key_1", NOW)  # revoked already: no news

    assert heard == [
        Changed(Change.ENDPOINTS),
        Changed(Change.WORK, (endpoint.id,)),
        Changed(Change.ENDPOINTS),
        Changed(Change.SCHEDULE),
        Changed(Change.KEYS),
    ]
    assert await store.lead() is True
    await store.close()


async def test_a_closed_store_answers_nothing() -> None:
    store = open_store("memory://")
    await store.ping()
    await store.close()

    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.get_tenant("tnt_1")


async def test_without_an_encryption_key_memory_refuses_to_start_and_says_why() -> None:
    app = Tidings(Settings(database_url="memory://", admin_token=SecretStr("admin")))

    with pytest.raises(EncryptionKeyError) as caught:
        await app.start()
    await app.store.close()

    assert "TIDINGS_ENCRYPTION_KEY is required" in caught.value.detail
    assert "memory://" in caught.value.detail
