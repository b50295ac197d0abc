"""A store's life: migrated again at every start, answering, leading when alone."""

from __future__ import annotations

import given
from support.stores import hearing
from tidings.store import Changed, Store


async def test_a_store_migrated_again_keeps_what_it_has(store: Store) -> None:
    tenant_id = await given.tenant(store)

    await store.migrate()

    assert await store.get_tenant(tenant_id) is not None
    await store.ping()


async def test_a_store_alone_leads(store: Store) -> None:
    assert await store.lead() is True
    assert await store.lead() is True  # and keeps leading


async def test_a_committed_write_is_heard_in_process_before_it_returns(store: Store) -> None:
    heard: list[Changed] = []
    await store.listen(hearing(heard))
    tenant_id = await given.tenant(store)
    assert heard == []  # a new tenant changes nothing a listener keeps
    endpoint = await given.endpoint(store, tenant_id)
    assert heard == [Changed("endpoints")]
    heard.clear()

    await given.accept(
        store, given.message(tenant_id, key="k1"), given.message(tenant_id, key="k2")
    )
    assert heard == [Changed("work", (endpoint,))]  # the endpoints named, once each
    heard.clear()
    await given.accept(store, given.message(tenant_id, key="k1"))  # replayed: nothing new
    assert heard == []
