"""Owner notices: their kinds, and what each says, as pure functions of the facts.

A notice tells a tenant's owner about one of its endpoints: a **warning** (it is
failing), a **critical** alarm (it is down, and its policy only alerts), its
**suspension** or its **resumption**. Sending one (the owner's email, the
``endpoint.<kind>`` event, the record that deduplicates it) is
:func:`tidings.email.notices.notice`'s; the words are written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from tidings.domain.alarms import Level
from tidings.domain.models import Endpoint

__all__ = ["Facts", "Notice", "NoticeKind", "event_of", "text_of"]


class NoticeKind(StrEnum):
    """What a notice is about. The value names its event (``endpoint.<kind>``), is
    stored with the notice, and is the ``kind`` label of ``tidings_notices`` (and,
    for the two alarm levels, the ``level`` label of ``tidings_alarms``)."""

    WARNING = "warning"
    CRITICAL = "critical"
    SUSPENDED = "suspended"
    RESUMED = "resumed"

    @property
    def alarm(self) -> Level | None:
        """The level of the alarm the notice reports (None: it reports none)."""
        return _ALARM.get(self)

    @property
    def headline(self) -> str:
        """What happened to the endpoint, as the subject and first line say it."""
        return _HEADLINE[self]


_ALARM = {NoticeKind.WARNING: Level.WARNING, NoticeKind.CRITICAL: Level.CRITICAL}
_HEADLINE = {
    NoticeKind.WARNING: "is failing",
    NoticeKind.CRITICAL: "is down",
    NoticeKind.SUSPENDED: "was suspended",
    NoticeKind.RESUMED: "was resumed",
}


@dataclass(frozen=True, slots=True)
class Notice:
    """A notice that was sent to a tenant's owner about one of its endpoints: its
    record keeps a notice of a kind to one URL at most once a day."""

    id: str
    tenant_id: str
    endpoint_id: str
    url: str
    kind: NoticeKind
    sent_at: datetime
    email_id: str | None  # the owner's email (``eml_…``), once published
    detail: str  # JSON: what it said


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


def event_of(kind: NoticeKind, endpoint: Endpoint, facts: Facts, now: datetime) -> dict[str, Any]:
    """The ``endpoint.<kind>`` event's body."""
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


def text_of(kind: NoticeKind, endpoint: Endpoint, facts: Facts, api_base: str) -> str:
    """The owner's email, in plain text: what happened, why, and what to do."""
    lines = [
        f"Your endpoint {endpoint.id} {kind.headline}.",
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
    if kind is NoticeKind.SUSPENDED:
        lines += [
            "Nothing is attempted while it is suspended, and nothing is lost: its",
            "deliveries are held, and new ones too. When it can take them again,",
            f"resume it with your API key:  {resume}",
            "Its held deliveries are then sent in the order they were created, at a",
            "pace it can take. Deliveries that died during the outage can be sent again",
            f"with POST {api_base}/v1/deliveries/replay"
            f' {{"endpoint_id": "{endpoint.id}", "since": …, "until": …}}.',
        ]
    elif kind is NoticeKind.RESUMED:
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
        if kind is NoticeKind.WARNING:
            lines.append("You get this warning at most once a day for this URL.")
    return "\n".join(lines) + "\n"


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")
