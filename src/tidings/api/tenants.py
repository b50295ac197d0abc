"""Tenants and their API keys: the admin token's routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from tidings.api.auth import Admin, App
from tidings.api.schemas import (
    ApiKeyInfo,
    ApiKeyOut,
    PageOut,
    TenantIn,
    TenantOut,
    TenantPatch,
    alarm_patch,
)

router = APIRouter(prefix="/v1/tenants", tags=["tenants"], dependencies=[Admin])


@router.post("", status_code=201)
async def create_tenant(body: TenantIn, app: App) -> TenantOut:
    tenant = await app.service.create_tenant(
        body.name, str(body.owner_email), alarm_patch(body.alarm_policy)
    )
    return TenantOut.of(tenant)


@router.patch("/{tenant_id}")
async def update_tenant(tenant_id: str, body: TenantPatch, app: App) -> TenantOut:
    """Change the tenant's name, owner email or alarm policy (the policy of each of its
    endpoints, but for the fields an endpoint sets itself)."""
    patch: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"alarm_policy"})
    if "alarm_policy" in body.model_fields_set:
        patch["alarm_policy"] = alarm_patch(body.alarm_policy)
    return TenantOut.of(await app.service.update_tenant(tenant_id, patch))


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
    return TenantOut.of(await app.service.tenant(tenant_id))


@router.post("/{tenant_id}/api-keys", status_code=201)
async def create_api_key(tenant_id: str, app: App) -> ApiKeyOut:
    record, key = await app.service.create_api_key(tenant_id)
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
    await app.service.tenant(tenant_id)
    page = await app.store.list_api_keys(tenant_id, cursor=cursor, limit=limit)
    return PageOut(data=[ApiKeyInfo.of(k) for k in page.items], next_cursor=page.next_cursor)


@router.delete("/{tenant_id}/api-keys/{key_id}", status_code=204, response_class=Response)
async def revoke_api_key(tenant_id: str, key_id: str, app: App) -> Response:
    """Revoke the key: from now on every tidings process on this store refuses it
    (401). Revoking a revoked key changes nothing."""
    await app.service.revoke_api_key(tenant_id, key_id)
    return Response(status_code=204)
