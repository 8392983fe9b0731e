"""
Each attack of the hardening report, replayed against a real node while a
legitimate peer connects (within 1 s) and exchanges messages (round trips
under 100 ms), with bounded memory; see L{tests.hostile.harness}.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from crust.peering.table import MAX_PENDING, MAX_PENDING_PER_HOST
from crust.transport.quic.dispatcher import QuicOptions
from tests.hostile.harness import check, under_attack


class AttackTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_quic_initial_flood(self):
        """Defect 1: junk Initials from 64 source ports no longer take the QUIC slots."""
        node, figures = yield under_attack(self, "quic", target="udp", legit="udp", own_quic=True)
        check(self, figures)
        stats = node.quic.stats()
        self.assertGreater(figures.attack["sent"], 1000)
        self.assertGreater(stats["undecryptable"] + stats["retries"], 1000)  # the flood reached the dispatcher
        self.assertLessEqual(stats["pending_inbound"], QuicOptions().retry_threshold)
        self.assertLess(stats["connections"], 40)

    @defer.inlineCallbacks
    def test_big_stun_flood(self):
        """Defect 2: 64 KiB STUN messages of empty attributes cost a header check each."""
        node, figures = yield under_attack(self, "stun", target="udp", legit="udp")
        check(self, figures)
        endpoint = node.udp.endpoint.counters
        self.assertGreater(figures.attack["sent"], 400)
        self.assertGreater(endpoint["stun_dropped"], 100)  # they arrived, and nobody took them
        self.assertLess(figures.cpu_share, 0.9)

    @defer.inlineCallbacks
    def test_tcp_handshake_flood(self):
        """Defect 3: hundreds of silent or dribbling connections from one host."""
        node, figures = yield under_attack(self, "tcp", target="tcp", legit="tcp")
        check(self, figures)
        self.assertGreater(figures.attack["opened"], 300)
        self.assertGreater(node.tcp.counters["refused"], 100)
        pending = [c for c in node.peers.connections if not c.is_active]
        self.assertLessEqual(len(pending), min(MAX_PENDING, MAX_PENDING_PER_HOST + 2))

    @defer.inlineCallbacks
    def test_nested_json_hellos(self):
        """Defect 5: deeply nested HELLOs and huge version numbers close their own connection, nothing else."""
        node, figures = yield under_attack(self, "json", target="tcp", legit="tcp")
        check(self, figures)
        self.assertGreater(figures.attack["handshakes"], 10)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(node.peers.hellos.keys(), {figures_peer for figures_peer in node.peers.active})

    @defer.inlineCallbacks
    def test_random_bytes_and_http(self):
        """Garbage and HTTP requests on the TCP port: each closes its own connection."""
        node, figures = yield under_attack(self, "garbage", target="tcp", legit="tcp")
        check(self, figures)
        self.assertGreater(figures.attack["connections"], 200)
        self.assertGreater(sum(v for k, v in node.peers.counters.items() if k.startswith("early_")), 100)
