"""
Tests for L{crust.transport.udp} and the stack of L{crust.nat.udp_stack}:
first-byte demultiplexing, the STUN chain, the STUN responder and its rate
limit on the socket, send errors and counters (a fake transport and a
simulated network on a L{Clock}), then real sockets on 127.0.0.1.
"""

from __future__ import annotations

import errno
from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.internet.error import MessageLengthError
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from crust.nat import stun
from crust.address import Address
from crust.identity import Identity
from crust.nat.stun_client import StunError
from crust.nat.stun_responder import STUN_RESPONSE_OVERHEAD
from crust.transport.udp import UdpEndpoint, UdpEndpointService, UdpSendError
from crust.nat.udp_stack import UdpStack, build_udp_stack

LOOPBACK = "127.0.0.1"
PEER = ("127.0.0.9", 5000)


# --- helpers shared with the echo and netcheck tests ----------------------------------


class FakeDatagramTransport:
    """Records writes; raises C{error} from C{write} when set."""

    def __init__(self, host: str = LOOPBACK, port: int = 40000) -> None:
        self.host = host
        self.port = port
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.error: Optional[BaseException] = None

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.error is not None:
            raise self.error
        self.written.append((data, addr))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.host, self.port)

    def stopListening(self) -> None:
        pass


def fake_stack(clock: Optional[Clock] = None, host: str = LOOPBACK, port: int = 40000,
               **kw: Any) -> tuple[UdpStack, FakeDatagramTransport]:
    """A L{UdpStack} (C{kw} for L{build_udp_stack}) whose endpoint writes to a L{FakeDatagramTransport}."""
    clock = clock or Clock()
    udp = build_udp_stack(clock, host=host, port=port, **kw)
    transport = FakeDatagramTransport(host, port)
    udp.endpoint.makeConnection(transport)
    return udp, transport


class _NetTransport(FakeDatagramTransport):
    def __init__(self, net: "VirtualNet", host: str, port: int) -> None:
        super().__init__(host, port)
        self.net = net

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        super().write(data, addr)
        self.net.send((self.host, self.port), tuple(addr), data)


class VirtualNet:
    """
    Datagram sockets on a L{Clock}: a write reaches the protocol attached at
    the destination C{latency} seconds later, from the writer's address.
    C{nat} maps an internal address to the external address it appears as
    (a full-cone NAT that hairpins); C{drop(src, dst, data)} loses datagrams.
    Every datagram is logged in C{traffic} as C{(src, dst, data)}.
    """

    def __init__(self, clock: Clock, latency: float = 0.01) -> None:
        self.clock = clock
        self.latency = latency
        self.hosts: dict[tuple[str, int], Any] = {}
        self.nat: dict[tuple[str, int], tuple[str, int]] = {}
        self.drop: Callable[[tuple, tuple, bytes], bool] = lambda src, dst, data: False
        self.traffic: list[tuple[tuple, tuple, bytes]] = []

    def attach(self, protocol: Any, host: str, port: int) -> _NetTransport:
        transport = _NetTransport(self, host, port)
        self.hosts[(host, port)] = protocol
        protocol.makeConnection(transport)
        return transport

    def send(self, src: tuple, dst: tuple, data: bytes) -> None:
        src = self.nat.get(src, src)
        self.traffic.append((src, dst, data))
        if self.drop(src, dst, data):
            return
        inside = {ext: internal for internal, ext in self.nat.items()}
        target = self.hosts.get(inside.get(dst, dst))
        if target is not None:
            self.clock.callLater(self.latency, target.datagramReceived, data, src)


def run_for(clock: Clock, seconds: float) -> None:
    """Advance C{clock} by C{seconds}, running calls scheduled along the way in time order."""
    target = clock.seconds() + seconds
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= target]
        if not due:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, target - clock.seconds()))


def net_stack(net: VirtualNet, host: str, port: int, **kw: Any) -> UdpStack:
    """A L{UdpStack} (C{kw} for L{build_udp_stack}) whose endpoint is on C{net} at C{host}:C{port}."""
    udp = build_udp_stack(net.clock, host=host, port=port, **kw)
    net.attach(udp.endpoint, host, port)
    return udp


def binding_request(**kw: Any) -> tuple[stun.StunMessage, bytes]:
    fingerprint = kw.pop("fingerprint", True)
    request = stun.make_binding_request(**kw)
    return request, stun.encode(request, fingerprint=fingerprint)


# --- unit tests -------------------------------------------------------------------------


class DemuxTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.udp, self.transport = fake_stack(self.clock, stun_responder=False)
        self.endpoint = self.udp.endpoint

    def test_stun_response_goes_to_the_client(self):
        d = self.udp.stun_client.binding_request(Address("udp", *PEER))
        data, addr = self.transport.written[0]
        self.assertEqual(addr, PEER)
        request = stun.decode(data)
        response = stun.make_binding_success(request, Address("udp", "127.0.0.1", 40000))
        self.endpoint.datagramReceived(stun.encode(response), PEER)
        self.assertEqual(self.successResultOf(d).mapped_address, Address("udp", "127.0.0.1", 40000))
        self.assertEqual(self.endpoint.counters["stun"], 1)
        self.assertEqual(self.endpoint.counters["stun_consumed"], 1)

    def test_crust_types_go_to_their_handlers(self):
        got = []
        self.endpoint.set_crust_handler(9, lambda data, addr: got.append((data, addr)))
        self.endpoint.datagramReceived(b"\x09hello", PEER)
        self.endpoint.datagramReceived(b"\x0aunknown type", PEER)
        self.assertEqual(got, [(b"\x09hello", PEER)])
        self.assertEqual(self.endpoint.counters["crust"], 2)
        self.assertEqual(self.endpoint.counters["crust_unknown_type"], 1)
        self.endpoint.set_crust_handler(9, None)
        self.endpoint.datagramReceived(b"\x09again", PEER)
        self.assertEqual(len(got), 1)
        self.assertEqual(self.endpoint.counters["crust_unknown_type"], 2)

    def test_echo_types_are_wired(self):
        self.endpoint.datagramReceived(b"\x04short", PEER)
        self.endpoint.datagramReceived(b"\x05short", PEER)
        self.assertEqual(self.udp.echo.counters["requests_truncated"], 1)
        self.assertEqual(self.udp.echo.counters["responses_truncated"], 1)

    def test_crust_types_only_in_4_to_15(self):
        for bad in (3, 16, 64, 255):
            self.assertRaises(ValueError, self.endpoint.set_crust_handler, bad, lambda d, a: None)

    def test_registry_first_match_and_unregister(self):
        quic, dtls = [], []
        remove = self.endpoint.register(lambda d: d[0] >= 64, lambda d, a: quic.append(d), "quic")
        self.endpoint.register(lambda d: 20 <= d[0] <= 63, lambda d, a: dtls.append(d), "dtls")
        self.endpoint.register(lambda d: True, lambda d, a: self.fail("second match must not run"))
        self.endpoint.datagramReceived(b"\xc3long header", PEER)
        self.endpoint.datagramReceived(b"\x41short header", PEER)
        self.endpoint.datagramReceived(b"\x16dtls", PEER)
        self.assertEqual(quic, [b"\xc3long header", b"\x41short header"])
        self.assertEqual(dtls, [b"\x16dtls"])
        remove()
        remove()  # idempotent
        self.assertEqual(self.endpoint.counters["registry"], 3)

    def test_registry_never_sees_stun_or_crust(self):
        seen = []
        self.endpoint.register(lambda d: True, lambda d, a: seen.append(d))
        _, request = binding_request()
        self.endpoint.datagramReceived(request, PEER)
        self.endpoint.datagramReceived(b"\x07crust", PEER)
        self.assertEqual(seen, [])

    def test_unknown_and_empty_dropped_and_counted(self):
        self.endpoint.datagramReceived(b"", PEER)
        self.endpoint.datagramReceived(b"\x80rtp?", PEER)
        self.endpoint.datagramReceived(b"\x10zrtp?", PEER)
        c = self.endpoint.counters
        self.assertEqual((c["empty"], c["unknown"], c["received"]), (1, 2, 3))
        self.assertEqual(c["received_bytes"], 11)

    def test_first_byte_says_stun_but_it_is_not(self):
        self.endpoint.datagramReceived(b"\x00\x01garbage that is no STUN", PEER)
        self.assertEqual(self.endpoint.counters["stun_dropped"], 1)
        self.assertEqual(self.transport.written, [])

    def test_failing_handlers_and_classifiers_are_contained(self):
        def boom(*args):
            raise RuntimeError("handler bug")

        self.endpoint.register(boom, lambda d, a: None)
        self.endpoint.register(lambda d: True, boom)
        self.endpoint.set_crust_handler(12, boom)
        self.endpoint.datagramReceived(b"\x90x", PEER)
        self.endpoint.datagramReceived(b"\x0cx", PEER)
        self.assertEqual(self.endpoint.counters["handler_errors"], 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)

    def test_source_first_then_the_first_byte(self):
        """A source handler sees its address's datagrams first; what it declines goes by the first byte."""
        server = ("127.0.0.7", 3478)
        quic, taken = [], []
        self.endpoint.register(lambda d: d[0] >= 64, lambda d, a: quic.append((d, a)), "quic",
                               first_byte_at_least=64)

        def turn(data, addr):
            taken.append((data, addr))
            return data[0] <= 0x4F

        remove = self.endpoint.register_source(server, turn, "turn")
        self.endpoint.datagramReceived(b"\x40\x00\x00\x00", server)  # ChannelData: the source handler's
        self.endpoint.datagramReceived(b"\xc0long header", server)  # declined: QUIC's after all
        self.endpoint.datagramReceived(b"\x40short header", PEER)  # another source: QUIC
        self.assertEqual(taken, [(b"\x40\x00\x00\x00", server), (b"\xc0long header", server)])
        self.assertEqual(quic, [(b"\xc0long header", server), (b"\x40short header", PEER)])
        self.assertEqual(self.endpoint.counters["source_consumed"], 1)
        self.assertRaises(ValueError, self.endpoint.register_source, server, turn)
        remove()
        remove()  # idempotent
        self.endpoint.datagramReceived(b"\x41x", server)
        self.assertEqual(len(taken), 2)
        self.assertEqual(quic[-1], (b"\x41x", server))

    def test_source_address_checked_and_failures_contained(self):
        self.assertRaises(ValueError, self.endpoint.register_source, ("not an ip", 1), lambda d, a: True)

        def boom(data, addr):
            raise RuntimeError("handler bug")

        self.endpoint.register_source(PEER, boom)
        self.endpoint.datagramReceived(b"\x40x", PEER)
        self.assertEqual(self.endpoint.counters["handler_errors"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_source_ipv6_keys(self):
        got = []
        self.endpoint.register_source(("2001:db8::7", 3478), lambda d, a: got.append(a) or True)
        self.endpoint.datagramReceived(b"\x40x", ("2001:db8::7", 3478, 0, 0))
        self.endpoint.datagramReceived(b"\x40x", ("2001:db8::7", 3478))
        self.assertEqual(len(got), 2)


class BareEndpointTests(SynchronousTestCase):
    """The endpoint alone: only a socket and a demultiplexer; what lives on it registers."""

    def setUp(self) -> None:
        self.endpoint = UdpEndpoint(Clock())
        self.transport = FakeDatagramTransport()
        self.endpoint.makeConnection(self.transport)

    def test_nothing_registered_nothing_answered(self):
        self.endpoint.datagramReceived(binding_request()[1], PEER)
        self.endpoint.datagramReceived(b"\x04echo request?", PEER)
        c = self.endpoint.counters
        self.assertEqual((c["stun"], c["stun_dropped"], c["crust_unknown_type"]), (1, 1, 1))
        self.assertEqual(self.transport.written, [])
        self.assertEqual(set(self.endpoint.stats()), {"local_address", "endpoint", "send_errors"})

    def test_stun_chain_in_registration_order(self):
        seen = []
        self.endpoint.add_stun_handler(lambda d, a: seen.append("first") or False, "first")
        remove = self.endpoint.add_stun_handler(lambda d, a: seen.append("second") or True, "second")
        remove_third = self.endpoint.add_stun_handler(lambda d, a: self.fail("the chain stops at the first taker"))
        self.endpoint.datagramReceived(binding_request()[1], PEER)
        self.assertEqual(seen, ["first", "second"])
        self.assertEqual(self.endpoint.counters["stun_consumed"], 1)
        remove()
        remove()  # idempotent
        remove_third()
        self.endpoint.datagramReceived(binding_request()[1], PEER)
        self.assertEqual(seen, ["first", "second", "first"])
        self.assertEqual(self.endpoint.counters["stun_dropped"], 1)

    def test_a_failing_stun_handler_is_contained(self):
        def boom(data, addr):
            raise RuntimeError("handler bug")

        self.endpoint.add_stun_handler(boom, "boom")
        self.endpoint.add_stun_handler(lambda d, a: self.fail("a failed handler ends the chain"))
        self.endpoint.datagramReceived(binding_request()[1], PEER)
        self.assertEqual(self.endpoint.counters["handler_errors"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_routes_stun_to(self):
        udp, _ = fake_stack()
        self.assertTrue(udp.endpoint.routes_stun_to(udp.stun_client.datagram_received))
        self.assertFalse(self.endpoint.routes_stun_to(udp.stun_client.datagram_received))

    def test_close_callbacks(self):
        called = []
        self.endpoint.call_when_closed(lambda: called.append(1))
        remove = self.endpoint.call_when_closed(lambda: called.append(2))

        def boom():
            raise RuntimeError("callback bug")

        self.endpoint.call_when_closed(boom)
        self.endpoint.call_when_closed(lambda: called.append(3))
        remove()
        self.endpoint.doStop()
        self.assertEqual(called, [1, 3])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_send_or_raise(self):
        self.endpoint.send_or_raise(b"\x90x", PEER)
        self.transport.error = OSError(errno.EHOSTUNREACH, "No route to host")
        error = self.assertRaises(UdpSendError, self.endpoint.send_or_raise, b"\x90x", PEER)
        self.assertEqual(error.reason, "EHOSTUNREACH")
        self.assertEqual((self.endpoint.counters["sent"], self.endpoint.counters["send_failures"]), (1, 1))


class StunResponderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.udp, self.transport = fake_stack(self.clock)
        self.endpoint = self.udp.endpoint

    def answer(self, request_bytes: bytes, source: tuple = PEER) -> Optional[stun.StunMessage]:
        before = len(self.transport.written)
        self.endpoint.datagramReceived(request_bytes, source)
        if len(self.transport.written) == before:
            return None
        data, addr = self.transport.written[-1]
        self.assertEqual(addr, source)
        self.assertLessEqual(len(data), len(request_bytes) + STUN_RESPONSE_OVERHEAD)
        return stun.decode(data)

    def test_binding_request_answered_with_source(self):
        request, data = binding_request()
        response = self.answer(data)
        self.assertEqual(response.message_class, stun.MessageClass.SUCCESS)
        self.assertEqual(response.transaction_id, request.transaction_id)
        self.assertEqual(response.mapped_address, Address("udp", *PEER))
        self.assertIn(stun.FINGERPRINT, response.types())
        self.assertEqual(self.udp.stun_responder.counters["answered"], 1)

    def test_no_fingerprint_unless_asked_and_never_larger(self):
        request, data = binding_request(fingerprint=False)
        self.assertEqual(len(data), 20)
        response = self.answer(data)
        self.assertNotIn(stun.FINGERPRINT, response.types())
        self.assertEqual(len(self.transport.written[-1][0]), 32)

    def test_change_request_gets_420(self):
        request, data = binding_request(change_ip=True, change_port=True)
        response = self.answer(data)
        self.assertEqual(response.message_class, stun.MessageClass.ERROR)
        self.assertEqual(response.error_code.code, 420)
        self.assertEqual(response.get(stun.UNKNOWN_ATTRIBUTES), (stun.CHANGE_REQUEST,))
        self.assertEqual(self.udp.stun_responder.counters["errors_sent"], 1)

    def test_unknown_comprehension_required_gets_420(self):
        request = stun.make_binding_request()
        request = stun.StunMessage(request.message_class, request.method, request.transaction_id,
                                   (stun.Attribute(0x7ABC, b"?"), stun.Attribute(0x7ABD, b"")))
        data = stun.encode(request)
        response = self.answer(data)
        self.assertEqual(response.error_code.code, 420)
        self.assertEqual(response.get(stun.UNKNOWN_ATTRIBUTES), (0x7ABC, 0x7ABD))

    def test_responses_and_indications_not_answered(self):
        request, _ = binding_request()
        success = stun.encode(stun.make_binding_success(request, Address("udp", *PEER)))
        self.assertIsNone(self.answer(success))
        indication = stun.StunMessage(stun.MessageClass.INDICATION, stun.BINDING, request.transaction_id)
        self.assertIsNone(self.answer(stun.encode(indication)))
        self.assertEqual(self.endpoint.counters["stun_dropped"], 2)

    def test_disabled(self):
        self.udp.stun_responder.enabled = False
        self.assertIsNone(self.answer(binding_request()[1]))
        self.assertEqual(self.endpoint.counters["stun_dropped"], 1)

    def test_rate_limited_per_source(self):
        answered = sum(self.answer(binding_request()[1]) is not None for _ in range(50))
        self.assertEqual(answered, 20)  # the burst
        self.assertEqual(self.udp.stun_responder.counters["rate_limited"], 30)
        # another source has its own bucket (another port of the same IP does not)
        self.assertIsNone(self.answer(binding_request()[1], ("127.0.0.9", 5001)))
        self.assertIsNotNone(self.answer(binding_request()[1], ("127.0.0.8", 5000)))
        self.clock.advance(1.0)  # 10 per second
        answered = sum(self.answer(binding_request()[1]) is not None for _ in range(50))
        self.assertEqual(answered, 10)

    def test_rate_limited_in_total(self):
        udp, transport = fake_stack(Clock(), stun_rate=((10.0, 20.0), (5.0, 8.0)))
        for i in range(20):
            udp.endpoint.datagramReceived(binding_request()[1], (f"127.0.1.{i}", 5000))
        self.assertEqual(len(transport.written), 8)
        self.assertEqual(udp.stun_responder.counters["rate_limited"], 12)


class SendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.udp, self.transport = fake_stack()
        self.endpoint = self.udp.endpoint

    def test_send_counts(self):
        self.assertTrue(self.endpoint.send(b"\x90abc", PEER))
        self.assertEqual(self.transport.written, [(b"\x90abc", PEER)])
        self.assertEqual((self.endpoint.counters["sent"], self.endpoint.counters["sent_bytes"]), (1, 4))

    def test_errors_are_counted_not_raised(self):
        self.transport.error = OSError(errno.EHOSTUNREACH, "No route to host")
        self.assertFalse(self.endpoint.send(b"x", PEER))
        self.transport.error = OSError(errno.ECONNREFUSED, "Connection refused")
        self.assertFalse(self.endpoint.send(b"x", PEER))
        self.transport.error = MessageLengthError("message too long")
        self.assertFalse(self.endpoint.send(b"x", PEER))
        self.assertEqual(self.endpoint.send_errors,
                         {"EHOSTUNREACH": 1, "ECONNREFUSED": 1, "MessageLengthError": 1})
        self.assertEqual(self.endpoint.counters["send_failures"], 3)
        self.assertEqual(self.endpoint.counters["sent"], 0)

    def test_stun_request_fails_at_once_when_it_cannot_go(self):
        self.transport.error = OSError(errno.ENETUNREACH, "Network is unreachable")
        d = self.udp.stun_client.binding_request(Address("udp", *PEER))
        self.assertIsInstance(self.failureResultOf(d, StunError).value, StunError)
        self.assertEqual(self.endpoint.send_errors, {"ENETUNREACH": 1})

    def test_answers_to_a_failing_send_do_not_raise(self):
        self.transport.error = OSError(errno.EPERM, "Operation not permitted")
        self.endpoint.datagramReceived(binding_request()[1], PEER)
        self.assertEqual(self.udp.stun_responder.counters["answered"], 0)
        self.assertEqual(self.endpoint.send_errors, {"EPERM": 1})

    def test_not_open(self):
        endpoint = UdpEndpoint(Clock())
        self.assertFalse(endpoint.send(b"x", PEER))
        self.assertEqual(endpoint.send_errors, {"ENOTCONN": 1})
        self.assertIsNone(endpoint.local_address())
        self.assertEqual(endpoint.local_addresses(), [])

    def test_stop_protocol_cancels_outstanding(self):
        d1 = self.udp.stun_client.binding_request(Address("udp", *PEER))
        d2 = self.udp.echo.echo(Address("udp", *PEER), Identity.generate().peer_id)
        self.endpoint.doStop()
        self.failureResultOf(d1, CancelledError)
        self.failureResultOf(d2, CancelledError)
        self.assertEqual(self.udp.echo.outstanding, 0)

    def test_stats(self):
        self.endpoint.datagramReceived(b"\xffx", PEER)
        stats = self.udp.stats()
        self.assertEqual(stats["local_address"], "udp:127.0.0.1:40000")
        self.assertEqual(stats["endpoint"]["unknown"], 1)
        self.assertIn("sent", stats["stun_client"])
        self.assertIn("requests_answered", stats["echo"])


class VirtualNetTests(SynchronousTestCase):
    def test_stun_between_endpoints(self):
        clock = Clock()
        net = VirtualNet(clock)
        a = net_stack(net, "127.0.0.10", 4000, stun_responder=False)
        b = net_stack(net, "127.0.0.20", 3478)
        net.nat[("127.0.0.10", 4000)] = ("127.0.0.100", 61000)
        d = a.stun_client.binding_request(Address("udp", "127.0.0.20", 3478))
        run_for(clock, 0.05)
        self.assertEqual(self.successResultOf(d).mapped_address, Address("udp", "127.0.0.100", 61000))
        self.assertEqual(b.stun_responder.counters["answered"], 1)
        # a STUN request to a non-responder goes unanswered
        d = b.stun_client.binding_request(Address("udp", "127.0.0.100", 61000), rc=1, rm=1)
        run_for(clock, 5)
        self.failureResultOf(d, StunError)
        self.assertEqual(a.endpoint.counters["stun_dropped"], 1)


# --- loopback ---------------------------------------------------------------------------


class LoopbackTests(TestCase):
    timeout = 20

    def udp(self, **kw: Any) -> UdpStack:
        udp = build_udp_stack(reactor, host=kw.pop("host", LOOPBACK), **kw)
        udp.endpoint.listen()
        self.addCleanup(udp.endpoint.stop)
        return udp

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                self.fail(f"condition not met within {timeout} s")
            await deferLater(reactor, 0.01, lambda: None)

    async def test_stun_answered_by_the_other_endpoint(self):
        a, b = self.udp(stun_responder=False), self.udp()
        address = a.endpoint.local_address()
        self.assertEqual(address.host, LOOPBACK)
        self.assertNotEqual(address.port, 0)
        self.assertEqual(a.endpoint.local_addresses(), [address])
        result = await a.stun_client.binding_request(b.endpoint.local_address(), rto=0.1)
        self.assertEqual(result.mapped_address, address)
        self.assertEqual(result.source, b.endpoint.local_address())
        self.assertEqual(b.stun_responder.counters["answered"], 1)
        await self.wait_for(lambda: a.endpoint.counters["stun_consumed"] == 1)

    async def test_demux_on_a_real_socket(self):
        a, b = self.udp(), self.udp()
        quic = []
        b.endpoint.register(lambda d: d[0] >= 64, lambda d, addr: quic.append((d, addr)))
        a.endpoint.send(b"\xc0quic-ish", b.endpoint.local_address().sockaddr())
        a.endpoint.send(b"\x20dtls-ish", b.endpoint.local_address().sockaddr())
        await self.wait_for(lambda: quic and b.endpoint.counters["unknown"] == 1)
        self.assertEqual(quic, [(b"\xc0quic-ish", a.endpoint.local_address().sockaddr())])

    async def test_send_to_a_closed_port_does_not_raise(self):
        a, b = self.udp(), self.udp()
        closed = b.endpoint.local_address()
        await b.endpoint.stop()
        self.assertFalse(b.endpoint.listening)
        for _ in range(3):
            a.endpoint.send(b"\x90nobody home", closed.sockaddr())
            await deferLater(reactor, 0.02, lambda: None)
        c = self.udp()
        result = await a.stun_client.binding_request(c.endpoint.local_address(), rto=0.1)
        self.assertEqual(result.mapped_address, a.endpoint.local_address())

    async def test_service_binds_and_closes(self):
        endpoint = UdpEndpoint(reactor, host=LOOPBACK)
        service = UdpEndpointService(endpoint)
        service.startService()
        self.assertTrue(endpoint.listening)
        port = endpoint.local_address().port
        await service.stopService()
        self.assertFalse(endpoint.listening)
        self.assertEqual(endpoint.port, port)  # a restart binds the same port
