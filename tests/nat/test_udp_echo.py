"""
Tests for L{crust.nat.echo}: the codec, the responder (authentication, rate
limit, bad input), the requester (retransmission, timeout, forged and
duplicate answers) on a simulated network and a L{Clock}, the echo source
in NAT classification, and real endpoints on 127.0.0.1.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from nacl.bindings import crypto_box_afternm, crypto_box_beforenm, crypto_box_keypair
from nacl.exceptions import CryptoError
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from crust.address import Address
from crust.identity import Identity, PeerId
from crust.nat.classify import ECHO, IAddressEchoSource, MappingBehaviour as Mapping, classify_nat
from crust.nat.stun_client import StunTimeout
from crust.nat.echo import (
    REQUEST_SIZE,
    RESPONSE_SIZE,
    EchoError,
    EchoTimeout,
    UdpEchoSource,
    curve_public_key,
    curve_secret_key,
    decode_address,
    encode_address,
    encode_request,
    encode_response,
    open_request,
    open_response,
)
from crust.nat.udp_stack import UdpStack, build_udp_stack
from tests import examples
from tests.mutate import valid_or_mutated
from tests.transport.test_udp_endpoint import LOOPBACK, VirtualNet, fake_stack, net_stack, run_for

A = ("127.0.0.10", 4000)
B = ("127.0.0.20", 4001)
C = ("127.0.0.30", 4002)


def udp(addr: tuple) -> Address:
    return Address("udp", *addr)


def request_for(identity: Identity) -> tuple[bytes, bytes, bytes]:
    """A valid request to C{identity}: (packet, shared key, request id)."""
    public, secret = crypto_box_keypair()
    key = crypto_box_beforenm(curve_public_key(identity.peer_id), secret)
    request_id = os.urandom(16)
    return encode_request(key, public, request_id), key, request_id


class CodecTests(SynchronousTestCase):
    def test_round_trip(self):
        bob = Identity.generate()
        packet, key, request_id = request_for(bob)
        self.assertEqual(len(packet), REQUEST_SIZE)
        self.assertEqual(packet[:4], b"\x04cr\x01")
        responder_key, got_id = open_request(packet, curve_secret_key(bob))
        self.assertEqual((responder_key, got_id), (key, request_id))
        observed = Address("udp", "203.0.113.5", 61000)
        response = encode_response(key, request_id, observed)
        self.assertEqual(len(response), RESPONSE_SIZE)
        self.assertEqual(response[:4], b"\x05cr\x01")
        self.assertEqual(open_response(response, key), (request_id, observed))

    def test_answers_are_smaller_than_requests(self):
        self.assertLess(RESPONSE_SIZE, REQUEST_SIZE)
        self.assertEqual((REQUEST_SIZE, RESPONSE_SIZE), (124, 84))

    def test_nothing_in_clear(self):
        bob = Identity.generate()
        packet, key, request_id = request_for(bob)
        self.assertNotIn(request_id, packet)
        observed = Address("udp", "203.0.113.5", 61000)
        response = encode_response(key, request_id, observed)
        self.assertNotIn(request_id, response)
        self.assertNotIn(bytes([203, 0, 113, 5]), response)
        # two requests never look alike: fresh ephemeral key and nonce
        again, _, _ = request_for(bob)
        self.assertNotEqual(packet[4:60], again[4:60])

    def test_wrong_key_cannot_open(self):
        bob, carol = Identity.generate(), Identity.generate()
        packet, key, _ = request_for(bob)
        self.assertRaises(CryptoError, open_request, packet, curve_secret_key(carol))
        response = encode_response(key, os.urandom(16), Address("udp", "127.0.0.1", 5))
        self.assertRaises(CryptoError, open_response, response, os.urandom(32))
        tampered = bytearray(packet)
        tampered[-1] ^= 1
        self.assertRaises(CryptoError, open_request, bytes(tampered), curve_secret_key(bob))

    def test_addresses(self):
        for text in ("udp:127.0.0.1:1", "udp:203.0.113.9:65535", "udp:[2001:db8::7]:4242"):
            address = Address.parse(text)
            encoded = encode_address(address)
            self.assertEqual(len(encoded), 19)
            self.assertEqual(decode_address(encoded), address)
        self.assertRaises(ValueError, decode_address, b"\x05" + bytes(18))
        self.assertRaises(ValueError, decode_address, b"\x04\x00\x00" + bytes(16))  # port 0
        self.assertRaises(ValueError, decode_address, b"\x04\x00")

    def test_invalid_peer_id(self):
        self.assertRaises(ValueError, curve_public_key, PeerId(b"\xff" * 32))


_addresses = st.builds(lambda family, port, raw: bytes([family]) + port.to_bytes(2, "big") + raw,
                       st.sampled_from([4, 6]), st.integers(0, 65535), st.binary(min_size=16, max_size=16))


class AddressFieldTests(SynchronousTestCase):
    @examples(300)
    @given(valid_or_mutated(_addresses, max_size=30))
    def test_any_bytes(self, data: bytes) -> None:
        """An address field decodes to a UDP address that encodes back, or is a ValueError."""
        try:
            address = decode_address(data)
        except ValueError:
            return
        self.assertEqual(address.transport, "udp")
        self.assertEqual(decode_address(encode_address(address)), address)


class _EchoNet:
    """Three endpoints on a simulated network: A asks, B and C answer (both have identities)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.net = VirtualNet(self.clock)
        self.ids = {name: Identity.generate() for name in "abc"}
        self.a = net_stack(self.net, *A, identity=self.ids["a"])
        self.b = net_stack(self.net, *B, identity=self.ids["b"])
        self.c = net_stack(self.net, *C, identity=self.ids["c"])

    def sent_by(self, addr: tuple, first_byte: int) -> list[float]:
        return [data for src, dst, data in self.net.traffic if src == addr and data[0] == first_byte]


class EchoTests(_EchoNet, SynchronousTestCase):
    def test_echo(self):
        self.net.nat[A] = ("127.0.0.100", 50000)
        d = self.a.echo.query(udp(B), self.ids["b"].peer_id)
        run_for(self.clock, 0.1)
        result = self.successResultOf(d)
        self.assertEqual(result.observed, Address("udp", "127.0.0.100", 50000))
        self.assertEqual((result.peer_id, result.destination, result.source), (self.ids["b"].peer_id, udp(B), udp(B)))
        self.assertEqual(result.transmissions, 1)
        self.assertAlmostEqual(result.rtt, 0.02)
        self.assertEqual(self.b.echo.counters["requests_answered"], 1)
        self.assertEqual(self.a.echo.counters["echo_succeeded"], 1)
        self.assertEqual(self.a.echo.outstanding, 0)
        for src, dst, data in self.net.traffic:
            self.assertLessEqual(len(data), REQUEST_SIZE)

    def test_echo_fires_with_the_address(self):
        d = self.a.echo.echo(udp(C), self.ids["c"].peer_id)
        run_for(self.clock, 0.1)
        self.assertEqual(self.successResultOf(d), udp(A))

    def test_wrong_key_gets_no_answer_and_times_out(self):
        d = self.a.echo.echo(udp(B), self.ids["c"].peer_id, timeout=2.0, tries=4, rto=0.25)
        run_for(self.clock, 1.99)
        self.assertNoResult(d)
        run_for(self.clock, 0.02)
        failure = self.failureResultOf(d, EchoTimeout)
        self.assertIsInstance(failure.value, StunTimeout)  # nat_classify records a timeout
        self.assertEqual(failure.value.transmissions, 4)
        self.assertIn("did not answer", str(failure.value))
        self.assertEqual(self.b.echo.counters["requests_undecryptable"], 4)
        self.assertEqual(self.b.echo.counters["requests_answered"], 0)
        self.assertEqual(self.sent_by(B, 5), [])
        self.assertEqual(self.a.echo.counters["echo_timeouts"], 1)

    def test_retransmission_schedule(self):
        self.net.drop = lambda src, dst, data: True
        times = []
        send = self.net.send

        def timed_send(src, dst, data):
            times.append(self.clock.seconds())
            send(src, dst, data)

        self.net.send = timed_send
        d = self.a.echo.echo(udp(B), self.ids["b"].peer_id, timeout=2.0, tries=4, rto=0.25)
        run_for(self.clock, 3)
        self.failureResultOf(d, EchoTimeout)
        self.assertEqual(times, [0, 0.25, 0.75, 1.75])
        self.assertEqual(self.a.echo.counters["echo_retransmissions"], 3)

    def test_sends_stop_at_the_deadline(self):
        self.net.drop = lambda src, dst, data: True
        d = self.a.echo.echo(udp(B), self.ids["b"].peer_id, timeout=1.0, tries=10, rto=0.25)
        run_for(self.clock, 5)
        self.assertEqual(self.failureResultOf(d, EchoTimeout).value.transmissions, 3)  # 0, 0.25, 0.75

    def test_lost_request_is_retransmitted(self):
        lost = []

        def drop_first(src, dst, data):
            if data[0] == 4 and not lost:
                lost.append(data)
                return True
            return False

        self.net.drop = drop_first
        d = self.a.echo.query(udp(B), self.ids["b"].peer_id)
        run_for(self.clock, 1)
        result = self.successResultOf(d)
        self.assertEqual((result.observed, result.transmissions), (udp(A), 2))

    def test_duplicate_answers_are_absorbed(self):
        self.net.latency = 0.3  # the first answer arrives after the first retransmission
        d = self.a.echo.query(udp(B), self.ids["b"].peer_id, rto=0.25)
        run_for(self.clock, 2)
        self.assertEqual(self.successResultOf(d).transmissions, 2)
        self.assertEqual(self.b.echo.counters["requests_answered"], 2)
        self.assertEqual(self.a.echo.counters["responses_duplicate"], 1)
        self.assertEqual(self.a.echo.counters["echo_succeeded"], 1)

    def test_forged_answer_is_ignored(self):
        d = self.a.echo.echo(udp(B), self.ids["b"].peer_id)
        # someone without B's key answers first, claiming a false address
        forged = encode_response(os.urandom(32), os.urandom(16), Address("udp", "127.6.6.6", 666))
        self.a.endpoint.datagramReceived(forged, B)
        self.assertNoResult(d)
        self.assertEqual(self.a.echo.counters["responses_unmatched"], 1)
        run_for(self.clock, 0.1)
        self.assertEqual(self.successResultOf(d), udp(A))

    def test_answer_from_another_address_is_accepted(self):
        """A multi-homed responder may answer from another IP; the box proves who it is."""
        self.net.drop = lambda src, dst, data: dst == B
        d = self.a.echo.query(udp(B), self.ids["b"].peer_id)
        packet = self.sent_by(A, 4)[0]
        key, request_id = open_request(packet, curve_secret_key(self.ids["b"]))
        self.a.endpoint.datagramReceived(encode_response(key, request_id, udp(A)), ("127.0.0.21", 4001))
        result = self.successResultOf(d)
        self.assertEqual((result.observed, result.source), (udp(A), Address("udp", "127.0.0.21", 4001)))

    def test_authentic_answer_with_bad_content_is_dropped(self):
        self.net.drop = lambda src, dst, data: dst == B
        d = self.a.echo.echo(udp(B), self.ids["b"].peer_id)
        key, request_id = open_request(self.sent_by(A, 4)[0], curve_secret_key(self.ids["b"]))
        nonce = os.urandom(24)
        bad_family = (request_id + b"\x09" + bytes(18)).ljust(40, b"\x00")
        self.a.endpoint.datagramReceived(b"\x05cr\x01" + nonce + crypto_box_afternm(bad_family, nonce, key), B)
        nonce = os.urandom(24)
        other_id = (os.urandom(16) + encode_address(udp(A))).ljust(40, b"\x00")
        self.a.endpoint.datagramReceived(b"\x05cr\x01" + nonce + crypto_box_afternm(other_id, nonce, key), B)
        self.assertNoResult(d)
        self.assertEqual(self.a.echo.counters["responses_malformed"], 2)
        d.cancel()
        self.failureResultOf(d, CancelledError)

    @examples(100)
    @given(st.lists(valid_or_mutated(st.builds(lambda: b""), max_size=60), min_size=1, max_size=4))
    def test_authentic_answers_with_any_content(self, contents: list[bytes]) -> None:
        """Answers made with the request's key, whatever is inside: a result or a drop, never an error."""
        self.net.drop = lambda src, dst, data: dst == B
        d = self.a.echo.echo(udp(B), self.ids["b"].peer_id)
        results: list[Any] = []
        d.addBoth(results.append)
        key, request_id = open_request(self.sent_by(A, 4)[-1], curve_secret_key(self.ids["b"]))
        for content in contents:
            plaintext = (request_id + content).ljust(40, b"\x00")[:40]
            nonce = os.urandom(24)
            self.a.endpoint.datagramReceived(b"\x05cr\x01" + nonce + crypto_box_afternm(plaintext, nonce, key), B)
        self.assertEqual(self.a.endpoint.counters["handler_errors"], 0)
        if not results:
            d.cancel()
        self.assertEqual(len(results), 1)
        self.assertTrue(not isinstance(results[0], Failure) or results[0].check(CancelledError))

    def test_concurrent_requests_are_told_apart(self):
        d1 = self.a.echo.query(udp(B), self.ids["b"].peer_id)
        d2 = self.a.echo.query(udp(C), self.ids["c"].peer_id)
        d3 = self.a.echo.query(udp(B), self.ids["b"].peer_id)
        run_for(self.clock, 0.1)
        results = [self.successResultOf(d) for d in (d1, d2, d3)]
        self.assertEqual([r.destination for r in results], [udp(B), udp(C), udp(B)])
        self.assertEqual(self.a.echo.counters["responses_unmatched"], 0)

    def test_cancel(self):
        d = self.a.echo.echo(udp(B), self.ids["b"].peer_id)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.a.echo.outstanding, 0)
        self.assertTrue(all(c.getTime() <= 0.01 for c in self.clock.getDelayedCalls()))  # no timers left
        run_for(self.clock, 0.1)
        self.assertEqual(self.a.echo.counters["responses_unmatched"], 1)  # the answer finds nobody

    def test_bad_arguments(self):
        peer = self.ids["b"].peer_id
        self.failureResultOf(self.a.echo.echo(Address("tcp", *B), peer), ValueError)
        self.failureResultOf(self.a.echo.echo(udp(B), peer, timeout=0), ValueError)
        self.failureResultOf(self.a.echo.echo(udp(B), peer, tries=0), ValueError)
        self.failureResultOf(self.a.echo.echo(udp(B), PeerId(b"\xff" * 32)), EchoError)
        self.assertEqual(self.net.traffic, [])

    def test_outstanding_is_bounded(self):
        stack, _ = fake_stack(echo_options=dict(max_outstanding=2))
        peer = self.ids["b"].peer_id
        stack.echo.echo(udp(B), peer)
        stack.echo.echo(udp(B), peer)
        self.failureResultOf(stack.echo.echo(udp(B), peer), EchoError)

    def test_first_send_failure_fails_at_once(self):
        stack, transport = fake_stack()
        transport.error = OSError(113, "No route to host")
        d = stack.echo.echo(udp(B), self.ids["b"].peer_id)
        self.assertIn("cannot send", str(self.failureResultOf(d, EchoError).value))
        self.assertEqual(stack.echo.outstanding, 0)
        self.assertEqual(stack.endpoint.send_errors, {"EHOSTUNREACH": 1})


class ResponderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.identity = Identity.generate()
        stack, self.transport = fake_stack(identity=self.identity)
        self.endpoint = stack.endpoint
        self.echo = stack.echo

    def test_answers_to_the_source(self):
        packet, key, request_id = request_for(self.identity)
        self.endpoint.datagramReceived(packet, A)
        [(data, addr)] = self.transport.written
        self.assertEqual(addr, A)
        self.assertEqual(open_response(data, key), (request_id, udp(A)))

    def test_bad_requests_dropped_and_counted(self):
        packet, _, _ = request_for(self.identity)
        cases = {
            "requests_truncated": [packet[:-1], packet[:4], b"\x04"],
            "requests_oversize": [packet + b"\x00", packet + bytes(2000)],
            "requests_malformed": [b"\x04xx" + packet[3:]],
            "requests_bad_version": [packet[:3] + b"\x02" + packet[4:]],
            "requests_undecryptable": [request_for(Identity.generate())[0], packet[:60] + os.urandom(64),
                                       packet[:4] + bytes(32) + packet[36:]],  # a low-order key
        }
        for counter, packets in cases.items():
            for p in packets:
                self.endpoint.datagramReceived(p, A)
            self.assertEqual(self.echo.counters[counter], len(packets), counter)
        self.assertEqual(self.transport.written, [])
        self.assertEqual(self.echo.counters["requests_received"], 10)

    def test_bad_responses_dropped_and_counted(self):
        _, key, _ = request_for(self.identity)
        response = encode_response(key, os.urandom(16), udp(A))
        garbage = b"\x05cr\x01" + os.urandom(RESPONSE_SIZE - 4)
        for p in (response[:-1], response + b"x", b"\x05cr\x09" + response[4:], garbage):
            self.endpoint.datagramReceived(p, A)
        c = self.echo.counters
        self.assertEqual((c["responses_truncated"], c["responses_oversize"], c["responses_bad_version"]), (1, 1, 1))
        self.assertEqual(c["responses_unmatched"], 1)

    def test_rate_limited_per_source_ip(self):
        for _ in range(30):
            self.endpoint.datagramReceived(request_for(self.identity)[0], A)
        self.assertEqual(len(self.transport.written), 10)  # the burst
        self.assertEqual(self.echo.counters["requests_rate_limited"], 20)
        self.endpoint.datagramReceived(request_for(self.identity)[0], B)
        self.assertEqual(len(self.transport.written), 11)
        self.endpoint.clock.advance(1)
        for _ in range(30):
            self.endpoint.datagramReceived(request_for(self.identity)[0], A)
        self.assertEqual(len(self.transport.written), 16)  # 5 per second

    def test_without_identity_nothing_is_answered(self):
        stack, transport = fake_stack()
        self.assertFalse(stack.echo.responding)
        stack.endpoint.datagramReceived(request_for(self.identity)[0], A)
        self.assertEqual(transport.written, [])
        self.assertEqual(stack.echo.counters["requests_ignored"], 1)


class EchoSourceTests(_EchoNet, SynchronousTestCase):
    def test_interface(self):
        source = UdpEchoSource(self.a.echo, self.ids["b"].peer_id, udp(B))
        verifyObject(IAddressEchoSource, source)
        self.assertEqual(source.destination, udp(B))
        d = source.echo(self.a.stun_client)
        run_for(self.clock, 0.1)
        self.assertEqual(self.successResultOf(d), udp(A))

    def test_refuses_another_socket(self):
        source = UdpEchoSource(self.a.echo, self.ids["b"].peer_id, udp(B))
        self.failureResultOf(source.echo(self.b.stun_client), EchoError)

    def test_classification_with_crust_peers_only(self):
        """Two peers on different IPs that see one mapped address: endpoint-independent mapping."""
        self.net.nat[A] = ("127.0.0.100", 50000)
        dead = Identity.generate()
        sources = [UdpEchoSource(self.a.echo, self.ids["b"].peer_id, udp(B)),
                   UdpEchoSource(self.a.echo, self.ids["c"].peer_id, udp(C)),
                   UdpEchoSource(self.a.echo, dead.peer_id, Address("udp", "127.0.0.40", 4003), timeout=1.0)]
        d = classify_nat(self.clock, self.a.stun_client, [], A[1], local_hosts=[A[0]], echo_sources=sources)
        run_for(self.clock, 2)
        report = self.successResultOf(d)
        self.assertEqual(report.mapping, Mapping.ENDPOINT_INDEPENDENT)
        self.assertTrue(report.behind_nat)
        self.assertEqual(report.external_addresses, (Address("udp", "127.0.0.100", 50000),))
        outcomes = sorted((str(p.destination), p.outcome) for p in report.probes if p.test == ECHO)
        self.assertEqual(outcomes, [("udp:127.0.0.20:4001", "ok"), ("udp:127.0.0.30:4002", "ok"),
                                    ("udp:127.0.0.40:4003", "timeout")])


# --- loopback ---------------------------------------------------------------------------


class LoopbackTests(TestCase):
    timeout = 20

    def udp(self, identity: Any = None) -> UdpStack:
        udp = build_udp_stack(reactor, host=LOOPBACK, identity=identity)
        udp.endpoint.listen()
        self.addCleanup(udp.endpoint.stop)
        return udp

    async def test_echo_between_two_endpoints(self):
        bob = Identity.generate()
        a, b = self.udp(), self.udp(bob)
        result = await a.echo.query(b.endpoint.local_address(), bob.peer_id, timeout=3.0)
        self.assertEqual(result.observed, a.endpoint.local_address())
        self.assertEqual(result.source, b.endpoint.local_address())
        self.assertEqual(b.echo.counters["requests_answered"], result.transmissions)

    async def test_wrong_key_times_out(self):
        bob = Identity.generate()
        a, b = self.udp(), self.udp(bob)
        with self.assertRaises(EchoTimeout):
            await a.echo.echo(b.endpoint.local_address(), Identity.generate().peer_id, timeout=0.5, tries=2, rto=0.1)
        self.assertEqual(b.echo.counters["requests_undecryptable"], 2)
        self.assertEqual(b.echo.counters["requests_answered"], 0)
        self.assertEqual(a.echo.counters["responses_received"], 0)
