"""Tests for L{crust.nat.udp_stack}: what it registers on the endpoint, in which order, and its stats."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.nat import stun
from crust.address import Address
from crust.identity import Identity
from crust.transport.udp import UdpEndpoint
from crust.nat.udp_stack import add_stun_client, build_udp_stack
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
