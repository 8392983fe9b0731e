import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.errors import ProtocolViolation
from crust.wire import (
    CertInfo,
    Hello,
    Intent,
    RejectReason,
    decode_reason,
    encode_reject,
    negotiate_version,
    network_hash,
)
from tests import examples
from tests.hostile_json import HOSTILE_DOCUMENTS, hostile_json, only_refused


class HelloTests(SynchronousTestCase):
    def test_round_trip(self):
        h = Hello(network=network_hash("x"), intent=Intent.PROBE, role="client",
                  observed=Address.parse("tcp:1.2.3.4:5"), listeners=(Address.parse("tcp:5.6.7.8:9"),))
        encoded = h.encode()
        self.assertEqual(Hello.decode(encoded[5:]), h)

    def test_rejects_bad_payloads(self):
        base = {"proto": "crust", "version": 1, "min_version": 1, "network": "ab"}
        bad = [
            b"\xff", b"[]", b"{}",
            json.dumps({**base, "proto": "http"}).encode(),
            json.dumps({**base, "version": "1"}).encode(),
            json.dumps({**base, "network": 5}).encode(),
            json.dumps({**base, "observed": "nonsense"}).encode(),
            json.dumps({**base, "listeners": ["tcp:1.2.3.4:5"] * 65}).encode(),
            b"{" + b" " * 20000 + b"}",
        ]
        for payload in bad:
            self.assertRaises(ProtocolViolation, Hello.decode, payload)

    def test_signed_flag(self):
        h = Hello(network="ab", signed=True)
        self.assertIn(b'"signed":true', h.encode())
        self.assertTrue(Hello.decode(h.encode()[5:]).signed)
        self.assertFalse(Hello.decode(Hello(network="ab").encode()[5:]).signed)  # an older crust says nothing
        base = {"proto": "crust", "version": 1, "network": "ab"}
        self.assertRaises(ProtocolViolation, Hello.decode, json.dumps({**base, "signed": 1}).encode())

    def test_unknown_intent_decodes_as_none(self):
        h = Hello.decode(json.dumps({"proto": "crust", "version": 1, "network": "ab", "intent": "relay"}).encode())
        self.assertIsNone(h.intent)

    def test_network_hash_differs(self):
        self.assertNotEqual(network_hash(None), network_hash("a"))
        self.assertEqual(network_hash(None), network_hash(""))

    def test_versions(self):
        self.assertEqual(negotiate_version((1, 1), (1, 3)), 1)
        self.assertEqual(negotiate_version((1, 4), (2, 3)), 3)
        self.assertIsNone(negotiate_version((1, 1), (2, 3)))

    def test_reason(self):
        self.assertEqual(decode_reason(encode_reject(RejectReason.WRONG_PEER, "x")[5:], "REJECT"), ("wrong-peer", "x"))
        self.assertRaises(ProtocolViolation, decode_reason, b'{"detail":"x"}', "REJECT")


class CertInfoTests(SynchronousTestCase):
    def test_round_trip(self):
        info = CertInfo(network=network_hash("x"), version=3, min_version=2, role="client")
        self.assertEqual(CertInfo.decode(info.encode()), info)

    def test_rejects_bad_payloads(self):
        for payload in (b"[]", b"not json", b'{"proto": "other", "version": 1, "min_version": 1, "network": "a"}',
                        b'{"proto": "crust", "version": -1, "min_version": 1, "network": "a"}',
                        b'{"proto": "crust", "version": true, "min_version": 1, "network": "a"}',
                        b'{"proto": "crust", "version": 1, "min_version": 1, "network": 5}',
                        b'{"proto": "crust", "version": 1, "min_version": 1, "network": "a", "role": ["x"]}'):
            self.assertRaises(ProtocolViolation, CertInfo.decode, payload)


_HELLO = {"proto": "crust", "version": 1, "min_version": 1, "network": "ab", "intent": "connect",
          "role": "node", "listeners": ["tcp:1.2.3.4:5"], "observed": "tcp:5.6.7.8:9"}
_REASON = {"reason": "shutdown", "detail": "bye"}
_DECODERS = [
    (Hello.decode, _HELLO),
    (CertInfo.decode, {k: _HELLO[k] for k in ("proto", "version", "min_version", "network", "role")}),
    (lambda payload: decode_reason(payload, "REJECT"), _REASON),
    (lambda payload: decode_reason(payload, "CLOSE"), _REASON),
]


class HostileJsonTests(SynchronousTestCase):
    """HELLO, REJECT, CLOSE and certificate info refuse hostile JSON with a ProtocolViolation, quickly."""

    def test_hostile_documents(self):
        for decoder, _ in _DECODERS:
            for payload in HOSTILE_DOCUMENTS:
                only_refused(self, lambda: decoder(payload), ProtocolViolation)

    def test_deep_nesting_is_a_violation(self):
        """It used to be a RecursionError, which escaped as an unhandled error and closed without a reason."""
        for payload in (b"[" * 16000, b'{"a":' * 3000,
                        b'{"proto": "crust", "version": 1, "network": "ab", "x": ' + b"[" * 20 + b"]" * 20 + b"}"):
            for decoder, _ in _DECODERS:
                e = self.assertRaises(ProtocolViolation, decoder, payload)
                self.assertTrue("nested deeper" in str(e) or "arrays and objects" in str(e), str(e))

    def test_huge_version_number_is_named(self):
        """A 5000-digit version number is 'number too long', not 'not UTF-8 JSON'."""
        payload = json.dumps(dict(_HELLO, version=0)).replace('"version": 0', '"version": ' + "9" * 5000).encode()
        e = self.assertRaises(ProtocolViolation, Hello.decode, payload)
        self.assertIn("number too long", str(e))
        self.assertIn("HELLO", str(e))

    def test_nan_and_repeated_keys_are_violations(self):
        for payload, fragment in ((b'{"proto": "crust", "version": NaN, "network": "ab"}', "NaN"),
                                  (b'{"proto": "crust", "version": 1e999, "network": "ab"}', "out of range"),
                                  (b'{"proto": "crust", "proto": "crust", "version": 1, "network": "ab"}', "repeated")):
            e = self.assertRaises(ProtocolViolation, Hello.decode, payload)
            self.assertIn(fragment, str(e))

    @examples(200)
    @given(st.data())
    def test_hostile(self, data):
        decoder, base = data.draw(st.sampled_from(_DECODERS))
        payload = data.draw(hostile_json(base))
        only_refused(self, lambda: decoder(payload), ProtocolViolation)
