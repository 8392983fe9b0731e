"""
Hole punching between real services on 127.0.0.1: a rendezvous R and two
nodes A and B connected to it; A connects to B by peer id alone.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from crust.errors import ConnectFailed
from crust.identity import PeerId

from tests.util import connect_pair, make_service, ordered_identities, sleep, wait_for

PATH_KINDS = {"direct", "mapped", "punched-tcp", "punched-udp", "relayed", "incoming"}


class LoopbackPunchTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def three(self, serve: bool = True, b_joins: bool = True):
        """R (serving or not), A and B, both connected to R (B only if C{b_joins})."""
        r = make_service(self, serve_rendezvous=serve)
        a, b = make_service(self), make_service(self)
        yield connect_pair(self, a, r)
        if b_joins:
            yield connect_pair(self, b, r)
        return r, a, b

    def direct_off(self, *services) -> None:
        for service in services:
            for name in ("tcp", "quic"):
                self.assertTrue(service.dialer.unregister(name))

    @defer.inlineCallbacks
    def connect_by_id(self, a, b):
        started = reactor.seconds()
        peer = yield a.connect(PeerId.from_text(str(b.peer_id)))
        self.assertEqual(peer, b.peer_id)
        yield wait_for(lambda: (a.peer_id,) in b.events.named("connect_success"), timeout=5)
        self.assertEqual(b.events.named("connect_success").count((a.peer_id,)), 1)
        return reactor.seconds() - started

    @defer.inlineCallbacks
    def exchange_messages(self, a, b):
        a.send(b.peer_id, b"from A", 1)
        b.send(a.peer_id, b"from B", 1)
        yield wait_for(lambda: a.events.named("new_message") and b.events.named("new_message"), timeout=5)
        self.assertEqual(b.events.named("new_message"), [(a.peer_id, b"from A")])
        self.assertEqual(a.events.named("new_message"), [(b.peer_id, b"from B")])

    @defer.inlineCallbacks
    def test_connect_by_peer_id_through_a_rendezvous(self):
        r, a, b = yield self.three()
        seconds = yield self.connect_by_id(a, b)
        self.assertLess(seconds, 5)
        path = a.peer_details(b.peer_id)["path"]
        self.assertIn(path["kind"], PATH_KINDS)
        self.assertTrue(path["strategy"])
        self.assertIsNotNone(path["elapsed"])
        self.assertIn(b.peer_details(a.peer_id)["path"]["kind"], PATH_KINDS)
        self.assertGreaterEqual(r.punch.rendezvous.counters["forwarded"], 3)  # CONNECT, REPLY, SYNC
        yield self.exchange_messages(a, b)

    @defer.inlineCallbacks
    def punched(self, a_larger: bool, only: str = ""):
        """A connects to B by id with the direct strategies off (and only C{only}-punch, if given)."""
        big, small = ordered_identities()
        r = make_service(self, serve_rendezvous=True)
        a, b = make_service(self, big if a_larger else small), make_service(self, small if a_larger else big)
        yield connect_pair(self, a, r)
        yield connect_pair(self, b, r)
        self.direct_off(a, b)
        if only:
            other = {"tcp": "udp", "udp": "tcp"}[only]
            for service in (a, b):
                self.assertTrue(service.dialer.unregister(f"{other}-punch"))
                setattr(service.punch, other, None)  # the responder's punch too
        yield self.connect_by_id(a, b)
        path = a.peer_details(b.peer_id)["path"]
        kinds = {f"punched-{only}"} if only else {"punched-tcp", "punched-udp"}
        self.assertIn(path["kind"], kinds)
        self.assertEqual(path["strategy"], {"punched-tcp": "tcp-punch", "punched-udp": "udp-punch"}[path["kind"]])
        theirs = b.peer_details(a.peer_id)
        self.assertEqual(theirs["path"]["kind"], path["kind"])
        self.assertEqual(theirs["transport"], a.peer_details(b.peer_id)["transport"])
        self.assertEqual(theirs["transport"], path["kind"][len("punched-"):])
        self.assertEqual(len(a.peers.active), 2)  # R and B
        yield self.exchange_messages(a, b)
        # every punch has stopped
        for x, y in ((a, b), (b, a)):
            self.assertFalse(any(p.running(y.peer_id) for p in (x.punch.udp, x.punch.tcp) if p is not None))

    def test_punched_without_direct_strategies(self):
        return self.punched(a_larger=True)

    def test_punched_without_direct_strategies_from_the_smaller_id(self):
        return self.punched(a_larger=False)

    def test_tcp_punch_alone(self):
        return self.punched(a_larger=False, only="tcp")

    def test_udp_punch_alone(self):
        return self.punched(a_larger=False, only="udp")

    @defer.inlineCallbacks
    def test_tcp_punch_when_the_syn_comes_before_the_sync(self):
        """
        B's listener takes A's SYN before B has the SYNC (here: the SYNC is held
        back): B's TLS role is still the one its peer id gives, A's the other.
        A has the smaller id: both would otherwise be TLS servers and wait.
        """
        big, small = ordered_identities()
        r = make_service(self, serve_rendezvous=True)
        a, b = make_service(self, small), make_service(self, big)
        yield connect_pair(self, a, r)
        yield connect_pair(self, b, r)
        for service in (a, b):
            self.assertTrue(service.dialer.unregister("udp-punch"))
        self.direct_off(a, b)
        b.punch.udp = None  # B's own punch is TCP only too
        held = b.punch._sync_received
        self.patch(b.punch, "_sync_received", lambda envelope, via: reactor.callLater(0.3, held, envelope, via))
        seconds = yield self.connect_by_id(a, b)
        self.assertLess(seconds, 3)
        self.assertEqual(a.peer_details(b.peer_id)["path"]["kind"], "punched-tcp")
        self.assertEqual(b.peer_details(a.peer_id)["path"]["kind"], "punched-tcp")
        self.assertTrue(b.peer_details(a.peer_id)["initiator"])  # the larger id
        yield self.exchange_messages(a, b)
        yield sleep(0.35)  # the SYNC comes: B is connected, it does not punch
        self.assertFalse(b.punch.tcp.running(a.peer_id))
        self.assertEqual(len(b.peers.connections), 2)  # R and A

    @defer.inlineCallbacks
    def assert_connect_fails(self, a, b, *expected: str):
        started = reactor.seconds()
        e = yield self.assertFailure(a.connect(b.peer_id), ConnectFailed)
        self.assertLess(reactor.seconds() - started, 3.0)  # fast: no waiting for a timeout
        reasons = " | ".join(e.reasons)
        self.assertTrue(any(r.startswith("rendezvous: ") for r in e.reasons), e.reasons)
        for text in expected:
            self.assertIn(text, reasons)
        self.assertEqual(a.connected_peers().count(b.peer_id), 0)
        return reasons

    @defer.inlineCallbacks
    def test_no_peer_to_ask(self):
        a, b = make_service(self), make_service(self)
        yield self.assert_connect_fails(a, b, "no common peer", "connected to no other peer")

    @defer.inlineCallbacks
    def test_no_common_peer(self):
        r, a, b = yield self.three(b_joins=False)
        yield self.assert_connect_fails(a, b, "no common peer", "1 peer(s)", b.peer_id.short())

    @defer.inlineCallbacks
    def test_rendezvous_not_serving(self):
        r, a, b = yield self.three(serve=False)
        yield self.assert_connect_fails(a, b, "no common peer", r.peer_id.short(), "does not serve")
        self.assertEqual(r.punch.rendezvous.counters["forwarded"], 0)


class ExtraSocketTests(TestCase):
    """An extra UDP socket of a birthday punch: one QUIC dispatcher, whatever the number of dials on it."""

    timeout = 20

    @defer.inlineCallbacks
    def test_two_dials_on_one_socket_share_its_dispatcher(self):
        from crust.address import Address
        from crust.session.purpose import Purpose
        from crust.transport.udp import UdpEndpoint

        a, b = make_service(self), make_service(self)
        yield a.start_listening()
        yield b.start_listening()
        socket = UdpEndpoint(reactor, host="127.0.0.1", port=0, socket_buffer=0)
        socket.listen()
        self.addCleanup(lambda: socket.stop() if socket.listening else None)
        first = a.udp.quic_for_socket(socket)
        self.assertIs(a.udp.quic_for_socket(socket), first)

        def dial(address):
            factory = a.dialer.factory(Purpose(), initiator=True, expected=b.peer_id, transport_name="udp")
            return a.udp.quic_for_socket(socket).dial(address, factory, b.peer_id)

        # first a dial that goes nowhere, then one to B, from the same socket
        nobody = UdpEndpoint(reactor, host="127.0.0.1", port=0, socket_buffer=0)
        nobody.listen()
        port = nobody.transport.getHost().port
        nobody.stop()
        nowhere = dial(Address.parse(f"udp:127.0.0.1:{port}"))
        nowhere.addErrback(lambda f: None)
        ib = yield b.prepare_connection_info()
        yield dial([x for x in ib.public.addresses if x.transport == "udp"][0])
        yield wait_for(lambda: a.is_connected(b.peer_id) and b.is_connected(a.peer_id))
        nowhere.cancel()  # its end must not close the socket the connection runs on
        yield sleep(0.2)
        self.assertTrue(socket.listening)
        a.send(b.peer_id, b"over the extra socket", 1)
        yield wait_for(lambda: b.events.named("new_message"))
        self.assertEqual(b.events.named("new_message"), [(a.peer_id, b"over the extra socket")])
        # the socket closes with its last connection
        a.disconnect(b.peer_id)
        yield wait_for(lambda: not socket.listening and not first.drivers, timeout=10)
