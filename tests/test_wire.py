import json

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
