"""GuardedResolver inside a real aiohttp client, against a real server on 127.0.0.1.

Safety: every connector here gets a socket factory that records each dial and
refuses any non-loopback address, so even a broken guard cannot send traffic
off this machine. "DNS" for made-up names is a fake resolver.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from support.receivers import serving
from tidings.channels.ssrf import GuardedResolver, SsrfGuard
from tidings.exceptions import AddressBlocked

LOOPBACK_ONLY = SsrfGuard(allow=[ip_network("127.0.0.0/8")])


@dataclass
class Server:
    port: int
    requests: list[str] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """A webhook receiver on 127.0.0.1 that records the Host of every request."""
    seen: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        seen.append(request.host)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/", receive)
    async with serving(app) as port:
        yield Server(port=port, requests=seen)


class FakeDns(AbstractResolver):
    """Stands in for DNS: answers from a fixed table, never touches the network."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        self.closed = True


@dataclass
class LoopbackOnlySockets:
    """A connector socket factory: records every dial, refuses non-loopback ones."""

    dialled: list[str] = field(default_factory=list)

    def __call__(self, addr_info: aiohttp.AddrInfoType) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        host = str(sockaddr[0])
        self.dialled.append(host)
        if not ip_address(host).is_loopback:
            raise OSError(f"the test refuses to dial {host}")
        return socket.socket(family, type_, proto)


def _session(
    resolver: AbstractResolver, sockets: LoopbackOnlySockets, *, use_dns_cache: bool = True
) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        resolver=resolver, socket_factory=sockets, use_dns_cache=use_dns_cache
    )
    return aiohttp.ClientSession(connector=connector)


@pytest.mark.parametrize("use_dns_cache", [True, False])
async def test_localhost_blocked_before_connecting(server: Server, use_dns_cache: bool) -> None:
    sockets = LoopbackOnlySockets()
    async with _session(GuardedResolver(SsrfGuard()), sockets, use_dns_cache=use_dns_cache) as s:
        with pytest.raises(AddressBlocked) as caught:
            await s.post(f"http://localhost:{server.port}/", json={"n": 1})

    # Unwrapped: aiohttp only wraps OSError from the resolver.
    assert not isinstance(caught.value, aiohttp.ClientError)
    assert caught.value.detail.startswith("localhost resolves only to refused addresses")
    assert "loopback address" in caught.value.detail
    assert sockets.dialled == []
    assert server.requests == []


async def test_allowed_loopback_is_delivered(server: Server) -> None:
    sockets = LoopbackOnlySockets()
    resolver = GuardedResolver(LOOPBACK_ONLY, FakeDns({"localhost": ["127.0.0.1"]}))
    async with (
        _session(resolver, sockets) as s,
        s.post(f"http://localhost:{server.port}/", json={"n": 1}) as response,
    ):
        assert response.status == 204

    assert sockets.dialled == ["127.0.0.1"]
    assert server.requests == [f"localhost:{server.port}"]


async def test_name_resolving_to_private_address_is_refused(server: Server) -> None:
    sockets = LoopbackOnlySockets()
    resolver = GuardedResolver(SsrfGuard(), FakeDns({"rebind.test": ["10.1.2.3"]}))
    async with _session(resolver, sockets) as s:
        with pytest.raises(AddressBlocked) as caught:
            await s.post(f"http://rebind.test:{server.port}/")

    assert caught.value.detail == (
        "rebind.test resolves only to refused addresses: private address 10.1.2.3"
    )
    assert sockets.dialled == []
    assert server.requests == []


async def test_refused_addresses_are_dropped_from_a_mixed_answer(server: Server) -> None:
    sockets = LoopbackOnlySockets()
    resolver = GuardedResolver(LOOPBACK_ONLY, FakeDns({"rebind.test": ["10.1.2.3", "127.0.0.1"]}))
    async with (
        _session(resolver, sockets) as s,
        s.post(f"http://rebind.test:{server.port}/") as response,
    ):
        assert response.status == 204

    assert sockets.dialled == ["127.0.0.1"]
    assert server.requests == [f"rebind.test:{server.port}"]


async def test_ip_literal_skips_the_resolver_so_check_destination_is_needed(
    server: Server,
) -> None:
    """Documents why SsrfGuard.check_destination exists: aiohttp dials literals directly."""
    guard = SsrfGuard()
    sockets = LoopbackOnlySockets()
    async with (
        _session(GuardedResolver(guard, FakeDns({})), sockets) as s,
        s.post(f"http://127.0.0.1:{server.port}/") as response,
    ):
        assert response.status == 204

    assert server.requests == [f"127.0.0.1:{server.port}"]
    with pytest.raises(AddressBlocked) as caught:
        guard.check_destination("127.0.0.1")
    assert caught.value.detail == "destination 127.0.0.1 is refused: loopback address 127.0.0.1"


async def test_close_closes_the_inner_resolver() -> None:
    inner = FakeDns({})
    await GuardedResolver(SsrfGuard(), inner).close()
    assert inner.closed
