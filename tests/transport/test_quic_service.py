"""
The loopback checks of the TCP transport, over QUIC: two services on
127.0.0.1 with TCP disabled, so every connection is a QUIC one.
"""

import os
import socket
import struct

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from crust import Identity, PubConnectionInfo
from crust.address import Address
from crust.errors import ConnectFailed, MessageTooLarge
from crust.wire import DATA

from tests.util import connect_pair, make_service, never_answer, ordered_identities, sleep, wait_for


def quic_service(testcase, identity=None, **config):
    config.setdefault("enable_tcp", False)
    return make_service(testcase, identity, **config)


class QuicServiceTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_connection_is_quic_and_carries_10000_messages_in_order(self):
        a, b = quic_service(self), quic_service(self)
        ib = yield b.prepare_connection_info()
        self.assertEqual({x.transport for x in ib.public.addresses}, {"udp"})
        peer = yield connect_pair(self, a, b)
        self.assertEqual(a.peer_details(peer)["transport"], "udp")
        urgent = [b"u%d " % i + os.urandom(i % 40) for i in range(10000)]
        bulk = [b"b%d " % i + os.urandom(i % 40) for i in range(2000)]
        for i, m in enumerate(urgent):
            if a.queued_bytes(peer) > 1_000_000:
                yield a.when_writable(peer)
            a.send(peer, m, 1)
            if i % 5 == 0:
                a.send(peer, bulk[i // 5], 3)
        yield wait_for(lambda: len(b.events.named("new_message")) >= 12000, timeout=30)
        got = [data for (_, data) in b.events.named("new_message")]
        self.assertEqual([m for m in got if m.startswith(b"u")], urgent)  # order holds per priority class
        self.assertEqual([m for m in got if m.startswith(b"b")], bulk)

    @defer.inlineCallbacks
    def test_urgent_message_not_held_behind_a_bulk_transfer(self):
        a, b = quic_service(self), quic_service(self)
        peer = yield connect_pair(self, a, b)
        for _ in range(128):  # 8 MiB of low-priority data queued first
            if a.queued_bytes(peer) > 16_000_000:
                break
            a.send(peer, b"x" * 65536, 5)
        a.send(peer, b"URGENT", 0)
        yield wait_for(lambda: any(d == b"URGENT" for _, d in b.events.named("new_message")), timeout=20)
        got = [d for _, d in b.events.named("new_message")]
        position = got.index(b"URGENT")
        self.assertLess(position, 100, f"the urgent message came after {position} bulk messages")

    @defer.inlineCallbacks
    def test_wrong_key_refused(self):
        a, b = quic_service(self), quic_service(self)
        ia = yield a.prepare_connection_info()
        ib = yield b.prepare_connection_info()
        forged = PubConnectionInfo(Identity.generate().peer_id, ib.public.addresses)
        e = yield self.assertFailure(a.connect(ia, forged), ConnectFailed)
        self.assertIn("wrong", str(e))
        self.assertEqual(a.connected_peers(), [])
        self.assertEqual(b.connected_peers(), [])

    @defer.inlineCallbacks
    def test_wrong_network_refused(self):
        for connector_chooses in (True, False):  # with and without the early claim
            high, low = ordered_identities()
            a = quic_service(self, identity=high if connector_chooses else low, network_name="alpha")
            b = quic_service(self, identity=low if connector_chooses else high, network_name="beta")
            ia = yield a.prepare_connection_info()
            ib = yield b.prepare_connection_info()
            e = yield self.assertFailure(a.connect(ia, ib.public), ConnectFailed)
            self.assertIn("network-mismatch", str(e))
            self.assertEqual(a.events.named("connect_success"), [])

    @defer.inlineCallbacks
    def test_connector_that_chooses_claims_early(self):
        high, low = ordered_identities()
        a, b = quic_service(self, identity=high), quic_service(self, identity=low)
        peer = yield connect_pair(self, a, b)
        conn = a.peers.active[peer]
        self.assertEqual(conn.transport_name, "udp")
        self.assertTrue(conn.handshake.early)
        yield wait_for(lambda: conn.handshake.peer_hello is not None)
        a.send(peer, b"bulk", 2)
        a.send(peer, b"urgent", 0)
        yield wait_for(lambda: len(b.events.named("new_message")) == 2)

    @defer.inlineCallbacks
    def test_oversize_refused_both_ways(self):
        a = quic_service(self, max_message_size=1000)
        b = quic_service(self, max_message_size=1000)
        peer = yield connect_pair(self, a, b)
        self.assertRaises(MessageTooLarge, a.send, peer, b"x" * 1001, 1)
        self.assertRaises(MessageTooLarge, a.send, peer, b"x" * 1001, 7)
        a.peers.active[peer].transport.write(struct.pack("!IB", 5000, DATA))  # announce an oversize frame
        yield wait_for(lambda: b.events.named("lost_peer"), timeout=10)
        self.assertIn("oversize", b.events.named("lost_peer")[0][1])

    @defer.inlineCallbacks
    def test_garbage_datagrams_ignored(self):
        a, b = quic_service(self), quic_service(self)
        peer = yield connect_pair(self, a, b)
        port = b.udp_endpoint.local_address().port
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        for first in (0, 4, 20, 64, 128, 200, 255):
            for _ in range(20):
                s.sendto(bytes([first]) + os.urandom(1199), ("127.0.0.1", port))
        s.sendto(b"", ("127.0.0.1", port))
        yield sleep(0.3)
        a.send(peer, b"still here", 1)
        yield wait_for(lambda: b.events.named("new_message"))
        self.assertEqual(b.connected_peers(), [a.peer_id])
        self.assertEqual(b.events.named("lost_peer"), [])

    @defer.inlineCallbacks
    def test_silent_peer_lost_after_timeout(self):
        a = quic_service(self, heartbeat_interval=60)  # a never heartbeats in time...
        b = quic_service(self, inactivity_timeout=0.6, heartbeat_interval=0.2)
        # ... nor answers b's asking heartbeats (a peer gone silent)
        never_answer(self)
        yield connect_pair(self, a, b)
        yield wait_for(lambda: b.events.named("lost_peer"), timeout=10)
        self.assertIn("nothing received for 0.6 s", b.events.named("lost_peer")[0][1])

    @defer.inlineCallbacks
    def test_stopping_reports_lost_on_the_other_side(self):
        a, b = quic_service(self), quic_service(self)
        yield connect_pair(self, a, b)
        yield a.stopService()
        yield wait_for(lambda: b.events.named("lost_peer"), timeout=10)
        self.assertIn("shutdown", b.events.named("lost_peer")[0][1])

    @defer.inlineCallbacks
    def test_simultaneous_connect_leaves_one_connection(self):
        a, b = quic_service(self), quic_service(self)
        ia = yield a.prepare_connection_info()
        ib = yield b.prepare_connection_info()
        yield defer.gatherResults([a.connect(ia, ib.public), b.connect(ib, ia.public)])
        yield wait_for(lambda: len(a.peers.connections) == 1 and len(b.peers.connections) == 1)
        yield sleep(0.2)
        self.assertEqual((len(a.peers.connections), len(b.peers.connections)), (1, 1))
        self.assertEqual(a.events.named("connect_success"), [(b.peer_id,)])


class RaceTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_tcp_and_quic_race_to_one_connection(self):
        a, b = make_service(self, quic_dial_delay=0), make_service(self)  # both dialled at once
        ib = yield b.prepare_connection_info()
        self.assertEqual({x.transport for x in ib.public.addresses}, {"tcp", "udp"})
        peer = yield connect_pair(self, a, b)
        yield sleep(0.3)
        self.assertEqual(len(a.peers.connections), 1)
        self.assertEqual(len(b.peers.connections), 1)
        self.assertIn(a.peer_details(peer)["transport"], ("tcp", "udp"))

    @defer.inlineCallbacks
    def test_tcp_is_preferred_where_both_work(self):
        for _ in range(3):
            a, b = make_service(self), make_service(self)
            peer = yield connect_pair(self, a, b)
            self.assertEqual(a.peer_details(peer)["transport"], "tcp")

    @defer.inlineCallbacks
    def test_quic_goes_at_once_when_tcp_is_refused(self):
        a, b = make_service(self, quic_dial_delay=5.0), make_service(self)
        ia = yield a.prepare_connection_info()
        ib = yield b.prepare_connection_info()
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()  # nothing listens there: the TCP dial is refused at once
        udp = [x for x in ib.public.addresses if x.transport == "udp"]
        info = PubConnectionInfo(b.peer_id, (Address.parse(f"tcp:127.0.0.1:{port}"), *udp))
        started = reactor.seconds()
        peer = yield a.connect(ia, info)
        self.assertLess(reactor.seconds() - started, 2.0)  # not the 5 s QUIC delay
        self.assertEqual(a.peer_details(peer)["transport"], "udp")

    @defer.inlineCallbacks
    def test_disabled_transports_are_not_offered(self):
        tcp_only = make_service(self, enable_udp=False)
        info = yield tcp_only.prepare_connection_info()
        self.assertEqual({x.transport for x in info.public.addresses}, {"tcp"})
        quic_only = quic_service(self)
        info = yield quic_only.prepare_connection_info()
        self.assertEqual({x.transport for x in info.public.addresses}, {"udp"})
