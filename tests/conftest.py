"""Fixtures: a real tidings on a fresh SQLite file, its API, loopback receivers and SMTP
servers."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from support.api import ADMIN_TOKEN
from support.receivers import Receiver
from support.served import client_of, started
from support.smtp import Mailbox, SmtpController
from support.sockets import leaves_nothing_open
from support.stores import ENCRYPTION_KEY, migrate, postgres_server
from tidings.app import Tidings
from tidings.config import Settings


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated database that each test's own is copied from (see ``postgres_url``)."""
    with postgres_server() as server:
        name = server.create(template=None)
        migrate(server.url_of(name))
        yield name
        server.drop(name)


@pytest.fixture
def postgres_url(postgres_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of this test's own."""
    with postgres_server() as server:
        name = server.create(template=postgres_template)
        yield server.url_of(name)
        server.drop(name)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store: an SQLite file, or (where a module runs on both backends with
    ``pytestmark = BOTH_BACKENDS``) a PostgreSQL database of the test's own."""
    if getattr(request, "param", "sqlite") == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'tidings.db'}"


@pytest.fixture
def make_settings(database_url: str) -> Callable[..., Settings]:
    """Settings for a test: a fresh store, loopback allowed, a known admin token."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "admin_token": SecretStr(ADMIN_TOKEN),
            "allow_networks": (ipaddress.ip_network("127.0.0.0/8"),),
            "request_timeout": timedelta(seconds=2),
            "lease": timedelta(seconds=5),
            "log_level": "warning",
            "senders": 0,  # in-process: tests/integration/test_senders.py runs the processes
        }
        values.update(overrides)
        if str(values["database_url"]).startswith("postgres"):  # SQLite makes a key file
            values.setdefault("encryption_key", SecretStr(ENCRYPTION_KEY))
        return Settings.model_validate(values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def tidings(settings: Settings) -> AsyncIterator[Tidings]:
    async with started(settings) as app:
        yield app


@pytest.fixture
async def client(tidings: Tidings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(tidings) as http:
        yield http


@pytest.fixture
async def make_client(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[httpx.AsyncClient]]]:
    """The API of another tidings with other settings: ``await make_client(**overrides)``."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**overrides: Any) -> httpx.AsyncClient:
            app = await stack.enter_async_context(started(make_settings(**overrides)))
            return await stack.enter_async_context(client_of(app))

        yield make


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A loopback webhook receiver answering 204 until told otherwise."""
    found = Receiver()
    await found.start()
    yield found
    await found.stop()


@pytest.fixture
async def make_receiver() -> AsyncIterator[Callable[..., Any]]:
    """Start more receivers: ``await make_receiver(behaviour)``."""
    started: list[Receiver] = []

    async def make(**kwargs: Any) -> Receiver:
        found = Receiver(**kwargs)
        await found.start()
        started.append(found)
        return found

    yield make
    for found in started:
        await found.stop()


@pytest.fixture
def start_smtp() -> Iterator[Callable[..., SmtpController]]:
    """Start an SMTP server: ``start_smtp(**aiosmtpd SMTP options)``; all stopped after."""
    running: list[SmtpController] = []

    def start(**kwargs: Any) -> SmtpController:
        controller = SmtpController(Mailbox(), **kwargs)
        controller.start()
        controller.mailbox.servers.clear()  # the controller's own start-up probe
        running.append(controller)
        return controller

    yield start
    for controller in running:
        controller.stop()


@pytest.fixture
def smtp(start_smtp: Callable[..., SmtpController]) -> SmtpController:
    """An SMTP server on 127.0.0.1 that accepts whatever its script does not refuse."""
    return start_smtp()


@pytest.fixture
def mailbox(smtp: SmtpController) -> Mailbox:
    """What ``smtp`` received, and the script it plays."""
    return smtp.mailbox


@pytest.fixture
async def smtp_app(
    smtp: SmtpController, make_settings: Callable[..., Settings]
) -> AsyncIterator[Tidings]:
    """A tidings that sends its emails to ``smtp``."""
    async with started(make_settings(smtp_url=smtp.url)) as app:
        yield app


@pytest.fixture
async def smtp_client(smtp_app: Tidings) -> AsyncIterator[httpx.AsyncClient]:
    """The API of ``smtp_app``."""
    async with client_of(smtp_app) as http:
        yield http


@pytest.fixture
def nothing_left_open() -> Iterator[None]:
    """Every server thread and every socket the test opened is gone when it ends (for
    modules that start SMTP servers: ``pytest.mark.usefixtures("nothing_left_open")``)."""
    with leaves_nothing_open():
        yield
