"""
L{crust.streams.mux.FramedStreams}: two nodes' stream layers back to back
over fake connections that carry the frames, on a Clock.
"""

from __future__ import annotations

import struct

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.errors import PeerNotConnected, ProtocolViolation, StreamOpenFailed, StreamRefused, StreamServiceInUse
from crust.identity import Identity
from crust.session.signalling import ControlFrames
from crust.streams import frames
from crust.streams.frames import StreamFrame
from crust.streams.manager import StreamOptions, Streams
from crust.streams.mux import FramedStreams
from crust.streams.stream import StreamReset

HIGH, LOW = sorted((Identity.generate().peer_id for _ in range(2)), reverse=True)


class FakeTable:
    def __init__(self):
        self.control_frames = ControlFrames()
        self.listeners = []
        self.conns = {}

    def listen(self, listener):
        self.listeners.append(listener)

    def usable(self, peer_id):
        return self.conns.get(peer_id)


class FakeConn:
    """The part of a PeerConnection the stream layer uses; what it sends collects in C{out}."""

    transport = None
    path = None
    transport_name = "tcp"
    is_active = True

    def __init__(self, peer_id):
        self.peer_id = peer_id
        self.source = None
        self.out = bytearray()
        self.paused = False
        self.controls = []

    def set_stream_source(self, source):
        self.source = source

    def set_channel_handler(self, ftype, handler):
        self.channel_handlers = getattr(self, "channel_handlers", {})
        self.channel_handlers[ftype] = handler

    def streams_ready(self):
        if not self.paused:
            self.flush()

    def write_frame(self, frame):
        if self.paused or (self.source is not None and self.source.pending()):
            return False
        self.out += frame
        return True

    def flush(self):
        while self.source is not None and self.source.pending():
            self.out += self.source.take(64 * 1024)

    def send_control(self, frame):
        self.out += frame
        self.controls.append(frame[4])
        return True


def split_frames(data):
    out, off = [], 0
    while off < len(data):
        (length,) = struct.unpack_from("!I", data, off)
        out.append((data[off + 4], bytes(data[off + 5:off + 4 + length])))
        off += 4 + length
    return out


class Recorder(Protocol):
    def __init__(self):
        self.received = b""
        self.lost = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


class Echo(Recorder):
    def dataReceived(self, data):
        super().dataReceived(data)
        self.transport.write(data)


class Side:
    def __init__(self, clock, local, peer, options):
        self.table = FakeTable()
        self.layer = Streams(self.table, local, clock, options)
        self.conn = FakeConn(peer)
        self.table.conns[peer] = self.conn
        self.protocols = []

    def factory(self, cls=Recorder):
        def build(addr):
            p = cls()
            p.address = addr
            self.protocols.append(p)
            return p
        factory = Factory()
        factory.buildProtocol = build
        return factory


class MuxTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.make()

    def make(self, **options):
        opts = StreamOptions(**{"window": 64 * 1024, "min_window": 64 * 1024, "high_water": 32 * 1024,
                                "low_water": 8 * 1024, **options})
        self.a = Side(self.clock, HIGH, LOW, opts)
        self.b = Side(self.clock, LOW, HIGH, opts)

    def pump(self, rounds=50):
        for _ in range(rounds):
            moved = False
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                src.conn.flush()
                data, src.conn.out = bytes(src.conn.out), bytearray()
                for ftype, payload in split_frames(data):
                    moved = True
                    dst.layer._frame(dst.conn, ftype, payload)
            self.clock.advance(0)
            if not moved:
                return

    def open(self, service="svc", cls=Recorder):
        out = []
        self.a.layer.open(LOW, service, self.a.factory(cls)).addBoth(out.append)
        self.pump()
        return out[0] if out else None

    def test_open_exchange_and_addresses(self):
        self.b.layer.listen("svc", self.b.factory(Echo))
        protocol = self.open()
        self.assertIsInstance(protocol, Recorder)
        echo = self.b.protocols[0]
        self.assertEqual((echo.address.peer_id, echo.address.service), (HIGH, "svc"))
        self.assertEqual(protocol.transport.getPeer().peer_id, LOW)
        self.assertEqual(protocol.transport.getHost().peer_id, HIGH)
        payload = bytes(range(256)) * 1000
        protocol.transport.write(payload)
        self.pump()
        self.assertEqual(protocol.received, payload)
        mux = self.a.layer.backends[self.a.conn]
        self.assertIsInstance(mux, FramedStreams)
        sid = next(iter(mux.channels))
        self.assertTrue(sid & frames.HIGH_BIT)  # the side with the larger peer id sets the top bit

    def test_refusal_names_the_service(self):
        failure = self.open("nothing-here")
        self.assertTrue(failure.check(StreamRefused))
        e = failure.value
        self.assertEqual((e.reason, e.service, e.peer_id), ("refused", "nothing-here", LOW))
        self.assertIn("nothing-here", str(e))
        self.assertEqual(self.b.layer.backends[self.b.conn].count, 0)

    def test_listen_twice_and_stop_listening(self):
        port = self.b.layer.listen("svc", self.b.factory())
        self.assertRaises(StreamServiceInUse, self.b.layer.listen, "svc", self.b.factory())
        self.assertRaises(ValueError, self.b.layer.listen, "two words", self.b.factory())
        self.assertEqual(port.getHost().service, "svc")
        port.stopListening()
        self.assertTrue(self.open().check(StreamRefused))

    def test_open_without_connection_or_with_bad_name(self):
        out = []
        self.a.layer.open(Identity.generate().peer_id, "svc", self.a.factory()).addErrback(out.append)
        self.assertTrue(out[0].check(PeerNotConnected))
        self.a.layer.open(LOW, "", self.a.factory()).addErrback(out.append)
        self.assertTrue(out[1].check(StreamOpenFailed))

    def test_stream_cap(self):
        self.make(max_streams=3)
        self.b.layer.listen("svc", self.b.factory())
        protocols = [self.open() for _ in range(3)]
        self.assertTrue(all(isinstance(p, Recorder) for p in protocols))
        self.assertTrue(self.open().check(StreamOpenFailed))  # our own cap
        # the peer's cap: b refuses a fourth stream a opens (a's count is lower after one closed)
        self.a.layer.backends[self.a.conn].channels.popitem()
        failure = self.open()
        self.assertTrue(failure.check(StreamRefused))
        self.assertEqual(failure.value.reason, "too-many-streams")

    def test_pending_open_cap_and_timeout(self):
        self.make(max_pending_opens=2, open_timeout=5.0)
        out = []
        for _ in range(2):
            self.a.layer.open(LOW, "svc", self.a.factory()).addBoth(out.append)  # not pumped: no answer
        self.a.layer.open(LOW, "svc", self.a.factory()).addBoth(out.append)
        self.assertTrue(out[0].check(StreamOpenFailed))
        self.assertIn("waiting for an answer", str(out[0].value))
        self.clock.advance(5.1)
        self.assertEqual(len(out), 3)
        self.assertTrue(all(f.check(StreamOpenFailed) for f in out[1:]))
        self.assertIn("did not answer", str(out[1].value))
        self.b.layer.listen("svc", self.b.factory())
        self.pump()  # the late opens arrive, are accepted, then reset by a's RESETs
        self.assertTrue(all(p.lost is not None for p in self.b.protocols))

    def test_a_stalled_reader_stops_only_its_own_stream(self):
        self.b.layer.listen("svc", self.b.factory())
        stalled, flowing = self.open(), self.open()
        slow, fast = self.b.protocols
        slow.transport.pauseProducing()
        window = 64 * 1024
        stalled.transport.write(b"s" * (5 * window))
        flowing.transport.write(b"f" * (5 * window))
        self.pump()
        self.assertEqual(len(fast.received), 5 * window)
        self.assertEqual(len(slow.received), 0)
        self.assertEqual(slow.transport.held, window)  # one window, and no more
        self.assertEqual(stalled.transport.channel.buffered, 4 * window)
        slow.transport.resumeProducing()
        self.pump()
        self.assertEqual(slow.received, b"s" * (5 * window))

    def test_the_connection_window_is_shared(self):
        k = 1024
        self.make(window=128 * k, connection_window=256 * k, min_window=64 * k)
        self.b.layer.listen("svc", self.b.factory())
        senders = [self.open() for _ in range(4)]
        for reader in self.b.protocols:
            reader.transport.pauseProducing()
        for sender in senders:
            sender.transport.write(b"z" * (512 * k))
        self.pump()
        held = [reader.transport.held for reader in self.b.protocols]
        self.assertEqual(held, [128 * k, 128 * k, 64 * k, 64 * k])  # the last two had min_window only
        mux = self.b.layer.backends[self.b.conn]
        self.assertEqual(mux.committed, sum(held))
        for reader in self.b.protocols:  # reading again, each gets everything, the budget shared
            reader.transport.resumeProducing()
        self.pump(200)
        self.assertEqual([len(reader.received) for reader in self.b.protocols], [512 * k] * 4)
        for sender in senders:
            sender.transport.loseConnection()
        self.pump()
        self.assertEqual(mux.committed, 0)  # nothing left granted once the streams ended

    def test_streams_take_turns(self):
        self.make(window=1 << 20)
        self.b.layer.listen("svc", self.b.factory())
        one, two = self.open(), self.open()
        self.a.conn.paused = True
        one.transport.write(b"1" * 100_000)
        two.transport.write(b"2" * 100_000)
        mux = self.a.layer.backends[self.a.conn]
        data = b"".join(mux.take(64 * 1024) for _ in range(4))
        frames_ = split_frames(data)
        self.assertEqual([payload[4:5] for _, payload in frames_], [b"1", b"2", b"1", b"2"])  # in turn
        sizes = [len(payload) - 4 for _, payload in frames_]
        self.assertEqual(sizes, [frames.SEND_CHUNK] * 2 + [100_000 - frames.SEND_CHUNK] * 2)

    def test_producer_paused_until_the_data_went_out(self):
        from tests.streams.test_stream import Producer

        self.b.layer.listen("svc", self.b.factory())
        protocol = self.open()
        producer = Producer()
        protocol.transport.registerProducer(producer, True)
        self.a.conn.paused = True
        protocol.transport.write(b"p" * 40_000)
        self.assertEqual(producer.events, ["pause"])
        self.a.conn.paused = False
        self.pump()
        self.assertEqual(producer.events, ["pause", "resume"])

    def test_half_close_and_clean_end(self):
        from tests.streams.test_stream import HalfCloser

        self.b.layer.listen("svc", self.b.factory(HalfCloser))
        protocol = self.open()
        server = self.b.protocols[0]
        protocol.transport.write(b"request")
        protocol.transport.loseWriteConnection()
        self.pump()
        self.assertEqual((server.received, server.read_lost), (b"request", 1))
        server.transport.write(b"response")
        server.transport.loseConnection()
        self.pump()
        self.assertEqual(protocol.received, b"response")
        self.assertTrue(protocol.lost.check(ConnectionDone))
        self.assertTrue(server.lost.check(ConnectionDone))
        for side in (self.a, self.b):
            self.assertEqual(side.layer.backends[side.conn].channels, {})

    def test_peer_reset_and_abort(self):
        self.b.layer.listen("svc", self.b.factory())
        protocol = self.open()
        protocol.transport.abortConnection()
        self.pump()
        server = self.b.protocols[0]
        self.assertTrue(server.lost.check(StreamReset))
        self.assertEqual(server.lost.value.reason, "aborted")

    def test_overflow_resets_only_that_stream(self):
        self.b.layer.listen("svc", self.b.factory())
        protocol, other = self.open(), self.open()
        server = self.b.protocols[0]
        server.transport.pauseProducing()
        sid = protocol.transport.channel.sid
        for _ in range(5):  # past the window, ignoring credit
            self.b.layer._frame(self.b.conn, StreamFrame.DATA, struct.pack("!I", sid) + b"x" * 16384)
        self.pump()
        self.clock.advance(0)
        self.assertTrue(server.lost.check(StreamReset))
        self.assertTrue(protocol.lost.check(StreamReset))
        self.assertEqual(protocol.lost.value.reason, "overflow")
        other.transport.write(b"still fine")
        self.pump()
        self.assertEqual(self.b.protocols[1].received, b"still fine")
        self.flushLoggedErrors()

    def test_frames_for_unknown_streams_are_dropped(self):
        self.b.layer.listen("svc", self.b.factory())
        self.open()
        for frame in (frames.encode_data(12345, b"x"), frames.encode_credit(12345, 10), frames.encode_fin(12345),
                      frames.encode_reset(12345, "aborted")):
            self.b.layer._frame(self.b.conn, frame[4], frame[5:])
        self.assertIsNone(self.b.protocols[0].lost)

    def test_protocol_violations(self):
        self.b.layer.listen("svc", self.b.factory())
        self.open()
        b = self.b.layer
        own_half = frames.encode_open(1, 100, "svc")  # b is LOW: ids without the top bit are its own
        self.assertRaises(ProtocolViolation, b._frame, self.b.conn, own_half[4], own_half[5:])
        again = frames.encode_open(frames.HIGH_BIT | 1, 100, "svc")  # not above a's last id
        self.assertRaises(ProtocolViolation, b._frame, self.b.conn, again[4], again[5:])
        accept = frames.encode_accept(77, 100)
        self.assertRaises(ProtocolViolation, b._frame, self.b.conn, accept[4], accept[5:])
        self.assertRaises(ProtocolViolation, b._frame, self.b.conn, StreamFrame.CREDIT, b"\x00")
        self.b.conn.is_active = False
        self.b.layer.backends.clear()
        self.assertRaises(ProtocolViolation, b._frame, self.b.conn, own_half[4], own_half[5:])

    def test_connection_lost_ends_every_stream_and_open(self):
        self.b.layer.listen("svc", self.b.factory())
        protocol = self.open()
        out = []
        self.a.layer.open(LOW, "svc", self.a.factory()).addBoth(out.append)
        self.a.layer.connection_ended(self.a.conn, "timeout: nothing received for 120 s")
        self.clock.advance(0)
        self.assertTrue(protocol.lost.check(ConnectionLost))
        self.assertIn("nothing received for 120 s", str(protocol.lost.value))
        self.assertTrue(out[0].check(StreamOpenFailed))
        self.assertIsNone(self.a.conn.source)
