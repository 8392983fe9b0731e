"""
Tests for L{crust.nat.stun_responder}: the responder alone on a fake endpoint
and a L{Clock}: what it answers, what it leaves to others, its rate limit,
and that no request ever gets a larger answer than the rule allows.
"""

from __future__ import annotations

import struct
import time
from typing import Any, Callable

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.nat import stun
from crust.address import Address
from crust.nat.stun_responder import STUN_RESPONSE_OVERHEAD, StunResponder

from tests import examples

PEER = ("192.0.2.9", 5000)
_REAL_DECODE = stun.decode


class FakeEndpoint:
    """What a L{StunResponder} needs of an endpoint: a clock, send, and a STUN chain."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.sent: list[tuple[bytes, Any]] = []
        self.sending = True
        self.stun_handlers: list[Callable[[bytes, Any], bool]] = []

    def send(self, data: bytes, addr: Any) -> bool:
        if not self.sending:
            return False
        self.sent.append((data, addr))
        return True

    def add_stun_handler(self, handler: Callable[[bytes, Any], bool], name: str = "") -> Callable[[], None]:
        self.stun_handlers.append(handler)
        return lambda: self.stun_handlers.remove(handler) if handler in self.stun_handlers else None


def request_bytes(fingerprint: bool = True, **kw: Any) -> tuple[stun.StunMessage, bytes]:
    request = stun.make_binding_request(**kw)
    return request, stun.encode(request, fingerprint=fingerprint)


class StunResponderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.endpoint = FakeEndpoint()
        self.responder = StunResponder(self.endpoint)

    def offer(self, data: bytes, source: Any = PEER) -> tuple[bool, list[stun.StunMessage]]:
        before = len(self.endpoint.sent)
        taken = self.responder.datagram_received(data, source)
        answers = []
        for out, addr in self.endpoint.sent[before:]:
            self.assertEqual(addr, source)
            self.assertLessEqual(len(out), len(data) + STUN_RESPONSE_OVERHEAD)
            answers.append(stun.decode(out))
        return taken, answers

    def test_registers_itself_and_leaves(self):
        self.assertEqual(self.endpoint.stun_handlers, [self.responder.datagram_received])
        self.responder.unregister()
        self.responder.unregister()
        self.assertEqual(self.endpoint.stun_handlers, [])

    def test_answers_with_the_source(self):
        request, data = request_bytes()
        taken, [answer] = self.offer(data)
        self.assertTrue(taken)
        self.assertEqual(answer.message_class, stun.MessageClass.SUCCESS)
        self.assertEqual(answer.transaction_id, request.transaction_id)
        self.assertEqual(answer.mapped_address, Address("udp", *PEER))
        self.assertEqual(answer.types(), (stun.XOR_MAPPED_ADDRESS, stun.FINGERPRINT))
        self.assertEqual(self.responder.counters, {"answered": 1, "errors_sent": 0, "rate_limited": 0, "malformed": 0})

    def test_ipv6_and_mapped_sources(self):
        _, [answer] = self.offer(request_bytes()[1], ("2001:db8::7", 9, 0, 0))
        self.assertEqual(answer.mapped_address, Address("udp", "2001:db8::7", 9))
        _, [answer] = self.offer(request_bytes()[1], ("::ffff:192.0.2.8", 9, 0, 0))
        self.assertEqual(answer.mapped_address, Address("udp", "192.0.2.8", 9))

    def test_change_request_gets_420(self):
        _, data = request_bytes(change_port=True)
        taken, [answer] = self.offer(data)
        self.assertTrue(taken)
        self.assertEqual(answer.error_code.code, 420)
        self.assertEqual(answer.get(stun.UNKNOWN_ATTRIBUTES), (stun.CHANGE_REQUEST,))
        self.assertEqual(self.responder.counters["errors_sent"], 1)

    def test_leaves_what_is_not_a_binding_request(self):
        request, _ = request_bytes()
        success = stun.encode(stun.make_binding_success(request, Address("udp", *PEER)))
        indication = stun.encode(stun.StunMessage(stun.MessageClass.INDICATION, stun.BINDING, request.transaction_id))
        other_method = stun.encode(stun.StunMessage(stun.MessageClass.REQUEST, 0x003, request.transaction_id))
        for data in (success, indication, other_method, b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"x" * 5):
            self.assertEqual(self.offer(data), (False, []))
        self.assertEqual(self.responder.counters, {"answered": 0, "errors_sent": 0, "rate_limited": 0, "malformed": 0})

    def test_leaves_unusable_sources(self):
        for source in (("192.0.2.9", 0), ("not an address", 5), None):
            self.assertEqual(self.offer(request_bytes()[1], source), (False, []))

    def test_disabled(self):
        self.responder.enabled = False
        self.assertEqual(self.offer(request_bytes()[1]), (False, []))
        self.responder.enabled = True
        self.assertTrue(self.offer(request_bytes()[1])[0])

    def test_a_failed_send_is_not_counted(self):
        self.endpoint.sending = False
        self.assertEqual(self.offer(request_bytes()[1]), (True, []))
        self.assertEqual(self.responder.counters["answered"], 0)

    def test_rate_limited_per_source_ip_and_in_total(self):
        responder = StunResponder(self.endpoint, rate=((2.0, 3.0), (4.0, 5.0)))
        results = [responder.datagram_received(request_bytes()[1], PEER) for _ in range(5)]
        self.assertEqual(results, [True] * 5)  # a rate-limited request is still the responder's
        self.assertEqual(responder.counters["answered"], 3)
        self.assertEqual(responder.counters["rate_limited"], 2)
        for i in range(4):
            responder.datagram_received(request_bytes()[1], (f"192.0.2.{20 + i}", 5000))
        self.assertEqual(responder.counters["answered"], 5)  # the total's burst
        self.endpoint.clock.advance(0.5)  # two more in total, one more per IP
        responder.datagram_received(request_bytes()[1], PEER)
        responder.datagram_received(request_bytes()[1], PEER)
        self.assertEqual(responder.counters["answered"], 6)

    def test_rate_limit_comes_before_decoding(self):
        """A flood of requests costs a header check each once the source is over its rate: nothing is decoded."""
        responder = StunResponder(self.endpoint, rate=((2.0, 3.0), (4.0, 5.0)))
        decoded = []
        real = stun.decode
        self.patch(stun, "decode", lambda *a, **kw: decoded.append(1) or real(*a, **kw))
        for _ in range(50):
            self.assertTrue(responder.datagram_received(request_bytes()[1], PEER))
        self.assertEqual((len(decoded), responder.counters["answered"], responder.counters["rate_limited"]), (3, 3, 47))

    def test_oversize_and_many_attributes_are_dropped_cheaply(self):
        big = struct.pack("!HHI12s", 0x0001, 0xFFFC, stun.MAGIC_COOKIE, bytes(12)) + b"\x80\x01\x00\x00" * 0x3FFF
        self.assertTrue(stun.is_stun(big))
        decoded = []
        self.patch(stun, "decode", lambda *a, **kw: decoded.append(1))
        start = time.perf_counter()
        for _ in range(100):
            self.assertEqual(self.offer(big), (False, []))
        self.assertLess((time.perf_counter() - start) / 100, 0.001)  # 15-60 ms each when it was decoded
        self.assertEqual(decoded, [])  # over the Binding size bound: refused by its header
        self.assertEqual(self.responder.counters["answered"], 0)
        self.patch(stun, "decode", _REAL_DECODE)
        many = struct.pack("!HHI12s", 0x0001, 4 * 40, stun.MAGIC_COOKIE, bytes(12)) + b"\x80\x01\x00\x00" * 40
        self.assertEqual(self.offer(many), (False, []))  # within the size bound, over the attribute bound
        self.assertEqual(self.responder.counters["malformed"], 1)

    @examples(300)
    @given(
        unknown=st.lists(st.tuples(st.integers(0x0030, 0x7FFF).filter(lambda t: t not in stun.ATTRIBUTE_NAMES),
                                   st.binary(max_size=12)), max_size=6),
        change=st.tuples(st.booleans(), st.booleans()),
        fingerprint=st.booleans(),
        software=st.one_of(st.none(), st.text(max_size=20)),
        source=st.one_of(st.just(PEER), st.just(("2001:db8::1", 65535, 0, 0))),
    )
    def test_never_amplifies(self, unknown, change, fingerprint, software, source):
        request = stun.make_binding_request(change_ip=change[0], change_port=change[1], software=software)
        request = stun.StunMessage(request.message_class, request.method, request.transaction_id,
                                   request.attributes + tuple(stun.Attribute(t, v) for t, v in unknown))
        data = stun.encode(request, fingerprint=fingerprint)
        taken, answers = self.offer(data, source)  # offer() checks every answer's size
        self.assertTrue(taken)
        self.assertEqual(len(answers), 1)
        self.endpoint.clock.advance(10)  # keep the rate limit out of it

    @examples(500)
    @given(st.binary(max_size=120))
    def test_any_bytes(self, data):
        """Whatever arrives: a bool back, no exception, and an answer only to a Binding request."""
        taken, answers = self.offer(data)
        self.assertIsInstance(taken, bool)
        if answers:
            request = stun.decode(data)
            self.assertEqual((request.message_class, request.method), (stun.MessageClass.REQUEST, stun.BINDING))
        self.endpoint.clock.advance(10)
