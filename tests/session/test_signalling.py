"""Control frames by table: claiming types, and frames reaching the subsystem that claimed them."""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from crust.peering.admission import Admission
from crust.config import Config
from crust.session.connection import PeerConnection
from crust.errors import ProtocolViolation
from crust.identity import PeerId
from crust.observer import Observers
from crust.peering.table import PeerTable
from crust.session.signalling import ControlFrames
from crust.wire import CloseReason, FrameType, Hello, frame, network_hash

NET = network_hash(None)
HIGH = PeerId(b"\x09" * 32)
LOW = PeerId(b"\x01" * 32)
CUSTOM = 40


class ControlFramesTests(SynchronousTestCase):
    def test_claim_and_dispatch(self):
        frames = ControlFrames()
        seen = []
        frames.register(CUSTOM, lambda conn, payload: seen.append((conn, payload)))
        self.assertTrue(frames.dispatch("conn", CUSTOM, b"x"))
        self.assertEqual(seen, [("conn", b"x")])
        self.assertFalse(frames.dispatch("conn", CUSTOM + 1, b"y"))
        self.assertIn(CUSTOM, frames)

    def test_a_type_is_claimed_once(self):
        frames = ControlFrames()
        frames.register(CUSTOM, lambda conn, payload: None)
        with self.assertRaises(ValueError) as e:
            frames.register(CUSTOM, lambda conn, payload: None)
        self.assertIn("already claimed", str(e.exception))

    def test_builtin_and_out_of_range_types_are_refused(self):
        frames = ControlFrames()
        for ftype in (int(FrameType.HELLO), int(FrameType.DATA), int(FrameType.CLOSE), 0, 256, -1):
            self.assertRaises(ValueError, frames.register, ftype, lambda conn, payload: None)

    def test_unregister_frees_the_type(self):
        frames = ControlFrames()
        unregister = frames.register(CUSTOM, lambda conn, payload: None)
        unregister()
        self.assertNotIn(CUSTOM, frames)
        frames.register(CUSTOM, lambda conn, payload: None)  # free again


class TableDispatchTests(SynchronousTestCase):
    """A frame of a claimed type, sent by the peer, reaches its handler through the peer table."""

    def make(self):
        self.clock = Clock()
        config = Config()
        observers = Observers()
        self.table = PeerTable(Admission(lambda: config), observers, lambda conn: Hello(network=NET))
        self.table.accepting = True
        conn = PeerConnection(self.table, self.clock, local_id=HIGH, network=NET, initiator=True,
                              max_message_size=1000, max_queued_bytes=3000, drop_after=60.0,
                              heartbeat_interval=20.0, inactivity_timeout=120.0, handshake_timeout=10.0)
        self.table.connection_made(conn)
        self.transport = StringTransport()
        conn.makeConnection(self.transport)
        conn.handshake.tls_complete(LOW)
        conn.dataReceived(Hello(network=NET).encode())
        self.assertTrue(conn.is_active)
        return conn

    def test_claimed_frame_reaches_its_handler(self):
        conn = self.make()
        seen = []
        self.table.control_frames.register(CUSTOM, lambda c, payload: seen.append((c, payload)))
        conn.dataReceived(frame(CUSTOM, b"rendezvous"))
        self.assertEqual(seen, [(conn, b"rendezvous")])
        self.assertFalse(conn.closing)

    def test_unclaimed_frame_closes_only_that_connection(self):
        conn = self.make()
        conn.dataReceived(frame(CUSTOM, b"?"))
        self.assertTrue(conn.closing)
        self.assertIn(CloseReason.PROTOCOL_ERROR.value, conn._close_reason)
        self.assertIn(f"unknown frame type {CUSTOM}", conn._close_reason)

    def test_violation_is_a_protocol_violation(self):
        conn = self.make()
        self.assertRaises(ProtocolViolation, conn._control, CUSTOM, b"")
