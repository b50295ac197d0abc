"""A store's life: migrated again at every start, answering, leading when alone."""

from __future__ import annotations

import given
from tidings.store import Store


async def test_a_store_migrated_again_keeps_what_it_has(store: Store) -> None:
    tenant_id = await given.tenant(store)

    await store.migrate()

    assert await store.get_tenant(tenant_id) is not None
    await store.ping()


async def test_a_store_alone_leads(store: Store) -> None:
    assert await store.lead() is True
    assert await store.lead() is True  # and keeps leading
