"""Client-IP resolution: the socket peer, unless a trusted proxy reports the client."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from pydantic import ValidationError

from app.api.client_ip import client_ip, parse_address
from app.config.settings import Settings

LOCAL = (ip_network("127.0.0.1/32"),)
PROXIES = (ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8"), ip_network("fd00::/8"))


def scope(peer: str | None, *headers: tuple[str, str]) -> dict:
    return {
        "type": "http",
        "client": (peer, 50000) if peer is not None else None,
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
    }


def xff(value: str) -> tuple[str, str]:
    return ("X-Forwarded-For", value)


def fwd(value: str) -> tuple[str, str]:
    return ("Forwarded", value)


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:0DB8:0000::0001", "2001:db8::1"),
        ("::ffff:198.51.100.4", "198.51.100.4"),  # a dual-stack socket's view of an IPv4 client
        ("::1", "::1"),
    ],
)
def test_the_socket_peer_normalised(peer, expected):
    assert client_ip(scope(peer), ()) == expected
    assert client_ip(scope(peer), PROXIES) == expected


def test_no_peer_or_a_non_ip_peer():
    assert client_ip(scope(None), PROXIES) == "unknown"
    assert client_ip(scope("testclient"), PROXIES) == "testclient"


@pytest.mark.parametrize(
    "header",
    [xff("198.51.100.1"), fwd("for=198.51.100.1"), xff("10.0.0.1"), fwd('for="[fd00::1]"')],
)
def test_headers_from_an_untrusted_peer_are_ignored(header):
    assert client_ip(scope("203.0.113.7", header), PROXIES) == "203.0.113.7"
    assert client_ip(scope("127.0.0.1", header), ()) == "127.0.0.1"


def test_a_trusted_proxy_names_the_client():
    assert client_ip(scope("127.0.0.1", xff("198.51.100.1")), LOCAL) == "198.51.100.1"
    assert client_ip(scope("127.0.0.1", xff("2001:db8::7")), LOCAL) == "2001:db8::7"


def test_a_client_cannot_pick_its_bucket_through_a_trusted_proxy():
    # The client sent "X-Forwarded-For: 6.6.6.6, 10.0.0.9"; the proxy appended the real peer.
    spoofed = xff("6.6.6.6, 10.0.0.9, 198.51.100.1")
    assert client_ip(scope("127.0.0.1", spoofed), PROXIES) == "198.51.100.1"


def test_a_chain_of_trusted_proxies_is_walked_right_to_left():
    chain = xff("6.6.6.6, 198.51.100.1, 10.1.2.3, 10.0.0.2")
    assert client_ip(scope("127.0.0.1", chain), PROXIES) == "198.51.100.1"


def test_all_hops_trusted_gives_the_left_most():
    assert client_ip(scope("127.0.0.1", xff("10.0.0.3, 10.0.0.2")), PROXIES) == "10.0.0.3"


def test_repeated_headers_are_one_list():
    both = scope("127.0.0.1", xff("6.6.6.6"), xff("198.51.100.1, 10.0.0.2"))
    assert client_ip(both, PROXIES) == "198.51.100.1"


def test_ports_and_brackets_are_stripped():
    assert client_ip(scope("127.0.0.1", xff("198.51.100.1:4711")), LOCAL) == "198.51.100.1"
    assert client_ip(scope("127.0.0.1", xff("[2001:db8::1]:4711")), LOCAL) == "2001:db8::1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ('For="192.0.2.43:47011"', "192.0.2.43"),
        ("for=6.6.6.6, for=198.51.100.2", "198.51.100.2"),
        ('for=6.6.6.6;by="a,b", for=198.51.100.3;proto=https', "198.51.100.3"),
        ("for=198.51.100.4, for=10.0.0.2", "198.51.100.4"),
    ],
)
def test_forwarded_header(value, expected):
    assert client_ip(scope("127.0.0.1", fwd(value)), PROXIES) == expected


@pytest.mark.parametrize(
    "header",
    [
        fwd("for=6.6.6.6, for=unknown"),
        fwd("for=6.6.6.6, for=_hidden"),
        fwd("for=6.6.6.6, proto=https"),
        xff("6.6.6.6, not-an-ip"),
        xff("6.6.6.6, "),
    ],
)
def test_an_unusable_hop_stops_the_walk_at_the_proxy(header):
    # Anything left of what the proxy wrote came from the client, so it must not be used.
    assert client_ip(scope("127.0.0.1", header), PROXIES) == "127.0.0.1"


def test_x_forwarded_for_wins_over_forwarded():
    both = scope("127.0.0.1", fwd("for=6.6.6.6"), xff("198.51.100.1"))
    assert client_ip(both, LOCAL) == "198.51.100.1"


def test_parse_address_forms():
    assert str(parse_address(" 192.0.2.1 ")) == "192.0.2.1"
    assert str(parse_address('"[2001:db8::1]:80"')) == "2001:db8::1"
    assert str(parse_address("[2001:db8::1]")) == "2001:db8::1"
    assert parse_address("[2001:db8::1") is None
    assert parse_address("example.com") is None
    assert parse_address("") is None


def trusted(value: str) -> tuple:
    return Settings(_env_file=None, TRUSTED_PROXIES=value).TRUSTED_PROXIES  # type: ignore[call-arg]


def test_trusted_proxies_setting_is_parsed_once_and_validated():
    parsed = trusted(" 127.0.0.1/32, 10.0.0.0/8 ,fd00::/8,::1")
    expected = ("127.0.0.1/32", "10.0.0.0/8", "fd00::/8", "::1/128")
    assert parsed == tuple(ip_network(network) for network in expected)
    assert trusted("") == ()
    for bad, named in (("10.0.0.0/8,banana", "'banana'"), ("10.0.0.5/8", "10.0.0.0/8?")):
        with pytest.raises(ValidationError) as caught:
            trusted(bad)
        assert "TRUSTED_PROXIES" in str(caught.value) and named in str(caught.value)
