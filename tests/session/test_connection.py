"""PeerConnection with a StringTransport and a Clock: framing, liveness, queues."""

import gc
import json
import struct
import weakref

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import SynchronousTestCase

from crust.session.connection import PeerConnection
from crust.errors import InvalidPriority, MessageTooLarge, SendQueueFull
from crust.identity import PeerId
from crust.session.send_queue import Dropped
from crust.wire import (DATA, CHOOSE_HANDOVER_FRAME, CloseReason, FrameType, Hello, Intent, RejectReason, frame,
                        encode_close, encode_reject, network_hash)

from tests import examples
from tests.mutate import chunks, cuts, mutated

NET = network_hash(None)
HIGH = PeerId(b"\x09" * 32)
LOW = PeerId(b"\x01" * 32)


class FakeOwner:
    def __init__(self):
        self.calls = []
        self.messages = []

    def hello_for(self, conn):
        return Hello(network=NET)

    def claim(self, conn, peer_id):
        self.calls.append(("claim", peer_id))
        return True

    def promote(self, conn, peer_id):
        self.calls.append(("promote", peer_id))
        conn.deliver = self.messages.append

    def __getattr__(self, name):
        return lambda conn, *args: self.calls.append((name,) + args)

    def control_received(self, conn, ftype, payload):
        return False

    def named(self, name):
        return [c[1:] for c in self.calls if c[0] == name]


def parse_frames(data):
    out, off = [], 0
    while off < len(data):
        (length,) = struct.unpack_from("!I", data, off)
        out.append((data[off + 4], data[off + 5 : off + 4 + length]))
        off += 4 + length
    return out


class ConnectionTests(SynchronousTestCase):
    def make(self, local=HIGH, peer=LOW, **kw):
        self.clock = Clock()
        self.owner = FakeOwner()
        settings = dict(max_message_size=1000, max_queued_bytes=3000, drop_after=60.0,
                        heartbeat_interval=20.0, inactivity_timeout=120.0, handshake_timeout=10.0)
        settings.update(kw)
        conn = PeerConnection(self.owner, self.clock, local_id=local, network=NET, initiator=True, **settings)
        self.transport = StringTransport()
        conn.makeConnection(self.transport)
        conn.handshake.tls_complete(peer)
        conn.dataReceived(Hello(network=NET).encode())
        self.conn = conn
        return conn

    def written(self):
        data = self.transport.value()
        self.transport.clear()
        return parse_frames(data)

    def lose(self):
        self.conn.connectionLost(Failure(ConnectionDone()))

    def test_chooser_becomes_active(self):
        self.make()
        frames = self.written()
        self.assertEqual([f[0] for f in frames], [FrameType.HELLO, FrameType.CHOOSE])
        self.assertEqual(self.owner.named("promote"), [(LOW,)])
        self.assertTrue(self.conn.is_active)

    def test_messages_delivered_in_order_byte_by_byte(self):
        self.make()
        stream = b"".join(frame(DATA, b"m%d" % i) for i in range(50))
        for i in range(len(stream)):
            self.conn.dataReceived(stream[i : i + 1])
        self.assertEqual(self.owner.messages, [b"m%d" % i for i in range(50)])

    def test_send_writes_a_data_frame(self):
        self.make()
        self.written()
        self.conn.send_message(b"hi", 3)
        self.assertEqual(self.written(), [(DATA, b"hi")])

    def test_send_checks(self):
        self.make()
        self.written()
        e = self.assertRaises(MessageTooLarge, self.conn.send_message, b"x" * 1001, 1)
        self.assertEqual((e.size, e.limit), (1001, 1000))
        self.assertRaises(InvalidPriority, self.conn.send_message, b"x", 256)
        self.assertRaises(InvalidPriority, self.conn.send_message, b"x", -1)
        self.assertRaises(InvalidPriority, self.conn.send_message, b"x", "1")
        self.assertEqual(self.written(), [])

    def test_heartbeat_after_idle_sending(self):
        self.make()
        self.written()
        self.clock.advance(19)
        self.conn.dataReceived(frame(FrameType.HEARTBEAT))  # receiving does not count as sending
        self.assertEqual(self.written(), [])
        self.clock.advance(1)
        self.assertEqual(self.written(), [(FrameType.HEARTBEAT, b"")])
        self.conn.send_message(b"x", 1)
        self.written()
        self.clock.advance(19.5)
        self.assertEqual(self.written(), [])

    def test_heartbeat_follows_the_last_of_many_sends_within_a_quarter_interval(self):
        self.make()
        for _ in range(30):  # a send every second for 30 s (sends do not read the clock)
            self.conn.send_message(b"x", 1)
            self.conn.dataReceived(frame(FrameType.HEARTBEAT))
            self.clock.advance(1)
        last_send = self.clock.seconds() - 1
        self.written()
        while not [f for f in self.written() if f[0] == FrameType.HEARTBEAT]:
            self.clock.advance(0.25)
            self.conn.dataReceived(frame(FrameType.HEARTBEAT))
        gap = self.clock.seconds() - last_send
        self.assertTrue(20 <= gap <= 25.25, gap)

    def test_silent_for_half_the_timeout_asks_the_peer_to_answer(self):
        # a peer that sends heartbeats seldom (20 s) keeps a connection that waits only 3 s alive by answering
        self.make(heartbeat_interval=20.0, inactivity_timeout=3.0)
        self.written()
        for _ in range(10):
            self.clock.advance(1.5)
            self.assertEqual(self.written(), [(FrameType.HEARTBEAT, b"\x01")])  # asked once per silence
            self.clock.advance(0.1)
            self.conn.dataReceived(frame(FrameType.HEARTBEAT))  # the answer
        self.assertFalse(self.transport.disconnecting)
        self.clock.pump([0.5] * 6)  # no answer: lost after the timeout, asked once more on the way
        self.assertEqual([f for f in self.written() if f[0] == FrameType.HEARTBEAT], [(FrameType.HEARTBEAT, b"\x01")])
        self.assertTrue(self.transport.disconnecting)

    def test_a_moment_computed_as_a_sum_is_not_missed_by_a_rounding_error(self):
        # 66.1 - 6.1 < 60 in floating point: the tick due at 6.1 + 60 must still find the ask due (it came
        # again at once, for ever)
        self.make()
        self.clock.advance(6.1)
        self.conn.dataReceived(frame(FrameType.HEARTBEAT))
        self.written()
        self.clock.advance(60)
        self.assertEqual(self.clock.seconds(), 66.1)
        self.assertIn((FrameType.HEARTBEAT, b"\x01"), self.written())
        [call] = self.clock.getDelayedCalls()
        self.assertGreater(call.getTime(), 66.1)

    def test_an_asking_heartbeat_is_answered_while_the_transport_takes_data(self):
        self.make()
        self.written()
        self.conn.dataReceived(frame(FrameType.HEARTBEAT, b"\x01"))
        self.assertEqual(self.written(), [(FrameType.HEARTBEAT, b"")])
        self.conn.dataReceived(frame(FrameType.HEARTBEAT, b"\x00"))  # not asking (an unknown payload is ignored)
        self.assertEqual(self.written(), [])
        self.conn.pauseProducing()  # the peer does not read: asks are not answered, nothing piles up
        for _ in range(1000):
            self.conn.dataReceived(frame(FrameType.HEARTBEAT, b"\x01"))
        self.assertEqual(self.conn.queues.count, 0)
        self.conn.resumeProducing()
        self.assertEqual(self.written(), [])

    def test_ask_peer_fires_at_the_next_heartbeat(self):
        self.make()
        self.written()
        asked = self.conn.ask_peer()
        self.assertEqual(self.written(), [(FrameType.HEARTBEAT, b"\x01")])
        self.conn.dataReceived(frame(DATA, b"m"))
        self.assertNoResult(asked)
        self.conn.dataReceived(frame(FrameType.HEARTBEAT))
        self.assertIsNone(self.successResultOf(asked))
        self.conn.dataReceived(frame(FrameType.HEARTBEAT))  # told once

    def test_ask_peer_fails_when_the_connection_ends_first(self):
        self.make()
        asked = self.conn.ask_peer()
        self.lose()
        self.failureResultOf(asked, ConnectionDone)
        self.assertTrue(self.owner.named("lost"))  # the owner heard of the loss first
        self.failureResultOf(self.conn.ask_peer(), ConnectionDone)  # not active any more

    def test_ask_peer_fails_on_a_connection_not_active(self):
        self.make(local=LOW, peer=HIGH)  # the peer chooses: waiting for CHOOSE
        self.assertFalse(self.conn.is_active)
        self.failureResultOf(self.conn.ask_peer(), ConnectionDone)

    def test_lost_after_inactivity(self):
        self.make()
        self.clock.advance(100)
        self.conn.dataReceived(frame(FrameType.HEARTBEAT))
        self.clock.advance(119)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(self.transport.disconnected)  # aborted at once: no flush over a dead path
        self.assertIn((FrameType.CLOSE, ), [f[:1] for f in self.written()])
        self.lose()
        (reason,) = self.owner.named("lost")[0]
        self.assertIn("nothing received for 120 s", reason)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_backpressure_queues_and_drains_by_priority(self):
        self.make()
        self.written()
        self.conn.pauseProducing()
        self.conn.send_message(b"low", 9)
        self.conn.send_message(b"urgent", 0)
        self.conn.send_message(b"mid", 4)
        self.assertEqual(self.written(), [])
        self.assertEqual(self.conn.queued_bytes, 12)
        self.conn.resumeProducing()
        self.assertEqual(self.written(), [(DATA, b"urgent"), (DATA, b"mid"), (DATA, b"low")])
        self.assertEqual(self.conn.queued_bytes, 0)
        self.assertTrue(self.owner.named("writable"))

    def test_queue_bound(self):
        self.make()
        self.conn.pauseProducing()
        for _ in range(3):
            self.conn.send_message(b"x" * 1000, 1)
        e = self.assertRaises(SendQueueFull, self.conn.send_message, b"y", 1)
        self.assertIn("3000 bytes already queued", str(e))

    def test_stale_queue_dropped_and_reported(self):
        self.make()
        self.conn.pauseProducing()
        self.conn.send_message(b"keep", 1)
        self.conn.send_message(b"stale", 5)
        self.clock.advance(30)
        self.conn.dataReceived(frame(FrameType.HEARTBEAT))
        self.clock.advance(35)
        drops = self.owner.named("dropped")
        self.assertEqual(drops[0][0], [Dropped(5, 1, 5)])
        self.assertIn("60 s", drops[0][1])
        self.written()
        self.conn.resumeProducing()
        self.assertEqual([f for f in self.written() if f[0] == DATA], [(DATA, b"keep")])

    def test_queued_messages_reported_when_connection_ends(self):
        self.make()
        self.conn.pauseProducing()
        self.conn.send_message(b"abc", 1)
        self.lose()
        self.assertEqual(self.owner.named("dropped"), [([Dropped(1, 1, 3)], "connection closed")])

    def test_oversize_frame_from_peer_closes_with_reason(self):
        self.make()
        self.written()
        self.conn.dataReceived(struct.pack("!IB", 5000, DATA))
        frames = self.written()
        self.assertEqual(frames[0][0], FrameType.CLOSE)
        self.assertEqual(json.loads(frames[0][1])["reason"], "oversize")
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.assertIn("oversize", self.owner.named("lost")[0][0])

    def test_garbage_closes(self):
        self.make()
        self.conn.dataReceived(b"\x00\x00\x00\x00garbage")
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.assertIn("protocol-error", self.owner.named("lost")[0][0])

    def test_data_before_choose_is_a_violation(self):
        self.make(local=LOW, peer=HIGH)  # we are not the chooser: wait for CHOOSE
        self.assertFalse(self.conn.is_active)
        self.conn.dataReceived(frame(DATA, b"early"))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.owner.messages, [])

    def test_candidate_times_out_without_choose(self):
        self.make(local=LOW, peer=HIGH)
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnecting)

    def test_handshake_timeout(self):
        self.clock = Clock()
        owner = FakeOwner()
        conn = PeerConnection(owner, self.clock, local_id=HIGH, network=NET, initiator=False,
                              max_message_size=10, max_queued_bytes=10, drop_after=60, heartbeat_interval=20,
                              inactivity_timeout=120, handshake_timeout=10)
        t = StringTransport()
        conn.makeConnection(t)
        self.clock.advance(10)
        self.assertTrue(t.disconnecting)
        conn.connectionLost(Failure(ConnectionDone()))
        self.assertIn("handshake not complete", owner.named("lost")[0][0])

    def test_stalled_peer_is_aborted_after_close(self):
        from crust.wire import CloseReason

        self.make()
        aborted = []
        self.transport.abortConnection = lambda: aborted.append(True)
        self.conn.close(CloseReason.DISCONNECT)
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(4.9)
        self.assertEqual(aborted, [])
        self.clock.advance(0.1)
        self.assertEqual(aborted, [True])

    def test_slow_to_go_keeps_its_reason(self):
        """
        A connection closed during the handshake whose transport is slow to
        go is neither closed again nor re-reasoned as a handshake timeout
        (the timeout used to unregister the producer a second time).
        """
        self.clock = Clock()
        owner = FakeOwner()
        conn = PeerConnection(owner, self.clock, local_id=HIGH, network=NET, initiator=False,
                              max_message_size=10, max_queued_bytes=10, drop_after=60, heartbeat_interval=20,
                              inactivity_timeout=120, handshake_timeout=10)
        transport = StringTransport()
        transport.abortConnection = lambda: None  # it never goes by itself
        conn.makeConnection(transport)
        conn.handshake.tls_complete(LOW)
        conn.dataReceived(struct.pack("!IB", 1000, DATA))  # oversize: closed, the handshake not over
        self.clock.advance(30)  # the abort at 5 s, the handshake timer at 10 s
        conn.connectionLost(Failure(ConnectionDone()))
        [(reason,)] = owner.named("lost")
        self.assertIn("oversize", reason)

    def test_nothing_is_read_after_a_refusal(self):
        """Frames after the one that got the connection refused, in the same chunk, are not acted on."""
        self.clock = Clock()
        owner = FakeOwner()
        conn = PeerConnection(owner, self.clock, local_id=HIGH, network=NET, initiator=False,
                              max_message_size=100, max_queued_bytes=100, drop_after=60, heartbeat_interval=20,
                              inactivity_timeout=120, handshake_timeout=10)
        transport = StringTransport()
        conn.makeConnection(transport)
        conn.handshake.tls_complete(LOW)
        transport.clear()
        conn.dataReceived(frame(FrameType.CHOOSE) + Hello(network=NET).encode() + frame(FrameType.MOVE)
                          + frame(FrameType.CHOOSE))
        # one REJECT, for the first CHOOSE; the HELLO is not refused again, nor the MOVE reported
        self.assertEqual([t for t, _ in parse_frames(transport.value())], [FrameType.REJECT])
        self.assertEqual([c[0] for c in owner.calls], ["bad_input", "refused"])  # one line saying why, one refusal


class LettingGoTests(SynchronousTestCase):
    """
    An ended connection is freed as soon as nobody holds it, by reference
    counting: nothing of its own (handshake, decoders, transport) still
    refers to it, so a node under churn does not carry every ended
    connection until the next full collection of cyclic garbage.
    """

    make = ConnectionTests.make
    lose = ConnectionTests.lose

    def setUp(self):
        gc.collect()
        gc.disable()  # only reference counting frees anything during these tests
        self.addCleanup(gc.enable)

    def assertFreed(self):
        gone = weakref.ref(self.conn)
        handshake = weakref.ref(self.conn.handshake)
        del self.conn
        self.assertIsNone(gone())
        self.assertIsNone(handshake())
        self.assertIsNone(self.transport.producer)

    def test_lost_by_the_peer(self):
        self.make()
        self.conn.dataReceived(frame(DATA, b"partial")[:6])  # a frame that will never be completed
        self.lose()
        self.assertFreed()

    def test_closed_by_us(self):
        from crust.wire import CloseReason

        self.make()
        self.conn.close(CloseReason.DISCONNECT)
        self.lose()
        self.assertFreed()

    def test_lost_in_the_handshake(self):
        self.clock = Clock()
        self.owner = FakeOwner()
        self.conn = PeerConnection(self.owner, self.clock, local_id=HIGH, network=NET, initiator=False,
                                   max_message_size=1000, max_queued_bytes=3000, drop_after=60.0,
                                   heartbeat_interval=20.0, inactivity_timeout=120.0, handshake_timeout=10.0)
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)
        self.lose()
        self.assertFreed()

    def test_the_reason_keeps_no_frames(self):
        """The reason's traceback (the frames that made it, and all they hold) is not kept."""
        self.make()
        try:
            raise ConnectionDone("gone")
        except ConnectionDone:
            reason = Failure()
        self.assertIsNotNone(reason.tb)
        self.conn.connectionLost(reason)
        self.assertIsNone(reason.tb)


class HostileHelloTests(SynchronousTestCase):
    """A HELLO of hostile JSON closes the connection with a protocol-error CLOSE, and nothing unhandled."""

    def test_nested_hello_closes_with_a_reason(self):
        for payload in (b"[" * 16000, b'{"a":' * 3000, b'{"proto":"crust","version":' + b"9" * 5000 + b"}"):
            clock, owner = Clock(), FakeOwner()
            conn = PeerConnection(owner, clock, local_id=HIGH, network=NET, initiator=True, max_message_size=65536,
                                  max_queued_bytes=1 << 20, drop_after=60.0, heartbeat_interval=20.0,
                                  inactivity_timeout=120.0, handshake_timeout=10.0)
            transport = StringTransport()
            conn.makeConnection(transport)
            conn.handshake.tls_complete(LOW)
            transport.clear()
            conn.dataReceived(frame(FrameType.HELLO, payload))
            frames = parse_frames(transport.value())
            self.assertEqual([f[0] for f in frames], [FrameType.CLOSE], payload[:20])
            self.assertEqual(json.loads(frames[0][1])["reason"], "protocol-error")
            self.assertTrue(transport.disconnecting)
            conn.connectionLost(Failure(ConnectionDone()))
            self.assertIn("protocol-error", owner.named("lost")[0][0])
        self.assertEqual(self.flushLoggedErrors(), [])


# -- property test: a peer that sends anything -------------------------------------------------------------

_frames = st.one_of(
    st.builds(lambda intent: Hello(network=NET, intent=intent).encode(),
              st.sampled_from([Intent.CONNECT, Intent.CONNECT, Intent.PROBE, Intent.BOOTSTRAP])),
    st.just(frame(FrameType.CHOOSE)),
    st.just(CHOOSE_HANDOVER_FRAME),
    st.just(frame(FrameType.GRANT)),
    st.just(frame(FrameType.HEARTBEAT)),
    st.just(frame(FrameType.MOVE)),
    st.builds(lambda data: frame(DATA, data), st.binary(max_size=40)),
    st.builds(encode_reject, st.sampled_from(list(RejectReason)), st.text(max_size=10)),
    st.builds(encode_close, st.sampled_from(list(CloseReason)), st.text(max_size=10)),
    st.builds(frame, st.integers(0, 255), st.binary(max_size=20)),
)
_peer_streams = st.lists(st.one_of(_frames, mutated(_frames, 2)), max_size=8).map(b"".join)


class HostilePeerTests(SynchronousTestCase):
    """
    After TLS, the peer sends any stream of frames, valid, damaged or out
    of order, in any chunks: the connection never raises, is promoted at
    most once, delivers messages only while active and not closing, and
    what it writes is whole frames.
    """

    @examples(300)
    @given(st.sampled_from([HIGH, LOW]), st.booleans(), _peer_streams, cuts)
    def test_any_stream(self, local, initiator, stream, where):
        peer = LOW if local == HIGH else HIGH
        clock = Clock()
        owner = FakeOwner()
        delivered = []

        def promote(conn, peer_id):
            owner.calls.append(("promote", peer_id))

            def deliver(message):
                self.assertTrue(conn.is_active and not conn.closing)
                delivered.append(message)

            conn.deliver = deliver

        owner.promote = promote
        conn = PeerConnection(owner, clock, local_id=local, network=NET, initiator=initiator,
                              max_message_size=64, max_queued_bytes=3000, drop_after=60.0, heartbeat_interval=20.0,
                              inactivity_timeout=120.0, handshake_timeout=10.0)
        transport = StringTransport()
        conn.makeConnection(transport)
        conn.handshake.tls_complete(peer)
        for chunk in chunks(stream, where):
            conn.dataReceived(chunk)
            clock.advance(1)
        self.assertLessEqual(len(owner.named("promote")), 1)
        written = parse_frames(transport.value())  # whole frames only (it raises on a partial one)
        self.assertEqual(written[0][0], FrameType.HELLO)
        if conn.closing:
            # it said why, at most once, and nothing after
            ends = [i for i, (t, _) in enumerate(written) if t in (FrameType.CLOSE, FrameType.REJECT)]
            self.assertLessEqual(len(ends), 1)
            if ends:
                self.assertEqual(ends[0], len(written) - 1)
            self.assertTrue(transport.disconnecting)
        clock.advance(120)  # every timer runs out without error


class EarlyFailureTests(SynchronousTestCase):
    """
    Hardening, defect 9: a connection that fails before its handshake got
    anywhere tells its owner once (C{failed_early}, which logs one line); one
    that the peer's input ended tells it C{bad_input}; our own closes neither.
    """

    def make(self, **kw):
        self.clock = Clock()
        self.owner = FakeOwner()
        settings = dict(max_message_size=1000, max_queued_bytes=3000, drop_after=60.0, heartbeat_interval=20.0,
                        inactivity_timeout=120.0, handshake_timeout=10.0)
        settings.update(kw)
        conn = PeerConnection(self.owner, self.clock, local_id=HIGH, network=NET, initiator=False, **settings)
        conn.makeConnection(StringTransport())
        return conn

    def test_timeout_before_tls(self):
        conn = self.make()
        self.clock.advance(10)
        conn.connectionLost(Failure(ConnectionDone()))
        (kind, reason), = self.owner.named("failed_early")
        self.assertEqual(kind, "timeout")
        self.assertIn("handshake not complete after 10 s (await-tls)", reason)
        self.assertEqual(self.owner.named("bad_input"), [])

    def test_timeout_before_hello(self):
        conn = self.make()
        conn.handshake.tls_complete(LOW)
        self.clock.advance(10)
        conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([k for k, _ in self.owner.named("failed_early")], ["timeout"])

    def test_not_tls(self):
        from OpenSSL import SSL

        conn = self.make()
        conn.connectionLost(Failure(SSL.Error([("SSL routines", "", "http request")])))
        (kind, reason), = self.owner.named("failed_early")
        self.assertEqual(kind, "not-tls")
        self.assertIn("http request", reason)

    def test_closed_mid_tls_and_foreign_certificate(self):
        conn = self.make()
        conn.connectionLost(Failure(ConnectionDone()))
        conn = self.make()
        self.assertFalse(conn.tls_verify_peer(None, "the peer's certificate key is not Ed25519"))
        conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.owner.named("failed_early"),
                         [("certificate", "the peer's certificate key is not Ed25519")])

    def test_protocol_violation_is_bad_input_only(self):
        conn = self.make()
        conn.handshake.tls_complete(LOW)
        conn.dataReceived(frame(FrameType.HELLO, b"[" * 900))
        conn.connectionLost(Failure(ConnectionDone()))
        (kind, reason), = self.owner.named("bad_input")
        self.assertEqual(kind, "protocol-violation")
        self.assertEqual(self.owner.named("failed_early"), [])

    def test_our_own_close_is_not_a_failure(self):
        conn = self.make()
        conn.close(CloseReason.SHUTDOWN, "stopping")
        conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.owner.named("failed_early") + self.owner.named("bad_input"), [])

    def test_candidate_that_loses_is_not_a_failure(self):
        conn = self.make()
        conn.handshake.tls_complete(HIGH.__class__(b"\x0a" * 32))  # the peer chooses
        conn.dataReceived(Hello(network=NET).encode())
        conn.close_duplicate()
        conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.owner.named("failed_early"), [])


class FakeSource:
    """A stream source: each frame it gives is one DATA-like frame of type 30 carrying its tag."""

    def __init__(self):
        self.frames = []

    def pending(self):
        return bool(self.frames)

    def take(self, limit):
        out, total = [], 0
        while self.frames and (not out or total + len(self.frames[0]) <= limit):
            f = self.frames.pop(0)
            out.append(f)
            total += len(f)
        return b"".join(out)

    def add(self, *tags):
        self.frames.extend(frame(30, tag) for tag in tags)


class OneWriteTransport(StringTransport):
    """Pauses its producer after every write: one batch per resumeProducing."""

    def write(self, data):
        StringTransport.write(self, data)
        if self.producer is not None:
            self.producer.pauseProducing()


class StreamSourceTests(ConnectionTests):
    def test_source_writes_at_once_while_the_transport_takes_data(self):
        self.make()
        self.written()
        source = FakeSource()
        self.conn.set_stream_source(source)
        source.add(b"s1", b"s2")
        self.conn.streams_ready()
        self.assertEqual(self.written(), [(30, b"s1"), (30, b"s2")])

    def test_paused_transport_holds_stream_frames_until_resumed(self):
        self.make()
        self.written()
        source = FakeSource()
        self.conn.set_stream_source(source)
        self.conn.pauseProducing()
        source.add(b"s1")
        self.conn.streams_ready()
        self.assertEqual(self.written(), [])
        self.conn.resumeProducing()
        self.assertEqual(self.written(), [(30, b"s1")])

    def test_urgent_messages_go_before_streams_and_bulk_takes_turns(self):
        conn = self.make(max_message_size=70000, max_queued_bytes=10**6)
        self.written()
        transport = OneWriteTransport()
        conn.transport.unregisterProducer()
        conn.transport = transport
        transport.registerProducer(conn, True)
        source = FakeSource()
        conn.set_stream_source(source)
        conn.pauseProducing()
        big = 40000  # two frames do not fit one batch (64 KiB): one frame per write
        source.add(*(b"s%d" % i + b"." * big for i in range(3)))
        for i in range(3):
            conn.send_message(b"b%d" % i + b"." * big, 5)
        conn.send_message(b"urgent", 0)
        conn.send_message(b"one", 1)
        order = []
        for _ in range(10):
            conn.resumeProducing()
            order += [payload[:2] for _, payload in parse_frames(transport.value())]
            transport.clear()
        self.assertEqual(order[:2], [b"ur", b"on"])  # priorities 0 and 1 first (b0 fits in their batch)
        self.assertEqual(order[2:], [b"b0", b"s0", b"b1", b"s1", b"b2", b"s2"])

    def test_an_urgent_message_overtakes_queued_stream_data(self):
        conn = self.make(max_message_size=70000, max_queued_bytes=10**6)
        self.written()
        transport = OneWriteTransport()
        conn.transport.unregisterProducer()
        conn.transport = transport
        transport.registerProducer(conn, True)
        source = FakeSource()
        conn.set_stream_source(source)
        conn.pauseProducing()
        source.add(*(b"s%d" % i + b"." * 40000 for i in range(3)))
        conn.resumeProducing()
        conn.send_message(b"urgent", 0)  # paused again: queued, and first at the next resume
        conn.resumeProducing()
        frames = parse_frames(transport.value())
        self.assertEqual([p[:2] for _, p in frames], [b"s0", b"ur"])
