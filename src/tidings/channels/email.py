"""The email channel: one rendered email per attempt over SMTP, through a small pool.

At most ``max_connections`` connected :class:`aiosmtplib.SMTP` clients are kept
and reused; a send takes an idle one, opens a new one while under the limit, or
waits for one to come back. A connection that failed, timed out or was closed by
the server is discarded rather than returned. If a *pooled* connection turns out
to be dead when used, the attempt is made once more on a fresh connection: a
stale idle connection is not the receiver's fault.

Like the webhook channel, :meth:`SmtpChannel.send` never raises for anything the
server or the network did; every result is an
:class:`~tidings.domain.outcome.Outcome` for the policy to judge:

====================================  ==============================================
what happened                         outcome
====================================  ==============================================
the server took the message (250)     ``status=250``
a 4xx reply to MAIL, RCPT or DATA     ``status=4xx``, retried
a 5xx reply to MAIL, RCPT or DATA     ``status=5xx, permanent=True``: dead at once
a refusal while setting up a session  ``status=code``, retried: a greeting, EHLO,
(greeting, EHLO, STARTTLS, AUTH)      STARTTLS or login refusal is about the
                                      server or our credentials, not this message
no connection / session set-up error  ``error="connect_error"``
no answer in time                     ``error="timeout"``
the server hung up mid-transaction    ``error="connection_closed"``
a message that cannot be sent at all  ``error="invalid_message", permanent=True``
(a CR/LF in a header, a bad address)
====================================  ==============================================

A message keeps the same ``Message-ID`` on every attempt (:func:`message_id`), so
a resend after a crash, or after a connection dropped between the end of DATA and
the server's reply, can be recognised by the receiving side.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime

from aiosmtplib import (
    SMTP,
    SMTPAuthenticationError,
    SMTPConnectResponseError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPStatus,
)

from tidings.channels.base import Sent
from tidings.channels.webhook import EXCERPT_BYTES
from tidings.domain.outcome import ErrorClass, Outcome
from tidings.smtp_url import SmtpSettings

__all__ = [
    "OutgoingEmail",
    "SmtpChannel",
    "build_message",
    "message_id",
]

_ID_PART = re.compile(r"[^\s<>@]+")


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """One rendered email, ready to send."""

    email_id: str
    """``eml_…``; the ``Message-ID`` is derived from it (:func:`message_id`)."""
    sender: str
    """The ``From`` header."""
    to: str
    subject: str
    text: str
    html: str | None = None
    reference: str | None = None
    """The producer's own reference, sent as ``X-Tidings-Reference`` when set."""


def message_id(email_id: str, domain: str) -> str:
    """``<eml_…@domain>``: the same on every attempt of one email."""
    if not _ID_PART.fullmatch(email_id) or not _ID_PART.fullmatch(domain):
        raise ValueError("an email id and a Message-ID domain may not contain spaces, <, > or @")
    return f"<{email_id}@{domain}>"


def build_message(email: OutgoingEmail, *, domain: str, now: datetime) -> EmailMessage:
    """The MIME message for one attempt: text, plus an HTML alternative when there is one.

    Raises ``ValueError`` for a header the email package refuses (a CR or LF in it).
    """
    message = EmailMessage()
    message["From"] = email.sender
    message["To"] = email.to
    message["Subject"] = email.subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id(email.email_id, domain)
    if email.reference is not None:
        message["X-Tidings-Reference"] = email.reference
    message.set_content(email.text)
    if email.html is not None:
        message.add_alternative(email.html, subtype="html")
    return message


class _SessionFailed(Exception):
    """Opening a session failed (connect, greeting, EHLO, STARTTLS or login)."""

    def __init__(self, cause: SMTPException | OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class SmtpChannel:
    """Sends :class:`OutgoingEmail` over SMTP through a pool of reused connections."""

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        max_connections: int = 4,
        message_id_domain: str = "tidings.local",
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        message_id("eml_check", message_id_domain)  # refuse a bad domain now, not per send
        self._settings = settings
        self._domain = message_id_domain
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[SMTP] = []
        self._local_hostname: str | None = None
        self._closed = True

    async def open(self) -> None:
        """Get ready to send. Connections are opened on demand, not here, so an SMTP
        server that is down does not stop the service from starting."""
        # aiosmtplib would otherwise look our name up in a thread on every connect.
        self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        self._closed = False

    async def close(self) -> None:
        """QUIT every idle connection, ignoring errors; one in use is closed when returned."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(client) for client in idle))

    async def send(self, email: OutgoingEmail, now: datetime) -> Sent:
        """Make one attempt, dated ``now``; never raises for anything the server or
        network did."""
        assert not self._closed, "SmtpChannel.open() was not awaited"
        started = time.perf_counter()
        try:
            message = build_message(email, domain=self._domain, now=now)
            reply = await self._transact(message, email.to)
        except _SessionFailed as exc:
            outcome, excerpt = _session_outcome(exc.cause)
        except (SMTPException, OSError, ValueError) as exc:
            outcome, excerpt = _transaction_outcome(exc)
        else:
            # aiosmtplib raises SMTPDataError for any reply to DATA but 250.
            outcome, excerpt = Outcome(int(SMTPStatus.completed), protocol="SMTP"), _cut(reply)
        return Sent(outcome, _ms_since(started), excerpt)

    async def _transact(self, message: EmailMessage, to: str) -> str:
        async with self._slots:
            client = self._take_idle()
            if client is not None:
                try:
                    return await self._deliver(client, message, to)
                except SMTPServerDisconnected:
                    pass  # a stale pooled connection: once more, on a fresh one
            return await self._deliver(await self._connect(), message, to)

    def _take_idle(self) -> SMTP | None:
        while self._idle:
            client = self._idle.pop()  # the most recently used is the least likely stale
            if client.is_connected:
                return client
            client.close()
        return None

    async def _connect(self) -> SMTP:
        settings = self._settings
        client = SMTP(
            hostname=settings.host,
            port=settings.port,
            username=settings.username,
            password=settings.password,
            local_hostname=self._local_hostname,
            timeout=settings.timeout_s,
            use_tls=settings.tls == "tls",
            start_tls=settings.tls == "starttls",
        )
        try:
            await client.connect()  # closes itself on failure
        except (SMTPException, OSError) as exc:
            raise _SessionFailed(exc) from exc
        return client

    async def _deliver(self, client: SMTP, message: EmailMessage, to: str) -> str:
        """One transaction on ``client``, which goes back to the pool only if it is
        still in step with the server."""
        reusable = False
        try:
            _refused, reply = await client.send_message(
                message, sender=self._settings.sender, recipients=[to]
            )
            reusable = True
            return reply
        except (SMTPRecipientsRefused, SMTPNotSupported, ValueError):
            reusable = True  # refused with a reply (then RSET), or before any command
            raise
        except SMTPResponseException as exc:
            reusable = exc.code > 0  # not after a reply aiosmtplib could not parse
            raise
        finally:
            self._check_in(client, reusable=reusable)

    def _check_in(self, client: SMTP, *, reusable: bool) -> None:
        if reusable and not self._closed and client.is_connected:
            self._idle.append(client)
        else:
            client.close()


async def _quit(client: SMTP) -> None:
    try:
        await client.quit()
    except (SMTPException, OSError):
        pass
    finally:
        client.close()


def _transaction_outcome(exc: SMTPException | OSError | ValueError) -> tuple[Outcome, str | None]:
    """What a failed MAIL/RCPT/DATA transaction (or a message that could not be built) means."""
    if isinstance(exc, SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, SMTPResponseException) and exc.code > 0:
        text = _cut(exc.message)
        outcome = Outcome(exc.code, protocol="SMTP", detail=text, permanent=500 <= exc.code <= 599)
        return outcome, text
    if isinstance(exc, SMTPResponseException):
        return Outcome(None, ErrorClass.PROTOCOL_ERROR, detail=_cut(exc.message)), None
    if isinstance(exc, TimeoutError):
        return Outcome(
            None, ErrorClass.TIMEOUT, detail="the SMTP server did not answer in time"
        ), None
    if isinstance(exc, OSError):
        detail = str(exc) or "the SMTP server closed the connection"
        return Outcome(None, ErrorClass.CONNECTION_CLOSED, detail=detail), None
    if isinstance(exc, SMTPNotSupported | ValueError):
        return Outcome(None, ErrorClass.INVALID_MESSAGE, detail=str(exc), permanent=True), None
    return Outcome(None, ErrorClass.CLIENT_ERROR, detail=f"{type(exc).__name__}: {exc}"), None


def _session_outcome(exc: SMTPException | OSError) -> tuple[Outcome, str | None]:
    """What a failure to open a session means: never permanent, as it is not about
    this message."""
    if isinstance(exc, TimeoutError):
        return Outcome(None, ErrorClass.TIMEOUT, detail=f"connecting: {exc}"), None
    if isinstance(exc, SMTPResponseException) and exc.code > 0:
        text = _cut(exc.message)
        return Outcome(exc.code, protocol="SMTP", detail=f"{_stage(exc)}: {text}"), text
    return Outcome(None, ErrorClass.CONNECT_ERROR, detail=str(exc) or type(exc).__name__), None


def _stage(exc: SMTPResponseException) -> str:
    if isinstance(exc, SMTPConnectResponseError):
        return "greeting refused"
    if isinstance(exc, SMTPHeloError):
        return "EHLO refused"
    if isinstance(exc, SMTPAuthenticationError):
        return "login refused"
    return "session refused"


def _cut(text: str) -> str:
    """``text`` cut to :data:`~tidings.channels.webhook.EXCERPT_BYTES` of UTF-8."""
    return text.encode("utf-8", "replace")[:EXCERPT_BYTES].decode("utf-8", "ignore")


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
