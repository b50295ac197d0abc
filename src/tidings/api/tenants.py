"""Tenants and their API keys: the admin token's routes."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from tidings import ids
from tidings.api.auth import Admin, App
from tidings.api.schemas import (
    AlarmPolicyPatch,
    ApiKeyInfo,
    ApiKeyOut,
    PageOut,
    TenantIn,
    TenantOut,
    TenantPatch,
)
from tidings.app import sha256
from tidings.domain.alarms import merged_overrides, policy_of
from tidings.domain.models import ApiKey, Tenant
from tidings.exceptions import InvalidInput, NotFound

router = APIRouter(prefix="/v1/tenants", tags=["tenants"], dependencies=[Admin])

KEY_PREFIX = "tdk_"


@router.post("", status_code=201)
async def create_tenant(body: TenantIn, app: App) -> TenantOut:
    tenant = Tenant(
        id=ids.new_id(ids.TENANT),
        name=body.name,
        owner_email=str(body.owner_email),
        created_at=app.clock.now(),
        alarm_policy=_checked(None, body.alarm_policy),
    )
    await app.store.create_tenant(tenant)
    return TenantOut.of(tenant)


@router.patch("/{tenant_id}")
async def update_tenant(tenant_id: str, body: TenantPatch, app: App) -> TenantOut:
    """Change the tenant's name, owner email or alarm policy (the policy of each of its
    endpoints, but for the fields an endpoint sets itself)."""
    tenant = await _tenant(app, tenant_id)
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"alarm_policy"})
    for required in ("name", "owner_email"):
        if required in changes and changes[required] is None:
            del changes[required]
    if "alarm_policy" in body.model_fields_set:
        policy = _checked(tenant.alarm_policy, body.alarm_policy)
        await _check_endpoints(app, tenant_id, policy)
        changes["alarm_policy"] = policy
    updated = await app.store.update_tenant(tenant_id, changes)
    if updated is None:
        raise NotFound(f"no tenant {tenant_id!r}")
    app.dispatcher.endpoints_changed()
    return TenantOut.of(updated)


@router.get("")
async def list_tenants(
    app: App,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PageOut[TenantOut]:
    page = await app.store.list_tenants(cursor=cursor, limit=limit)
    return PageOut(data=[TenantOut.of(t) for t in page.items], next_cursor=page.next_cursor)


@router.get("/{tenant_id}")
async def get_tenant(tenant_id: str, app: App) -> TenantOut:
    return TenantOut.of(await _tenant(app, tenant_id))


@router.post("/{tenant_id}/api-keys", status_code=201)
async def create_api_key(tenant_id: str, app: App) -> ApiKeyOut:
    await _tenant(app, tenant_id)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        id=ids.new_id(ids.API_KEY),
        tenant_id=tenant_id,
        prefix=key[:12],
        key_hash=sha256(key),
        created_at=app.clock.now(),
    )
    await app.store.create_api_key(record)
    return ApiKeyOut(
        id=record.id,
        tenant_id=tenant_id,
        prefix=record.prefix,
        key=key,
        created_at=record.created_at,
    )


@router.get("/{tenant_id}/api-keys")
async def list_api_keys(
    tenant_id: str,
    app: App,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PageOut[ApiKeyInfo]:
    """The tenant's API keys, newest first, revoked ones included: prefix, when each
    was made, last used and revoked. Never the key itself."""
    await _tenant(app, tenant_id)
    page = await app.store.list_api_keys(tenant_id, cursor=cursor, limit=limit)
    return PageOut(data=[ApiKeyInfo.of(k) for k in page.items], next_cursor=page.next_cursor)


@router.delete("/{tenant_id}/api-keys/{key_id}", status_code=204, response_class=Response)
async def revoke_api_key(tenant_id: str, key_id: str, app: App) -> Response:
    """Revoke the key: from now on every tidings process on this store refuses it
    (401). Revoking a revoked key changes nothing."""
    await _tenant(app, tenant_id)
    if await app.store.revoke_api_key(tenant_id, key_id, app.clock.now()) is None:
        raise NotFound(f"tenant {tenant_id!r} has no API key {key_id!r}")
    app.keys.forget()  # this process at once; the others hear "keys" from the store
    return Response(status_code=204)


def _checked(current: str | None, patch: AlarmPolicyPatch | None) -> str | None:
    """The tenant's alarm policy fields after ``patch`` (None: all removed), checked."""
    if patch is None:
        return None
    fields = merged_overrides(current, patch.model_dump(exclude_unset=True))
    try:
        policy_of(fields, None)
    except ValueError as exc:
        raise InvalidInput(f"alarm_policy: {exc}") from None
    return fields


async def _check_endpoints(app: App, tenant_id: str, policy: str | None) -> None:
    """Refuse a tenant policy that, with the fields an endpoint sets itself, would make
    that endpoint's policy invalid (a cool-down above its own maximum, say)."""
    cursor = None
    while True:
        page = await app.store.list_endpoints(tenant_id, cursor=cursor, limit=1000)
        for endpoint in page.items:
            try:
                policy_of(policy, endpoint.alarm_policy)
            except ValueError as exc:
                raise InvalidInput(
                    f"alarm_policy: with the fields endpoint {endpoint.id} sets itself, {exc}"
                ) from None
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


async def _tenant(app: App, tenant_id: str) -> Tenant:
    tenant = await app.store.get_tenant(tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id!r}")
    return tenant
