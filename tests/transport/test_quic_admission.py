"""
Which QUIC Initials open a connection (hardening, defect 1: 256 undecryptable
Initials from spoofable sources held every connection slot for the 10 s
handshake timeout, and the node's own connects failed): the admission logic
alone on a Clock, then dispatchers on the in-memory network of
L{tests.transport.test_quic}.
"""

from __future__ import annotations

import os
import random

from aioquic.buffer import Buffer
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from crust.errors import ConfigError
from crust.identity import Identity
from crust.transport.quic.admission import ACCEPT, RETRY, FAILURE_RATE, InboundAdmission, Refusal
from crust.transport.quic.dispatcher import QuicConnectionLost, QuicOptions
from crust.transport.quic.tls import CrustQuicConnection, make_configuration
from tests.transport.test_quic import START, QuicTestCase, Recorder, results


class AdmissionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.options = QuicOptions(max_connections=40, retry_threshold=4, max_pending_inbound=8,
                                   max_pending_per_source=2)
        self.admission = InboundAdmission(self.clock, self.options)

    def test_options(self):
        self.assertEqual(QuicOptions().max_inbound, 192)  # a quarter of 256 kept for our own connects
        self.assertEqual(QuicOptions(max_connections=1).max_inbound, 1)
        self.assertEqual(QuicOptions(max_connections=10, outbound_reserve=9).max_inbound, 1)
        for bad in (dict(outbound_reserve=256), dict(outbound_reserve=-1), dict(retry_threshold=65),
                    dict(retry_threshold=-1), dict(max_pending_per_source=0), dict(max_pending_inbound=2.5)):
            self.assertRaises(ConfigError, QuicOptions, **bad)

    def test_unvalidated_get_a_retry_above_the_threshold(self):
        for i in range(4):
            self.assertIs(self.admission.decide(f"192.0.2.{i}", validated=False, inbound=i), ACCEPT)
            self.admission.add(i, f"192.0.2.{i}", False)
        self.assertIs(self.admission.decide("192.0.2.9", validated=False, inbound=4), RETRY)
        self.assertEqual(self.admission.counters["retry_threshold"], 1)
        # a validated address still gets in, up to max_pending_inbound
        for i in range(4, 8):
            self.assertIs(self.admission.decide(f"198.51.100.{i}", validated=True, inbound=i), ACCEPT)
            self.admission.add(i, f"198.51.100.{i}", True)
        refusal = self.admission.decide("198.51.100.99", validated=True, inbound=8)
        self.assertIsInstance(refusal, Refusal)
        self.assertEqual(refusal.kind, "pending")
        self.admission.settle(0)
        self.admission.settle(0)  # idempotent
        self.assertEqual(self.admission.pending, 7)
        self.assertIs(self.admission.decide("198.51.100.99", validated=True, inbound=7), ACCEPT)

    def test_per_source(self):
        for key in ("a", "b"):
            self.assertIs(self.admission.decide("192.0.2.1", validated=False, inbound=0), ACCEPT)
            self.admission.add(key, "192.0.2.1", False)
        self.assertIs(self.admission.decide("192.0.2.1", validated=False, inbound=2), RETRY)
        self.assertEqual(self.admission.counters["retry_source"], 1)
        # the same IP, validated: its unvalidated (maybe spoofed) handshakes do not count against it
        for key in ("c", "d"):
            self.assertIs(self.admission.decide("192.0.2.1", validated=True, inbound=2), ACCEPT)
            self.admission.add(key, "192.0.2.1", True)
        refusal = self.admission.decide("192.0.2.1", validated=True, inbound=4)
        self.assertIsInstance(refusal, Refusal)
        self.assertIn("192.0.2.1", refusal.reason)
        self.assertEqual((self.admission.pending_from("192.0.2.1", False),
                          self.admission.pending_from("192.0.2.1", True)), (2, 2))

    def test_rate_of_failures_from_unvalidated_sources(self):
        options = QuicOptions(retry_threshold=64, max_pending_inbound=64, max_pending_per_source=64)
        admission = InboundAdmission(self.clock, options)
        per_ip_burst = int(FAILURE_RATE[0][1])
        # handshakes that complete cost nothing, however many
        for i in range(per_ip_burst * 5):
            self.assertIs(admission.decide("192.0.2.1", validated=False, inbound=0), ACCEPT, i)
            admission.add(i, "192.0.2.1", False)
            admission.settle(i)
        # Initials that do not decrypt, and handshakes that fail, do
        for i in range(per_ip_burst - 1):
            admission.failed("192.0.2.1")
        admission.add("x", "192.0.2.1", False)
        admission.handshake_failed("x")
        self.assertEqual(admission.pending, 0)
        self.assertIs(admission.decide("192.0.2.1", validated=False, inbound=0), RETRY)
        self.assertEqual(admission.counters["retry_rate"], 1)
        self.assertIs(admission.decide("192.0.2.2", validated=False, inbound=0), ACCEPT)  # another IP
        self.assertIs(admission.decide("192.0.2.1", validated=True, inbound=0), ACCEPT)  # a token proves it
        self.clock.advance(1.0)
        self.assertIs(admission.decide("192.0.2.1", validated=False, inbound=0), ACCEPT)
        # failures from many sources exhaust the total
        for i in range(int(FAILURE_RATE[1][1])):
            admission.failed(f"198.51.100.{i}")
        self.assertIs(admission.decide("203.0.113.7", validated=False, inbound=0), RETRY)
        # a validated source's failed handshake is not counted
        self.clock.advance(10.0)
        admission.add("v", "192.0.2.9", True)
        admission.handshake_failed("v")
        self.assertIs(admission.decide("192.0.2.9", validated=False, inbound=0), ACCEPT)

    def test_inbound_share(self):
        full = self.admission.decide("192.0.2.1", validated=True, inbound=self.options.max_inbound)
        self.assertIsInstance(full, Refusal)
        self.assertEqual(full.kind, "full")
        self.assertIsInstance(self.admission.decide("192.0.2.1", validated=False, inbound=30), Refusal)

    def test_always_retry(self):
        admission = InboundAdmission(self.clock, QuicOptions(retry_threshold=0))
        self.assertIs(admission.decide("192.0.2.1", validated=False, inbound=0), RETRY)
        self.assertIs(admission.decide("192.0.2.1", validated=True, inbound=0), ACCEPT)


def junk_initial(rng: random.Random, size: int = 1250) -> bytes:
    """A QUIC v1 Initial's header, then random bytes: it never decrypts."""
    return (b"\xc3\x00\x00\x00\x01\x08" + rng.randbytes(8) + b"\x08" + rng.randbytes(8) + b"\x00"
            + b"\x44\xc8" + rng.randbytes(size))


def client_initial(to, token: bytes = b"", now: float = START) -> tuple[CrustQuicConnection, bytes]:
    """A real ClientHello in an Initial, from a client that will never answer."""
    identity = Identity.generate()
    quic = CrustQuicConnection(configuration=make_configuration(identity, is_client=True))
    if token:
        quic._peer_token = token
    quic.connect(to, now=now)
    (data, _), *_ = quic.datagrams_to_send(now=now)
    return quic, data


class CaptureLog:
    def __init__(self, testcase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, fragment: str, level_at_least: str = "info") -> list[dict]:
        from twisted.logger import LogLevel, formatEvent

        least = LogLevel.levelWithName(level_at_least)
        return [e for e in self.events if e.get("log_level") is not None and e["log_level"] >= least
                and fragment in formatEvent(e)]


class InitialFloodTests(QuicTestCase):
    def flood(self, count: int, make) -> None:
        dispatcher = self.b.dispatcher
        for i in range(count):
            dispatcher.datagram_received(make(i), (f"203.0.113.{i % 200}", 10000 + i))

    def test_undecryptable_initials_hold_no_slot(self):
        """The defect: 256 junk Initials took 256 slots for 10 s; now they take none, and cost a little each."""
        log = CaptureLog(self)
        rng = random.Random(1)
        self.nodes(server=dict(max_connections=256))
        self.flood(256, lambda i: junk_initial(rng))
        counters = self.b.dispatcher.counters
        self.assertEqual(self.b.dispatcher.stats()["connections"], 0)
        self.assertEqual(counters["undecryptable"] + counters["retries"], 256)
        self.assertGreater(counters["undecryptable"], 0)
        self.assertGreater(counters["retries"], 0)  # past the rate of unvalidated connections: a Retry each
        lines = log.lines("does not decrypt")
        self.assertTrue(1 <= len(lines) <= 3, len(lines))  # one line, at a bounded rate
        self.assertIn("203.0.113.0:10000", str(lines[0]["addr"]))
        # a real peer connects at once, and the node's own connect works
        client, cproto, server, sproto = self.connect()
        client.urgent.write(b"through")
        self.net.run(lambda: sproto.received, seconds=1)
        self.assertEqual(bytes(sproto.received), b"through")
        c = self.net.node(("10.0.0.3", 4003))
        out = results(self.b.dispatcher.connect(c.addr, c.peer_id))
        self.net.run(lambda: out, seconds=5)
        self.assertEqual(out[0].peer_id, c.peer_id)

    def test_valid_initials_from_spoofed_sources_take_few_slots(self):
        """Real ClientHellos from addresses that never answer: a Retry once a few are pending."""
        self.nodes(server=dict(max_connections=256))
        to = self.b.addr
        self.flood(100, lambda i: client_initial(to)[1])
        stats = self.b.dispatcher.stats()
        self.assertLessEqual(stats["connections"], QuicOptions().retry_threshold)
        self.assertEqual(stats["connections"] + stats["retries"], 100)
        # a real peer gets a Retry too, answers it from its address, and connects
        client, cproto, server, sproto = self.connect()
        self.assertEqual(self.b.dispatcher.counters["retries"], stats["retries"] + 1)
        self.assertEqual(server.quic._retry_source_connection_id is not None, True)
        client.urgent.write(b"validated")
        self.net.run(lambda: sproto.received, seconds=1)
        self.assertEqual(bytes(sproto.received), b"validated")
        # the spoofed handshakes time out and free their slots
        self.net.run(seconds=12)
        self.assertEqual(self.b.dispatcher.stats()["pending_inbound"], 0)

    def test_outbound_connects_never_refused_for_inbound(self):
        """Inbound connections hold at most max_inbound: the rest is for the node's own connects."""
        self.nodes(server=dict(max_connections=4, retry_threshold=0))  # inbound: 3
        peers = [self.net.node(("10.0.1.%d" % i, 5000), accept=False) for i in range(4)]
        outs = [results(p.dispatcher.connect(self.b.addr, self.b.peer_id)) for p in peers]
        self.net.run(lambda: all(outs), seconds=15)
        made = [o for o in outs if hasattr(o[0], "attach")]
        self.assertEqual(len(made), 3)
        self.assertIsInstance([o for o in outs if not hasattr(o[0], "attach")][0][0].value, QuicConnectionLost)
        self.assertGreater(self.b.dispatcher.counters["refused_full"], 0)
        c = self.net.node(("10.0.0.3", 4003))
        out = results(self.b.dispatcher.connect(c.addr, c.peer_id))
        self.net.run(lambda: out, seconds=5)
        self.assertEqual(out[0].peer_id, c.peer_id)  # the reserve


class RetryTests(QuicTestCase):
    def test_always_retry_connects_with_one_more_round_trip(self):
        self.nodes(server=dict(retry_threshold=0))
        client, cproto, server, sproto = self.connect()
        self.assertEqual(self.b.dispatcher.counters["retries"], 1)
        self.assertEqual(client.quic._retry_count, 1)
        client.urgent.write(b"after retry")
        self.net.run(lambda: sproto.received, seconds=1)
        self.assertEqual(bytes(sproto.received), b"after retry")
        # the Retry is smaller than the Initial that asked for it: nothing to amplify
        sizes = [size for src, dst, size in self.net.log if src == self.b.addr]
        self.assertLess(sizes[0], 1200)

    def test_token_is_bound_to_the_address(self):
        self.nodes(server=dict(retry_threshold=0))
        sent = []
        self.b.dispatcher._send = lambda data, addr: sent.append((data, addr))
        quic, data = client_initial(self.b.addr)
        self.b.dispatcher.datagram_received(data, ("192.0.2.1", 1000))
        (retry, _), = sent
        header = pull_quic_header(Buffer(data=retry), host_cid_length=8)
        self.assertEqual(header.packet_type, QuicPacketType.RETRY)
        quic.receive_datagram(retry, self.b.addr, now=START)
        (again, _), *_ = quic.datagrams_to_send(now=START)
        self.b.dispatcher.datagram_received(again, ("192.0.2.2", 1000))  # the token, from another address
        self.assertEqual(self.b.dispatcher.counters["invalid_token"], 1)
        self.assertEqual(self.b.dispatcher.stats()["connections"], 0)
        self.b.dispatcher.datagram_received(again, ("192.0.2.1", 1000))  # from its own: a connection
        self.assertEqual(self.b.dispatcher.stats()["connections"], 1)

    def test_forged_and_expired_tokens_are_dropped(self):
        self.nodes(server=dict(retry_threshold=0))
        quic, data = client_initial(self.b.addr, token=os.urandom(40))
        self.b.dispatcher.datagram_received(data, ("192.0.2.1", 1000))
        self.assertEqual(self.b.dispatcher.counters["invalid_token"], 1)
        sent = []
        self.b.dispatcher._send = lambda data, addr: sent.append((data, addr))
        quic, data = client_initial(self.b.addr)
        self.b.dispatcher.datagram_received(data, ("192.0.2.1", 1000))
        quic.receive_datagram(sent[0][0], self.b.addr, now=START)
        (again, _), *_ = quic.datagrams_to_send(now=START)
        self.clock.advance(31)  # aioquic's tokens are good for 30 s
        self.b.dispatcher.datagram_received(again, ("192.0.2.1", 1000))
        self.assertEqual(self.b.dispatcher.counters["invalid_token"], 2)
        self.assertEqual(self.b.dispatcher.stats()["connections"], 0)


class EarlyFailureLogTests(QuicTestCase):
    """Hardening, defect 9 on QUIC: each failed incoming handshake is one line, rate-limited per reason."""

    def test_foreign_certificate_is_one_line(self):
        log = CaptureLog(self)
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        import datetime
        import ssl

        from aioquic.quic.configuration import QuicConfiguration

        from crust.transport.quic.tls import ALPN

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-crust")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(1).not_valid_before(datetime.datetime(2000, 1, 1))
                .not_valid_after(datetime.datetime(2100, 1, 1)).sign(key, hashes.SHA256()))
        quic = CrustQuicConnection(configuration=QuicConfiguration(
            alpn_protocols=[ALPN], is_client=True, verify_mode=ssl.CERT_NONE, certificate=cert, private_key=key))
        out = results(self.a.dispatcher._connect(quic, self.b.addr, None))
        self.net.run(lambda: out, seconds=5)
        if hasattr(out[0], "attach"):
            out[0].attach(Recorder())
        self.net.run(seconds=5)
        lines = [e for e in log.lines("") if e.get("log_namespace", "").startswith("crust.transport.quic")
                 and "10.0.0.1" in str(e.get("addr", e.get("driver", "")))]
        self.assertEqual(len(lines), 1, [e["log_format"] for e in lines])
        self.assertEqual(lines[0]["kind"], "bad-certificate")
        self.assertIn("not Ed25519", lines[0]["reason"])

    def test_handshake_timeout_is_one_line(self):
        log = CaptureLog(self)
        self.net.drop = lambda data, src, dst: src == self.a.addr and self.b.dispatcher.drivers  # a goes silent
        out = results(self.a.dispatcher.connect(self.b.addr, self.b.peer_id))
        self.net.run(seconds=15)
        lines = log.lines("incoming QUIC handshake from 10.0.0.1:4001 failed")
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["kind"], "timeout")
        self.assertTrue(out)
