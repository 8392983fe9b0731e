"""
Tests for L{crust.relay.circuit.CircuitTransport}: one end of a circuit over
a fake connection to the relay: chunks, credit, pausing the producer above,
holding what arrives, and how the circuit ends.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from crust.address import Address
from crust.identity import Identity
from crust.relay import messages
from crust.relay.circuit import GRANT_SHARE, CircuitTLS, CircuitTransport, RelayClosed
from crust.relay.messages import MAX_CHUNK, RelayFrame
from crust.transport.tls import ConnectionCreator, make_context

from tests.relay.fakes import A, T, R, FakeConn, FakeSwitch, Recorder

C = 0x80000001
WINDOW = 256 * 1024


def data_payload(data: bytes, c: int = C) -> bytes:
    return messages.encode_data(c, data)[5:]


class CircuitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.conn = FakeConn()
        self.switch = FakeSwitch()
        self.closed: list[tuple[str, str]] = []
        self.circuit = CircuitTransport(self.switch, self.conn, C, self.clock, peer=T, via=R, local=A,
                                        window=WINDOW, on_closed=lambda *a: self.closed.append(a))
        self.proto = Recorder()
        self.circuit.attach(self.proto)
        self.circuit.registerProducer(self.proto, True)

    def lost(self) -> object:
        """The reason the protocol was told (after the turn that tells it)."""
        self.assertEqual(self.proto.lost, [])  # never in the same turn
        self.clock.advance(0)
        [failure] = self.proto.lost
        return failure.value

    def test_interfaces(self) -> None:
        verifyObject(ITransport, self.circuit)
        verifyObject(IConsumer, self.circuit)
        verifyObject(IPushProducer, self.circuit)

    def test_writes_of_one_turn_are_joined(self) -> None:
        self.circuit.write(b"one ")
        self.circuit.writeSequence([b"two ", b"three"])
        self.assertEqual(self.conn.frames, [])
        self.clock.advance(0)
        [(ftype, payload)] = self.conn.take()
        self.assertEqual(messages.decode_data(payload), (C, b"one two three"))
        self.assertEqual(self.circuit.bytes_sent, 13)

    def test_large_writes_go_in_chunks_at_once(self) -> None:
        data = bytes(range(256)) * 1000  # 256,000 bytes
        self.circuit.write(data)
        frames = [messages.decode_data(p) for t, p in self.conn.frames]
        self.assertEqual([len(chunk) for _, chunk in frames], [MAX_CHUNK] * 3)
        self.clock.advance(0)
        self.assertEqual(self.conn.data(), data)

    def test_out_of_credit_pauses_the_producer_until_credit_comes(self) -> None:
        data = b"x" * (WINDOW + 50_000)
        self.circuit.write(data)
        self.assertEqual(len(self.conn.data()), WINDOW)
        self.assertEqual(self.circuit.queued_bytes, 50_000)
        self.assertEqual(self.proto.events, ["pause"])
        self.clock.advance(0)
        self.assertEqual(self.conn.frames, [])  # nothing without credit
        self.circuit.credit_received(20_000)
        self.assertEqual(len(self.conn.data()), 20_000)
        self.assertEqual(self.proto.events, ["pause"])  # still out of credit
        self.circuit.credit_received(40_000)
        self.assertEqual(len(self.conn.data()), 30_000)
        self.assertEqual(self.proto.events, ["pause", "resume"])
        self.assertEqual(self.circuit.queued_bytes, 0)

    def test_a_producer_registered_while_out_of_credit_is_paused(self) -> None:
        self.circuit.unregisterProducer()
        self.circuit.write(b"y" * (WINDOW + 1))
        other = Recorder()
        self.circuit.registerProducer(other, True)
        self.assertEqual(other.events, ["pause"])
        self.assertRaises(RuntimeError, self.circuit.registerProducer, Recorder(), True)

    def test_received_data_is_delivered_and_credit_granted_back(self) -> None:
        for _ in range(3):
            self.circuit.data_received(data_payload(b"z" * 30_000))
        self.assertEqual(b"".join(self.proto.received), b"z" * 90_000)
        [(ftype, payload)] = self.conn.take()
        self.assertEqual(ftype, RelayFrame.CREDIT)
        self.assertEqual(messages.decode_credit(payload), (C, 90_000))
        self.assertGreaterEqual(90_000, WINDOW // GRANT_SHARE)
        self.circuit.data_received(data_payload(b"z"))
        self.assertEqual(self.conn.take(), [])  # a byte is not worth a CREDIT frame

    def test_paused_reading_holds_data_and_credit(self) -> None:
        self.circuit.pauseProducing()
        self.circuit.data_received(data_payload(b"a" * 40_000))
        self.circuit.data_received(data_payload(b"b" * 40_000))
        self.assertEqual(self.proto.received, [])
        self.assertEqual(self.conn.take(), [])
        self.circuit.resumeProducing()
        self.assertEqual(self.proto.received, [b"a" * 40_000, b"b" * 40_000])
        [(ftype, payload)] = self.conn.take()
        self.assertEqual(messages.decode_credit(payload), (C, 80_000))

    def test_the_other_end_past_its_window_ends_the_circuit(self) -> None:
        self.circuit.pauseProducing()
        for _ in range(WINDOW // MAX_CHUNK):
            self.circuit.data_received(data_payload(b"w" * MAX_CHUNK))
        self.assertEqual(self.conn.take(), [])
        self.circuit.data_received(data_payload(b"w"))
        [(ftype, payload)] = self.conn.take()
        close = messages.decode_close(payload)
        self.assertEqual((ftype, close.c, close.reason), (RelayFrame.CLOSE, C, messages.REASON_OVERFLOW))
        error = self.lost()
        self.assertIsInstance(error, RelayClosed)
        self.assertEqual(error.reason, messages.REASON_OVERFLOW)
        self.assertEqual(self.closed, [(messages.REASON_OVERFLOW, close.detail)])
        self.assertEqual(self.switch.removed, [(self.conn, C)])

    def test_credit_for_bytes_never_sent_ends_the_circuit(self) -> None:
        self.circuit.write(b"q" * 100)
        self.clock.advance(0)
        self.conn.take()
        self.circuit.credit_received(101)
        [(ftype, payload)] = self.conn.take()
        self.assertEqual(messages.decode_close(payload).reason, messages.REASON_OVERFLOW)
        self.assertEqual(self.lost().reason, messages.REASON_OVERFLOW)

    def test_lose_connection_sends_what_is_left_then_close(self) -> None:
        self.circuit.write(b"r" * (WINDOW + 10))
        self.conn.data()
        self.circuit.loseConnection()
        self.assertTrue(self.circuit.disconnecting)
        self.assertEqual(self.conn.take(), [])  # waiting for credit
        self.circuit.write(b"after")  # dropped: the circuit is closing
        self.circuit.credit_received(10)
        frames = self.conn.take()
        self.assertEqual([t for t, _ in frames], [RelayFrame.DATA, RelayFrame.CLOSE])
        self.assertEqual(messages.decode_data(frames[0][1]), (C, b"r" * 10))
        self.assertEqual(messages.decode_close(frames[1][1]).reason, messages.REASON_CLOSED)
        self.assertIsInstance(self.lost(), ConnectionDone)
        self.assertEqual(self.closed, [(messages.REASON_CLOSED, "")])
        self.assertIn("stop", self.proto.events)

    def test_lose_connection_with_nothing_left_closes_at_once(self) -> None:
        self.circuit.loseConnection()
        [(ftype, payload)] = self.conn.take()
        self.assertEqual(messages.decode_close(payload).reason, messages.REASON_CLOSED)
        self.assertIsInstance(self.lost(), ConnectionDone)
        self.circuit.loseConnection()
        self.circuit.abortConnection()
        self.assertEqual(self.conn.take(), [])  # once

    def test_abort_drops_what_is_left(self) -> None:
        self.circuit.write(b"s" * (WINDOW + 10))
        self.conn.data()
        self.circuit.abortConnection()
        [(ftype, payload)] = self.conn.take()
        self.assertEqual(messages.decode_close(payload).reason, messages.REASON_ABORTED)
        self.assertIsInstance(self.lost(), ConnectionAborted)
        self.circuit.credit_received(100)
        self.assertEqual(self.conn.take(), [])

    def test_close_from_the_relay_carries_its_reason(self) -> None:
        self.circuit.write(b"pending")
        self.circuit.close_received(messages.REASON_BYTE_LIMIT, "256 MiB each way")
        self.clock.advance(0)
        self.assertEqual(self.conn.take(), [])  # nothing sent after the end, not even CLOSE
        [failure] = self.proto.lost
        self.assertEqual((failure.value.reason, failure.value.detail), ("byte-limit", "256 MiB each way"))
        self.assertIn("byte-limit", str(failure.value))
        self.assertIn(str(R), str(failure.value))
        self.assertEqual(self.closed, [("byte-limit", "256 MiB each way")])
        self.circuit.write(b"more")
        self.circuit.data_received(data_payload(b"late"))
        self.clock.advance(0)
        self.assertEqual((self.conn.take(), self.proto.received), ([], []))

    def test_losing_the_relay_connection(self) -> None:
        self.circuit.leg_lost("connection lost: reset")
        error = self.lost()
        self.assertEqual(error.reason, messages.REASON_PEER_LOST)
        self.assertIn("reset", error.detail)

    def test_a_closing_relay_connection_ends_the_circuit(self) -> None:
        self.conn.open = False
        self.circuit.write(b"x" * MAX_CHUNK)
        self.assertEqual(self.lost().reason, messages.REASON_PEER_LOST)

    def test_addresses(self) -> None:
        self.assertIsNone(Address.from_sockaddr("tcp", self.circuit.getPeer()))
        self.assertIsNone(Address.from_sockaddr("tcp", self.circuit.getHost()))
        self.assertEqual((self.circuit.getPeer().peer, self.circuit.getPeer().via), (T, R))
        self.assertEqual(self.circuit.getHost().peer, A)


class Relay:
    """Two circuit ends joined by a pretend relay that moves their frames when pumped."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.conns = (FakeConn(), FakeConn())
        self.ends = (CircuitTransport(FakeSwitch(), self.conns[0], 1, clock, peer=T, via=R, window=WINDOW),
                     CircuitTransport(FakeSwitch(), self.conns[1], 2, clock, peer=A, via=R, window=WINDOW))
        self.forwarded = 0
        self.seen: list[bytes] = []

    def pump(self) -> None:
        for _ in range(100_000):
            self.clock.advance(0)
            moved = False
            for side in (0, 1):
                other = self.ends[1 - side]
                for ftype, payload in self.conns[side].take():
                    moved = True
                    if ftype == RelayFrame.DATA:
                        self.forwarded += len(payload) - 4
                        self.seen.append(payload)
                        other.data_received(payload)
                    elif ftype == RelayFrame.CREDIT:
                        other.credit_received(messages.decode_credit(payload)[1])
                    elif ftype == RelayFrame.CLOSE:
                        close = messages.decode_close(payload)
                        other.close_received(close.reason, close.detail)
            if not moved and not self.clock.getDelayedCalls():
                return
        raise AssertionError("the circuit never settled")


class TlsOverCircuitTests(SynchronousTestCase):
    def test_tls_end_to_end_with_credit(self) -> None:
        """Twisted's TLS runs over a circuit: a megabyte each way, never more than a window on its way."""
        clock = Clock()
        relay = Relay(clock)
        protos = (Recorder(), Recorder())
        for end, proto, client in zip(relay.ends, protos, (True, False)):
            identity = Identity.generate()
            tls = TLSMemoryBIOFactory(ConnectionCreator(make_context(identity)), client,
                                      Factory.forProtocol(lambda proto=proto: proto), clock=clock)
            tls.protocol = CircuitTLS
            end.attach(tls.buildProtocol(end.getPeer()))
        relay.pump()
        big = bytes(range(256)) * 4096  # 1 MiB
        a_tls, t_tls = relay.ends[0].protocol, relay.ends[1].protocol
        a_tls.write(big)
        t_tls.write(big[::-1])
        relay.pump()
        self.assertEqual(b"".join(protos[1].received), big)
        self.assertEqual(b"".join(protos[0].received), big[::-1])
        self.assertGreater(relay.forwarded, 2 * len(big))  # ciphertext, both ways
        self.assertFalse(any(big[1000:1064] in p or big[::-1][1000:1064] in p for p in relay.seen))
        relay.ends[0].close_received(messages.REASON_TIME_LIMIT, "an hour")
        clock.advance(0)
        [failure] = protos[0].lost
        self.assertEqual(failure.value.reason, messages.REASON_TIME_LIMIT)  # the relay's reason, not TLS's
