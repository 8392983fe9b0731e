"""
L{crust.streams.quic.QuicStreams}: byte streams as QUIC streams, between two
QUIC drivers on the in-memory network of tests/transport/test_quic.py, on a Clock.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost

from crust.errors import StreamOpenFailed, StreamRefused
from crust.streams import frames
from crust.streams.manager import StreamOptions, Streams
from crust.streams.quic import QuicStreams
from crust.streams.stream import StreamReset

from tests.streams.test_mux import Echo, FakeTable, Recorder, Side
from tests.transport.test_quic import QuicTestCase, results


class QuicConn:
    """The part of a PeerConnection the stream layer uses, over a driver."""

    path = None
    transport_name = "udp"
    is_active = True

    def __init__(self, driver, peer_id):
        self.driver = driver
        self.peer_id = peer_id
        self.transport = self

    def set_stream_source(self, source):
        raise AssertionError("QUIC streams use no stream source")


class QuicSide(Side):
    def __init__(self, clock, local, peer, options, driver):
        self.table = FakeTable()
        self.layer = Streams(self.table, local, clock, options)
        self.conn = QuicConn(driver, peer)
        self.table.conns[peer] = self.conn
        self.protocols = []
        self.layer.peer_promoted(self.conn, peer)


class QuicStreamTests(QuicTestCase):
    def setUp(self):
        super().setUp()
        self.nodes(server={"max_stream_data": 64 * 1024}, client={"max_stream_data": 64 * 1024})
        self.client, _, self.server, _ = self.connect()
        self.start()

    def start(self, **options):
        """(New) stream layers on both ends of the connection."""
        opts = StreamOptions(**{"open_timeout": 5.0, **options})
        self.sa = QuicSide(self.clock, self.a.peer_id, self.b.peer_id, opts, self.client)
        self.sb = QuicSide(self.clock, self.b.peer_id, self.a.peer_id, opts, self.server)

    def open(self, service="svc", cls=Recorder):
        out = results(self.sa.layer.open(self.b.peer_id, service, self.sa.factory(cls)))
        self.net.run(lambda: out, seconds=5)
        return out[0] if out else None

    def test_backend_is_quic(self):
        self.assertIsInstance(self.sa.layer.backend(self.sa.conn, self.b.peer_id), QuicStreams)

    def test_echo_and_clean_close(self):
        self.sb.layer.listen("svc", self.sb.factory(Echo))
        protocol = self.open()
        self.assertEqual(protocol.transport.getPeer().transport, "udp")
        payload = bytes(range(256)) * 2000
        protocol.transport.write(payload)
        self.net.run(lambda: len(protocol.received) == len(payload), seconds=10)
        self.assertEqual(protocol.received, payload)
        protocol.transport.loseConnection()
        self.net.run(lambda: protocol.lost and self.sb.protocols[0].lost, seconds=5)
        self.assertTrue(protocol.lost.check(ConnectionDone))
        self.assertTrue(self.sb.protocols[0].lost.check(ConnectionDone))
        self.assertEqual(self.sa.layer.backends[self.sa.conn].count, 0)
        self.assertEqual(self.sb.layer.backends[self.sb.conn].count, 0)

    def test_refusal(self):
        failure = self.open("nobody")
        self.assertTrue(failure.check(StreamRefused))
        self.assertEqual((failure.value.reason, failure.value.service), ("refused", "nobody"))
        self.assertIn("nobody listens for service 'nobody'", str(failure.value))
        self.net.run(seconds=1)
        self.assertEqual(self.sb.layer.backends[self.sb.conn].count, 0)

    def test_a_stalled_reader_stops_its_sender_alone(self):
        self.sb.layer.listen("svc", self.sb.factory())
        stalled, flowing = self.open(), self.open()
        slow, fast = self.sb.protocols
        slow.transport.pauseProducing()
        stalled.transport.write(b"s" * 400_000)
        flowing.transport.write(b"f" * 400_000)
        self.net.run(seconds=5)
        self.assertEqual(len(fast.received), 400_000)
        self.assertLessEqual(slow.transport.held, 64 * 1024)  # QUIC's stream window, and no more
        self.assertGreater(stalled.transport.channel.buffered, 300_000)  # the rest waits at the sender
        slow.transport.resumeProducing()
        self.net.run(lambda: len(slow.received) == 400_000, seconds=10)
        self.assertEqual(slow.received, b"s" * 400_000)

    def test_half_close(self):
        from tests.streams.test_stream import HalfCloser

        self.sb.layer.listen("svc", self.sb.factory(HalfCloser))
        protocol = self.open()
        protocol.transport.write(b"question")
        protocol.transport.loseWriteConnection()
        self.net.run(lambda: self.sb.protocols[0].read_lost, seconds=5)
        server = self.sb.protocols[0]
        self.assertEqual(server.received, b"question")
        server.transport.write(b"answer")
        server.transport.loseConnection()
        self.net.run(lambda: protocol.lost and server.lost, seconds=5)
        self.assertEqual(protocol.received, b"answer")
        self.assertTrue(protocol.lost.check(ConnectionDone))

    def test_abort_is_a_reset_with_its_reason(self):
        self.sb.layer.listen("svc", self.sb.factory())
        protocol = self.open()
        protocol.transport.write(b"x")
        self.net.run(lambda: self.sb.protocols[0].received, seconds=5)
        protocol.transport.abortConnection()
        self.net.run(lambda: self.sb.protocols[0].lost, seconds=5)
        lost = self.sb.protocols[0].lost
        self.assertTrue(lost.check(StreamReset))
        self.assertEqual(lost.value.reason, frames.REASON_ABORTED)

    def test_a_header_that_never_comes_times_out(self):
        app = self.client.open_stream()  # a raw stream, without the header
        app.write(b"\x05ab")  # an incomplete header
        self.net.run(seconds=1)
        backend = self.sb.layer.backends[self.sb.conn]
        self.assertEqual(backend.pending, 1)
        self.net.run(seconds=5)
        self.assertEqual(backend.pending, 0)
        self.assertEqual(backend.count, 0)

    def test_pending_cap(self):
        self.start(max_pending_opens=2)
        apps = [self.client.open_stream() for _ in range(3)]
        for app in apps:
            app.write(b"\x09")  # a header's first byte, and nothing more
        self.net.run(seconds=1)
        backend = self.sb.layer.backends[self.sb.conn]
        self.assertEqual(backend.pending, 2)

    def test_malformed_header_resets_only_that_stream(self):
        self.sb.layer.listen("svc", self.sb.factory())
        app = self.client.open_stream()
        app.write(b"\x03a b")  # a space in the name
        good = self.open()
        self.net.run(seconds=1)
        self.assertIsInstance(good, Recorder)
        self.assertEqual(self.sb.layer.backends[self.sb.conn].count, 1)
        self.flushLoggedErrors()

    def test_open_timeout(self):
        self.start(open_timeout=2.0)
        self.sb.layer.listen("svc", self.sb.factory())
        self.server.set_stream_acceptor(lambda app: None)  # takes the streams, never answers
        out = results(self.sa.layer.open(self.b.peer_id, "svc", self.sa.factory()))
        self.net.run(lambda: out, seconds=5)
        self.assertTrue(out[0].check(StreamOpenFailed))
        self.assertIn("no answer", str(out[0].value))

    def test_connection_lost(self):
        self.sb.layer.listen("svc", self.sb.factory())
        protocol = self.open()
        self.sa.layer.connection_ended(self.sa.conn, "timeout: nothing received for 120 s")
        self.clock.advance(0)
        self.assertTrue(protocol.lost.check(ConnectionLost))
        self.assertIn("nothing received", str(protocol.lost.value))
