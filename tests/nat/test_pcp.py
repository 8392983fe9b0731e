"""
Tests for L{crust.nat.portmap.pcp}: the MAP codec, epoch validation, the client with a
fake transport and L{Clock} (nonce matching, NAT-PMP fallback signal,
unsolicited datagrams), and a loopback exchange with the fake gateway.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from crust.nat.portmap import pcp
from crust.nat.portmap.gateway import GatewayTimeout, MalformedResponse, MappingRefused, NoService
from tests import examples
from tests.nat.test_natpmp import GW, ME, FakeUDP, listen_fake_gateway

NONCE = bytes(range(12))


def response(nonce: bytes = NONCE, *, result: int = 0, lifetime: int = 7200, epoch: int = 50,
             protocol: int = 6, internal: int = 4242, external: int = 4242, ip: str = "198.51.100.4",
             options: bytes = b"", version: int = 2, opcode: int = 0x81) -> bytes:
    header = struct.pack("!BBBBII12s", version, opcode, 0, result, lifetime, epoch, b"\0" * 12)
    body = struct.pack("!12sB3sHH16s", nonce, protocol, b"\0" * 3, internal, external, pcp.to_wire_address(ip))
    return header + body + options


class CodecTests(SynchronousTestCase):
    def test_request_layout(self) -> None:
        data = pcp.encode_map_request(NONCE, "udp", 4242, "192.168.1.10", 3600, 5000)
        self.assertEqual(len(data), 60)
        self.assertEqual(data[:4], b"\x02\x01\x00\x00")
        self.assertEqual(struct.unpack("!I", data[4:8])[0], 3600)
        self.assertEqual(data[8:24], bytes(10) + b"\xff\xff" + bytes([192, 168, 1, 10]))
        self.assertEqual(data[24:36], NONCE)
        self.assertEqual(data[36], 17)
        self.assertEqual(struct.unpack("!HH", data[40:44]), (4242, 5000))
        self.assertEqual(data[44:60], bytes(10) + b"\xff\xff" + bytes(4))  # ::ffff:0.0.0.0, "any"

    def test_request_ipv6(self) -> None:
        data = pcp.encode_map_request(NONCE, "tcp", 1, "2001:db8::5")
        self.assertEqual(pcp.from_wire_address(data[8:24]), "2001:db8::5")
        self.assertEqual(data[44:60], bytes(16))

    def test_request_bad_arguments(self) -> None:
        for args in ((b"short", "tcp", 1, ME), (NONCE, "icmp", 1, ME), (NONCE, "tcp", 0, ME),
                     (NONCE, "tcp", 1, "host"), (NONCE, "tcp", 1, ME, -1)):
            self.assertRaises(ValueError, pcp.encode_map_request, *args)

    def test_addresses(self) -> None:
        self.assertEqual(pcp.from_wire_address(pcp.to_wire_address("203.0.113.1")), "203.0.113.1")
        self.assertEqual(pcp.from_wire_address(pcp.to_wire_address("2001:db8::1")), "2001:db8::1")

    def test_decode(self) -> None:
        r = pcp.decode_map_response(response(external=6000, lifetime=100, epoch=9))
        self.assertEqual((r.result, r.nonce, r.transport, r.internal_port, r.external_port, r.external_ip,
                          r.lifetime, r.epoch), (0, NONCE, "tcp", 4242, 6000, "198.51.100.4", 100, 9))

    def test_decode_options(self) -> None:
        opts = struct.pack("!BBH", 0x80, 0, 5) + b"abcde\0\0\0" + struct.pack("!BBH", 1, 0, 0)
        r = pcp.decode_map_response(response(options=opts))
        self.assertEqual(r.options, ((0x80, b"abcde"), (1, b"")))

    def test_decode_header_only_error(self) -> None:
        r = pcp.decode_map_response(response(result=8)[:24])
        self.assertEqual((r.result, r.reason, r.nonce), (8, "NO_RESOURCES", None))

    def test_decode_rejects(self) -> None:
        good = response()
        bad = [
            good[:20], good[:56], good + b"\0\0", good + b"\0" * 1044,  # sizes
            response(version=1), response(opcode=0x01), response(opcode=0x82),  # version, R bit, opcode
            response()[:24],  # success without the MAP data
            response(result=2)[:28],
            response(protocol=99), response(internal=0),
            response(options=struct.pack("!BBH", 1, 0, 8) + b"\0\0\0\0"),  # option overruns
            response(options=b"\x01\x00"),  # truncated option
        ]
        for data in bad:
            self.assertRaises(MalformedResponse, pcp.decode_map_response, data)

    @examples(300)
    @given(st.binary(max_size=120))
    def test_decode_garbage(self, data: bytes) -> None:
        try:
            pcp.decode_map_response(data)
        except MalformedResponse:
            pass

    @examples(300)
    @given(st.binary(min_size=58, max_size=200).map(lambda b: b"\x02\x81" + b))
    def test_decode_with_options(self, data: bytes) -> None:
        """Past the version and opcode checks, with options of any kind: a response or MalformedResponse."""
        try:
            pcp.decode_map_response(data)
        except MalformedResponse:
            pass

    @given(st.binary(min_size=60, max_size=60).map(lambda b: b"\x02\x81" + b[2:]))
    def test_decode_mutated(self, data: bytes) -> None:
        try:
            r = pcp.decode_map_response(data)
        except MalformedResponse:
            return
        self.assertEqual(len(r.nonce or b""), 12)

    def test_natpmp_unsupported_version(self) -> None:
        self.assertTrue(pcp.is_natpmp_unsupported_version(struct.pack("!BBHI", 0, 129, 1, 5)))
        self.assertFalse(pcp.is_natpmp_unsupported_version(struct.pack("!BBHI", 0, 129, 2, 5)))
        self.assertFalse(pcp.is_natpmp_unsupported_version(response()))

    def test_epoch_valid(self) -> None:
        self.assertTrue(pcp.epoch_valid(1000, 0.0, 1100, 100.0))
        self.assertTrue(pcp.epoch_valid(1000, 0.0, 1000, 1.0))
        self.assertFalse(pcp.epoch_valid(1000, 0.0, 10, 100.0))  # went backwards: restarted
        self.assertFalse(pcp.epoch_valid(1000, 0.0, 1010, 100.0))  # far behind our clock
        self.assertFalse(pcp.epoch_valid(1000, 0.0, 2000, 100.0))  # far ahead


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = pcp.PCPClient(GW, reactor=self.clock)
        self.transport = FakeUDP()
        self.client.makeConnection(self.transport)

    def receive(self, data: bytes, source: tuple[str, int] = (GW, 5351)) -> None:
        self.client.datagramReceived(data, source)

    def sent_nonce(self) -> bytes:
        return self.transport.written[-1][0][24:36]

    def test_map(self) -> None:
        d = self.client.map_port("tcp", 4242, 3600)
        data, addr = self.transport.written[0]
        self.assertEqual(addr, (GW, 5351))
        self.assertEqual(pcp.from_wire_address(data[8:24]), ME)
        self.receive(response(self.sent_nonce(), external=7000, lifetime=1800))
        r = self.successResultOf(d)
        self.assertEqual((r.external_ip, r.external_port, r.lifetime), ("198.51.100.4", 7000, 1800))

    def test_renew_and_delete_reuse_nonce(self) -> None:
        d = self.client.map_port("udp", 4242, nonce=NONCE, external_port=7000, external_ip="198.51.100.4")
        data = self.transport.written[0][0]
        self.assertEqual((data[24:36], data[42:44]), (NONCE, b"\x1b\x58"))
        self.assertEqual(pcp.from_wire_address(data[44:60]), "198.51.100.4")
        self.receive(response(protocol=17))
        self.successResultOf(d)
        d = self.client.unmap_port("udp", 4242, NONCE)
        self.assertEqual(self.transport.written[1][0][4:8], bytes(4))
        self.receive(response(protocol=17, lifetime=0, external=0))
        self.assertEqual(self.successResultOf(d).lifetime, 0)

    def test_client_ip_override(self) -> None:
        client = pcp.PCPClient(GW, reactor=self.clock, client_ip="10.9.8.7")
        transport = FakeUDP()
        client.makeConnection(transport)
        client.map_port("tcp", 1).addErrback(lambda _: None)
        self.assertEqual(pcp.from_wire_address(transport.written[0][0][8:24]), "10.9.8.7")

    def test_no_local_address(self) -> None:
        client = pcp.PCPClient(GW, reactor=self.clock)
        client.makeConnection(FakeUDP(host="0.0.0.0"))
        self.failureResultOf(client.map_port("tcp", 1), NoService)

    def test_wrong_nonce_ignored(self) -> None:
        d = self.client.map_port("tcp", 4242)
        self.receive(response(b"x" * 12))
        self.assertNoResult(d)
        self.assertEqual(self.client.rejected["mismatch"], 1)
        self.receive(response(self.sent_nonce(), internal=4243))
        self.receive(response(self.sent_nonce(), protocol=17))
        self.receive(response(self.sent_nonce())[:56])
        self.assertEqual((self.client.rejected["mismatch"], self.client.rejected["malformed"]), (3, 1))
        self.receive(response(self.sent_nonce()))
        self.successResultOf(d)

    def test_wrong_source_and_unsolicited(self) -> None:
        self.receive(response(), ("192.168.1.99", 5351))
        self.receive(response())
        self.assertEqual((self.client.rejected["wrong source"], self.client.rejected["unsolicited"]), (1, 1))

    def test_refused(self) -> None:
        d = self.client.map_port("tcp", 4242)
        self.receive(response(self.sent_nonce(), result=2, lifetime=30))
        failure = self.failureResultOf(d, MappingRefused)
        self.assertEqual((failure.value.code, failure.value.reason), (2, "NOT_AUTHORIZED"))

    def test_header_only_refusal(self) -> None:
        d = self.client.map_port("tcp", 4242)
        self.receive(response(result=8)[:24])
        self.assertEqual(self.failureResultOf(d, MappingRefused).value.code, 8)

    def test_unsupported_opcode_is_no_service(self) -> None:
        d = self.client.map_port("tcp", 4242)
        self.receive(response(result=4)[:24])
        self.failureResultOf(d, NoService)

    def test_natpmp_server_answer(self) -> None:
        """A NAT-PMP-only gateway's UNSUPPORTED_VERSION ends the request at once."""
        d = self.client.map_port("tcp", 4242)
        self.receive(struct.pack("!BBHI", 0, 129, 1, 77))
        self.failureResultOf(d, NoService)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zero_grant_is_refusal(self) -> None:
        d = self.client.map_port("tcp", 4242)
        self.receive(response(self.sent_nonce(), external=0))
        self.failureResultOf(d, MappingRefused)

    def test_timeout(self) -> None:
        d = self.client.map_port("tcp", 4242)
        self.clock.pump([0.25, 0.5, 1.0])
        self.assertEqual(len(self.transport.written), 4)
        self.assertNoResult(d)
        self.clock.advance(2.0)
        self.assertTrue(all(w[0] == self.transport.written[0][0] for w in self.transport.written))
        self.failureResultOf(d, GatewayTimeout)

    def test_epoch_restart(self) -> None:
        d = self.client.map_port("tcp", 1)
        self.receive(response(self.sent_nonce(), internal=1, epoch=10000))
        self.successResultOf(d)
        self.clock.advance(100)
        d = self.client.map_port("tcp", 1)
        self.receive(response(self.sent_nonce(), internal=1, epoch=10100))
        self.successResultOf(d)
        self.assertEqual(self.client.epoch_resets, 0)
        self.clock.advance(100)
        d = self.client.map_port("tcp", 1)
        self.receive(response(self.sent_nonce(), internal=1, epoch=20))
        self.successResultOf(d)
        self.assertEqual(self.client.epoch_resets, 1)

    @examples(300)
    @given(st.builds(response, result=st.sampled_from([0, 1, 2, 8, 255]), lifetime=st.sampled_from([0, 1, 2**32 - 1]),
                     protocol=st.sampled_from([0, 6, 17, 255]), internal=st.sampled_from([0, 4242, 65535]),
                     external=st.sampled_from([0, 4242, 65535]), options=st.binary(max_size=40),
                     ip=st.sampled_from(["198.51.100.4", "::", "0.0.0.0", "2001:db8::1", "::ffff:0:0"]),
                     version=st.sampled_from([0, 2]), opcode=st.sampled_from([0x81, 0x80, 0x01])),
           st.integers(0, 70))
    def test_fuzz_shaped(self, data: bytes, cut: int) -> None:
        """Answers shaped like MAP responses (any field, options, truncated): resolved or rejected, nothing raises."""
        clock = Clock()
        client = pcp.PCPClient(GW, reactor=clock)
        client.makeConnection(FakeUDP())
        d = client.map_port("tcp", 4242, nonce=NONCE)
        client.datagramReceived(data[:len(data) - cut] if cut < len(data) else data, (GW, 5351))
        if not d.called:
            self.assertEqual(sum(client.rejected.values()), 1)
        d.addErrback(lambda _: None)
        d.cancel()

    @examples(300)
    @given(st.binary(max_size=128))
    def test_fuzz(self, data: bytes) -> None:
        clock = Clock()
        client = pcp.PCPClient(GW, reactor=clock)
        client.makeConnection(FakeUDP())
        d = client.map_port("tcp", 4242, nonce=NONCE)
        client.datagramReceived(data, (GW, 5351))
        if not d.called:
            self.assertEqual(sum(client.rejected.values()), 1)
        d.addErrback(lambda _: None)
        d.cancel()


class LoopbackTests(TestCase):
    @inlineCallbacks
    def test_exchange(self) -> Any:
        server, port = listen_fake_gateway(self)
        client = pcp.PCPClient("127.0.0.1", port=port, initial_timeout=0.1)
        client.start()
        self.addCleanup(client.stop)
        r = yield client.map_port("tcp", 4242, 7200)
        self.assertEqual((r.external_ip, r.external_port, r.lifetime), ("203.0.113.7", 4242, 3600))
        self.assertEqual(server.mappings, {("tcp", 4242): 4242})
        yield client.unmap_port("tcp", 4242, r.nonce)
        self.assertEqual(server.mappings, {})

    @inlineCallbacks
    def test_natpmp_only_gateway(self) -> Any:
        _, port = listen_fake_gateway(self, pcp=False)
        client = pcp.PCPClient("127.0.0.1", port=port, initial_timeout=0.5, max_tries=9)
        client.start()
        self.addCleanup(client.stop)
        yield self.assertFailure(client.map_port("tcp", 4242), NoService)
        self.assertEqual(client.sent, 1)

    @inlineCallbacks
    def test_refusal(self) -> Any:
        _, port = listen_fake_gateway(self, refuse=2)
        client = pcp.PCPClient("127.0.0.1", port=port, initial_timeout=0.1)
        client.start()
        self.addCleanup(client.stop)
        error = yield self.assertFailure(client.map_port("udp", 9), MappingRefused)
        self.assertEqual(error.code, 2)
