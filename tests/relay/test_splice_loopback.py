"""
Spliced circuits on 127.0.0.1 (real sockets and TLS; the nodes of
L{tests.relay.test_relay_loopback}): what only splicing has.  Falling back to
frames when a splice connection cannot be made, limits on spliced bytes,
losses and closes reported with their reasons at both ends, and what the
relay's listener does with preambles it does not like.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import defer, reactor
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionRefusedError

from crust.config import MIB, RelayLimits
from crust.relay import messages, splicer
from crust.relay.preamble import MAGIC, VERSION
from crust.relay.splicer import SpliceSession

from tests.relay.test_relay_loopback import RelayNodes
from tests.util import make_service, wait_for


def refuse_splices(node):
    """Make C{node}'s splice connections fail (as if the relay's port were out of reach)."""
    node.relay.ends.splice.connect_plain = lambda address, factory, timeout: fail(ConnectionRefusedError())


def sessions(r) -> list[SpliceSession]:
    return [core.splice for core in r.relay.server._circuits if core.splice is not None]


class SpliceLoopbackTests(RelayNodes):
    @defer.inlineCallbacks
    def exchange(self, a, b):
        a.send(b.peer_id, b"to b", 1)
        b.send(a.peer_id, b"to a", 1)
        yield wait_for(lambda: b.events.named("new_message") and a.events.named("new_message"))
        self.assertEqual(b.events.named("new_message")[-1], (a.peer_id, b"to b"))
        self.assertEqual(a.events.named("new_message")[-1], (b.peer_id, b"to a"))

    @defer.inlineCallbacks
    def test_spliced_both_ways_and_nothing_through_the_frames(self):
        r, a, b = yield self.relayed()
        self.assertEqual(r.relay.stats()["splice_spliced"], 1)
        self.assertEqual((a.relay.ends.splice.counters, b.relay.ends.splice.counters),
                         ({"spliced": 1, "fell_back": 0}, {"spliced": 1, "fell_back": 0}))
        [session] = sessions(r)
        self.assertTrue(session.spliced)
        frames_before = r.relay.switch.counters.copy()
        yield self.exchange(a, b)
        payload = os.urandom(MIB + 12345)
        a.send(b.peer_id, payload, 2)
        yield wait_for(lambda: b.events.named("new_message")[-1][1] == payload, timeout=20)
        self.assertGreater(r.relay.stats()["bytes_relayed"], MIB)
        self.assertEqual(r.relay.switch.counters, frames_before)
        for node, other in ((a, b), (b, a)):
            conn = node.peers.active[other.peer_id]
            self.assertIsNone(conn.peer_address)  # no IP address: it is relayed
            self.assertEqual(conn.path.kind, "relayed")

    @defer.inlineCallbacks
    def test_frames_when_the_openers_splice_connection_fails(self):
        r, a, b = yield self.three()
        refuse_splices(a)
        start = reactor.seconds()
        yield a.connect(b.peer_id)
        yield wait_for(lambda: a.peer_id in b.peers.active)
        # the opener's first DATA frame told the relay: the target did not wait for the splice deadline
        self.assertLess(reactor.seconds() - start, splicer.SPLICE_WAIT)
        yield self.exchange(a, b)
        self.assertEqual(a.relay.ends.splice.counters["fell_back"], 1)
        self.assertEqual(b.relay.ends.splice.counters["fell_back"], 1)
        stats = r.relay.stats()
        self.assertEqual((stats["splice_spliced"], stats["splice_fell_back"]), (0, 1))
        self.assertEqual(a.peer_details(b.peer_id)["path"]["kind"], "relayed")

    @defer.inlineCallbacks
    def test_frames_when_the_targets_splice_connection_fails(self):
        self.patch(splicer, "SPLICE_WAIT", 1.0)
        r, a, b = yield self.three()
        refuse_splices(b)
        yield a.connect(b.peer_id)  # the opener waits for the relay: it gives up on the splice after SPLICE_WAIT
        yield wait_for(lambda: a.peer_id in b.peers.active)
        yield self.exchange(a, b)
        self.assertEqual(a.relay.ends.splice.counters["fell_back"], 1)
        self.assertEqual(r.relay.stats()["splice_spliced"], 0)

    @defer.inlineCallbacks
    def test_frames_when_an_end_does_not_splice(self):
        r, a, b = yield self.three()
        b.config = b.config.replace(relay_splice=False)
        yield a.connect(b.peer_id)
        yield wait_for(lambda: a.peer_id in b.peers.active)
        yield self.exchange(a, b)
        self.assertEqual(r.relay.splicer.tokens.counters["issued"], 1)  # B's, in INVITE; B declined: none for A
        self.assertEqual(len(r.relay.splicer.tokens), 0)  # B's was revoked
        self.assertEqual(r.relay.stats()["splice_spliced"], 0)
        self.assertEqual(a.relay.ends.splice.counters, {"spliced": 0, "fell_back": 0})  # A was never offered

    @defer.inlineCallbacks
    def test_the_rate_limit_paces_spliced_bytes(self):
        rate = 2 * MIB
        r, a, b = yield self.relayed(RelayLimits(rate_per_circuit=rate, window=256 * 1024))
        yield self.exchange(a, b)
        start = reactor.seconds()
        for _ in range(48):
            a.send(b.peer_id, os.urandom(64 * 1024), 2)  # 3 MiB
        yield wait_for(lambda: len(b.events.named("new_message")) >= 49, timeout=20)
        # 3 MiB at 2 MiB/s with a bucket of 256 KiB: at least 1.3 s; the circuit slows, it does not end
        self.assertGreater(reactor.seconds() - start, 1.2)
        self.assertEqual(r.relay.stats()["circuits"], 1)
        self.assertEqual(a.events.named("relay_circuit_closed"), [])

    @defer.inlineCallbacks
    def test_the_time_limit_ends_a_spliced_circuit_with_the_reason_at_both_ends(self):
        r, a, b = yield self.relayed(RelayLimits(seconds_per_circuit=2.0))
        yield wait_for(lambda: a.events.named("lost_peer") and b.events.named("lost_peer"))
        for node, other in ((a, b), (b, a)):
            self.assertEqual(node.events.named("relay_circuit_closed"),
                             [(other.peer_id, r.peer_id, messages.REASON_TIME_LIMIT)])
            [(peer, reason)] = node.events.named("lost_peer")
            self.assertIn("time-limit", reason)
        self.assertEqual(r.relay.stats()["limit_closed"], 1)

    @defer.inlineCallbacks
    def test_an_end_closing_is_reported_with_its_reason_at_the_other_end(self):
        r, a, b = yield self.relayed()
        yield self.exchange(a, b)
        a.disconnect(b.peer_id)
        yield wait_for(lambda: b.events.named("lost_peer") and a.events.named("relay_circuit_closed")
                       and b.events.named("relay_circuit_closed"))
        [(peer, reason)] = b.events.named("lost_peer")
        self.assertEqual(peer, a.peer_id)
        self.assertIn("peer closed: disconnect", reason)  # what A said, inside TLS: it came before the end
        for node in (a, b):
            self.assertEqual([e[2] for e in node.events.named("relay_circuit_closed")], [messages.REASON_CLOSED])
        yield wait_for(lambda: r.relay.stats()["circuits"] == 0)
        self.assertTrue(a.is_connected(r.peer_id) and b.is_connected(r.peer_id))

    @defer.inlineCallbacks
    def test_a_spliced_socket_lost_at_the_relay_is_reported_at_both_ends(self):
        r, a, b = yield self.relayed()
        [session] = sessions(r)
        session.sockets[0].transport.abortConnection()  # the relay's socket toward A breaks
        yield wait_for(lambda: a.events.named("lost_peer") and b.events.named("lost_peer"))
        for node, other in ((a, b), (b, a)):
            [(peer, via, reason)] = node.events.named("relay_circuit_closed")
            self.assertEqual((peer, via, reason), (other.peer_id, r.peer_id, messages.REASON_PEER_LOST))
            [(_, text)] = node.events.named("lost_peer")
            self.assertIn("peer-lost", text)
        self.assertTrue(a.is_connected(r.peer_id) and b.is_connected(r.peer_id))

    @defer.inlineCallbacks
    def test_a_spliced_socket_lost_at_an_end_is_reported_at_both_ends(self):
        r, a, b = yield self.relayed()
        conn = a.peers.active[b.peer_id]
        link = conn.transport.transport  # TLS on the splice link
        link.raw.abortConnection()  # as if the network dropped A's socket
        yield wait_for(lambda: a.events.named("lost_peer") and b.events.named("lost_peer"))
        for node in (a, b):
            [(_, _, reason)] = node.events.named("relay_circuit_closed")
            self.assertEqual(reason, messages.REASON_PEER_LOST)
            [(_, text)] = node.events.named("lost_peer")
            self.assertIn("peer-lost", text)

    @defer.inlineCallbacks
    def test_bad_preambles_close_only_their_own_connection(self):
        r, a, b = yield self.relayed()
        yield self.exchange(a, b)
        port = r.tcp.listener_binding()[1]
        results = []
        for first in (MAGIC + bytes([VERSION]) + os.urandom(32),  # an unknown token
                      MAGIC + bytes([99]) + os.urandom(32),  # another version
                      MAGIC[:2] + b"XX"):  # not the magic
            s = socket.create_connection(("127.0.0.1", port))
            self.addCleanup(s.close)
            s.sendall(first)
            s.setblocking(False)
            results.append(s)
        yield wait_for(lambda: all(_closed(s) for s in results))
        self.assertEqual(r.relay.stats()["splice_refused"], 2)  # (the third never reached the relay's claim)
        self.assertGreaterEqual(r.tcp.counters["refused"], 3)
        yield self.exchange(a, b)  # the circuit and the connections to R go on
        self.assertEqual(r.relay.stats()["circuits"], 1)

    @defer.inlineCallbacks
    def test_tls_at_a_relays_listener_is_not_delayed(self):
        r, a, b = yield self.three()
        self.assertTrue(r.tcp.sniffing())
        c = make_service(self, enable_udp=False)
        info = yield r.prepare_connection_info()
        start = reactor.seconds()
        yield c.connect(info.public)
        self.assertLess(reactor.seconds() - start, 2.0)
        self.assertTrue(c.is_connected(r.peer_id))


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True

