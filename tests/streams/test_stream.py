"""L{crust.streams.stream.Stream} over a fake channel, on a Clock: the transport's behaviour."""

from __future__ import annotations

from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IHalfCloseableProtocol, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from crust.identity import Identity
from crust.streams.address import StreamAddress
from crust.streams.stream import Stream, StreamReset

US = Identity.from_seed(bytes(range(32))).peer_id
THEM = Identity.from_seed(bytes(range(32, 64))).peer_id


class FakeChannel:
    def __init__(self):
        self.sent: list[bytes] = []
        self.events: list = []
        self.notify_drain = False
        self.pending = 0
        self.consumed_total = 0

    @property
    def buffered(self):
        return self.pending

    def send(self, data):
        self.sent.append(data)
        self.pending += len(data)

    def send_fin(self):
        self.events.append("fin")

    def consumed(self, size):
        self.consumed_total += size

    def reset(self, reason, detail=""):
        self.events.append(("reset", reason))

    def closed(self):
        self.events.append("closed")


class Recorder(Protocol):
    def __init__(self):
        self.received = b""
        self.lost = None
        self.made = 0

    def connectionMade(self):
        self.made += 1

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    def __init__(self):
        super().__init__()
        self.read_lost = 0
        self.write_lost = 0

    def readConnectionLost(self):
        self.read_lost += 1

    def writeConnectionLost(self):
        self.write_lost += 1


@implementer(IPushProducer)
class Producer:
    def __init__(self):
        self.events = []

    def pauseProducing(self):
        self.events.append("pause")

    def resumeProducing(self):
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


class StreamTests(SynchronousTestCase):
    def make(self, protocol=None, **kw):
        self.clock = Clock()
        self.channel = FakeChannel()
        kw.setdefault("high_water", 100)
        kw.setdefault("low_water", 10)
        self.stream = Stream(self.channel, self.clock, StreamAddress(US, "svc"), StreamAddress(THEM, "svc"), **kw)
        self.protocol = protocol or Recorder()
        self.stream.attach(self.protocol)
        return self.stream

    def test_interfaces_and_addresses(self):
        stream = self.make()
        verifyObject(ITransport, stream)
        verifyObject(IConsumer, stream)
        verifyObject(IPushProducer, stream)
        self.assertEqual(self.protocol.made, 1)
        self.assertEqual(stream.getPeer(), StreamAddress(THEM, "svc"))
        self.assertEqual(stream.getHost().peer_id, US)
        self.assertEqual(str(stream.getPeer()), f"crust:{THEM}:svc")

    def test_write_and_write_sequence(self):
        stream = self.make()
        stream.write(b"ab")
        stream.writeSequence([b"c", memoryview(b"d")])
        stream.write(b"")
        self.assertEqual(self.channel.sent, [b"ab", b"cd"])
        self.assertEqual(stream.bytes_written, 4)

    def test_data_delivered_and_consumed(self):
        stream = self.make()
        stream.data_received(b"hello")
        self.assertEqual(self.protocol.received, b"hello")
        self.assertEqual(self.channel.consumed_total, 5)

    def test_paused_reading_holds_data_and_grants_nothing(self):
        stream = self.make()
        stream.pauseProducing()
        stream.data_received(b"one")
        stream.data_received(b"two")
        self.assertEqual(self.protocol.received, b"")
        self.assertEqual(self.channel.consumed_total, 0)
        self.assertEqual(stream.held, 6)
        stream.resumeProducing()
        self.assertEqual(self.protocol.received, b"onetwo")
        self.assertEqual(self.channel.consumed_total, 6)

    def test_fin_waits_behind_held_data(self):
        protocol = HalfCloser()
        stream = self.make(protocol)
        stream.pauseProducing()
        stream.data_received(b"last words")
        stream.fin_received()
        self.assertEqual(protocol.read_lost, 0)
        stream.resumeProducing()
        self.assertEqual(protocol.received, b"last words")
        self.assertEqual(protocol.read_lost, 1)

    def test_push_producer_paused_above_high_water_resumed_on_drain(self):
        stream = self.make()
        producer = Producer()
        stream.registerProducer(producer, True)
        stream.write(b"x" * 101)
        self.assertEqual(producer.events, ["pause"])
        self.assertTrue(self.channel.notify_drain)
        stream.write(b"y")  # still paused: no second pause
        self.assertEqual(producer.events, ["pause"])
        self.channel.pending = 5
        stream.drained()
        self.assertEqual(producer.events, ["pause", "resume"])

    def test_pull_producer_asked_at_once_and_after_each_drain(self):
        stream = self.make()
        producer = Producer()
        stream.registerProducer(producer, False)
        self.assertEqual(producer.events, ["resume"])
        stream.write(b"chunk")
        self.assertTrue(self.channel.notify_drain)
        stream.drained()
        self.assertEqual(producer.events, ["resume", "resume"])

    def test_second_producer_refused(self):
        stream = self.make()
        stream.registerProducer(Producer(), True)
        self.assertRaises(RuntimeError, stream.registerProducer, Producer(), True)
        stream.unregisterProducer()
        stream.registerProducer(Producer(), True)

    def test_half_close_both_ways(self):
        protocol = HalfCloser()
        stream = self.make(protocol)
        stream.loseWriteConnection()
        self.assertEqual(self.channel.events, ["fin"])
        stream.write(b"after FIN: dropped")
        self.assertEqual(self.channel.sent, [])
        stream.fin_sent()
        self.assertEqual(protocol.write_lost, 1)
        stream.data_received(b"still reading")
        self.assertEqual(protocol.received, b"still reading")
        stream.fin_received()
        self.assertIsNone(protocol.lost)  # in a later reactor turn
        self.clock.advance(0)
        self.assertTrue(protocol.lost.check(ConnectionDone))
        self.assertIn("closed", self.channel.events)

    def test_peer_fin_closes_a_protocol_that_cannot_half_close(self):
        stream = self.make()
        stream.write(b"reply")
        stream.fin_received()
        self.assertTrue(stream.disconnecting)
        self.assertEqual(self.channel.events, ["fin"])
        stream.fin_sent()
        self.clock.advance(0)
        self.assertTrue(self.protocol.lost.check(ConnectionDone))

    def test_lose_connection_discards_what_arrives_and_ends_on_the_peer_fin(self):
        stream = self.make()
        stream.loseConnection()
        stream.fin_sent()
        stream.data_received(b"late")
        self.assertEqual(self.protocol.received, b"")
        self.assertEqual(self.channel.consumed_total, 4)  # credited all the same, so the peer can finish
        self.clock.advance(1)
        self.assertIsNone(self.protocol.lost)
        stream.fin_received()
        self.clock.advance(0)
        self.assertTrue(self.protocol.lost.check(ConnectionDone))

    def test_lose_connection_resets_after_the_linger_time(self):
        stream = self.make(linger=2.0)
        stream.loseConnection()
        stream.fin_sent()
        self.clock.advance(1.9)
        self.assertIsNone(self.protocol.lost)
        self.clock.advance(0.2)
        self.assertEqual(self.channel.events[-1], ("reset", "closed"))
        self.clock.advance(0)
        self.assertTrue(self.protocol.lost.check(ConnectionDone))

    def test_abort(self):
        stream = self.make()
        producer = Producer()
        stream.registerProducer(producer, True)
        stream.abortConnection()
        stream.abortConnection()
        self.assertEqual(self.channel.events, [("reset", "aborted")])
        self.clock.advance(0)
        self.assertTrue(self.protocol.lost.check(ConnectionAborted))
        self.assertEqual(producer.events, ["stop"])
        self.assertFalse(stream.connected)

    def test_peer_reset(self):
        stream = self.make()
        stream.reset_received("overflow", "the peer sent too much", by_peer=False)
        stream.data_received(b"ignored")
        self.clock.advance(0)
        self.assertTrue(self.protocol.lost.check(StreamReset))
        self.assertTrue(self.protocol.lost.check(ConnectionLost))
        self.assertEqual(self.protocol.lost.value.reason, "overflow")
        self.assertIn("the peer sent too much", str(self.protocol.lost.value))
        self.assertEqual(self.protocol.received, b"")

    def test_connection_lost_reason_reaches_the_protocol_once(self):
        stream = self.make()
        stream.lost(Failure(ConnectionLost("the crust connection to x ended: timeout")))
        stream.lost(Failure(ConnectionLost("again")))
        self.clock.advance(0)
        self.assertIn("timeout", str(self.protocol.lost.value))
        self.assertEqual(self.channel.events, [])  # nothing sent on a channel that is gone

    def test_a_failing_protocol_resets_its_stream(self):
        class Failing(Recorder):
            def dataReceived(self, data):
                raise ValueError("bad input")

        protocol = Failing()
        self.make(protocol)
        self.stream.data_received(b"boom")
        self.clock.advance(0)
        self.assertEqual(self.channel.events, [("reset", "aborted")])
        self.assertTrue(protocol.lost.check(ValueError))
        self.flushLoggedErrors(ValueError)
