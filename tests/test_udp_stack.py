"""Tests for L{crust.nat.udp_stack}: what it registers on the endpoint, in which order, and its stats."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nacl.bindings import crypto_box_beforenm, crypto_box_keypair
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.candidates import NatBehaviour
from crust.nat import echo, stun
from crust.punch import checks
from crust.punch.udp import UdpPuncher
from crust.transport.quic.dispatcher import QUIC_FIRST_BYTE, QuicDispatcher, is_quic
from crust.address import Address
from crust.identity import Identity
from crust.transport.udp import UdpEndpoint
from crust.nat.udp_stack import add_stun_client, build_udp_stack
from tests import examples
from tests.mutate import valid_or_mutated
from tests.transport.test_udp_endpoint import PEER, FakeDatagramTransport, VirtualNet, fake_stack, net_stack, run_for


class UdpStackTests(SynchronousTestCase):
    def test_everything_is_on_the_one_endpoint(self):
        udp = build_udp_stack(Clock(), host="127.0.0.1", port=4000, identity=Identity.generate())
        self.assertIsInstance(udp.endpoint, UdpEndpoint)
        self.assertIs(udp.stun_responder.endpoint, udp.endpoint)
        self.assertIs(udp.echo.endpoint, udp.endpoint)
        self.assertTrue(udp.echo.responding)
        self.assertTrue(udp.endpoint.routes_stun_to(udp.stun_client.datagram_received))
        self.assertTrue(udp.endpoint.routes_stun_to(udp.stun_responder.datagram_received))
        self.assertEqual((udp.endpoint.host, udp.endpoint.port), ("127.0.0.1", 4000))

    def test_options_reach_their_owners(self):
        udp = build_udp_stack(Clock(), stun_responder=False, stun_options=dict(rto=0.1),
                              echo_options=dict(max_outstanding=3), socket_buffer=0)
        self.assertFalse(udp.stun_responder.enabled)
        self.assertEqual(udp.stun_client.rto, 0.1)
        self.assertEqual(udp.echo.max_outstanding, 3)
        self.assertEqual(udp.endpoint.socket_buffer, 0)

    def test_the_client_comes_before_the_responder(self):
        """Our own hairpinned request is the client's, not answered by our responder."""
        clock = Clock()
        net = VirtualNet(clock)
        a = net_stack(net, "127.0.0.10", 4000)
        d = a.stun_client.hairpin_probe(Address("udp", "127.0.0.10", 4000), timeout=1.0)
        run_for(clock, 0.05)
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(a.stun_responder.counters["answered"], 0)
        self.assertEqual(a.endpoint.counters["stun_consumed"], 1)

    def test_stats_gather_every_part(self):
        udp, _ = fake_stack()
        udp.endpoint.datagramReceived(stun.encode(stun.make_binding_request()), PEER)
        stats = udp.stats()
        self.assertEqual(set(stats), {"local_address", "endpoint", "send_errors", "stun_client",
                                      "stun_responder", "echo"})
        self.assertEqual(stats["stun_responder"]["answered"], 1)
        self.assertEqual(stats["endpoint"]["stun_consumed"], 1)
        self.assertEqual(stats["stun_client"]["unmatched"], 1)  # the client saw it first

    def test_add_stun_client(self):
        endpoint = UdpEndpoint(Clock())
        transport = FakeDatagramTransport()
        endpoint.makeConnection(transport)
        client = add_stun_client(endpoint, rto=0.2)
        d = client.binding_request(Address("udp", *PEER))
        [(data, addr)] = transport.written
        self.assertEqual(addr, PEER)
        response = stun.make_binding_success(stun.decode(data), Address("udp", "127.0.0.1", 40000))
        endpoint.datagramReceived(stun.encode(response), PEER)
        self.assertEqual(self.successResultOf(d).mapped_address, Address("udp", "127.0.0.1", 40000))


# -- property test: the node's UDP socket fed anything -------------------------------------------------------


def _stack_identity() -> Identity:
    return Identity.from_seed(b"u" * 32)


def _real_initial() -> bytes:
    """The first datagram of a real QUIC connection to the stack (a client Initial, 1200 bytes or more)."""
    sent: list[bytes] = []
    client = QuicDispatcher(Identity.from_seed(b"q" * 32), lambda data, addr: sent.append(data) or True,
                            clock=Clock())
    client.connect(("127.0.0.1", 40000)).addErrback(lambda failure: None)
    client.close_all()
    return sent[0]


def _echo_request(request_id: bytes) -> bytes:
    """A well-made echo request for the stack's identity."""
    public, secret = crypto_box_keypair()
    key = crypto_box_beforenm(echo.curve_public_key(_stack_identity().peer_id), secret)
    return echo.encode_request(key, public, request_id)


_SOURCE = ("192.0.2.7", 3478)
_INITIAL = _real_initial()

_valid_datagrams = st.one_of(
    st.builds(lambda tid: stun.encode(stun.make_binding_request(transaction_id=tid)), st.binary(min_size=12,
                                                                                               max_size=12)),
    st.builds(lambda tid: stun.encode(stun.make_binding_success(stun.make_binding_request(transaction_id=tid),
                                                                Address("udp", *_SOURCE))),
              st.binary(min_size=12, max_size=12)),
    st.builds(_echo_request, st.binary(min_size=16, max_size=16)),
    st.builds(lambda key, rid: echo.encode_response(key, rid, Address("udp", *_SOURCE)),
              st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16)),
    st.builds(lambda key, attempt, seq: checks.encode_check(key, attempt, seq),
              st.binary(min_size=32, max_size=32), st.binary(min_size=8, max_size=8), st.integers(0, 2**16 - 1)),
    st.builds(lambda: _INITIAL),
    st.builds(lambda first, rest: bytes([first]) + rest, st.integers(0, 255), st.binary(max_size=80)),
)


class HostileDatagramTests(SynchronousTestCase):
    """
    The node's one UDP socket, with everything that lives on it (STUN client
    and responder, the echo, hole-punching checks, QUIC), fed valid,
    damaged and random datagrams: no handler ever fails, and no datagram is
    answered with more than three times its size (RFC 9000's bound).
    """

    def setUp(self) -> None:
        clock = Clock()
        self.udp, self.transport = fake_stack(clock, identity=_stack_identity())
        endpoint = self.udp.endpoint
        self.quic = QuicDispatcher(_stack_identity(), endpoint.send, clock=clock, accepted=lambda driver: None,
                                   host=lambda: self.transport.getHost())
        endpoint.register(is_quic, self.quic.datagram_received, "quic", first_byte_at_least=QUIC_FIRST_BYTE)
        self.puncher = UdpPuncher(endpoint, _stack_identity(), clock, lambda *args: None, lambda: NatBehaviour())

    def tearDown(self) -> None:
        self.quic.close_all()

    @examples(150)
    @given(st.lists(valid_or_mutated(_valid_datagrams, max_size=1500), min_size=1, max_size=5))
    def test_any_datagrams(self, datagrams: list[bytes]) -> None:
        endpoint = self.udp.endpoint
        for data in datagrams:
            self.transport.written.clear()
            endpoint.datagramReceived(data, _SOURCE)
            self.assertEqual(endpoint.counters["handler_errors"], 0)
            answered = sum(len(d) for d, addr in self.transport.written)
            self.assertLessEqual(answered, 3 * len(data))
            self.assertTrue(all(addr == _SOURCE for _, addr in self.transport.written))
