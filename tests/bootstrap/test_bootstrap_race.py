"""
Two nodes that bootstrap off each other at the same moment, on a Clock.

Node A asks peer B to be its bootstrap peer while B asks A the same: each
opens a request to the other, and the chooser keeps one connection.  When
A's own request gives way to B's, A is connected only through B's request,
which B still drops if its bootstrap won elsewhere first.  A must count that
connection only once B holds it too, and ask B again if B dropped it: a
bootstrap never reports a peer the node is not connected to.

A runs a real L{PeerTable} and L{Bootstrapper}; B is played by hand, frame
by frame, on L{StringTransport}s.  The same harness checks that a bootstrap
failing the same way again and again (a node retrying while its seed is
down) warns once, not at every attempt.
"""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.bootstrap.bootstrapper import Bootstrapper
from crust.config import Config, HardCodedContact
from crust.identity import PeerId
from crust.session.connection import PeerConnection
from crust.wire import HEARTBEAT_ASK, CloseReason, FrameType, Hello, Intent, encode_close, frame

from tests.punch.fakes import NET, TableNode, split_frames
from tests.util import ordered_identities

B_ADDRESS = Address.parse("tcp:10.0.0.2:4000")


def new_connection(node: TableNode, *, initiator: bool, intent: Intent = Intent.CONNECT,
                   expected: PeerId | None = None, purpose=None) -> PeerConnection:
    """A connection of C{node}'s table on a L{StringTransport}, its TLS not done yet."""
    kwargs = {"purpose": purpose} if purpose is not None else {}
    conn = PeerConnection(node.table, node.clock, local_id=node.local_id, network=NET, intent=intent,
                          expected_peer=expected, initiator=initiator, max_message_size=100_000,
                          max_queued_bytes=1_000_000, drop_after=60.0, heartbeat_interval=20.0,
                          inactivity_timeout=120.0, handshake_timeout=10.0, **kwargs)
    node.table.connection_made(conn)
    conn.makeConnection(StringTransport())
    return conn


class FakeDialer:
    """Makes A's bootstrap requests: each a connection waiting for B's side of the handshake."""

    def __init__(self, node: TableNode) -> None:
        self.node = node
        self.made: list[PeerConnection] = []

    def dial(self, address, purpose, *, expected, intent=Intent.CONNECT):
        conn = new_connection(self.node, initiator=True, intent=intent, expected=expected, purpose=purpose)
        self.made.append(conn)
        return succeed(conn)


def sent(conn: PeerConnection) -> list[int]:
    """The types of the frames C{conn} wrote since the last call."""
    transport = conn.transport
    data = transport.value()
    transport.clear()
    return [ftype for ftype, _ in split_frames(data)]


def lose(conn: PeerConnection) -> None:
    conn.connectionLost(Failure(ConnectionDone()))


class BootstrapHarness(SynchronousTestCase):
    """A's table and bootstrapper, B played by hand: what the tests below share."""

    def make(self, a_chooses: bool) -> None:
        high, low = ordered_identities()
        a, b = (high, low) if a_chooses else (low, high)
        self.b = b.peer_id
        self.node = TableNode(a.peer_id)
        self.clock = self.node.clock
        self.table = self.node.table
        self.table.set_bootstrap_admitter(lambda conn, peer_id, hello: conn.admission_result(True))
        self.dialer = FakeDialer(self.node)
        self.events: list[tuple] = []
        config = Config(hard_coded_contacts=(HardCodedContact(self.b, B_ADDRESS),))
        self.bootstrapper = Bootstrapper(
            peer_id=a.peer_id, clock=self.clock, config=lambda: config, dialer=self.dialer, table=self.table,
            emit=lambda *event: self.events.append(event), cache=None, ready=lambda: succeed(None),
            discovery=lambda: None, transports=lambda: ("tcp",))
        self.result = self.bootstrapper.bootstrap()
        self.assertEqual(len(self.dialer.made), 1)
        self.ours = self.dialer.made[0]
        self.ours.handshake.tls_complete(self.b)
        sent(self.ours)

    def peer_request(self) -> PeerConnection:
        """B's own bootstrap request reaches A and A grants it (A then chooses it, if A is the chooser)."""
        conn = new_connection(self.node, initiator=False)
        conn.handshake.tls_complete(self.b)
        conn.dataReceived(Hello(network=NET, intent=Intent.BOOTSTRAP).encode())
        return conn

    def granted(self, conn: PeerConnection) -> None:
        """B answers A's request C{conn}: its HELLO, then GRANT."""
        conn.dataReceived(Hello(network=NET).encode() + frame(FrameType.GRANT))

    def connected(self) -> bool:
        return self.table.usable(self.b) is not None

    def race_lost_by_our_request(self) -> PeerConnection:
        """
        A is the chooser: it chose B's request, and its own request, granted
        next, is closed as a duplicate of it.
        """
        self.make(a_chooses=True)
        theirs = self.peer_request()
        self.assertIs(self.table.active.get(self.b), theirs)
        self.assertEqual(sent(theirs), [FrameType.HELLO, FrameType.GRANT, FrameType.CHOOSE])
        self.granted(self.ours)
        self.assertTrue(self.ours.closing)
        lose(self.ours)
        return theirs

    def drop(self, conn: PeerConnection) -> None:
        """B closes C{conn} as a duplicate, and it is gone."""
        conn.dataReceived(encode_close(CloseReason.DUPLICATE, "another connection to this peer was chosen"))
        lose(conn)

    def assert_asked_again_and_granted(self) -> None:
        """A is connected to B through nothing, asked again, and bootstraps off B on that request."""
        self.assertFalse(self.connected())
        self.assertNoResult(self.result)
        self.assertEqual(len(self.dialer.made), 2)  # asked again
        again = self.dialer.made[1]
        again.handshake.tls_complete(self.b)
        self.granted(again)
        self.assertEqual(self.successResultOf(self.result), self.b)
        self.assertIs(self.table.usable(self.b), again)


class ConcurrentBootstrapTests(BootstrapHarness):

    def test_the_peer_drops_its_request_after_a_while(self) -> None:
        """
        B's bootstrap won elsewhere before A's CHOOSE reached it: B closes its
        request, however late that news reaches A.  A reports nothing until
        then, and then asks B again, and bootstraps off B on that request.
        """
        theirs = self.race_lost_by_our_request()
        self.clock.advance(5.0)
        self.assertNoResult(self.result)
        self.assertEqual(self.events, [])
        self.drop(theirs)
        self.assert_asked_again_and_granted()
        self.assertEqual(self.events, [("bootstrap_connect", self.b, B_ADDRESS)])

    def test_the_peer_drops_its_request_before_ours_has_closed(self) -> None:
        """
        The same race, with B's CLOSE of its request reaching A before A's own
        request, closed as its duplicate, has finished closing: when A's
        request ends, A is connected to B through nothing, and must ask again
        (it used to report the duplicate as the candidate's failure).
        """
        self.make(a_chooses=True)
        theirs = self.peer_request()
        self.assertEqual(sent(theirs), [FrameType.HELLO, FrameType.GRANT, FrameType.CHOOSE])
        self.granted(self.ours)
        self.assertTrue(self.ours.closing)  # closed as a duplicate of B's request...
        self.drop(theirs)  # ... which B drops before A's close is done
        lose(self.ours)
        self.assert_asked_again_and_granted()

    def test_the_peer_closes_ours_as_a_duplicate_of_a_request_it_then_dropped(self) -> None:
        """
        B is the chooser: it closes A's request as a duplicate of its own,
        which it drops before choosing it.  A asks again.
        """
        self.make(a_chooses=False)
        theirs = self.peer_request()
        self.drop(self.ours)
        self.drop(theirs)
        self.assertNoResult(self.result)
        self.assertEqual(len(self.dialer.made), 2)

    def test_the_peer_keeps_its_request(self) -> None:
        """B answers on its request: it holds it active, and A counts it as its bootstrap."""
        theirs = self.race_lost_by_our_request()
        # A asked B to show it holds B's request: a HEARTBEAT that asks for an answer, after the CHOOSE
        self.assertEqual(split_frames(theirs.transport.value()), [(FrameType.HEARTBEAT, HEARTBEAT_ASK)])
        self.clock.advance(5.0)
        self.assertNoResult(self.result)
        theirs.dataReceived(frame(FrameType.HEARTBEAT))
        self.assertEqual(self.successResultOf(self.result), self.b)
        self.assertIs(self.table.usable(self.b), theirs)
        self.assertEqual(self.events, [("bootstrap_connect", self.b, B_ADDRESS)])
        self.assertEqual(len(self.dialer.made), 1)

    def test_asked_again_only_once(self) -> None:
        """A second request that gives way to a request B drops again fails that candidate."""
        theirs = self.race_lost_by_our_request()
        lose(theirs)
        again = self.dialer.made[1]
        again.handshake.tls_complete(self.b)
        theirs = self.peer_request()  # B asks again too, and wins again
        self.granted(again)
        lose(again)
        lose(theirs)
        self.failureResultOf(self.result)
        self.assertEqual(len(self.dialer.made), 2)
        self.assertFalse(self.connected())
        self.assertEqual([e[0] for e in self.events], ["bootstrap_failed"])

    def test_the_peer_chose_its_request(self) -> None:
        """B is the chooser: it made its request active before its CHOOSE, so A counts it at once."""
        self.make(a_chooses=False)
        theirs = self.peer_request()
        self.assertIsNone(self.table.active.get(self.b))  # a candidate, waiting for B's choice
        self.granted(self.ours)
        theirs.dataReceived(frame(FrameType.CHOOSE))
        self.assertIs(self.table.active.get(self.b), theirs)
        self.drop(self.ours)
        self.assertEqual(self.successResultOf(self.result), self.b)
        self.assertIs(self.table.usable(self.b), theirs)
        self.assertEqual(self.events, [("bootstrap_connect", self.b, B_ADDRESS)])

    def test_our_request_chosen(self) -> None:
        """No race: B grants A's request and A chooses it."""
        self.make(a_chooses=True)
        self.granted(self.ours)
        self.assertEqual(self.successResultOf(self.result), self.b)
        self.assertIs(self.table.usable(self.b), self.ours)


class RepeatedFailureLogTests(BootstrapHarness):
    """A bootstrap that fails the same way again and again warns once (the keeper retries for hours)."""

    def setUp(self) -> None:
        from twisted.logger import Logger

        self.logged: list[dict] = []
        self.patch(Bootstrapper, "log", Logger(observer=self.logged.append))

    def levels(self, fragment: str) -> list[str]:
        from twisted.logger import formatEvent

        return [e["log_level"].name for e in self.logged if fragment in formatEvent(e)]

    def fail_once(self) -> None:
        conn = self.dialer.made[-1]
        lose(conn)  # B never answers: the only candidate fails
        self.failureResultOf(self.result)

    def again(self) -> None:
        self.result = self.bootstrapper.bootstrap()
        self.dialer.made[-1].handshake.tls_complete(self.b)

    def test_the_same_failure_is_warned_about_once(self) -> None:
        self.make(a_chooses=True)
        self.fail_once()
        self.again()
        self.fail_once()
        self.clock.advance(Bootstrapper.REPEAT_QUIET - 1)
        self.again()
        self.fail_once()
        self.assertEqual(self.levels("all 1 candidates failed"), ["warn", "debug", "debug"])
        self.assertEqual(self.levels("bootstrapping as node"), ["info", "debug", "debug"])
        self.assertEqual(len([e for e in self.events if e[0] == "bootstrap_failed"]), 3)  # every one is told
        self.clock.advance(1)  # long enough: said again
        self.again()
        self.fail_once()
        self.assertEqual(self.levels("all 1 candidates failed")[-1], "warn")

    def test_a_success_ends_the_quiet(self) -> None:
        self.make(a_chooses=True)
        self.fail_once()
        self.again()
        self.granted(self.dialer.made[-1])
        self.assertEqual(self.successResultOf(self.result), self.b)
        self.table.disconnect(self.b)
        lose(self.dialer.made[-1])
        self.again()
        self.fail_once()
        self.assertEqual(self.levels("all 1 candidates failed"), ["warn", "warn"])
