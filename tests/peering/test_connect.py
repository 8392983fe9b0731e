"""ConnectAttempt: racing a peer's addresses, TCP first (Happy Eyeballs)."""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
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
