"""TcpTransport on loopback: the shared listening port, connecting from it, TLS roles by the accept hook."""

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from crust.address import Address
from crust.identity import Identity
from crust.transport.tcp import TcpTransport
from crust.transport.tls import ConnectionCreator, make_context
from crust.wire import CertInfo, network_hash


@implementer(IHandshakeListener)
class Recorder(Protocol):
    def __init__(self, name, events, protocols=None):
        self.name, self.events = name, events
        if protocols is not None:
            protocols.append(self)

    def connectionMade(self):
        self.events.append((self.name, "made", self.transport.getPeer().port))

    def handshakeCompleted(self):
        self.events.append((self.name, "tls"))
        self.transport.write(self.name.encode())

    def dataReceived(self, data):
        self.events.append((self.name, "data", data))

    # the verify callback of crust.transport.tls asks the protocol
    tls_verdict = None

    def tls_verify_peer(self, peer_id, problem, info=None):
        self.tls_verdict = True
        return True


class RecorderFactory(Factory):
    def __init__(self, name, events, protocols=None):
        self.name, self.events, self.protocols = name, events, protocols

    def buildProtocol(self, addr):
        return Recorder(self.name, self.events, self.protocols)


def transport():
    identity = Identity.generate()
    creator = ConnectionCreator(make_context(identity, CertInfo(network=network_hash(None))))
    return TcpTransport(reactor, lambda: creator, lambda: 5.0)


class TcpTransportTests(TestCase):
    def setUp(self):
        self.protocols = []

    @defer.inlineCallbacks
    def tearDown(self):
        for p in self.protocols:
            if p.transport is not None:
                p.transport.abortConnection()
        yield deferLater(0.05)

    def listen(self, t, factory, port=0):
        d = t.listen("127.0.0.1", port, factory)
        d.addCallback(lambda p: self.addCleanup(p.stopListening) or p)
        return d

    @defer.inlineCallbacks
    def test_a_port_another_listener_holds_is_refused(self):
        events = []
        first = transport()
        port = yield self.listen(first, RecorderFactory("a", events))
        second = transport()
        yield self.assertFailure(second.listen("127.0.0.1", port.getHost().port, RecorderFactory("b", events)),
                                 CannotListenError)

    @defer.inlineCallbacks
    def test_connects_from_the_listening_port(self):
        events = []
        a, b = transport(), transport()
        pa = yield self.listen(a, RecorderFactory("a-in", events, self.protocols))
        pb = yield self.listen(b, RecorderFactory("b-in", events, self.protocols))
        target = Address("tcp", "127.0.0.1", pb.getHost().port)
        proto = yield a.dial(target, RecorderFactory("a-out", events, self.protocols), from_listener=True)
        self.assertEqual(proto.transport.getHost().port, pa.getHost().port)
        while not any(e[0] == "b-in" and e[1] == "made" for e in events):
            yield deferLater(0.01)
        made = [e for e in events if e[0] == "b-in" and e[1] == "made"][0]
        self.assertEqual(made[2], pa.getHost().port)  # the peer sees our listening port

    @defer.inlineCallbacks
    def test_accept_hook_makes_us_the_tls_client(self):
        """Both sides connect()-ed from their listeners; the side whose SYN was accepted still runs TLS as told."""
        events = []
        a, b = transport(), transport()
        yield self.listen(a, RecorderFactory("a-in", events, self.protocols))
        pb = yield self.listen(b, RecorderFactory("b-in", events, self.protocols))
        b.set_accept_hook(lambda addr: RecorderFactory("b-claimed", events, self.protocols))
        target = Address("tcp", "127.0.0.1", pb.getHost().port)
        # a connects as TLS *server*; b's listener accepts, and its hook makes b the client
        yield a.dial(target, RecorderFactory("a-out", events, self.protocols), from_listener=True, tls_client=False)
        for _ in range(300):
            if ("a-out", "tls") in events and ("b-claimed", "tls") in events:
                break
            yield deferLater(0.01)
        self.assertIn(("a-out", "tls"), events)
        self.assertIn(("b-claimed", "tls"), events)
        self.assertNotIn(("b-in", "made"), [e[:2] for e in events])


def deferLater(seconds):
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


class _OutOfDescriptors:
    """A listening socket whose accept() fails with C{error} while C{failing}, then has nothing to accept."""

    def __init__(self, error: int) -> None:
        self.error = error
        self.failing = True
        self.accepts = 0

    def accept(self):
        import errno

        self.accepts += 1
        raise OSError(self.error if self.failing else errno.EAGAIN, "accept")

    def fileno(self):
        return -1


class AcceptPauseTests(SynchronousTestCase):
    """The accept loop out of file descriptors (hardening: 9,411 EMFILE lines in 25 s): pause 1 s, say so once."""

    def port(self, error):
        from twisted.internet.testing import MemoryReactorClock

        from crust.transport.tcp import _PausingPort

        self.reactor = MemoryReactorClock()
        self.transport = TcpTransport(self.reactor, lambda: None, lambda: 5.0)
        port = _PausingPort(0, Factory(), 5, "127.0.0.1", self.reactor, self.transport)
        port.socket = self.socket = _OutOfDescriptors(error)
        port.connected = True
        port.numberAccepts = 100  # as startListening sets it
        port.startReading()
        return port

    def test_pauses_and_resumes_saying_so_once(self):
        import errno

        from twisted.logger import LogLevel, globalLogPublisher

        for error in (errno.EMFILE, errno.ENFILE):
            logged: list = []
            globalLogPublisher.addObserver(logged.append)
            self.addCleanup(globalLogPublisher.removeObserver, logged.append)
            port = self.port(error)
            port.doRead()
            self.assertNotIn(port, self.reactor.readers)  # paused: the reactor does not call it
            self.assertEqual(self.transport.counters["accept_pauses"], 1)
            self.reactor.advance(0.99)
            self.assertNotIn(port, self.reactor.readers)
            self.reactor.advance(0.01)
            self.assertIn(port, self.reactor.readers)  # resumed after 1 s
            port.doRead()  # still out of descriptors: paused again, no new line
            self.assertNotIn(port, self.reactor.readers)
            self.assertEqual(self.transport.counters["accept_pauses"], 2)
            warnings = [e for e in logged if e.get("log_level") == LogLevel.warn]
            self.assertEqual(len(warnings), 1, warnings)
            self.assertIn("out of file descriptors", warnings[0]["log_format"])
            # Twisted's own lines about each failed accept stay with the port
            self.assertEqual([e for e in logged if "accept" in str(e.get("log_format", "")).lower()
                              and e.get("log_level") != LogLevel.warn], [])
            self.reactor.advance(1.0)
            self.socket.failing = False
            port.doRead()  # descriptors again
            self.assertIn(port, self.reactor.readers)
            self.socket.failing = True
            port.doRead()  # a new shortage is news again
            warnings = [e for e in logged if e.get("log_level") == LogLevel.warn]
            self.assertEqual(len(warnings), 2)
            port.stopListening()  # the pause's timer goes with it
            self.assertEqual([c for c in self.reactor.getDelayedCalls() if c.getTime() > self.reactor.seconds()], [])
