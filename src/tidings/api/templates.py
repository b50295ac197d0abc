"""Email templates: a subject, a text and an optional HTML body, in sandboxed Jinja2,
with an optional lookup whose answer picks a variant."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from tidings.api import problems
from tidings.api.auth import App, TenantId
from tidings.api.schemas import PORT_PATTERN, PageOut
from tidings.domain.models import StoredTemplate

router = APIRouter(prefix="/v1/templates", tags=["email"])

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
Name = Annotated[str, Path(pattern=NAME_PATTERN, description="The template's name.")]
_NOT_BLANK = {"pattern": r"\S"}  # checked by templates.check, with a better message
Subject = Annotated[str, Field(min_length=1, max_length=1000, json_schema_extra=_NOT_BLANK)]
Body = Annotated[str, Field(min_length=1, max_length=100_000, json_schema_extra=_NOT_BLANK)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VariantBody(_In):
    subject: Subject | None = None
    text: Body | None = None
    html: Body | None = None


# What the SSRF guard's check of a written-out URL lets through: the host written out,
# a port of digits, and no control character after it (placeholders may hold spaces).
LOOKUP_URL_PATTERN = rf"^https?://[A-Za-z0-9.-]*[A-Za-z][A-Za-z0-9-]*(?::{PORT_PATTERN})?(?:[/?#][^\x00-\x1f\x7f]*)?$"


class LookupBody(_In):
    url: str = Field(
        min_length=1,
        max_length=2048,
        description="A Jinja template of an http(s) URL; the values are URL-encoded. "
        "Its host must be written out.",
        json_schema_extra={"pattern": LOOKUP_URL_PATTERN},
    )
    timeout_ms: int = Field(default=2000, ge=1, le=10_000)
    select: str = Field(
        max_length=500,
        description="A JSON Pointer into the answer; its value picks a variant.",
        json_schema_extra={"pattern": r"^(?:/(?:[^~/]|~[01])*)*$"},
    )


class TemplateBody(_In):
    subject: Subject
    text: Body
    html: Body | None = None
    lookup: LookupBody | None = None
    variants: dict[Annotated[str, Field(min_length=1, max_length=200)], VariantBody] = Field(
        default_factory=dict,
        max_length=50,
        description="Keyed by the lookup's value as a string (`true`, `gold`, `42`).",
    )


class TemplateIn(TemplateBody):
    name: str = Field(pattern=NAME_PATTERN)


class TemplateOut(TemplateIn):
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, stored: StoredTemplate) -> TemplateOut:
        return cls(
            **orjson.loads(stored.definition),
            created_at=stored.created_at,
            updated_at=stored.updated_at,
        )


def _definition(name: str, body: TemplateBody) -> dict[str, Any]:
    return {"name": name, **body.model_dump(exclude_none=True)}


@router.post("", status_code=201, responses=problems.responses(409))
async def create_template(body: TemplateIn, tenant_id: TenantId, app: App) -> TemplateOut:
    """Create a template. A syntax error is refused with its part, line and message."""
    definition = _definition(body.name, TemplateBody(**body.model_dump(exclude={"name"})))
    return TemplateOut.of(await app.service.put_template(tenant_id, definition, create=True))


@router.get("")
async def list_templates(
    tenant_id: TenantId,
    app: App,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PageOut[TemplateOut]:
    """The tenant's templates, by name."""
    page = await app.store.list_templates(tenant_id, cursor=cursor, limit=limit)
    return PageOut(data=[TemplateOut.of(t) for t in page.items], next_cursor=page.next_cursor)


@router.get("/{name}")
async def get_template(name: Name, tenant_id: TenantId, app: App) -> TemplateOut:
    return TemplateOut.of(await app.service.template(tenant_id, name))


@router.put("/{name}")
async def replace_template(
    name: Name, body: TemplateBody, tenant_id: TenantId, app: App
) -> TemplateOut:
    """Replace a template whole. Emails not yet sent are sent with the new one."""
    definition = _definition(name, body)
    return TemplateOut.of(await app.service.put_template(tenant_id, definition, create=False))


@router.delete("/{name}", status_code=204)
async def delete_template(name: Name, tenant_id: TenantId, app: App) -> Response:
    """Delete a template; emails of it not yet sent fail (`email.failed`)."""
    await app.service.delete_template(tenant_id, name)
    return Response(status_code=204)
