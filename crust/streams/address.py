"""
L{StreamAddress}: one end of a byte stream, as C{getPeer()} and C{getHost()} name it.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IAddress
from zope.interface import implementer

from crust.identity import PeerId


@implementer(IAddress)
@dataclass(frozen=True)
class StreamAddress:
    """
    A node and the service of a stream: C{getPeer()} gives the peer's,
    C{getHost()} our own.

    @ivar peer_id: the node's L{PeerId}.
    @ivar service: the stream's service name (what the acceptor listens for).
    @ivar transport: how the crust connection under the stream runs:
        C{tcp}, C{udp} (QUIC) or C{relay}.
    """

    peer_id: PeerId
    service: str
    transport: str = "tcp"

    def __str__(self) -> str:
        return f"crust:{self.peer_id}:{self.service}"
