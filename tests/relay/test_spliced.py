"""
Tests for L{crust.relay.spliced}: an end's side of a spliced circuit, on a
L{Clock}: a real L{CircuitTransport} on a fake connection to the relay, the
splice connection on a L{StringTransport}, a recording protocol in place of
the secure connection.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.relay import messages
from crust.relay.circuit import CircuitTransport, RelayAddress, RelayClosed
from crust.relay.messages import RelayFrame
from crust.relay.preamble import SPLICED, encode_preamble
from crust.relay.spliced import ANSWER_TIMEOUT, CLOSE_GRACE, CONNECT_TIMEOUT, EndSplicing, SpliceLink, relay_tcp_address
from crust.wire import Hello

from tests.relay.fakes import A, R, T, FakeConn, FakeSwitch, Recorder

TOKEN = bytes(range(32))
WINDOW = 256 * 1024


class RelayConn:
    """A node's connection to the relay, as L{relay_tcp_address} reads it."""

    def __init__(self, peer_address: Optional[Address], transport_name: str = "tcp", initiator: bool = True,
                 listeners: tuple[Address, ...] = ()) -> None:
        self.peer_address = peer_address
        self.transport_name = transport_name
        self.initiator = initiator
        self.handshake = type("H", (), {"peer_hello": Hello("net", listeners=listeners) if listeners else None})()


class Raw(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class AddressTests(SynchronousTestCase):
    def test_the_address_we_dialled(self) -> None:
        seen = Address.parse("tcp:192.0.2.1:4000")
        self.assertEqual(relay_tcp_address(RelayConn(seen)), seen)

    def test_the_relays_host_with_its_listeners_port(self) -> None:
        seen = Address.parse("udp:192.0.2.1:5000")  # over QUIC, or a connection the relay made
        listeners = (Address.parse("tcp:10.0.0.1:4100"), Address.parse("tcp:192.0.2.1:4200"),
                     Address.parse("udp:192.0.2.1:4300"))
        self.assertEqual(relay_tcp_address(RelayConn(seen, "udp", False, listeners)),
                         Address.parse("tcp:192.0.2.1:4200"))
        # no listener on that host: the port of one elsewhere, on the host we know (never another host)
        self.assertEqual(relay_tcp_address(RelayConn(seen, "udp", False, listeners[:1])),
                         Address.parse("tcp:192.0.2.1:4100"))
        accepted = Address.parse("tcp:192.0.2.1:50123")  # the relay dialled us: its port is not its listener's
        self.assertEqual(relay_tcp_address(RelayConn(accepted, "tcp", False, listeners[1:2])),
                         Address.parse("tcp:192.0.2.1:4200"))

    def test_none(self) -> None:
        self.assertIsNone(relay_tcp_address(RelayConn(None)))
        self.assertIsNone(relay_tcp_address(RelayConn(Address.parse("udp:192.0.2.1:5000"), "udp", False)))
        only_udp = (Address.parse("udp:192.0.2.1:4300"),)
        self.assertIsNone(relay_tcp_address(RelayConn(Address.parse("tcp:192.0.2.1:5"), "tcp", False, only_udp)))


class EndTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.conn = FakeConn()
        self.circuit = CircuitTransport(FakeSwitch(), self.conn, 0x80000005, self.clock, peer=T, via=R, local=A,
                                        window=WINDOW)
        self.dials: list[tuple[Address, Any, float, Deferred]] = []
        self.splicing = EndSplicing(self.clock, self.connect_plain, lambda: True)
        self.built: list[Any] = []
        self.protocol = Recorder()
        self.result = self.splicing.start(self.circuit, TOKEN, RelayConn(Address.parse("tcp:127.0.0.1:4000")),
                                          self.build)
        self.outcome: list[Any] = []
        self.result.addBoth(self.outcome.append)

    def connect_plain(self, address: Address, factory: Any, timeout: float) -> Deferred:
        d: Deferred = Deferred()
        self.dials.append((address, factory, timeout, d))
        return d

    def build(self, transport: Any) -> Any:
        self.built.append(transport)
        transport.attach(self.protocol)
        return self.protocol

    def connected(self) -> tuple[SpliceLink, Raw]:
        [(address, factory, timeout, d)] = self.dials
        self.assertEqual((address, timeout), (Address.parse("tcp:127.0.0.1:4000"), CONNECT_TIMEOUT))
        link = factory.buildProtocol(None)
        raw = Raw()
        link.makeConnection(raw)
        d.callback(link)
        self.assertEqual(raw.value(), encode_preamble(TOKEN))
        return link, raw

    def spliced(self) -> tuple[SpliceLink, Raw]:
        link, raw = self.connected()
        link.dataReceived(SPLICED + b"server hello")
        self.assertEqual(self.built, [link])
        self.assertEqual(self.outcome, [self.protocol])
        self.assertEqual(self.protocol.received, [b"server hello"])
        return link, raw

    def frames(self) -> list[Any]:
        return [messages.decode_frame(t, p) for t, p in self.conn.take() if t == RelayFrame.CLOSE]

    def test_spliced(self) -> None:
        link, raw = self.spliced()
        self.assertEqual(self.splicing.counters, {"spliced": 1, "fell_back": 0})
        link.dataReceived(b"more")
        link.write(b"client bytes")
        self.assertEqual(raw.value(), encode_preamble(TOKEN) + b"client bytes")
        self.assertEqual(self.protocol.received, [b"server hello", b"more"])
        self.assertEqual((link.getPeer(), link.getHost()), (RelayAddress(T, R), RelayAddress(A, R)))
        self.assertEqual(self.conn.take(), [])  # nothing on the circuit
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_answer_means_frames(self) -> None:
        self.circuit.data_received(b"\x80\x00\x00\x05client hello")  # the other end went on with frames already
        link, raw = self.connected()
        link.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.built, [self.circuit])
        self.assertEqual(self.outcome, [self.protocol])
        self.assertEqual(self.protocol.received, [b"client hello"])  # held until the protocol came
        self.assertEqual(self.splicing.counters, {"spliced": 0, "fell_back": 1})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_connection_means_frames(self) -> None:
        [(_, _, _, d)] = self.dials
        d.errback(Failure(ConnectionRefusedError()))
        self.assertEqual(self.built, [self.circuit])

    def test_another_answer_means_frames(self) -> None:
        link, raw = self.connected()
        link.dataReceived(b"\x02")
        self.assertTrue(raw.aborted)
        link.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.built, [self.circuit])

    def test_the_circuit_ending_first(self) -> None:
        link, raw = self.connected()
        self.circuit.close_received(messages.REASON_SHUTDOWN, "the relay is stopping")
        self.clock.advance(0)
        [failure] = self.outcome
        self.assertIsInstance(failure.value, RelayClosed)
        self.assertEqual(failure.value.reason, messages.REASON_SHUTDOWN)
        self.assertTrue(raw.aborted)
        link.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.built, [])

    def test_the_circuit_ending_while_connecting(self) -> None:
        [(_, _, _, d)] = self.dials
        self.circuit.close_received(messages.REASON_PEER_LOST, "")
        self.clock.advance(0)
        self.assertTrue(d.called)  # the connect was cancelled
        self.assertIsInstance(self.outcome[0].value, RelayClosed)
        self.assertEqual(self.built, [])

    def test_cancelled(self) -> None:
        link, raw = self.connected()
        self.result.cancel()
        self.assertTrue(raw.aborted)
        [close] = self.frames()
        self.assertEqual(close.reason, messages.REASON_ABORTED)

    def test_no_answer_in_time_ends_the_circuit(self) -> None:
        link, raw = self.connected()
        self.clock.advance(ANSWER_TIMEOUT)
        [close] = self.frames()
        self.assertEqual(close.reason, messages.REASON_TIMEOUT)
        self.clock.advance(0)
        self.assertEqual(self.outcome[0].value.reason, messages.REASON_TIMEOUT)

    # -- losses, once spliced -------------------------------------------------------------

    def lost(self) -> Failure:
        [failure] = self.protocol.lost
        return failure

    def test_socket_lost_then_close(self) -> None:
        link, raw = self.spliced()
        link.connectionLost(Failure(ConnectionLost("reset")))
        self.assertEqual(self.protocol.lost, [])  # waits for the relay's reason
        self.clock.advance(CLOSE_GRACE / 2)
        self.circuit.close_received(messages.REASON_BYTE_LIMIT, "this relay carries 100 bytes")
        self.clock.advance(0)
        self.assertEqual(self.lost().value.reason, messages.REASON_BYTE_LIMIT)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_socket_lost_no_close(self) -> None:
        link, raw = self.spliced()
        link.connectionLost(Failure(ConnectionLost("reset")))
        self.clock.advance(CLOSE_GRACE)
        [close] = self.frames()  # we tell the relay
        self.assertEqual(close.reason, messages.REASON_PEER_LOST)
        self.assertIn("reset", close.detail)
        self.clock.advance(0)
        self.assertEqual(self.lost().value.reason, messages.REASON_PEER_LOST)

    def test_close_then_socket(self) -> None:
        link, raw = self.spliced()
        self.circuit.close_received(messages.REASON_TIME_LIMIT, "an hour")
        self.clock.advance(0)
        self.assertEqual(self.protocol.lost, [])  # what is still on its way through the socket comes first
        link.dataReceived(b"last words")
        link.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.protocol.received[-1], b"last words")
        self.assertEqual(self.lost().value.reason, messages.REASON_TIME_LIMIT)
        self.assertFalse(raw.aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_and_the_socket_never_ends(self) -> None:
        link, raw = self.spliced()
        self.circuit.close_received(messages.REASON_OVERFLOW, "")
        self.clock.advance(0)
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(raw.aborted)
        link.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.lost().value.reason, messages.REASON_OVERFLOW)

    def test_we_close(self) -> None:
        link, raw = self.spliced()
        link.loseConnection()
        self.assertTrue(raw.disconnecting)
        self.assertEqual(self.frames(), [])  # CLOSE once the socket has flushed
        link.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.lost().check(ConnectionDone))
        [close] = self.frames()
        self.assertEqual(close.reason, messages.REASON_CLOSED)
        self.clock.advance(0)  # the circuit's own end changes nothing now
        self.assertEqual(len(self.protocol.lost), 1)

    def test_we_abort(self) -> None:
        link, raw = self.spliced()
        link.abortConnection()
        [close] = self.frames()  # CLOSE first: the relay ends the other side at once
        self.assertEqual(close.reason, messages.REASON_ABORTED)
        self.assertTrue(raw.aborted)
        link.connectionLost(Failure(ConnectionLost()))
        self.clock.advance(0)
        self.assertTrue(self.lost().check(Exception))
        self.assertEqual(len(self.protocol.lost), 1)

    def test_our_own_end_of_the_circuit_takes_the_socket_at_once(self) -> None:
        link, raw = self.spliced()
        self.circuit.abortConnection()  # (the node stops: its circuits are aborted)
        self.clock.advance(0)
        self.assertTrue(raw.aborted)
        link.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(self.protocol.lost), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
