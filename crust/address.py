"""
Transport addresses as they appear in connection info, configs and logs.

Text form: C{"tcp:203.0.113.5:4242"}, C{"udp:[2001:db8::1]:4242"}.  Parsing is
strict (a literal IP address, a port in 1..65535); host names are not resolved.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

TRANSPORTS = ("tcp", "udp")


@dataclass(frozen=True, order=True)
class Address:
    """One transport address: C{transport} is C{"tcp"} or C{"udp"}."""

    transport: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {self.transport!r} (expected tcp or udp)")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port!r}")
        object.__setattr__(self, "host", canonical_ip(self.host))

    @classmethod
    def parse(cls, text: object, default_transport: str | None = None) -> "Address":
        """
        Parse C{"tcp:1.2.3.4:5"} (or C{"1.2.3.4:5"} when C{default_transport}
        is given).

        @raise ValueError: with a message naming the bad part.
        """
        if not isinstance(text, str):
            raise ValueError(f"an address is text, not {type(text).__name__}")
        rest = text.strip()
        transport = default_transport
        head, sep, tail = rest.partition(":")
        if sep and head in TRANSPORTS:
            transport, rest = head, tail
        if transport is None:
            raise ValueError(f"address {text!r} lacks a transport (tcp: or udp:)")
        host, port = split_host_port(rest, text)
        return cls(transport, host, port)

    @classmethod
    def from_sockaddr(cls, transport: str, addr: Any) -> "Address | None":
        """
        The L{Address} of a socket address as Twisted and the socket module
        give it: a C{(host, port[, flowinfo, scope_id])} tuple, or an object
        with C{host} and C{port} (C{IPv4Address}, C{IPv6Address}).  An
        IPv4-mapped IPv6 address (C{::ffff:192.0.2.1}, from a dual-stack
        socket) becomes the IPv4 address; an IPv6 scope id (C{fe80::1%eth0})
        is dropped.

        @return: None when C{addr} is not usable: no IP address, a port
            outside 1..65535, or something else altogether.
        @raise ValueError: C{transport} is not one of L{TRANSPORTS}.
        """
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r} (expected tcp or udp)")
        host = getattr(addr, "host", None)
        if host is not None:
            port = getattr(addr, "port", None)
        else:
            try:
                host, port = addr[0], addr[1]
            except (TypeError, IndexError, KeyError):
                return None
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
            return None
        if not 0 < port < 65536:
            return None
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return cls(transport, str(ip), port)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return _ip_object(self.host)

    @property
    def is_loopback(self) -> bool:
        return _ip_object(self.host).is_loopback

    @property
    def family_is_v6(self) -> bool:
        return ":" in self.host

    def host_port(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family_is_v6 else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.transport}:{self.host_port()}"

    def sockaddr(self) -> tuple[str, int]:
        return (self.host, self.port)


@lru_cache(maxsize=4096)
def _ip_object(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(host)


@lru_cache(maxsize=4096)
def canonical_ip(host: str) -> str:
    """The canonical text of an IP address (cached: connections parse the same few often)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"not an IP address: {host!r}") from None


def split_host_port(text: str, original: str | None = None) -> tuple[str, int]:
    """Split C{"1.2.3.4:5"} or C{"[::1]:5"} into a host and an integer port."""
    original = text if original is None else original
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"bad address {original!r}: expected [ipv6]:port")
        host, port_text = text[1:close], text[close + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"bad address {original!r}: expected ip:port")
    if not port_text.isdigit():
        raise ValueError(f"bad port in {original!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {original!r}")
    try:
        canonical_ip(host)
    except (ValueError, TypeError):
        raise ValueError(f"bad address {original!r}: {host!r} is not an IP address") from None
    return host, port


def is_global(host: str) -> bool:
    """True for addresses routable on the internet (documentation ranges count: the lab uses them)."""
    ip = ipaddress.ip_address(host)
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return False
    if ip.version == 4:
        for net in _V4_DOC_NETS:
            if ip in net:
                return True
        if ip in _CGNAT:
            return False
    return not ip.is_private


_V4_DOC_NETS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
