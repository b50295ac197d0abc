"""Endpoints: where a tenant's messages go, their health, suspension and resumption."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from tidings import ids
from tidings.api import problems
from tidings.api.auth import App, TenantId, key_prefix
from tidings.api.schemas import (
    AlarmPolicyPatch,
    EndpointIn,
    EndpointOut,
    EndpointPatch,
    PageOut,
    ResumedOut,
    SuspendIn,
    SuspensionOut,
)
from tidings.app import Tidings
from tidings.channels.signing import new_secret
from tidings.domain.alarms import merged_overrides, policy_of
from tidings.domain.models import Endpoint, EndpointState
from tidings.domain.retry import DeadReason
from tidings.exceptions import InvalidInput, NotFound

router = APIRouter(prefix="/v1/endpoints", tags=["endpoints"])


@router.post("", status_code=201)
async def create_endpoint(body: EndpointIn, tenant_id: TenantId, app: App) -> EndpointOut:
    app.guard.check_url(body.url)
    now = app.clock.now()
    overrides = await _overrides(app, tenant_id, None, body.alarm_policy)
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
        alarm_policy=overrides,
    )
    await app.store.create_endpoint(endpoint)
    app.dispatcher.endpoints_changed()
    return await _shown(app, await _endpoint(app, tenant_id, endpoint.id))


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
    return await _shown(app, await _endpoint(app, tenant_id, endpoint_id))


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
    if "alarm_policy" in changes:
        endpoint = await _endpoint(app, tenant_id, endpoint_id)
        changes["alarm_policy"] = await _overrides(
            app, tenant_id, endpoint.alarm_policy, body.alarm_policy
        )
    return await _apply(app, tenant_id, endpoint_id, changes)


@router.delete("/{endpoint_id}", status_code=204)
async def delete_endpoint(endpoint_id: str, tenant_id: TenantId, app: App) -> Response:
    ended = await app.store.delete_endpoint(tenant_id, endpoint_id, app.clock.now())
    if ended is None:
        raise _not_found(endpoint_id)
    app.metrics.ended(DeadReason.DELETED, ended)
    app.dispatcher.endpoints_changed()
    return Response(status_code=204)


@router.post("/{endpoint_id}/rotate-secret")
async def rotate_secret(endpoint_id: str, tenant_id: TenantId, app: App) -> EndpointOut:
    """A new signing secret; the old one keeps signing alongside it for the grace period."""
    endpoint = await _endpoint(app, tenant_id, endpoint_id)
    changes = {
        "secret": new_secret(),
        "previous_secret": endpoint.secret,
        "previous_secret_expires_at": app.clock.now() + app.settings.secret_grace,
    }
    return await _apply(app, tenant_id, endpoint_id, changes)


@router.post("/{endpoint_id}/suspend", responses=problems.responses(409))
async def suspend_endpoint(
    endpoint_id: str, body: SuspendIn, tenant_id: TenantId, app: App, request: Request
) -> SuspensionOut:
    """Stop all attempts to the endpoint: its waiting and new deliveries are held (kept,
    not attempted, not dropped) until it is resumed; its owner is told."""
    endpoint = await _endpoint(app, tenant_id, endpoint_id)
    by = f"api key {key_prefix(request)}…"
    return SuspensionOut.of(await app.health.suspend(endpoint, body.reason, by))


@router.post("/{endpoint_id}/resume", responses=problems.responses(409))
async def resume_endpoint(
    endpoint_id: str, tenant_id: TenantId, app: App, request: Request
) -> ResumedOut:
    """Resume the endpoint: its held deliveries are sent in the order they were created,
    at its drain rate (its alarm policy's, or its rate limit if lower)."""
    endpoint = await _endpoint(app, tenant_id, endpoint_id)
    by = f"api key {key_prefix(request)}…"
    suspension, drained = await app.health.resume(endpoint, by)
    return ResumedOut(suspension=SuspensionOut.of(suspension), draining=drained)


async def _apply(
    app: App, tenant_id: str, endpoint_id: str, changes: dict[str, Any]
) -> EndpointOut:
    endpoint = await app.store.update_endpoint(tenant_id, endpoint_id, changes, app.clock.now())
    if endpoint is None:
        raise _not_found(endpoint_id)
    app.dispatcher.endpoints_changed()
    return await _shown(app, endpoint)


async def _overrides(
    app: Tidings, tenant_id: str, current: str | None, patch: AlarmPolicyPatch | None
) -> str | None:
    """The endpoint's alarm policy fields after ``patch`` (None: all removed), checked
    against its tenant's policy."""
    if patch is None:
        return None
    overrides = merged_overrides(current, patch.model_dump(exclude_unset=True))
    tenant = await app.store.get_tenant(tenant_id)
    try:
        policy_of(tenant.alarm_policy if tenant else None, overrides)
    except ValueError as exc:
        raise InvalidInput(f"alarm_policy: {exc}") from None
    return overrides


async def _endpoint(app: Tidings, tenant_id: str, endpoint_id: str) -> Endpoint:
    endpoint = await app.store.get_endpoint(tenant_id, endpoint_id)
    if endpoint is None:
        raise _not_found(endpoint_id)
    return endpoint


async def _shown(app: Tidings, endpoint: Endpoint) -> EndpointOut:
    health = await app.store.endpoint_health([endpoint.id])
    return EndpointOut.of(endpoint, health[endpoint.id], app.clock.now())


def _not_found(endpoint_id: str) -> NotFound:
    return NotFound(f"no endpoint {endpoint_id!r}")
