"""The webhook channel: one signed POST per attempt, through one shared session.

:class:`Webhooks` is the :class:`~tidings.channels.base.Channel` of webhook
endpoints: it makes each claimed delivery a :class:`WebhookRequest` and hands it
to a :class:`WebhookTransport`, this process's :class:`WebhookChannel` or a pool
of sender processes (:mod:`tidings.channels.senders`) that run one each.

The session's connector resolves every host through the SSRF guard and
connects to the address it checked. Redirects are never followed (a 3xx is a
failed attempt), the response body is read only up to a short excerpt, and
every failure is reported as an :class:`~tidings.domain.outcome.Outcome`
rather than raised: the policy decides what it means.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Protocol

import aiohttp
import orjson
from yarl import URL

from tidings import __version__
from tidings.channels.base import Sent
from tidings.channels.signing import signature_headers
from tidings.channels.ssrf import GuardedResolver, SsrfGuard
from tidings.domain.models import Claimed, EmailOutcome, Endpoint
from tidings.domain.outcome import ErrorClass, Outcome
from tidings.domain.retry import Decision
from tidings.exceptions import AddressBlocked

EXCERPT_BYTES = 1024
_HEADERS = {"user-agent": f"tidings/{__version__}", "content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """One attempt to make: where to, signed with which secrets, and the body."""

    url: str
    secrets: tuple[str, ...]
    message_id: str
    body: str

    @classmethod
    def of(cls, endpoint: Endpoint, claimed: Claimed, now: datetime) -> WebhookRequest:
        return cls(
            endpoint.url, endpoint.signing_secrets(now), claimed.message_id, webhook_body(claimed)
        )


def webhook_body(claimed: Claimed) -> str:
    """The JSON body of a message: the Standard Webhooks envelope around the payload."""
    return orjson.dumps(
        {
            "type": claimed.event_type,
            "timestamp": claimed.message_created_at,
            "data": orjson.Fragment(claimed.payload),
        },
        option=orjson.OPT_UTC_Z,
    ).decode()


@lru_cache(maxsize=4096)
def _host(url: str) -> str:
    return URL(url).host or ""


class WebhookTransport(Protocol):
    """What makes webhook requests: this process's :class:`WebhookChannel`, or a
    :class:`~tidings.channels.senders.SenderPool` of sender processes."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, request: WebhookRequest, now: datetime) -> Sent: ...


class Webhooks:
    """The :class:`~tidings.channels.base.Channel` of webhook endpoints: one signed
    POST per attempt, through ``transport``; an attempt records nothing more."""

    def __init__(self, transport: WebhookTransport) -> None:
        self._transport = transport

    def deliver(self, endpoint: Endpoint, job: Claimed, now: datetime) -> Awaitable[Sent]:
        # The transport's own coroutine, not one around it: no extra await per attempt.
        return self._transport.send(WebhookRequest.of(endpoint, job, now), now)

    def settle(
        self, endpoint: Endpoint, job: Claimed, sent: Sent, decision: Decision, now: datetime
    ) -> EmailOutcome | None:
        return None


class WebhookChannel:
    def __init__(
        self,
        guard: SsrfGuard,
        *,
        connect_timeout: timedelta,
        request_timeout: timedelta,
        max_connections: int,
    ) -> None:
        self._guard = guard
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout.total_seconds(),
            sock_connect=connect_timeout.total_seconds(),
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._guard),
            limit=self._max_connections,
            limit_per_host=0,
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: WebhookRequest, now: datetime) -> Sent:
        """Make one attempt, signed as of ``now``; never raises for anything the
        receiver or network did."""
        assert self._session is not None, "WebhookChannel.open() was not awaited"
        headers = signature_headers(request.secrets, request.message_id, now, request.body)
        headers.update(_HEADERS)
        started = time.perf_counter()
        try:
            self._guard.check_destination(_host(request.url))
            async with self._session.post(
                request.url, data=request.body.encode(), headers=headers, allow_redirects=False
            ) as response:
                excerpt = await response.content.read(EXCERPT_BYTES)
                outcome = Outcome(
                    status=response.status, retry_after=response.headers.get("retry-after")
                )
                return Sent(outcome, _ms_since(started), excerpt.decode("utf-8", "replace"))
        except AddressBlocked as exc:
            outcome = Outcome(None, ErrorClass.BLOCKED, detail=exc.detail)
            return Sent(outcome, _ms_since(started), None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error, detail = _classify(exc)
            return Sent(Outcome(None, error, detail=detail), _ms_since(started), None)


def _classify(exc: BaseException) -> tuple[ErrorClass, str]:
    """An error class for metrics and the policy, and a human detail."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return ErrorClass.TIMEOUT, "the receiver did not answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ErrorClass.CONNECT_ERROR, str(exc)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return ErrorClass.CONNECTION_CLOSED, str(exc) or "the receiver closed the connection"
    return ErrorClass.CLIENT_ERROR, f"{type(exc).__name__}: {exc}"


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
