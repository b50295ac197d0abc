"""The email lookup against a real aiohttp server on 127.0.0.1.

Real time bounds the HTTP timeouts; the breakers run on a FakeClock.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import ip_network
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from structlog.testing import capture_logs

from support.receivers import json_response, serving
from tidings.channels import lookup
from tidings.channels.lookup import LookupOutcome, LookupReason, LookupResult, Lookups
from tidings.channels.ssrf import SsrfGuard
from tidings.clock import FakeClock

LOOPBACK_ONLY = SsrfGuard(allow=[ip_network("127.0.0.0/8")])
MAX_BYTES = 64 * 1024
TRUE_OR_FALSE = frozenset({"true", "false"})
SLOW_SECONDS = 30  # far past any timeout used here; the handler is cancelled long before


@dataclass
class Server:
    port: int
    requests: list[str] = field(default_factory=list)
    """The path of every request received, in order."""
    accept: list[str] = field(default_factory=list)
    slow_cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        return self.requests.count(path)


def _padded(size: int) -> bytes:
    """A JSON document of exactly ``size`` bytes with ``subscribed: true``."""
    head, tail = b'{"subscribed":true,"pad":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


SERVER = web.AppKey("server", Server)


@web.middleware
async def _record(request: web.Request, handler: Handler) -> web.StreamResponse:
    server = request.app[SERVER]
    server.requests.append(request.path)
    server.accept.append(request.headers.get("accept", ""))
    return await handler(request)


async def _stall(request: web.Request) -> None:
    """Wait far past any lookup's timeout, noting the cancellation that ends it."""
    try:
        await asyncio.sleep(SLOW_SECONDS)
    except asyncio.CancelledError:
        request.app[SERVER].slow_cancelled.set()
        raise


async def _slow(request: web.Request) -> web.StreamResponse:
    await _stall(request)
    return json_response({"subscribed": True})


async def _slow_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"subscribed":')
    await _stall(request)
    await response.write(b"true}")
    return response


async def _oversize_chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    body = _padded(MAX_BYTES + 1024)
    for start in range(0, len(body), 4096):
        await response.write(body[start : start + 4096])
    await response.write_eof()
    return response


async def _announced_oversize(request: web.Request) -> web.StreamResponse:
    # Announces a large body, then sends almost none of it: only an early refusal
    # (on Content-Length) answers before the timeout.
    response = web.StreamResponse(headers={"content-type": "application/json"})
    response.content_length = 10 * MAX_BYTES
    await response.prepare(request)
    await response.write(b"{")
    await _stall(request)
    return response


async def _echo(request: web.Request) -> web.StreamResponse:
    return web.Response(body=request.query["body"].encode(), content_type="application/json")


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/found")


def _answering(make: Callable[[], web.StreamResponse]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return make()

    return handle


_ROUTES: dict[str, Handler] = {
    "/found": _answering(lambda: json_response({"subscribed": True})),
    "/unsubscribed": _answering(lambda: json_response({"subscribed": False})),
    "/error": _answering(lambda: json_response({"subscribed": True}, status=500)),
    "/garbage": _answering(
        lambda: web.Response(text="<html>oops</html>", content_type="text/html")
    ),
    "/oversize": _answering(lambda: web.Response(body=_padded(MAX_BYTES + 1024))),
    "/at-limit": _answering(lambda: web.Response(body=_padded(MAX_BYTES))),
    "/empty": _answering(lambda: json_response({})),
    "/null": _answering(lambda: json_response({"subscribed": None})),
    "/object": _answering(lambda: json_response({"subscribed": {"yes": True}})),
    "/array": _answering(lambda: json_response({"subscribed": [True]})),
    "/redirect": _redirect,
    "/slow": _slow,
    "/slow-body": _slow_body,
    "/oversize-chunked": _oversize_chunked,
    "/announced-oversize": _announced_oversize,
    "/echo": _echo,
}


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """A lookup target on 127.0.0.1; its handlers are cancelled when a client goes away."""
    found = Server(port=0)
    app = web.Application(middlewares=[_record])
    app[SERVER] = found
    for path, handler in _ROUTES.items():
        app.router.add_get(path, handler)
    async with serving(app) as found.port:
        yield found


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def lookups(clock: FakeClock) -> AsyncIterator[Lookups]:
    found = Lookups(LOOPBACK_ONLY, clock)
    await found.open()
    yield found
    await found.close()


async def _fetch(
    lookups: Lookups,
    url: str,
    *,
    key: str = "tnt_1:welcome",
    select: str = "/subscribed",
    timeout_ms: int = 2000,
    variants: frozenset[str] = TRUE_OR_FALSE,
) -> LookupResult:
    return await lookups.fetch(key, url, select, timeout_ms, variants)


def _is_error(result: LookupResult, reason: str) -> bool:
    return (
        result.outcome is LookupOutcome.ERROR
        and result.reason == reason
        and result.value is None
        and bool(result.detail)
    )


async def test_found(lookups: Lookups, server: Server) -> None:
    result = await _fetch(lookups, server.url("/found"))
    assert result == LookupResult(
        LookupOutcome.FOUND, "", "true", "lookup answered \"true\" at '/subscribed'"
    )
    assert server.accept == ["application/json"]


async def test_a_value_naming_no_variant_is_not_found(lookups: Lookups, server: Server) -> None:
    result = await _fetch(lookups, server.url("/unsubscribed"), variants=frozenset({"true"}))
    assert result.outcome is LookupOutcome.NOT_FOUND
    assert result.reason == ""
    assert result.value == "false"
    assert "names no variant" in result.detail


@pytest.mark.parametrize(
    ("document", "select", "value"),
    [
        ({"plan": "gold"}, "/plan", "gold"),
        ({"plan": ""}, "/plan", ""),
        ({"on": True}, "/on", "true"),
        ({"on": False}, "/on", "false"),
        ({"n": 3}, "/n", "3"),
        ({"n": -1.5}, "/n", "-1.5"),
        ({"plans": [{"tier": "a/b"}]}, "/plans/0/tier", "a/b"),
        ({"a/b": {"~": "x"}}, "/a~1b/~0", "x"),
        ("top", "", "top"),
    ],
)
async def test_scalars_in_their_json_spelling(
    lookups: Lookups, server: Server, document: object, select: str, value: str
) -> None:
    url = server.url("/echo") + "?" + urlencode({"body": orjson.dumps(document).decode()})
    result = await _fetch(lookups, url, select=select, variants=frozenset({value}))
    assert (result.outcome, result.value) == (LookupOutcome.FOUND, value)


async def test_non_200_is_status(lookups: Lookups, server: Server) -> None:
    result = await _fetch(lookups, server.url("/error"))
    assert _is_error(result, "status")
    assert "500" in result.detail


async def test_a_redirect_is_status_and_not_followed(lookups: Lookups, server: Server) -> None:
    result = await _fetch(lookups, server.url("/redirect"))
    assert _is_error(result, "status")
    assert "302" in result.detail
    assert server.requests == ["/redirect"]


async def test_not_json(lookups: Lookups, server: Server) -> None:
    assert _is_error(await _fetch(lookups, server.url("/garbage")), "not_json")


@pytest.mark.parametrize("path", ["/oversize", "/oversize-chunked"])
async def test_too_large(lookups: Lookups, server: Server, path: str) -> None:
    result = await _fetch(lookups, server.url(path))
    assert _is_error(result, "too_large")
    assert str(MAX_BYTES) in result.detail


async def test_exactly_the_limit_is_fine(lookups: Lookups, server: Server) -> None:
    result = await _fetch(lookups, server.url("/at-limit"))
    assert (result.outcome, result.value) == (LookupOutcome.FOUND, "true")


async def test_a_large_content_length_is_refused_before_reading(
    lookups: Lookups, server: Server
) -> None:
    started = time.monotonic()
    result = await _fetch(lookups, server.url("/announced-oversize"), timeout_ms=5000)
    assert _is_error(result, "too_large")
    assert "Content-Length" in result.detail
    assert time.monotonic() - started < 2


async def test_missing_field(lookups: Lookups, server: Server) -> None:
    result = await _fetch(lookups, server.url("/empty"))
    assert _is_error(result, "missing_field")
    assert "/subscribed" in result.detail


@pytest.mark.parametrize("path", ["/null", "/object", "/array"])
async def test_wrong_type(lookups: Lookups, server: Server, path: str) -> None:
    assert _is_error(await _fetch(lookups, server.url(path)), "wrong_type")


async def test_a_malformed_pointer_is_missing_field_without_a_request(
    lookups: Lookups, server: Server
) -> None:
    result = await _fetch(lookups, server.url("/found"), select="subscribed")
    assert _is_error(result, "missing_field")
    assert "not a JSON Pointer" in result.detail
    assert server.requests == []


@pytest.mark.parametrize("path", ["/slow", "/slow-body"])
async def test_a_timeout_bounds_the_whole_lookup(
    lookups: Lookups, server: Server, path: str
) -> None:
    started = time.monotonic()
    result = await _fetch(lookups, server.url(path), timeout_ms=200)
    elapsed = time.monotonic() - started
    assert _is_error(result, "timeout")
    assert result.detail == "lookup timed out after 200 ms"
    assert 0.19 <= elapsed < 1.0  # asyncio may fire a hair early
    # The lookup hung up; the server cancels the handler rather than finish it.
    await asyncio.wait_for(server.slow_cancelled.wait(), timeout=5)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_connect_error(lookups: Lookups, refused_port: int) -> None:
    result = await _fetch(lookups, f"http://127.0.0.1:{refused_port}/")
    assert _is_error(result, "connect_error")


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/x", "http://[::1/"])
async def test_an_unusable_url_is_connect_error(lookups: Lookups, url: str) -> None:
    assert _is_error(await _fetch(lookups, url), "connect_error")


async def test_a_refused_address_is_blocked_without_a_request(
    clock: FakeClock, server: Server
) -> None:
    guarded = Lookups(SsrfGuard(), clock)  # no allow-list: loopback is refused
    await guarded.open()
    try:
        result = await _fetch(guarded, server.url("/found"))
        by_name = await _fetch(guarded, f"http://localhost:{server.port}/found")
    finally:
        await guarded.close()
    assert _is_error(result, "blocked")
    assert "loopback" in result.detail
    assert _is_error(by_name, "blocked")  # refused by the GuardedResolver
    assert server.requests == []


async def test_the_breaker_opens_after_five_failures_and_a_probe_closes_it(
    lookups: Lookups, server: Server, clock: FakeClock
) -> None:
    for _ in range(5):
        assert _is_error(await _fetch(lookups, server.url("/error")), "status")
    result = await _fetch(lookups, server.url("/error"))
    assert _is_error(result, "breaker_open")
    assert server.count("/error") == 5
    # Another template's lookups are not held back.
    other = await _fetch(lookups, server.url("/found"), key="tnt_1:receipt")
    assert other.outcome is LookupOutcome.FOUND

    clock.advance(timedelta(seconds=29))
    assert _is_error(await _fetch(lookups, server.url("/found")), "breaker_open")
    clock.advance(timedelta(seconds=1))
    probe = await _fetch(lookups, server.url("/found"))
    assert probe.outcome is LookupOutcome.FOUND
    # Closed again: a failure no longer holds the key back.
    assert _is_error(await _fetch(lookups, server.url("/error")), "status")
    assert (await _fetch(lookups, server.url("/found"))).outcome is LookupOutcome.FOUND
    assert server.count("/found") == 3


async def test_not_found_counts_as_success(lookups: Lookups, server: Server) -> None:
    for _ in range(20):
        result = await _fetch(lookups, server.url("/unsubscribed"), variants=frozenset())
        assert result.outcome is LookupOutcome.NOT_FOUND
    assert server.count("/unsubscribed") == 20


async def test_a_failed_probe_reopens_for_longer(
    lookups: Lookups, server: Server, clock: FakeClock
) -> None:
    for _ in range(5):
        await _fetch(lookups, server.url("/error"))
    clock.advance(timedelta(seconds=30))
    assert _is_error(await _fetch(lookups, server.url("/error")), "status")  # the probe
    clock.advance(timedelta(seconds=59))
    assert _is_error(await _fetch(lookups, server.url("/found")), "breaker_open")
    clock.advance(timedelta(seconds=1))
    assert (await _fetch(lookups, server.url("/found"))).outcome is LookupOutcome.FOUND
    assert server.count("/error") == 6


async def test_only_one_probe_at_a_time(lookups: Lookups, server: Server, clock: FakeClock) -> None:
    for _ in range(5):
        await _fetch(lookups, server.url("/error"))
    clock.advance(timedelta(seconds=30))
    results = await asyncio.gather(*(_fetch(lookups, server.url("/found")) for _ in range(5)))
    assert sorted(result.reason for result in results) == [""] + ["breaker_open"] * 4
    assert server.count("/found") == 1


async def test_breakers_are_bounded(
    lookups: Lookups, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lookup, "BREAKERS_KEPT", 3)
    for _ in range(5):
        await _fetch(lookups, server.url("/error"), key="oldest")
    assert _is_error(await _fetch(lookups, server.url("/found"), key="oldest"), "breaker_open")
    for key in ("b", "c", "d"):
        await _fetch(lookups, server.url("/found"), key=key)
    # "oldest" was forgotten, open breaker and all.
    result = await _fetch(lookups, server.url("/found"), key="oldest")
    assert result.outcome is LookupOutcome.FOUND


async def test_every_fallback_logs_one_warning(lookups: Lookups, server: Server) -> None:
    with capture_logs() as logs:
        await _fetch(lookups, server.url("/found"))
        await _fetch(lookups, server.url("/error"), key="tnt_2:welcome")
    assert logs == [
        {
            "event": "lookup_fallback",
            "log_level": "warning",
            "key": "tnt_2:welcome",
            "reason": "status",
            "detail": "lookup answered HTTP 500, not 200",
        }
    ]


async def test_fetch_before_open_is_a_programming_error(clock: FakeClock) -> None:
    with pytest.raises(RuntimeError, match="open"):
        await Lookups(LOOPBACK_ONLY, clock).fetch("k", "http://127.0.0.1:9/", "", 100, ())


def test_the_reasons_are_listed() -> None:
    assert set(LookupReason) == {
        "",
        "connect_error",
        "timeout",
        "status",
        "not_json",
        "missing_field",
        "wrong_type",
        "too_large",
        "blocked",
        "breaker_open",
    }
    assert len(LookupReason) == len(set(LookupReason))
