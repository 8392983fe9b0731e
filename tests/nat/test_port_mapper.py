"""
Tests for L{crust.nat.portmap.mapper}: fallback order, renewal timing, refusals,
router restarts and deletion on stop, first with scripted methods and a
L{Clock}, then with the real PCP/NAT-PMP/UPnP clients against fake gateways
(a simulated wire on the Clock, and loopback sockets on 127.0.0.1).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from crust.nat.portmap import mapper as port_mapper
from crust.address import Address
from crust.nat.portmap.gateway import GatewayTimeout, MappingRefused, NoService
from crust.nat.portmap.natpmp import NATPMPClient
from crust.nat.portmap.pcp import PCPClient
from crust.nat.portmap.mapper import Grant, IPortMappingMethod, Mapping, PortMapper
from tests.nat.test_natpmp import GW, ME, FakeGatewayServer, FakeUDP, closed_udp_port, listen_fake_gateway
from tests.nat.test_upnp_igd import WANIP1, FakeAgent, FakeIGD, soap_fault, soap_response

EXT = "203.0.113.7"


@implementer(IPortMappingMethod)
class ScriptedMethod:
    """
    A method whose answers the test decides: C{answer(transport, port,
    previous)} returns a L{Grant}, raises, or returns a Deferred.  Calls are
    recorded in C{calls}, deletions in C{unmapped}.
    """

    def __init__(self, name: str, answer: Optional[Callable[..., Any]] = None) -> None:
        self.name = name
        self.answer = answer or (lambda t, p, prev: Grant(Address(t, EXT, p), 3600))
        self.calls: list[tuple[str, int, Optional[Grant]]] = []
        self.unmapped: list[tuple[str, int]] = []
        self.unmap_result: Callable[[], Deferred] = lambda: succeed(None)
        self.closed = False

    def map(self, transport: str, internal_port: int, lifetime: int, previous: Optional[Grant]) -> Deferred:
        self.calls.append((transport, internal_port, previous))
        try:
            result = self.answer(transport, internal_port, previous)
        except Exception as e:
            return fail(e)
        return result if isinstance(result, Deferred) else succeed(result)

    def unmap(self, transport: str, internal_port: int, grant: Grant) -> Deferred:
        self.unmapped.append((transport, internal_port))
        return self.unmap_result()

    def close(self) -> Deferred:
        self.closed = True
        return succeed(None)


class Pending(Deferred):
    """A Deferred that remembers being cancelled (its result is consumed by whoever awaited it)."""

    def __init__(self) -> None:
        self.cancelled = False

        def cancel(_: Deferred) -> None:
            self.cancelled = True

        super().__init__(cancel)


def no_service(*args: Any) -> Grant:
    raise GatewayTimeout("no answer")


def refused(*args: Any) -> Grant:
    raise MappingRefused("X", 2, "NOT_AUTHORIZED")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, event: str, mapping: Mapping) -> None:
        self.events.append((event, str(mapping.external)))


def started(test: SynchronousTestCase, methods: list[Any], clock: Clock, **kwargs: Any) -> tuple[PortMapper, Recorder]:
    mapper = PortMapper(kwargs.pop("tcp_port", 4242), kwargs.pop("udp_port", 4243), reactor=clock,
                        methods=methods, **kwargs)
    recorder = Recorder()
    mapper.add_observer(recorder)
    mapper.startService()
    test.addCleanup(lambda: mapper.running and mapper.stopService())
    return mapper, recorder


class FallbackTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_order_and_fallback(self) -> None:
        pcp, natpmp, upnp = ScriptedMethod("pcp", no_service), ScriptedMethod("natpmp", refused), \
            ScriptedMethod("upnp")
        mapper, recorder = started(self, [pcp, natpmp, upnp], self.clock)
        self.assertEqual([m.method for m in mapper.mappings.values()], ["upnp", "upnp"])
        self.assertEqual(mapper.external_addresses(), [Address("tcp", EXT, 4242), Address("udp", EXT, 4243)])
        self.assertEqual(recorder.events, [("added", f"tcp:{EXT}:4242"), ("added", f"udp:{EXT}:4243")])
        # pcp did not answer: not tried again for the udp port; natpmp refused: tried again
        self.assertEqual((len(pcp.calls), len(natpmp.calls), len(upnp.calls)), (1, 2, 2))
        self.assertEqual((mapper.probes["pcp"].answered, mapper.probes["natpmp"].answered,
                          mapper.probes["upnp"].answered), (False, True, True))
        self.assertIn("NOT_AUTHORIZED", mapper.probes["natpmp"].error)
        self.assertEqual(mapper.probes["upnp"].granted, Address("udp", EXT, 4243))
        self.assertEqual(len(mapper.probe_history), 5)
        self.assertEqual(dict(mapper.outcomes), {("pcp", "no-answer"): 1, ("natpmp", "failed"): 2,
                                                 ("upnp", "granted"): 2})
        lines = [e for e in self.events if "next: {following}" in e.get("log_format", "")]
        self.assertEqual([(e["method"], e["following"]) for e in lines],
                         [("pcp", "natpmp"), ("natpmp", "upnp"), ("natpmp", "upnp")])

    def test_first_method_wins(self) -> None:
        pcp, natpmp = ScriptedMethod("pcp"), ScriptedMethod("natpmp")
        mapper, _ = started(self, [pcp, natpmp], self.clock)
        self.assertEqual(len(mapper.mappings), 2)
        self.assertEqual(natpmp.calls, [])

    def test_probe_time(self) -> None:
        def slow(t: str, p: int, prev: Any) -> Deferred:
            d: Deferred = Deferred()
            self.clock.callLater(1.5, d.errback, GatewayTimeout("slow"))
            return d

        mapper, _ = started(self, [ScriptedMethod("pcp", slow), ScriptedMethod("natpmp")], self.clock, udp_port=None)
        self.assertEqual(mapper.mappings, {})
        self.clock.advance(1.5)
        self.assertEqual(mapper.probes["pcp"].elapsed, 1.5)
        self.assertEqual(mapper.mappings[("tcp", 4242)].method, "natpmp")

    def test_all_fail_then_retry(self) -> None:
        state = {"fail": True}

        def flaky(t: str, p: int, prev: Any) -> Grant:
            if state["fail"]:
                raise NoService("down")
            return Grant(Address(t, EXT, p), 3600)

        method = ScriptedMethod("pcp", flaky)
        mapper, recorder = started(self, [method], self.clock, retry_interval=60)
        self.assertEqual(mapper.mappings, {})
        self.assertEqual(len(method.calls), 1)  # no answer for tcp: udp skipped it this round
        state["fail"] = False
        self.clock.advance(59)
        self.assertEqual(mapper.mappings, {})
        self.clock.advance(1)
        self.assertEqual(len(mapper.mappings), 2)
        self.assertEqual(len(recorder.events), 2)

    def test_retry_backs_off(self) -> None:
        method = ScriptedMethod("pcp", no_service)
        started(self, [method], self.clock, udp_port=None, retry_interval=60, max_retry_interval=200)
        times = []
        for _ in range(5):
            before = len(method.calls)
            waited = 0
            while len(method.calls) == before:
                self.clock.advance(1)
                waited += 1
            times.append(waited)
        self.assertEqual(times, [60, 120, 200, 200, 200])

    def test_refresh_waits_for_round(self) -> None:
        d: Deferred = Deferred()
        method = ScriptedMethod("pcp", lambda t, p, prev: d)
        mapper, _ = started(self, [method], self.clock, udp_port=None)
        waiting = mapper.refresh()
        self.assertNoResult(waiting)
        d.callback(Grant(Address("tcp", EXT, 1), 60))
        self.successResultOf(waiting)
        self.assertEqual(len(method.calls), 1)

    def test_observer_errors_contained(self) -> None:
        mapper = PortMapper(4242, reactor=self.clock, methods=[ScriptedMethod("pcp")])
        mapper.add_observer(lambda e, m: 1 / 0)
        recorder = Recorder()
        mapper.add_observer(recorder)
        mapper.startService()
        self.assertEqual(len(recorder.events), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        mapper.remove_observer(recorder)
        self.successResultOf(mapper.stopService())
        self.assertEqual(len(recorder.events), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_unexpected_error_is_a_failure_not_a_crash(self) -> None:
        def buggy(*args: Any) -> Grant:
            raise KeyError("bug")

        mapper, _ = started(self, [ScriptedMethod("pcp", buggy), ScriptedMethod("upnp")], self.clock,
                            udp_port=None)
        self.assertEqual(mapper.mappings[("tcp", 4242)].method, "upnp")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_bad_port(self) -> None:
        self.assertRaises(ValueError, PortMapper, 0, reactor=self.clock)
        self.assertRaises(ValueError, PortMapper, None, 70000, reactor=self.clock)

    def test_no_gateway(self) -> None:
        self.patch(port_mapper, "default_gateway_v4", lambda: None)
        mapper = PortMapper(4242, reactor=self.clock)
        methods = mapper._default_methods()
        self.assertEqual([m.name for m in methods], ["upnp"])
        self.assertEqual(mapper.probes["pcp"].error, "no IPv4 default gateway")

    def test_default_methods(self) -> None:
        mapper = PortMapper(4242, reactor=self.clock, gateway="127.0.0.1", gateway_port=9999)
        methods = mapper._default_methods()
        self.assertEqual([m.name for m in methods], ["pcp", "natpmp", "upnp"])
        for method in methods:
            verifyObject(IPortMappingMethod, method)
        self.assertEqual((methods[0].client.gateway, methods[0].client.port), ("127.0.0.1", 9999))


class RenewalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_half_lease(self) -> None:
        method = ScriptedMethod("pcp")
        mapper, recorder = started(self, [method], self.clock, udp_port=None)
        self.assertEqual(len(method.calls), 1)
        self.clock.advance(1799)
        self.assertEqual(len(method.calls), 1)
        self.clock.advance(1)
        self.assertEqual(len(method.calls), 2)
        self.assertIsNotNone(method.calls[1][2])  # renewal passes the previous grant
        self.assertEqual(mapper.mappings[("tcp", 4242)].granted_at, 1800)
        self.clock.advance(1800)
        self.assertEqual(len(method.calls), 3)
        self.assertEqual(len(recorder.events), 1)  # renewals that change nothing are silent

    def test_granted_lifetime_rules(self) -> None:
        method = ScriptedMethod("pcp", lambda t, p, prev: Grant(Address(t, EXT, p), 120))
        started(self, [method], self.clock, udp_port=None)
        self.clock.advance(60)
        self.assertEqual(len(method.calls), 2)

    def test_minimum_delay(self) -> None:
        method = ScriptedMethod("pcp", lambda t, p, prev: Grant(Address(t, EXT, p), 2))
        started(self, [method], self.clock, udp_port=None, min_renew_delay=10)
        self.clock.advance(9)
        self.assertEqual(len(method.calls), 1)
        self.clock.advance(1)
        self.assertEqual(len(method.calls), 2)

    def test_permanent_lease(self) -> None:
        method = ScriptedMethod("upnp", lambda t, p, prev: Grant(Address(t, EXT, p), 0))
        mapper, _ = started(self, [method], self.clock, udp_port=None, lifetime=600)
        self.assertIsNone(mapper.mappings[("tcp", 4242)].expires_at)
        self.clock.advance(300)
        self.assertEqual(len(method.calls), 2)

    def test_external_change(self) -> None:
        ports = iter([5000, 6000])
        method = ScriptedMethod("pcp", lambda t, p, prev: Grant(Address(t, EXT, next(ports)), 3600))
        mapper, recorder = started(self, [method], self.clock, udp_port=None)
        self.clock.advance(1800)
        self.assertEqual(recorder.events, [("added", f"tcp:{EXT}:5000"), ("removed", f"tcp:{EXT}:5000"),
                                           ("added", f"tcp:{EXT}:6000")])
        self.assertEqual(mapper.mappings[("tcp", 4242)].external.port, 6000)

    def test_refused_renewal_retried(self) -> None:
        answers: list[Any] = [None, refused, refused, refused, None]

        def answer(t: str, p: int, prev: Any) -> Grant:
            step = answers.pop(0)
            if step is not None:
                step()
            return Grant(Address(t, EXT, p), 3600)

        pcp = ScriptedMethod("pcp", answer)
        mapper, recorder = started(self, [pcp], self.clock, udp_port=None, min_renew_delay=10)
        self.clock.advance(1800)  # refused, 1800 s left: retry at +900
        self.assertEqual(len(pcp.calls), 2)
        self.assertIn(("tcp", 4242), mapper.mappings)
        self.clock.advance(900)  # refused, 900 left: retry at +450
        self.assertEqual(len(pcp.calls), 3)
        self.clock.advance(449)
        self.assertEqual(len(pcp.calls), 3)
        self.clock.advance(1)
        self.assertEqual(len(pcp.calls), 4)
        self.clock.advance(225)  # refused with 450 s left: retried at +225, granted
        self.assertEqual(len(pcp.calls), 5)
        self.assertEqual(mapper.mappings[("tcp", 4242)].granted_at, 1800 + 900 + 450 + 225)

    def test_lost_mapping_found_again_elsewhere(self) -> None:
        state = {"pcp": True}

        def pcp_answer(t: str, p: int, prev: Any) -> Grant:
            if not state["pcp"]:
                raise GatewayTimeout("gone")
            return Grant(Address(t, EXT, p), 3600)

        pcp, natpmp = ScriptedMethod("pcp", pcp_answer), ScriptedMethod("natpmp")
        mapper, recorder = started(self, [pcp, natpmp], self.clock, udp_port=None)
        state["pcp"] = False
        self.clock.advance(1800)
        self.assertEqual(mapper.mappings[("tcp", 4242)].method, "natpmp")
        self.assertEqual([e for e, _ in recorder.events], ["added", "removed", "added"])

    def test_expiring_mapping_dropped(self) -> None:
        answers = iter([Grant(Address("tcp", EXT, 1), 40)])

        def answer(t: str, p: int, prev: Any) -> Grant:
            try:
                return next(answers)
            except StopIteration:
                raise MappingRefused("X", 8, "NO_RESOURCES") from None

        mapper, recorder = started(self, [ScriptedMethod("pcp", answer)], self.clock, udp_port=None,
                                   min_renew_delay=10, retry_interval=100)
        self.clock.advance(20)  # 20 s left < 2 * min_renew_delay: dropped, looked for again, refused
        self.assertEqual(mapper.mappings, {})
        self.assertEqual([e for e, _ in recorder.events], ["added", "removed"])

    def test_gateway_restart_remaps_others(self) -> None:
        restarted = {"flag": False}

        def answer(t: str, p: int, prev: Any) -> Grant:
            flag, restarted["flag"] = restarted["flag"], False
            return Grant(Address(t, EXT, p), 3600 if t == "tcp" else 600, gateway_restarted=flag)

        method = ScriptedMethod("pcp", answer)
        started(self, [method], self.clock)
        self.assertEqual(len(method.calls), 2)
        restarted["flag"] = True
        self.clock.advance(299)
        self.assertEqual([c[0] for c in method.calls], ["tcp", "udp"])
        self.clock.advance(1)  # the udp mapping renews, learns of the restart, and tcp is re-made at once
        self.assertEqual([c[0] for c in method.calls], ["tcp", "udp", "udp", "tcp"])
        tcp_calls = lambda: [c for c in method.calls if c[0] == "tcp"]  # noqa: E731
        self.clock.advance(1799)
        self.assertEqual(len(tcp_calls()), 2)  # tcp's renewal timer restarted from the re-map
        self.clock.advance(1)
        self.assertEqual(len(tcp_calls()), 3)


class StopTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_deletes_and_closes(self) -> None:
        pcp, upnp = ScriptedMethod("pcp"), ScriptedMethod("upnp", refused)
        mapper, recorder = started(self, [pcp, upnp], self.clock)
        self.successResultOf(mapper.stopService())
        self.assertEqual(sorted(pcp.unmapped), [("tcp", 4242), ("udp", 4243)])
        self.assertTrue(pcp.closed and upnp.closed)
        self.assertEqual(mapper.mappings, {})
        self.assertEqual([e for e, _ in recorder.events], ["added", "added", "removed", "removed"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waits_for_deletions(self) -> None:
        pcp = ScriptedMethod("pcp")
        pending: list[Deferred] = []
        pcp.unmap_result = lambda: pending.append(Deferred()) or pending[-1]
        mapper, _ = started(self, [pcp], self.clock)
        d = mapper.stopService()
        self.assertNoResult(d)
        pending[0].callback(None)
        self.assertNoResult(d)
        pending[1].errback(MappingRefused("X", 2, "no"))  # logged, not raised
        self.successResultOf(d)

    def test_bounded(self) -> None:
        pcp = ScriptedMethod("pcp")
        pending: list[Pending] = []
        pcp.unmap_result = lambda: pending.append(Pending()) or pending[-1]
        mapper, _ = started(self, [pcp], self.clock, stop_timeout=2.0)
        d = mapper.stopService()
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.successResultOf(d)
        self.assertTrue(pcp.closed)
        self.assertTrue(pending[0].cancelled and pending[1].cancelled)

    def test_stop_during_attempt(self) -> None:
        d = Pending()
        pcp = ScriptedMethod("pcp", lambda t, p, prev: d)
        mapper, recorder = started(self, [pcp], self.clock)
        self.successResultOf(mapper.stopService())
        self.assertTrue(d.cancelled)
        self.assertEqual((mapper.mappings, recorder.events, pcp.unmapped), ({}, [], []))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_during_renewal(self) -> None:
        answers: list[Any] = [Grant(Address("tcp", EXT, 1), 100), Pending()]
        pcp = ScriptedMethod("pcp", lambda t, p, prev: answers.pop(0))
        mapper, _ = started(self, [pcp], self.clock, udp_port=None)
        renewal = answers[0]
        self.clock.advance(50)
        self.successResultOf(mapper.stopService())
        self.assertTrue(renewal.cancelled)
        self.assertEqual(pcp.unmapped, [("tcp", 4242)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_retry(self) -> None:
        mapper, _ = started(self, [ScriptedMethod("pcp", no_service)], self.clock)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(mapper.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])


# the real clients over a simulated wire on the Clock


class Wire:
    """Carries datagrams between clients (bound to C{ME}) and a L{FakeGatewayServer} at C{GW}, 1 ms each way."""

    def __init__(self, clock: Clock, server: FakeGatewayServer) -> None:
        self.clock = clock
        self.server = server
        self.clients: list[Any] = []
        wire = self

        class ServerTransport:
            def write(self, packet: bytes, addr: Any) -> None:
                client = wire.clients[addr[1] - 40000]
                clock.callLater(0.001, client.datagramReceived, packet, (GW, 5351))

        server.makeConnection(ServerTransport())

    def attach(self, client: Any) -> Any:
        index = len(self.clients)
        self.clients.append(client)
        wire = self

        class ClientTransport(FakeUDP):
            def write(self, packet: bytes, addr: Any = None) -> None:
                super().write(packet, addr)
                wire.clock.callLater(0.001, wire.server.datagramReceived, packet, (ME, 40000 + index))

        client.makeConnection(ClientTransport(ME, 40000 + index))
        return client


def fake_igd_agent(mappings: dict[tuple[str, int], int], faults: dict[str, int]) -> FakeAgent:
    def handler(action: str, args: dict[str, str]) -> tuple[int, bytes]:
        if action in faults:
            return 500, soap_fault(faults[action])
        if action == "GetExternalIPAddress":
            return 200, soap_response(action, NewExternalIPAddress=EXT)
        key = (args["NewProtocol"].lower(), int(args["NewExternalPort"]))
        if action == "AddPortMapping":
            mappings[key] = int(args["NewInternalPort"])
        elif action == "DeletePortMapping":
            mappings.pop(key, None)
        return 200, soap_response(action)

    return FakeAgent(handler)


class SimulatedGatewayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def mapper(self, server: FakeGatewayServer, igd_faults: Optional[dict[str, int]] = None,
               **kwargs: Any) -> tuple[PortMapper, Recorder, dict[tuple[str, int], int]]:
        wire = Wire(self.clock, server)
        self.pcp = wire.attach(PCPClient(GW, reactor=self.clock))
        self.natpmp = wire.attach(NATPMPClient(GW, reactor=self.clock))
        igd_mappings: dict[tuple[str, int], int] = {}
        igd = port_mapper.IGDClient("http://192.168.1.1:5000/ctl", WANIP1, reactor=self.clock,
                                    agent=fake_igd_agent(igd_mappings, igd_faults or {}), internal_client=ME)
        methods = [port_mapper.PCPMethod(self.pcp), port_mapper.NATPMPMethod(self.natpmp),
                   port_mapper.UPnPMethod(self.clock, igd=igd)]
        mapper, recorder = started(self, methods, self.clock, **kwargs)
        self.clock.pump([0.001] * 20)
        return mapper, recorder, igd_mappings

    def test_pcp(self) -> None:
        server = FakeGatewayServer(clock=self.clock)
        mapper, recorder, _ = self.mapper(server)
        self.assertEqual({k: (m.method, str(m.external)) for k, m in mapper.mappings.items()},
                         {("tcp", 4242): ("pcp", f"tcp:{EXT}:4242"), ("udp", 4243): ("pcp", f"udp:{EXT}:4243")})
        self.assertEqual(server.mappings, {("tcp", 4242): 4242, ("udp", 4243): 4243})
        d = mapper.stopService()
        self.clock.pump([0.001] * 10)
        self.successResultOf(d)
        self.assertEqual(server.mappings, {})

    def test_natpmp_only(self) -> None:
        server = FakeGatewayServer(pcp=False, clock=self.clock)
        mapper, _, _ = self.mapper(server)
        self.assertEqual({m.method for m in mapper.mappings.values()}, {"natpmp"})
        self.assertEqual(self.pcp.sent, 1)  # answered with UNSUPPORTED_VERSION: no retransmission, no retry
        self.assertEqual(mapper.probes["pcp"].answered, False)

    def test_silent_gateway_upnp(self) -> None:
        server = FakeGatewayServer(silent=True, clock=self.clock)
        mapper, _, igd_mappings = self.mapper(server)
        self.assertEqual(mapper.mappings, {})
        self.clock.pump([0.25] * 40)  # PCP times out (3.75 s), then NAT-PMP
        self.assertEqual({m.method for m in mapper.mappings.values()}, {"upnp"})
        self.assertEqual(igd_mappings, {("tcp", 4242): 4242, ("udp", 4243): 4243})
        self.assertEqual((self.pcp.sent, self.natpmp.sent), (4, 4))  # udp skipped both
        self.assertTrue(3.75 <= mapper.probes["pcp"].elapsed < 4.0)
        d = mapper.stopService()
        self.successResultOf(d)
        self.assertEqual(igd_mappings, {})

    def test_refusals_everywhere(self) -> None:
        server = FakeGatewayServer(refuse=2, clock=self.clock)
        mapper, _, _ = self.mapper(server, igd_faults={"AddPortMapping": 501}, retry_interval=60)
        self.assertEqual(mapper.mappings, {})
        self.assertEqual(mapper.probes["upnp"].error, "UPnP refused (code 501): AddPortMapping: Error")
        server.refuse = 0
        self.clock.advance(60)
        self.clock.pump([0.001] * 10)
        self.assertEqual({m.method for m in mapper.mappings.values()}, {"pcp"})

    def test_natpmp_router_restart(self) -> None:
        server = FakeGatewayServer(pcp=False, clock=self.clock, lifetime_cap=600)
        mapper, recorder, _ = self.mapper(server, lifetime=600)
        self.assertEqual(len(server.mappings), 2)
        self.clock.advance(100)
        server.restart()
        self.assertEqual(server.mappings, {})
        self.clock.advance(200)  # the tcp mapping renews at 300 s, sees the epoch, re-maps udp too
        self.clock.pump([0.001] * 20)
        self.assertEqual(self.natpmp.epoch_resets, 1)
        self.assertEqual(len(server.mappings), 2)
        self.assertEqual(len(recorder.events), 2)  # same external addresses: nothing to tell

    def test_pcp_router_restart(self) -> None:
        server = FakeGatewayServer(clock=self.clock, lifetime_cap=600)
        mapper, _, _ = self.mapper(server, lifetime=600)
        self.clock.advance(100)
        server.restart()
        self.clock.advance(200)
        self.clock.pump([0.001] * 20)
        self.assertEqual(self.pcp.epoch_resets, 1)
        self.assertEqual(len(server.mappings), 2)


class LoopbackTests(TestCase):
    """The real clients and sockets against fake gateways on 127.0.0.1."""

    def mapper(self, gateway_port: int, fake: FakeIGD, **kwargs: Any) -> PortMapper:
        mapper = PortMapper(4242, 4243, gateway="127.0.0.1", gateway_port=gateway_port,
                            ssdp_address=fake.ssdp_address, initial_timeout=0.05, max_tries=2,
                            search_timeout=1.0, **kwargs)
        self.addCleanup(lambda: mapper.running and mapper.stopService())
        return mapper

    @inlineCallbacks
    def test_pcp(self) -> Any:
        server, port = listen_fake_gateway(self)
        fake = FakeIGD().listen(self)
        mapper = self.mapper(port, fake)
        mapper.startService()
        yield mapper.refresh()
        self.assertEqual({m.method for m in mapper.mappings.values()}, {"pcp"})
        self.assertEqual(server.mappings, {("tcp", 4242): 4242, ("udp", 4243): 4243})
        yield mapper.stopService()
        self.assertEqual(server.mappings, {})
        self.assertEqual(fake.calls, [])

    @inlineCallbacks
    def test_natpmp(self) -> Any:
        server, port = listen_fake_gateway(self, pcp=False)
        fake = FakeIGD().listen(self)
        mapper = self.mapper(port, fake)
        mapper.startService()
        yield mapper.refresh()
        self.assertEqual({m.method for m in mapper.mappings.values()}, {"natpmp"})
        yield mapper.stopService()
        self.assertEqual(server.mappings, {})

    @inlineCallbacks
    def test_upnp(self) -> Any:
        _, port = listen_fake_gateway(self, silent=True)
        fake = FakeIGD().listen(self)
        mapper = self.mapper(port, fake)
        mapper.startService()
        yield mapper.refresh()
        self.assertEqual({str(m.external) for m in mapper.mappings.values()},
                         {f"tcp:{EXT}:4242", f"udp:{EXT}:4243"})
        self.assertEqual({m.method for m in mapper.mappings.values()}, {"upnp"})
        self.assertEqual(set(fake.mappings), {("tcp", 4242), ("udp", 4243)})
        self.assertEqual(fake.ssdp_protocol.searches[0].split(b"\r\n")[0], b"M-SEARCH * HTTP/1.1")
        yield mapper.stopService()
        self.assertEqual(fake.mappings, {})

    @inlineCallbacks
    def test_closed_gateway_port(self) -> Any:
        """No PCP/NAT-PMP server: ICMP port unreachable makes both fail at once; UPnP maps."""
        port = yield closed_udp_port()
        fake = FakeIGD().listen(self)
        mapper = PortMapper(4242, gateway="127.0.0.1", gateway_port=port, ssdp_address=fake.ssdp_address,
                            initial_timeout=1.0, max_tries=4, search_timeout=1.0)
        self.addCleanup(lambda: mapper.running and mapper.stopService())
        mapper.startService()
        yield mapper.refresh()
        self.assertEqual(mapper.mappings[("tcp", 4242)].method, "upnp")
        self.assertLess(mapper.probes["pcp"].elapsed + mapper.probes["natpmp"].elapsed, 0.5)
        yield mapper.stopService()

    @inlineCallbacks
    def test_nothing_works(self) -> Any:
        _, port = listen_fake_gateway(self, silent=True)
        fake = FakeIGD().listen(self)
        fake.ssdp_protocol.silent = True
        mapper = self.mapper(port, fake)
        mapper.startService()
        start = reactor.seconds()
        yield mapper.refresh()
        self.assertEqual(mapper.mappings, {})
        self.assertLess(reactor.seconds() - start, 5.0)
        self.assertEqual({p.answered for p in mapper.probes.values()}, {False})
        yield mapper.stopService()
