"""ConnectAttempt: racing a peer's addresses, TCP first (Happy Eyeballs)."""

from types import SimpleNamespace

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.connection_info import PubConnectionInfo
from crust.peering.attempt import ConnectAttempt, Leg
from crust.errors import ConnectFailed
from crust.identity import PeerId

PEER = PeerId(b"\x07" * 32)
TCP = Address.parse("tcp:127.0.0.1:4000")
TCP6 = Address.parse("tcp:[::1]:4000")
UDP = Address.parse("udp:127.0.0.1:4001")


class Dialler:
    def __init__(self):
        self.dials: dict[Address, Deferred] = {}
        self.order: list[Address] = []

    def __call__(self, address, peer_id, attempt):
        d = self.dials[address] = Deferred()
        self.order.append(address)
        return d


class StaggeredDialTests(SynchronousTestCase):
    def make(self, addresses, delay=0.25):
        self.clock = Clock()
        self.dial = Dialler()
        self.done = []
        dial = lambda address, attempt: self.dial(address, PEER, attempt)  # noqa: E731
        legs = [Leg("tcp", 0.0, tuple(a for a in addresses if a.transport == "tcp"), dial),
                Leg("quic", delay, tuple(a for a in addresses if a.transport == "udp"), dial)]
        attempt = ConnectAttempt(PEER, legs, self.clock, 30.0, lambda peer: False, self.done.append)
        self.result = attempt.wait()
        attempt.start()
        return attempt

    def test_quic_waits_for_its_delay(self):
        self.make([UDP, TCP, TCP6])
        self.assertEqual(self.dial.order, [TCP, TCP6])
        self.clock.advance(0.2)
        self.assertEqual(self.dial.order, [TCP, TCP6])
        self.clock.advance(0.05)
        self.assertEqual(self.dial.order, [TCP, TCP6, UDP])

    def test_quic_goes_at_once_when_every_tcp_dial_failed(self):
        self.make([TCP, TCP6, UDP])
        self.dial.dials[TCP].errback(ConnectionRefusedError("refused"))
        self.assertEqual(self.dial.order, [TCP, TCP6])  # one TCP dial still runs
        self.dial.dials[TCP6].errback(ConnectionRefusedError("refused"))
        self.assertEqual(self.dial.order, [TCP, TCP6, UDP])
        self.assertNoResult(self.result)
        self.clock.advance(1)
        self.assertEqual(self.dial.order, [TCP, TCP6, UDP])  # not dialled twice

    def test_success_before_the_delay_never_dials_quic(self):
        attempt = self.make([TCP, UDP])
        attempt.succeeded()
        self.assertEqual(self.successResultOf(self.result), PEER)
        self.clock.advance(1)
        self.assertEqual(self.dial.order, [TCP])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_delay_dials_everything_at_once(self):
        self.make([UDP, TCP], delay=0)
        self.assertEqual(set(self.dial.order), {UDP, TCP})

    def test_quic_only_peer_is_dialled_at_once(self):
        self.make([UDP])
        self.assertEqual(self.dial.order, [UDP])

    def test_forgets_its_connection_when_it_ends(self):
        """The connection holds the attempt (its purpose): the attempt must not hold it back once it ends."""
        import gc

        attempt = self.make([TCP])

        class Conn:
            path = None
            peer_address = TCP
            transport_name = "tcp"
            connected = True
            is_active = True

        conn = Conn()
        self.dial.dials[TCP].callback(conn)
        attempt.promoted(conn, PEER)
        attempt.succeeded()
        self.assertIn(conn, gc.get_referents(attempt.__dict__))
        attempt.lost(conn, "connection lost")
        self.assertNotIn(conn, gc.get_referents(attempt.__dict__))
        self.assertNotIn(conn, attempt._connections)

    def test_failure_lists_every_address(self):
        self.make([TCP, UDP])
        self.dial.dials[TCP].errback(ConnectionRefusedError("tcp refused"))
        self.dial.dials[UDP].errback(TimeoutError("udp timed out"))
        error = self.failureResultOf(self.result, ConnectFailed).value
        self.assertIn("tcp refused", str(error))
        self.assertIn("udp timed out", str(error))


class FakeConn:
    """What the attempt reads of a connection: its path, transport, state."""

    def __init__(self, kind=None, transport_name="tcp"):
        from crust.session.connection import PathInfo

        self.path = PathInfo(kind, "relay", via="r") if kind else None
        self.transport_name = transport_name
        self.connected = True
        self.is_active = False
        self.initiator = True
        self.closed = 0
        self.handshake = SimpleNamespace(peer_hello=None)  # no HELLO to remember listeners from
        self.peer_address = None

    def close_duplicate(self):
        self.closed += 1


RELAY = "relay-target"


class RelayedSuccessTests(SynchronousTestCase):
    """A relayed connection ends the attempt; the tries that could make a direct one run on."""

    def make(self):
        self.clock = Clock()
        self.dial = Dialler()
        self.done = []
        dial = lambda target, attempt: self.dial(target, PEER, attempt)  # noqa: E731
        legs = [Leg("tcp", 0.0, (TCP,), dial), Leg("udp-punch", 0.0, (UDP,), dial, "punched-udp"),
                Leg("relay", 2.0, (RELAY,), dial, "relayed")]
        self.attempt = ConnectAttempt(PEER, legs, self.clock, 30.0, lambda peer: False, self.done.append)
        self.result = self.attempt.wait()
        self.attempt.start()
        self.clock.advance(2.0)
        self.assertEqual(self.dial.order, [TCP, UDP, RELAY])
        self.relayed = FakeConn("relayed")
        self.dial.dials[RELAY].callback(self.relayed)
        self.relayed.is_active = True
        self.attempt.promoted(self.relayed, PEER)

    def cancelled(self, target):
        return self.dial.dials[target].called

    def test_direct_tries_run_on_after_a_relayed_success(self):
        self.make()
        self.attempt.succeeded(self.relayed)
        self.assertEqual(self.successResultOf(self.result), PEER)
        self.assertEqual(self.done, [self.attempt])
        self.assertTrue(self.attempt.running_on)
        self.assertFalse(self.cancelled(TCP) or self.cancelled(UDP))
        # what a try makes afterwards is left to the peer table (it may replace the relayed connection)
        direct = FakeConn()
        self.dial.dials[UDP].callback(direct)
        self.assertEqual(direct.closed, 0)
        self.assertTrue(self.attempt.running_on)  # the TCP try still runs
        self.dial.dials[TCP].errback(ConnectionRefusedError("refused"))
        self.assertFalse(self.attempt.running_on)

    def test_abandon_stops_them(self):
        self.make()
        self.attempt.succeeded(self.relayed)
        self.attempt.abandon()
        self.assertTrue(self.cancelled(TCP))
        self.assertTrue(self.cancelled(UDP))
        self.assertFalse(self.attempt.running_on)

    def test_a_direct_success_abandons_everything(self):
        self.make()
        self.attempt.succeeded(FakeConn())
        self.assertTrue(self.cancelled(TCP))
        self.assertTrue(self.cancelled(UDP))
        self.assertFalse(self.attempt.running_on)

    def test_a_connection_in_its_handshake_is_kept_after_a_relayed_success(self):
        self.make()
        direct = FakeConn()
        self.dial.dials[TCP].callback(direct)  # connected, handshake running
        self.attempt.succeeded(self.relayed)
        self.assertEqual(direct.closed, 0)

    def test_without_the_connection_everything_stops_as_before(self):
        self.make()
        direct = FakeConn()
        self.dial.dials[TCP].callback(direct)
        self.attempt.succeeded()
        self.assertEqual(direct.closed, 1)
        self.assertTrue(self.cancelled(UDP))


class FakeTable:
    def __init__(self):
        self.active = {}
        self.listeners = []

    def listen(self, listener):
        self.listeners.append(listener)

    def has_candidates(self, peer_id):
        return False


class ConnectorRunningOnTests(SynchronousTestCase):
    """The connector keeps an attempt a relayed connection ended while its direct tries run, and stops them."""

    def setUp(self):
        from crust.config import Config
        from crust.connection_info import PubConnectionInfo
        from crust.peering.connector import Connector

        self.clock = Clock()
        self.dial = Dialler()
        dial = lambda target, attempt: self.dial(target, PEER, attempt)  # noqa: E731
        legs = [Leg("udp-punch", 0.0, (UDP,), dial, "punched-udp"), Leg("relay", 0.0, (RELAY,), dial, "relayed")]
        dialer = type("FakeDialer", (), {"plan": lambda self, info: legs})()
        self.table = FakeTable()
        self.connector = Connector(dialer, self.table, self.clock, lambda: Config(), lambda *args: None)
        self.result = self.connector.connect(PubConnectionInfo(PEER))
        self.relayed = FakeConn("relayed")
        self.relayed.purpose = self.connector.attempts[PEER]
        self.dial.dials[RELAY].callback(self.relayed)
        self.table.active[PEER] = self.relayed
        self.connector.peer_promoted(self.relayed, PEER)
        self.assertEqual(self.successResultOf(self.result), PEER)
        self.assertNoResult(self.dial.dials[UDP])

    def test_the_peer_gone_stops_the_tries(self):
        del self.table.active[PEER]
        self.relayed.peer_id = PEER
        self.connector.connection_ended(self.relayed, "closed")
        self.assertTrue(self.dial.dials[UDP].called)

    def test_a_direct_connection_stops_the_tries(self):
        direct = FakeConn()
        direct.purpose = None
        self.table.active[PEER] = direct
        self.connector.peer_promoted(direct, PEER)
        self.assertTrue(self.dial.dials[UDP].called)

    def test_stopping_stops_the_tries(self):
        self.connector.stop("stopping")
        self.assertTrue(self.dial.dials[UDP].called)


class RememberedPeerTests(SynchronousTestCase):
    """Where the connector last knew each peer to be, for C{connect(peer_id)}: its rules and its cap."""

    def setUp(self):
        from crust.config import Config
        from crust.peering.connector import Connector

        self.planned = []
        dialer = type("FakeDialer", (), {"plan": lambda _, info: self.planned.append(info) or []})()
        self.connector = Connector(dialer, FakeTable(), Clock(), lambda: Config(), lambda *args: None)

    def promoted(self, peer_id, listeners, came_from="tcp:203.0.113.9:40000"):
        from crust.address import Address
        from crust.wire import Hello

        conn = FakeConn()
        conn.peer_address = Address.parse(came_from)
        conn.handshake = SimpleNamespace(peer_hello=Hello(network="n", listeners=tuple(map(Address.parse, listeners))))
        self.connector.peer_promoted(conn, peer_id)

    def addresses(self, peer_id):
        return [str(a) for a in self.connector.remembered[peer_id].addresses]

    def connect(self, info):
        self.failureResultOf(self.connector.connect(info), ConnectFailed)  # the fake dialer plans no leg

    def test_a_hello_claim_is_remembered_without_loopback(self):
        self.promoted(PEER, ["tcp:198.51.100.4:5483", "tcp:127.0.0.1:5483", "udp:198.51.100.4:5484"])
        self.assertEqual(self.addresses(PEER), ["tcp:198.51.100.4:5483", "udp:198.51.100.4:5484"])
        # a peer id alone is dialled where it was
        self.connect(PubConnectionInfo(PEER))
        self.assertEqual([str(a) for a in self.planned[-1].addresses],
                         ["tcp:198.51.100.4:5483", "udp:198.51.100.4:5484"])

    def test_loopback_kept_for_a_peer_on_this_host(self):
        self.promoted(PEER, ["tcp:127.0.0.1:5483"], came_from="tcp:127.0.0.1:40000")
        self.assertEqual(self.addresses(PEER), ["tcp:127.0.0.1:5483"])

    def test_given_info_is_kept_over_a_claim_it_covers_and_replaced_when_the_peer_moved(self):
        given = PubConnectionInfo.from_json(
            '{"crust":1,"id":"%s","addrs":["tcp:203.0.113.5:7000","tcp:10.0.0.5:7000"]}' % PEER)
        self.connect(given)
        self.assertIs(self.planned[-1], given)
        self.promoted(PEER, ["tcp:10.0.0.5:7000"])
        self.assertEqual(self.addresses(PEER), ["tcp:203.0.113.5:7000", "tcp:10.0.0.5:7000"])  # says more
        self.promoted(PEER, ["tcp:10.0.0.5:7100"])  # it restarted on another port
        self.assertEqual(self.addresses(PEER), ["tcp:10.0.0.5:7100"])

    def test_info_given_with_addresses_is_dialled_as_given(self):
        self.promoted(PEER, ["tcp:198.51.100.4:5483"])
        given = PubConnectionInfo.from_json('{"crust":1,"id":"%s","addrs":["tcp:203.0.113.5:7000"]}' % PEER)
        self.connect(given)
        self.assertIs(self.planned[-1], given)

    def test_capped_least_recent_forgotten(self):
        from crust.identity import Identity
        from crust.peering import connector

        self.patch(connector, "REMEMBERED_PEERS", 3)
        peers = [Identity.generate().peer_id for _ in range(5)]
        for i, peer_id in enumerate(peers):
            self.promoted(peer_id, ["tcp:198.51.100.%d:5483" % (i + 1)])
            if i == 2:
                self.promoted(peers[0], ["tcp:198.51.100.1:5483"])  # connected again: most recent
        self.assertEqual(list(self.connector.remembered), [peers[0], peers[3], peers[4]])
