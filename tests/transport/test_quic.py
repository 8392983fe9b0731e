"""
crust's QUIC driver on a Clock: dispatchers joined by an in-memory network,
so handshakes, losses, timers, migration and closes run deterministically.
"""

from __future__ import annotations

import datetime
import gc
import random
import ssl
import struct

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from crust.session.connection import PeerConnection
from crust.errors import ConfigError, HandshakeRefused
from crust.identity import Identity
from crust.transport.quic.dispatcher import (
    QuicConnectionDone,
    QuicConnectionLost,
    QuicDispatcher,
    QuicOptions,
    TooManyConnections,
    is_quic,
)
from crust.transport.quic.tls import ALPN, CrustQuicConnection, check_aioquic
from crust.transport.tls import make_certificate
from crust.wire import Hello, network_hash

START = 1000.0


class Network:
    """
    UDP between dispatchers, in memory, on a Clock.  Datagrams arrive after
    C{delay} seconds unless C{drop(data, src, dst)} says otherwise.
    """

    def __init__(self, clock: Clock, delay: float = 0.005) -> None:
        self.clock = clock
        self.delay = delay
        self.nodes: dict[tuple, "Node"] = {}
        self.drop = lambda data, src, dst: False
        self.log: list[tuple[tuple, tuple, int]] = []  # (src, dst, size) of every datagram sent
        self.rate: float | None = None  # bytes per second each way, with a drop-tail queue
        self.queue_limit = 0
        self._busy_until: dict[tuple, float] = {}
        self.queue_drops = 0

    def limit(self, rate: float, queue_limit: int) -> None:
        """From now on each direction carries C{rate} bytes/s and queues at most C{queue_limit} bytes."""
        self.rate = rate
        self.queue_limit = queue_limit

    def node(self, addr, identity=None, accept=True, **options) -> "Node":
        node = Node(self, addr, identity or Identity.generate(), accept, QuicOptions(**options))
        self.nodes[addr] = node
        return node

    def rebind(self, node: "Node", addr) -> None:
        """The node's address changes (a NAT rebinding): datagrams to the old one go nowhere."""
        del self.nodes[node.addr]
        node.addr = addr
        self.nodes[addr] = node

    def send(self, src, data: bytes, dst) -> bool:
        dst = tuple(dst)
        self.log.append((src, dst, len(data)))
        if self.drop(data, src, dst):
            return True
        delay = self.delay
        if self.rate is not None:
            now = self.clock.seconds()
            busy = max(now, self._busy_until.get((src, dst), now))
            if (busy - now) * self.rate + len(data) > self.queue_limit:
                self.queue_drops += 1
                return True
            busy += len(data) / self.rate
            self._busy_until[(src, dst)] = busy
            delay += busy - now
        self.clock.callLater(delay, self._deliver, data, src, dst)
        return True

    def _deliver(self, data, src, dst) -> None:
        node = self.nodes.get(dst)
        if node is not None:
            node.dispatcher.datagram_received(data, src)

    def run(self, until=lambda: False, seconds: float = 30.0, max_steps: int = 1_000_000) -> int:
        """Advance the clock call by call until C{until()} or C{seconds} passed; the number of steps."""
        clock = self.clock
        end = clock.seconds() + seconds
        steps = 0
        while not until():
            calls = clock.getDelayedCalls()
            if not calls:
                break
            due = min(c.getTime() for c in calls)
            if due > end:
                break
            clock.advance(max(0.0, due - clock.seconds()))
            steps += 1
            if steps >= max_steps:
                raise AssertionError(f"still busy after {steps} steps at t={clock.seconds() - START:.3f}")
        if clock.seconds() < end and not until():
            clock.advance(end - clock.seconds())
        return steps


class Node:
    def __init__(self, network: Network, addr, identity: Identity, accept: bool, options: QuicOptions) -> None:
        self.network = network
        self.addr = addr
        self.identity = identity
        self.accepted: list = []
        self.protocols: list["Recorder"] = []
        self.dispatcher = QuicDispatcher(
            identity, self.send, clock=network.clock, options=options,
            accepted=self._accepted if accept else None,
            host=lambda: IPv4Address("UDP", *self.addr),
        )

    @property
    def peer_id(self):
        return self.identity.peer_id

    def send(self, data, dst):
        return self.network.send(self.addr, data, dst)

    def _accepted(self, driver) -> None:
        self.accepted.append(driver)
        protocol = Recorder()
        self.protocols.append(protocol)
        driver.attach(protocol, bulk_receiver=protocol.bulk)


class Recorder(Protocol):
    """Collects what arrives on both lanes."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost = None
        self.handshakes = 0
        self.bulk = BulkRecorder()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def handshakeCompleted(self) -> None:
        self.handshakes += 1

    def connectionLost(self, reason) -> None:
        self.lost = reason


class BulkRecorder:
    def __init__(self) -> None:
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.paused = False
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def results(d) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


class QuicTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.net = Network(self.clock)
        self.nodes()

    def nodes(self, client: dict | None = None, server: dict | None = None) -> None:
        """(Re)make node a (connects) and node b (accepts) with these QuicOptions."""
        self.a = self.net.node(("10.0.0.1", 4001), accept=False, **(client or {}))
        self.b = self.net.node(("10.0.0.2", 4002), **(server or {}))

    def connect(self, expected="b", attach=True):
        """Connect a to b; returns (client driver, client protocol, server driver, server protocol)."""
        expected_peer = self.b.peer_id if expected == "b" else expected
        out = results(self.a.dispatcher.connect(self.b.addr, expected_peer))
        self.net.run(lambda: out and self.b.accepted, seconds=5)
        self.assertTrue(out, "the connect Deferred did not fire")
        if not hasattr(out[0], "attach"):
            out[0].raiseException()
        client = out[0]
        protocol = Recorder()
        if attach:
            client.attach(protocol, bulk_receiver=protocol.bulk)
        self.assertEqual(len(self.b.accepted), 1)
        return client, protocol, self.b.accepted[0], self.b.protocols[0]

    def assertDrained(self, *nodes) -> None:
        for node in nodes or (self.a, self.b):
            self.assertEqual(node.dispatcher.stats()["connections"], 0)
            self.assertEqual(node.dispatcher.stats()["connection_ids"], 0)


class IdentityTests(QuicTestCase):
    def test_aioquic_compatible(self):
        """
        The aioquic internals crust relies on are there, and a server
        connection requests client certificates (doc/quic.md explains the
        pin: if this fails after an aioquic upgrade, mutual TLS is broken).
        """
        check_aioquic()
        broken = "aioquic no longer requests client certificates: crust's mutual TLS is broken (doc/quic.md)"
        out = results(self.a.dispatcher.connect(self.b.addr, self.b.peer_id))
        self.net.run(lambda: self.b.dispatcher.drivers, seconds=1)
        server = self.b.dispatcher.drivers[0]
        self.assertIs(server.quic.tls._request_client_certificate, True, broken)
        self.net.run(lambda: out and self.b.accepted, seconds=5)
        self.assertEqual([d.peer_id for d in self.b.accepted], [self.a.peer_id], broken)
        self.assertIs(out[0].quic.tls._request_client_certificate, False)

    def test_handshake_both_sides_learn_peer_ids(self):
        client, cproto, server, sproto = self.connect()
        self.assertEqual(client.peer_id, self.b.peer_id)
        self.assertEqual(server.peer_id, self.a.peer_id)  # only from the client's certificate
        self.assertEqual(cproto.handshakes, 1)
        self.assertEqual(sproto.handshakes, 1)
        lane = cproto.transport
        self.assertIs(lane, client.urgent)
        self.assertEqual(lane.getPeer(), IPv4Address("UDP", "10.0.0.2", 4002))
        self.assertEqual(lane.getHost(), IPv4Address("UDP", "10.0.0.1", 4001))
        self.assertEqual(sproto.transport.getPeer(), IPv4Address("UDP", "10.0.0.1", 4001))
        cert = lane.getPeerCertificate().to_cryptography()
        self.assertEqual(cert.public_key().public_bytes_raw(), self.b.peer_id.raw)
        self.assertEqual(client.quic.tls.alpn_negotiated, ALPN)
        stats = client.stats()
        self.assertEqual((stats["peer"], stats["side"], stats["address"]),
                         (str(self.b.peer_id), "client", "10.0.0.2:4002"))
        self.assertGreater(stats["datagrams_received"], 0)
        self.assertEqual(self.b.dispatcher.counters["accepted"], 1)

    def test_connect_without_expected_peer_reports_the_key(self):
        client, _, _, _ = self.connect(expected=None)
        self.assertEqual(client.peer_id, self.b.peer_id)

    def test_wrong_expected_peer_aborts_with_reason(self):
        other = Identity.generate().peer_id
        out = results(self.a.dispatcher.connect(self.b.addr, other))
        self.net.run(lambda: out, seconds=5)
        error = out[0].value
        self.assertIsInstance(error, HandshakeRefused)
        self.assertEqual(error.reason, "wrong-peer")
        self.assertIn(str(other), error.detail)
        self.assertIn(str(self.b.peer_id), error.detail)
        self.net.run(seconds=5)
        self.assertEqual(self.b.accepted, [])
        self.assertEqual(self.b.dispatcher.counters["handshake_failures"], 1)
        self.assertDrained()

    def _raw_client(self, **configuration):
        settings = dict(alpn_protocols=[ALPN], is_client=True, verify_mode=ssl.CERT_NONE)
        settings.update(configuration)
        quic = CrustQuicConnection(configuration=QuicConfiguration(**settings))
        return self.a.dispatcher._connect(quic, self.b.addr, None)

    def _refused_by_server(self, d, text):
        out = results(d)
        self.net.run(lambda: out, seconds=5)
        if hasattr(out[0], "attach"):  # the client's half completed: the refusal follows
            protocol = out[0].attach(Recorder())
            self.net.run(lambda: protocol.lost, seconds=5)
            reason = protocol.lost.value
        else:
            reason = out[0].value
        self.assertIn(text, str(reason))
        self.net.run(seconds=5)
        self.assertEqual(self.b.accepted, [])
        self.assertEqual(self.b.dispatcher.counters["handshake_failures"], 1)
        self.assertDrained()
        return reason

    def test_client_without_certificate_refused(self):
        reason = self._refused_by_server(self._raw_client(), "no-certificate")
        self.assertIsInstance(reason, QuicConnectionLost)
        self.assertTrue(reason.by_peer)
        self.assertIn("the client presented no certificate", str(reason))

    def test_client_signing_with_another_key_refused(self):
        """aioquic checks the client's CertificateVerify against its certificate's key."""
        victim = Identity.generate()
        impostor = Ed25519PrivateKey.generate()
        d = self._raw_client(certificate=make_certificate(victim), private_key=impostor)
        reason = self._refused_by_server(d, "closed the connection")
        self.assertNotIsInstance(reason, QuicConnectionDone)

    def test_certificate_chain_refused(self):
        identity = Identity.generate()
        d = self._raw_client(certificate=make_certificate(identity),
                             certificate_chain=[make_certificate(Identity.generate())],
                             private_key=Ed25519PrivateKey.from_private_bytes(identity.seed))
        self._refused_by_server(d, "certificate chain")

    def test_non_ed25519_key_refused(self):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-crust")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(1).not_valid_before(datetime.datetime(2000, 1, 1))
                .not_valid_after(datetime.datetime(2100, 1, 1)).sign(key, hashes.SHA256()))
        self._refused_by_server(self._raw_client(certificate=cert, private_key=key), "not Ed25519")

    def test_other_alpn_refused(self):
        identity = Identity.generate()
        d = self._raw_client(alpn_protocols=["h3"], certificate=make_certificate(identity),
                             private_key=Ed25519PrivateKey.from_private_bytes(identity.seed))
        out = results(d)
        self.net.run(lambda: out, seconds=5)
        self.assertIsInstance(out[0].value, QuicConnectionLost)
        self.assertIn("TLS alert 120", str(out[0].value))  # no_application_protocol
        self.assertEqual(self.b.accepted, [])


class TimerTests(QuicTestCase):
    def test_handshake_survives_dropped_datagrams(self):
        """The first datagrams are lost: aioquic's retransmission timers recover."""
        dropped = []

        def drop(data, src, dst):
            if len(dropped) < 4:
                dropped.append(src)
                return True
            return False

        self.net.drop = drop
        client, _, server, _ = self.connect()
        self.assertEqual(len(dropped), 4)
        self.assertGreater(self.clock.seconds() - START, 0.2)  # waited out a probe timeout
        self.assertEqual(server.peer_id, self.a.peer_id)

    def test_data_intact_over_a_lossy_link(self):
        client, _, _, sproto = self.connect()
        count = [0]

        def drop(data, src, dst):
            count[0] += 1
            return count[0] % 7 == 0

        self.net.drop = drop
        payload = random.Random(7).randbytes(300_000)
        for i in range(0, len(payload), 1000):
            client.urgent.write(payload[i : i + 1000])
        self.net.run(lambda: len(sproto.received) == len(payload), seconds=60)
        self.assertEqual(bytes(sproto.received), payload)
        self.assertGreater(count[0] // 7, 10)

    def test_handshake_timeout(self):
        self.net.drop = lambda data, src, dst: src == self.b.addr  # the server is unreachable
        out = results(self.a.dispatcher.connect(self.b.addr, self.b.peer_id))
        self.net.run(lambda: out, seconds=30)
        self.assertIsInstance(out[0].value, QuicConnectionLost)
        self.assertIn("timeout: QUIC handshake not complete after 10 s", str(out[0].value))
        self.assertTrue(10 <= self.clock.seconds() - START < 10.01, self.clock.seconds() - START)
        self.net.run(seconds=60)
        self.assertDrained()

    def test_cancelling_connect_aborts(self):
        self.net.drop = lambda data, src, dst: True
        d = self.a.dispatcher.connect(self.b.addr, self.b.peer_id)
        out = results(d)
        d.cancel()
        self.assertIsInstance(out[0].value, CancelledError)
        self.net.run(seconds=30)
        self.assertDrained(self.a)

    def test_idle_connection_times_out_without_keepalive(self):
        self._short_idle(keepalive=None)
        client, cproto, server, sproto = self.connect()
        began = self.clock.seconds()
        self.net.run(lambda: cproto.lost and sproto.lost, seconds=60)
        self.assertIn("QUIC idle timeout", str(cproto.lost.value))
        self.assertIn("QUIC idle timeout", str(sproto.lost.value))
        self.assertTrue(30 <= self.clock.seconds() - began < 30.5, self.clock.seconds() - began)
        self.assertDrained()

    def test_silent_peer_times_out_despite_keepalive(self):
        self._short_idle(keepalive=10)
        client, cproto, server, sproto = self.connect()
        self.net.drop = lambda data, src, dst: src == self.b.addr  # b goes silent
        began = self.clock.seconds()
        self.net.run(lambda: cproto.lost, seconds=60)
        self.assertIn("QUIC idle timeout", str(cproto.lost.value))
        # sending the first PING after the last receipt restarts the idle timer (RFC 9000 section 10.1)
        self.assertLess(self.clock.seconds() - began, 30 + 10 + 1)
        self.assertGreater(client.counters["keepalives"], 0)

    def _short_idle(self, keepalive):
        options = dict(idle_timeout=30, keepalive_interval=keepalive)
        self.nodes(options, options)

    def test_keepalive_keeps_an_idle_connection_open(self):
        self._short_idle(keepalive=10)
        client, cproto, server, sproto = self.connect()
        self.net.run(seconds=300)
        self.assertIsNone(cproto.lost)
        self.assertIsNone(sproto.lost)
        self.assertGreaterEqual(client.counters["keepalives"] + server.counters["keepalives"], 15)
        self.assertGreater(client.counters["keepalives_acked"], 0)
        client.urgent.write(b"still here")
        self.net.run(lambda: sproto.received, seconds=1)
        self.assertEqual(bytes(sproto.received), b"still here")

    def test_no_keepalive_while_traffic_flows(self):
        self._short_idle(keepalive=10)
        client, cproto, server, sproto = self.connect()
        for _ in range(20):
            client.urgent.write(b"tick")
            server.urgent.write(b"tock")
            self.net.run(seconds=5)
        self.assertEqual(client.counters["keepalives"], 0)
        self.assertEqual(server.counters["keepalives"], 0)

    def test_no_busy_loop_when_idle(self):
        client, _, server, _ = self.connect()
        self.net.run(seconds=5)
        steps = self.net.run(seconds=120)
        self.assertLess(steps, 80)  # per 15 s: a keepalive, its delivery, ACK timers, the ACK
        self.assertLessEqual(len(self.clock.getDelayedCalls()), 6)


class StreamTests(QuicTestCase):
    def test_ten_thousand_small_writes_arrive_in_order(self):
        client, cproto, server, sproto = self.connect()
        rng = random.Random(1)
        urgent = [struct.pack("!I", i) + bytes(rng.randrange(0, 60)) for i in range(10_000)]
        bulk = [struct.pack("!I", i) * rng.randrange(1, 20) for i in range(10_000)]
        for u, b in zip(urgent, bulk):
            client.urgent.write(u)
            client.bulk.write(b)
        answer = [b"%d," % i for i in range(10_000)]
        for piece in answer:
            server.urgent.write(piece)
        self.net.run(lambda: len(sproto.bulk.received) == sum(map(len, bulk))
                     and len(sproto.received) == sum(map(len, urgent))
                     and len(cproto.received) == sum(map(len, answer)), seconds=60)
        self.assertEqual(bytes(sproto.received), b"".join(urgent))
        self.assertEqual(bytes(sproto.bulk.received), b"".join(bulk))
        self.assertEqual(bytes(cproto.received), b"".join(answer))

    def test_write_sequence_and_memoryview(self):
        client, _, _, sproto = self.connect()
        client.urgent.writeSequence([b"a", b"b", b"c"])
        client.urgent.write(memoryview(b"def"))
        client.urgent.write(b"")
        self.net.run(lambda: len(sproto.received) == 6, seconds=5)
        self.assertEqual(bytes(sproto.received), b"abcdef")

    def test_backpressure_pauses_and_resumes_the_producer(self):
        self.nodes(dict(high_water=64 * 1024, low_water=16 * 1024))
        client, _, _, sproto = self.connect()
        lane = client.urgent
        producer = Producer()
        lane.registerProducer(producer, True)
        self.assertRaises(RuntimeError, lane.registerProducer, Producer(), True)
        written = 0
        chunk = b"x" * 4096
        while not producer.paused:
            lane.write(chunk)
            written += len(chunk)
        self.assertEqual(producer.events, ["pause"])
        self.assertGreater(lane.unsent, 64 * 1024)
        self.assertLessEqual(written, 64 * 1024 + 4096)
        self.net.run(lambda: not producer.paused, seconds=10)
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertLessEqual(lane.unsent, 16 * 1024)
        self.net.run(lambda: len(sproto.received) == written, seconds=10)
        self.assertEqual(len(sproto.received), written)
        lane.unregisterProducer()
        self.assertIsNone(lane.producer)

    def test_lanes_have_separate_backpressure(self):
        self.nodes(dict(high_water=64 * 1024, low_water=16 * 1024))
        client, _, _, _ = self.connect()
        urgent, bulk = Producer(), Producer()
        client.urgent.registerProducer(urgent, True)
        client.bulk.registerProducer(bulk, True)
        client.bulk.write(b"y" * 200_000)
        self.assertTrue(bulk.paused)
        self.assertFalse(urgent.paused)
        client.urgent.write(b"z" * 1000)
        self.assertFalse(urgent.paused)

    def test_urgent_lane_not_delayed_by_bulk(self):
        """A priority-0 message overtakes megabytes queued on the bulk lane."""
        client, _, _, sproto = self.connect()
        self.net.limit(rate=1_000_000, queue_limit=50_000)  # 1 MB/s, 50 ms of queue
        bulk = random.Random(4).randbytes(2_000_000)
        client.bulk.write(bulk)
        self.net.run(seconds=0.5)
        sent_at = self.clock.seconds()
        client.urgent.write(b"urgent!")
        self.net.run(lambda: sproto.received, seconds=60)
        self.assertEqual(bytes(sproto.received), b"urgent!")
        self.assertLess(self.clock.seconds() - sent_at, 0.2)  # not the 1.5 s the rest of bulk takes
        self.assertLess(len(sproto.bulk.received), len(bulk) // 2)
        self.net.run(lambda: len(sproto.bulk.received) == len(bulk), seconds=120)
        self.assertEqual(bytes(sproto.bulk.received), bulk)

    def test_reading_pause_holds_data(self):
        client, _, server, sproto = self.connect()
        server.urgent.pauseProducing()
        client.urgent.write(b"held")
        self.net.run(seconds=1)
        self.assertEqual(sproto.received, b"")
        self.assertEqual(server.urgent.buffered_in, 4)
        server.urgent.resumeProducing()
        self.net.run(seconds=0.01)
        self.assertEqual(bytes(sproto.received), b"held")

    def test_reading_pause_is_bounded(self):
        self.nodes(server=dict(max_receive_buffer=100_000))
        client, cproto, server, sproto = self.connect()
        server.urgent.pauseProducing()
        client.urgent.write(b"h" * 150_000)
        self.net.run(lambda: cproto.lost, seconds=10)
        self.assertIn("protocol error", str(cproto.lost.value))
        self.assertIn("not reading", str(sproto.lost.value))

    def test_data_before_attach_is_kept(self):
        client, _, _, _ = self.connect(attach=False)
        self.b.accepted[0].urgent.write(b"early")
        self.net.run(seconds=1)
        protocol = client.attach(Recorder())
        self.net.run(seconds=0.01)
        self.assertEqual(bytes(protocol.received), b"early")

    def test_bulk_data_without_bulk_receiver_is_a_protocol_error(self):
        client, cproto, server, sproto = self.connect(attach=False)
        protocol = client.attach(Recorder())  # no bulk receiver on this side
        server.bulk.write(b"bulk")
        self.net.run(lambda: protocol.lost, seconds=5)
        self.assertIn("bulk stream", str(protocol.lost.value))
        self.net.run(lambda: sproto.lost, seconds=5)
        self.assertIn("protocol error", str(sproto.lost.value))

    def test_unknown_unidirectional_stream_is_a_protocol_error(self):
        client, cproto, server, sproto = self.connect()
        client.quic.send_stream_data(10, b"a third lane")
        client.schedule_flush()
        self.net.run(lambda: cproto.lost and sproto.lost, seconds=5)
        self.assertIn("stream 10", str(sproto.lost.value))
        self.assertTrue(cproto.lost.value.by_peer)
        self.assertIn("protocol error", str(cproto.lost.value))


class AppReceiver:
    """Collects the events of one application stream (QuicAppStream.receiver)."""

    def __init__(self, app=None, consume=True) -> None:
        self.app = app
        self.consume = consume
        self.received = bytearray()
        self.events: list = []
        if app is not None:
            app.receiver = self

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.consume:
            self.app.consumed(len(data))

    def fin_received(self) -> None:
        self.events.append("fin")

    def reset_received(self, code: int) -> None:
        self.events.append(("reset", code))

    def fin_sent(self) -> None:
        self.events.append("fin sent")

    def drained(self) -> None:
        self.events.append("drained")


class AppStreamTests(QuicTestCase):
    """Bidirectional application streams (crust's byte streams over QUIC)."""

    def accept_into(self, driver, receivers: list, consume=True):
        driver.set_stream_acceptor(lambda app: receivers.append(AppReceiver(app, consume)))

    def test_streams_both_ways_with_fin(self):
        client, cproto, server, sproto = self.connect()
        accepted: list = []
        self.accept_into(server, accepted)
        payloads = [random.Random(i).randbytes(100_000 * (i + 1)) for i in range(3)]
        ours = []
        for payload in payloads:
            app = client.open_stream()
            ours.append(AppReceiver(app))
            app.write(payload)
            app.end()
        self.assertEqual(len({app.app.stream_id for app in ours}), 3)  # each open is a new stream
        self.net.run(lambda: len(accepted) == 3 and all("fin" in r.events for r in accepted), seconds=10)
        self.assertEqual([bytes(r.received) for r in accepted], payloads)
        self.assertEqual(["fin sent"], ours[0].events)
        for r in accepted:  # answer on the same stream
            r.app.write(b"reply %d" % len(r.received))
            r.app.end()
        self.net.run(lambda: all("fin" in r.events for r in ours), seconds=5)
        self.assertEqual([bytes(r.received) for r in ours], [b"reply %d" % len(p) for p in payloads])
        self.assertIsNone(cproto.lost)

    def test_streams_opened_before_the_acceptor_are_held(self):
        client, cproto, server, sproto = self.connect()
        app = client.open_stream()
        AppReceiver(app)
        app.write(b"early")
        self.net.run(seconds=1)
        accepted: list = []
        self.accept_into(server, accepted)
        self.net.run(lambda: accepted and accepted[0].received, seconds=1)
        self.assertEqual(bytes(accepted[0].received), b"early")

    def test_too_many_held_streams_is_a_protocol_error(self):
        from crust.transport.quic.driver import MAX_HELD_STREAMS

        client, cproto, server, sproto = self.connect()
        for _ in range(MAX_HELD_STREAMS + 1):
            client.open_stream().write(b"x")
        self.net.run(lambda: sproto.lost, seconds=5)
        self.assertIn("nobody took", str(sproto.lost.value))

    def test_a_reader_that_does_not_consume_stops_its_sender(self):
        client, cproto, server, sproto = self.connect()
        accepted: list = []
        self.accept_into(server, accepted, consume=False)
        window = server.quic.stream_window
        app = client.open_stream()
        AppReceiver(app)
        app.write(b"x" * (4 * window))
        other = client.open_stream()
        AppReceiver(other)
        other.write(b"y" * (2 * window))
        self.net.run(seconds=5)
        stalled, flowing = accepted
        self.assertEqual(len(stalled.received), window)  # its window, and not a byte more
        self.assertEqual(len(flowing.received), window)
        flowing.app.consumed(len(flowing.received))  # the other reader reads: only its stream goes on
        self.net.run(seconds=5)
        self.assertEqual(len(flowing.received), 2 * window)
        self.assertEqual(len(stalled.received), window)
        stalled.app.consumed(window)
        self.net.run(seconds=5)
        self.assertEqual(len(stalled.received), 2 * window)

    def test_drained_after_the_data_went_out(self):
        client, cproto, server, sproto = self.connect()
        accepted: list = []
        self.accept_into(server, accepted)
        app = client.open_stream()
        mine = AppReceiver(app)
        app.write(b"z" * 3_000_000)
        app.notify_drain = True
        client._app_drain.add(app)
        self.assertGreater(app.unsent, client.options.low_water)
        self.net.run(lambda: "drained" in mine.events, seconds=10)
        self.assertLessEqual(app.unsent, client.options.low_water)

    def test_reset_both_ways(self):
        client, cproto, server, sproto = self.connect()
        accepted: list = []
        self.accept_into(server, accepted)
        app = client.open_stream()
        mine = AppReceiver(app)
        app.write(b"data")
        self.net.run(lambda: accepted and accepted[0].received, seconds=2)
        app.reset(7)
        self.net.run(lambda: accepted[0].events, seconds=2)
        self.assertEqual(accepted[0].events, [("reset", 7)])
        second = client.open_stream()
        theirs = AppReceiver(second)
        second.write(b"more")
        self.net.run(lambda: len(accepted) == 2 and accepted[1].received, seconds=2)
        accepted[1].app.reset(3)
        self.net.run(lambda: theirs.events, seconds=2)
        self.assertEqual(theirs.events, [("reset", 3)])
        self.assertEqual(mine.events, [])  # a reset of ours is not reported back to us
        self.assertIsNone(cproto.lost)
        self.assertIsNone(sproto.lost)

    def test_peer_may_open_more_than_aioquic_default_streams(self):
        client, cproto, server, sproto = self.connect()
        accepted: list = []
        self.accept_into(server, accepted)
        apps = [client.open_stream() for _ in range(300)]
        for app in apps:
            AppReceiver(app)
            app.write(b"hello")
        self.net.run(lambda: len(accepted) == 300, seconds=10)
        self.assertIsNone(sproto.lost)
        self.assertEqual(len(accepted), 300)


class CloseTests(QuicTestCase):
    def test_lose_connection_delivers_everything_then_closes_cleanly(self):
        client, cproto, server, sproto = self.connect()
        payload = random.Random(3).randbytes(200_000)
        client.urgent.write(payload)
        client.bulk.write(payload[:5000])
        server.urgent.write(b"reply")
        client.urgent.loseConnection()
        client.urgent.write(b"after close: dropped")
        self.net.run(lambda: cproto.lost and sproto.lost, seconds=10)
        self.assertEqual(bytes(sproto.received), payload)
        self.assertEqual(bytes(sproto.bulk.received), payload[:5000])
        self.assertEqual(bytes(cproto.received), b"reply")
        self.assertTrue(cproto.lost.check(ConnectionDone))
        self.assertTrue(sproto.lost.check(ConnectionDone))
        self.net.run(seconds=5)
        self.assertDrained()

    def test_abort_tells_the_peer(self):
        client, cproto, server, sproto = self.connect()
        client.urgent.abortConnection()
        self.assertIsNone(cproto.lost)  # like TCP: connectionLost comes later
        self.net.run(lambda: cproto.lost and sproto.lost, seconds=5)
        self.assertIn("aborted", str(cproto.lost.value))
        self.assertFalse(cproto.lost.value.by_peer)
        self.assertIn("the peer closed the connection (aborted", str(sproto.lost.value))
        self.assertFalse(sproto.lost.check(ConnectionDone))
        self.net.run(seconds=5)
        self.assertDrained()

    def test_producers_are_stopped_when_the_connection_ends(self):
        client, cproto, _, _ = self.connect()
        producer = Producer()
        client.urgent.registerProducer(producer, True)
        client.abort_connection("test")
        self.net.run(lambda: cproto.lost, seconds=1)
        self.assertEqual(producer.events, ["stop"])

    def test_the_driver_lets_go_of_its_protocol_once_told(self):
        """As Twisted's transports do: after connectionLost, nothing of the driver refers to the protocol."""
        client, cproto, server, sproto = self.connect()
        client.abort_connection("test")
        self.net.run(lambda: cproto.lost and sproto.lost, seconds=5)
        for driver, protocol in ((client, cproto), (server, sproto)):
            self.assertIsNone(driver.protocol)
            self.assertIsNone(driver.urgent.receiver)
            self.assertIsNone(driver.bulk.receiver)
            self.assertNotIn(protocol, gc.get_referents(driver, driver.urgent, driver.bulk))

    def test_graceful_close_is_bounded(self):
        self.nodes(dict(close_timeout=3))
        client, cproto, server, sproto = self.connect()
        self.net.drop = lambda data, src, dst: src == self.b.addr  # b stops answering
        client.lose_connection()
        began = self.clock.seconds()
        self.net.run(lambda: cproto.lost, seconds=10)
        self.assertIn("timeout: the close did not complete within 3 s", str(cproto.lost.value))
        self.assertTrue(3 <= self.clock.seconds() - began < 3.01)

    def test_attach_after_the_end(self):
        client, _, _, _ = self.connect(attach=False)
        self.b.accepted[0].abort_connection("going away")
        self.net.run(seconds=1)
        self.assertTrue(client.ended)
        protocol = client.attach(Recorder())
        producer = Producer()
        client.urgent.registerProducer(producer, True)
        self.assertEqual(producer.events, ["stop"])
        self.assertEqual(protocol.handshakes, 0)
        self.net.run(seconds=0.01)
        self.assertIn("going away", str(protocol.lost.value))

    def test_close_all(self):
        client, cproto, server, sproto = self.connect()
        self.b.dispatcher.close_all("shutting down")
        self.assertIn("shutting down", str(sproto.lost.value))  # at once: the socket may close next
        self.net.run(lambda: cproto.lost, seconds=5)
        self.assertIn("shutting down", str(cproto.lost.value))


class DispatcherTests(QuicTestCase):
    def test_is_quic(self):
        self.assertFalse(is_quic(b""))
        self.assertFalse(is_quic(b"\x00\x01"))  # STUN
        self.assertFalse(is_quic(b"\x3f"))
        self.assertTrue(is_quic(b"\x40"))
        self.assertTrue(is_quic(b"\xc0"))

    def test_garbage_is_ignored_and_counted(self):
        client, cproto, server, sproto = self.connect()
        dispatcher = self.b.dispatcher
        before = dict(dispatcher.counters)
        rng = random.Random(5)
        src = ("192.0.2.9", 9)
        self.assertFalse(dispatcher.datagram_received(b"\x01" + bytes(40), src))  # not QUIC: not ours
        self.assertFalse(dispatcher.datagram_received(b"", src))
        self.assertTrue(dispatcher.datagram_received(b"\x45" + rng.randbytes(60), src))  # unknown CID
        self.assertTrue(dispatcher.datagram_received(b"\x41\x01", src))  # truncated short header
        self.assertTrue(dispatcher.datagram_received(b"\xc3\x00\x00\x00\x01\x30" + bytes(10), src))  # bad CID length
        initial = b"\xc3\x00\x00\x00\x01\x08" + rng.randbytes(8) + b"\x08" + rng.randbytes(8) + b"\x00\x40\x64"
        self.assertTrue(dispatcher.datagram_received(initial + rng.randbytes(200), src))  # too small
        self.assertTrue(dispatcher.datagram_received(initial + rng.randbytes(1300), src))  # undecryptable Initial
        for cid in list(dispatcher._by_cid):  # right connection id, random contents
            dispatcher.datagram_received(b"\x40" + cid + rng.randbytes(100), src)
        counters = dispatcher.counters
        self.assertEqual(counters["unknown_cid"] - before["unknown_cid"], 1)
        self.assertEqual(counters["malformed"] - before["malformed"], 2)
        self.assertEqual(counters["initial_too_small"] - before["initial_too_small"], 1)
        self.net.run(seconds=12)  # the bogus Initial's connection never completes
        self.assertEqual(len(self.b.accepted), 1)
        client.urgent.write(b"unharmed")
        self.net.run(lambda: sproto.received, seconds=5)
        self.assertEqual(bytes(sproto.received), b"unharmed")
        self.assertIsNone(sproto.lost)

    def test_unsupported_version_gets_version_negotiation(self):
        sent = []
        self.b.dispatcher._send = lambda data, addr: sent.append((data, addr))
        packet = b"\xc0\x0a\x0a\x0a\x0a\x08" + bytes(8) + b"\x08" + bytes(range(8)) + bytes(1200)
        self.assertTrue(self.b.dispatcher.datagram_received(packet, ("192.0.2.9", 9)))
        self.assertEqual(self.b.dispatcher.counters["version_negotiation"], 1)
        (data, addr), = sent
        self.assertEqual(addr, ("192.0.2.9", 9))
        header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        self.assertEqual(header.packet_type, QuicPacketType.VERSION_NEGOTIATION)
        self.assertEqual(header.destination_cid, bytes(range(8)))
        self.assertIn(1, header.supported_versions)
        small = packet[:300]
        self.b.dispatcher.datagram_received(small, ("192.0.2.9", 9))  # never answer small ones: amplification
        self.assertEqual(len(sent), 1)

    def test_connection_limit(self):
        self.nodes(server=dict(max_connections=1))
        self.connect()
        c = self.net.node(("10.0.0.3", 4003), accept=False)
        out = results(c.dispatcher.connect(self.b.addr, self.b.peer_id))
        self.net.run(lambda: out, seconds=15)
        self.assertIsInstance(out[0].value, QuicConnectionLost)
        self.assertGreater(self.b.dispatcher.counters["refused_full"], 0)
        self.assertEqual(len(self.b.accepted), 1)

    def test_connect_limit_on_the_client(self):
        self.nodes(dict(max_connections=1))
        self.connect()
        out = results(self.a.dispatcher.connect(self.b.addr, self.b.peer_id))
        self.assertIsInstance(out[0].value, TooManyConnections)

    def test_not_accepting(self):
        out = results(self.b.dispatcher.connect(self.a.addr, self.a.peer_id))  # a does not accept
        self.net.run(lambda: out, seconds=15)
        self.assertIsInstance(out[0].value, QuicConnectionLost)
        self.assertGreater(self.a.dispatcher.counters["refused_not_accepting"], 0)

    def test_options_are_checked(self):
        self.assertRaises(ConfigError, QuicOptions, low_water=2 << 20)
        self.assertRaises(ConfigError, QuicOptions, idle_timeout=0)
        self.assertRaises(ConfigError, QuicOptions, keepalive_interval=-1)
        self.assertRaises(ConfigError, QuicOptions, max_datagram_size=1000)
        self.assertRaises(ConfigError, QuicOptions, congestion_control="bbr")

    def test_several_connections_routed_apart(self):
        c = self.net.node(("10.0.0.3", 4003), accept=False)
        client, cproto, _, _ = self.connect()
        out = results(c.dispatcher.connect(self.b.addr, self.b.peer_id))
        self.net.run(lambda: out and len(self.b.accepted) == 2, seconds=5)
        other = out[0]
        client.urgent.write(b"from a")
        other.urgent.write(b"from c")
        self.net.run(seconds=1)
        by_peer = {d.peer_id: p for d, p in zip(self.b.accepted, self.b.protocols)}
        self.assertEqual(bytes(by_peer[self.a.peer_id].received), b"from a")
        self.assertEqual(bytes(by_peer[c.peer_id].received), b"from c")

    def test_connection_ids_follow_the_connection(self):
        client, _, server, _ = self.connect()
        self.net.run(seconds=1)
        ids = self.b.dispatcher.stats()["connection_ids"]
        self.assertGreater(ids, 1)  # the original id, ours, and those issued with NEW_CONNECTION_ID
        self.assertEqual(set(self.b.dispatcher._by_cid.values()), {server})


class MigrationTests(QuicTestCase):
    def test_nat_rebinding_keeps_the_connection(self):
        client, cproto, server, sproto = self.connect()
        client.urgent.write(b"before;")
        self.net.run(lambda: sproto.received, seconds=1)
        self.net.rebind(self.a, ("10.0.0.1", 5555))
        client.urgent.write(b"after;")
        server.urgent.write(b"reply")
        self.net.run(lambda: len(sproto.received) == 13 and cproto.received, seconds=10)
        self.assertEqual(bytes(sproto.received), b"before;after;")
        self.assertEqual(bytes(cproto.received), b"reply")
        self.assertEqual(server.peer_address(), IPv4Address("UDP", "10.0.0.1", 5555))
        self.assertEqual(sproto.transport.getPeer(), IPv4Address("UDP", "10.0.0.1", 5555))
        mark = len(self.net.log)
        payload = random.Random(9).randbytes(100_000)
        server.urgent.write(payload)
        self.net.run(lambda: len(cproto.received) == 5 + len(payload), seconds=10)
        self.assertEqual(bytes(cproto.received[5:]), payload)
        destinations = {dst for src, dst, _ in self.net.log[mark:] if src == self.b.addr}
        self.assertEqual(destinations, {("10.0.0.1", 5555)})
        self.assertIsNone(cproto.lost)


class OwnerStub:
    """The parts of a node a PeerConnection asks (like tests/session/test_connection.py's FakeOwner)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.events: list[tuple] = []

    def hello_for(self, conn):
        return Hello(network=network_hash(None))

    def claim(self, conn, peer_id):
        return True

    def promote(self, conn, peer_id):
        self.events.append(("promote", peer_id))
        conn.deliver = self.messages.append

    def control_received(self, conn, ftype, payload):
        return False

    def __getattr__(self, name):
        return lambda conn, *args: self.events.append((name,) + args)


class PeerConnectionTests(QuicTestCase):
    """crust's PeerConnection on QUIC: control and priorities 0-1 on the urgent lane, >= 2 on the bulk lane."""

    def make(self, owner, local, expected, initiator):
        return PeerConnection(owner, self.clock, local_id=local, network=network_hash(None),
                              expected_peer=expected, initiator=initiator, max_message_size=1 << 20,
                              max_queued_bytes=4 << 20, drop_after=60.0, heartbeat_interval=20.0,
                              inactivity_timeout=120.0, handshake_timeout=10.0, transport_name="udp")

    def test_hello_choose_data_close(self):
        client_owner, server_owner = OwnerStub(), OwnerStub()
        self.b.dispatcher._accepted = lambda driver: driver.attach(
            self.make(server_owner, self.b.peer_id, None, False))
        out = results(self.a.dispatcher.connect(self.b.addr, self.b.peer_id))
        self.net.run(lambda: out, seconds=5)
        conn = out[0].attach(self.make(client_owner, self.a.peer_id, self.b.peer_id, True))
        self.net.run(lambda: conn.is_active and server_owner.events, seconds=5)
        self.assertTrue(conn.is_active)
        self.assertEqual(conn.peer_id, self.b.peer_id)
        self.assertEqual(str(conn.peer_address), "udp:10.0.0.2:4002")
        for i in range(100):
            conn.send_message(b"message %d" % i, i % 4)
        self.net.run(lambda: len(server_owner.messages) == 100, seconds=5)
        # priorities 0-1 ride the urgent stream, >= 2 the bulk one: order holds within each
        urgent = [m for m in server_owner.messages if int(m.split()[1]) % 4 < 2]
        bulk = [m for m in server_owner.messages if int(m.split()[1]) % 4 >= 2]
        self.assertEqual(urgent, [b"message %d" % i for i in range(100) if i % 4 < 2])
        self.assertEqual(bulk, [b"message %d" % i for i in range(100) if i % 4 >= 2])
        conn.close_duplicate()
        self.net.run(lambda: any(e[0] == "lost" for e in server_owner.events), seconds=10)
        lost = [e for e in server_owner.events if e[0] == "lost"]
        self.assertIn("duplicate", lost[0][1])
        self.assertTrue(any(e[0] == "lost" for e in client_owner.events))
        self.net.run(seconds=10)
        self.assertDrained()

