"""Tenants and their API keys: the admin token's routes."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Query

from tidings import ids
from tidings.api.auth import Admin, App
from tidings.api.schemas import ApiKeyOut, PageOut, TenantIn, TenantOut
from tidings.app import sha256
from tidings.exceptions import NotFound
from tidings.models import ApiKey, Tenant

router = APIRouter(prefix="/v1/tenants", tags=["tenants"], dependencies=[Admin])

KEY_PREFIX = "tdk_"


@router.post("", status_code=201)
async def create_tenant(body: TenantIn, app: App) -> TenantOut:
    tenant = Tenant(
        id=ids.new_id(ids.TENANT),
        name=body.name,
        owner_email=str(body.owner_email),
        created_at=app.clock.now(),
    )
    await app.store.create_tenant(tenant)
    return TenantOut.of(tenant)


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


async def _tenant(app: App, tenant_id: str) -> Tenant:
    tenant = await app.store.get_tenant(tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id!r}")
    return tenant
