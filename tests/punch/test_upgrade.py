"""
Tests for L{crust.punch.upgrade.Upgrader}: when a relayed connection tries
for a direct path, on a L{Clock}, with a fake manager and peer table.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.errors import CrustError
from crust.identity import Identity
from crust.punch.upgrade import Upgrader
from crust.session.connection import is_relayed
from crust.session.connection import PathInfo

PEER = Identity.from_seed(b"P" * 32).peer_id
RELAY = Identity.from_seed(b"R" * 32).peer_id


class FakeManager:
    def __init__(self) -> None:
        self.exchanges: list[tuple[Any, Any, Deferred]] = []
        self.finds: list[Any] = []
        self.running = False

    def exchange(self, peer_id, via) -> Deferred:
        d: Deferred = Deferred()
        self.exchanges.append((peer_id, via, d))
        return d

    def find(self, peer_id) -> Deferred:
        self.finds.append(peer_id)
        return fail(CrustError("no common peer"))

    def punching(self, peer_id) -> bool:
        return self.running

    def punch_udp(self, plan, purpose) -> Deferred:
        return fail(CrustError("no UDP path"))

    def punch_tcp(self, plan, purpose) -> Deferred:
        return fail(CrustError("no TCP path"))


class FakeTable:
    def __init__(self) -> None:
        self.active: dict[Any, Any] = {}

    def listen(self, listener) -> None:
        self.listener = listener

    def usable(self, peer_id):
        return self.active.get(peer_id)


def relayed(initiator: bool = True, via: str = str(RELAY)) -> Any:
    return SimpleNamespace(transport_name="tcp", path=PathInfo("relayed", "relay", via=via), initiator=initiator,
                           peer_id=PEER, closing=False)


class UpgraderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.manager = FakeManager()
        self.table = FakeTable()
        self.table.active[RELAY] = SimpleNamespace(transport_name="tcp", path=None)
        self.upgrader = Upgrader(self.manager, self.table, self.clock, lambda: (1.0, 4.0))

    def promote(self, conn: Any) -> None:
        self.table.active[PEER] = conn
        self.upgrader.peer_promoted(conn, PEER)

    def fail_exchange(self, index: int = -1) -> None:
        self.manager.exchanges[index][2].errback(CrustError("the peer did not answer"))

    def test_tries_after_the_configured_interval_then_doubles_up_to_the_longest(self):
        self.promote(relayed())
        self.clock.advance(0.99)
        self.assertEqual(self.manager.exchanges, [])
        self.clock.advance(0.01)
        self.assertEqual([(p, v) for p, v, _ in self.manager.exchanges], [(PEER, RELAY)])  # through the relay
        self.fail_exchange()
        waits = []
        for _ in range(4):
            before = self.clock.seconds()
            count = len(self.manager.exchanges)
            while len(self.manager.exchanges) == count:
                self.clock.advance(0.25)
            waits.append(self.clock.seconds() - before)
            self.fail_exchange()
        self.assertEqual(waits, [2.0, 4.0, 4.0, 4.0])
        self.assertEqual(self.upgrader.tries, 5)

    def test_nothing_for_a_direct_connection(self):
        self.promote(SimpleNamespace(transport_name="tcp", path=PathInfo("punched-udp", "udp-punch"),
                                     initiator=True))
        self.clock.advance(10)
        self.assertEqual(self.manager.exchanges, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_side_that_was_invited_leaves_it_to_the_other(self):
        self.promote(relayed(initiator=False))
        self.clock.advance(10)
        self.assertEqual(self.manager.exchanges, [])

    def test_waits_while_a_punch_to_the_peer_still_runs(self):
        self.manager.running = True
        self.promote(relayed())
        self.clock.advance(3)
        self.assertEqual(self.manager.exchanges, [])
        self.manager.running = False
        self.clock.advance(1)
        self.assertEqual(len(self.manager.exchanges), 1)

    def test_tries_soon_after_a_long_punch_ends(self):
        self.upgrader = Upgrader(self.manager, self.table, self.clock, lambda: (5.0, 300.0))
        self.manager.running = True
        self.promote(relayed())
        self.clock.advance(12.0)  # the connect's birthday punch runs for 15 s
        self.assertEqual(self.manager.exchanges, [])
        self.manager.running = False
        self.clock.advance(1.0)
        self.assertEqual(len(self.manager.exchanges), 1)

    def test_stops_once_direct(self):
        self.promote(relayed())
        self.clock.advance(1)
        self.table.active[PEER] = SimpleNamespace(transport_name="udp", path=PathInfo("punched-udp", "udp-punch"))
        self.manager.exchanges[0][2].callback(SimpleNamespace())  # a plan; the punch then made the direct path
        self.clock.advance(10)
        self.assertEqual(len(self.manager.exchanges), 1)

    def test_turn_relayed_finds_a_rendezvous(self):
        self.promote(relayed(via="turn:198.51.100.10:3478"))
        self.clock.advance(1)
        self.assertEqual(self.manager.finds, [PEER])

    def test_peer_gone_forgets_it(self):
        conn = relayed()
        self.promote(conn)
        del self.table.active[PEER]
        self.upgrader.connection_ended(conn, "closed")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_is_relayed(self):
        self.assertTrue(is_relayed(relayed()))
        self.assertTrue(is_relayed(SimpleNamespace(transport_name="relay", path=None)))
        self.assertFalse(is_relayed(SimpleNamespace(transport_name="tcp", path=None)))
        self.assertFalse(is_relayed(None))
