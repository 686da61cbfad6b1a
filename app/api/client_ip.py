"""Which IP a request comes from, for rate limiting: the socket peer, unless a trusted proxy says.

`X-Forwarded-For` / `Forwarded` are believed only when the peer is a trusted proxy, and then only
up to the right-most address that is not itself a trusted proxy: everything left of that was
written by the client, so a client can never choose its own bucket by sending these headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from starlette.types import Scope

IPAddress = IPv4Address | IPv6Address
Networks = Sequence[IPv4Network | IPv6Network]


def client_ip(scope: Scope, trusted_networks: Networks) -> str:
    client: Any = scope.get("client")
    peer_text = str(client[0]) if client else ""
    peer = parse_address(peer_text)
    if peer is None:
        return peer_text or "unknown"  # a unix socket or a test client: no IP to resolve
    if not _trusted(peer, trusted_networks):
        return str(peer)
    result = peer
    for hop in reversed(_forwarded_chain(scope)):
        address = parse_address(hop) if hop is not None else None
        if address is None:
            # The trusted proxy wrote something unusable ("unknown", "_hidden", no `for=`);
            # anything further left came from the client, so the proxy's own address stands.
            return str(result)
        result = address
        if not _trusted(address, trusted_networks):
            return str(address)
    return str(result)  # every hop is a trusted proxy: the left-most one is the client


def parse_address(text: str) -> IPAddress | None:
    """An address from `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]:80` or `"[2001:db8::1]"`."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's ::ffff:1.2.3.4 is the IPv4 client
    return address


def _trusted(address: IPAddress, networks: Networks) -> bool:
    return any(address in network for network in networks)


def _forwarded_chain(scope: Scope) -> list[str | None]:
    """The hops a proxy reported, client first; None marks a hop with no usable `for=`.

    X-Forwarded-For wins when both are present, because it is the header nearly every proxy
    (nginx, HAProxy, Envoy, cloud load balancers) appends to; a proxy that writes only
    `Forwarded` must drop an incoming X-Forwarded-For, as it must for any header it owns.
    """
    xff: list[str] = []
    forwarded: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            xff.append(value.decode("latin-1"))
        elif name == b"forwarded":
            forwarded.append(value.decode("latin-1"))
    if xff:
        return [part.strip() or None for part in ",".join(xff).split(",")]
    return [_for_param(element) for element in _split_outside_quotes(",".join(forwarded), ",")]


def _for_param(element: str) -> str | None:
    for pair in _split_outside_quotes(element, ";"):
        name, _, value = pair.partition("=")
        if name.strip().lower() == "for":
            return value.strip().strip('"').replace("\\", "") or None
    return None


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    # RFC 7239 values may be quoted strings, which may hold the separator.
    if not text.strip():
        return []
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts
