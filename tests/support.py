"""Test helpers: a programmable webhook receiver and API shortcuts.

The receiver is a real aiohttp server on 127.0.0.1 that verifies every
delivery's Standard Webhooks signature with the reference library.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import httpx
import psycopg
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session
from standardwebhooks import Webhook

from tidings import ids
from tidings.api.app import create_api
from tidings.app import Role, Tidings
from tidings.channels.signing import new_secret
from tidings.clock import Clock
from tidings.config import Settings
from tidings.crypto import Keyring
from tidings.domain.models import Endpoint, EndpointState
from tidings.store import open_store

ADMIN_TOKEN = "admin-test-token"
# The test suite's store key (base64url of b"tidings test encryption key 0001").
ENCRYPTION_KEY = "dGlkaW5ncyB0ZXN0IGVuY3J5cHRpb24ga2V5IDAwMDE"
KEYRING = Keyring.parse(ENCRYPTION_KEY)
POSTGRES_URL = os.environ.get(
    "TIDINGS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


# ``pytestmark = BOTH_BACKENDS``: every test of the module runs on SQLite and PostgreSQL.
BOTH_BACKENDS = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@dataclass
class PostgresServer:
    """The test PostgreSQL server: makes and drops the tests' databases."""

    admin: psycopg.Connection[Any]

    def url_of(self, name: str) -> str:
        return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"

    def create(self, template: str | None) -> str:
        name = f"tidings_test_{uuid.uuid4().hex[:16]}"
        copy = f" TEMPLATE {template}" if template else ""
        self.admin.execute(f"CREATE DATABASE {name}{copy}")  # type: ignore[arg-type]
        return name

    def drop(self, name: str) -> None:
        self.admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """The server of ``TIDINGS_TEST_POSTGRES_URL``; its tests are skipped, loudly, when it
    cannot be reached, and fail instead under ``CI=true``."""
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        why = f"PostgreSQL NOT reachable at {POSTGRES_URL}: its tests did NOT run ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    with admin:
        yield PostgresServer(admin)


def migrate(url: str) -> None:
    """Migrate the database at ``url`` (from a thread of its own: a fixture may be set
    up while a test's event loop runs)."""

    async def run() -> None:
        store = open_store(url)
        await store.migrate()
        await store.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def an_endpoint(**fields: Any) -> Endpoint:
    """An active endpoint record with test defaults; ``fields`` override any of them."""
    now = fields.pop("now", datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    values: dict[str, Any] = {
        "id": ids.new_id(ids.ENDPOINT),
        "tenant_id": "tnt_1",
        "url": "http://127.0.0.1:9/hook",
        "description": "",
        "event_types": (),
        "secret": new_secret(),
        "previous_secret": None,
        "previous_secret_expires_at": None,
        "max_in_flight": 10,
        "rate_limit_per_s": None,
        "retry_schedule": None,
        "state": EndpointState.ACTIVE,
        "disabled_reason": None,
        "created_at": now,
        "updated_at": now,
    }
    return Endpoint(**{**values, **fields})


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    verified: bool | None = None

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def ok(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


def status(code: int, headers: dict[str, str] | None = None, body: str = "") -> Behaviour:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers=headers, text=body)

    return answer


async def hang(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def close_connection(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    return web.Response(status=204)


def sequence(*behaviours: Behaviour) -> Behaviour:
    """Answer the n-th request with the n-th behaviour, then keep the last."""
    calls = 0

    async def answer(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        behaviour = behaviours[min(calls, len(behaviours) - 1)]
        calls += 1
        return await behaviour(request)

    return answer


@dataclass
class Receiver:
    """A webhook receiver whose answers a test sets with ``behaviour``."""

    behaviour: Behaviour = ok
    secret: str | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        item = Received(dict(request.headers.items()), body, time.monotonic())
        item.headers = {k.lower(): v for k, v in request.headers.items()}
        if self.secret:
            try:
                Webhook(self.secret).verify(body, item.headers)
                item.verified = True
            except Exception:
                item.verified = False
        self.received.append(item)
        return await self.behaviour(request)


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], within: float = 10.0, every: float = 0.02
) -> None:
    """Wait until ``predicate`` holds; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def served(
    settings: Settings, clock: Clock | None = None, role: Role = "all"
) -> AsyncIterator[tuple[Tidings, httpx.AsyncClient]]:
    """A started tidings and a client of its API, both stopped at the end."""
    app = Tidings(settings, clock=clock, role=role)
    await app.start()
    try:
        transport = httpx.ASGITransport(app=create_api(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield app, client
    finally:
        await app.stop()


def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def new_tenant(client: httpx.AsyncClient, name: str = "acme") -> tuple[str, str]:
    """A new tenant and an API key for it: ``(tenant_id, key)``."""
    response = await client.post(
        "/v1/tenants", json={"name": name, "owner_email": f"ops@{name}.example"}, headers=admin()
    )
    assert response.status_code == 201, response.text
    tenant_id = response.json()["id"]
    response = await client.post(f"/v1/tenants/{tenant_id}/api-keys", headers=admin())
    assert response.status_code == 201, response.text
    return tenant_id, response.json()["key"]


async def new_endpoint(
    client: httpx.AsyncClient, key: str, url: str, **fields: Any
) -> dict[str, Any]:
    response = await client.post("/v1/endpoints", json={"url": url, **fields}, headers=bearer(key))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def send(
    client: httpx.AsyncClient,
    key: str,
    event_type: str = "order.paid",
    payload: Any = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    headers = bearer(key)
    if idempotency_key:
        headers["idempotency-key"] = idempotency_key
    response = await client.post(
        "/v1/messages",
        json={"event_type": event_type, "payload": payload if payload is not None else {}},
        headers=headers,
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def delivery_states(client: httpx.AsyncClient, key: str, message_id: str) -> list[str]:
    response = await client.get(f"/v1/messages/{message_id}", headers=bearer(key))
    assert response.status_code == 200, response.text
    return [d["state"] for d in response.json()["deliveries"]]


async def message_of(client: httpx.AsyncClient, key: str, message_id: str) -> dict[str, Any]:
    """``GET /v1/messages/{message_id}``, which must succeed."""
    response = await client.get(f"/v1/messages/{message_id}", headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def settled(
    client: httpx.AsyncClient, key: str, message_id: str, state: str
) -> dict[str, Any]:
    """Wait until the message's only delivery is in ``state``; return that delivery."""
    found: dict[str, Any] = {}

    async def check() -> bool:
        found.update((await message_of(client, key, message_id))["deliveries"][0])
        return bool(found["state"] == state)

    await wait_for(check)
    return found


PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, fragment: str) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem document of ``status`` whose detail says ``fragment``."""
    context = (
        f"{response.request.method} {response.request.url} -> "
        f"{response.status_code} {response.text[:600]}"
    )
    assert response.status_code == status, context
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    assert media_type == PROBLEM, context
    body = response.json()
    assert isinstance(body, dict), context
    assert {"type", "title", "status", "detail"} <= body.keys(), context
    assert body["status"] == status, context
    for name in ("type", "title"):
        assert isinstance(body[name], str), context
        assert body[name], context
    assert isinstance(body["detail"], str), context
    assert fragment.lower() in body["detail"].lower(), context
    return body


UNSET: Any = object()


@dataclass(frozen=True)
class Bad:
    """One request that must be refused with ``status`` and a detail containing ``fragment``.

    ``path`` may name placeholders the test's world fills in (``{endpoint_id}``,
    ``{name}``, ...). ``auth`` is ``"tenant"`` (the world's key), ``"admin"``,
    ``"none"``, or a literal ``Authorization`` header value.
    """

    method: str
    path: str
    status: int
    fragment: str
    json: Any = UNSET
    content: bytes | None = None
    params: dict[str, Any] | None = None
    auth: str = "tenant"
    headers: dict[str, str] = field(default_factory=dict)
    title: str | None = None


def credentials(auth: str, key: str) -> dict[str, str]:
    """The ``Authorization`` header ``Bad.auth`` names, with the tenant's ``key``."""
    if auth == "tenant":
        return bearer(key)
    if auth == "admin":
        return admin()
    if auth == "none":
        return {}
    return {"authorization": auth}


async def send_bad(
    client: httpx.AsyncClient, bad: Bad, key: str, **placeholders: str
) -> httpx.Response:
    """Send ``bad``, its path filled in with ``placeholders``."""
    headers = {**credentials(bad.auth, key), **bad.headers}
    kwargs: dict[str, Any] = {}
    if bad.json is not UNSET:
        kwargs["json"] = bad.json
    if bad.content is not None:
        kwargs["content"] = bad.content
        headers.setdefault("content-type", "application/json")
    path = bad.path.format(**placeholders)
    return await client.request(bad.method, path, headers=headers, params=bad.params, **kwargs)


def assert_refused(response: httpx.Response, bad: Bad) -> dict[str, Any]:
    """``response`` refuses ``bad`` as it should: its status, detail and title."""
    body = assert_problem(response, bad.status, bad.fragment)
    if bad.title is not None:
        assert body["title"] == bad.title, response.text
    return body


# --- SMTP servers for tests -------------------------------------------------------------

DROP = "drop the connection"  # a Mailbox script entry: close the connection instead
STALL = "never answer"  # a Mailbox script entry: say nothing until the server stops


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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

    def factory(self) -> SmtpServer:
        server = SmtpServer(self.handler, **self.SMTP_kwargs)
        self.mailbox.servers.append(server)
        return server

    def hang_up_all(self) -> None:
        """Close every connection from the server side, as an idle timeout would."""
        for server in self.mailbox.servers:
            if server.transport is not None:
                self.loop.call_soon_threadsafe(server.transport.close)


def open_sockets() -> int:
    """How many sockets this process has open (0 where there is no /proc)."""
    found = 0
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # the fd listdir itself used
                found += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return found


@contextlib.contextmanager
def leaves_nothing_open() -> Iterator[None]:
    """Every server thread and every socket opened inside is gone at the end."""
    threads, sockets = set(threading.enumerate()), open_sockets()
    yield
    left = [t.name for t in set(threading.enumerate()) - threads if t.name.startswith("Thread")]
    assert left == [], f"threads left running: {left}"
    assert open_sockets() <= sockets, "sockets left open"
