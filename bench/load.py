"""Load generators on aiohttp: message ingest into tidings, and bare webhook POSTs.

Each runs ``concurrency`` workers that share one counter, so together they send
exactly ``count`` requests, and every worker also stops at ``deadline``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import orjson
from standardwebhooks import Webhook

# A typical order event: ~0.4 kB of JSON payload, ~0.5 kB once in the envelope.
PAYLOAD: dict[str, object] = {
    "order_id": "ord_01J9Z8Q6X4K2M7N3P5R8T0V2W4",
    "customer": {"id": "cus_8841", "email": "jane.doe@example.com", "tier": "gold"},
    "amount": 12999,
    "currency": "EUR",
    "items": [
        {"sku": "SKU-1001", "name": "Espresso grinder", "qty": 1, "price": 9999},
        {"sku": "SKU-2042", "name": "Descaler (3 pack)", "qty": 2, "price": 1500},
    ],
    "shipping": {"method": "express", "country": "DE", "postcode": "10115"},
    "paid_at": "2025-01-01T12:00:00Z",
}
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def message_body(event_type: str) -> bytes:
    """The body of ``POST /v1/messages``."""
    return orjson.dumps({"event_type": event_type, "payload": PAYLOAD})


def envelope(event_type: str, msg_id: str) -> tuple[bytes, dict[str, str]]:
    """What tidings would send for that message: the envelope and its signed headers."""
    now = datetime.now(UTC)
    body = orjson.dumps(
        {"type": event_type, "timestamp": now, "data": PAYLOAD}, option=orjson.OPT_UTC_Z
    ).decode()
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(msg_id, now, body),
        "content-type": "application/json",
        "user-agent": "tidings/0.1.0",
    }
    return body.encode(), headers


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0

    @property
    def elapsed(self) -> float:
        return max(self.finished - self.started, 1e-9)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


Request = Callable[[int], tuple[str, bytes, dict[str, str]]]


async def drive(
    session: aiohttp.ClientSession,
    request: Request,
    *,
    count: int,
    concurrency: int,
    ok_status: int,
    within_s: float,
) -> LoadStats:
    """Send ``count`` requests, ``concurrency`` at a time; ``request(i)``: url, body, headers."""
    stats = LoadStats(started=time.monotonic())
    deadline = stats.started + within_s
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            if time.monotonic() > deadline:
                return
            url, body, headers = request(i)
            stats.sent += 1
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == ok_status:
                        stats.ok += 1
                    else:
                        stats.error(f"http {response.status}")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                stats.error(type(exc).__name__)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    stats.finished = time.monotonic()
    return stats


def client(concurrency: int) -> aiohttp.ClientSession:
    """A session with exactly ``concurrency`` pooled connections, 30 s per request."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, force_close=False)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30), auto_decompress=False
    )


async def ingest(
    base: str,
    key: str,
    event_type: Callable[[int], str],
    *,
    count: int,
    concurrency: int,
    within_s: float,
) -> LoadStats:
    """POST ``count`` messages to tidings; 202 is success."""
    url = f"{base}/v1/messages"
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    bodies: dict[str, bytes] = {}

    def request(i: int) -> tuple[str, bytes, dict[str, str]]:
        kind = event_type(i)
        body = bodies.get(kind) or bodies.setdefault(kind, message_body(kind))
        return url, body, headers

    async with client(concurrency) as session:
        return await drive(
            session, request, count=count, concurrency=concurrency, ok_status=202, within_s=within_s
        )
