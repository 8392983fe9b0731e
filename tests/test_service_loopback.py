"""Two or more services on 127.0.0.1 with real sockets and real TLS."""

import os
import socket
import struct

from twisted.internet import defer, protocol, reactor, ssl
from twisted.trial.unittest import TestCase

from crust import Identity, PubConnectionInfo
from crust.address import Address
from crust.errors import ConnectFailed, ConnectToSelf, MessageTooLarge, PeerNotConnected
from crust.transport.tls import ConnectionCreator, make_context
from crust.wire import DATA, CertInfo, Hello

from tests.util import connect_pair, make_service, never_answer, ordered_identities, sleep, wait_for


class ConnectTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_exchange_10000_messages_in_order(self):
        a, b = make_service(self), make_service(self)
        peer = yield connect_pair(self, a, b)
        self.assertEqual(peer, b.peer_id)
        sent = [b"message %d " % i + os.urandom(i % 50) for i in range(10000)]
        for i, m in enumerate(sent):
            if a.queued_bytes(peer) > 1_000_000:
                yield a.when_writable(peer)
            a.send(peer, m, 1)
        yield wait_for(lambda: len(b.events.named("new_message")) >= 10000)
        got = [data for (pid, data) in b.events.named("new_message")]
        self.assertEqual(got, sent)
        self.assertTrue(all(pid == a.peer_id for (pid, _) in b.events.named("new_message")))
        # and back the other way
        b.send(a.peer_id, b"reply", 0)
        yield wait_for(lambda: a.events.named("new_message"))
        self.assertEqual(a.events.named("new_message"), [(b.peer_id, b"reply")])

    @defer.inlineCallbacks
    def test_one_sided_connect(self):
        a, b = make_service(self), make_service(self)
        yield connect_pair(self, a, b)
        self.assertEqual(b.events.named("connect_success"), [(a.peer_id,)])
        self.assertEqual(a.events.named("connect_success"), [(b.peer_id,)])
        b.send(a.peer_id, b"from the listener", 2)
        yield wait_for(lambda: a.events.named("new_message"))

    @defer.inlineCallbacks
    def test_simultaneous_connect_leaves_one_connection(self):
        for _ in range(5):
            a, b = make_service(self), make_service(self)
            ia = yield a.prepare_connection_info()
            ib = yield b.prepare_connection_info()
            d1 = a.connect(ia, ib.public)
            d2 = b.connect(ib, ia.public)
            results = yield defer.gatherResults([d1, d2])
            self.assertEqual(results, [b.peer_id, a.peer_id])
            yield wait_for(lambda: len(a.peers.connections) == 1 and len(b.peers.connections) == 1)
            yield sleep(0.2)
            self.assertEqual(len(a.peers.connections), 1)
            self.assertEqual(len(b.peers.connections), 1)
            ca, cb = a.peers.active[b.peer_id], b.peers.active[a.peer_id]
            self.assertEqual(ca.local_address.port, cb.peer_address.port)  # the same TCP connection
            self.assertEqual(a.events.named("connect_success"), [(b.peer_id,)])
            self.assertEqual(b.events.named("connect_success"), [(a.peer_id,)])
            self.assertEqual(a.events.named("lost_peer"), [])
            a.send(b.peer_id, b"ping", 1)
            b.send(a.peer_id, b"pong", 1)
            yield wait_for(lambda: a.events.named("new_message") and b.events.named("new_message"))
            yield a.stopService()
            yield b.stopService()

    @defer.inlineCallbacks
    def test_ipv6_loopback(self):
        a, b = make_service(self, listen_host="::1"), make_service(self, listen_host="::1")
        ib = yield b.prepare_connection_info()
        self.assertEqual([str(x) for x in ib.public.addresses],
                         [f"tcp:[::1]:{b.listen_addresses[0].port}",
                          f"udp:[::1]:{b.udp_endpoint.local_address().port}"])
        yield connect_pair(self, a, b)
        self.assertEqual(b.peer_address(a.peer_id).host, "::1")

    @defer.inlineCallbacks
    def test_second_connect_opens_nothing(self):
        a, b = make_service(self), make_service(self)
        yield connect_pair(self, a, b)
        ia = yield a.prepare_connection_info()
        ib = yield b.prepare_connection_info()
        peer = yield a.connect(ia, ib.public)
        self.assertEqual(peer, b.peer_id)
        yield sleep(0.1)
        self.assertEqual(len(a.peers.connections), 1)
        self.assertEqual(len(b.peers.connections), 1)

    @defer.inlineCallbacks
    def test_connect_to_self_refused(self):
        a = make_service(self)
        ia = yield a.prepare_connection_info()
        yield self.assertFailure(a.connect(ia, ia.public), ConnectToSelf)

    @defer.inlineCallbacks
    def test_wrong_expected_key_refused(self):
        a, b = make_service(self), make_service(self)
        ia = yield a.prepare_connection_info()
        ib = yield b.prepare_connection_info()
        impostor = Identity.generate().peer_id
        forged = PubConnectionInfo(impostor, ib.public.addresses)
        e = yield self.assertFailure(a.connect(ia, forged), ConnectFailed)
        self.assertIn("wrong peer key", str(e))
        self.assertIn(str(b.peer_id), str(e))
        self.assertEqual(a.events.named("connect_failure")[0][0], impostor)
        self.assertEqual(b.connected_peers(), [])
        self.assertEqual(a.connected_peers(), [])

    @defer.inlineCallbacks
    def test_wrong_network_refused_with_reason_on_both_sides(self):
        for connector_chooses in (True, False):  # with and without the early claim's certificate check
            high, low = ordered_identities()
            a = make_service(self, high if connector_chooses else low, network_name="alpha")
            b = make_service(self, low if connector_chooses else high, network_name="beta")
            ia = yield a.prepare_connection_info()
            ib = yield b.prepare_connection_info()
            e = yield self.assertFailure(a.connect(ia, ib.public), ConnectFailed)
            self.assertIn("network-mismatch", str(e))
            yield sleep(0.1)
            self.assertEqual(b.connected_peers(), [])
            self.assertEqual(b.events.named("connect_success"), [])
            self.assertEqual(a.events.named("connect_success"), [])
            self.assertEqual(a.events.named("lost_peer"), [])

    @defer.inlineCallbacks
    def test_incompatible_version_refused(self):
        for connector_chooses in (True, False):
            high, low = ordered_identities()
            a = make_service(self, high if connector_chooses else low)
            b = make_service(self, low if connector_chooses else high, start=False, enable_udp=False)
            # b speaks only version 9, in its HELLO and in its certificate
            b._creator = ConnectionCreator(
                make_context(b.identity, CertInfo(network=b.network, version=9, min_version=9)))
            original = b._hello_for
            b._hello_for = lambda conn, original=original: Hello(
                **{**original(conn).__dict__, "version": 9, "min_version": 9})
            b.startService()
            ia = yield a.prepare_connection_info()
            ib = yield b.prepare_connection_info()
            e = yield self.assertFailure(a.connect(ia, ib.public), ConnectFailed)
            self.assertIn("version-mismatch", str(e))
            self.assertIn("9..9", str(e))
            self.assertEqual(a.events.named("connect_success"), [])

    @defer.inlineCallbacks
    def test_connector_that_chooses_is_active_at_tls_completion(self):
        """It claims the connection with its TLS Finished: no round trip waiting for the peer's HELLO."""
        high, low = ordered_identities()
        a, b = make_service(self, high), make_service(self, low)
        peer = yield connect_pair(self, a, b)
        conn = a.peers.active[peer]
        self.assertTrue(conn.handshake.early)
        self.assertFalse(b.peers.active[a.peer_id].handshake.early)
        yield wait_for(lambda: conn.handshake.peer_hello is not None)  # the HELLO still comes
        self.assertEqual(a.peer_role(peer), "node")  # known from the late HELLO
        self.assertIsNotNone(a.peer_details(peer)["observed_us_as"])
        a.send(peer, b"early", 0)
        b.send(a.peer_id, b"late", 0)
        yield wait_for(lambda: a.events.named("new_message") and b.events.named("new_message"))
        self.assertEqual(b.events.named("new_message"), [(a.peer_id, b"early")])

    @defer.inlineCallbacks
    def test_connector_that_does_not_choose_waits_for_choose(self):
        high, low = ordered_identities()
        a, b = make_service(self, low), make_service(self, high)
        peer = yield connect_pair(self, a, b)
        self.assertFalse(a.peers.active[peer].handshake.early)
        self.assertFalse(b.peers.active[a.peer_id].handshake.early)

    @defer.inlineCallbacks
    def test_unreachable_address_fails_with_reason(self):
        a = make_service(self, connect_timeout=5)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        ia = yield a.prepare_connection_info()
        info = PubConnectionInfo(Identity.generate().peer_id, (Address("tcp", "127.0.0.1", port),))
        e = yield self.assertFailure(a.connect(ia, info), ConnectFailed)
        self.assertIn(f"127.0.0.1:{port}", str(e))
        self.assertIn("refused", str(e).lower())

    @defer.inlineCallbacks
    def test_disconnect_reports_lost_on_both_sides(self):
        a, b = make_service(self), make_service(self)
        yield connect_pair(self, a, b)
        self.assertTrue(a.disconnect(b.peer_id))
        self.assertFalse(a.disconnect(Identity.generate().peer_id))
        yield wait_for(lambda: a.events.named("lost_peer") and b.events.named("lost_peer"))
        self.assertIn("disconnect", b.events.named("lost_peer")[0][1])
        self.assertRaises(PeerNotConnected, a.send, b.peer_id, b"x", 1)

    @defer.inlineCallbacks
    def test_stopping_a_service_makes_the_other_side_report_lost(self):
        a, b = make_service(self), make_service(self)
        yield connect_pair(self, a, b)
        yield a.stopService()
        yield wait_for(lambda: b.events.named("lost_peer"))
        self.assertEqual(b.events.named("lost_peer")[0][0], a.peer_id)
        self.assertIn("shutdown", b.events.named("lost_peer")[0][1])

    @defer.inlineCallbacks
    def test_silent_peer_is_lost_after_the_timeout(self):
        a = make_service(self, heartbeat_interval=60)  # a never heartbeats in time...
        b = make_service(self, inactivity_timeout=0.5, heartbeat_interval=0.2)
        # ... nor answers b's asking heartbeats (a peer gone silent)
        never_answer(self)
        yield connect_pair(self, a, b)
        start = reactor.seconds()
        yield wait_for(lambda: b.events.named("lost_peer"), timeout=5)
        self.assertGreaterEqual(reactor.seconds() - start, 0.4)
        self.assertIn("nothing received for 0.5 s", b.events.named("lost_peer")[0][1])

    @defer.inlineCallbacks
    def test_heartbeats_keep_an_idle_connection(self):
        a = make_service(self, heartbeat_interval=0.1, inactivity_timeout=0.5)
        b = make_service(self, heartbeat_interval=0.1, inactivity_timeout=0.5)
        yield connect_pair(self, a, b)
        yield sleep(1.5)
        self.assertEqual(a.events.named("lost_peer") + b.events.named("lost_peer"), [])


class BadInputTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_oversize_send_fails_at_once(self):
        a, b = make_service(self, max_message_size=1000), make_service(self, max_message_size=1000)
        peer = yield connect_pair(self, a, b)
        e = self.assertRaises(MessageTooLarge, a.send, peer, b"x" * 1001, 1)
        self.assertEqual(e.limit, 1000)
        self.assertEqual(a.events.named("message_too_large"), [(peer, 1001, 1000)])
        a.send(peer, b"y" * 1000, 1)  # the limit itself is fine, connection unaffected
        yield wait_for(lambda: b.events.named("new_message"))

    @defer.inlineCallbacks
    def test_peer_announcing_oversize_frame_is_disconnected_alone(self):
        a = make_service(self)
        b = make_service(self, max_message_size=1000)
        c = make_service(self)
        yield connect_pair(self, a, b)
        yield connect_pair(self, c, b)
        rogue = a.peers.active[b.peer_id]
        rogue.transport.write(struct.pack("!IB", 5000, DATA) + b"z" * 100)
        yield wait_for(lambda: b.events.named("lost_peer") and a.events.named("lost_peer"))
        self.assertIn("oversize", b.events.named("lost_peer")[0][1])
        self.assertIn("oversize", a.events.named("lost_peer")[0][1])
        self.assertEqual(b.connected_peers(), [c.peer_id])
        c.send(b.peer_id, b"still fine", 1)
        yield wait_for(lambda: b.events.named("new_message"))

    @defer.inlineCallbacks
    def _other_clients_survive(self, make_client):
        a, b = make_service(self), make_service(self)
        yield connect_pair(self, a, b)
        port = b.listen_addresses[0].port
        closed = defer.Deferred()

        class Raw(protocol.Protocol):
            def connectionMade(self):
                make_client.send(self)

            def connectionLost(self, reason):
                closed.callback(None)

        factory = protocol.ClientFactory.forProtocol(Raw)
        yield make_client.connect(port, factory)
        yield closed
        a.send(b.peer_id, b"after garbage", 1)
        yield wait_for(lambda: b.events.named("new_message"))
        self.assertEqual(b.connected_peers(), [a.peer_id])

    def test_random_bytes_close_that_connection_only(self):
        class Client:
            @staticmethod
            def send(proto):
                proto.transport.write(os.urandom(4096))

            @staticmethod
            def connect(port, factory):
                reactor.connectTCP("127.0.0.1", port, factory)
                return defer.succeed(None)

        return self._other_clients_survive(Client)

    def test_plain_tls_client_closes_that_connection_only(self):
        class Client:
            @staticmethod
            def send(proto):
                proto.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

            @staticmethod
            def connect(port, factory):
                options = ssl.CertificateOptions(verify=False)
                reactor.connectSSL("127.0.0.1", port, factory, options)
                return defer.succeed(None)

        return self._other_clients_survive(Client)


class ReconnectAndForgetTests(TestCase):
    """Hardening: connect right after disconnect is true; a peer that left leaves nothing behind."""

    @defer.inlineCallbacks
    def test_connect_right_after_disconnect_gives_a_usable_connection(self):
        a = make_service(self, enable_udp=False)
        b = make_service(self, enable_udp=False)
        ib = yield b.prepare_connection_info()
        for i in range(20):
            yield a.connect(ib.public)
            a.disconnect(b.peer_id)
            peer = yield a.connect(ib.public)  # the old connection is still closing here
            self.assertEqual(peer, b.peer_id)
            a.send(b.peer_id, b"after reconnect %d" % i, 0)  # raised PeerNotConnected before
            expected = (a.peer_id, b"after reconnect %d" % i)
            yield wait_for(lambda: expected in b.events.named("new_message"))
            a.disconnect(b.peer_id)
            yield wait_for(lambda: b.peer_id not in a.peers.active and a.peer_id not in b.peers.active)

    @defer.inlineCallbacks
    def test_connect_by_peer_id_after_disconnect_finds_the_peer_where_it_was(self):
        a = make_service(self)
        b = make_service(self)
        ib = yield b.prepare_connection_info()
        yield a.connect(ib.public)
        a.disconnect(b.peer_id)
        yield wait_for(lambda: b.peer_id not in a.peers.active and a.peer_id not in b.peers.active)
        # no common peer to ask: only the addresses remembered from the info we were given
        peer = yield a.connect(b.peer_id)
        self.assertEqual(peer, b.peer_id)
        a.send(b.peer_id, b"found again", 0)
        yield wait_for(lambda: (a.peer_id, b"found again") in b.events.named("new_message"))
        # the other way round, from what a's HELLO said of its listeners (b was never given a's info)
        b.disconnect(a.peer_id)
        yield wait_for(lambda: b.peer_id not in a.peers.active and a.peer_id not in b.peers.active)
        peer = yield b.connect(a.peer_id)
        self.assertEqual(peer, a.peer_id)

    @defer.inlineCallbacks
    def test_what_a_peer_said_is_forgotten_when_it_is_gone(self):
        a = make_service(self, enable_udp=False)
        ia = yield a.prepare_connection_info()
        for _ in range(5):
            b = make_service(self, enable_udp=False)  # a fresh identity each time
            yield b.connect(ia.public)
            yield wait_for(lambda: b.peer_id in a.peers.active)
            self.assertIn(b.peer_id, a.peers.hellos)
            yield b.stopService()
            yield wait_for(lambda: b.peer_id not in a.peers.active)
            self.assertNotIn(b.peer_id, a.peers.hellos)
        self.assertEqual(a.peers.hellos, {})


class EndedConnectionTests(TestCase):
    """
    A connection that ended is freed by reference counting, on both sides:
    nothing of crust's (its handshake, decoders, connect attempt, the
    transport below it) holds it in a cycle, so a node under churn does not
    carry its ended connections until the next full collection.
    """

    timeout = 30

    def setUp(self):
        import gc

        gc.collect()
        gc.disable()  # only reference counting frees anything during these tests
        self.addCleanup(gc.enable)
        self.made = []

    def track(self, service):
        import weakref

        made = service.peers.connection_made

        def connection_made(conn, accepted_from=None):
            self.made.append(weakref.ref(conn))
            return made(conn, accepted_from)

        service.peers.connection_made = connection_made
        return service

    @defer.inlineCallbacks
    def assertAllFreed(self, *services):
        yield wait_for(lambda: all(not s.peers.connections for s in services))
        yield sleep(0.2)  # the sockets' last turns
        self.assertTrue(self.made)
        alive = [ref() for ref in self.made if ref() is not None]
        self.assertEqual(alive, [])

    @defer.inlineCallbacks
    def part(self, how, **config):
        a = self.track(make_service(self, **config))
        b = self.track(make_service(self, **config))
        peer = yield connect_pair(self, a, b)
        a.send(peer, b"hello", 0)
        yield wait_for(lambda: b.events.named("new_message"))
        if how == "disconnect":
            a.disconnect(peer)
        else:
            a.peers.active[peer].transport.abortConnection()
        yield self.assertAllFreed(a, b)

    def test_tcp_disconnect(self):
        return self.part("disconnect", enable_udp=False)

    def test_tcp_abort(self):
        return self.part("abort", enable_udp=False)

    def test_quic_disconnect(self):
        return self.part("disconnect", enable_tcp=False)

    @defer.inlineCallbacks
    def test_reachability_probe(self):
        """A node tests a bootstrapping node's listener with a connection of its own: that one goes too."""
        from crust.config import HardCodedContact
        from crust.roles import Role

        seed = self.track(make_service(self, enable_udp=False, accept_bootstrap=True))
        yield seed.start_listening()
        contact = HardCodedContact(seed.peer_id, seed.listen_addresses[0])
        node = self.track(make_service(self, enable_udp=False, hard_coded_contacts=(contact,)))
        peer = yield node.bootstrap(role=Role.NODE)
        self.assertEqual(len(self.made), 4)  # the bootstrap connection's two ends, the probe's two
        node.disconnect(peer)
        yield self.assertAllFreed(seed, node)
