"""The client's address: the TCP peer, or what a trusted proxy says in ``X-Forwarded-For``.

Anyone can send ``X-Forwarded-For``; it names the client only when the peer that sent it is a
proxy the operator listed (``trusted_proxies``). The header is read right to left: each trusted
hop appended the address it saw, so the first address that is not a trusted proxy is the client.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Sequence

from distillguard.errors import BadInputError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK = ("127.0.0.0/8", "::1/128")


def parse_trusted(entries: Iterable[str], where: str = "trusted_proxies") -> tuple[Network, ...]:
    """Addresses or CIDR networks (``10.0.0.0/8``, ``192.0.2.7``, ``::1``)."""
    out = []
    for i, entry in enumerate(entries):
        try:
            out.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            raise BadInputError(f"not an IP address or network: {entry!r}", field=f"{where}[{i}]") from None
    return tuple(out)


def _ip(text: str):
    text = text.strip()
    if text.startswith("[") and "]" in text:          # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:                          # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(ip, networks: Sequence[Network]) -> bool:
    if ip is None:
        return False
    if getattr(ip, "ipv4_mapped", None) is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str | None:
    """The address to log and score for a request from ``peer`` carrying ``forwarded_for``."""
    if not trusted or not forwarded_for or not _trusted(_ip(peer or ""), trusted):
        return peer
    client = peer
    for hop in reversed(forwarded_for.split(",")[-32:]):
        ip = _ip(hop)
        if ip is None:            # garbage from beyond the last trusted hop: that hop is all we know
            return client
        client = str(ip)
        if not _trusted(ip, trusted):
            return client
    return client
