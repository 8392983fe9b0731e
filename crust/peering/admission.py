"""
L{Admission}: which peers this node lets in and dials, by the whitelists of
its configuration.

A peer's role (node or client) is what it claims, in its HELLO or, before
that, its certificate; each role has its own whitelist of IP networks
(C{None} allows everyone).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Callable, Iterable

from twisted.logger import Logger

from crust.address import Address
from crust.config import Config
from crust.identity import PeerId
from crust.roles import Role

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection


class Admission:
    """
    The whitelist policy of one node.

    @param config: returns the node's current L{Config} (it may change while
        running).
    """

    log = Logger()

    def __init__(self, config: Callable[[], Config]) -> None:
        self._config = config

    def peer_role(self, conn: "PeerConnection") -> Role:
        """The role C{conn}'s peer claims (a node, unless it says otherwise)."""
        role = conn.handshake.peer_role
        try:
            return Role.from_text(role) if role is not None else Role.NODE
        except ValueError:
            return Role.NODE

    def ip_allowed(self, conn: "PeerConnection", role: Role) -> bool:
        """Whether C{conn}'s peer address is whitelisted for C{role}."""
        config = self._config()
        allowed = config.whitelisted_client_ips if role is Role.CLIENT else config.whitelisted_node_ips
        if allowed is None or conn.peer_address is None:
            return True
        return ip_in(conn.peer_address.host, allowed)

    def admit(self, conn: "PeerConnection", peer_id: PeerId) -> bool:
        """May C{conn} to C{peer_id} become (or wait to become) an active connection?"""
        if self.ip_allowed(conn, self.peer_role(conn)):
            return True
        self.log.info("refusing {peer} from {address}: not whitelisted",
                      peer=str(peer_id), address=str(conn.peer_address))
        return False

    def may_dial(self, address: Address) -> bool:
        """Whether the node whitelist lets us dial C{address}."""
        allowed = self._config().whitelisted_node_ips
        return allowed is None or ip_in(address.host, allowed)


def ip_in(host: str, allowed: Iterable[str]) -> bool:
    """Whether C{host} (an IP address; IPv4-mapped counts as IPv4) is in one of the C{allowed} networks."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for entry in allowed:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False
