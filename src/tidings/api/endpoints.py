"""Endpoints: where a tenant's messages go, their health, suspension and resumption."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from tidings.api import problems
from tidings.api.auth import App, TenantId, key_prefix
from tidings.api.schemas import (
    EndpointIn,
    EndpointOut,
    EndpointPatch,
    PageOut,
    ResumedOut,
    SuspendIn,
    SuspensionOut,
    alarm_patch,
)
from tidings.app import Tidings
from tidings.domain.models import Endpoint

router = APIRouter(prefix="/v1/endpoints", tags=["endpoints"])


@router.post("", status_code=201)
async def create_endpoint(body: EndpointIn, tenant_id: TenantId, app: App) -> EndpointOut:
    endpoint = await app.service.create_endpoint(
        tenant_id,
        url=body.url,
        description=body.description,
        event_types=body.event_types,
        max_in_flight=body.max_in_flight,
        rate_limit_per_s=body.rate_limit_per_s,
        retry_schedule=body.retry_schedule,
        alarm_policy=alarm_patch(body.alarm_policy),
    )
    return await _shown(app, endpoint)


@router.get("")
async def list_endpoints(
    tenant_id: TenantId,
    app: App,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PageOut[EndpointOut]:
    page = await app.store.list_endpoints(tenant_id, cursor=cursor, limit=limit)
    health = await app.store.endpoint_health([e.id for e in page.items])
    now = app.clock.now()
    found = [EndpointOut.of(e, health[e.id], now) for e in page.items]
    return PageOut(data=found, next_cursor=page.next_cursor)


@router.get("/{endpoint_id}")
async def get_endpoint(endpoint_id: str, tenant_id: TenantId, app: App) -> EndpointOut:
    return await _shown(app, await app.service.endpoint(tenant_id, endpoint_id))


@router.patch("/{endpoint_id}")
async def update_endpoint(
    endpoint_id: str, body: EndpointPatch, tenant_id: TenantId, app: App
) -> EndpointOut:
    patch: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"alarm_policy"})
    if "alarm_policy" in body.model_fields_set:
        patch["alarm_policy"] = alarm_patch(body.alarm_policy)
    return await _shown(app, await app.service.update_endpoint(tenant_id, endpoint_id, patch))


@router.delete("/{endpoint_id}", status_code=204)
async def delete_endpoint(endpoint_id: str, tenant_id: TenantId, app: App) -> Response:
    await app.service.delete_endpoint(tenant_id, endpoint_id)
    return Response(status_code=204)


@router.post("/{endpoint_id}/rotate-secret")
async def rotate_secret(endpoint_id: str, tenant_id: TenantId, app: App) -> EndpointOut:
    """A new signing secret; the old one keeps signing alongside it for the grace period."""
    return await _shown(app, await app.service.rotate_secret(tenant_id, endpoint_id))


@router.post("/{endpoint_id}/suspend", responses=problems.responses(409))
async def suspend_endpoint(
    endpoint_id: str, body: SuspendIn, tenant_id: TenantId, app: App, request: Request
) -> SuspensionOut:
    """Stop all attempts to the endpoint: its waiting and new deliveries are held (kept,
    not attempted, not dropped) until it is resumed; its owner is told."""
    by = f"api key {key_prefix(request)}…"
    return SuspensionOut.of(await app.service.suspend(tenant_id, endpoint_id, body.reason, by))


@router.post("/{endpoint_id}/resume", responses=problems.responses(409))
async def resume_endpoint(
    endpoint_id: str, tenant_id: TenantId, app: App, request: Request
) -> ResumedOut:
    """Resume the endpoint: its held deliveries are sent in the order they were created,
    at its drain rate (its alarm policy's, or its rate limit if lower)."""
    by = f"api key {key_prefix(request)}…"
    suspension, drained = await app.service.resume(tenant_id, endpoint_id, by)
    return ResumedOut(suspension=SuspensionOut.of(suspension), draining=drained)


async def _shown(app: Tidings, endpoint: Endpoint) -> EndpointOut:
    health = await app.store.endpoint_health([endpoint.id])
    return EndpointOut.of(endpoint, health[endpoint.id], app.clock.now())
