"""
Tests for L{crust.metrics}: the label helpers, the observers' opt-out of
messages, and a service's metrics as Prometheus scrapes them over HTTP on
127.0.0.1 while real things happen: two services connect and exchange
messages, a handshake fails, a queue fills.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from crust import Identity, Service
from crust.address import Address
from crust.errors import ConnectFailed
from crust.metrics import (
    CIRCUIT_REASONS,
    REASONS,
    drop_reason,
    listen_metrics,
    path_kind,
    priority_label,
    reason_code,
)
from crust.observer import CrustObserver, Observers, RecordingObserver
from crust.session.connection import PathInfo
from tests import examples
from tests.util import connect_pair, loopback_config, make_service, wait_for


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


class LabelTests(SynchronousTestCase):
    def test_end_reasons_become_codes_from_a_fixed_set(self):
        cases = {
            "network-mismatch: the peer belongs to another network (network name differs)": "network-mismatch",
            "network-mismatch: refused by the peer: the peer belongs to another network": "network-mismatch",
            "refused by the peer: version-mismatch (speaks 9..9)": "version-mismatch",
            "peer closed: disconnect (closed by the peer's user)": "disconnect",
            "duplicate: another connection to this peer was chosen": "duplicate",
            "probe-done": "probe-done",
            "timeout: handshake not complete after 10 s": "timeout",
            "protocol-error: unknown frame type 99": "protocol-error",
            "TLS handshake failed: [('SSL routines', '', 'wrong version number')]": "tls",
            "wrong peer key: expected abc, got def": "wrong-peer",
            "no valid crust identity": "tls",
            "connection lost: Connection was closed cleanly.": "connection-lost",
            "something nobody foresaw\n\x00": "other",
            "": "other",
        }
        for text, code in cases.items():
            self.assertEqual(reason_code(text), code, text)
            self.assertIn(reason_code(text), REASONS)

    @given(st.text(max_size=2000))
    @examples(300)
    def test_any_reason_text_becomes_a_known_code(self, text):
        # the text after "peer closed:" or "refused by the peer:" is the peer's to choose
        for candidate in (text, f"peer closed: {text}", f"refused by the peer: {text}", f"{text}: detail"):
            self.assertIn(reason_code(candidate), REASONS)

    def test_drop_reasons(self):
        self.assertEqual(drop_reason("connection closed"), "closed")
        self.assertEqual(drop_reason("waited over 60 s (insufficient bandwidth)"), "expired")
        self.assertEqual(drop_reason("?"), "other")

    def test_priorities_above_seven_share_a_label(self):
        self.assertEqual([priority_label(p) for p in (0, 1, 7, 8, 255)], ["0", "1", "7", "8+", "8+"])

    def test_path_kinds(self):
        def conn(path, initiator=True):
            return SimpleNamespace(path=path, initiator=initiator)

        self.assertEqual(path_kind(conn(PathInfo("punched-udp", "udp-punch"))), "punched-udp")
        self.assertEqual(path_kind(conn(PathInfo("relayed", "relay", via="x"))), "relayed")
        self.assertEqual(path_kind(conn(None)), "direct")
        self.assertEqual(path_kind(conn(None, initiator=False)), "incoming")
        self.assertEqual(path_kind(conn(PathInfo("from-a-future-version"))), "other")

    def test_circuit_reasons_are_the_relay_codes(self):
        self.assertIn("byte-limit", CIRCUIT_REASONS)
        self.assertIn("peer-lost", CIRCUIT_REASONS)


class ObserverOptOutTests(SynchronousTestCase):
    def test_an_observer_whose_new_message_is_none_hears_events_not_messages(self):
        observers = Observers()

        class Quiet(CrustObserver):
            new_message = None  # type: ignore[assignment]

            def __init__(self):
                self.lost = []

            def lost_peer(self, peer_id, reason):
                self.lost.append(reason)

        quiet, recording = Quiet(), RecordingObserver()
        observers.add(quiet)
        observers.add(recording)
        observers.deliverer("p")(b"hi")
        observers.emit("lost_peer", "p", "gone")
        self.assertEqual(quiet.lost, ["gone"])
        self.assertEqual(recording.named("new_message"), [("p", b"hi")])

    def test_observers_are_removed_with_their_message_handler(self):
        observers = Observers()
        first, second = RecordingObserver(), RecordingObserver()
        observers.add(first)
        observers.add(second)
        observers.remove(first)  # its new_message is a new object at each look: found by its observer
        observers.deliverer("p")(b"hi")
        self.assertEqual((first.named("new_message"), second.named("new_message")), ([], [("p", b"hi")]))


class EventCountTests(SynchronousTestCase):
    """What the observer events feed, on a service that never starts."""

    def setUp(self):
        from twisted.internet.testing import MemoryReactorClock

        self.service = Service(Identity.generate(), loopback_config(), MemoryReactorClock())

    def scrape(self):
        from prometheus_client import generate_latest

        return samples(generate_latest(self.service.metrics.registry).decode())

    def test_drops_bootstraps_circuits_paths(self):
        emit = self.service.observers.emit
        peer = Identity.generate().peer_id
        emit("message_dropped", peer, 3, 2, 50, "waited over 60 s (insufficient bandwidth)")
        emit("message_dropped", peer, 200, 1, 7, "connection closed")
        emit("message_too_large", peer, 10, 5)
        emit("bootstrap_failed", "nobody answered")
        emit("bootstrap_connect", peer, Address("tcp", "127.0.0.1", 1))
        emit("bootstrap_accept", peer, "client")
        emit("relay_circuit_closed", peer, peer, "byte-limit")
        emit("relay_circuit_closed", peer, peer, "made up by the peer\n")
        emit("path_changed", peer, {"kind": "relayed"}, {"kind": "punched-udp"})
        emit("listener_failed", "udp", "in use")
        found = self.scrape()
        self.assertEqual(value(found, "crust_messages_dropped_total", priority="3", reason="expired"), 2)
        self.assertEqual(value(found, "crust_message_bytes_dropped_total", priority="3", reason="expired"), 50)
        self.assertEqual(value(found, "crust_messages_dropped_total", priority="8+", reason="closed"), 1)
        self.assertEqual(value(found, "crust_messages_too_large_total"), 1)
        self.assertEqual(value(found, "crust_bootstraps_total", outcome="failed"), 1)
        self.assertEqual(value(found, "crust_bootstraps_total", outcome="connected"), 1)
        self.assertEqual(value(found, "crust_bootstrap_accepts_total", role="client"), 1)
        self.assertEqual(value(found, "crust_relay_circuits_closed_total", reason="byte-limit"), 1)
        self.assertEqual(value(found, "crust_relay_circuits_closed_total", reason="other"), 1)
        self.assertEqual(value(found, "crust_path_changes_total", before="relayed", after="punched-udp"), 1)
        self.assertEqual(value(found, "crust_listener_failures_total", transport="udp"), 1)

    def test_splices(self):
        relay = self.service.relay
        relay.splicer.counters.update(spliced=3, fell_back=1, refused=2)
        relay.ends.splice.counters.update(spliced=4)
        found = self.scrape()
        self.assertEqual(value(found, "crust_relay_splices_total", outcome="spliced"), 3)
        self.assertEqual(value(found, "crust_relay_splices_total", outcome="fell_back"), 1)
        self.assertEqual(value(found, "crust_relay_splices_total", outcome="refused"), 2)
        self.assertEqual(value(found, "crust_relay_end_splices_total", outcome="spliced"), 4)
        self.assertEqual(value(found, "crust_relay_end_splices_total", outcome="fell_back"), 0)

    def test_each_strategy_of_an_attempt_counts_once(self):
        peer = Identity.generate().peer_id
        legs = [SimpleNamespace(name="tcp", targets=("a1",)), SimpleNamespace(name="quic", targets=("q1",)),
                SimpleNamespace(name="rendezvous", targets=("r",)),
                SimpleNamespace(name="tcp", targets=("a2",)),  # added by the rendezvous
                SimpleNamespace(name="udp-punch", targets=("p",))]
        attempt = SimpleNamespace(peer_id=peer, error=None, legs=legs, reasons={"a1": "refused", "a2": "refused"},
                                  started=("tcp", "quic", "rendezvous", "tcp", "udp-punch"))
        self.service.peers.active[peer] = SimpleNamespace(path=PathInfo("punched-udp", "udp-punch"), initiator=True)
        self.service.metrics.attempt_ended(attempt, 1.5)
        del self.service.peers.active[peer]
        found = self.scrape()
        self.assertEqual(value(found, "crust_connect_attempts_total", outcome="success", path="punched-udp"), 1)
        self.assertEqual(value(found, "crust_connect_duration_seconds_sum", outcome="success"), 1.5)
        self.assertEqual(value(found, "crust_connect_strategies_total", strategy="tcp", outcome="failed"), 1)
        self.assertEqual(value(found, "crust_connect_strategies_total", strategy="udp-punch", outcome="won"), 1)
        self.assertEqual(value(found, "crust_connect_strategies_total", strategy="quic", outcome="other"), 1)
        self.assertEqual(value(found, "crust_connect_strategies_total", strategy="rendezvous", outcome="other"), 1)

    def test_port_mappings_are_read_from_the_mapper(self):
        self.service.port_mapper = SimpleNamespace(
            mappings={("tcp", 1): SimpleNamespace(transport="tcp", method="natpmp")},
            outcomes=Tally({("pcp", "no-answer"): 2, ("natpmp", "granted"): 1}))
        found = self.scrape()
        self.assertEqual(value(found, "crust_port_mappings", transport="tcp", method="natpmp"), 1)
        self.assertEqual(value(found, "crust_port_mapping_requests_total", method="pcp", outcome="no-answer"), 2)
        self.assertEqual(value(found, "crust_port_mapping_requests_total", method="natpmp", outcome="granted"), 1)

    def test_each_service_has_a_registry_of_its_own(self):
        from twisted.internet.testing import MemoryReactorClock

        other = Service(Identity.generate(), loopback_config(), MemoryReactorClock())
        self.assertIsNot(other.metrics.registry, self.service.metrics.registry)
        self.service.observers.emit("message_too_large", Identity.generate().peer_id, 10, 5)
        self.assertEqual(value(self.scrape(), "crust_messages_too_large_total"), 1)
        from prometheus_client import REGISTRY, generate_latest

        self.assertEqual(value(samples(generate_latest(other.metrics.registry).decode()),
                               "crust_messages_too_large_total"), 0)
        self.assertNotIn(b"crust_", generate_latest(REGISTRY))  # the global registry is left alone


class ScrapeTests(TestCase):
    """The metrics served over HTTP on 127.0.0.1, as a Prometheus server scrapes them."""

    def serve(self, service: Service) -> str:
        d = listen_metrics(reactor, "tcp:0:interface=127.0.0.1", service.metrics.registry)
        ports = []
        d.addCallback(ports.append)
        port = ports[0]  # TCP listens at once
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/metrics"

    @defer.inlineCallbacks
    def get(self, url: str, accept: bytes = b"text/plain"):
        response = yield Agent(reactor).request(b"GET", url.encode("ascii"), Headers({b"accept": [accept]}))
        body = yield readBody(response)
        return response, body.decode("utf-8")

    @defer.inlineCallbacks
    def scrape(self, url: str):
        response, body = yield self.get(url)
        self.assertEqual(response.code, 200)
        return samples(body)

    @defer.inlineCallbacks
    def test_connections_and_messages_move(self):
        a, b = make_service(self), make_service(self)
        url_a, url_b = self.serve(a), self.serve(b)
        before = yield self.scrape(url_a)
        self.assertEqual(value(before, "crust_peers"), 0)
        self.assertEqual(value(before, "crust_connections", transport="tcp", path="direct"), 0)
        self.assertEqual(value(before, "crust_info", version=__import__("crust").__version__), 1)

        yield connect_pair(self, a, b)
        for _ in range(5):
            a.send(b.peer_id, b"m" * 100, 1)
        for _ in range(3):
            a.send(b.peer_id, b"n" * 10, 9)
        yield wait_for(lambda: len(b.events.named("new_message")) == 8)

        found_a = yield self.scrape(url_a)
        found_b = yield self.scrape(url_b)
        self.assertEqual(value(found_a, "crust_connections", transport="tcp", path="direct"), 1)
        self.assertEqual(value(found_b, "crust_connections", transport="tcp", path="incoming"), 1)
        self.assertEqual((value(found_a, "crust_peers"), value(found_b, "crust_peers")), (1, 1))
        self.assertEqual(value(found_a, "crust_messages_sent_total", priority="1"), 5)
        self.assertEqual(value(found_a, "crust_message_bytes_sent_total", priority="1"), 500)
        self.assertEqual(value(found_a, "crust_messages_sent_total", priority="8+"), 3)
        self.assertEqual(value(found_b, "crust_messages_received_total"), 8)
        self.assertEqual(value(found_b, "crust_message_bytes_received_total"), 530)
        self.assertEqual(value(found_b, "crust_messages_sent_total", priority="1"), 0)
        self.assertEqual(value(found_a, "crust_handshakes_total", transport="tcp", outcome="active"), 1)
        self.assertEqual(value(found_b, "crust_handshakes_total", transport="tcp", outcome="active"), 1)
        self.assertEqual(value(found_a, "crust_connect_attempts_total", outcome="success", path="direct"), 1)
        self.assertEqual(value(found_a, "crust_connect_duration_seconds_count", outcome="success"), 1)
        self.assertGreater(value(found_a, "crust_connect_duration_seconds_sum", outcome="success"), 0)
        self.assertEqual(value(found_a, "crust_connect_strategies_total", strategy="tcp", outcome="won"), 1)
        self.assertEqual(value(found_a, "crust_connect_attempts_running"), 0)

        # a's connection ends: what b received stays counted, the close is counted by reason
        a.disconnect(b.peer_id)
        yield wait_for(lambda: not a.peers.connections and not b.peers.connections)
        found_a = yield self.scrape(url_a)
        found_b = yield self.scrape(url_b)
        self.assertEqual(value(found_a, "crust_peers"), 0)
        self.assertEqual(value(found_a, "crust_connections", transport="tcp", path="direct"), 0)
        self.assertEqual(value(found_b, "crust_messages_received_total"), 8)
        self.assertEqual(value(found_b, "crust_message_bytes_received_total"), 530)
        self.assertEqual(value(found_a, "crust_connections_closed_total", transport="tcp", reason="disconnect"), 1)
        self.assertEqual(value(found_b, "crust_connections_closed_total", transport="tcp", reason="disconnect"), 1)

    @defer.inlineCallbacks
    def test_a_queue_that_fills_shows(self):
        a, b = make_service(self), make_service(self)
        url = self.serve(a)
        yield connect_pair(self, a, b)
        conn = a.peers.active[b.peer_id]
        conn.pauseProducing()  # as the transport does when its buffer is full
        for _ in range(3):
            a.send(b.peer_id, b"q" * 100, 1)
        found = yield self.scrape(url)
        self.assertEqual(value(found, "crust_send_queue_bytes", lane="urgent"), 300)
        self.assertEqual(value(found, "crust_send_queue_frames", lane="urgent"), 3)
        conn.resumeProducing()
        yield wait_for(lambda: len(b.events.named("new_message")) == 3)
        found = yield self.scrape(url)
        self.assertEqual(value(found, "crust_send_queue_bytes", lane="urgent"), 0)

    @defer.inlineCallbacks
    def test_failed_handshakes_are_counted_by_reason(self):
        a = make_service(self, network_name="alpha")
        b = make_service(self, network_name="beta")
        url_a, url_b = self.serve(a), self.serve(b)
        ia = yield a.prepare_connection_info()
        ib = yield b.prepare_connection_info()
        yield self.assertFailure(a.connect(ia, ib.public), ConnectFailed)
        yield wait_for(lambda: not b.peers.connections)
        found_a = yield self.scrape(url_a)
        found_b = yield self.scrape(url_b)
        for found in (found_a, found_b):
            self.assertGreaterEqual(
                value(found, "crust_handshake_failures_total", transport="tcp", reason="network-mismatch"), 1)
            self.assertEqual(value(found, "crust_handshakes_total", transport="tcp", outcome="active"), 0)
        self.assertEqual(value(found_a, "crust_connect_attempts_total", outcome="failure", path="none"), 1)
        self.assertEqual(value(found_a, "crust_connect_duration_seconds_count", outcome="failure"), 1)
        self.assertEqual(value(found_a, "crust_connect_strategies_total", strategy="tcp", outcome="failed"), 1)

        # a client that sends garbage instead of TLS: one more failure, for TLS
        closed = defer.Deferred()

        class Garbage(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(os.urandom(2048))

            def connectionLost(self, reason):
                closed.callback(None)

        reactor.connectTCP("127.0.0.1", b.listen_addresses[0].port, protocol.ClientFactory.forProtocol(Garbage))
        yield closed
        yield wait_for(lambda: not b.peers.connections)
        found_b = yield self.scrape(url_b)
        self.assertEqual(value(found_b, "crust_handshake_failures_total", transport="tcp", reason="tls"), 1)

    @defer.inlineCallbacks
    def test_quic_initials_turned_away(self):
        import random
        import socket

        from tests.hostile.attacker import junk_initial

        a = make_service(self)
        url = self.serve(a)
        info = yield a.prepare_connection_info()
        udp = [x for x in info.public.addresses if x.transport == "udp"][0].sockaddr()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        s.sendto(junk_initial(random.Random(1)), udp)
        yield wait_for(lambda: a.quic.counters["undecryptable"])
        found = yield self.scrape(url)
        self.assertEqual(value(found, "crust_quic_initials_turned_away_total", fate="undecryptable"), 1)
        self.assertEqual(value(found, "crust_quic_initials_turned_away_total", fate="retry"), 0)
        self.assertEqual(value(found, "crust_quic_handshakes_pending"), 0)

    @defer.inlineCallbacks
    def test_the_page(self):
        a = make_service(self)
        url = self.serve(a)
        response, body = yield self.get(url)
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        self.assertIn("# TYPE crust_connections gauge", body)
        response, body = yield self.get(url, accept=b"application/openmetrics-text; version=1.0.0")
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"application/openmetrics"))
        self.assertTrue(body.endswith("# EOF\n"))
        response, body = yield self.get(url + "?name[]=crust_peers")
        self.assertEqual([line for line in body.splitlines() if not line.startswith("#")], ["crust_peers 0.0"])
        response, _ = yield self.get(url.replace("/metrics", "/other"))
        self.assertEqual(response.code, 404)
