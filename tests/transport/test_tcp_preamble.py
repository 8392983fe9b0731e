"""
TcpTransport's preambles: accepted connections claimed by their first bytes
before TLS (L{TcpTransport.register_preamble}).  The sniffing protocol on a
L{Clock} with L{StringTransport}s (and any split of the bytes, by
hypothesis), then on loopback: TLS and a preamble on the same port.
"""

from __future__ import annotations

import socket
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from crust.address import Address
from crust.transport.tcp import (
    MAX_FIRST_BYTES,
    MAX_FIRST_BYTES_PER_HOST,
    PREAMBLE_TIMEOUT,
    TcpTransport,
    _AcceptRoles,
)

from tests.transport.test_tcp import RecorderFactory, transport
from tests.util import wait_for

MAGIC = b"PRE!"
SIZE = 10


class Taken(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


class Server(Protocol):
    """What the TLS server factory builds here: records what it gets."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


class ServerFactory(Factory):
    def __init__(self) -> None:
        self.built: list[Server] = []

    def buildProtocol(self, addr: Any) -> Server:
        server = Server()
        self.built.append(server)
        return server


class Abortable(StringTransport):
    def __init__(self, host: str = "192.0.2.1") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", host, 5000))
        self.aborted = False
        self.protocol: Any = None

    def abortConnection(self) -> None:
        self.aborted = True


class SniffTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tcp = TcpTransport(self.clock, lambda: None, lambda: 5.0)  # type: ignore[arg-type,return-value]
        self.claims: list[tuple[bytes, Any]] = []
        self.answer: Any = None
        self.active = True
        self.tcp.register_preamble(MAGIC, SIZE, self.claim, lambda: self.active)
        self.roles = _AcceptRoles.__new__(_AcceptRoles)  # (its TLS server factory replaced: no certificates here)
        self.roles._transport = self.tcp
        self.server = ServerFactory()
        self.roles._server = self.server

    def claim(self, preamble: bytes, addr: Any) -> Any:
        self.claims.append((preamble, addr))
        return self.answer if self.answer is not None else "not for us"

    def accept(self, host: str = "192.0.2.1") -> tuple[Any, Abortable]:
        t = Abortable(host)
        protocol = self.roles.buildProtocol(t.getPeer())
        if protocol is not None:
            t.protocol = protocol
            protocol.makeConnection(t)
        return protocol, t

    def test_tls_goes_on_at_its_first_byte(self) -> None:
        sniffer, t = self.accept()
        self.assertEqual(self.server.built, [])
        sniffer.dataReceived(b"\x16\x03\x01hello")
        [server] = self.server.built
        self.assertIs(t.protocol, server)  # the connection is the TLS server's from now on
        self.assertEqual(server.received, [b"\x16\x03\x01hello"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.tcp._first_bytes, {})

    def test_a_preamble_is_claimed(self) -> None:
        taken = Taken()
        self.answer = taken
        sniffer, t = self.accept()
        sniffer.dataReceived(MAGIC[:2])
        sniffer.dataReceived(MAGIC[2:] + b"123456" + b"after")
        self.assertEqual(self.claims, [(MAGIC + b"123456", t.getPeer())])
        self.assertIs(t.protocol, taken)
        self.assertTrue(taken.made)
        self.assertEqual(taken.received, [b"after"])
        self.assertEqual(self.server.built, [])

    def test_a_refused_preamble_closes_that_connection(self) -> None:
        sniffer, t = self.accept()
        sniffer.dataReceived(MAGIC + b"123456")
        self.assertTrue(t.aborted)
        self.assertEqual(self.tcp.counters["refused"], 1)

    def test_not_the_magic(self) -> None:
        sniffer, t = self.accept()
        sniffer.dataReceived(b"PRX")
        self.assertTrue(t.aborted)
        self.assertEqual(self.claims, [])

    def test_silence_is_closed(self) -> None:
        sniffer, t = self.accept()
        sniffer.dataReceived(MAGIC[:1])
        self.clock.advance(PREAMBLE_TIMEOUT)
        self.assertTrue(t.aborted)
        self.assertEqual(self.tcp._first_bytes, {})

    def test_the_waiting_are_capped(self) -> None:
        for _ in range(MAX_FIRST_BYTES_PER_HOST):
            self.assertIsNotNone(self.accept()[0])
        self.assertIsNone(self.accept()[0])  # that host has its share
        self.assertIsNotNone(self.accept("192.0.2.2")[0])
        for i in range(MAX_FIRST_BYTES):
            self.accept(f"10.0.{i // 200}.{i % 200}")
        self.assertIsNone(self.accept("192.0.2.3")[0])
        self.assertGreaterEqual(self.tcp.counters["refused"], 2)

    def test_inactive_claims_leave_tls_alone(self) -> None:
        self.active = False
        protocol, t = self.accept()
        self.assertEqual(self.server.built, [protocol])  # built at once, as without preambles

    def test_registration(self) -> None:
        self.assertRaises(ValueError, self.tcp.register_preamble, b"\x16xx", 3, self.claim)
        self.assertRaises(ValueError, self.tcp.register_preamble, b"PZ", 3, self.claim)  # P is taken
        self.assertRaises(ValueError, self.tcp.register_preamble, b"", 3, self.claim)
        unregister = self.tcp.register_preamble(b"Q", 3, self.claim)
        self.assertIsNotNone(self.tcp.preamble_for(ord("Q")))
        unregister()
        self.assertIsNone(self.tcp.preamble_for(ord("Q")))

    @given(st.lists(st.integers(1, 12), max_size=12), st.binary(max_size=12))
    def test_any_split_gives_the_same_result(self, cuts: list[int], tail: bytes) -> None:
        self.claims = []
        taken = Taken()
        self.answer = taken
        data = MAGIC + b"123456" + tail
        sniffer, t = self.accept(f"198.51.100.{len(cuts)}")
        at = 0
        for cut in cuts + [len(data)]:
            if at < len(data):
                t.protocol.dataReceived(data[at:at + cut])
                at += cut
        self.assertEqual(self.claims, [(MAGIC + b"123456", t.getPeer())])
        self.assertEqual(b"".join(taken.received), tail)


class LoopbackTests(TestCase):
    @defer.inlineCallbacks
    def test_tls_and_a_preamble_on_one_port(self) -> None:
        server = transport()
        taken: list[Taken] = []

        def claim(preamble: bytes, addr: Any) -> Any:
            taken.append(Taken())
            return taken[-1]

        server.register_preamble(MAGIC, SIZE, claim)
        events: list[Any] = []
        port = yield server.listen("127.0.0.1", 0, RecorderFactory("server", events))
        self.addCleanup(port.stopListening)
        address = Address("tcp", "127.0.0.1", port.getHost().port)
        client = transport()
        conn = yield client.dial(address, RecorderFactory("client", events))
        yield wait_for(lambda: ("server", "tls") in events and ("client", "tls") in events)
        # a plain connection with the preamble
        plain = yield client.connect_plain(address, Factory.forProtocol(Protocol))
        plain.transport.write(MAGIC + b"123456" + b"rest")
        yield wait_for(lambda: taken and taken[0].received)
        self.assertEqual(taken[0].received, [b"rest"])
        plain.transport.loseConnection()
        conn.transport.loseConnection()
        # one that sends nothing is closed when the listener stops
        s = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(s.close)
        yield wait_for(lambda: server._waiting)
        yield port.stopListening()
        self.assertEqual(server._waiting, set())
        s.setblocking(False)
        yield wait_for(lambda: _closed(s))


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # (reset: aborted)
