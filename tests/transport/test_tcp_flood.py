"""A flood of TCP connections that never finish their handshake: capped per host, legitimate peers still get in."""

import socket

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from crust.address import Address
from crust.peering.table import MAX_PENDING_PER_HOST
from tests.util import make_service, wait_for


class HandshakeFloodTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_pending_handshakes_are_capped_per_host(self):
        node = make_service(self, enable_udp=False)
        info = yield node.prepare_connection_info()
        address = [a for a in info.public.addresses if a.transport == "tcp"][0]
        flood = []
        self.addCleanup(lambda: [s.close() for s in flood])
        for _ in range(MAX_PENDING_PER_HOST * 4):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))  # the flood comes from another loopback address than the real peer
            s.setblocking(False)
            s.connect_ex(address.sockaddr())  # connects, never sends a byte
            flood.append(s)
        yield wait_for(lambda: node.tcp.counters["refused"] >= MAX_PENDING_PER_HOST * 2)
        pending = sum(1 for c in node.peers.connections if not c.is_active)
        self.assertLessEqual(pending, MAX_PENDING_PER_HOST)
        # another host is not held back by that one's flood: a real peer from 127.0.0.1 connects at once
        peer = make_service(self, enable_udp=False)
        start = reactor.seconds()
        yield peer.connect(info.public)
        self.assertLess(reactor.seconds() - start, 1.0)
        self.assertTrue(peer.is_connected(node.peer_id))
        yield task.deferLater(reactor, 0, lambda: None)

    def test_refusal_reasons(self):
        from crust.peering.table import PeerTable

        from crust.observer import Observers

        table = PeerTable(admission=None, events=Observers(), hello_for=None)  # type: ignore[arg-type]

        class Addr:
            host = "192.0.2.7"

        class Conn:
            purpose = type("P", (), {"attached": lambda self, c: None})()

        for _ in range(MAX_PENDING_PER_HOST):
            self.assertIsNone(table.inbound_refusal(Addr()))
            table.connection_made(Conn(), Addr())
        self.assertIn("192.0.2.7", table.inbound_refusal(Addr()))
        other = type("Other", (), {"host": "192.0.2.8"})()
        self.assertIsNone(table.inbound_refusal(other))
        self.assertEqual(Address.parse("tcp:127.0.0.1:1").host, "127.0.0.1")
