"""
Tests for L{crust.nat.netcheck}: whole runs on a simulated network and a
L{Clock} (behind a NAT, nothing answering, the hard deadline, port-mapping
results, the report's forms), then a loopback run against a real
L{crust.Service} and real UDP endpoints on 127.0.0.x.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from crust.address import Address
from crust.config import HardCodedContact
from crust.nat.portmap.gateway import MappingRefused, NoService
from crust.identity import Identity, PeerId
from crust.nat.classify import MappingBehaviour as Mapping
from crust.nat.netcheck import NetcheckOptions, format_report, run_netcheck
from crust.nat.portmap.mapper import Grant, IPortMappingMethod, PortMapper
from crust.service import ProbeResult
from crust.transport.udp import UdpEndpoint
from crust.nat.udp_stack import UdpStack, build_udp_stack
from tests.transport.test_udp_endpoint import VirtualNet, net_stack, run_for
from tests.util import make_service

ME = ("127.0.0.10", 4000)
ME_OUTSIDE = ("127.0.0.100", 50000)
STUN1 = ("127.0.0.20", 3478)
STUN2 = ("127.0.0.21", 3478)
PEER_UDP = ("127.0.0.30", 4002)
TCP_OK = Address("tcp", "127.0.0.40", 4242)
TCP_SILENT = Address("tcp", "127.0.0.41", 4242)
TCP_REFUSED = Address("tcp", "127.0.0.42", 4242)
OBSERVED_TCP = Address("tcp", "127.0.0.100", 61234)


class FakeService:
    """C{probe()} answers as scripted: after C{delay} with C{OBSERVED_TCP}, never, or an error."""

    def __init__(self, clock: Clock, identity: Identity) -> None:
        self.clock = clock
        self.peer_id = identity.peer_id
        self.listen_addresses = [Address("tcp", ME[0], 4242)]
        self.probed: list[tuple[Address, PeerId]] = []

    def probe(self, address: Address, expected_peer: Optional[PeerId] = None) -> Deferred:
        self.probed.append((address, expected_peer))
        if address == TCP_REFUSED:
            return fail(ConnectionRefusedError("connection refused"))
        d: Deferred = Deferred()
        if address == TCP_OK:
            self.clock.callLater(0.05, d.callback, ProbeResult(expected_peer, OBSERVED_TCP, 0.05, None))
        return d


@implementer(IPortMappingMethod)
class FakeMethod:
    def __init__(self, name: str, grant_host: Optional[str] = None, error: Optional[Exception] = None) -> None:
        self.name = name
        self.grant_host = grant_host
        self.error = error

    def map(self, transport: str, internal_port: int, lifetime: int, previous: Any) -> Deferred:
        if self.error is not None:
            return fail(self.error)
        return succeed(Grant(Address(transport, self.grant_host, internal_port + 10000), 3600))

    def unmap(self, transport: str, internal_port: int, grant: Grant) -> Deferred:
        return succeed(None)

    def close(self) -> Deferred:
        return succeed(None)


class SimulatedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.net = VirtualNet(self.clock)
        self.me = Identity.generate()
        self.peer = Identity.generate()
        self.udp = net_stack(self.net, *ME, identity=self.me)
        self.service = FakeService(self.clock, self.me)
        self.stun = [Address("udp", *STUN1), Address("udp", *STUN2)]
        self.peers = [
            (self.peer.peer_id, Address("udp", *PEER_UDP)),
            (self.peer.peer_id, TCP_OK),
            HardCodedContact(Identity.generate().peer_id, TCP_SILENT),
            (str(Identity.generate().peer_id), str(TCP_REFUSED)),
        ]

    def start_network(self) -> None:
        self.net.nat[ME] = ME_OUTSIDE
        net_stack(self.net, *STUN1)
        net_stack(self.net, *STUN2)
        net_stack(self.net, *PEER_UDP, identity=self.peer)

    def check(self, seconds: float = 30.0, **kw: Any):
        kw.setdefault("port_mapper", None)
        d = run_netcheck(self.service, self.udp.endpoint, kw.pop("stun", self.stun), kw.pop("peers", self.peers),
                         clock=self.clock, stun_client=self.udp.stun_client, echo=self.udp.echo, **kw)
        run_for(self.clock, seconds)
        return self.successResultOf(d)

    def test_behind_a_nat(self):
        self.start_network()
        report = self.check()
        self.assertEqual(report.peer_id, str(self.me.peer_id))
        self.assertEqual(report.external["udp"], (Address("udp", *ME_OUTSIDE),))
        self.assertEqual(report.external["tcp"], (OBSERVED_TCP,))
        self.assertTrue(report.tcp_behind_nat)
        self.assertEqual(report.local["udp"], (Address("udp", *ME),))
        self.assertEqual(report.local["tcp"], (Address("tcp", ME[0], 4242),))
        nat = report.nat
        self.assertTrue(nat.behind_nat)
        self.assertEqual(nat.mapping, Mapping.ENDPOINT_INDEPENDENT)
        self.assertFalse(nat.port_preservation)
        self.assertTrue(report.hairpinning)
        outcomes = {(p.kind, p.target): p.outcome for p in report.probes}
        self.assertEqual(outcomes, {
            ("tcp-probe", str(TCP_OK)): "ok",
            ("tcp-probe", str(TCP_SILENT)): "timeout",
            ("tcp-probe", str(TCP_REFUSED)): "error",
            ("stun", str(self.stun[0])): "ok",
            ("stun", str(self.stun[1])): "ok",
            ("udp-echo", f"udp:{PEER_UDP[0]}:{PEER_UDP[1]}"): "ok",
            ("hairpin", f"udp:{ME_OUTSIDE[0]}:{ME_OUTSIDE[1]}"): "ok",
        })
        echo = next(p for p in report.probes if p.kind == "udp-echo")
        self.assertEqual(echo.peer_id, str(self.peer.peer_id))
        self.assertEqual(echo.observed, f"udp:{ME_OUTSIDE[0]}:{ME_OUTSIDE[1]}")
        silent = next(p for p in report.probes if p.target == str(TCP_SILENT))
        self.assertEqual(silent.duration, 3.0)
        ok = next(p for p in report.probes if p.target == str(TCP_OK))
        self.assertAlmostEqual(ok.duration, 0.05)
        self.assertEqual(self.service.probed[0], (TCP_OK, self.peer.peer_id))
        # bounded: the silent TCP peer is the slowest part
        self.assertAlmostEqual(report.duration, 3.0)
        self.assertLessEqual(report.duration, report.worst_case)
        self.assertFalse(report.deadline_hit)
        self.assertIn("port mapping: no port mapper: not checked", report.notes)

    def test_nothing_answers_within_the_worst_case(self):
        options = NetcheckOptions()
        stun = self.stun + [Address("udp", "127.0.0.22", 3478), Address("udp", "127.0.0.23", 3478)]
        peers = [p for p in self.peers if p != (self.peer.peer_id, TCP_OK)]
        report = self.check(stun=stun, peers=peers, options=options)
        self.assertTrue(report.nat.udp_blocked)
        self.assertEqual(report.external, {"tcp": (), "udp": ()})
        self.assertTrue(all(p.outcome != "ok" for p in report.probes))
        # 3 STUN servers in turn (1.75 s each), then the echo (1.75 s); the 4th server is not tried
        self.assertAlmostEqual(report.duration, 7.0)
        self.assertLessEqual(report.duration, options.worst_case(len(stun)))
        self.assertEqual(options.worst_case(), 9.75)
        self.assertEqual(len([p for p in report.probes if p.kind == "stun"]), 3)
        self.assertIn("UDP: using 3 of 4 STUN servers", report.notes)

    def test_hard_deadline(self):
        options = NetcheckOptions(deadline=2.0)
        report = self.check(options=options)
        self.assertTrue(report.deadline_hit)
        self.assertIsNone(report.nat)
        self.assertEqual(report.duration, 2.0)
        silent = next(p for p in report.probes if p.target == str(TCP_SILENT))
        self.assertEqual((silent.outcome, silent.error), ("timeout", "cancelled at the netcheck deadline"))
        self.assertIn("UDP: NAT classification did not finish within 2 s", report.notes)
        self.assertEqual(self.udp.stun_client.outstanding, 0)
        self.assertEqual(self.udp.echo.outstanding, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_port_mapper_results(self):
        self.start_network()
        mapper = PortMapper(4242, 4000, reactor=self.clock, methods=[
            FakeMethod("pcp", error=NoService("no answer from the gateway")),
            FakeMethod("natpmp", error=MappingRefused("NAT-PMP", 2, "not authorized")),
            FakeMethod("upnp", grant_host="127.0.0.100"),
        ])
        mapper.startService()
        self.addCleanup(mapper.stopService)
        report = self.check(port_mapper=mapper)
        pm = report.port_mapping
        self.assertTrue(pm["checked"])
        methods = {m["method"]: m for m in pm["methods"]}
        self.assertEqual([m["method"] for m in pm["methods"]], ["pcp", "natpmp", "upnp"])
        self.assertFalse(methods["pcp"]["answered"])
        self.assertTrue(methods["natpmp"]["answered"])
        self.assertIsNone(methods["natpmp"]["granted"])
        self.assertIn("not authorized", methods["natpmp"]["error"])
        self.assertEqual(methods["upnp"]["granted"], "udp:127.0.0.100:14000")
        self.assertEqual(pm["answered"], ["natpmp", "upnp"])
        self.assertEqual(sorted(m["external"] for m in pm["mappings"]),
                         ["tcp:127.0.0.100:14242", "udp:127.0.0.100:14000"])
        text = report.format_text()
        self.assertIn("upnp     granted 127.0.0.100:14000 for 3600 s", text)
        self.assertIn("natpmp   answered, refused:", text)
        self.assertIn("pcp      no answer", text)

    def test_report_forms(self):
        self.start_network()
        report = self.check()
        d = json.loads(report.to_json())
        self.assertEqual(d["version"], 1)
        self.assertEqual(d["external"]["udp"], [f"udp:{ME_OUTSIDE[0]}:{ME_OUTSIDE[1]}"])
        self.assertEqual(d["nat"]["mapping"], "endpoint-independent")
        self.assertNotIn("probes", d["nat"])
        self.assertEqual(d["hairpinning"], {"udp": True})
        self.assertEqual(d["port_mapping"], {"checked": False})
        self.assertEqual(len(d["probes"]), 7)
        self.assertEqual(set(d["probes"][0]), {"protocol", "kind", "target", "outcome", "started", "duration",
                                                "peer_id", "observed", "rtt", "error"})
        text = report.format_text()
        self.assertEqual(text, format_report(d))  # the JSON renders the same
        self.assertIn("NAT (udp)\n  type         cone (filtering unknown)\n  mapping      endpoint-independent", text)
        self.assertIn(f"  udp          {ME_OUTSIDE[0]}:{ME_OUTSIDE[1]}", text)
        self.assertIn("  hairpinning  yes", text)
        self.assertIn("tcp tcp-probe", text)

    def test_turn_allocations_reported(self):
        turn = [{"server": "udp:192.0.2.1:3478", "state": "allocated", "relayed": "udp:192.0.2.1:50000",
                 "mapped": "udp:203.0.113.5:4000", "lifetime": 600, "expires_in": 412.5, "refreshes": 1,
                 "permissions": ["198.51.100.7"], "peers": [], "channels": 0, "error": None},
                {"server": "udp:192.0.2.2:3478", "state": "retrying", "relayed": None, "mapped": None,
                 "lifetime": None, "expires_in": None, "refreshes": 0, "permissions": [], "peers": [],
                 "channels": 0, "error": "401 Unauthorized"}]
        d = run_netcheck(None, None, clock=self.clock, turn=lambda: turn)
        report = self.successResultOf(d)
        self.assertEqual(report.to_dict()["turn"], turn)
        text = report.format_text()
        self.assertIn("TURN\n  server       192.0.2.1:3478: relayed 192.0.2.1:50000 for 600 s (expires in 412.5 s, "
                      "1 refreshes), 1 permission(s), 0 channel(s)", text)
        self.assertIn("  server       192.0.2.2:3478: retrying, no allocation: 401 Unauthorized", text)
        self.assertNotIn("TURN", self.successResultOf(run_netcheck(None, None, clock=self.clock)).format_text())

    def test_nothing_to_probe(self):
        report = self.check(stun=[], peers=[], seconds=1)
        self.assertIsNone(report.nat)
        self.assertEqual(report.probes, ())
        self.assertEqual(report.duration, 0)
        self.assertIn("UDP: no STUN server or udp: echo peer: external UDP address and NAT type unknown", report.notes)
        self.assertIn("TCP: no peer with a tcp: address to probe: external TCP address unknown", report.notes)
        self.assertIn("Probes\n  none", report.format_text())

    def test_without_service_or_endpoint(self):
        d = run_netcheck(None, None, self.stun, self.peers, clock=self.clock)
        report = self.successResultOf(d)
        self.assertIn("TCP: no service given: not probed", report.notes)
        self.assertIn("UDP: no endpoint given: not probed", report.notes)
        self.assertEqual(self.net.traffic, [])

    def test_endpoint_without_stun_client_or_echo(self):
        self.start_network()
        d = run_netcheck(self.service, self.udp.endpoint, self.stun, self.peers, clock=self.clock)
        run_for(self.clock, 30)
        report = self.successResultOf(d)
        self.assertIsNone(report.nat)
        self.assertIn("UDP: no STUN client given: not probed", report.notes)
        self.assertIn("UDP echo: no echo given: udp: peers not asked", report.notes)
        self.assertEqual({p.protocol for p in report.probes}, {"tcp"})

    def test_our_id_from_the_echo(self):
        self.start_network()
        d = run_netcheck(None, self.udp.endpoint, [], [(self.me.peer_id, Address("udp", *PEER_UDP))],
                         clock=self.clock, stun_client=self.udp.stun_client, echo=self.udp.echo)
        run_for(self.clock, 30)
        report = self.successResultOf(d)
        self.assertIn("our own peer id is among the echo peers: skipped", report.notes)

    def test_closed_endpoint(self):
        endpoint = UdpEndpoint(self.clock)
        report = self.successResultOf(run_netcheck(None, endpoint, self.stun, [], clock=self.clock))
        self.assertIn("UDP: the endpoint is not open: not probed", report.notes)

    def test_own_id_skipped(self):
        self.start_network()
        report = self.check(peers=[(self.me.peer_id, TCP_OK)])
        self.assertEqual(self.service.probed, [])
        self.assertIn("our own peer id is among the echo peers: skipped", report.notes)


# --- loopback ---------------------------------------------------------------------------


class LoopbackTests(TestCase):
    timeout = 30

    def udp(self, host: str, identity: Any = None) -> UdpStack:
        udp = build_udp_stack(reactor, host=host, identity=identity)
        udp.endpoint.listen()
        self.addCleanup(udp.endpoint.stop)
        return udp

    async def test_netcheck_on_loopback(self):
        me = make_service(self)
        peer = make_service(self)
        await me.start_listening()
        peer_tcp = (await peer.start_listening())[0]
        my_udp = self.udp("127.0.0.1", me.identity)
        peer_udp = self.udp("127.0.0.1", peer.identity)
        stun_server = self.udp("127.0.0.2")
        report = await run_netcheck(
            me, my_udp.endpoint, [stun_server.endpoint.local_address()],
            [(peer.peer_id, peer_tcp), (peer.peer_id, peer_udp.endpoint.local_address())],
            stun_client=my_udp.stun_client, echo=my_udp.echo,
        )
        self.assertEqual(report.peer_id, str(me.peer_id))
        # TCP: the peer saw our probe come from 127.0.0.1 and some port
        [tcp] = report.external["tcp"]
        self.assertEqual(tcp.host, "127.0.0.1")
        self.assertFalse(report.tcp_behind_nat)
        self.assertEqual(report.local["tcp"], tuple(a for a in me.listen_addresses if a.transport == "tcp"))
        # UDP: STUN and the secure echo both saw our endpoint's own address: no NAT
        self.assertEqual(report.external["udp"], (my_udp.endpoint.local_address(),))
        self.assertEqual(report.local["udp"], (my_udp.endpoint.local_address(),))
        self.assertFalse(report.nat.behind_nat)
        self.assertFalse(report.nat.udp_blocked)
        self.assertEqual(report.nat.mapping, Mapping.ENDPOINT_INDEPENDENT)
        self.assertTrue(report.nat.port_preservation)
        self.assertTrue(report.hairpinning)
        kinds = sorted((p.kind, p.outcome) for p in report.probes)
        self.assertEqual(kinds, [("hairpin", "ok"), ("stun", "ok"), ("tcp-probe", "ok"), ("udp-echo", "ok")])
        for p in report.probes:
            self.assertLess(p.duration, 2.0)
        self.assertLess(report.duration, 3.0)
        self.assertEqual(stun_server.stun_responder.counters["answered"], 1)
        self.assertEqual(peer_udp.echo.counters["requests_answered"], 1)
        self.assertIsNone(json.loads(report.to_json())["port_mapping"].get("methods"))
        self.assertIn("NAT (udp)", report.format_text())
