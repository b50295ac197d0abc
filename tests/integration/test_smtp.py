"""The email channel against real aiosmtpd servers on 127.0.0.1.

Each server runs in aiosmtpd's own thread and event loop. Its handler plays a
script: canned replies (or a dropped connection, or a stall) for the next MAIL,
RCPT or DATA commands, accepting whatever the script does not cover, and it keeps
what it received and counts the connections it served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from random import Random
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from support.smtp import DROP, STALL, Mailbox, SmtpController
from support.sockets import free_port
from tidings.channels.email import OutgoingEmail, SmtpChannel, build_message, message_id
from tidings.domain.retry import Verdict, decide
from tidings.smtp_url import SmtpSettings, parse_smtp_url

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DOMAIN = "mail.tidings.test"
ENVELOPE_SENDER = "bounces@tidings.test"
USER, PASSWORD = "tidings", "s3cret pass"

pytestmark = pytest.mark.usefixtures("nothing_left_open")


def an_email(**fields: Any) -> OutgoingEmail:
    values: dict[str, Any] = {
        "email_id": "eml_01JTESTTESTTESTTESTTESTTES",
        "sender": "Tidings <noreply@tidings.test>",
        "to": "alice@example.test",
        "subject": "Your receipt",
        "text": "Thanks for your order.\n",
        "html": "<p>Thanks for your <b>order</b>.</p>\n",
        "reference": "order-1234",
    }
    values.update(fields)
    return OutgoingEmail(**values)


def _authenticate(
    server: SmtpServer, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)  # handled=False: the server sends the 535


def _lf(text: str) -> str:
    """``text`` as sent, before SMTP's CRLF line endings."""
    return text.replace("\r\n", "\n")


def settings_for(port: int, **fields: Any) -> SmtpSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "username": None,
        "password": None,
        "sender": ENVELOPE_SENDER,
        "timeout_s": 5.0,
    }
    values.update(fields)
    return SmtpSettings(**values)


@pytest.fixture
async def make_channel() -> AsyncIterator[Callable[..., Any]]:
    """Open channels: ``await make_channel(settings, **SmtpChannel options)``; closed after."""
    opened: list[SmtpChannel] = []

    async def make(settings: SmtpSettings, **kwargs: Any) -> SmtpChannel:
        found = SmtpChannel(settings, message_id_domain=DOMAIN, **kwargs)
        await found.open()
        opened.append(found)
        return found

    yield make
    for found in opened:
        await found.close()


@pytest.fixture
async def channel(smtp: SmtpController, make_channel: Callable[..., Any]) -> SmtpChannel:
    found: SmtpChannel = await make_channel(settings_for(smtp.port))
    return found


async def test_an_accepted_email_arrives_whole(channel: SmtpChannel, mailbox: Mailbox) -> None:
    sent = await channel.send(an_email(), NOW)

    assert sent.outcome.succeeded
    assert (sent.outcome.status, sent.outcome.protocol) == (250, "SMTP")
    assert (sent.outcome.error, sent.outcome.permanent) == (None, False)
    assert sent.excerpt is not None
    assert "queued" in sent.excerpt
    assert sent.duration_ms > 0
    assert mailbox.envelopes == [(ENVELOPE_SENDER, ["alice@example.test"])]
    [got] = mailbox.received
    assert got["From"] == "Tidings <noreply@tidings.test>"
    assert got["To"] == "alice@example.test"
    assert got["Subject"] == "Your receipt"
    assert got["Date"] == format_datetime(NOW)
    assert got["Message-ID"] == message_id("eml_01JTESTTESTTESTTESTTESTTES", DOMAIN)
    assert got["Message-ID"] == "<eml_01JTESTTESTTESTTESTTESTTES@mail.tidings.test>"
    assert got["X-Tidings-Reference"] == "order-1234"
    text, html = got.get_body(("plain",)), got.get_body(("html",))
    assert text is not None
    assert html is not None
    assert _lf(text.get_content()) == "Thanks for your order.\n"
    assert _lf(html.get_content()) == "<p>Thanks for your <b>order</b>.</p>\n"


async def test_text_only_and_unreferenced_and_non_ascii(
    channel: SmtpChannel, mailbox: Mailbox
) -> None:
    sent = await channel.send(
        an_email(html=None, reference=None, subject="Reçu n° 7", text="Merci, Zoë ✓\n"), NOW
    )

    assert sent.outcome.succeeded
    [got] = mailbox.received
    assert got.get_content_type() == "text/plain"
    assert _lf(got.get_content()) == "Merci, Zoë ✓\n"
    assert got["Subject"] == "Reçu n° 7"
    assert "X-Tidings-Reference" not in got


async def test_two_sends_reuse_one_connection(channel: SmtpChannel, mailbox: Mailbox) -> None:
    first = await channel.send(an_email(), NOW)
    second = await channel.send(an_email(email_id="eml_2"), NOW)

    assert first.outcome.succeeded
    assert second.outcome.succeeded
    assert len(mailbox.received) == 2
    assert mailbox.connections == 1


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    channel: SmtpChannel, smtp: SmtpController
) -> None:
    assert (await channel.send(an_email(), NOW)).outcome.succeeded
    smtp.hang_up_all()
    await asyncio.sleep(0.05)

    sent = await channel.send(an_email(email_id="eml_2"), NOW)

    assert sent.outcome.succeeded
    assert smtp.mailbox.connections == 2
    assert len(smtp.mailbox.received) == 2


async def test_a_pooled_connection_found_dead_on_use_is_retried_once_on_a_fresh_one(
    channel: SmtpChannel, mailbox: Mailbox
) -> None:
    assert (await channel.send(an_email(), NOW)).outcome.succeeded
    mailbox.next("MAIL", DROP)  # the pooled connection dies as it is used

    sent = await channel.send(an_email(email_id="eml_2"), NOW)

    assert sent.outcome.succeeded
    assert mailbox.connections == 2
    assert [got["Message-ID"] for got in mailbox.received] == [
        message_id("eml_01JTESTTESTTESTTESTTESTTES", DOMAIN),
        message_id("eml_2", DOMAIN),
    ]


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "DATA"])
async def test_a_4xx_reply_is_retryable_and_the_next_attempt_succeeds(
    channel: SmtpChannel, mailbox: Mailbox, command: str
) -> None:
    mailbox.next(command, "451 4.3.0 try again later")

    first = await channel.send(an_email(), NOW)
    second = await channel.send(an_email(), NOW)

    assert not first.outcome.succeeded
    assert (first.outcome.status, first.outcome.protocol) == (451, "SMTP")
    assert first.outcome.permanent is False
    assert first.outcome.detail == "4.3.0 try again later"
    assert first.excerpt == "4.3.0 try again later"
    decision = decide(first.outcome, attempt=1, created_at=NOW, now=NOW, rng=Random(1))
    assert decision.verdict is Verdict.RETRY
    assert second.outcome.succeeded
    assert len(mailbox.received) == 1
    assert mailbox.connections == 1  # a refusal leaves the connection usable


async def test_a_5xx_refusal_is_permanent(channel: SmtpChannel, mailbox: Mailbox) -> None:
    mailbox.next("RCPT", "550 5.1.1 no such user")

    sent = await channel.send(an_email(), NOW)

    assert not sent.outcome.succeeded
    assert (sent.outcome.status, sent.outcome.protocol) == (550, "SMTP")
    assert sent.outcome.permanent is True
    assert sent.outcome.detail is not None
    assert "no such user" in sent.outcome.detail
    decision = decide(sent.outcome, attempt=1, created_at=NOW, now=NOW, rng=Random(1))
    assert decision.verdict is Verdict.DEAD
    assert decision.reason == "rejected: SMTP 550 5.1.1 no such user"
    assert mailbox.received == []


async def test_a_connection_dropped_mid_transaction_is_connection_closed(
    channel: SmtpChannel, mailbox: Mailbox
) -> None:
    mailbox.next("DATA", DROP)

    sent = await channel.send(an_email(), NOW)

    assert sent.outcome.status is None
    assert sent.outcome.error == "connection_closed"
    assert sent.outcome.permanent is False
    assert sent.excerpt is None
    assert mailbox.connections == 1  # a fresh connection is not retried
    after = await channel.send(an_email(), NOW)
    assert after.outcome.succeeded
    assert mailbox.connections == 2


async def test_a_drop_on_a_reused_connection_is_retried_only_once(
    channel: SmtpChannel, mailbox: Mailbox
) -> None:
    assert (await channel.send(an_email(), NOW)).outcome.succeeded
    mailbox.next("DATA", DROP, DROP)

    sent = await channel.send(an_email(), NOW)

    assert sent.outcome.error == "connection_closed"
    assert mailbox.connections == 2


async def test_nothing_listening_is_connect_error(make_channel: Callable[..., Any]) -> None:
    channel = await make_channel(settings_for(free_port()))

    sent = await channel.send(an_email(), NOW)

    assert sent.outcome.status is None
    assert sent.outcome.error == "connect_error"
    assert sent.outcome.permanent is False
    assert sent.outcome.detail


async def test_a_server_that_does_not_answer_is_timeout(
    smtp: SmtpController, make_channel: Callable[..., Any]
) -> None:
    channel = await make_channel(settings_for(smtp.port, timeout_s=0.3))
    smtp.mailbox.next("DATA", STALL)

    sent = await channel.send(an_email(), NOW)

    assert (sent.outcome.status, sent.outcome.error) == (None, "timeout")
    assert sent.outcome.permanent is False
    after = await channel.send(an_email(), NOW)
    assert after.outcome.succeeded
    assert smtp.mailbox.connections == 2  # the timed-out connection was not reused


async def test_the_pool_never_opens_more_than_max_connections(
    smtp: SmtpController, make_channel: Callable[..., Any]
) -> None:
    channel = await make_channel(settings_for(smtp.port), max_connections=2)
    smtp.mailbox.data_delay_s = 0.05

    sent = await asyncio.gather(
        *(channel.send(an_email(email_id=f"eml_{n}"), NOW) for n in range(6))
    )

    assert all(one.outcome.succeeded for one in sent)
    assert len(smtp.mailbox.received) == 6
    assert smtp.mailbox.connections == 2


async def test_close_quits_idle_connections(channel: SmtpChannel, mailbox: Mailbox) -> None:
    await asyncio.gather(channel.send(an_email(), NOW), channel.send(an_email(), NOW))
    assert mailbox.connections == 2

    await channel.close()

    assert mailbox.quits == 2


async def test_login_when_a_user_name_is_set(
    start_smtp: Callable[..., SmtpController], make_channel: Callable[..., Any]
) -> None:
    smtp = start_smtp(authenticator=_authenticate, auth_require_tls=False)
    good = await make_channel(settings_for(smtp.port, username=USER, password=PASSWORD))
    bad = await make_channel(settings_for(smtp.port, username=USER, password="wrong"))

    accepted = await good.send(an_email(), NOW)
    refused = await bad.send(an_email(), NOW)

    assert accepted.outcome.succeeded
    assert (refused.outcome.status, refused.outcome.protocol) == (535, "SMTP")
    # A refused login is about our credentials, not this email: retried, not dead.
    assert refused.outcome.permanent is False
    assert refused.outcome.detail is not None
    assert refused.outcome.detail.startswith("login refused")
    assert PASSWORD not in refused.outcome.detail
    assert len(smtp.mailbox.received) == 1


async def test_starttls_is_required_when_asked_for(
    smtp: SmtpController, make_channel: Callable[..., Any]
) -> None:
    # The test server offers no STARTTLS: the channel must not fall back to plain text.
    channel = await make_channel(settings_for(smtp.port, tls="starttls"))

    sent = await channel.send(an_email(), NOW)

    assert sent.outcome.error == "connect_error"
    assert sent.outcome.detail is not None
    assert "STARTTLS" in sent.outcome.detail.upper()
    assert smtp.mailbox.received == []


async def test_an_email_that_cannot_be_built_is_permanent_not_raised(
    channel: SmtpChannel, mailbox: Mailbox
) -> None:
    sent = await channel.send(an_email(subject="Hi\r\nBcc: everyone@example.test"), NOW)

    assert (sent.outcome.status, sent.outcome.error) == (None, "invalid_message")
    assert sent.outcome.permanent is True
    assert mailbox.connections == 0


async def test_the_message_id_is_the_same_on_every_attempt(
    channel: SmtpChannel, mailbox: Mailbox
) -> None:
    mailbox.next("DATA", "451 4.3.0 try again later")
    later = NOW + timedelta(minutes=5)

    await channel.send(an_email(), NOW)
    await channel.send(an_email(), later)
    await channel.send(an_email(), later + timedelta(hours=2))

    assert len(mailbox.received) == 2
    ids = {got["Message-ID"] for got in mailbox.received}
    assert ids == {"<eml_01JTESTTESTTESTTESTTESTTES@mail.tidings.test>"}
    built = {build_message(an_email(), domain=DOMAIN, now=at)["Message-ID"] for at in (NOW, later)}
    assert built == ids


def test_message_id_refuses_what_would_break_the_header() -> None:
    for email_id, domain in [("eml 1", DOMAIN), ("eml_1", "a b"), ("eml<1>", DOMAIN), ("", DOMAIN)]:
        with pytest.raises(ValueError, match="Message-ID"):
            message_id(email_id, domain)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "smtp://mail.example.com",
            SmtpSettings("mail.example.com", 25, "none", None, None, None, 15.0),
        ),
        (
            "smtp://mail.example.com/?starttls=false",
            SmtpSettings("mail.example.com", 25, "none", None, None, None, 15.0),
        ),
        (
            "smtp://me%40example.com:p%40ss%2Fw%3Ard@Mail.Example.com:2525"
            "?starttls=true&from=bounces%40example.com&timeout=2.5",
            SmtpSettings(
                "mail.example.com",
                2525,
                "starttls",
                "me@example.com",
                "p@ss/w:rd",
                "bounces@example.com",
                2.5,
            ),
        ),
        (
            "smtps://relay@mail.example.com?from=noreply@example.com",
            SmtpSettings(
                "mail.example.com", 465, "tls", "relay", None, "noreply@example.com", 15.0
            ),
        ),
        (
            "smtps://u:@[::1]:1465?timeout=3",
            SmtpSettings("::1", 1465, "tls", "u", "", None, 3.0),
        ),
    ],
)
def test_parse_smtp_url_accepts(url: str, expected: SmtpSettings) -> None:
    assert parse_smtp_url(url) == expected


SECRET = "hunter2x"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"http://user:{SECRET}@mail.example.com", "smtp:// or smtps://"),
        (f"mailto://user:{SECRET}@mail.example.com", "smtp:// or smtps://"),
        ("mail.example.com:25", "smtp:// or smtps://"),
        ("smtp://", "no host"),
        (f"smtp://user:{SECRET}@", "no host"),
        (f"smtp://user:{SECRET}@:25", "no host"),
        (f"smtp://user:{SECRET}@mail.example.com:0", "port"),
        (f"smtp://user:{SECRET}@mail.example.com:65536", "port"),
        (f"smtp://user:{SECRET}@mail.example.com:smtp", "port"),
        (f"smtp://user:{SECRET}@mail.example.com:", "port"),
        (f"smtp://user:{SECRET[:4]}/{SECRET[4:]}@mail.example.com", "port"),
        (f"smtp://user:12?{SECRET}@mail.example.com", "unknown query parameter"),
        (f"smtps://user:{SECRET}@mail.example.com?starttls=true", "does not apply to smtps"),
        (f"smtps://user:{SECRET}@mail.example.com?starttls=false", "does not apply to smtps"),
        (f"smtp://user:{SECRET}@mail.example.com?starttls=yes", "true or false"),
        (f"smtp://user:{SECRET}@mail.example.com?tls=true", "unknown query parameter 'tls'"),
        (f"smtp://user:{SECRET}@mail.example.com?timeout=0", "timeout"),
        (f"smtp://user:{SECRET}@mail.example.com?timeout=nan", "timeout"),
        (f"smtp://user:{SECRET}@mail.example.com?timeout=soon", "timeout"),
        (f"smtp://user:{SECRET}@mail.example.com?from=nobody", "from="),
        (f"smtp://user:{SECRET}@mail.example.com?from=", "from="),
        (f"smtp://user:{SECRET}@mail.example.com?from=a@b.c&from=d@e.f", "more than once"),
        (f"smtp://user:{SECRET}@mail.example.com/outbox", "path"),
        (f"smtp://user:{SECRET}@mail.example.com#x", "fragment"),
        (f"smtp://:{SECRET}@mail.example.com", "no user name"),
        (f"smtp://user:{SECRET}@[::1", "malformed"),
    ],
)
def test_parse_smtp_url_refuses(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="SMTP URL") as refused:
        parse_smtp_url(url)

    message = str(refused.value)
    assert problem in message
    assert SECRET not in message
    assert SECRET[:4] not in message
    assert SECRET[4:] not in message


def test_settings_never_show_the_password() -> None:
    settings = parse_smtp_url(f"smtp://user:{SECRET}@mail.example.com")

    assert settings.password == SECRET
    assert SECRET not in repr(settings)
    assert replace(settings, password=None).password is None


def test_starttls_may_be_written_as_1_or_0() -> None:
    assert parse_smtp_url("smtp://mail.example.com?starttls=1").tls == "starttls"
    assert parse_smtp_url("smtp://mail.example.com?starttls=0").tls == "none"
