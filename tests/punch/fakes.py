"""
Helpers shared by the hole-punching tests: a node's peer table with active
connections over L{StringTransport}, and reading the frames they wrote.
"""

from __future__ import annotations

import struct

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from crust.config import Config
from crust.identity import PeerId
from crust.observer import Observers
from crust.peering.admission import Admission
from crust.peering.table import PeerTable
from crust.session.connection import PeerConnection
from crust.wire import FrameType, Hello, frame, network_hash

NET = network_hash(None)


class TableNode:
    """A peer table of node C{local_id} on a L{Clock}, with connections made active by hand."""

    def __init__(self, local_id: PeerId, clock: Clock | None = None) -> None:
        self.local_id = local_id
        self.clock = clock or Clock()
        config = Config()
        self.table = PeerTable(Admission(lambda: config), Observers(), lambda conn: Hello(network=NET))
        self.table.accepting = True
        self.transports: dict[PeerId, StringTransport] = {}

    def connect(self, peer_id: PeerId) -> PeerConnection:
        """An active connection to C{peer_id} (its output in C{self.transports[peer_id]}, cleared)."""
        conn = PeerConnection(self.table, self.clock, local_id=self.local_id, network=NET, initiator=True,
                              max_message_size=100_000, max_queued_bytes=1_000_000, drop_after=60.0,
                              heartbeat_interval=20.0, inactivity_timeout=120.0, handshake_timeout=10.0)
        self.table.connection_made(conn)
        transport = StringTransport()
        conn.makeConnection(transport)
        conn.handshake.tls_complete(peer_id)
        conn.dataReceived(Hello(network=NET).encode())
        if not conn.is_active:
            conn.dataReceived(frame(FrameType.CHOOSE))  # the peer is the chooser
        assert conn.is_active, conn
        transport.clear()
        self.transports[peer_id] = transport
        return conn

    def frames(self, peer_id: PeerId) -> list[tuple[int, bytes]]:
        """The frames written to C{peer_id} since the last call (then forgotten)."""
        transport = self.transports[peer_id]
        data = transport.value()
        transport.clear()
        return split_frames(data)


def split_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each whole frame in C{data}."""
    out = []
    while len(data) >= 5:
        length, ftype = struct.unpack("!IB", data[:5])
        out.append((ftype, data[5:4 + length]))
        data = data[4 + length:]
    assert not data, "a partial frame"
    return out
