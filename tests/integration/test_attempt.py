"""One attempt through the engine's Attempts: a real webhook channel, a loopback receiver,
the fake clock, and the events it emits heard on a real bus."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network

import pytest

from support.factories import an_endpoint
from support.receivers import Receiver, hang, status
from tidings.channels.ssrf import SsrfGuard
from tidings.channels.webhook import WebhookChannel, Webhooks
from tidings.clock import FakeClock
from tidings.config import Settings
from tidings.domain.circuit import BreakerPolicy
from tidings.domain.models import Claimed, DeliveryState, Endpoint, EndpointKind
from tidings.domain.outcome import ErrorClass
from tidings.domain.retry import DeadReason, Verdict
from tidings.engine.attempt import Attempts
from tidings.engine.breakers import Breakers
from tidings.events import AttemptFinished, Bus, Event

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ATTEMPT_BOUND = timedelta(milliseconds=300)


@pytest.fixture
async def transport() -> AsyncIterator[WebhookChannel]:
    # The channel's own timeout is longer than the engine's bound: the bound must hold.
    channel = WebhookChannel(
        SsrfGuard(allow=[ip_network("127.0.0.0/8")]),
        connect_timeout=timedelta(seconds=5),
        request_timeout=timedelta(seconds=5),
        max_connections=4,
    )
    await channel.open()
    yield channel
    await channel.close()


class Engine:
    """Attempts as the dispatcher builds them, and what they said on the bus."""

    def __init__(self, transport: WebhookChannel, settings: Settings) -> None:
        self.clock = FakeClock(T0)
        self.heard: list[Event] = []
        bus = Bus()
        bus.subscribe(self.heard.append)
        breakers = Breakers(self.clock, lambda endpoint_id: BreakerPolicy())
        self.attempts = Attempts(
            {EndpointKind.WEBHOOK: Webhooks(transport)},
            settings,
            self.clock,
            bus,
            random.Random(7),
            breakers.record,
        )


@pytest.fixture
def engine(transport: WebhookChannel, make_settings: Callable[..., Settings]) -> Engine:
    return Engine(transport, make_settings(request_timeout=ATTEMPT_BOUND))


def _job(endpoint: Endpoint, attempts: int = 0) -> Claimed:
    return Claimed(
        delivery_id="dlv_1",
        message_id="msg_1",
        endpoint_id=endpoint.id,
        event_type="user.created",
        payload=b'{"id": 1}',
        attempts=attempts,
        retry_base=0,
        created_at=T0,
        message_created_at=T0 - timedelta(seconds=2),
        lease_until=T0 + timedelta(minutes=1),
    )


async def test_a_success_is_recorded_and_said_once(engine: Engine, receiver: Receiver) -> None:
    endpoint = an_endpoint(url=receiver.url)

    result = await engine.attempts.run(endpoint, _job(endpoint))

    assert (result.state, result.attempt.status_code, result.attempt.number) == (
        DeliveryState.SUCCEEDED,
        204,
        1,
    )
    assert (result.email, result.breaker, result.dead_reason) == (None, None, None)
    assert len(receiver.received) == 1
    [finished] = engine.heard
    assert isinstance(finished, AttemptFinished)
    assert (finished.endpoint_id, finished.outcome.status) == (endpoint.id, 204)
    assert finished.decision.verdict is Verdict.SUCCEEDED
    assert finished.accepted_at == T0 - timedelta(seconds=2)


async def test_a_gone_endpoint_ends_the_delivery_under_its_cause(
    engine: Engine, make_receiver: Callable[..., Receiver]
) -> None:
    receiver = await make_receiver(behaviour=status(410))
    endpoint = an_endpoint(url=receiver.url)

    result = await engine.attempts.run(endpoint, _job(endpoint))

    assert result.state is DeliveryState.DEAD
    assert result.dead_reason == "gone: endpoint answered 410"
    assert result.disable_endpoint
    [finished] = engine.heard
    assert isinstance(finished, AttemptFinished)
    assert finished.decision.cause is DeadReason.GONE


async def test_an_attempt_that_outlasts_the_request_timeout_is_cut_short(
    engine: Engine, make_receiver: Callable[..., Receiver]
) -> None:
    receiver = await make_receiver(behaviour=hang)
    endpoint = an_endpoint(url=receiver.url)

    result = await engine.attempts.run(endpoint, _job(endpoint))

    assert result.state is DeliveryState.PENDING  # retried later
    assert result.attempt.error == "timeout: the attempt outlasted the request timeout"
    assert result.attempt.duration_ms >= ATTEMPT_BOUND.total_seconds() * 1000
    [finished] = engine.heard
    assert isinstance(finished, AttemptFinished)
    assert finished.outcome.error is ErrorClass.TIMEOUT


async def test_the_breaker_opens_after_failures_in_a_row(
    engine: Engine, make_receiver: Callable[..., Receiver]
) -> None:
    receiver = await make_receiver(behaviour=status(503))
    endpoint = an_endpoint(url=receiver.url)
    failures = BreakerPolicy().consecutive_failures

    results = [
        await engine.attempts.run(endpoint, _job(endpoint, attempts=n)) for n in range(failures)
    ]

    assert [r.breaker is not None for r in results] == [False] * (failures - 1) + [True]
