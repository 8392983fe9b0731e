"""
Tests for L{crust.peering.table.PeerTable}: the user's disconnect also ends
the connections to that peer still in their handshake.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from crust.session.connection import PathInfo, PeerConnection
from crust.wire import FrameType, Hello, frame

from tests.punch.fakes import NET, TableNode
from tests.util import ordered_identities


class DisconnectTests(SynchronousTestCase):
    def setUp(self) -> None:
        high, low = ordered_identities()
        self.peer = high.peer_id
        self.node = TableNode(low.peer_id)  # the smaller id: the peer chooses
        self.table = self.node.table

    def made(self) -> PeerConnection:
        """A connection to the peer, built (its TLS not done yet)."""
        conn = PeerConnection(self.table, self.node.clock, local_id=self.node.local_id, network=NET,
                              initiator=False, max_message_size=100_000, max_queued_bytes=1_000_000,
                              drop_after=60.0, heartbeat_interval=20.0, inactivity_timeout=120.0,
                              handshake_timeout=10.0)
        self.table.connection_made(conn)
        conn.makeConnection(StringTransport())
        return conn

    def handshake(self, conn: PeerConnection, choose: bool = True) -> None:
        conn.handshake.tls_complete(self.peer)
        conn.dataReceived(Hello(network=NET).encode())
        if choose and not conn.closing:
            conn.dataReceived(frame(FrameType.CHOOSE))

    def test_a_connection_made_before_the_disconnect_does_not_bring_the_peer_back(self) -> None:
        active = self.made()
        self.handshake(active)
        self.assertIs(self.table.active[self.peer], active)
        waiting = self.made()
        self.handshake(waiting, choose=False)  # a candidate, waiting for CHOOSE
        in_tls = self.made()  # (an accepted one: its peer is known once TLS is done)
        self.assertTrue(self.table.disconnect(self.peer, pending=True))
        self.assertTrue(active.closing and waiting.closing)
        for conn in (active, waiting):
            conn.connectionLost(Failure(ConnectionDone()))
        self.handshake(in_tls)
        self.assertTrue(in_tls.closing)
        self.assertNotIn(self.peer, self.table.active)
        self.assertIn("disconnect", in_tls._close_reason)
        # a connection made afterwards connects as usual
        again = self.made()
        self.handshake(again)
        self.assertIs(self.table.active[self.peer], again)

    def test_without_pending_only_the_active_connection_closes(self) -> None:
        active = self.made()
        self.handshake(active)
        in_tls = self.made()
        self.table.disconnect(self.peer)
        self.handshake(in_tls)
        self.assertIs(self.table.active.get(self.peer), in_tls)


class PathClassifierTests(SynchronousTestCase):
    """
    A connection's path is known before it is ranked against the active one:
    a connection through a TURN server (its path set only once promoted)
    taken for a direct one made the chooser move a relayed connection onto
    it, while the peer, which knew it was relayed, closed it.
    """

    def setUp(self) -> None:
        high, low = ordered_identities()
        self.peer = low.peer_id
        self.node = TableNode(high.peer_id)  # the larger id: we choose
        self.table = self.node.table
        self.through_turn: set[PeerConnection] = set()

    def made(self, through_turn: bool = False) -> PeerConnection:
        """A connection from the peer, its HELLO received (we choose at once)."""
        conn = PeerConnection(self.table, self.node.clock, local_id=self.node.local_id, network=NET,
                              initiator=False, max_message_size=100_000, max_queued_bytes=1_000_000,
                              drop_after=60.0, heartbeat_interval=20.0, inactivity_timeout=120.0,
                              handshake_timeout=10.0)
        if through_turn:
            self.through_turn.add(conn)
        self.table.connection_made(conn)
        conn.makeConnection(StringTransport())
        conn.handshake.tls_complete(self.peer)
        conn.dataReceived(Hello(network=NET, handover=True).encode())
        return conn

    def active_relayed(self) -> PeerConnection:
        active = self.made()
        self.assertIs(self.table.active[self.peer], active)
        active.path = TURN_PATH
        return active

    def classify(self, conn: PeerConnection) -> None:
        if conn in self.through_turn:
            conn.path = TURN_PATH

    def test_a_connection_a_classifier_knows_as_relayed_does_not_replace_a_relayed_one(self) -> None:
        active = self.active_relayed()
        self.table.classify_paths(self.classify)
        second = self.made(through_turn=True)
        self.assertEqual(second.path, TURN_PATH)
        self.assertIs(self.table.active[self.peer], active)  # no handover onto another relayed path
        self.assertTrue(second.closing)
        self.assertNotIn(self.peer, self.table.handovers.moving)

    def test_a_direct_connection_still_replaces_a_relayed_one(self) -> None:
        active = self.active_relayed()
        self.table.classify_paths(self.classify)
        direct = self.made()
        self.assertIsNone(direct.path)
        self.assertIs(self.table.active[self.peer], direct)
        self.assertIn(self.peer, self.table.handovers.moving)
        self.assertFalse(active.closing)  # drained first, then kept as the standby


TURN_PATH = PathInfo("relayed", "turn", None, "turn:192.0.2.1:3478")
