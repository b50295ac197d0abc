"""Tenants, API keys, endpoints, templates, the mail sink and settings: kept, changed,
listed page by page, each tenant's own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest

import given
from given import NOW
from support.stores import ENCRYPTION_KEY, KEYRING
from tidings import ids
from tidings.crypto import Keyring, generate_key
from tidings.domain.models import (
    ApiKey,
    DeliveryFilter,
    DeliveryState,
    Page,
    SinkEmail,
    StoredTemplate,
    Tenant,
)
from tidings.exceptions import EncryptionKeyError
from tidings.store import Store

T = TypeVar("T")


async def _every_page(list_page: Callable[[str | None], Awaitable[Page[T]]]) -> list[T]:
    """Every item, following the cursors page after page; checks each page is full but
    the last."""
    found: list[T] = []
    cursor: str | None = None
    while True:
        page = await list_page(cursor)
        found += page.items
        if page.next_cursor is None:
            return found
        assert len(page.items) == 2
        cursor = page.next_cursor


async def test_settings_are_kept_and_replaced(store: Store) -> None:
    assert await store.get_setting("x") is None
    await store.set_setting("x", "1")
    await store.set_setting("x", "2")
    assert await store.get_setting("x") == "2"


async def test_tenants_are_listed_newest_first_page_by_page(store: Store) -> None:
    made = [
        Tenant(ids.new_id(ids.TENANT, now_ms=1_000 + n), f"t{n}", "o@x.example", NOW)
        for n in range(5)
    ]
    for tenant in made:
        await store.create_tenant(tenant)

    listed = await _every_page(lambda c: store.list_tenants(cursor=c, limit=2))

    assert listed == made[::-1]
    assert await store.get_tenant(made[0].id) == made[0]
    assert await store.get_tenant("tnt_missing") is None


async def test_a_tenant_is_changed_and_its_endpoints_read_its_alarm_policy(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    policy = '{"drain_rate_per_s": 7.0}'

    changed = await store.update_tenant(tenant_id, {"alarm_policy": policy, "name": "renamed"})

    assert changed is not None
    assert (changed.name, changed.alarm_policy) == ("renamed", policy)
    assert await store.update_tenant(tenant_id, {}) == changed
    assert await store.update_tenant("tnt_missing", {"name": "x"}) is None
    found = await store.get_endpoint(tenant_id, endpoint)
    assert found is not None
    assert found.tenant_alarm_policy == policy
    assert found.policy.drain_rate_per_s == 7.0


def _key(tenant_id: str, n: int) -> ApiKey:
    return ApiKey(
        id=ids.new_id(ids.API_KEY, now_ms=1_000 + n),
        tenant_id=tenant_id,
        prefix=f"tdk_{n}",
        key_hash=f"hash-{tenant_id}-{n}",
        created_at=NOW,
    )


async def test_api_keys_are_found_by_hash_until_revoked(store: Store) -> None:
    tenant_id = await given.tenant(store)
    other = await given.tenant(store)
    keys = [_key(tenant_id, n) for n in range(3)]
    for key in keys:
        await store.create_api_key(key)
    await store.create_api_key(_key(other, 9))

    assert await store.api_key_for_hash(keys[1].key_hash) == keys[1]
    assert await store.api_key_for_hash("hash-unknown") is None
    assert await store.revoke_api_key(other, keys[1].id, NOW) is None  # not theirs
    revoked = await store.revoke_api_key(tenant_id, keys[1].id, NOW)
    assert revoked is not None
    assert revoked.revoked_at == NOW
    again = await store.revoke_api_key(tenant_id, keys[1].id, NOW + timedelta(hours=1))
    assert again is not None
    assert again.revoked_at == NOW  # the first revocation's time stays
    assert await store.api_key_for_hash(keys[1].key_hash) is None
    assert await store.revoke_api_key(tenant_id, "key_missing", NOW) is None

    await store.touch_api_key(keys[0].id, NOW + timedelta(minutes=3))
    listed = await _every_page(lambda c: store.list_api_keys(tenant_id, cursor=c, limit=2))
    assert [k.id for k in listed] == [k.id for k in keys[::-1]]  # revoked ones included
    shown = {k.id: k for k in listed}
    assert shown[keys[0].id].last_used_at == NOW + timedelta(minutes=3)
    assert shown[keys[1].id].revoked_at == NOW


async def test_endpoints_are_listed_page_by_page_without_deleted_ones(store: Store) -> None:
    tenant_id = await given.tenant(store)
    made = [
        await given.endpoint(store, tenant_id, id=ids.new_id(ids.ENDPOINT, now_ms=1_000 + n))
        for n in range(5)
    ]
    await given.endpoint(store, await given.tenant(store))  # another tenant's
    assert await store.delete_endpoint(tenant_id, made[2], NOW) == 0
    assert await store.delete_endpoint(tenant_id, made[2], NOW) is None  # gone already

    listed = await _every_page(lambda c: store.list_endpoints(tenant_id, cursor=c, limit=2))

    assert [e.id for e in listed] == [made[4], made[3], made[1], made[0]]
    assert await store.get_endpoint(tenant_id, made[2]) is None
    assert made[2] not in {e.id for e in await store.active_endpoints()}


async def test_an_endpoint_is_kept_as_given_and_changed_field_by_field(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(
        store,
        tenant_id,
        ("a", "b"),
        description="orders",
        max_in_flight=3,
        rate_limit_per_s=2.5,
        retry_schedule=(1.0, 10.0),
        previous_secret="whsec_old",
        previous_secret_expires_at=NOW + timedelta(hours=1),
    )
    found = await store.get_endpoint(tenant_id, endpoint)
    assert found is not None
    assert (found.event_types, found.description, found.max_in_flight) == (("a", "b"), "orders", 3)
    assert (found.rate_limit_per_s, found.retry_schedule) == (2.5, (1.0, 10.0))
    assert found.previous_secret == "whsec_old"
    assert found.signing_secrets(NOW) == (found.secret, "whsec_old")
    later = NOW + timedelta(minutes=1)

    changed = await store.update_endpoint(
        tenant_id,
        endpoint,
        {"event_types": None, "retry_schedule": None, "url": "http://127.0.0.1:8/x"},
        later,
    )

    assert changed is not None
    assert (changed.event_types, changed.retry_schedule) == ((), None)
    assert (changed.url, changed.updated_at, changed.created_at) == (
        "http://127.0.0.1:8/x",
        later,
        NOW,
    )
    assert (changed.secret, changed.description) == (found.secret, "orders")
    again = await store.update_endpoint(
        tenant_id, endpoint, {"event_types": ["c"], "retry_schedule": [5, 6]}, later
    )
    assert again is not None
    assert (again.event_types, again.retry_schedule) == (("c",), (5, 6))
    assert await store.get_endpoint(tenant_id, endpoint) == again
    other = await given.tenant(store)
    assert await store.get_endpoint(other, endpoint) is None
    assert await store.update_endpoint(other, endpoint, {"description": "x"}, later) is None


async def test_deleting_an_endpoint_ends_its_waiting_deliveries(store: Store) -> None:
    tenant_id = await given.tenant(store)
    endpoint = await given.endpoint(store, tenant_id)
    await given.accept(store, *[given.message(tenant_id) for _ in range(3)])
    [done] = await store.claim({endpoint: 1}, NOW, given.LEASE)
    await store.record_results([given.result(done, DeliveryState.SUCCEEDED)], NOW)

    assert await store.delete_endpoint(await given.tenant(store), endpoint, NOW) is None
    assert await store.delete_endpoint(tenant_id, endpoint, NOW) == 2

    page = await store.list_deliveries(tenant_id, DeliveryFilter(), cursor=None, limit=10)
    assert sorted((d.state, str(d.dead_reason)) for d in page.items) == sorted(
        [(DeliveryState.SUCCEEDED, "None")]
        + [(DeliveryState.DEAD, "deleted: the endpoint was deleted")] * 2
    )
    assert await given.accept(store, given.message(tenant_id)) != []
    assert (await store.queue_depth())[DeliveryState.PENDING] == 0  # it gets nothing new


async def test_deliveries_are_listed_by_filter_newest_first_page_by_page(store: Store) -> None:
    tenant_id = await given.tenant(store)
    first = await given.endpoint(store, tenant_id, ("a",))
    second = await given.endpoint(store, tenant_id, ("a", "b"))
    made = [
        await given.accept(
            store, given.message(tenant_id, event_type=t), at=NOW + timedelta(minutes=n)
        )
        for n, t in enumerate(["a", "b", "a", "b"])
    ]
    [done] = await store.claim({second: 1}, NOW + timedelta(hours=1), given.LEASE)
    await store.record_results([given.result(done, DeliveryState.SUCCEEDED)], NOW)
    await given.accept(store, given.message(await given.tenant(store)))  # not theirs

    def listed(where: DeliveryFilter) -> Callable[[str | None], Awaitable[Page[Any]]]:
        return lambda c: store.list_deliveries(tenant_id, where, cursor=c, limit=2)

    every = await _every_page(listed(DeliveryFilter()))
    assert len(every) == 6
    assert [d.id for d in every] == sorted((d.id for d in every), reverse=True)
    assert len(await _every_page(listed(DeliveryFilter(endpoint_id=first)))) == 2
    [one] = await _every_page(listed(DeliveryFilter(state=DeliveryState.SUCCEEDED)))
    assert one.id == done.delivery_id
    by_message = await _every_page(listed(DeliveryFilter(message_id=made[0][0].message_id)))
    assert {d.endpoint_id for d in by_message} == {first, second}
    window = DeliveryFilter(since=NOW + timedelta(minutes=1), until=NOW + timedelta(minutes=3))
    assert {d.message_id for d in await _every_page(listed(window))} == {
        made[1][0].message_id,
        made[2][0].message_id,
    }


def _template(tenant_id: str, name: str, definition: str = "{}") -> StoredTemplate:
    return StoredTemplate(tenant_id, name, definition, NOW, NOW)


async def test_templates_are_created_once_replaced_listed_and_deleted(store: Store) -> None:
    tenant_id = await given.tenant(store)
    other = await given.tenant(store)
    for name in ("c", "a", "e", "b", "d"):
        assert await store.put_template(_template(tenant_id, name), create=True)
    assert await store.put_template(_template(other, "z"), create=True)

    assert not await store.put_template(_template(tenant_id, "a", '{"x": 1}'), create=True)
    assert not await store.put_template(_template(tenant_id, "y"), create=False)
    replaced = StoredTemplate(tenant_id, "a", '{"x": 2}', NOW, NOW + timedelta(hours=1))
    assert await store.put_template(replaced, create=False)
    assert await store.get_template(tenant_id, "a") == StoredTemplate(
        tenant_id, "a", '{"x": 2}', NOW, NOW + timedelta(hours=1)
    )
    assert await store.get_template(other, "a") is None

    listed = await _every_page(lambda c: store.list_templates(tenant_id, cursor=c, limit=2))
    assert [t.name for t in listed] == ["a", "b", "c", "d", "e"]
    assert await store.template_names() == ["a", "b", "c", "d", "e", "z"]
    assert await store.delete_template(tenant_id, "c")
    assert not await store.delete_template(tenant_id, "c")
    assert not await store.delete_template(other, "a")
    assert await store.template_names() == ["a", "b", "d", "e", "z"]


def _sink(tenant_id: str, n: int, subject: str = "hi") -> SinkEmail:
    return SinkEmail(
        email_id=ids.new_id(ids.EMAIL, now_ms=1_000 + n),
        tenant_id=tenant_id,
        message_id_header=f"<{n}@tidings>",
        sender="tidings@example.com",
        to_address="ada@example.com",
        subject=subject,
        text="hello",
        html=None,
        received_at=NOW,
    )


async def test_the_mail_sink_keeps_the_last_copy_of_each_email_newest_first(store: Store) -> None:
    tenant_id = await given.tenant(store)
    made = [_sink(tenant_id, n) for n in range(5)]
    for email in made:
        await store.add_sink_email(email)
    resent = SinkEmail(**{**_fields(made[1]), "subject": "again"})
    await store.add_sink_email(resent)
    await store.add_sink_email(_sink(await given.tenant(store), 9))

    listed = await _every_page(lambda c: store.list_sink_emails(tenant_id, cursor=c, limit=2))

    assert listed == [made[4], made[3], made[2], resent, made[0]]


def _fields(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


async def test_secrets_are_locked_until_the_keys_are_given(
    make_store: Callable[[], Awaitable[Store]],
) -> None:
    store = await make_store()
    tenant_id = await given.tenant(store)
    with pytest.raises(EncryptionKeyError):
        await given.endpoint(store, tenant_id)
    assert await store.active_endpoints() == []  # nothing to open, so nothing to refuse

    assert await store.open_secrets(KEYRING) == 0
    endpoint = await given.endpoint(store, tenant_id, secret="whsec_plain")
    found = await store.get_endpoint(tenant_id, endpoint)
    assert found is not None
    assert found.secret == "whsec_plain"
    assert await store.stale_secrets() == 0
    assert await store.reseal_secrets(10) == 0


async def test_other_keys_do_not_open_the_store_until_it_was_sealed_again(
    make_store: Callable[[], Awaitable[Store]],
) -> None:
    first = await make_store()
    await first.open_secrets(KEYRING)
    other = Keyring.parse(generate_key())
    second = await make_store()

    with pytest.raises(EncryptionKeyError):
        await second.open_secrets(other)

    new_key = generate_key()
    await second.open_secrets(Keyring.parse(f"{new_key},{ENCRYPTION_KEY}"))  # the old one opens
    assert await second.reseal_secrets(10) == 0  # no secret was left under the old key
    third = await make_store()
    assert await third.open_secrets(Keyring.parse(new_key)) == 0  # the old key can go
