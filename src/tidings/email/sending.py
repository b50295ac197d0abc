"""One attempt of an email: its template, the lookup that picks a variant, the send.

The engine claims an email's delivery like any other (from the tenant's email
lane) and hands it here. This reads the template as it is now, runs its lookup
(never in the API request: here, at send time, bounded by its timeout, and any
failure means the template's own content), renders the chosen variant and
sends it through SMTP, or into the embedded mail sink when no SMTP server is
configured. Rendering happens in the :class:`~tidings.email.renderer.Renderer`'s
child processes, bounded in time and memory: a template that breaks a bound is a
permanent refusal like any other fault of the template.

An email that can never be sent as it stands (its template was deleted, or
changed so a field is now missing) is a permanent refusal: the policy makes it
dead at once, and its ``email.failed`` callback says why.

:class:`EmailSender` is the :class:`~tidings.channels.base.Channel` of email
lanes: :meth:`~EmailSender.deliver` makes the attempt, and
:meth:`~EmailSender.settle` turns the policy's verdict into what the result
records (:mod:`tidings.email.callback`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson

from tidings.channels.base import Sent
from tidings.channels.email import OutgoingEmail, SmtpChannel, message_id
from tidings.channels.lookup import LookupOutcome, Lookups
from tidings.clock import Clock, SystemClock
from tidings.domain.models import Claimed, EmailOutcome, Endpoint, SinkEmail
from tidings.domain.outcome import ErrorClass, Outcome
from tidings.domain.retry import Decision
from tidings.email import templates
from tidings.email.callback import TIMED_OUT, Choice, email_outcome
from tidings.email.notices import BUILTIN_TEMPLATES
from tidings.email.renderer import Renderer
from tidings.email.stored import template_of
from tidings.events import Bus, LookupDone
from tidings.exceptions import InvalidInput
from tidings.store.ports import Emails, Templates

SINK_REPLY = "250 2.0.0 kept by the tidings mail sink"
TEMPLATE_TTL_S = 1.0
TEMPLATES_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class SentEmail(Sent):
    """An email's attempt, with the variant it chose (which :meth:`EmailSender.settle`
    records)."""

    choice: Choice


class TemplatesAndSink(Templates, Emails, Protocol):
    """What sending asks of the store: a tenant's templates, and the mail sink."""


class EmailSender:
    def __init__(
        self,
        store: TemplatesAndSink,
        lookups: Lookups,
        events: Bus,
        *,
        smtp: SmtpChannel | None,
        sender: str,
        message_id_domain: str,
        lookup_budget_s: float,
        renderer: Renderer | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._clock = clock or SystemClock()
        self.renderer = renderer or Renderer()
        """Compiles and renders every template, within its bounds; the API's too."""
        self._lookups = lookups
        self._events = events
        self._smtp = smtp
        self._sender = sender
        self._domain = message_id_domain
        # A lookup may use at most this much of an attempt (which is bounded by the
        # request timeout), so it ends, and counts towards its breaker, on its own.
        self._lookup_budget_ms = max(int(lookup_budget_s * 1000), 1)
        self._templates: dict[tuple[str, str], tuple[float, templates.Template | None]] = {}

    async def open(self) -> None:
        await self.renderer.open()

    async def close(self) -> None:
        await self.renderer.close()

    def forget(self, tenant_id: str, name: str) -> None:
        """A template changed or was deleted (through this process's API)."""
        self._templates.pop((tenant_id, name), None)

    async def _template(self, tenant_id: str, name: str) -> templates.Template | None:
        """The template as stored, read again at most every ``TEMPLATE_TTL_S``: a change
        made through another process takes effect within that time."""
        if name in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[name]
        now = self._clock.monotonic()
        cached = self._templates.get((tenant_id, name))
        if cached is not None and cached[0] > now:
            return cached[1]
        stored = await self._store.get_template(tenant_id, name)
        template = None if stored is None else template_of(stored)
        if len(self._templates) >= TEMPLATES_KEPT:
            self._templates.clear()
        self._templates[(tenant_id, name)] = (now + TEMPLATE_TTL_S, template)
        return template

    async def deliver(self, endpoint: Endpoint, job: Claimed, now: datetime) -> SentEmail:
        """Attempt the email of ``job``, claimed from the email lane ``endpoint``."""
        request = orjson.loads(job.payload)
        tenant_id = endpoint.tenant_id
        template = await self._template(tenant_id, request["template"])
        if template is None:
            return _refused(f"the template {request['template']!r} was deleted")
        values: dict[str, Any] = {**request.get("personalisation", {}), "to": request["to"]}
        try:
            choice = await self._choose(tenant_id, template, values)
            content = await self.renderer.render(template, choice.variant, values)
        except InvalidInput as exc:
            return _refused(exc.detail)
        choice = Choice(choice.variant, choice.reason, content.subject)
        email = OutgoingEmail(
            email_id=job.message_id,
            sender=self._sender,
            to=request["to"],
            subject=content.subject,
            text=content.text,
            html=content.html,
            reference=request.get("reference"),
        )
        if self._smtp is not None:
            sent = await self._smtp.send(email, now)
            return SentEmail(sent.outcome, sent.duration_ms, sent.excerpt, choice)
        await self._store.add_sink_email(
            SinkEmail(
                email_id=email.email_id,
                tenant_id=tenant_id,
                message_id_header=message_id(email.email_id, self._domain),
                sender=email.sender,
                to_address=email.to,
                subject=email.subject,
                text=email.text,
                html=email.html,
                received_at=now,
            )
        )
        return SentEmail(Outcome(250, protocol="SMTP"), 0.0, SINK_REPLY, choice)

    def settle(
        self, endpoint: Endpoint, job: Claimed, sent: Sent, decision: Decision, now: datetime
    ) -> EmailOutcome:
        """What the email's result records, and its status callback once settled."""
        choice = sent.choice if isinstance(sent, SentEmail) else TIMED_OUT
        return email_outcome(endpoint, job, choice, decision, now)

    async def _choose(
        self, tenant_id: str, template: templates.Template, values: dict[str, Any]
    ) -> Choice:
        lookup = template.lookup
        if lookup is None:
            return Choice(None, "the template has no lookup", None)
        url = await self.renderer.render_lookup_url(template, values)
        result = await self._lookups.fetch(
            f"{tenant_id}/{template.name}",
            url,
            lookup.select,
            min(lookup.timeout_ms, self._lookup_budget_ms),
            template.variants.keys(),
        )
        self._events.emit(LookupDone(template.name, result))
        if result.outcome is LookupOutcome.FOUND:
            return Choice(result.value, f"the lookup found {result.value!r}", None)
        if result.outcome is LookupOutcome.NOT_FOUND:
            return Choice(None, f"the lookup found {result.value!r}, which has no variant", None)
        return Choice(None, f"the lookup failed ({result.reason}): {result.detail}", None)


_NONE = Choice(None, "not sent", None)


def _refused(detail: str) -> SentEmail:
    outcome = Outcome(None, ErrorClass.UNSENDABLE, detail=detail, permanent=True)
    return SentEmail(outcome, 0.0, None, _NONE)
