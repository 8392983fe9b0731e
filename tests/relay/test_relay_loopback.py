"""
Relayed connections on 127.0.0.1, real sockets and TLS: three services, R
relaying, A and B both connected to it, A's and B's other dial strategies
removed, so that A's connect to B's peer id can only go through R.  Every
test runs twice: circuits spliced onto TCP connections to R (the default),
and circuits carrying their bytes in frames (C{relay_splice} off).
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from crust.config import MIB, RelayLimits
from crust.errors import ConnectFailed
from crust.relay import messages
from crust.relay import server as server_module
from crust.relay.splicer import SplicePump
from crust.session.purpose import Purpose

from tests.util import connect_pair, make_service, wait_for

OTHER_STRATEGIES = ("tcp", "quic", "rendezvous", "tcp-punch", "udp-punch")


class RelayNodes(TestCase):
    """Three nodes on loopback (no tests of its own)."""

    timeout = 60
    splice = True

    @defer.inlineCallbacks
    def three(self, limits: RelayLimits | None = None, **config):
        """R (relaying), A and B, both connected to R; A and B can reach each other only through R."""
        config.setdefault("enable_udp", False)
        config.setdefault("relay_splice", self.splice)
        r = make_service(self, serve_relay=True, relay_limits=limits or RelayLimits(), **config)
        a, b = make_service(self, **config), make_service(self, **config)
        yield connect_pair(self, a, r)
        yield connect_pair(self, b, r)
        for node in (a, b):
            for name in OTHER_STRATEGIES:
                node.dialer.unregister(name)
        return r, a, b

    @defer.inlineCallbacks
    def relayed(self, limits: RelayLimits | None = None, **config):
        r, a, b = yield self.three(limits, **config)
        peer = yield a.connect(b.peer_id)
        self.assertEqual(peer, b.peer_id)
        yield wait_for(lambda: a.peer_id in b.peers.active)
        # spliced, or on frames, as the test class says
        self.assertEqual(r.relay.stats()["splice_spliced"], 1 if self.splice else 0)
        return r, a, b


class RelayLoopbackTests(RelayNodes):
    """Spliced circuits."""

    @defer.inlineCallbacks
    def test_connect_by_peer_id_goes_through_the_relay(self):
        r, a, b = yield self.relayed()
        for node, other in ((a, b), (b, a)):
            path = node.peer_details(other.peer_id)["path"]
            self.assertEqual((path["kind"], path["strategy"], path["via"]), ("relayed", "relay", str(r.peer_id)))
            self.assertEqual(node.peer_details(other.peer_id)["address"], None)
            self.assertEqual(node.events.named("relay_circuit_opened"), [(other.peer_id, r.peer_id)])
        self.assertIsNotNone(a.peer_details(b.peer_id)["path"]["elapsed"])
        self.assertEqual(r.relay.stats()["circuits"], 1)
        self.assertEqual(r.relay.stats()["circuits_total"], 1)
        a.send(b.peer_id, b"hello through the relay", 1)
        b.send(a.peer_id, b"and back", 0)
        yield wait_for(lambda: b.events.named("new_message") and a.events.named("new_message"))
        self.assertEqual(b.events.named("new_message"), [(a.peer_id, b"hello through the relay")])
        self.assertEqual(a.events.named("new_message"), [(b.peer_id, b"and back")])
        self.assertGreater(r.relay.stats()["bytes_relayed"], 0)
        self.assertEqual(r.relay.stats()["splice_spliced"], 1 if self.splice else 0)
        # R saw A and B connected to it, never the relayed connection
        self.assertEqual(sorted(r.connected_peers()), sorted([a.peer_id, b.peer_id]))

    @defer.inlineCallbacks
    def test_10000_messages_of_mixed_priorities_arrive_in_order(self):
        r, a, b = yield self.relayed()
        sent: dict[int, list[bytes]] = {0: [], 1: [], 2: [], 3: []}
        for i in range(10000):
            priority = i % 4
            message = b"message %d " % i + os.urandom(i % 64)
            if a.queued_bytes(b.peer_id) > 1_000_000:
                yield a.when_writable(b.peer_id)
            a.send(b.peer_id, message, priority)
            sent[priority].append(message)
        yield wait_for(lambda: len(b.events.named("new_message")) >= 10000, timeout=20)
        got: dict[int, list[bytes]] = {0: [], 1: [], 2: [], 3: []}
        for _, data in b.events.named("new_message"):
            got[int(data.split(b" ")[1]) % 4].append(data)
        self.assertEqual(got, sent)
        self.assertEqual(len(b.events.named("new_message")), 10000)

    @defer.inlineCallbacks
    def test_a_10_mib_message_arrives_intact_and_the_relay_cannot_read_it(self):
        forwarded: list[bytes] = []
        if self.splice:
            data = SplicePump.data

            def passing(pump, chunk):
                forwarded.append(bytes(chunk))
                return data(pump, chunk)

            self.patch(SplicePump, "data", passing)
        else:
            rewrite = messages.rewrite_data

            def recording(payload, c):
                forwarded.append(bytes(payload))
                return rewrite(payload, c)

            self.patch(messages, "rewrite_data", recording)
        big = dict(max_message_size=16 * MIB, max_queued_bytes=32 * MIB)
        r, a, b = yield self.relayed(RelayLimits(rate_per_circuit=None), **big)
        marker = b"MARKER-" + os.urandom(16).hex().encode() + b"-END"
        payload = os.urandom(5 * MIB) + marker + os.urandom(5 * MIB)
        a.send(b.peer_id, payload, 2)
        a.send(b.peer_id, marker, 1)
        yield wait_for(lambda: len(b.events.named("new_message")) >= 2, timeout=30)
        received = sorted((data for _, data in b.events.named("new_message")), key=len)
        self.assertEqual(received, [marker, payload])
        seen = sum(len(p) for p in forwarded)
        self.assertGreater(seen, 10 * MIB)  # R passed on everything...
        self.assertFalse(any(marker in p for p in forwarded))  # ...and never held the marker in clear
        self.assertFalse(any(marker[:16] in p for p in forwarded))

    @defer.inlineCallbacks
    def test_a_circuit_at_its_byte_limit_ends_with_the_reason_at_both_ends(self):
        r, a, b = yield self.relayed(RelayLimits(bytes_per_circuit=MIB))
        for _ in range(40):
            a.send(b.peer_id, os.urandom(64 * 1024), 2)
        yield wait_for(lambda: a.events.named("lost_peer") and b.events.named("lost_peer"))
        for node, other in ((a, b), (b, a)):
            self.assertEqual(node.events.named("relay_circuit_closed"),
                             [(other.peer_id, r.peer_id, messages.REASON_BYTE_LIMIT)])
            [(peer, reason)] = node.events.named("lost_peer")
            self.assertEqual(peer, other.peer_id)
            self.assertIn("byte-limit", reason)
        self.assertEqual(r.relay.stats()["circuits"], 0)
        self.assertEqual(r.relay.stats()["limit_closed"], 1)
        # A and B are still connected to R
        self.assertTrue(a.is_connected(r.peer_id) and b.is_connected(r.peer_id))

    @defer.inlineCallbacks
    def test_a_refused_circuit_is_the_reason_of_the_failed_connect(self):
        r, a, b = yield self.three()
        b.config = b.config.replace(accept_relayed=False)
        error = yield self.assertFailure(a.connect(b.peer_id), ConnectFailed)
        [reason] = error.reasons
        self.assertTrue(reason.startswith("relay: "), reason)
        self.assertIn("refused (this node does not accept relayed connections)", reason)
        self.assertEqual(r.relay.stats()["circuits"], 0)

    @defer.inlineCallbacks
    def test_no_relay_is_the_reason_of_the_failed_connect(self):
        r, a, b = yield self.three()
        r.config = r.config.replace(serve_relay=False)
        error = yield self.assertFailure(a.connect(b.peer_id), ConnectFailed)
        self.assertEqual(len(error.reasons), 1)
        self.assertIn("relay: no relay: none of the 1 peer(s) we asked", error.reasons[0])

    @defer.inlineCallbacks
    def test_when_the_relay_goes_both_ends_lose_the_connection(self):
        r, a, b = yield self.relayed()
        yield r.stopService()
        yield wait_for(lambda: len(a.events.named("lost_peer")) == 2 and len(b.events.named("lost_peer")) == 2)
        for node, other in ((a, b), (b, a)):
            reasons = dict(node.events.named("lost_peer"))
            self.assertIn("peer-lost", reasons[other.peer_id])
            [(peer, via, reason)] = node.events.named("relay_circuit_closed")
            self.assertEqual((peer, via, reason), (other.peer_id, r.peer_id, messages.REASON_PEER_LOST))

    @defer.inlineCallbacks
    def test_a_direct_path_takes_over_and_the_circuit_waits_as_standby(self):
        """Handover with a real circuit: relayed, then direct (make before break), then relayed again."""
        r, a, b = yield self.relayed()
        relayed_a = a.peers.active[b.peer_id]
        ib = yield b.prepare_connection_info()
        address = [x for x in ib.public.addresses if x.transport == "tcp"][0]
        sent = [b"before %d" % i for i in range(100)]
        for m in sent:
            a.send(b.peer_id, m, 1)
        yield a.dialer.dial(address, Purpose(), expected=b.peer_id)
        yield wait_for(lambda: a.events.named("path_changed") and b.events.named("path_changed"))
        [(peer, old, new)] = a.events.named("path_changed")
        self.assertEqual((peer, old["kind"], old["via"], new["kind"]),
                         (b.peer_id, "relayed", str(r.peer_id), "direct"))
        for i in range(100):
            m = b"after %d" % i
            a.send(b.peer_id, m, 1)
            sent.append(m)
        yield wait_for(lambda: len(b.events.named("new_message")) >= 200)
        self.assertEqual([data for _, data in b.events.named("new_message")], sent)  # none lost, none reordered
        self.assertTrue(a.peer_details(b.peer_id)["address"].startswith("tcp:127.0.0.1:"))  # direct now
        # the circuit stays open, idle, as the standby
        self.assertTrue(relayed_a.connected and not relayed_a.closing)
        self.assertEqual(r.relay.stats()["circuits"], 1)
        self.assertEqual(a.events.named("relay_circuit_closed"), [])
        # the direct connection dies: back onto the circuit
        a.peers.active[b.peer_id].transport.abortConnection()
        yield wait_for(lambda: len(a.events.named("path_changed")) == 2)
        self.assertEqual(a.events.named("path_changed")[1][2]["kind"], "relayed")
        self.assertIs(a.peers.active[b.peer_id], relayed_a)
        a.send(b.peer_id, b"through the relay again", 0)
        yield wait_for(lambda: b.events.named("new_message")[-1][1] == b"through the relay again")
        self.assertEqual(a.events.named("lost_peer"), [])

    @defer.inlineCallbacks
    def test_byte_streams_over_a_relayed_connection(self):
        from tests.streams.test_streams_loopback import Collector, Echo, factory_of

        r, a, b = yield self.relayed()
        b.listen_streams("echo", factory_of(Echo))
        stream = yield a.open_stream(b.peer_id, "echo", factory_of(Collector))
        self.assertEqual(stream.transport.getPeer().transport, "relay")
        payload = os.urandom(2 * MIB)
        stream.transport.write(payload)
        yield wait_for(lambda: len(stream.received) == len(payload), timeout=30)
        self.assertEqual(bytes(stream.received), payload)
        # a handover to a direct connection: the stream stays on the circuit (now the standby), new ones go direct
        ib = yield b.prepare_connection_info()
        address = [x for x in ib.public.addresses if x.transport == "tcp"][0]
        yield a.dialer.dial(address, Purpose(), expected=b.peer_id)
        yield wait_for(lambda: a.events.named("path_changed") and b.events.named("path_changed"))
        stream.transport.write(b"still here")
        yield wait_for(lambda: bytes(stream.received).endswith(b"still here"))
        direct = yield a.open_stream(b.peer_id, "echo", factory_of(Collector))
        self.assertEqual(direct.transport.getPeer().transport, "tcp")
        direct.transport.write(b"direct")
        yield wait_for(lambda: direct.received == b"direct")
        self.assertEqual(r.relay.stats()["circuits"], 1)


class FrameLoopbackTests(RelayLoopbackTests):
    """The same, circuits on frames (C{relay_splice} off)."""

    splice = False


class MisbehavingRelayTests(TestCase):
    """
    Relays that corrupt or drop what they carry, or a target that refuses:
    only the relayed connection fails, cleanly (its TLS notices), nothing
    corrupted is delivered, and a connect tries through another relay.
    """

    timeout = 60
    splice = True

    @defer.inlineCallbacks
    def nodes(self, relays: int, **config):
        """C{relays} relaying services, A and B connected to each; A and B reach each other only through them."""
        config.setdefault("enable_udp", False)
        config.setdefault("relay_splice", self.splice)
        rs = [make_service(self, serve_relay=True, **config) for _ in range(relays)]
        a, b = make_service(self, **config), make_service(self, **config)
        for r in rs:
            yield connect_pair(self, a, r)
            yield connect_pair(self, b, r)
        for node in (a, b):
            for name in OTHER_STRATEGIES:
                node.dialer.unregister(name)
        return rs, a, b

    def misbehave(self, what):
        """The first relay that forwards DATA keeps doing C{what(payload)} to it (None: drop it); returns it."""
        bad: list = []
        forward = server_module.CircuitCore._forward

        def wrapper(core, side, d, payload):
            if not bad:
                bad.append(core.server)
            if core.server is bad[0] and what.armed:
                payload = what(payload)
                if payload is None:
                    return
            forward(core, side, d, payload)

        def spliced(pump, chunk):
            if not bad:
                bad.append(pump.session.core.server)
            if pump.session.core.server is bad[0] and what.armed:
                chunk = what(bytes(chunk))
                if chunk is None:
                    return
            data(pump, chunk)

        data = SplicePump.data
        self.patch(server_module.CircuitCore, "_forward", wrapper)
        self.patch(SplicePump, "data", spliced)
        return bad

    @staticmethod
    def flip_last_byte(payload):
        return payload[:-1] + bytes([payload[-1] ^ 0x01])

    @defer.inlineCallbacks
    def test_a_corrupting_relay_fails_only_that_connection_and_delivers_nothing_corrupted(self):
        (r,), a, b = yield self.nodes(1)
        corrupt = self.flip_last_byte
        corrupt.armed = False  # type: ignore[attr-defined]
        self.misbehave(corrupt)
        yield a.connect(b.peer_id)
        yield wait_for(lambda: a.peer_id in b.peers.active)
        self.assertEqual(r.relay.stats()["splice_spliced"], 1 if self.splice else 0)  # the way the class says
        sent = [b"message %d " % i + os.urandom(32) for i in range(20)]
        for m in sent[:10]:
            a.send(b.peer_id, m, 1)
        yield wait_for(lambda: len(b.events.named("new_message")) >= 10)
        corrupt.armed = True  # type: ignore[attr-defined]
        for m in sent[10:]:
            a.send(b.peer_id, m, 1)
        yield wait_for(lambda: a.events.named("lost_peer") and b.events.named("lost_peer"))
        got = [data for _, data in b.events.named("new_message")]
        self.assertEqual(got, sent[:len(got)])  # exactly what was sent, in order: nothing corrupted, nothing made up
        self.assertLess(len(got), len(sent))
        [(peer, reason)] = b.events.named("lost_peer")
        self.assertEqual(peer, a.peer_id)
        self.assertTrue("TLS" in reason or "tls" in reason or "decrypt" in reason or "mac" in reason.lower(), reason)
        # only that connection: both are still connected to the relay, which carries nothing any more
        self.assertTrue(a.is_connected(r.peer_id) and b.is_connected(r.peer_id))
        yield wait_for(lambda: r.relay.stats()["circuits"] == 0)

    @defer.inlineCallbacks
    def test_a_relay_that_corrupts_the_handshake_is_left_for_another(self):
        rs, a, b = yield self.nodes(2)
        corrupt = self.flip_last_byte
        corrupt.armed = True  # type: ignore[attr-defined]
        bad = self.misbehave(corrupt)
        yield a.connect(b.peer_id)
        yield wait_for(lambda: a.peer_id in b.peers.active)
        [bad_relay] = [r for r in rs if r.relay.server is bad[0]]
        [good] = [r for r in rs if r is not bad_relay]
        path = a.peer_details(b.peer_id)["path"]
        self.assertEqual((path["kind"], path["via"]), ("relayed", str(good.peer_id)))
        a.send(b.peer_id, b"through the good relay", 0)
        yield wait_for(lambda: b.events.named("new_message"))
        self.assertEqual(b.events.named("new_message"), [(a.peer_id, b"through the good relay")])
        closed = a.events.named("relay_circuit_closed")
        self.assertEqual([(p, via) for p, via, _ in closed], [(b.peer_id, bad_relay.peer_id)])

    @defer.inlineCallbacks
    def test_a_relay_that_drops_what_it_carries_is_left_for_another(self):
        rs, a, b = yield self.nodes(2, handshake_timeout=1.0)
        drop = lambda payload: None  # noqa: E731
        drop.armed = True  # type: ignore[attr-defined]
        bad = self.misbehave(drop)
        started = reactor.seconds()
        yield a.connect(b.peer_id)
        yield wait_for(lambda: a.peer_id in b.peers.active)
        [bad_relay] = [r for r in rs if r.relay.server is bad[0]]
        path = a.peer_details(b.peer_id)["path"]
        self.assertEqual(path["kind"], "relayed")
        self.assertNotEqual(path["via"], str(bad_relay.peer_id))
        self.assertGreaterEqual(reactor.seconds() - started, 1.0)  # the first circuit's handshake timed out
        a.send(b.peer_id, b"through the other relay", 0)
        yield wait_for(lambda: b.events.named("new_message"))

    @defer.inlineCallbacks
    def test_a_relay_that_drops_everything_fails_the_connect_with_the_reasons(self):
        (r,), a, b = yield self.nodes(1, handshake_timeout=1.0)
        drop = lambda payload: None  # noqa: E731
        drop.armed = True  # type: ignore[attr-defined]
        self.misbehave(drop)
        error = yield self.assertFailure(a.connect(b.peer_id), ConnectFailed)
        self.assertTrue(any("handshake" in reason for reason in error.reasons), error.reasons)
        self.assertTrue(any("no relay" in reason for reason in error.reasons), error.reasons)  # none other to try
        self.assertTrue(a.is_connected(r.peer_id) and b.is_connected(r.peer_id))

    @defer.inlineCallbacks
    def test_a_target_that_refuses_is_not_asked_again_through_another_relay(self):
        rs, a, b = yield self.nodes(2)
        b.config = b.config.replace(accept_relayed=False)
        error = yield self.assertFailure(a.connect(b.peer_id), ConnectFailed)
        [reason] = error.reasons
        self.assertIn("refused (this node does not accept relayed connections)", reason)
        self.assertEqual(sum(r.relay.stats()["circuits_total"] for r in rs), 0)
        self.assertEqual(b.relay.ends.counters["refused"], 1)


class MisbehavingFrameRelayTests(MisbehavingRelayTests):
    """The same, circuits on frames (C{relay_splice} off)."""

    splice = False


class StandbyLimitTests(TestCase):
    """A limit ends the standby circuit of a connection that moved to a direct path: the connection carries on."""

    timeout = 60

    @defer.inlineCallbacks
    def test_time_limit_on_the_standby(self):
        tests = RelayLoopbackTests("test_connect_by_peer_id_goes_through_the_relay")
        tests.addCleanup = self.addCleanup  # type: ignore[method-assign]
        r, a, b = yield tests.relayed(RelayLimits(seconds_per_circuit=2.0))
        ib = yield b.prepare_connection_info()
        address = [x for x in ib.public.addresses if x.transport == "tcp"][0]
        yield a.dialer.dial(address, Purpose(), expected=b.peer_id)
        yield wait_for(lambda: a.events.named("path_changed") and b.events.named("path_changed"))
        yield wait_for(lambda: a.events.named("relay_circuit_closed") and b.events.named("relay_circuit_closed"),
                       timeout=10)
        for node, other in ((a, b), (b, a)):
            self.assertEqual(node.events.named("relay_circuit_closed"),
                             [(other.peer_id, r.peer_id, messages.REASON_TIME_LIMIT)])
            self.assertEqual(node.events.named("lost_peer"), [])
            self.assertTrue(node.peer_details(other.peer_id)["address"].startswith("tcp:127.0.0.1:"))  # direct
        a.send(b.peer_id, b"still connected", 0)
        yield wait_for(lambda: b.events.named("new_message"))
        self.assertEqual(b.events.named("new_message")[-1], (a.peer_id, b"still connected"))
        self.assertEqual(r.relay.stats()["limit_closed"], 1)
