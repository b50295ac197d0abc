"""The composition root: builds the store, channel, engine, metrics and use cases, and runs them.

:class:`Tidings` owns every resource of one process. ``start`` migrates the
store, opens its secrets with the encryption key (see :func:`load_keys`), makes
sure an admin token exists and starts the supervised background
tasks; ``stop`` lets in-flight attempts finish (up to a grace period), flushes
what is queued and closes everything. Its ``role`` says what it runs: the API
and the delivery engine (``all``), or one of them (``api``, ``worker``), for
several processes on one PostgreSQL database. If a background task dies, ``failed``
is set and the process should stop: running on without its dispatcher would
accept messages it never delivers. A store error is not death: the database may be
restarting, so the task logs it and runs again after a short backoff
(:func:`store_retry_delay`), as long as it takes.

Here, and only here, the parts are wired to each other: the metrics subscribe to
the events bus, and the dispatcher's wake-ups and the key cache to what the store
says each committed write changed (this process's at once, the others' over
NOTIFY on PostgreSQL), so no use case has to remember to poke anything.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from tidings.channels.base import Channel
from tidings.channels.email import SmtpChannel
from tidings.channels.lookup import Lookups
from tidings.channels.senders import SenderConfig, SenderPool
from tidings.channels.ssrf import SsrfGuard
from tidings.channels.webhook import WebhookChannel, Webhooks, WebhookTransport
from tidings.clock import Clock, SystemClock
from tidings.config import Settings
from tidings.crypto import Keyring, key_file
from tidings.domain.models import EndpointKind
from tidings.email.sending import EmailSender
from tidings.engine.dispatcher import Dispatcher
from tidings.engine.health import HealthMonitor
from tidings.events import Bus, TemplateKnown
from tidings.exceptions import EncryptionKeyError, StoreError
from tidings.keys import KeyCache
from tidings.metrics import Metrics
from tidings.service import Service, sha256
from tidings.smtp_url import parse_smtp_url
from tidings.store import Changed, Store, open_store
from tidings.store.ports import Change, Secrets

# "all": API and delivery engine; "api": the API only; "worker": the engine only.
Role = Literal["all", "api", "worker"]

log = structlog.get_logger(__name__)

ADMIN_TOKEN_SETTING = "admin_token_sha256"
DEPTH_INTERVAL_S = 5.0
PURGE_INTERVAL_S = 3600.0
SHUTDOWN_GRACE_S = 10.0
STORE_RETRY_S = 0.1  # the first wait of a background task after a store error
STORE_RETRY_MAX_S = 2.0  # and the longest: work resumes this soon after the store is back


class Tidings:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        store: Store | None = None,
        rng: random.Random | None = None,
        role: Role = "all",
    ) -> None:
        self.settings = settings
        self.role = role
        self.clock = clock or SystemClock()
        self.store = store or open_store(settings.database_url)
        self.events = Bus()
        self.metrics = Metrics()
        self.events.subscribe(self.metrics.observe)
        self.guard = SsrfGuard(allow=settings.allow_networks)
        self.senders: SenderPool | None = None
        self.channel: WebhookTransport
        if settings.sender_count:
            self.channel = self.senders = SenderPool(
                settings.sender_count, _sender_config(settings)
            )
        else:
            self.channel = WebhookChannel(
                self.guard,
                connect_timeout=settings.connect_timeout,
                request_timeout=settings.request_timeout,
                max_connections=settings.max_in_flight,
            )
        self.lookups = Lookups(self.guard, self.clock)
        self.smtp: SmtpChannel | None = None
        if settings.smtp_url is not None:
            self.smtp = SmtpChannel(
                parse_smtp_url(settings.smtp_url.get_secret_value()),
                max_connections=settings.smtp_connections,
                message_id_domain=_domain(settings.email_from),
            )
        self.emails = EmailSender(
            self.store,
            self.lookups,
            self.events,
            smtp=self.smtp,
            sender=settings.email_from,
            message_id_domain=_domain(settings.email_from),
            lookup_budget_s=settings.request_timeout.total_seconds() / 2,
            clock=self.clock,
        )
        # One channel per endpoint kind: the engine never asks which kind it holds.
        channels: dict[EndpointKind, Channel] = {
            EndpointKind.WEBHOOK: Webhooks(self.channel),
            EndpointKind.EMAIL: self.emails,
        }
        self.dispatcher = Dispatcher(self.store, channels, settings, self.events, self.clock, rng)
        self.health = HealthMonitor(self.store, self.channel, self.events, self.clock, settings)
        self.service = Service(
            self.store, self.clock, settings, self.guard, self.events, self.health, self.emails
        )
        self.keys = KeyCache(self.store, self.clock)
        self.admin_token_hash = ""
        self.new_admin_token: str | None = None
        self.new_key_file: Path | None = None
        self.failed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def delivers(self) -> bool:
        """Whether this process runs the delivery engine (roles ``all`` and ``worker``)."""
        return self.role != "api"

    async def start(self) -> None:
        await self.store.migrate()
        await self._open_secrets()
        await self._ensure_admin_token()
        for name in await self.store.template_names():
            self.events.emit(TemplateKnown(name))
        self._supervise("ingest", self.service.ingest.run)
        self._supervise("queue-depth", self._every(DEPTH_INTERVAL_S, self.service.count_queue))
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def hear(changed: Changed) -> None:
            """At once on the loop's thread (this process's writes, as their answers come
            back: a revoked key is forgotten before the revocation is answered); from
            another thread (the store's listener), by way of the loop."""
            if threading.get_ident() == loop_thread:
                self._heard(changed)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(self._heard, changed)

        # Every role listens: an API process must hear of a key revoked elsewhere.
        await self.store.listen(hear)
        if self.delivers:
            await self._start_engine()

    async def _start_engine(self) -> None:
        await self.channel.open()
        await self.lookups.open()
        await self.emails.open()
        if self.smtp is not None:
            await self.smtp.open()
        await self.store.reclaim_expired_leases(self.clock.now())
        if self.senders is not None:
            self._supervise("senders", self.senders.run)
        self._supervise("results", self.dispatcher.results.run)
        self._supervise("dispatcher", self.dispatcher.run)
        # The singleton duties. Only delivering processes compete for leadership: an API
        # process that took it would keep it, and health would never be evaluated.
        interval = self.settings.health_interval.total_seconds()
        self._supervise("health", self._every(interval, self._led(self.health.evaluate)))
        self._supervise(
            "purge", self._every(PURGE_INTERVAL_S, self._led(self.service.purge_idempotency_keys))
        )

    def _heard(self, changed: Changed) -> None:
        """A write committed ``changed``, this process's or another's (see Store.listen).
        New work wakes the dispatcher on the loop's next turn, once the writer (an
        ingest batch) has handed out its answers: the replies go out before it claims."""
        news = changed.news
        if news == Change.KEYS:
            self.keys.forget()
        elif not self.delivers:
            return
        elif news == Change.SCHEDULE:
            self.dispatcher.schedule_changed()
        elif news == Change.ENDPOINTS:
            self.dispatcher.endpoints_changed()
        else:  # new work; an ingest's names its endpoints, for the dispatcher to look at
            asyncio.get_running_loop().call_soon(self.dispatcher.wake, changed.endpoint_ids)

    def _led(self, duty: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """``duty``, run only by the process that leads (one per store at a time)."""

        async def run() -> None:
            if await self.store.lead():
                await duty()

        return run

    async def stop(self) -> None:
        dispatcher = next((t for t in self._tasks if t.get_name() == "dispatcher"), None)
        if dispatcher:
            dispatcher.cancel()
        await self.service.ingest.drain()
        if self.delivers:
            await self.dispatcher.drain(SHUTDOWN_GRACE_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.delivers:
            await self.channel.close()
            await self.lookups.close()
            if self.smtp is not None:
                await self.smtp.close()
        await self.emails.close()
        await self.store.close()

    async def _open_secrets(self) -> None:
        """Open the store's secrets before anything else runs: a key that does not open
        them stops the start here, rather than failing each delivery later."""
        keys = load_keys(self.settings, self.store)
        self.new_key_file = keys.created
        await open_secrets(self.store, keys)

    async def _ensure_admin_token(self) -> None:
        if self.settings.admin_token is not None:
            self.admin_token_hash = sha256(self.settings.admin_token.get_secret_value())
            return
        stored = await self.store.get_setting(ADMIN_TOKEN_SETTING)
        if stored is None:
            token = "tda_" + secrets.token_urlsafe(32)
            stored = sha256(token)
            await self.store.set_setting(ADMIN_TOKEN_SETTING, stored)
            self.new_admin_token = token
        self.admin_token_hash = stored

    def _every(
        self, interval_s: float, job: Callable[[], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        async def loop() -> None:
            while True:
                await job()
                await asyncio.sleep(interval_s)

        return loop

    def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        async def guarded() -> None:
            failures = 0
            while True:
                started = time.monotonic()
                try:
                    await run()
                    return
                except asyncio.CancelledError:
                    raise
                except StoreError as exc:
                    if time.monotonic() - started > STORE_RETRY_MAX_S:
                        failures = 0  # it ran a while: a new outage, not the same one
                    failures += 1
                    delay = store_retry_delay(failures)
                    log.warning(
                        "background_task_store_failed", task=name, error=str(exc), retry_in_s=delay
                    )
                    await asyncio.sleep(delay)
                except Exception:
                    log.exception("background_task_died", task=name)
                    self.failed.set()
                    raise

        self._tasks.append(asyncio.create_task(guarded(), name=name))


def store_retry_delay(failures: int) -> float:
    """How long a background task waits after its ``failures``-th store error in a row:
    doubling from :data:`STORE_RETRY_S` up to :data:`STORE_RETRY_MAX_S`."""
    return float(min(STORE_RETRY_MAX_S, STORE_RETRY_S * 2 ** min(failures - 1, 16)))


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys that open a store's secrets, and where they came from."""

    keyring: Keyring
    source: str
    """For messages: ``TIDINGS_ENCRYPTION_KEY`` or the key file's path."""
    created: Path | None = None
    """The key file, if this start made it."""


def load_keys(settings: Settings, store: Secrets) -> Keys:
    """The keys from ``TIDINGS_ENCRYPTION_KEY``; unset, those of the key file beside an
    SQLite database (made now with a fresh key if there is none). A database server
    has no "beside": there the setting is required, and every process needs the same."""
    if settings.encryption_key is not None:
        keyring = Keyring.parse(settings.encryption_key.get_secret_value())
        return Keys(keyring, "TIDINGS_ENCRYPTION_KEY")
    path = store.key_file()
    if path is None:
        raise EncryptionKeyError(
            "TIDINGS_ENCRYPTION_KEY is required with PostgreSQL (and with memory://, which "
            "keeps no file beside it): it encrypts the endpoints' signing secrets, and every "
            "process needs the same one. Make one with "
            "`tidings generate-encryption-key`."
        )
    keyring, made = key_file(path)
    if made:
        log.info("encryption_key_file_created", path=str(path))
    return Keys(keyring, f"the key file {path}", created=path if made else None)


async def open_secrets(store: Secrets, keys: Keys) -> None:
    """Open ``store``'s secrets with ``keys``; a store created before secrets were
    encrypted has its plaintext ones encrypted now (once)."""
    try:
        upgraded = await store.open_secrets(keys.keyring)
    except EncryptionKeyError as exc:
        if keys.created is not None:  # a fresh key cannot open what another key sealed
            keys.created.unlink(missing_ok=True)
            raise EncryptionKeyError(
                f"the key file {keys.created} is missing, and this store's secrets are "
                "encrypted: put it back beside the database, or give its key in "
                f"TIDINGS_ENCRYPTION_KEY ({exc.detail})"
            ) from None
        raise EncryptionKeyError(
            f"{keys.source} does not open this store's secrets: {exc.detail}"
        ) from None
    if upgraded:
        log.warning("plaintext_secrets_encrypted", endpoints=upgraded, key=keys.keyring.sealing_id)


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[1]


def _sender_config(settings: Settings) -> SenderConfig:
    return SenderConfig(
        connect_timeout_s=settings.connect_timeout.total_seconds(),
        request_timeout_s=settings.request_timeout.total_seconds(),
        max_connections=settings.max_in_flight,
        allow_networks=tuple(str(net) for net in settings.allow_networks),
        log_level=settings.log_level,
        log_format=settings.log_format,
    )


__all__ = ["Keys", "Tidings", "load_keys", "open_secrets"]
