"""The SSRF guard: which addresses a webhook may be delivered to.

Rules
-----
* Only global unicast addresses may be dialled. Everything else is refused:
  unspecified, loopback, private (RFC 1918), shared address space (100.64/10),
  link-local (including the 169.254.169.254 metadata service), IETF protocol
  assignments, documentation and benchmarking ranges, multicast, broadcast,
  reserved space, unique local (fc00::/7), site-local, and any IPv6 address
  outside 2000::/3.
* IPv6 forms that carry an IPv4 address -- IPv4-mapped (``::ffff:a.b.c.d``),
  NAT64 (``64:ff9b::/96`` and the local-use ``64:ff9b:1::/48``, IPv4 in the low
  32 bits), 6to4 (``2002::/16``) and Teredo (``2001::/32``, the client's
  address) -- are judged by their embedded IPv4 address first, so
  ``::ffff:127.0.0.1`` is refused like ``127.0.0.1``. Mapped, well-known NAT64
  and 6to4 forms of a global address are accepted; local-use NAT64 and Teredo
  are never global and are refused regardless.
* An address inside one of the operator's ``allow`` networks is accepted, and
  so is an IPv6 form whose embedded IPv4 address is inside one.
* The tables below are explicit on purpose: :attr:`ipaddress.IPv4Address.is_global`
  and friends changed between Python releases (on 3.11.7, for instance,
  ``224.0.0.1``, ``64:ff9b::a00:1`` and ``2002:a00:1::`` all count as global).

Where the rules are enforced
----------------------------
* :meth:`SsrfGuard.check_url` when an endpoint or a lookup URL is registered: control
  characters, scheme, host, port 0,
  credentials, length, and hosts that *are* addresses (IP literals,
  ``localhost``). It never resolves DNS.
* :class:`GuardedResolver` at delivery time, for every DNS name.
* :meth:`SsrfGuard.check_destination` at delivery time, for IP literals, which
  aiohttp's ``TCPConnector`` dials without asking its resolver.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from tidings.exceptions import AddressBlocked, InvalidEndpointUrl

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

MAX_URL_LENGTH = 2048
VERDICTS_KEPT = 4096  # hosts whose check_destination verdict is remembered
_SCHEMES = frozenset({"http", "https"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # C0 controls and DEL

# First match wins, so narrower networks come before the ones containing them.
_IPV4_REFUSED: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), reason)
    for net, reason in (
        ("0.0.0.0/32", "unspecified address"),
        ("0.0.0.0/8", '"this network" address'),
        ("10.0.0.0/8", "private address"),
        ("100.64.0.0/10", "shared address space"),
        ("127.0.0.0/8", "loopback address"),
        ("169.254.0.0/16", "link-local address"),
        ("172.16.0.0/12", "private address"),
        ("192.0.0.0/24", "IETF protocol assignment address"),
        ("192.0.2.0/24", "documentation address"),
        ("192.88.99.0/24", "deprecated 6to4 relay anycast address"),
        ("192.168.0.0/16", "private address"),
        ("198.18.0.0/15", "benchmarking address"),
        ("198.51.100.0/24", "documentation address"),
        ("203.0.113.0/24", "documentation address"),
        ("224.0.0.0/4", "multicast address"),
        ("255.255.255.255/32", "broadcast address"),
        ("240.0.0.0/4", "reserved address"),
    )
)

# Consulted only for addresses that carry no IPv4 address (see _embedded_ipv4).
_IPV6_REFUSED: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), reason)
    for net, reason in (
        ("::/128", "unspecified address"),
        ("::1/128", "loopback address"),
        ("fe80::/10", "link-local address"),
        ("fec0::/10", "site-local address"),
        ("fc00::/7", "unique local address"),
        ("ff00::/8", "multicast address"),
        ("2001:db8::/32", "documentation address"),
        ("3fff::/20", "documentation address"),
        ("2001:2::/48", "benchmarking address"),
        ("2001::/23", "IETF protocol assignment address"),
    )
)
_IPV6_GLOBAL_UNICAST = IPv6Network("2000::/3")

_NAT64 = IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")

# What ``localhost`` and ``*.localhost`` stand for (RFC 6761), without DNS.
_LOOPBACKS: tuple[IPAddress, ...] = (IPv4Address("127.0.0.1"), IPv6Address("::1"))
# A last label a browser or getaddrinfo would read as a number (WHATWG "ends in a number").
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*", re.IGNORECASE)


def _embedded_ipv4(ip: IPv6Address) -> tuple[str, IPv4Address, bool] | None:
    """Unwrap an IPv6 form of an IPv4 address.

    Returns the form's name, the embedded IPv4 address and whether the form
    itself is global (so that a global embedded address makes it dialable),
    or None when ``ip`` embeds no IPv4 address.
    """
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped, True
    if ip in _NAT64:
        return "NAT64", IPv4Address(int(ip) & 0xFFFF_FFFF), True
    if ip in _NAT64_LOCAL:
        return "local-use NAT64", IPv4Address(int(ip) & 0xFFFF_FFFF), False
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour, True
    if ip.teredo is not None:
        return "Teredo", ip.teredo[1], False
    return None


def _ipv4_refusal(ip: IPv4Address) -> str | None:
    for net, reason in _IPV4_REFUSED:
        if ip in net:
            return f"{reason} {ip}"
    return None


def _ipv6_refusal(ip: IPv6Address) -> str | None:
    for net, reason in _IPV6_REFUSED:
        if ip in net:
            return f"{reason} {ip}"
    if ip not in _IPV6_GLOBAL_UNICAST:
        return f"reserved address {ip}"
    return None


def _ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, or None if it is a name.

    Tolerates URL brackets and a ``%25``-encoded IPv6 zone. ``127.0.0.1.`` is
    not a literal (aiohttp refuses to dial it); :func:`_ends_in_number` catches it.
    """
    text = host.removeprefix("[").removesuffix("]").replace("%25", "%")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ends_in_number(host: str) -> bool:
    """Whether ``host`` would be read as an IPv4 address rather than a name.

    Catches legacy spellings such as ``2130706433``, ``0x7f.1`` or ``127.1``
    that ``getaddrinfo`` maps onto an address.
    """
    last = host.removesuffix(".").rpartition(".")[2]
    return _NUMERIC_LABEL.fullmatch(last) is not None


def _is_localhost(host: str) -> bool:
    name = host.removesuffix(".").lower()
    return name == "localhost" or name.endswith(".localhost")


class SsrfGuard:
    """Decides which destinations a webhook may be delivered to."""

    def __init__(self, allow: Sequence[IPNetwork] = ()) -> None:
        """``allow`` lists networks exempt from the guard (e.g. an internal relay)."""
        self._allow = tuple(allow)
        self._verdicts: dict[str, str | None] = {}  # check_destination's, by host

    def _allowed(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self._allow)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why ``ip`` may not be dialled, or None if it may."""
        if self._allowed(ip):
            return None
        if isinstance(ip, IPv4Address):
            return _ipv4_refusal(ip)
        embedded = _embedded_ipv4(ip)
        if embedded is None:
            return _ipv6_refusal(ip)
        form, ipv4, form_is_global = embedded
        if self._allowed(ipv4):
            return None
        reason = _ipv4_refusal(ipv4)
        if reason is not None:
            return f"{reason} inside {form} address {ip}"
        return None if form_is_global else f"{form} address {ip}"

    def check_url(self, url: str) -> None:
        """Raise :class:`InvalidEndpointUrl` unless ``url`` may be registered.

        Only what the URL itself reveals is checked; DNS names are judged at
        delivery time by :class:`GuardedResolver`.
        """
        if len(url) > MAX_URL_LENGTH:
            raise InvalidEndpointUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
        control = _CONTROL.search(url)
        if control is not None:
            # yarl drops CR, LF and TAB without a word: the URL kept would not be the one checked.
            raise InvalidEndpointUrl(
                f"the URL holds the control character {control.group()!r}; "
                "percent-encode it (CR, LF, TAB, NUL and the rest are never part of a URL)"
            )
        try:
            parsed = URL(url)
        except ValueError as exc:
            raise InvalidEndpointUrl(f"not a valid URL: {exc}") from exc
        if parsed.scheme not in _SCHEMES:
            raise InvalidEndpointUrl(f"scheme {parsed.scheme!r} is not allowed; use http or https")
        if not parsed.host:
            raise InvalidEndpointUrl("the URL has no host")
        if parsed.explicit_port == 0:
            raise InvalidEndpointUrl("port 0 is not a port one can connect to")
        if parsed.raw_user is not None or parsed.raw_password is not None:
            raise InvalidEndpointUrl(
                "credentials in the URL are not allowed; send them in a header instead"
            )
        self._check_host(parsed.host)

    def _check_host(self, host: str) -> None:
        """Refuse hosts that are addresses, or spell one, the guard refuses."""
        ip = _ip_literal(host)
        if ip is not None:
            reason = self.refusal(ip)
            if reason is not None:
                raise InvalidEndpointUrl(f"host {host} is refused: {reason}")
        elif _ends_in_number(host):
            raise InvalidEndpointUrl(f"host {host} is not a canonical IP address or a name")
        elif _is_localhost(host):
            # localhost names resolve to loopback without DNS; the resolver
            # drops whichever of the two is refused, so one allowed is enough.
            reasons = [self.refusal(loopback) for loopback in _LOOPBACKS]
            if all(reasons):
                raise InvalidEndpointUrl(f"host {host} is refused: {reasons[0]}")

    def check_destination(self, host: str) -> None:
        """Raise :class:`AddressBlocked` if ``host`` is an IP literal the guard refuses.

        Call before each request: aiohttp's ``TCPConnector`` dials IP literals
        directly, without the resolver. For the same reason deliver with
        ``allow_redirects=False`` (or check every hop yourself): a redirect to
        ``http://169.254.169.254/`` would otherwise never meet the guard.
        Names are left to :class:`GuardedResolver`.
        """
        try:
            reason = self._verdicts[host]
        except KeyError:
            ip = _ip_literal(host)
            reason = None if ip is None else self.refusal(ip)
            if len(self._verdicts) >= VERDICTS_KEPT:
                self._verdicts.clear()
            self._verdicts[host] = reason
        if reason is not None:
            raise AddressBlocked(f"destination {host} is refused: {reason}")


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that only hands out addresses the guard accepts.

    Pass it to ``aiohttp.TCPConnector(resolver=...)``. The connector dials
    exactly the addresses this resolver returns, so the address checked is the
    address dialled: a name that re-resolves to a private address between the
    check and the connection (DNS rebinding) cannot slip through.

    A refusal surfaces as :class:`AddressBlocked`. It is not an ``OSError``,
    and in aiohttp 3.14 ``TCPConnector._create_direct_connection`` only wraps
    ``OSError`` from the resolver (into ``ClientConnectorDNSError``), while
    ``ClientSession._request`` only wraps ``OSError`` into ``ClientOSError``;
    anything else (also when it travels through the DNS-cache throttle task) is
    re-raised as is, so ``session.post`` raises ``AddressBlocked`` itself, not
    a ``ClientError``, and no connection is attempted.

    IP-literal hosts never reach the resolver; see
    :meth:`SsrfGuard.check_destination`. Neither does the destination's name
    when the session goes through a proxy (only the proxy's name does).
    """

    def __init__(self, guard: SsrfGuard, inner: AbstractResolver | None = None) -> None:
        """Wrap ``inner``, by default aiohttp's own (which needs a running loop)."""
        self._guard = guard
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve with the inner resolver and drop every refused address."""
        results = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refusals: list[str] = []
        for result in results:
            reason = self._guard.refusal(ipaddress.ip_address(result["host"]))
            if reason is None:
                kept.append(result)
            else:
                refusals.append(reason)
        if refusals and not kept:
            # Not an OSError, so aiohttp lets it out of session.post unwrapped.
            raise AddressBlocked(f"{host} resolves only to refused addresses: {refusals[0]}")
        return kept

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()
