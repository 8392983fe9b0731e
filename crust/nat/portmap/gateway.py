"""
The default gateway, where NAT-PMP and PCP requests go, and the errors that
port mapping reports.

The parsers read the text of Linux's C{/proc/net/route} and
C{/proc/net/ipv6_route} and have no I/O; L{default_gateways} reads the files
(of the network namespace the process runs in).  On other systems the files
are absent and no gateway is found.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from typing import Optional

from crust.errors import CrustError

PROC_ROUTE = "/proc/net/route"
PROC_IPV6_ROUTE = "/proc/net/ipv6_route"

# route flags (linux/route.h, linux/ipv6_route.h)
RTF_UP = 0x0001
RTF_GATEWAY = 0x0002
RTF_REJECT = 0x0200


class PortMappingError(CrustError):
    """A port-mapping request failed."""


class NoService(PortMappingError):
    """The gateway does not answer this protocol (timeout, unreachable, unsupported)."""


class GatewayTimeout(NoService):
    """No valid response from the gateway after every retransmission."""


class MappingRefused(PortMappingError):
    """
    The gateway answered and refused.

    @ivar code: the protocol's result or error code (int), or C{None}.
    @ivar reason: the protocol's name for it, or a description.
    """

    def __init__(self, protocol: str, code: Optional[int], reason: str) -> None:
        self.protocol = protocol
        self.code = code
        self.reason = reason
        text = f"{protocol} refused" + (f" (code {code})" if code is not None else "")
        super().__init__(f"{text}: {reason}")


class MalformedResponse(PortMappingError, ValueError):
    """A response from the gateway breaks its protocol; the message says how."""


@dataclass(frozen=True)
class Gateway:
    """A default route: the next-hop C{address}, its C{interface} and C{metric}."""

    address: str
    interface: str
    metric: int

    @property
    def is_v6(self) -> bool:
        return ":" in self.address


def parse_ipv4_routes(text: str, byteorder: str = sys.byteorder) -> list[Gateway]:
    """
    The IPv4 default gateways in the text of C{/proc/net/route}, best (lowest
    metric) first.  Malformed lines are skipped.

    @param byteorder: of the machine that wrote the text (the kernel prints
        addresses as host-order integers).
    """
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, dest, gw, flags, metric, mask = fields[0], fields[1], fields[2], fields[3], fields[6], fields[7]
        try:
            dest_n, gw_n, flags_n, mask_n = (int(x, 16) for x in (dest, gw, flags, mask))
            metric_n = int(metric)
            gw_ip = ipaddress.IPv4Address(gw_n.to_bytes(4, byteorder))  # type: ignore[arg-type]
        except (ValueError, OverflowError):
            continue
        if dest_n != 0 or mask_n != 0 or gw_n == 0:
            continue
        if flags_n & (RTF_UP | RTF_GATEWAY) != (RTF_UP | RTF_GATEWAY) or flags_n & RTF_REJECT:
            continue
        found.append(Gateway(str(gw_ip), iface, metric_n))
    return sorted(found, key=lambda g: g.metric)


def parse_ipv6_routes(text: str) -> list[Gateway]:
    """
    The IPv6 default gateways in the text of C{/proc/net/ipv6_route}, best
    first.  Link-local next hops carry their interface as a zone
    (C{fe80::1%eth0}).  Malformed lines are skipped.
    """
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 10:
            continue
        dest, dest_len, nexthop, metric, flags, iface = (
            fields[0], fields[1], fields[4], fields[5], fields[8], fields[9])
        try:
            if len(dest) != 32 or len(nexthop) != 32:
                continue
            dest_n, dest_len_n, flags_n, metric_n = int(dest, 16), int(dest_len, 16), int(flags, 16), int(metric, 16)
            hop = ipaddress.IPv6Address(bytes.fromhex(nexthop))
        except ValueError:
            continue
        if dest_n != 0 or dest_len_n != 0 or hop.is_unspecified or iface == "lo":
            continue
        if flags_n & (RTF_UP | RTF_GATEWAY) != (RTF_UP | RTF_GATEWAY) or flags_n & RTF_REJECT:
            continue
        address = f"{hop}%{iface}" if hop.is_link_local else str(hop)
        found.append(Gateway(address, iface, metric_n))
    return sorted(found, key=lambda g: g.metric)


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(1 << 20)
    except OSError:
        return ""


def default_gateways(route_path: str = PROC_ROUTE, ipv6_route_path: str = PROC_IPV6_ROUTE) -> list[Gateway]:
    """The default gateways of this host (IPv4 first, each family best first); [] if none or unknown."""
    return parse_ipv4_routes(_read(route_path)) + parse_ipv6_routes(_read(ipv6_route_path))


def default_gateway_v4(route_path: str = PROC_ROUTE) -> Optional[str]:
    """The address of the best IPv4 default gateway, or C{None}."""
    gateways = parse_ipv4_routes(_read(route_path))
    return gateways[0].address if gateways else None
