"""
Tests for L{crust.nat.portmap.natpmp}: the codec, the client's retransmission and
matching with a fake transport and L{Clock}, robustness against unsolicited
and malformed datagrams, and a loopback exchange with a fake NAT-PMP/PCP
gateway (L{FakeGatewayServer}, also used by the PCP and port mapper tests).
"""

from __future__ import annotations

import struct
from typing import Any, Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from crust.nat.portmap import natpmp, pcp
from crust.nat.portmap.gateway import GatewayTimeout, MalformedResponse, MappingRefused, NoService

from tests import examples

GW = "192.168.1.1"
ME = "192.168.1.10"


class FakeUDP:
    """A datagram transport recording what is written; bound to C{ME}."""

    def __init__(self, host: str = ME, port: int = 40000) -> None:
        self.written: list[tuple[bytes, Any]] = []
        self.host, self.port = host, port
        self.connected: Optional[tuple[str, int]] = None

    def write(self, packet: bytes, addr: Any = None) -> None:
        self.written.append((packet, addr))

    def connect(self, host: str, port: int) -> None:
        self.connected = (host, port)

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.host, self.port)

    def stopListening(self) -> None:
        pass


def ext_response(epoch: int = 100, ip: str = "203.0.113.7", result: int = 0) -> bytes:
    import ipaddress

    return struct.pack("!BBHI4s", 0, 128, result, epoch, ipaddress.IPv4Address(ip).packed)


def map_response(transport: str = "tcp", internal: int = 4242, external: int = 4242, lifetime: int = 7200,
                 epoch: int = 100, result: int = 0) -> bytes:
    op = 128 + natpmp.OPCODES[transport]
    return struct.pack("!BBHIHHI", 0, op, result, epoch, internal, external, lifetime)


def make_client(clock: Clock, **kwargs: Any) -> tuple[natpmp.NATPMPClient, FakeUDP]:
    client = natpmp.NATPMPClient(GW, reactor=clock, **kwargs)
    transport = FakeUDP()
    client.makeConnection(transport)
    return client, transport


class CodecTests(SynchronousTestCase):
    def test_external_address_request(self) -> None:
        self.assertEqual(natpmp.encode_external_address_request(), b"\x00\x00")

    def test_map_request(self) -> None:
        self.assertEqual(natpmp.encode_map_request("tcp", 4242, 4243, 7200),
                         bytes.fromhex("0002 0000 1092 1093 00001c20"))
        self.assertEqual(natpmp.encode_map_request("udp", 1)[:2], b"\x00\x01")

    def test_map_request_bad_arguments(self) -> None:
        for args in (("sctp", 1), ("tcp", 0), ("tcp", 65536), ("tcp", 1, -1), ("tcp", 1, 0, 2**32)):
            self.assertRaises(ValueError, natpmp.encode_map_request, *args)

    def test_decode_external(self) -> None:
        self.assertEqual(natpmp.decode_response(ext_response(7, "198.51.100.1")),
                         natpmp.ExternalAddressResponse(7, "198.51.100.1"))

    def test_decode_map(self) -> None:
        self.assertEqual(natpmp.decode_response(map_response("udp", 5, 6, 60, 9)),
                         natpmp.MapResponse("udp", 9, 5, 6, 60))

    def test_decode_error(self) -> None:
        full = map_response(result=2)
        self.assertEqual(natpmp.decode_response(full), natpmp.ErrorResponse(2, 2, 100))
        short = natpmp.decode_response(full[:8])  # servers may stop after the epoch
        self.assertEqual(short.reason, "NOT_AUTHORIZED")

    def test_decode_rejects(self) -> None:
        bad = [
            b"", b"\x00\x80\x00", ext_response()[:11], ext_response() + b"\0", map_response()[:15],
            map_response() + b"\0", b"\x02" + ext_response()[1:],  # version
            b"\x00\x00" + ext_response()[2:],  # a request opcode
            b"\x00\x83" + map_response()[2:],  # unknown response opcode
            map_response(result=3)[:7], map_response(result=3) + b"\0",
        ]
        for data in bad:
            self.assertRaises(MalformedResponse, natpmp.decode_response, data)

    @given(st.binary(max_size=40))
    def test_decode_garbage(self, data: bytes) -> None:
        try:
            natpmp.decode_response(data)
        except MalformedResponse:
            pass

    @examples(500)
    @given(st.sampled_from([0x80, 0x81, 0x82, 0x83]), st.sampled_from([0, 1, 3, 0xFFFF]), st.binary(max_size=20))
    def test_decode_response_shaped(self, opcode: int, result: int, rest: bytes) -> None:
        """Past the version and opcode checks (which random bytes seldom pass): a response or MalformedResponse."""
        data = bytes([0, opcode]) + result.to_bytes(2, "big") + rest
        try:
            response = natpmp.decode_response(data)
        except MalformedResponse:
            return
        self.assertIsInstance(response, (natpmp.ExternalAddressResponse, natpmp.MapResponse, natpmp.ErrorResponse))

    def test_epoch(self) -> None:
        self.assertFalse(natpmp.epoch_indicates_restart(1000, 0.0, 1100, 100.0))
        self.assertFalse(natpmp.epoch_indicates_restart(1000, 0.0, 1086, 100.0))  # slow server clock: 7/8
        self.assertTrue(natpmp.epoch_indicates_restart(1000, 0.0, 1080, 100.0))
        self.assertTrue(natpmp.epoch_indicates_restart(1000, 0.0, 5, 10.0))
        self.assertFalse(natpmp.epoch_indicates_restart(1000, 0.0, 999, 0.5))  # within 2 s


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client, self.transport = make_client(self.clock)

    def receive(self, data: bytes, source: tuple[str, int] = (GW, 5351)) -> None:
        self.client.datagramReceived(data, source)

    def test_external_address(self) -> None:
        d = self.client.get_external_address()
        self.assertEqual(self.transport.written, [(b"\0\0", (GW, 5351))])
        self.receive(ext_response(ip="203.0.113.9"))
        self.assertEqual(self.successResultOf(d).external_ip, "203.0.113.9")

    def test_retransmission_schedule(self) -> None:
        """RFC 6886: 250 ms, doubling; by default 4 tries, then a timeout."""
        d = self.client.get_external_address()
        sends = []
        for step in (0.25, 0.5, 1.0):
            sends.append(len(self.transport.written))
            self.clock.advance(step - 0.001)
            self.assertEqual(len(self.transport.written), sends[-1])
            self.clock.advance(0.001)
        self.assertEqual(len(self.transport.written), 4)
        self.assertNoResult(d)
        self.clock.advance(2.0)
        self.failureResultOf(d, GatewayTimeout)
        self.assertEqual(len(self.transport.written), 4)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retransmission_injectable(self) -> None:
        client, transport = make_client(self.clock, initial_timeout=1.0, max_tries=9)
        d = client.get_external_address()
        self.clock.pump([1.0] * 511)
        self.assertEqual(len(transport.written), 9)
        self.failureResultOf(d, GatewayTimeout)

    def test_late_answer_after_retransmit(self) -> None:
        d = self.client.get_external_address()
        self.clock.advance(0.3)
        self.receive(ext_response())
        self.assertEqual(self.successResultOf(d).epoch, 100)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_map(self) -> None:
        d = self.client.map_port("udp", 4242, 4242, 3600)
        self.assertEqual(self.transport.written[0][0], natpmp.encode_map_request("udp", 4242, 4242, 3600))
        self.receive(map_response("udp", 4242, 5000, 1800))
        response = self.successResultOf(d)
        self.assertEqual((response.external_port, response.lifetime), (5000, 1800))

    def test_unmap(self) -> None:
        d = self.client.unmap_port("tcp", 4242)
        self.assertEqual(self.transport.written[0][0], natpmp.encode_map_request("tcp", 4242, 0, 0))
        self.receive(map_response("tcp", 4242, 0, 0))
        self.assertEqual(self.successResultOf(d).lifetime, 0)

    def test_refused(self) -> None:
        d = self.client.map_port("tcp", 4242)
        self.receive(map_response(result=2)[:8])
        failure = self.failureResultOf(d, MappingRefused)
        self.assertEqual(failure.value.code, 2)
        self.assertIn("NOT_AUTHORIZED", str(failure.value))

    def test_unsupported_is_no_service(self) -> None:
        d = self.client.get_external_address()
        self.receive(ext_response(result=1)[:8])
        self.failureResultOf(d, NoService)

    def test_zero_grant_is_refusal(self) -> None:
        d = self.client.map_port("tcp", 4242)
        self.receive(map_response(lifetime=0))
        self.failureResultOf(d, MappingRefused)

    def test_one_request_at_a_time(self) -> None:
        d1 = self.client.map_port("tcp", 1)
        d2 = self.client.map_port("udp", 2)
        self.assertEqual(len(self.transport.written), 1)
        self.receive(map_response("tcp", 1, 1))
        self.successResultOf(d1)
        self.assertEqual(len(self.transport.written), 2)
        self.receive(map_response("udp", 2, 2))
        self.assertEqual(self.successResultOf(d2).internal_port, 2)

    def test_cancel(self) -> None:
        d1 = self.client.get_external_address()
        d2 = self.client.get_external_address()
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.assertEqual(len(self.transport.written), 2)  # d2 went out
        self.receive(ext_response())
        self.successResultOf(d2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_fails_pending(self) -> None:
        d = self.client.get_external_address()
        self.successResultOf(self.client.stop())
        self.failureResultOf(d, CancelledError)

    def test_stop_fails_queued(self) -> None:
        d1 = self.client.get_external_address()
        d2 = self.client.map_port("tcp", 1)
        self.successResultOf(self.client.stop())
        self.failureResultOf(d1, CancelledError)
        self.failureResultOf(d2, CancelledError)
        self.assertEqual(len(self.transport.written), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_not_started(self) -> None:
        client = natpmp.NATPMPClient(GW, reactor=self.clock)
        self.failureResultOf(client.get_external_address(), natpmp.PortMappingError)

    def test_port_unreachable(self) -> None:
        d = self.client.get_external_address()
        self.client.connectionRefused()
        self.failureResultOf(d, NoService)

    def test_bad_parameters(self) -> None:
        self.assertRaises(ValueError, natpmp.NATPMPClient, "router.local", reactor=self.clock)
        self.assertRaises(ValueError, natpmp.NATPMPClient, GW, reactor=self.clock, max_tries=0)

    def test_epoch_restart_detected(self) -> None:
        d = self.client.get_external_address()
        self.receive(ext_response(epoch=5000))
        self.successResultOf(d)
        self.clock.advance(60)
        d = self.client.get_external_address()
        self.receive(ext_response(epoch=5060))
        self.successResultOf(d)
        self.assertEqual(self.client.epoch_resets, 0)
        self.clock.advance(60)
        d = self.client.get_external_address()
        self.receive(ext_response(epoch=3))
        self.successResultOf(d)
        self.assertEqual(self.client.epoch_resets, 1)


class UnsolicitedTests(SynchronousTestCase):
    """Datagrams that are not the answer are dropped, logged and counted; the request goes on."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.client, self.transport = make_client(self.clock)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def assertDropped(self, data: bytes, source: tuple[str, int], reason: str) -> None:
        d = self.client.map_port("tcp", 4242)
        self.client.datagramReceived(data, source)
        self.assertNoResult(d)
        self.assertEqual(self.client.rejected[reason], 1)
        self.assertTrue(any(e.get("reason") == reason and "dropped a datagram" in e["log_format"]
                            for e in self.events))
        self.client.datagramReceived(map_response(), (GW, 5351))
        self.successResultOf(d)

    def test_wrong_host(self) -> None:
        self.assertDropped(map_response(), ("192.168.1.66", 5351), "wrong source")

    def test_wrong_port(self) -> None:
        self.assertDropped(map_response(), (GW, 5350), "wrong source")

    def test_wrong_size(self) -> None:
        self.assertDropped(map_response() + b"\0\0\0\0", (GW, 5351), "malformed")

    def test_wrong_internal_port(self) -> None:
        self.assertDropped(map_response(internal=1), (GW, 5351), "mismatch")

    def test_wrong_opcode(self) -> None:
        self.assertDropped(map_response("udp"), (GW, 5351), "mismatch")

    def test_nothing_outstanding(self) -> None:
        self.client.datagramReceived(map_response(), (GW, 5351))
        self.assertEqual(self.client.rejected["unsolicited"], 1)

    def test_flood_logs_are_bounded(self) -> None:
        for _ in range(1000):
            self.client.datagramReceived(b"x", ("10.0.0.1", 1))
        self.assertEqual(self.client.rejected["wrong source"], 1000)
        self.assertEqual(len([e for e in self.events if e.get("reason") == "wrong source"]), 10)

    @examples(300)
    @given(st.sampled_from([b"\x00\x80", b"\x00\x81", b"\x00\x82"]), st.binary(max_size=20),
           st.sampled_from(["tcp", "udp"]))
    def test_fuzz_shaped(self, prefix: bytes, rest: bytes, transport: str) -> None:
        """Answers that pass the first checks: the request resolves or the datagram is rejected, nothing raises."""
        clock = Clock()
        client, _ = make_client(clock)
        d = client.map_port(transport, 4242)
        client.datagramReceived(prefix + rest, (GW, 5351))
        if not d.called:
            self.assertEqual(sum(client.rejected.values()), 1)
        d.addErrback(lambda _: None)
        d.cancel()

    @examples(300)
    @given(st.binary(max_size=64), st.sampled_from([(GW, 5351), (GW, 1), ("10.1.1.1", 5351)]))
    def test_fuzz(self, data: bytes, source: tuple[str, int]) -> None:
        clock = Clock()
        client, _ = make_client(clock)
        d = client.map_port("tcp", 4242)
        client.datagramReceived(data, source)
        valid = source == (GW, 5351) and data[:2] == b"\x00\x82" and len(data) >= 8 and (
            data[2:4] != b"\0\0" and len(data) <= 16 or len(data) == 16 and data[8:10] == b"\x10\x92")
        if not valid:
            self.assertNoResult(d)
            self.assertEqual(sum(client.rejected.values()), 1)
        d.addErrback(lambda _: None)
        d.cancel()


# loopback


class FakeGatewayServer(DatagramProtocol):
    """
    A NAT-PMP and PCP server on 127.0.0.1 for tests.  C{pcp=False} makes it
    NAT-PMP only (answering PCP with UNSUPPORTED_VERSION); C{silent=True}
    makes it drop everything; C{refuse} is a result code for map requests.
    Mappings are kept in C{mappings} by C{(transport, internal port)}.
    """

    def __init__(self, *, pcp: bool = True, natpmp: bool = True, external_ip: str = "203.0.113.7",
                 refuse: int = 0, silent: bool = False, epoch: int = 1000, lifetime_cap: int = 3600,
                 clock: Any = reactor) -> None:
        self.pcp, self.natpmp, self.external_ip = pcp, natpmp, external_ip
        self.refuse, self.silent, self.epoch0, self.lifetime_cap = refuse, silent, epoch, lifetime_cap
        self.clock = clock
        self.started = clock.seconds()
        self.mappings: dict[tuple[str, int], int] = {}
        self.received: list[bytes] = []

    def restart(self) -> None:
        self.mappings.clear()
        self.epoch0 = 0
        self.started = self.clock.seconds()

    def epoch(self) -> int:
        return self.epoch0 + int(self.clock.seconds() - self.started)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        if self.silent or not data:
            return
        if data[0] == 0 and self.natpmp:
            reply = self.answer_natpmp(data)
        elif data[0] == 2 and self.pcp:
            reply = self.answer_pcp(data, addr)
        elif data[0] == 2 and self.natpmp:
            reply = struct.pack("!BBHI", 0, 128 + (data[1] & 0x7F), 1, self.epoch())
        else:
            return
        if reply is not None:
            self.transport.write(reply, addr)

    def answer_natpmp(self, data: bytes) -> Optional[bytes]:
        import ipaddress

        if data == b"\0\0":
            return struct.pack("!BBHI4s", 0, 128, 0, self.epoch(), ipaddress.IPv4Address(self.external_ip).packed)
        if len(data) != 12:
            return None
        _, op, _, internal, external, lifetime = struct.unpack("!BBHHHI", data)
        transport = {1: "udp", 2: "tcp"}[op]
        if self.refuse and lifetime:
            return struct.pack("!BBHI", 0, 128 + op, self.refuse, self.epoch())
        if lifetime == 0:
            self.mappings.pop((transport, internal), None)
            return struct.pack("!BBHIHHI", 0, 128 + op, 0, self.epoch(), internal, 0, 0)
        granted = external or internal
        self.mappings[(transport, internal)] = granted
        return struct.pack("!BBHIHHI", 0, 128 + op, 0, self.epoch(), internal, granted,
                           min(lifetime, self.lifetime_cap))

    def answer_pcp(self, data: bytes, addr: Any) -> Optional[bytes]:
        if len(data) < pcp.MAP_SIZE or data[1] != pcp.OP_MAP:
            return None
        _, _, _, lifetime, client = struct.unpack_from("!BBHI16s", data)
        nonce, proto, _, internal, external, _ = struct.unpack_from("!12sB3sHH16s", data, 24)
        transport = {6: "tcp", 17: "udp"}[proto]
        result = 0
        if pcp.from_wire_address(client) != addr[0]:
            result = 12  # ADDRESS_MISMATCH
        elif self.refuse and lifetime:
            result = self.refuse
        granted = 0
        if result == 0 and lifetime:
            granted = external or internal
            self.mappings[(transport, internal)] = granted
        elif result == 0:
            self.mappings.pop((transport, internal), None)
        header = struct.pack("!BBBBII12s", 2, 0x80 | pcp.OP_MAP, 0, result,
                             min(lifetime, self.lifetime_cap) if result == 0 else 30, self.epoch(), b"\0" * 12)
        body = struct.pack("!12sB3sHH16s", nonce, proto, b"\0" * 3, internal, granted,
                           pcp.to_wire_address(self.external_ip))
        return header + body


def listen_fake_gateway(test: TestCase, **kwargs: Any) -> tuple[FakeGatewayServer, int]:
    server = FakeGatewayServer(**kwargs)
    port = reactor.listenUDP(0, server, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return server, port.getHost().port


@inlineCallbacks
def closed_udp_port() -> Any:
    """A UDP port on 127.0.0.1 that nobody listens on (just released)."""
    probe = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
    port = probe.getHost().port
    yield probe.stopListening()
    return port


class LoopbackTests(TestCase):
    @inlineCallbacks
    def test_exchange(self) -> Any:
        server, port = listen_fake_gateway(self)
        client = natpmp.NATPMPClient("127.0.0.1", port=port, initial_timeout=0.1)
        client.start()
        self.addCleanup(client.stop)
        self.assertEqual(client.local_host(), "127.0.0.1")
        address = yield client.get_external_address()
        self.assertEqual(address.external_ip, "203.0.113.7")
        mapped = yield client.map_port("udp", 4242, 4242, 7200)
        self.assertEqual((mapped.external_port, mapped.lifetime), (4242, 3600))
        self.assertEqual(server.mappings, {("udp", 4242): 4242})
        yield client.unmap_port("udp", 4242)
        self.assertEqual(server.mappings, {})
        self.assertEqual(sum(client.rejected.values()), 0)

    @inlineCallbacks
    def test_silent_gateway_times_out(self) -> Any:
        server, port = listen_fake_gateway(self, silent=True)
        client = natpmp.NATPMPClient("127.0.0.1", port=port, initial_timeout=0.05, max_tries=3)
        client.start()
        self.addCleanup(client.stop)
        start = reactor.seconds()
        yield self.assertFailure(client.get_external_address(), GatewayTimeout)
        self.assertEqual(len(server.received), 3)
        self.assertLess(reactor.seconds() - start, 2.0)

    @inlineCallbacks
    def test_nobody_listening(self) -> Any:
        """A closed port fails at once (ICMP port unreachable), not after the retransmissions."""
        port = yield closed_udp_port()
        client = natpmp.NATPMPClient("127.0.0.1", port=port, initial_timeout=1.0, max_tries=3)
        client.start()
        self.addCleanup(client.stop)
        start = reactor.seconds()
        yield self.assertFailure(client.get_external_address(), NoService)
        self.assertLess(reactor.seconds() - start, 0.9)
        client.start()  # the client can bind again
        self.assertIsNotNone(client.transport)

    @inlineCallbacks
    def test_refusal(self) -> Any:
        _, port = listen_fake_gateway(self, refuse=2)
        client = natpmp.NATPMPClient("127.0.0.1", port=port, initial_timeout=0.1)
        client.start()
        self.addCleanup(client.stop)
        error = yield self.assertFailure(client.map_port("tcp", 80), MappingRefused)
        self.assertEqual(error.code, 2)
