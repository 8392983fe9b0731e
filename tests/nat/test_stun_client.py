"""
Tests for L{crust.nat.stun_client}: unit tests on a fake send callable and a
L{Clock}, and loopback tests (127.0.0.1 only) with a tiny in-test STUN server.
"""

import os
import struct

from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from crust.nat import stun
from crust.address import Address
from crust.nat.stun_client import (
    BindingResult,
    StunBadResponse,
    StunClient,
    StunError,
    StunErrorResponse,
    StunProtocol,
    StunTimeout,
    discover_external_address,
)

SERVER = Address("udp", "192.0.2.10", 3478)
OTHER = Address("udp", "192.0.2.11", 3479)
MAPPED = Address("udp", "203.0.113.5", 61000)


class FakeSender:
    """Records what the client sends, with the clock's time."""

    def __init__(self, clock):
        self.clock = clock
        self.sent = []  # (time, datagram, addr)
        self.fail = False

    def __call__(self, data, addr):
        if self.fail:
            raise OSError("Network is unreachable")
        self.sent.append((self.clock.seconds(), data, addr))

    def request(self, index=-1):
        return stun.decode(self.sent[index][1])


def advance_to(clock, target):
    """Advance to C{target}, stopping at each delayed call so it runs at its own time."""
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= target]
        if not due:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, target - clock.seconds()))


def run_until_idle(clock, limit=1000.0):
    """Advance the clock from one delayed call to the next until none is left."""
    while clock.getDelayedCalls():
        nxt = min(c.getTime() for c in clock.getDelayedCalls())
        assert nxt <= limit, "runaway timers"
        clock.advance(max(0.0, nxt - clock.seconds()))


class ClientTestMixin:
    def setUp(self):
        self.clock = Clock()
        self.sender = FakeSender(self.clock)
        self.client = StunClient(self.sender, self.clock)

    def respond(self, request, mapped=MAPPED, source=SERVER, **kw):
        response = stun.make_binding_success(request, mapped, **kw)
        return self.client.datagram_received(stun.encode(response, fingerprint=True), source.sockaddr())


class RetransmissionTests(ClientTestMixin, SynchronousTestCase):
    def test_rfc8489_schedule(self):
        """RTO 500 ms doubling, 7 transmissions, then 16 * RTO: timeout at 39.5 s."""
        d = self.client.binding_request(SERVER)
        failures = []
        d.addErrback(failures.append)
        advance_to(self.clock, 39.49)
        self.assertEqual(failures, [])
        advance_to(self.clock, 39.5)
        self.assertEqual(len(failures), 1)
        times = [t for t, _, _ in self.sender.sent]
        self.assertEqual(times, [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        self.assertEqual({data for _, data, _ in self.sender.sent}, {self.sender.sent[0][1]})
        self.assertEqual({addr for _, _, addr in self.sender.sent}, {("192.0.2.10", 3478)})
        error = failures[0].value
        self.assertIsInstance(error, StunTimeout)
        self.assertEqual((error.server, error.transmissions, error.elapsed), (SERVER, 7, 39.5))
        self.assertIn("did not answer", str(error))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.client.outstanding, 0)
        self.assertEqual(
            (self.client.counters["sent"], self.client.counters["retransmissions"], self.client.counters["timeouts"]),
            (7, 6, 1),
        )

    def test_custom_schedule(self):
        client = StunClient(self.sender, self.clock, rto=0.1, rc=3, rm=2)
        d = client.binding_request(SERVER)
        run_until_idle(self.clock)
        self.assertEqual([round(t, 6) for t, _, _ in self.sender.sent], [0.0, 0.1, 0.3])
        self.assertAlmostEqual(self.failureResultOf(d, StunTimeout).value.elapsed, 0.5)

    def test_per_request_schedule(self):
        d = self.client.binding_request(SERVER, rto=0.2, rc=2, rm=1)
        run_until_idle(self.clock)
        self.assertEqual([round(t, 6) for t, _, _ in self.sender.sent], [0.0, 0.2])
        self.assertAlmostEqual(self.failureResultOf(d, StunTimeout).value.elapsed, 0.4)

    def test_bad_schedule(self):
        self.assertRaises(ValueError, StunClient, self.sender, self.clock, rto=0)
        self.assertRaises(ValueError, StunClient, self.sender, self.clock, rc=0)
        self.assertRaises(ValueError, self.client.binding_request, SERVER, rm=-1)

    def test_first_send_error_fails_at_once(self):
        self.sender.fail = True
        d = self.client.binding_request(SERVER)
        self.assertIn("unreachable", str(self.failureResultOf(d, StunError).value))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.client.counters["send_errors"], 1)

    def test_later_send_errors_are_retried(self):
        d = self.client.binding_request(SERVER)
        self.sender.fail = True
        advance_to(self.clock, 0.5)
        self.sender.fail = False
        advance_to(self.clock, 1.5)
        self.assertEqual(len(self.sender.sent), 2)
        self.assertTrue(self.respond(self.sender.request()))
        self.assertEqual(self.successResultOf(d).transmissions, 3)
        self.assertEqual(self.client.counters["send_errors"], 1)


class ResponseTests(ClientTestMixin, SynchronousTestCase):
    def test_request_content(self):
        client = StunClient(self.sender, self.clock, software="crust test")
        client.binding_request(SERVER, change_ip=True, change_port=False).addErrback(lambda f: f.trap(CancelledError))
        req = self.sender.request()
        self.assertEqual((req.message_class, req.method), (stun.MessageClass.REQUEST, stun.BINDING))
        self.assertEqual(req.get(stun.CHANGE_REQUEST), stun.ChangeRequest(True, False))
        self.assertEqual(req.software, "crust test")
        self.assertEqual(req.types()[-1], stun.FINGERPRINT)
        client.cancel_all()
        self.assertEqual(client.outstanding, 0)

    def test_success(self):
        d = self.client.binding_request(SERVER)
        self.clock.advance(0.2)
        self.assertTrue(
            self.respond(self.sender.request(), response_origin=SERVER, other_address=OTHER, software="srv")
        )
        result = self.successResultOf(d)
        self.assertEqual(
            result,
            BindingResult(
                server=SERVER,
                mapped_address=MAPPED,
                source=SERVER,
                response_origin=SERVER,
                other_address=OTHER,
                rtt=0.2,
                transmissions=1,
                software="srv",
            ),
        )
        self.assertEqual(result.to_dict()["mapped_address"], "udp:203.0.113.5:61000")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.client.counters["responses"], 1)

    def test_success_after_retransmission(self):
        d = self.client.binding_request(SERVER)
        self.clock.advance(0.7)
        self.assertTrue(self.respond(self.sender.request(0)))
        result = self.successResultOf(d)
        self.assertEqual((result.transmissions, result.rtt), (2, 0.7))
        self.clock.advance(100)
        self.assertEqual(len(self.sender.sent), 2)

    def test_response_from_changed_address(self):
        d = self.client.binding_request(SERVER, change_ip=True, change_port=True)
        self.assertTrue(self.respond(self.sender.request(), source=OTHER))
        self.assertEqual(self.successResultOf(d).source, OTHER)

    def test_mismatched_transaction_ignored(self):
        d = self.client.binding_request(SERVER)
        stranger = stun.make_binding_request()
        self.assertFalse(self.respond(stranger))
        self.assertNoResult(d)
        self.assertEqual(self.client.counters["unmatched"], 1)
        self.assertTrue(self.respond(self.sender.request()))
        self.assertEqual(self.successResultOf(d).mapped_address, MAPPED)

    def test_garbage_ignored(self):
        d = self.client.binding_request(SERVER)
        req = self.sender.request()
        self.assertFalse(self.client.datagram_received(b"hello, not STUN", SERVER.sockaddr()))
        self.assertFalse(self.client.datagram_received(os.urandom(64), SERVER.sockaddr()))
        # looks like STUN (passes is_stun) but its FINGERPRINT is wrong
        bad = bytearray(stun.encode(stun.make_binding_success(req, MAPPED), fingerprint=True))
        bad[-1] ^= 0xFF
        self.assertFalse(self.client.datagram_received(bytes(bad), SERVER.sockaddr()))
        self.assertNoResult(d)
        self.assertEqual(self.client.counters["malformed"], 1)
        self.assertGreaterEqual(self.client.counters["not_stun"], 1)
        self.assertTrue(self.respond(req))
        self.successResultOf(d)

    def test_strangers_messages_are_not_decoded(self):
        """Only a message with the transaction id of one of ours is decoded: a 64 KiB stranger costs a look-up."""
        d = self.client.binding_request(SERVER)
        tid = self.sender.request().transaction_id
        big = (struct.pack("!HHI12s", 0x0101, 0xFFFC, stun.MAGIC_COOKIE, os.urandom(12))
               + b"\x80\x01\x00\x00" * 0x3FFF)
        decoded = []
        real = stun.decode
        self.patch(stun, "decode", lambda *a, **kw: decoded.append(1) or real(*a, **kw))
        for _ in range(20):
            self.assertFalse(self.client.datagram_received(big, SERVER.sockaddr()))
        self.assertEqual((decoded, self.client.counters["unmatched"]), ([], 20))
        # with our transaction id it is decoded, within the bounds: refused as malformed, the request still waits
        ours = big[:8] + tid + big[20:]
        self.assertFalse(self.client.datagram_received(ours, SERVER.sockaddr()))
        self.assertEqual((len(decoded), self.client.counters["malformed"]), (1, 1))
        self.assertNoResult(d)
        self.assertTrue(self.respond(self.sender.request()))
        self.successResultOf(d)

    def test_request_with_our_transaction_id_is_not_a_response(self):
        d = self.client.binding_request(SERVER)
        echo = self.sender.sent[-1][1]
        self.assertFalse(self.client.datagram_received(echo, SERVER.sockaddr()))
        self.assertNoResult(d)
        self.client.cancel_all()
        self.failureResultOf(d, CancelledError)

    def test_duplicate_response_absorbed(self):
        d = self.client.binding_request(SERVER)
        req = self.sender.request()
        self.assertTrue(self.respond(req))
        self.successResultOf(d)
        self.assertTrue(self.respond(req))
        self.assertEqual(self.client.counters["duplicates"], 1)

    def test_error_response(self):
        d = self.client.binding_request(SERVER, change_ip=True)
        req = self.sender.request()
        err = stun.make_binding_error(req, 420, "Unknown Attribute", unknown_attributes=(stun.CHANGE_REQUEST,))
        self.assertTrue(self.client.datagram_received(stun.encode(err), SERVER.sockaddr()))
        failure = self.failureResultOf(d, StunErrorResponse)
        self.assertEqual((failure.value.code, failure.value.reason), (420, "Unknown Attribute"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_success_without_mapped_address(self):
        d = self.client.binding_request(SERVER)
        req = self.sender.request()
        empty = stun.StunMessage(stun.MessageClass.SUCCESS, stun.BINDING, req.transaction_id)
        self.assertTrue(self.client.datagram_received(stun.encode(empty), SERVER.sockaddr()))
        self.assertIn("without a mapped address", str(self.failureResultOf(d, StunBadResponse).value))

    def test_unknown_comprehension_required_attribute(self):
        d = self.client.binding_request(SERVER)
        req = self.sender.request()
        resp = stun.make_binding_success(req, MAPPED)
        resp = stun.StunMessage(resp.message_class, resp.method, resp.transaction_id,
                                resp.attributes + (stun.Attribute(0x7ABC, b"?"),))
        self.assertTrue(self.client.datagram_received(stun.encode(resp), SERVER.sockaddr()))
        self.assertIn("0x7abc", str(self.failureResultOf(d, StunBadResponse).value))

    def test_concurrent_transactions(self):
        d1 = self.client.binding_request(SERVER)
        d2 = self.client.binding_request(OTHER)
        r1, r2 = self.sender.request(0), self.sender.request(1)
        self.assertNotEqual(r1.transaction_id, r2.transaction_id)
        other_mapped = Address("udp", "203.0.113.5", 61001)
        self.assertTrue(self.respond(r2, mapped=other_mapped, source=OTHER))
        self.assertNoResult(d1)
        self.assertTrue(self.respond(r1))
        self.assertEqual(self.successResultOf(d1).mapped_address, MAPPED)
        self.assertEqual(self.successResultOf(d2).mapped_address, other_mapped)

    def test_cancel(self):
        d = self.client.binding_request(SERVER)
        req = self.sender.request()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.client.outstanding, 0)
        self.assertFalse(self.respond(req))

    def test_cancel_all(self):
        ds = [self.client.binding_request(SERVER), self.client.hairpin_probe(MAPPED)]
        self.client.cancel_all()
        for d in ds:
            self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ipv6_source_with_scope(self):
        server = Address("udp", "fe80::1", 3478)
        d = self.client.binding_request(server)
        response = stun.make_binding_success(self.sender.request(), MAPPED)
        self.assertTrue(self.client.datagram_received(stun.encode(response), ("fe80::1%eth0", 3478, 0, 2)))
        self.assertEqual(self.successResultOf(d).source, server)


class HairpinTests(ClientTestMixin, SynchronousTestCase):
    def test_hairpin_arrives(self):
        d = self.client.hairpin_probe(MAPPED, timeout=2.0)
        self.clock.advance(0.5)
        _, data, addr = self.sender.sent[-1]
        self.assertEqual(addr, MAPPED.sockaddr())
        self.assertTrue(self.client.datagram_received(data, MAPPED.sockaddr()))
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hairpin_times_out(self):
        d = self.client.hairpin_probe(MAPPED, timeout=2.0)
        advance_to(self.clock, 1.99)
        self.assertNoResult(d)
        advance_to(self.clock, 2.0)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual([t for t, _, _ in self.sender.sent], [0.0, 0.5, 1.5])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_response_is_not_a_hairpin(self):
        d = self.client.hairpin_probe(MAPPED, timeout=2.0)
        self.assertFalse(self.respond(self.sender.request()))
        self.assertNoResult(d)
        self.clock.advance(2)
        self.assertIs(self.successResultOf(d), False)


# --- loopback ------------------------------------------------------------------------


class TinyStunServer(DatagramProtocol):
    """Answers Binding requests with the source address; counts them."""

    def __init__(self):
        self.requests = 0

    def datagramReceived(self, data, addr):
        try:
            request = stun.decode(data)
        except stun.StunParseError:
            return
        if request.message_class != stun.MessageClass.REQUEST:
            return
        self.requests += 1
        response = stun.make_binding_success(request, Address("udp", addr[0], addr[1]), software="tiny")
        self.transport.write(stun.encode(response, fingerprint=True), addr)


class LoopbackTests(TestCase):
    timeout = 20

    def listen(self, protocol):
        port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return Address("udp", "127.0.0.1", port.getHost().port)

    async def test_discover_external_address(self):
        server = TinyStunServer()
        server_address = self.listen(server)
        mapped = await discover_external_address(reactor, [server_address], interface="127.0.0.1", rto=0.1)
        self.assertEqual(mapped.host, "127.0.0.1")
        self.assertNotEqual(mapped.port, server_address.port)
        self.assertEqual(server.requests, 1)

    async def test_discover_falls_through_to_next_server(self):
        silent = DatagramProtocol()
        silent_address = self.listen(silent)
        server_address = self.listen(TinyStunServer())
        mapped = await discover_external_address(
            reactor, [silent_address, server_address], interface="127.0.0.1", rto=0.05, rc=2, rm=2
        )
        self.assertEqual(mapped.host, "127.0.0.1")

    async def test_discover_fails_with_every_reason(self):
        silent_address = self.listen(DatagramProtocol())
        with self.assertRaises(StunError) as cm:
            await discover_external_address(reactor, [silent_address], interface="127.0.0.1", rto=0.05, rc=2, rm=2)
        self.assertIn(str(silent_address), str(cm.exception))

    async def test_shared_socket(self):
        """STUN and other traffic on one socket: the other traffic reaches its handler."""
        others = []
        protocol = StunProtocol(reactor, other_datagram=lambda data, addr: others.append(data), rto=0.1)
        local = self.listen(protocol)
        self.assertEqual(protocol.local_address(), local)
        server_address = self.listen(TinyStunServer())
        result = await protocol.binding_request(server_address)
        self.assertEqual(result.mapped_address, local)
        self.assertEqual(result.source, server_address)
        self.assertEqual(result.software, "tiny")
        # a peer's datagram on the same socket goes to other_datagram
        peer = DatagramProtocol()
        self.listen(peer)
        peer.transport.write(b"\x80application data", local.sockaddr())
        for _ in range(100):
            if others:
                break
            await _sleep(0.01)
        self.assertEqual(others, [b"\x80application data"])
        self.assertEqual(protocol.client.counters["not_stun"], 1)


def _sleep(seconds):
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
