"""
Tests for L{crust.punch.manager}: two L{PunchManager}s with their own
identities, their envelopes carried by a fake rendezvous on one L{Clock},
and fake punchers that record what they were asked.
"""

from __future__ import annotations

import gc
import json
import os
from types import SimpleNamespace
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.candidates import Candidate, CandidateKind
from crust.connection_info import PubConnectionInfo
from crust.errors import CrustError
from crust.identity import Identity, PeerId
from crust.punch.coordinator import EXCHANGE_TIMEOUT, ExchangeFailed
from crust.punch.manager import MAX_EXCHANGES, REQUEST_RATE, PunchManager
from crust.punch.messages import EnvelopeType, seal
from crust.punch.plan import PunchPlan
from crust.session.connection import PathInfo
from crust.session.purpose import Purpose
from crust.wire import network_hash

from tests.punch.fakes import NET, TableNode

ALICE = Identity.from_seed(b"A" * 32)
BOB = Identity.from_seed(b"B" * 32)
CAROL = Identity.from_seed(b"C" * 32)
MALLORY = Identity.from_seed(b"M" * 32)
R = Identity.from_seed(b"R" * 32).peer_id
WALL = 1_700_000_000.0
HOP = 0.0625  # seconds an envelope takes from one end to the other through R


def info_of(identity: Identity, last: int) -> PubConnectionInfo:
    return PubConnectionInfo(identity.peer_id, candidates=(
        Candidate(Address.parse(f"udp:203.0.113.{last}:5000"), CandidateKind.SRFLX, "echo"),
        Candidate(Address.parse(f"tcp:203.0.113.{last}:4242"), CandidateKind.SRFLX, "hello"),
    ))


class FakePuncher:
    """Records punches; a punch runs until stopped."""

    def __init__(self) -> None:
        self.punches: list[tuple[PunchPlan, Purpose, Deferred]] = []
        self.prepared: list[tuple[PunchPlan, float]] = []
        self.stopped: list[PeerId] = []
        self.stopped_all = 0
        self.from_address: dict[Address, PeerId] = {}

    def punch(self, plan: PunchPlan, purpose: Purpose) -> Deferred:
        d: Deferred = Deferred()
        self.punches.append((plan, purpose, d))
        return d

    def prepare(self, plan: PunchPlan, purpose: Purpose, lifetime: float) -> None:
        self.prepared.append((plan, lifetime))

    def stop(self, peer_id: PeerId) -> None:
        self.stopped.append(peer_id)

    def stop_all(self) -> None:
        self.stopped_all += 1

    def running(self, peer_id: PeerId) -> bool:
        return any(p.peer_id == peer_id for p, _, _ in self.punches) and peer_id not in self.stopped

    def punched_from(self, address: Address) -> Optional[PeerId]:
        return self.from_address.get(address)


class FakeRendezvous:
    """In place of a manager's L{Rendezvous}: every peer is reachable through R; envelopes take L{HOP} seconds."""

    def __init__(self, net: "Net", owner: PeerId) -> None:
        self.net = net
        self.owner = owner

    def find(self, peer_id: PeerId) -> Deferred:
        return succeed(R)

    def send(self, via: PeerId, to: PeerId, blob: bytes) -> bool:
        return self.net.carry(self.owner, via, to, blob)

    def stop(self) -> None:
        pass


class Net:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1024.0)
        self.nodes: dict[PeerId, "Node"] = {}
        self.log: list[tuple[PeerId, PeerId, bytes]] = []  # (from, to, blob) of every envelope sent
        self.drop: Callable[[PeerId, PeerId, bytes], bool] = lambda f, t, b: False

    def carry(self, source: PeerId, via: PeerId, to: PeerId, blob: bytes) -> bool:
        self.log.append((source, to, blob))
        node = self.nodes.get(to)
        if node is not None and not self.drop(source, to, blob):
            self.clock.callLater(HOP, node.manager._delivered, source, via, blob)
        return True

    def deliver(self, to: PeerId, claimed: PeerId, blob: bytes) -> None:
        """R delivers C{blob} to C{to}, saying it comes from C{claimed}."""
        self.nodes[to].manager._delivered(claimed, R, blob)


class Node:
    def __init__(self, net: Net, identity: Identity, last: int, network: str = NET) -> None:
        self.identity = identity
        self.peer_id = identity.peer_id
        self.info = info_of(identity, last)
        self.udp = FakePuncher()
        self.tcp = FakePuncher()
        self.table = TableNode(identity.peer_id, net.clock).table
        self.manager = PunchManager(identity=identity, network=network, clock=net.clock, table=self.table,
                                    serving=lambda: False, our_info=lambda: self.info, udp=self.udp,
                                    tcp=self.tcp, wall=lambda: WALL + net.clock.seconds())
        self.manager.rendezvous = FakeRendezvous(net, identity.peer_id)
        net.nodes[identity.peer_id] = self


class ManagerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net()
        self.alice = Node(self.net, ALICE, 1)
        self.bob = Node(self.net, BOB, 2)
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def hops(self, count: int) -> None:
        """Let envelopes travel C{count} hops (one at a time: each hop sends the next)."""
        for _ in range(count):
            self.net.clock.advance(HOP)

    def exchange(self, initiator: Node, responder: Node) -> list[Any]:
        results: list[Any] = []
        initiator.manager.exchange(responder.peer_id, R).addBoth(results.append)
        return results

    def drops(self, text: str = "dropping a rendezvous envelope") -> list[dict]:
        return [e for e in self.logged if text in e.get("log_format", "")]

    def sealed(self, sender: Identity = ALICE, to: PeerId = BOB.peer_id, network: str = NET,
               mtype: EnvelopeType = EnvelopeType.CONNECT, attempt: bytes = b"\x07" * 8,
               info: Optional[PubConnectionInfo] = None, ts: Optional[float] = None) -> bytes:
        body: dict[str, Any] = {} if mtype is EnvelopeType.SYNC else {
            "info": json.loads((info or info_of(sender, 9)).to_json()), "tcp": True, "udp": True}
        now = WALL + self.net.clock.seconds()
        return seal(sender, to, network, mtype, attempt, body, ts if ts is not None else now)

    # -- the exchange ---------------------------------------------------------------------

    def test_exchange_both_sides_punch_with_the_same_attempt(self):
        results = self.exchange(self.alice, self.bob)
        self.hops(1)  # CONNECT reaches Bob
        self.assertEqual(self.bob.manager.counters["answered"], 1)
        self.assertEqual(results, [])
        self.hops(1)  # REPLY reaches Alice, she sends SYNC
        [plan] = results
        self.assertIsInstance(plan, PunchPlan)
        self.assertEqual(plan.peer_id, BOB.peer_id)
        self.assertEqual(plan.info, self.bob.info)
        self.assertEqual(plan.via, R)
        self.assertAlmostEqual(plan.start_at, self.net.clock.seconds() + HOP)  # t1 + rtt/2
        self.assertEqual((self.bob.udp.punches, self.bob.tcp.punches), ([], []))
        self.hops(1)  # SYNC reaches Bob: he punches, both ways
        [(udp_plan, _, _)] = self.bob.udp.punches
        [(tcp_plan, _, _)] = self.bob.tcp.punches
        for theirs in (udp_plan, tcp_plan):
            self.assertEqual(theirs.attempt, plan.attempt)
            self.assertEqual(theirs.peer_id, ALICE.peer_id)
            self.assertEqual(theirs.info, self.alice.info)
            self.assertAlmostEqual(theirs.start_at, plan.start_at)  # the same moment on both sides
        # Alice's punches are her connect attempt's legs
        self.alice.manager.punch_udp(plan, Purpose())
        self.assertEqual(self.alice.udp.punches[0][0].attempt, udp_plan.attempt)
        self.assertEqual(self.alice.manager._exchanges, {})
        self.assertEqual(self.bob.manager._exchanges, {})
        self.assertEqual(self.drops(), [])

    def test_responder_prepares_its_tcp_punch_on_connect(self):
        """From the CONNECT on, the responder's listener knows the peer's SYN (it may come before the SYNC)."""
        results = self.exchange(self.alice, self.bob)
        self.hops(1)
        [(prepared, lifetime)] = self.bob.tcp.prepared
        self.assertEqual(prepared.peer_id, ALICE.peer_id)
        self.assertEqual(prepared.info, self.alice.info)
        self.assertEqual(lifetime, EXCHANGE_TIMEOUT)
        self.hops(2)
        self.assertEqual(prepared.attempt, results[0].attempt)
        self.assertEqual(self.bob.tcp.punches[0][0].attempt, prepared.attempt)  # the punch it prepared
        self.assertEqual(self.bob.udp.prepared, [])

    def test_responder_marks_what_its_punches_made(self):
        """A responder's punch run is over when its connection is promoted: the connection says how it was made."""
        self.exchange(self.alice, self.bob)
        self.hops(3)
        udp_conn, tcp_conn = SimpleNamespace(path=None), SimpleNamespace(path=PathInfo("direct", "tcp"))
        self.bob.udp.punches[0][2].callback(udp_conn)
        self.bob.tcp.punches[0][2].callback(tcp_conn)
        self.assertEqual(udp_conn.path, PathInfo("punched-udp", "udp-punch"))
        self.assertEqual(tcp_conn.path, PathInfo("direct", "tcp"))  # a path already said is kept

    def test_refused_by_the_rendezvous(self):
        self.net.drop = lambda f, t, b: True
        results = self.exchange(self.alice, self.bob)
        self.alice.manager._refused(R, BOB.peer_id, "not-connected", "this node is not connected to that peer")
        [failure] = results
        self.assertTrue(failure.check(ExchangeFailed))
        self.assertIn("not-connected", str(failure.value))
        self.assertEqual(self.alice.manager._exchanges, {})

    def test_exchange_cancelled(self):
        d = self.alice.manager.exchange(BOB.peer_id, R)
        d.addErrback(lambda f: None)
        d.cancel()
        self.assertEqual(self.alice.manager._exchanges, {})
        self.hops(2)  # Bob's REPLY finds nothing waiting
        self.net.clock.advance(EXCHANGE_TIMEOUT + 1)
        self.assertEqual(self.bob.udp.punches, [])

    def test_responder_without_sync_times_out_quietly(self):
        """No SYNC: Bob's exchange ends after its timeout, logged, with no unhandled error and no punch."""
        self.net.drop = lambda f, t, b: f == ALICE.peer_id and len(self.net.log) == 3  # the SYNC
        results = self.exchange(self.alice, self.bob)
        self.hops(3)
        self.assertIsInstance(results[0], PunchPlan)
        self.net.clock.advance(EXCHANGE_TIMEOUT)
        self.assertEqual(self.bob.manager._exchanges, {})
        self.assertEqual(self.bob.udp.punches, [])
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(ExchangeFailed), [])
        [line] = [e for e in self.logged if "SYNC" in str(e.get("reason", ""))]
        self.assertIn(ALICE.peer_id.short(), line["reason"])

    # -- bad envelopes --------------------------------------------------------------------

    def assert_dropped(self, blob: bytes, reason: str, claimed: PeerId = ALICE.peer_id) -> None:
        before = self.bob.manager.counters["dropped"]
        self.net.deliver(BOB.peer_id, claimed, blob)
        self.net.clock.advance(EXCHANGE_TIMEOUT * 2)
        self.assertEqual(self.bob.manager.counters["dropped"], before + 1)
        self.assertEqual(self.bob.manager.counters["answered"], 0)
        self.assertEqual(self.bob.udp.punches, [])
        self.assertEqual(self.bob.tcp.punches, [])
        self.assertEqual([e for e in self.net.log if e[0] == BOB.peer_id], [])  # no REPLY
        event = self.drops()[-1]
        self.assertEqual(event["reason"], reason)
        self.assertEqual(event["peer"], str(claimed))

    def test_forged_envelope(self):
        self.assert_dropped(self.sealed(sender=MALLORY, info=self.alice.info), "unreadable")

    def test_another_network(self):
        self.assert_dropped(self.sealed(network=network_hash("elsewhere")), "other-network")

    def test_stale(self):
        self.assert_dropped(self.sealed(ts=WALL + self.net.clock.seconds() - 3600), "stale")

    def test_garbage(self):
        self.assert_dropped(os.urandom(200), "unreadable")

    def test_too_large(self):
        self.assert_dropped(b"\x00" * 9000, "too-large")

    def test_replayed_connect(self):
        """The same CONNECT delivered twice: answered once; after the exchange, again dropped; punched once."""
        results = self.exchange(self.alice, self.bob)
        connect = self.net.log[0][2]
        self.hops(1)
        self.net.deliver(BOB.peer_id, ALICE.peer_id, connect)  # while the exchange runs
        self.hops(2)
        self.assertIsInstance(results[0], PunchPlan)
        self.assertEqual(len(self.bob.udp.punches), 1)
        self.net.deliver(BOB.peer_id, ALICE.peer_id, connect)  # after it
        sync = self.net.log[2][2]
        self.net.deliver(BOB.peer_id, ALICE.peer_id, sync)
        self.net.clock.advance(EXCHANGE_TIMEOUT * 2)
        self.assertEqual(self.bob.manager.counters["answered"], 1)
        self.assertEqual(self.bob.manager.counters["dropped"], 3)
        self.assertEqual({e["reason"] for e in self.drops()}, {"replayed"})
        self.assertEqual(len(self.bob.udp.punches), 1)
        self.assertEqual(len(self.bob.tcp.punches), 1)
        self.assertEqual(len([e for e in self.net.log if e[0] == BOB.peer_id]), 1)  # one REPLY

    def test_connect_with_another_peers_info(self):
        blob = self.sealed(info=info_of(CAROL, 3))
        self.net.deliver(BOB.peer_id, ALICE.peer_id, blob)
        self.assertEqual(self.bob.manager.counters["answered"], 0)
        self.assertEqual(self.bob.manager.counters["dropped"], 1)
        self.assertEqual(self.bob.manager._exchanges, {})

    def test_stray_reply_and_sync(self):
        """A REPLY or SYNC of an attempt we do not run: nothing happens."""
        self.net.deliver(BOB.peer_id, ALICE.peer_id, self.sealed(mtype=EnvelopeType.REPLY))
        self.net.deliver(BOB.peer_id, ALICE.peer_id, self.sealed(mtype=EnvelopeType.SYNC))
        self.net.clock.advance(EXCHANGE_TIMEOUT * 2)
        self.assertEqual(self.bob.udp.punches, [])
        self.assertEqual(self.net.log, [])

    def test_drop_log_lines_are_rate_limited(self):
        for _ in range(200):
            self.net.deliver(BOB.peer_id, ALICE.peer_id, os.urandom(120))
        self.assertEqual(self.bob.manager.counters["dropped"], 200)
        self.assertLessEqual(len(self.drops()), 10)
        self.assertGreaterEqual(len(self.drops()), 1)

    # -- limits ---------------------------------------------------------------------------

    def test_connects_from_one_peer_are_rate_limited(self):
        rate, burst = REQUEST_RATE
        flood = int(burst) + 7
        alice_results = [self.exchange(self.alice, self.bob) for _ in range(flood)]
        carol = Node(self.net, CAROL, 3)
        carol_results = self.exchange(carol, self.bob)
        self.hops(2)
        self.assertEqual(self.bob.manager.counters["answered"], int(burst) + 1)
        self.assertEqual(self.bob.manager.counters["rate_limited"], 7)
        self.assertEqual(sum(isinstance(r[0], PunchPlan) for r in alice_results if r), int(burst))
        self.assertIsInstance(carol_results[0], PunchPlan)
        self.assertTrue(any("too many lately" in e.get("log_format", "") for e in self.logged))
        self.net.clock.advance(EXCHANGE_TIMEOUT)
        failed = [r[0] for r in alice_results if r and not isinstance(r[0], PunchPlan)]
        self.assertEqual(len(failed), 7)
        self.assertIn("no reply", str(failed[0].value))
        self.assertEqual(len(self.bob.udp.punches), int(burst) + 1)

    def test_max_exchanges(self):
        self.net.drop = lambda f, t, b: True  # nobody answers
        pending = [self.exchange(self.alice, self.bob) for _ in range(MAX_EXCHANGES)]
        self.assertEqual(len(self.alice.manager._exchanges), MAX_EXCHANGES)
        [over] = self.exchange(self.alice, self.bob)
        self.assertTrue(over.check(CrustError))
        self.assertIn("too many", str(over.value))
        # a CONNECT from Carol finds no room either
        self.net.deliver(ALICE.peer_id, CAROL.peer_id, self.sealed(sender=CAROL, to=ALICE.peer_id))
        self.assertEqual(self.alice.manager.counters["answered"], 0)
        self.assertEqual(self.alice.manager.counters["rate_limited"], 1)
        self.assertEqual(len(self.alice.manager._exchanges), MAX_EXCHANGES)
        self.net.clock.advance(EXCHANGE_TIMEOUT + 0.1)
        self.assertTrue(all(len(r) == 1 and r[0].check(ExchangeFailed) for r in pending))
        self.assertEqual(self.alice.manager._exchanges, {})
        self.net.drop = lambda f, t, b: False
        results = self.exchange(self.alice, self.bob)
        self.hops(2)
        self.assertIsInstance(results[0], PunchPlan)

    # -- connections ----------------------------------------------------------------------

    def promoted(self, node: Node, address: str, path: Optional[PathInfo] = None) -> Any:
        conn = SimpleNamespace(peer_address=Address.parse(address), path=path, transport_name=address.split(":")[0])
        node.manager.peer_promoted(conn, ALICE.peer_id)
        return conn

    def test_promotion_stops_punches_and_tags_the_path(self):
        self.exchange(self.alice, self.bob)
        self.hops(3)
        self.assertTrue(self.bob.udp.running(ALICE.peer_id))
        conn = self.promoted(self.bob, "udp:203.0.113.1:5000")
        self.assertEqual(conn.path, PathInfo("punched-udp", "udp-punch"))
        self.assertEqual(self.bob.udp.stopped, [ALICE.peer_id])
        self.assertEqual(self.bob.tcp.stopped, [ALICE.peer_id])

    def test_accepted_tcp_while_punching(self):
        self.exchange(self.alice, self.bob)
        self.hops(3)
        conn = self.promoted(self.bob, "tcp:203.0.113.1:4242")
        self.assertEqual(conn.path, PathInfo("punched-tcp", "tcp-punch"))

    def test_from_an_address_a_punch_confirmed(self):
        self.bob.udp.from_address[Address.parse("udp:198.51.100.9:7000")] = ALICE.peer_id
        conn = self.promoted(self.bob, "udp:198.51.100.9:7000")
        self.assertEqual(conn.path, PathInfo("punched-udp", "udp-punch"))

    def test_no_punch_no_tag(self):
        conn = self.promoted(self.bob, "tcp:203.0.113.1:4242")
        self.assertIsNone(conn.path)
        self.assertEqual(self.bob.tcp.stopped, [ALICE.peer_id])

    def test_incoming_while_punching_is_punched(self):
        """A connection the peer opened while we punch (the upgrade of a relayed connection) is the punch's."""
        self.exchange(self.alice, self.bob)
        self.hops(3)
        conn = self.promoted(self.bob, "tcp:203.0.113.1:4242", PathInfo("incoming", ""))
        self.assertEqual(conn.path, PathInfo("punched-tcp", "tcp-punch"))

    def test_a_known_path_is_kept(self):
        self.exchange(self.alice, self.bob)
        self.hops(3)
        direct = PathInfo("direct", "tcp", 0.1)
        conn = self.promoted(self.bob, "tcp:203.0.113.1:4242", direct)
        self.assertIs(conn.path, direct)

    def test_no_responder_punch_when_connected_meanwhile(self):
        self.exchange(self.alice, self.bob)
        self.hops(2)
        self.bob.table.active[ALICE.peer_id] = SimpleNamespace(closing=False, transport_name="tcp", path=None)
        self.hops(1)
        self.assertEqual(self.bob.udp.punches, [])

    def test_responder_punches_when_connected_through_a_relay(self):
        """A relayed connection's upgrade: the peer asks to punch, and a direct path needs both sides."""
        self.exchange(self.alice, self.bob)
        self.hops(2)
        self.bob.table.active[ALICE.peer_id] = SimpleNamespace(closing=False, transport_name="tcp",
                                                               path=PathInfo("relayed", "relay", via=str(R)))
        self.hops(1)
        self.assertEqual(len(self.bob.udp.punches), 1)
        self.assertEqual(len(self.bob.tcp.punches), 1)

    def relayed(self, node: Node) -> Any:
        conn = SimpleNamespace(peer_address=None, path=PathInfo("relayed", "relay", via=str(R)),
                               transport_name="tcp", peer_id=ALICE.peer_id, closing=False)
        node.table.active[ALICE.peer_id] = conn
        node.manager.peer_promoted(conn, ALICE.peer_id)
        return conn

    def test_a_relayed_connection_leaves_punches_running(self):
        self.exchange(self.alice, self.bob)
        self.hops(3)
        self.relayed(self.bob)
        self.assertEqual((self.bob.udp.stopped, self.bob.tcp.stopped), ([], []))
        self.assertTrue(self.bob.manager.punching(ALICE.peer_id))

    def test_punches_stop_when_the_relayed_connection_ends(self):
        self.exchange(self.alice, self.bob)
        self.hops(3)
        conn = self.relayed(self.bob)
        del self.bob.table.active[ALICE.peer_id]
        self.bob.manager.connection_ended(conn, "closed by the peer's user")
        self.assertEqual((self.bob.udp.stopped, self.bob.tcp.stopped), ([ALICE.peer_id], [ALICE.peer_id]))

    def test_punches_go_on_when_a_relayed_candidate_ends(self):
        """Only the end of the relayed connection that was active stops them, not any relayed connection's."""
        self.exchange(self.alice, self.bob)
        self.hops(3)
        other = SimpleNamespace(peer_address=None, path=PathInfo("relayed", "relay"), transport_name="tcp",
                                peer_id=ALICE.peer_id, closing=False)
        self.bob.manager.connection_ended(other, "TLS handshake failed")
        self.assertEqual(self.bob.udp.stopped, [])

    def test_stop(self):
        self.net.drop = lambda f, t, b: True
        results = self.exchange(self.alice, self.bob)
        self.alice.manager.stop()
        self.assertEqual(self.alice.manager._exchanges, {})
        self.assertEqual((self.alice.udp.stopped_all, self.alice.tcp.stopped_all), (1, 1))
        sent = len(self.net.log)
        self.net.clock.advance(EXCHANGE_TIMEOUT * 2)
        self.assertEqual(len(self.net.log), sent)  # nothing more goes out
        self.assertEqual(self.net.clock.getDelayedCalls(), [])
        # whoever waited on the exchange hears that it ended (once)
        self.assertEqual(len(results), 1)
        self.assertTrue(results[0].check(CancelledError))

    def test_punchers_off(self):
        node = Node(self.net, CAROL, 3)
        node.manager.udp = node.manager.tcp = None
        plan = node.manager.blind_plan(self.alice.info)
        for punch in (node.manager.punch_udp, node.manager.punch_tcp):
            failures: list[Any] = []
            punch(plan, Purpose()).addErrback(failures.append)
            self.assertIn("off on this node", str(failures[0].value))

    def test_blind_plan_is_the_same_on_both_sides(self):
        a = self.alice.manager.blind_plan(self.bob.info)
        b = self.bob.manager.blind_plan(self.alice.info)
        self.assertEqual(a.attempt, b.attempt)
        self.assertIsNone(a.via)
        self.assertFalse(a.coordinated)

