"""Emails: send one from a template, follow it, and read the embedded mail sink."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Header, Query, Response
from pydantic import BaseModel, Field

from tidings.api import problems
from tidings.api.auth import App, TenantId
from tidings.api.messages import IDEMPOTENCY_KEY_RULES, idempotency_key
from tidings.api.schemas import AttemptOut, Email, PageOut, PortableJson, _In
from tidings.domain.models import DeliveryState, EmailDetail, EmailRequest, SinkEmail
from tidings.exceptions import NotFound

router = APIRouter(tags=["email"])

EmailStatus = Literal["accepted", "sending", "retrying", "delivered", "failed", "held"]


class EmailIn(_In):
    to: Email
    template: str = Field(min_length=1, max_length=100)
    personalisation: dict[str, PortableJson] = Field(
        default_factory=dict, description="The values the template's fields take."
    )
    reference: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="Yours; it comes back in the status callbacks (no control characters).",
    )


class EmailAccepted(BaseModel):
    id: str
    status: EmailStatus


class EmailOut(BaseModel):
    id: str
    to: str
    template: str
    reference: str | None
    status: EmailStatus
    variant: str | None = Field(description="The variant sent; null: the template's own content.")
    variant_reason: str | None = Field(description="Why that variant was chosen.")
    subject: str | None
    failure: str | None = Field(description="Why the email failed (status `failed`).")
    created_at: datetime
    sent_at: datetime | None
    attempts: list[AttemptOut]

    @classmethod
    def of(cls, detail: EmailDetail) -> EmailOut:
        email = detail.email
        delivery = detail.message.deliveries[0]
        return cls(
            id=email.id,
            to=email.to_address,
            template=email.template,
            reference=email.reference,
            status=_status(delivery.state, delivery.attempts),
            variant=email.variant,
            variant_reason=email.variant_reason,
            subject=email.subject,
            failure=delivery.dead_reason,
            created_at=email.created_at,
            sent_at=email.sent_at,
            attempts=[AttemptOut.of(a) for a in detail.message.attempts.get(delivery.id, ())],
        )


class SinkEmailOut(BaseModel):
    id: str = Field(description="The email's id.")
    message_id: str = Field(description="The Message-ID header.")
    sender: str
    to: str
    subject: str
    text: str
    html: str | None
    received_at: datetime

    @classmethod
    def of(cls, email: SinkEmail) -> SinkEmailOut:
        return cls(
            id=email.email_id,
            message_id=email.message_id_header,
            sender=email.sender,
            to=email.to_address,
            subject=email.subject,
            text=email.text,
            html=email.html,
            received_at=email.received_at,
        )


def _status(state: DeliveryState, attempts: int) -> EmailStatus:
    if state is DeliveryState.PENDING:
        return "retrying" if attempts else "accepted"
    return _STATUS[state]


_STATUS: dict[DeliveryState, EmailStatus] = {
    DeliveryState.IN_FLIGHT: "sending",
    DeliveryState.SUCCEEDED: "delivered",
    DeliveryState.DEAD: "failed",
    DeliveryState.HELD: "held",
}


@router.post("/v1/emails", status_code=202, responses=problems.responses(409))
async def send_email(
    body: EmailIn,
    tenant_id: TenantId,
    app: App,
    response: Response,
    key: Annotated[str | None, Header(alias="Idempotency-Key", **IDEMPOTENCY_KEY_RULES)] = None,
) -> EmailAccepted:
    """Accept an email; the answer comes once it is committed. Every field the
    template uses must have a value (``to`` is always there)."""
    accepted = await app.service.accept_email(
        tenant_id,
        EmailRequest(body.to, body.template, body.reference),
        body.personalisation,
        orjson.dumps(body.model_dump(mode="json")),
        idempotency_key(key),
    )
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return EmailAccepted(id=accepted.message_id, status="accepted")


@router.get("/v1/emails/{email_id}")
async def get_email(email_id: str, tenant_id: TenantId, app: App) -> EmailOut:
    """An email's status, the variant sent and why, and its attempts."""
    detail = await app.store.get_email(tenant_id, email_id)
    if detail is None:
        raise NotFound(f"no email {email_id!r}")
    return EmailOut.of(detail)


@router.get("/v1/sink/emails", responses=problems.responses(404))
async def list_sink_emails(
    tenant_id: TenantId,
    app: App,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PageOut[SinkEmailOut]:
    """What the embedded mail sink received, newest first (without TIDINGS_SMTP_URL)."""
    if app.settings.smtp_url is not None:
        raise NotFound("the mail sink is off: emails go to the SMTP server of TIDINGS_SMTP_URL")
    page = await app.store.list_sink_emails(tenant_id, cursor=cursor, limit=limit)
    return PageOut(data=[SinkEmailOut.of(e) for e in page.items], next_cursor=page.next_cursor)
