"""Decisions of the SSRF guard. Nothing here opens a socket or resolves a name."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.channels.ssrf import SsrfGuard
from tidings.exceptions import AddressBlocked, InvalidEndpointUrl

GUARD = SsrfGuard()

REFUSED = [
    ("0.0.0.0", "unspecified address 0.0.0.0"),
    ("0.1.2.3", '"this network" address 0.1.2.3'),
    ("127.0.0.1", "loopback address 127.0.0.1"),
    ("127.255.255.254", "loopback address 127.255.255.254"),
    ("10.0.0.1", "private address 10.0.0.1"),
    ("172.16.0.1", "private address 172.16.0.1"),
    ("172.31.255.255", "private address 172.31.255.255"),
    ("192.168.1.1", "private address 192.168.1.1"),
    ("169.254.169.254", "link-local address 169.254.169.254"),
    ("100.64.0.1", "shared address space 100.64.0.1"),
    ("100.127.255.255", "shared address space 100.127.255.255"),
    ("192.0.0.9", "IETF protocol assignment address 192.0.0.9"),
    ("192.0.2.1", "documentation address 192.0.2.1"),
    ("198.51.100.7", "documentation address 198.51.100.7"),
    ("203.0.113.9", "documentation address 203.0.113.9"),
    ("198.18.0.1", "benchmarking address 198.18.0.1"),
    ("192.88.99.1", "deprecated 6to4 relay anycast address 192.88.99.1"),
    ("224.0.0.1", "multicast address 224.0.0.1"),
    ("239.255.255.250", "multicast address 239.255.255.250"),
    ("240.0.0.1", "reserved address 240.0.0.1"),
    ("255.255.255.255", "broadcast address 255.255.255.255"),
    ("::", "unspecified address ::"),
    ("::1", "loopback address ::1"),
    ("fe80::1", "link-local address fe80::1"),
    ("fe80::1%eth0", "link-local address fe80::1%eth0"),
    ("fec0::1", "site-local address fec0::1"),
    ("fc00::1", "unique local address fc00::1"),
    ("fd00::1", "unique local address fd00::1"),
    ("ff02::1", "multicast address ff02::1"),
    ("ff0e::1", "multicast address ff0e::1"),
    ("2001:db8::1", "documentation address 2001:db8::1"),
    ("3fff::1", "documentation address 3fff::1"),
    ("2001:2::1", "benchmarking address 2001:2::1"),
    ("2001:10::1", "IETF protocol assignment address 2001:10::1"),
    ("100::1", "reserved address 100::1"),
    ("::7f00:1", "reserved address ::7f00:1"),
    ("5f00::1", "reserved address 5f00::1"),
    # IPv6 forms of refused IPv4 addresses.
    (
        "::ffff:127.0.0.1",
        "loopback address 127.0.0.1 inside IPv4-mapped address ::ffff:7f00:1",
    ),
    (
        "::ffff:169.254.169.254",
        "link-local address 169.254.169.254 inside IPv4-mapped address ::ffff:a9fe:a9fe",
    ),
    ("64:ff9b::a00:1", "private address 10.0.0.1 inside NAT64 address 64:ff9b::a00:1"),
    (
        "64:ff9b::7f00:1",
        "loopback address 127.0.0.1 inside NAT64 address 64:ff9b::7f00:1",
    ),
    (
        "64:ff9b:1::a9fe:a9fe",
        "link-local address 169.254.169.254 inside local-use NAT64 address 64:ff9b:1::a9fe:a9fe",
    ),
    ("2002:a00:1::", "private address 10.0.0.1 inside 6to4 address 2002:a00:1::"),
    ("2002:7f00:1::1", "loopback address 127.0.0.1 inside 6to4 address 2002:7f00:1::1"),
    (
        # Teredo: the client's address is stored inverted in the low 32 bits.
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "loopback address 127.0.0.1 inside Teredo address 2001:0:4136:e378:8000:63bf:80ff:fffe",
    ),
    # IPv6 forms that are not global even around a global IPv4 address.
    ("64:ff9b:1::5db8:d822", "local-use NAT64 address 64:ff9b:1::5db8:d822"),
    (
        "2001:0:4136:e378:8000:63bf:a247:29dd",
        "Teredo address 2001:0:4136:e378:8000:63bf:a247:29dd",
    ),
]

ACCEPTED = [
    "93.184.216.34",
    "1.1.1.1",
    "8.8.8.8",
    "100.128.0.1",
    "172.32.0.1",
    "192.0.3.1",
    "223.255.255.254",
    "2606:4700::1",
    "2a00:1450:4001:80b::200e",
    "::ffff:93.184.216.34",
    "64:ff9b::5db8:d822",
    "2002:5db8:d822::1",
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_refused(address: str, reason: str) -> None:
    assert GUARD.refusal(ip_address(address)) == reason


@pytest.mark.parametrize("address", ACCEPTED)
def test_global_unicast_accepted(address: str) -> None:
    assert GUARD.refusal(ip_address(address)) is None


@pytest.mark.parametrize(
    ("allow", "address"),
    [
        ("127.0.0.0/8", "127.0.0.1"),
        ("127.0.0.0/8", "::ffff:127.0.0.1"),
        ("127.0.0.0/8", "64:ff9b::7f00:1"),
        ("10.0.0.0/8", "2002:a00:1::"),
        ("::1/128", "::1"),
        ("fd00::/8", "fd12::1"),
        ("169.254.169.254/32", "169.254.169.254"),
    ],
)
def test_allow_list_exempts(allow: str, address: str) -> None:
    guard = SsrfGuard(allow=[ip_network(allow)])
    assert guard.refusal(ip_address(address)) is None


@pytest.mark.parametrize(
    ("allow", "address"),
    [
        ("127.0.0.0/8", "10.0.0.1"),
        ("127.0.0.0/8", "::1"),
        ("::1/128", "127.0.0.1"),
        ("10.0.0.0/24", "10.0.1.1"),
        ("169.254.169.254/32", "169.254.169.253"),
    ],
)
def test_allow_list_is_narrow(allow: str, address: str) -> None:
    guard = SsrfGuard(allow=[ip_network(allow)])
    assert guard.refusal(ip_address(address)) is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hooks",
        "http://example.com:8080/hooks?x=1",
        "HTTPS://Example.COM/",
        "https://93.184.216.34/hook",
        "https://[2606:4700::1]:443/hook",
        "https://1.2.3.4.example/",
        "https://xn--exmple-cua.com/",
        "https://localhost.example.com/",
        "https://127.0.0.1.nip.io/",
    ],
)
def test_check_url_accepts(url: str) -> None:
    GUARD.check_url(url)


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("ftp://example.com/", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("javascript:alert(1)", "scheme 'javascript' is not allowed"),
        ("gopher://example.com/", "scheme 'gopher' is not allowed"),
        ("example.com/hook", "scheme '' is not allowed"),
        ("http:///hook", "no host"),
        ("https://", "no host"),
        ("http:hook", "no host"),
        ("https://user:secret@example.com/", "credentials"),
        ("https://user@example.com/", "credentials"),
        ("https://:secret@example.com/", "credentials"),
        ("https://example.com/" + "a" * 2048, "longer than 2048"),
        ("https://example.com:99999/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
        ("http://127.0.0.1/", "loopback address 127.0.0.1"),
        ("http://127.0.0.1:8000/", "loopback address 127.0.0.1"),
        ("http://10.0.0.1/", "private address 10.0.0.1"),
        ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
        ("http://0.0.0.0/", "unspecified address"),
        ("http://[::1]/", "loopback address ::1"),
        ("http://[::]/", "unspecified address ::"),
        ("http://[fd00::1]/", "unique local address fd00::1"),
        ("http://[fe80::1%25eth0]/", "link-local address"),
        ("http://[::ffff:127.0.0.1]/", "loopback address 127.0.0.1 inside IPv4-mapped"),
        ("http://[::ffff:a9fe:a9fe]/", "link-local address 169.254.169.254"),
        ("http://[64:ff9b::a00:1]/", "private address 10.0.0.1 inside NAT64"),
        ("http://[2002:a00:1::]/", "private address 10.0.0.1 inside 6to4"),
        ("http://localhost/", "host localhost is refused: loopback address"),
        ("http://LOCALHOST:8080/", "host localhost is refused"),
        ("http://localhost./", "host localhost. is refused"),
        ("http://api.localhost/", "host api.localhost is refused"),
        ("http://2130706433/", "not a canonical IP address"),
        ("http://017700000001/", "not a canonical IP address"),
        ("http://0x7f000001/", "not a canonical IP address"),
        ("http://0x7f.1/", "not a canonical IP address"),
        ("http://127.1/", "not a canonical IP address"),
        ("http://127.0.0.1./", "not a canonical IP address"),
    ],
)
def test_check_url_refuses(url: str, detail: str) -> None:
    with pytest.raises(InvalidEndpointUrl) as caught:
        GUARD.check_url(url)
    assert detail in caught.value.detail


def test_check_url_length_limit_is_inclusive() -> None:
    url = "https://example.com/"
    GUARD.check_url(url + "a" * (2048 - len(url)))


@pytest.mark.parametrize(
    ("allow", "url"),
    [
        ("127.0.0.0/8", "http://127.0.0.1:8000/"),
        ("127.0.0.0/8", "http://localhost:8000/"),
        ("::1/128", "http://localhost:8000/"),
        ("::1/128", "http://[::1]:8000/"),
        ("10.0.0.0/8", "http://10.1.2.3/"),
    ],
)
def test_check_url_honours_allow_list(allow: str, url: str) -> None:
    SsrfGuard(allow=[ip_network(allow)]).check_url(url)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1", "[::1]", "169.254.169.254", "::ffff:10.0.0.1", "fe80::1%25eth0"]
)
def test_check_destination_refuses_literals(host: str) -> None:
    with pytest.raises(AddressBlocked, match="is refused"):
        GUARD.check_destination(host)


@pytest.mark.parametrize("host", ["93.184.216.34", "[2606:4700::1]", "example.com", "localhost"])
def test_check_destination_leaves_names_to_the_resolver(host: str) -> None:
    GUARD.check_destination(host)


def _in(network: str) -> st.SearchStrategy[IPv4Address]:
    net = IPv4Network(network)
    return st.integers(int(net.network_address), int(net.broadcast_address)).map(IPv4Address)


NON_GLOBAL_V4 = st.one_of(
    _in("10.0.0.0/8"),
    _in("172.16.0.0/12"),
    _in("192.168.0.0/16"),
    _in("127.0.0.0/8"),
    _in("169.254.0.0/16"),
    _in("100.64.0.0/10"),
)
ANY_V4 = st.integers(0, 2**32 - 1).map(IPv4Address)
NAT64 = ip_network("64:ff9b::/96")


def _mapped(ip: IPv4Address) -> IPv6Address:
    return IPv6Address(0xFFFF_0000_0000 | int(ip))


@given(NON_GLOBAL_V4)
def test_non_global_ipv4_and_its_mapped_form_refused(ip: IPv4Address) -> None:
    assert GUARD.refusal(ip) is not None
    assert GUARD.refusal(_mapped(ip)) is not None


@given(ANY_V4)
def test_ipv6_forms_decided_like_their_ipv4(ip: IPv4Address) -> None:
    refused = GUARD.refusal(ip) is not None
    nat64 = IPv6Address(int(NAT64.network_address) | int(ip))
    sixtofour = IPv6Address(int(IPv6Address("2002::")) | int(ip) << 80)
    for form in (_mapped(ip), nat64, sixtofour):
        assert (GUARD.refusal(form) is not None) is refused


@given(ANY_V4)
def test_accepted_ipv4_is_global(ip: IPv4Address) -> None:
    if GUARD.refusal(ip) is None:
        assert ip.is_global


@given(st.integers(0, 2**128 - 1).map(IPv6Address))
def test_accepted_ipv6_is_global_unicast(ip: IPv6Address) -> None:
    if GUARD.refusal(ip) is None and ip.ipv4_mapped is None and ip not in NAT64:
        assert ip in ip_network("2000::/3")
        assert ip.is_global
