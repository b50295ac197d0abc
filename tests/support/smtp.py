"""aiosmtpd servers for tests: each runs in aiosmtpd's own thread on 127.0.0.1 and plays
a script (canned replies, a dropped connection or a stall for the next MAIL, RCPT or DATA
commands), accepting whatever the script does not cover and keeping what it accepted.

The fixtures built from these (``start_smtp``, ``smtp``, ``mailbox``) are in
``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

from support.sockets import free_port

DROP = "drop the connection"  # a Mailbox script entry: close the connection instead
STALL = "never answer"  # a Mailbox script entry: say nothing until the server stops


@dataclass
class Mailbox:
    """An aiosmtpd handler: plays ``script``, keeps what it accepted."""

    script: dict[str, list[str]] = field(default_factory=dict)
    data_delay_s: float = 0.0
    received: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str | None, list[str]]] = field(default_factory=list)
    servers: list[SmtpServer] = field(default_factory=list)
    quits: int = 0

    @property
    def connections(self) -> int:
        return len(self.servers)

    def next(self, command: str, *replies: str) -> None:
        """Answer the next ``len(replies)`` ``command``s with ``replies``, in order."""
        self.script.setdefault(command, []).extend(replies)

    async def handle_MAIL(
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        scripted = await self._play("MAIL", server)
        if scripted is not None:
            return scripted
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        scripted = await self._play("RCPT", server)
        if scripted is not None:
            return scripted
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        scripted = await self._play("DATA", server)
        if scripted is not None:
            return scripted
        await asyncio.sleep(self.data_delay_s)
        assert isinstance(envelope.content, bytes)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(parsed)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 OK queued"

    async def handle_QUIT(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"

    async def _play(self, command: str, server: SmtpServer) -> str | None:
        replies = self.script.get(command)
        if not replies:
            return None
        reply = replies.pop(0)
        if reply == DROP:
            assert server.transport is not None
            server.transport.close()
        elif reply == STALL:
            await asyncio.sleep(30)  # cancelled when the server stops
        return reply


class SmtpController(Controller):
    """Records every server-side session, so tests can count and close connections."""

    def __init__(self, mailbox: Mailbox, **kwargs: Any) -> None:
        super().__init__(mailbox, hostname="127.0.0.1", port=free_port(), **kwargs)
        self.mailbox = mailbox

    @property
    def url(self) -> str:
        """``TIDINGS_SMTP_URL`` for a tidings that sends its emails here."""
        return f"smtp://127.0.0.1:{self.port}?timeout=5"

    def factory(self) -> SmtpServer:
        server = SmtpServer(self.handler, **self.SMTP_kwargs)
        self.mailbox.servers.append(server)
        return server

    def hang_up_all(self) -> None:
        """Close every connection from the server side, as an idle timeout would."""
        for server in self.mailbox.servers:
            if server.transport is not None:
                self.loop.call_soon_threadsafe(server.transport.close)
