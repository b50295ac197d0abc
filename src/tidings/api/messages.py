"""Messages in, deliveries out: ingest, inspection, listing and replay."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import StringConstraints, TypeAdapter, ValidationError

from tidings.api import problems
from tidings.api.auth import App, TenantId, require_tenant, tidings_of
from tidings.api.problems import not_json, read_as_json
from tidings.api.schemas import (
    AcceptedOut,
    AttemptOut,
    DeliveryOut,
    DeliveryWithAttempts,
    Instant,
    MessageIn,
    MessageOut,
    PageOut,
    ReplayIn,
    ReplayOut,
)
from tidings.domain.models import DeliveryFilter, DeliveryState, NewMessage, ReplaySelector
from tidings.exceptions import NotFound
from tidings.service import message_request_hash

router = APIRouter(tags=["messages"])

_KEY_RULES: dict[str, Any] = {"minLength": 1, "maxLength": 200, "pattern": r"^[\x21-\x7e]+$"}
# The same rules for pydantic (here, and FastAPI's Header on POST /v1/emails).
IDEMPOTENCY_KEY_RULES: dict[str, Any] = {
    "min_length": 1,
    "max_length": 200,
    "pattern": _KEY_RULES["pattern"],
}
_IDEMPOTENCY_KEY: TypeAdapter[str] = TypeAdapter(
    Annotated[str, StringConstraints(**IDEMPOTENCY_KEY_RULES)]
)
_MESSAGE_IN: TypeAdapter[MessageIn] = TypeAdapter(MessageIn)


# POST /v1/messages is the hot path, so its handler takes the bare request and
# parses and validates the body in one pass (pydantic from the raw bytes):
# FastAPI's per-request dependency and body machinery cost more than the rest
# of ingest together. Its contract is documented here instead.
def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its ``$defs`` written in place: the document has no ``$defs``."""
    defs = schema.pop("$defs", {})
    for name, prop in schema["properties"].items():
        ref = prop.pop("$ref", None)
        if ref:
            schema["properties"][name] = {**defs[ref.rsplit("/", 1)[-1]], **prop}
    return schema


_INGEST_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inlined(MessageIn.model_json_schema())}},
    },
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", **_KEY_RULES},
            "description": "Resending with the same key and body returns the first answer; "
            "the same key with another body is a 409. Keys are kept for "
            "TIDINGS_IDEMPOTENCY_TTL (24 h by default).",
        }
    ],
}


@router.post(
    "/v1/messages",
    status_code=202,
    response_model=AcceptedOut,
    openapi_extra=_INGEST_OPENAPI,
    responses=problems.responses(409),
)
async def create_message(request: Request) -> Response:
    """Accept a message; the answer comes once it is committed to the store."""
    app = tidings_of(request)
    tenant_id = await require_tenant(request)
    if not read_as_json(request.headers.get("content-type")):
        return not_json()
    key = idempotency_key(request.headers.get("idempotency-key"))
    raw = await request.body()
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required"}]
        )
    try:
        body = _MESSAGE_IN.validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    payload = orjson.dumps(body.payload)
    request_hash = message_request_hash(body.event_type, payload)
    accepted = await app.service.accept(
        NewMessage(tenant_id, body.event_type, payload, key, request_hash)
    )
    answer = {
        "id": accepted.message_id,
        "deliveries": [{"id": d, "endpoint_id": e} for d, e in accepted.deliveries],
    }
    headers = {"Idempotent-Replayed": "true"} if accepted.replayed else None
    return Response(orjson.dumps(answer), 202, headers, media_type="application/json")


def idempotency_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header's value, validated (a 422 names the header)."""
    if value is None:
        return None
    try:
        return _IDEMPOTENCY_KEY.validate_python(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        for error in errors:
            error["loc"] = ("header", "Idempotency-Key")
        raise RequestValidationError(errors) from None


@router.get("/v1/messages/{message_id}")
async def get_message(message_id: str, tenant_id: TenantId, app: App) -> MessageOut:
    detail = await app.store.get_message(tenant_id, message_id)
    if detail is None:
        raise NotFound(f"no message {message_id!r}")
    message = detail.message
    return MessageOut(
        id=message.id,
        event_type=message.event_type,
        payload=orjson.loads(message.payload),
        idempotency_key=message.idempotency_key,
        created_at=message.created_at,
        deliveries=[
            DeliveryWithAttempts(
                **DeliveryOut.of(d).model_dump(),
                attempt_log=[AttemptOut.of(a) for a in detail.attempts.get(d.id, ())],
            )
            for d in detail.deliveries
        ],
    )


@router.get("/v1/deliveries")
async def list_deliveries(
    tenant_id: TenantId,
    app: App,
    state: DeliveryState | None = None,
    endpoint_id: str | None = None,
    message_id: str | None = None,
    since: Instant | None = None,
    until: Instant | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PageOut[DeliveryOut]:
    """Deliveries, newest first, filtered; follow ``next_cursor`` for the next page."""
    where = DeliveryFilter(state, endpoint_id, message_id, since, until)
    page = await app.store.list_deliveries(tenant_id, where, cursor=cursor, limit=limit)
    return PageOut(data=[DeliveryOut.of(d) for d in page.items], next_cursor=page.next_cursor)


@router.post("/v1/deliveries/replay", responses=problems.responses(404))
async def replay(body: ReplayIn, tenant_id: TenantId, app: App) -> ReplayOut:
    """Return dead or held deliveries to pending, to be attempted again at once."""
    selector = ReplaySelector(tuple(body.ids or ()), body.endpoint_id, body.since, body.until)
    return ReplayOut(replayed=await app.service.replay(tenant_id, selector))
