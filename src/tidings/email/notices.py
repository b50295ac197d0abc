"""Owner notices: what tidings tells a tenant's owner about one of its endpoints.

A notice is an email to the tenant's owner, sent through tidings' own email
channel (so it is durable, retried, and lands in the mail sink without SMTP),
and an operational event (``endpoint.<kind>``) in the tenant's own stream,
which any of its endpoints may subscribe to by name. Both are published with
the notice's record in one commit (:meth:`~tidings.store.ports.Store.publish_notice`).

The email uses the built-in template :data:`NOTICE_TEMPLATE`, whose name no
tenant template can take (a colon is not allowed in one); its text is written
in full for each notice, by :mod:`tidings.domain.notices`.
"""

from __future__ import annotations

from datetime import datetime

import orjson

from tidings import ids
from tidings.domain.models import EmailRequest, Endpoint, NewMessage, Tenant
from tidings.domain.notices import Facts, Notice, NoticeKind, event_of, text_of
from tidings.email.templates import Content, Template

NOTICE_TEMPLATE = "tidings:notice"
BUILTIN_TEMPLATES = {
    NOTICE_TEMPLATE: Template(
        name=NOTICE_TEMPLATE, content=Content("{{ subject }}", "{{ text }}", None)
    ),
}
LAST_ERRORS = 5


def notice(
    kind: NoticeKind,
    tenant: Tenant,
    endpoint: Endpoint,
    facts: Facts,
    now: datetime,
    api_base: str,
) -> tuple[Notice, list[NewMessage]]:
    """The notice of ``kind`` and what it publishes: the owner's email and the
    ``endpoint.<kind>`` event (their words are :mod:`tidings.domain.notices`')."""
    notice_id = ids.new_id(ids.NOTICE)
    event = event_of(kind, endpoint, facts, now)
    subject = f"[tidings] Your endpoint {endpoint.url} {kind.headline}"
    text = text_of(kind, endpoint, facts, api_base)
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
