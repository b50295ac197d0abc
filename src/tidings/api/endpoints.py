"""Endpoints: where a tenant's messages go."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from tidings import ids
from tidings.api.auth import App, TenantId
from tidings.api.schemas import EndpointIn, EndpointOut, EndpointPatch, PageOut
from tidings.channels.signing import new_secret
from tidings.exceptions import NotFound
from tidings.models import Endpoint, EndpointState

router = APIRouter(prefix="/v1/endpoints", tags=["endpoints"])


@router.post("", status_code=201)
async def create_endpoint(body: EndpointIn, tenant_id: TenantId, app: App) -> EndpointOut:
    app.guard.check_url(body.url)
    now = app.clock.now()
    endpoint = Endpoint(
        id=ids.new_id(ids.ENDPOINT),
        tenant_id=tenant_id,
        url=body.url,
        description=body.description,
        event_types=tuple(dict.fromkeys(body.event_types)),
        secret=new_secret(),
        previous_secret=None,
        previous_secret_expires_at=None,
        max_in_flight=body.max_in_flight or app.settings.endpoint_max_in_flight,
        rate_limit_per_s=body.rate_limit_per_s,
        retry_schedule=tuple(body.retry_schedule) if body.retry_schedule else None,
        state=EndpointState.ACTIVE,
        disabled_reason=None,
        created_at=now,
        updated_at=now,
    )
    await app.store.create_endpoint(endpoint)
    app.dispatcher.endpoints_changed()
    return EndpointOut.of(endpoint, app.dispatcher.breaker(endpoint.id))


@router.get("")
async def list_endpoints(
    tenant_id: TenantId,
    app: App,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PageOut[EndpointOut]:
    page = await app.store.list_endpoints(tenant_id, cursor=cursor, limit=limit)
    found = [EndpointOut.of(e, app.dispatcher.breaker(e.id)) for e in page.items]
    return PageOut(data=found, next_cursor=page.next_cursor)


@router.get("/{endpoint_id}")
async def get_endpoint(endpoint_id: str, tenant_id: TenantId, app: App) -> EndpointOut:
    endpoint = await app.store.get_endpoint(tenant_id, endpoint_id)
    if endpoint is None:
        raise _not_found(endpoint_id)
    return EndpointOut.of(endpoint, app.dispatcher.breaker(endpoint.id))


@router.patch("/{endpoint_id}")
async def update_endpoint(
    endpoint_id: str, body: EndpointPatch, tenant_id: TenantId, app: App
) -> EndpointOut:
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)
    if changes.get("url") is not None:
        app.guard.check_url(changes["url"])
    for required in ("url", "description", "max_in_flight"):
        if required in changes and changes[required] is None:
            del changes[required]
    if "event_types" in changes:
        changes["event_types"] = list(dict.fromkeys(changes["event_types"] or []))
    return await _apply(app, tenant_id, endpoint_id, changes)


@router.delete("/{endpoint_id}", status_code=204)
async def delete_endpoint(endpoint_id: str, tenant_id: TenantId, app: App) -> Response:
    ended = await app.store.delete_endpoint(tenant_id, endpoint_id, app.clock.now())
    if ended is None:
        raise _not_found(endpoint_id)
    app.metrics.ended("deleted", ended)
    app.dispatcher.endpoints_changed()
    return Response(status_code=204)


@router.post("/{endpoint_id}/rotate-secret")
async def rotate_secret(endpoint_id: str, tenant_id: TenantId, app: App) -> EndpointOut:
    """A new signing secret; the old one keeps signing alongside it for the grace period."""
    endpoint = await app.store.get_endpoint(tenant_id, endpoint_id)
    if endpoint is None:
        raise _not_found(endpoint_id)
    changes = {
        "secret": new_secret(),
        "previous_secret": endpoint.secret,
        "previous_secret_expires_at": app.clock.now() + app.settings.secret_grace,
    }
    return await _apply(app, tenant_id, endpoint_id, changes)


async def _apply(
    app: App, tenant_id: str, endpoint_id: str, changes: dict[str, Any]
) -> EndpointOut:
    endpoint = await app.store.update_endpoint(tenant_id, endpoint_id, changes, app.clock.now())
    if endpoint is None:
        raise _not_found(endpoint_id)
    app.dispatcher.endpoints_changed()
    return EndpointOut.of(endpoint, app.dispatcher.breaker(endpoint.id))


def _not_found(endpoint_id: str) -> NotFound:
    return NotFound(f"no endpoint {endpoint_id!r}")
