"""crust's QUIC driver on real UDP sockets, 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import random

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from crust.identity import Identity
from crust.transport.quic.dispatcher import QuicDispatcher, QuicOptions, is_quic

TOTAL = 20 * 1024 * 1024
CHUNK = 64 * 1024


class UdpNode(DatagramProtocol):
    """One socket carrying a dispatcher (and counting what is not QUIC)."""

    def __init__(self, accepted=None) -> None:
        self.identity = Identity.generate()
        self.dispatcher = QuicDispatcher(self.identity, self.send, clock=reactor, accepted=accepted,
                                         host=lambda: self.transport.getHost(), options=QuicOptions())
        self.not_quic = 0

    def send(self, data, addr) -> bool:
        if self.transport is None:
            return False
        try:
            self.transport.write(data, addr)
        except OSError:
            return False
        return True

    def datagramReceived(self, data, addr) -> None:
        if not self.dispatcher.datagram_received(data, addr):
            self.not_quic += 1


class Sink(Protocol):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.size = 0
        self.hash = hashlib.sha256()
        self.done: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        self.hash.update(data)
        if self.size >= self.expected and not self.done.called:
            self.done.callback(self.hash.hexdigest())

    def connectionLost(self, reason) -> None:
        self.lost.callback(reason.value)


@implementer(IPushProducer)
class Source:
    """Writes C{total} pseudo-random bytes in C{CHUNK}s, obeying backpressure."""

    def __init__(self, lane, total: int) -> None:
        self.lane = lane
        self.total = total
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.hash = hashlib.sha256()
        self.rng = random.Random(11)

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.produce()

    def stopProducing(self) -> None:
        self.paused = True

    def produce(self) -> None:
        while not self.paused and self.sent < self.total:
            chunk = self.rng.randbytes(min(CHUNK, self.total - self.sent))
            self.hash.update(chunk)
            self.sent += len(chunk)
            self.lane.write(chunk)


class LoopbackTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.sinks: list[Sink] = []
        self.accepted: defer.Deferred = defer.Deferred()
        self.server = UdpNode(accepted=self._accepted)
        self.client = UdpNode()
        self.ports = [reactor.listenUDP(0, node, interface="127.0.0.1", maxPacketSize=65535)
                      for node in (self.server, self.client)]

    def tearDown(self):
        for node in (self.server, self.client):
            node.dispatcher.close_all("test over")
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])

    def _accepted(self, driver) -> None:
        sink = Sink(TOTAL)
        self.sinks.append(sink)
        driver.attach(sink)
        self.accepted.callback(driver)

    @defer.inlineCallbacks
    def test_twenty_megabytes_intact(self):
        address = ("127.0.0.1", self.ports[0].getHost().port)
        driver = yield self.client.dispatcher.connect(address, self.server.identity.peer_id)
        self.assertEqual(driver.peer_id, self.server.identity.peer_id)
        mine = Sink(0)
        driver.attach(mine)
        server_driver = yield self.accepted
        self.assertEqual(driver.urgent.getHost().host, "127.0.0.1")
        source = Source(driver.urgent, TOTAL)
        driver.urgent.registerProducer(source, True)
        source.produce()
        self.assertTrue(source.paused)  # 20 MB never sit in memory at once
        digest = yield self.sinks[0].done
        self.assertEqual(digest, source.hash.hexdigest())
        self.assertEqual(self.sinks[0].size, TOTAL)
        self.assertGreater(source.pauses, 1)
        self.assertEqual(server_driver.peer_id, self.client.identity.peer_id)
        driver.urgent.unregisterProducer()
        driver.urgent.loseConnection()
        reason = yield self.sinks[0].lost
        self.assertIn("cleanly", str(reason))
        yield mine.lost
        self.assertEqual(self.server.not_quic + self.client.not_quic, 0)

    @defer.inlineCallbacks
    def test_non_quic_datagrams_left_to_others(self):
        """The first byte tells: what is not QUIC is handed back, on a socket with live connections."""
        address = ("127.0.0.1", self.ports[0].getHost().port)
        driver = yield self.client.dispatcher.connect(address, self.server.identity.peer_id)
        driver.attach(Sink(0))
        yield self.accepted
        self.client.transport.write(b"\x00\x01\x00\x00" + bytes(16), address)  # STUN-like
        self.client.transport.write(b"\x04crust", address)  # crust's own UDP messages
        sink = Sink(5)
        self.sinks[0].dataReceived = sink.dataReceived
        driver.urgent.write(b"hello")
        yield sink.done
        self.assertEqual(self.server.not_quic, 2)
        self.assertFalse(is_quic(b"\x04crust"))
