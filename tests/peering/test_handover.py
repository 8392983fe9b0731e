"""
Handover on loopback: a peer's active connection (marked relayed here) moves
onto a new direct connection with no message lost, repeated or reordered,
and back onto the old one when the new one dies.
"""

import struct

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from crust.session.connection import PathInfo
from crust.session.purpose import Purpose
from crust.wire import CloseReason
from tests.util import make_service, ordered_identities, sleep, wait_for


class Counter:
    """Records numbered messages per priority."""

    def __init__(self):
        self.seen = {}

    def new_message(self, peer_id, data):
        priority, number = struct.unpack("!BI", data[:5])
        self.seen.setdefault(priority, []).append(number)

    def __getattr__(self, name):
        return lambda *args: None


def mark_relayed(*conns):
    for conn in conns:
        conn.path = PathInfo("relayed", "relay", 0.0, via="test")


class HandoverTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def connected(self, chooser_connects):
        high, low = ordered_identities()
        a = make_service(self, high if chooser_connects else low, enable_udp=False)
        b = make_service(self, low if chooser_connects else high, enable_udp=False)
        self.counter = Counter()
        b.add_observer(self.counter)
        ia = yield a.prepare_connection_info()
        ib = yield b.prepare_connection_info()
        yield a.connect(ia, ib.public)
        yield wait_for(lambda: a.peer_id in b.peers.active)
        old_a, old_b = a.peers.active[b.peer_id], b.peers.active[a.peer_id]
        mark_relayed(old_a, old_b)  # as if they came through a relay
        return a, b, ib, old_a, old_b

    @defer.inlineCallbacks
    def test_moves_to_the_direct_connection_without_loss_or_reordering(self):
        for chooser_connects in (True, False):
            a, b, ib, old_a, old_b = yield self.connected(chooser_connects)
            stop = []

            @defer.inlineCallbacks
            def stream():
                n = 0
                while not stop:
                    for priority in (0, 1, 2):
                        a.send(b.peer_id, struct.pack("!BI", priority, n) + b"x" * 200, priority)
                    n += 1
                    if n % 50 == 0:
                        yield sleep(0)
                return n

            sending = stream()
            yield sleep(0.05)
            # a direct connection to the same peer: it replaces the relayed one
            address = [x for x in ib.public.addresses if x.transport == "tcp"][0]
            yield a.dialer.dial(address, Purpose(), expected=b.peer_id)
            yield wait_for(lambda: a.peers.active.get(b.peer_id) is not old_a
                           and b.peers.active.get(a.peer_id) is not old_b)
            yield wait_for(lambda: a.events.named("path_changed") and b.events.named("path_changed"))
            yield sleep(0.05)
            stop.append(True)
            sent = yield sending
            yield wait_for(lambda: len(self.counter.seen.get(0, [])) == sent
                           and len(self.counter.seen.get(1, [])) == sent)
            for priority in (0, 1):
                self.assertEqual(self.counter.seen[priority], list(range(sent)), f"priority {priority}")
            yield wait_for(lambda: len(self.counter.seen.get(2, [])) == sent)
            self.assertEqual(self.counter.seen[2], list(range(sent)))  # nothing lost or reordered at 2 either
            # one connection throughout: no loss, no new success; the event says where it moved
            self.assertEqual(a.events.named("lost_peer"), [])
            self.assertEqual(b.events.named("lost_peer"), [])
            self.assertEqual(len(a.events.named("connect_success")), 1)
            self.assertEqual(len(b.events.named("connect_success")), 1)
            [(peer, old, new)] = a.events.named("path_changed")
            self.assertEqual((peer, old["kind"], new["transport"]), (b.peer_id, "relayed", "tcp"))
            self.assertNotEqual(new["kind"], "relayed")
            # the relayed connection stays, idle, as a standby
            self.assertIs(a.peers.handovers.standby.get(b.peer_id), old_a)
            self.assertTrue(old_a.connected)
            yield a.stopService()
            yield b.stopService()

    @defer.inlineCallbacks
    def moved_to_direct(self):
        """Connected relayed, then moved to a direct connection (the relayed one kept as a standby)."""
        a, b, ib, old_a, old_b = yield self.connected(True)
        address = [x for x in ib.public.addresses if x.transport == "tcp"][0]
        yield a.dialer.dial(address, Purpose(), expected=b.peer_id)
        yield wait_for(lambda: a.events.named("path_changed") and b.events.named("path_changed"))
        return a, b, old_a, old_b, a.peers.active[b.peer_id]

    @defer.inlineCallbacks
    def test_back_to_the_relayed_connection_when_the_direct_one_dies(self):
        a, b, old_a, old_b, direct = yield self.moved_to_direct()
        self.assertIsNot(direct, old_a)
        direct.transport.abortConnection()  # the direct path dies
        yield wait_for(lambda: a.peers.active.get(b.peer_id) is old_a and b.peers.active.get(a.peer_id) is old_b)
        self.assertEqual(len(a.events.named("path_changed")), 2)
        self.assertEqual(a.events.named("lost_peer"), [])
        a.send(b.peer_id, struct.pack("!BI", 0, 7), 0)
        yield wait_for(lambda: self.counter.seen.get(0) == [7])

    @defer.inlineCallbacks
    def test_what_the_dead_path_had_not_sent_goes_on_the_standby(self):
        a, b, old_a, old_b, direct = yield self.moved_to_direct()
        direct.pauseProducing()  # its transport takes no more (a path that went dark): sends queue
        for n in range(50):
            for priority in (0, 1, 2):
                a.send(b.peer_id, struct.pack("!BI", priority, n) + b"y" * 300, priority)
        self.assertEqual(direct.queues.count, 150)
        direct.transport.abortConnection()  # the direct path dies with them queued
        yield wait_for(lambda: a.peers.active.get(b.peer_id) is old_a)
        a.send(b.peer_id, struct.pack("!BI", 0, 50), 0)  # after the move back: behind them
        yield wait_for(lambda: len(self.counter.seen.get(0, [])) == 51 and len(self.counter.seen.get(1, [])) == 50
                       and len(self.counter.seen.get(2, [])) == 50)
        self.assertEqual(self.counter.seen[0], list(range(51)))
        self.assertEqual(self.counter.seen[1], list(range(50)))
        self.assertEqual(self.counter.seen[2], list(range(50)))
        self.assertEqual(a.events.named("message_dropped"), [])
        self.assertEqual(a.events.named("lost_peer"), [])

    @defer.inlineCallbacks
    def test_no_handover_between_two_direct_connections(self):
        a, b, ib, old_a, old_b = yield self.connected(True)
        old_a.path = old_b.path = PathInfo("direct", "tcp")
        address = [x for x in ib.public.addresses if x.transport == "tcp"][0]
        conn = yield a.dialer.dial(address, Purpose(), expected=b.peer_id)
        yield wait_for(lambda: not conn.connected)
        self.assertIs(a.peers.active[b.peer_id], old_a)
        self.assertIn(CloseReason.DUPLICATE.value, conn._close_reason)
        self.assertEqual(a.events.named("path_changed"), [])


class FakeConnection:
    """Just what L{Handovers} uses of a connection."""

    def __init__(self, peer_id, kind):
        self.peer_id = peer_id
        self.path = PathInfo(kind, "test", 0.0)
        self.transport_name = "tcp"
        self.peer_address = None
        self.lanes = 1
        self.connected = True
        self.closing = False
        self.held = None
        self.delivered_to = None
        self.moves_sent = False

    def hold(self):
        self.held = []

    def release(self, deliver):
        self.held = None
        self.delivered_to = deliver

    def send_move(self):
        self.moves_sent = True


class EarlyMoveTests(TestCase):
    """The peer's MOVEs may all arrive on the old connection before its CHOOSE on the new one."""

    def test_all_moves_early_releases_the_new_connection(self):
        from crust.peering.handover import Handovers
        events = []
        handovers = Handovers(lambda *args: events.append(args))
        old, new = FakeConnection("p", "relayed"), FakeConnection("p", "direct")
        handovers.moved(old, "urgent")  # before the handover is known: kept as early
        deliver = object()
        handovers.begin("p", old, new, deliver)
        self.assertIsNone(new.held, "the new connection is still held")
        self.assertIs(new.delivered_to, deliver)
        handovers.moves_sent(old)
        self.assertEqual([e[0] for e in events], ["path_changed"])
        self.assertEqual(handovers.moving, {})

    def test_moves_after_begin_release_the_new_connection(self):
        from crust.peering.handover import Handovers
        handovers = Handovers(lambda *args: None)
        old, new = FakeConnection("p", "relayed"), FakeConnection("p", "direct")
        handovers.begin("p", old, new, "deliver")
        self.assertEqual(new.held, [])
        handovers.moved(old, "urgent")
        self.assertIsNone(new.held)


class RelayedPromotionTests(TestCase):
    """
    The peer chose a relayed connection while a direct one waits for its
    choice: the direct one stays a candidate (the chooser may claim it to
    replace the relayed one); a direct choice closes the others as before.
    """

    def setUp(self):
        from tests.punch.fakes import TableNode
        from tests.util import ordered_identities as ids

        high, low = ids()
        self.peer = high.peer_id
        self.node = TableNode(low.peer_id)  # the smaller id: the peer chooses

    def candidate(self, relayed=False):
        from twisted.internet.testing import StringTransport

        from crust.session.connection import PeerConnection
        from crust.wire import Hello

        from tests.punch.fakes import NET

        conn = PeerConnection(self.node.table, self.node.clock, local_id=self.node.local_id, network=NET,
                              initiator=True, max_message_size=100_000, max_queued_bytes=1_000_000,
                              drop_after=60.0, heartbeat_interval=20.0, inactivity_timeout=120.0,
                              handshake_timeout=10.0)
        if relayed:
            mark_relayed(conn)
        self.node.table.connection_made(conn)
        conn.makeConnection(StringTransport())
        conn.handshake.tls_complete(self.peer)
        conn.dataReceived(Hello(network=NET, handover=True).encode())
        self.assertFalse(conn.is_active)  # waiting for the peer's CHOOSE
        return conn

    def choose(self, conn):
        from crust.wire import FrameType, frame

        conn.dataReceived(frame(FrameType.CHOOSE))
        self.assertTrue(conn.is_active)

    def test_a_relayed_choice_leaves_a_direct_candidate(self):
        direct, relayed = self.candidate(), self.candidate(relayed=True)
        self.choose(relayed)
        self.assertTrue(direct.connected and not direct.closing)
        self.assertIn(direct, self.node.table.candidates[self.peer])

    def test_a_direct_choice_closes_the_other_candidates(self):
        direct, relayed = self.candidate(), self.candidate(relayed=True)
        other = self.candidate()
        self.choose(direct)
        self.assertTrue(relayed.closing and other.closing)
