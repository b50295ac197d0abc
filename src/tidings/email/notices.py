"""Owner notices: what tidings tells a tenant's owner about one of its endpoints.

A notice is an email to the tenant's owner, sent through tidings' own email
channel (so it is durable, retried, and lands in the mail sink without SMTP),
and an operational event (``endpoint.<kind>``) in the tenant's own stream,
which any of its endpoints may subscribe to by name. Both are published with
the notice's record in one commit (:meth:`~tidings.store.ports.Store.publish_notice`).

The email uses the built-in template :data:`NOTICE_TEMPLATE`, whose name no
tenant template can take (a colon is not allowed in one); its text is written
here, in full, for each notice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from tidings import ids
from tidings.domain.models import EmailRequest, Endpoint, NewMessage, Notice, Tenant
from tidings.email.templates import Content, Template

NOTICE_TEMPLATE = "tidings:notice"
BUILTIN_TEMPLATES = {
    NOTICE_TEMPLATE: Template(
        name=NOTICE_TEMPLATE, content=Content("{{ subject }}", "{{ text }}", None)
    ),
}
LAST_ERRORS = 5

_HEADLINE = {
    "warning": "is failing",
    "critical": "is down",
    "suspended": "was suspended",
    "resumed": "was resumed",
}


@dataclass(frozen=True, slots=True)
class Facts:
    """What a notice reports about an endpoint."""

    reason: str
    failed_attempts: int = 0
    dead_deliveries: int = 0
    failing_since: datetime | None = None
    last_errors: Sequence[tuple[datetime, str]] = ()
    held: int = 0
    drained: int = 0
    by: str | None = None


def notice(
    kind: str, tenant: Tenant, endpoint: Endpoint, facts: Facts, now: datetime, api_base: str
) -> tuple[Notice, list[NewMessage]]:
    """The notice of ``kind`` (warning, critical, suspended, resumed) and what it
    publishes: the owner's email and the ``endpoint.<kind>`` event."""
    notice_id = ids.new_id(ids.NOTICE)
    event = _event(kind, endpoint, facts, now)
    subject = f"[tidings] Your endpoint {endpoint.url} {_HEADLINE[kind]}"
    text = _text(kind, endpoint, facts, api_base)
    email_request = {
        "to": tenant.owner_email,
        "template": NOTICE_TEMPLATE,
        "personalisation": {"subject": subject, "text": text},
        "reference": notice_id,
    }
    published = [
        NewMessage(
            tenant.id,
            "email",
            orjson.dumps(email_request),
            None,
            "",
            EmailRequest(tenant.owner_email, NOTICE_TEMPLATE, notice_id),
        ),
        NewMessage(
            tenant.id, f"endpoint.{kind}", orjson.dumps(event, option=orjson.OPT_UTC_Z), None, ""
        ),
    ]
    record = Notice(
        id=notice_id,
        tenant_id=tenant.id,
        endpoint_id=endpoint.id,
        url=endpoint.url,
        kind=kind,
        sent_at=now,
        email_id=None,
        detail=orjson.dumps({"subject": subject, **event}, option=orjson.OPT_UTC_Z).decode(),
    )
    return record, published


def _event(kind: str, endpoint: Endpoint, facts: Facts, now: datetime) -> dict[str, Any]:
    return {
        "type": f"endpoint.{kind}",
        "endpoint_id": endpoint.id,
        "url": endpoint.url,
        "reason": facts.reason,
        "failed_attempts": facts.failed_attempts,
        "dead_deliveries": facts.dead_deliveries,
        "failing_since": facts.failing_since,
        "last_errors": [{"at": at, "error": error} for at, error in facts.last_errors],
        "held": facts.held,
        "drained": facts.drained,
        "by": facts.by,
        "time": now,
    }


def _text(kind: str, endpoint: Endpoint, facts: Facts, api_base: str) -> str:
    lines = [
        f"Your endpoint {endpoint.id} {_HEADLINE[kind]}.",
        "",
        f"URL:         {endpoint.url}",
    ]
    if endpoint.description:
        lines.append(f"Description: {endpoint.description}")
    lines += ["", f"Why: {facts.reason}", ""]
    lines.append(f"Failed attempts in the alarm window: {facts.failed_attempts}")
    lines.append(f"Deliveries that died in the critical window: {facts.dead_deliveries}")
    if facts.failing_since is not None:
        lines.append(f"Failing, with no success, since: {_time(facts.failing_since)}")
    lines.append(f"Deliveries held for it: {facts.held}")
    if facts.last_errors:
        lines += ["", "The last errors:"]
        lines += [f"  {_time(at)}  {error}" for at, error in facts.last_errors]
    lines.append("")
    resume = f"POST {api_base}/v1/endpoints/{endpoint.id}/resume"
    if kind == "suspended":
        lines += [
            "Nothing is attempted while it is suspended, and nothing is lost: its",
            "deliveries are held, and new ones too. When it can take them again,",
            f"resume it with your API key:  {resume}",
            "Its held deliveries are then sent in the order they were created, at a",
            "pace it can take. Deliveries that died during the outage can be sent again",
            f"with POST {api_base}/v1/deliveries/replay"
            f' {{"endpoint_id": "{endpoint.id}", "since": …, "until": …}}.',
        ]
    elif kind == "resumed":
        lines += [
            f"It was resumed by {facts.by}. Its {facts.drained} held deliveries are being",
            "sent again, in the order they were created, at a pace it can take.",
        ]
    else:
        lines += [
            "tidings keeps retrying it, with its circuit breaker bounding the attempts.",
            "To stop attempts until it is fixed:",
            f"  POST {api_base}/v1/endpoints/{endpoint.id}/suspend",
            f"and once it is fixed: {resume}",
        ]
        if kind == "warning":
            lines.append("You get this warning at most once a day for this URL.")
    return "\n".join(lines) + "\n"


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")
