"""An email's attempt as its result records it, and its delivery-status callback.

Once the policy has judged an email's attempt, its result records what was
chosen and sent (the variant, why, the subject) and, when the email's fate is
settled, the tenant's status callback: an ``email.delivered`` event (the SMTP
server accepted it) or ``email.failed`` (it died), published in the tenant's
own stream and so fanned out to its endpoints like any other event. An email
that will be tried again has no callback yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson

from tidings.domain.models import Claimed, EmailOutcome, Endpoint, NewMessage
from tidings.domain.retry import Decision, Verdict
from tidings.email.notices import BUILTIN_TEMPLATES

__all__ = ["TIMED_OUT", "Choice", "email_outcome"]


@dataclass(frozen=True, slots=True)
class Choice:
    """What was sent: the variant (None: the template's own content) and why."""

    variant: str | None
    reason: str
    subject: str | None


TIMED_OUT = Choice(None, "not sent: the attempt timed out", None)
"""The choice recorded for an attempt that outlasted its bound before it was sent."""


def email_outcome(
    lane: Endpoint, job: Claimed, choice: Choice, decision: Decision, now: datetime
) -> EmailOutcome:
    """What an email's attempt records, and its status callback once its fate is settled:
    ``email.delivered`` (the SMTP server accepted it) or ``email.failed``."""
    delivered = decision.verdict is Verdict.SUCCEEDED
    callback = None
    request = None if decision.verdict is Verdict.RETRY else orjson.loads(job.payload)
    # tidings' own emails (owner notices) are not the tenant's: no callback for them.
    if request is not None and request["template"] not in BUILTIN_TEMPLATES:
        status = "delivered" if delivered else "failed"
        event = {
            "id": job.message_id,
            "reference": request.get("reference"),
            "to": request["to"],
            "status": status,
            "time": now,
            "variant": choice.variant,
            "reason": decision.reason,
        }
        payload = orjson.dumps(event, option=orjson.OPT_UTC_Z)
        callback = NewMessage(lane.tenant_id, f"email.{status}", payload, None, "")
    return EmailOutcome(
        email_id=job.message_id,
        variant=choice.variant,
        variant_reason=choice.reason,
        subject=choice.subject,
        sent_at=now if delivered else None,
        callback=callback,
    )
