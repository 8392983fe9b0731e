"""
Byte streams between two Services on 127.0.0.1, over TCP and over QUIC:
AMP and twisted.web on streams, 100 streams at once, a stalled reader,
half-close, refusal, and the end of the connection under the streams.
"""

from __future__ import annotations

import struct
import time

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.protocols import amp
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from crust.endpoints import CrustClientEndpoint, CrustServerEndpoint
from crust.errors import StreamRefused
from crust.observer import CrustObserver
from crust.streams.manager import StreamOptions

from tests.util import connect_pair, make_service, wait_for


class Sum(amp.Command):
    arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]
    response = [(b"total", amp.Integer())]


class Reverse(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response = [(b"text", amp.Unicode())]


class Calculator(amp.CommandLocator):
    @Sum.responder
    def sum(self, a, b):
        return {"total": a + b}

    @Reverse.responder
    def reverse(self, text):
        return {"text": text[::-1]}


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        peer = request.transport.getPeer()
        request.setHeader(b"content-type", b"text/plain")
        return f"hello {peer.peer_id} on {peer.service}".encode()

    def render_POST(self, request):
        body = request.content.read()
        return b"%d bytes, sum %d" % (len(body), sum(body) % 65536)


@implementer(IAgentEndpointFactory)
class CrustEndpoints:
    """URLs http://PEER_ID/...: a stream to the peer's service C{web}."""

    def __init__(self, service):
        self.service = service

    def endpointForURI(self, uri):
        return CrustClientEndpoint(reactor, lambda: defer.succeed(self.service), uri.host.decode(), "web")


class Reason:
    """The Failure C{connectionLost} got, as a value a Deferred can carry."""

    def __init__(self, failure):
        self.failure = failure
        self.value = failure.value

    def check(self, *errors):
        return self.failure.check(*errors)


def when_lost(protocol_):
    """A Deferred firing with the L{Reason} C{protocol_.connectionLost} gets."""
    d = defer.Deferred()
    protocol_.lost.addCallback(lambda box: d.callback(Reason(box[0])) or box)
    return d


class Collector(protocol.Protocol):
    def __init__(self):
        self.received = bytearray()
        self.lost = defer.Deferred()  # fires with (reason,)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback((reason,))


class ClosingAMP(amp.AMP):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost.callback((reason,))


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Stalled(Collector):
    """Reads nothing until told."""

    def connectionMade(self):
        self.transport.pauseProducing()


@implementer(IHalfCloseableProtocol)
class Answerer(Collector):
    """Reads the whole request (until the peer's half-close), then answers and closes."""

    def readConnectionLost(self):
        self.transport.write(b"got %d bytes" % len(self.received))
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


@implementer(IPushProducer)
class Pump:
    """Writes chunks to a transport while it is not paused, until stopped."""

    def __init__(self, transport, chunk=64 * 1024, limit=None):
        self.transport = transport
        self.chunk = b"p" * chunk
        self.limit = limit
        self.sent = 0
        self.paused = False
        self.stopped = False
        transport.registerProducer(self, True)
        reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while not self.paused and not self.stopped and (self.limit is None or self.sent < self.limit):
            self.transport.write(self.chunk)
            self.sent += len(self.chunk)

    def stopProducing(self):
        self.stopped = True


def factory_of(cls):
    built = []

    class F(protocol.Factory):
        def buildProtocol(self, addr):
            p = cls()
            p.factory = self
            built.append(p)
            return p

    f = F()
    f.built = built
    return f


class StreamLoopbackMixin:
    timeout = 90
    config: dict = {}

    @defer.inlineCallbacks
    def setUp(self):
        self.a = make_service(self, **self.config)
        self.b = make_service(self, **self.config)
        yield connect_pair(self, self.a, self.b)
        self.conn = self.a.peers.active[self.b.peer_id]

    def endpoint(self, service_name, peer=None):
        return CrustClientEndpoint(reactor, lambda: defer.succeed(self.a), peer or self.b.peer_id, service_name)

    @defer.inlineCallbacks
    def test_amp(self):
        servers = factory_of(lambda: ClosingAMP(locator=Calculator()))
        port = yield CrustServerEndpoint(lambda: defer.succeed(self.b), "amp").listen(servers)
        client = yield self.endpoint("amp").connect(protocol.Factory.forProtocol(ClosingAMP))
        results = yield defer.gatherResults([client.callRemote(Sum, a=i, b=2 * i) for i in range(200)])
        self.assertEqual([r["total"] for r in results], [3 * i for i in range(200)])
        text = "crust " * 5000  # several frames' worth in one box
        reply = yield client.callRemote(Reverse, text=text)
        self.assertEqual(reply["text"], text[::-1])
        self.assertEqual(client.transport.getPeer().peer_id, self.b.peer_id)
        self.assertEqual(client.transport.getHost().peer_id, self.a.peer_id)
        self.assertEqual(client.transport.getPeer().service, "amp")
        client.transport.loseConnection()
        reasons = yield defer.gatherResults([when_lost(client), when_lost(servers.built[0])])
        self.assertTrue(all(r.check(ConnectionDone) for r in reasons))
        yield port.stopListening()

    @defer.inlineCallbacks
    def test_web(self):
        port = self.b.listen_streams("web", Site(Hello()))
        self.addCleanup(port.stopListening)
        agent = Agent.usingEndpointFactory(reactor, CrustEndpoints(self.a))
        url = f"http://{self.b.peer_id}/hello".encode()
        response = yield agent.request(b"GET", url)
        self.assertEqual(response.code, 200)
        body = yield readBody(response)
        self.assertEqual(body, f"hello {self.a.peer_id} on web".encode())
        from twisted.web.client import FileBodyProducer
        from io import BytesIO

        payload = bytes(range(256)) * 8192  # 2 MiB
        response = yield agent.request(b"POST", url, Headers({}), FileBodyProducer(BytesIO(payload)))
        body = yield readBody(response)
        self.assertEqual(body, b"%d bytes, sum %d" % (len(payload), sum(payload) % 65536))

    @defer.inlineCallbacks
    def test_hundred_streams_at_once(self):
        self.b.listen_streams("echo", protocol.Factory.forProtocol(Echo))
        factory = factory_of(Collector)
        protocols = yield defer.gatherResults([self.a.open_stream(self.b.peer_id, "echo", factory)
                                               for _ in range(100)])
        self.assertEqual(self.a.streams.count(self.b.peer_id), 100)
        self.assertEqual(self.b.streams.count(self.a.peer_id), 100)
        payloads = [struct.pack("!I", i) * 5000 for i in range(100)]
        for p, payload in zip(protocols, payloads):
            p.transport.write(payload)
        yield wait_for(lambda: all(len(p.received) >= 20000 for p in protocols), timeout=30)
        self.assertEqual([bytes(p.received) for p in protocols], payloads)
        self.assertEqual(len(self.a.peers.connections), 1)  # all on the one connection
        for p in protocols:
            p.transport.loseConnection()
        reasons = yield defer.gatherResults([when_lost(p) for p in protocols])
        self.assertTrue(all(r.check(ConnectionDone) for r in reasons))
        yield wait_for(lambda: self.a.streams.count(self.b.peer_id) == 0 and self.b.streams.count(self.a.peer_id) == 0)

    @defer.inlineCallbacks
    def test_a_stalled_reader_stops_only_its_stream(self):
        for service in (self.a, self.b):  # a window well below what the stalled stream's sender has
            service.streams.options = StreamOptions(window=1 << 20)
        sinks = {"stalled": factory_of(Stalled), "flowing": factory_of(Collector)}
        for name, factory in sinks.items():
            self.b.listen_streams(name, factory)
        stalled = yield self.a.open_stream(self.b.peer_id, "stalled", factory_of(Collector))
        flowing = yield self.a.open_stream(self.b.peer_id, "flowing", factory_of(Collector))
        yield wait_for(lambda: sinks["stalled"].built and sinks["flowing"].built)
        stalled_pump = Pump(stalled.transport, limit=16 << 20)
        flowing_pump = Pump(flowing.transport)
        urgent: list[float] = []
        arrived: list[float] = []

        class Latency(CrustObserver):
            def new_message(self, peer_id, data):
                if data.startswith(b"urgent "):
                    arrived.append(time.monotonic() - float(data[7:]))

        self.b.add_observer(Latency())
        for i in range(20):  # the urgent lane, while both streams push
            reactor.callLater(0.05 * i + 0.2, lambda: (urgent.append(1), self.a.send(
                self.b.peer_id, b"urgent %r" % time.monotonic(), 0)))
        window = self.stalled_window()
        start = len(sinks["flowing"].built[0].received)
        # the other stream and the messages go on: the urgent messages arrive, and the flowing
        # stream moves four of the stalled one's windows (however long a loaded machine takes)
        yield wait_for(lambda: len(arrived) == 20
                       and len(sinks["flowing"].built[0].received) - start > 4 * window, timeout=60)
        self.assertLess(max(arrived), 2.0)
        # meanwhile the stalled stream: its window reached the reader and no more; its sender is paused
        self.assertEqual(len(sinks["stalled"].built[0].received), 0)
        self.assertLessEqual(sinks["stalled"].built[0].transport.held, window)
        self.assertTrue(stalled_pump.paused)
        self.assertLess(stalled_pump.sent, 4 * window + 2 * self.a.streams.options.high_water)
        # reading again, the stalled stream gets everything
        flowing_pump.stopProducing()
        sinks["stalled"].built[0].transport.resumeProducing()
        yield wait_for(lambda: len(sinks["stalled"].built[0].received) == 16 << 20, timeout=60)

    def stalled_window(self):
        if self.config.get("enable_tcp") is False:
            return self.a.quic.options.max_stream_data
        return self.b.streams.options.window

    @defer.inlineCallbacks
    def test_half_close(self):
        answers = factory_of(Answerer)
        self.b.listen_streams("ask", answers)
        client = yield self.endpoint("ask").connect(factory_of(Collector))
        client.transport.write(b"q" * 100_000)
        client.transport.loseWriteConnection()
        reason = yield when_lost(client)
        self.assertTrue(reason.check(ConnectionDone))
        self.assertEqual(bytes(client.received), b"got 100000 bytes")
        server_reason = yield when_lost(answers.built[0])
        self.assertTrue(server_reason.check(ConnectionDone))

    @defer.inlineCallbacks
    def test_refusal_for_an_unknown_service(self):
        e = yield self.assertFailure(self.endpoint("no-such-service").connect(factory_of(Collector)), StreamRefused)
        self.assertEqual(e.service, "no-such-service")
        self.assertEqual(e.peer_id, self.b.peer_id)
        self.assertIn("nobody listens for service 'no-such-service'", str(e))
        self.assertTrue(self.a.is_connected(self.b.peer_id))  # only the stream was refused

    @defer.inlineCallbacks
    def test_streams_end_with_their_connection(self):
        self.b.listen_streams("echo", protocol.Factory.forProtocol(Echo))
        protocols = yield defer.gatherResults([self.a.open_stream(self.b.peer_id, "echo", factory_of(Collector))
                                               for _ in range(3)])
        self.b.disconnect(self.a.peer_id)
        reasons = yield defer.gatherResults([when_lost(p) for p in protocols])
        for reason in reasons:
            self.assertTrue(reason.check(ConnectionLost))
            self.assertIn("disconnect", str(reason.value))
            self.assertIn(str(self.b.peer_id), str(reason.value))


class TcpStreamTests(StreamLoopbackMixin, TestCase):
    config = {"enable_udp": False}

    def test_over_tcp(self):
        self.assertEqual(self.conn.transport_name, "tcp")


class QuicStreamTests(StreamLoopbackMixin, TestCase):
    config = {"enable_tcp": False}

    def test_over_quic(self):
        self.assertEqual(self.conn.transport_name, "udp")
        self.assertIsNotNone(getattr(self.conn.transport, "driver", None))
