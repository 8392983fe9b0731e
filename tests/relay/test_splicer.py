"""
Tests for L{crust.relay.splicer}: the relay's side of spliced circuits, on a
L{Clock}, with L{StringTransport}s for the ends' sockets and a fake circuit
that records what the splice tells it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from crust.config import RelayLimits
from crust.relay import messages, splicer
from crust.relay.preamble import SPLICED, encode_preamble
from crust.relay.splicer import CLOSE_GRACE, SPLICE_WAIT, SpliceSocket, SplicePump, Splicer, _send

from tests.relay.fakes import A as PEER_A
from tests.relay.fakes import T as PEER_T

A, T = splicer.A, splicer.T


class Machine:
    """The circuit's inputs, recorded."""

    def __init__(self) -> None:
        self.inputs: list[tuple[Any, ...]] = []

    def closed(self, side: int, reason: str, detail: str) -> None:
        self.inputs.append(("closed", side, reason))

    def lost(self, side: int, reason: str) -> None:
        self.inputs.append(("lost", side, reason))

    def limit(self, reason: str, detail: str) -> None:
        self.inputs.append(("limit", reason, detail))


class Server:
    def __init__(self) -> None:
        self.counters = {"bytes_relayed": 0}


class Core:
    """A circuit at the relay, as the splice sees it."""

    def __init__(self, clock: Clock, limits: RelayLimits) -> None:
        self.clock = clock
        self.limits = limits
        self.server = Server()
        self.opener, self.target = PEER_A, PEER_T
        self.input = Machine()
        self.closes: list[tuple[int, str]] = []

    def close_leg(self, side: int, reason: str, detail: str) -> None:
        self.closes.append((side, reason))


class Socket(StringTransport):
    """An end's socket at the relay: records aborts."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.splicer = Splicer(self.clock, lambda: True)
        self.core = Core(self.clock, RelayLimits(rate_per_circuit=None))
        session = self.splicer.offer(self.core)  # type: ignore[arg-type]
        assert session is not None
        self.session = session

    def present(self, side: int) -> tuple[SpliceSocket, Socket]:
        token = self.session.tokens[side]
        assert token is not None
        claimed = self.splicer.claim(encode_preamble(token), None)
        assert isinstance(claimed, SpliceSocket), claimed
        transport = Socket()
        claimed.makeConnection(transport)
        return claimed, transport

    def spliced(self) -> tuple[SpliceSocket, Socket, SpliceSocket, Socket]:
        self.assertIsNotNone(self.session.ready())
        st, tt = self.present(T)
        self.assertEqual(tt.value(), b"")  # no answer until both are in
        sa, ta = self.present(A)
        self.assertEqual((ta.value(), tt.value()), (SPLICED, SPLICED))
        ta.clear()
        tt.clear()
        return sa, ta, st, tt

    def test_both_in_then_bytes_both_ways(self) -> None:
        sa, ta, st, tt = self.spliced()
        self.assertTrue(self.session.spliced)
        self.assertEqual(self.splicer.counters["spliced"], 1)
        sa.dataReceived(b"client hello")
        st.dataReceived(b"server hello")
        self.assertEqual((tt.value(), ta.value()), (b"client hello", b"server hello"))
        self.assertEqual(self.core.server.counters["bytes_relayed"], 24)
        self.assertEqual(len(self.splicer.tokens), 0)  # used up
        # each pump is the producer of the socket it writes to
        self.assertIs(tt.producer, self.session.pumps[A])
        self.assertIs(ta.producer, self.session.pumps[T])

    def test_a_token_is_good_once_and_bad_preambles_are_refused(self) -> None:
        token = self.session.tokens[T]
        assert token is not None
        self.assertIsInstance(self.splicer.claim(encode_preamble(token), None), SpliceSocket)
        self.assertIn("unknown or used", self.splicer.claim(encode_preamble(token), None))  # type: ignore[arg-type]
        self.assertIn("wrong magic", self.splicer.claim(b"X" * 37, None))  # type: ignore[arg-type]
        self.assertEqual(self.splicer.counters["refused"], 2)

    def test_one_end_late_means_frames(self) -> None:
        self.session.ready()
        a_token = self.session.tokens[A]
        st, tt = self.present(T)
        self.clock.advance(SPLICE_WAIT)
        self.assertEqual(self.session.state, "off")
        self.assertTrue(tt.disconnecting)  # closed without a byte: T goes on with frames
        self.assertFalse(tt.aborted)
        self.assertEqual(tt.value(), b"")
        assert a_token is not None
        self.assertIn("unknown or used", self.splicer.claim(encode_preamble(a_token), None))  # type: ignore[arg-type]
        self.assertEqual(self.splicer.counters["fell_back"], 1)
        self.assertTrue(self.session.data_frame())  # the frames pass

    def test_a_data_frame_ends_the_offer(self) -> None:
        self.session.ready()
        st, tt = self.present(T)
        self.assertTrue(self.session.data_frame())
        self.assertEqual(self.session.state, "off")
        self.assertTrue(tt.disconnecting)
        self.assertIn("no longer waits", self.session.present(A))  # type: ignore[arg-type]

    def test_no_data_frames_once_spliced(self) -> None:
        self.spliced()
        self.assertFalse(self.session.data_frame())

    def test_a_socket_lost_before_the_splice_ends_the_offer(self) -> None:
        self.session.ready()
        st, tt = self.present(T)
        st.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.session.state, "off")
        self.assertEqual(self.core.input.inputs, [])  # the circuit goes on, on frames

    def test_bytes_before_the_answer_end_the_offer(self) -> None:
        self.session.ready()
        st, tt = self.present(T)
        st.dataReceived(b"too soon")
        self.assertEqual(self.session.state, "off")
        self.assertTrue(tt.disconnecting)

    def test_an_end_closing_its_socket_closes_the_circuit_gracefully(self) -> None:
        sa, ta, st, tt = self.spliced()
        sa.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.core.input.inputs, [("closed", A, messages.REASON_CLOSED)])
        self.assertTrue(self.session.graceful)
        self.session.end()  # (the circuit's finish, after the CLOSE went to T)
        self.assertTrue(tt.disconnecting)
        self.assertFalse(tt.aborted)  # flushed first...
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(tt.aborted)  # ...within the grace

    def test_a_graceful_close_that_flushes_leaves_no_timer(self) -> None:
        sa, ta, st, tt = self.spliced()
        sa.connectionLost(Failure(ConnectionDone()))
        self.session.end()
        st.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failed_socket_is_peer_lost_at_both_ends(self) -> None:
        sa, ta, st, tt = self.spliced()
        st.connectionLost(Failure(ConnectionLost("reset")))
        self.assertEqual(self.core.closes, [(T, messages.REASON_PEER_LOST)])
        [(name, side, reason)] = self.core.input.inputs
        self.assertEqual((name, side), ("lost", T))
        self.assertIn("reset", reason)
        self.session.end()
        self.assertTrue(ta.aborted)

    def test_a_closed_frame_waits_for_the_socket(self) -> None:
        sa, ta, st, tt = self.spliced()
        self.assertFalse(self.session.close_frame(A, messages.REASON_CLOSED))
        self.assertTrue(self.session.close_frame(A, messages.REASON_ABORTED))
        self.clock.advance(CLOSE_GRACE)
        self.assertEqual(self.core.input.inputs, [("closed", A, messages.REASON_CLOSED)])
        self.assertTrue(self.session.graceful)

    def test_a_closed_frame_after_the_socket_ended_closes_at_once(self) -> None:
        sa, ta, st, tt = self.spliced()
        sa.lost = True
        self.assertTrue(self.session.close_frame(A, messages.REASON_CLOSED))

    def test_a_limit_aborts_both_sockets(self) -> None:
        sa, ta, st, tt = self.spliced()
        self.session.end()
        self.assertTrue(ta.aborted and tt.aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing_offered_when_unavailable_or_full(self) -> None:
        self.assertIsNone(Splicer(self.clock, lambda: False).offer(self.core))  # type: ignore[arg-type]
        full = Splicer(self.clock, lambda: True)
        full.tokens.cap = 0
        self.assertIsNone(full.offer(self.core))  # type: ignore[arg-type]


class PumpSession:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.clock = core.clock
        self.limits: list[tuple[str, str]] = []

    def limit(self, reason: str, detail: str) -> None:
        self.limits.append((reason, detail))


class PumpTests(SynchronousTestCase):
    def pump(self, **limits: Any) -> tuple[SplicePump, StringTransport, StringTransport, PumpSession]:
        self.clock = Clock()
        session = PumpSession(Core(self.clock, RelayLimits(**limits)))
        source, sink = StringTransport(), StringTransport()
        pump = SplicePump(session, A, source, sink)
        pump.start()
        return pump, source, sink, session

    def test_bytes_pass_counted(self) -> None:
        pump, source, sink, session = self.pump(rate_per_circuit=None)
        pump.data(b"x" * 1000)
        pump.data(b"y" * 10)
        self.assertEqual(sink.value(), b"x" * 1000 + b"y" * 10)
        self.assertEqual((pump.passed, session.core.server.counters["bytes_relayed"]), (1010, 1010))
        self.assertEqual(source.producerState, "producing")

    def test_the_byte_limit_ends_the_circuit(self) -> None:
        pump, source, sink, session = self.pump(bytes_per_circuit=1500, rate_per_circuit=None)
        pump.data(b"x" * 1000)
        pump.data(b"y" * 501)  # would pass the limit: not passed on
        self.assertEqual(sink.value(), b"x" * 1000)
        [(reason, detail)] = session.limits
        self.assertEqual(reason, messages.REASON_BYTE_LIMIT)
        self.assertIn("1500 bytes", detail)

    def test_the_rate_pauses_the_reading_side(self) -> None:
        window = 64 * 1024
        pump, source, sink, session = self.pump(rate_per_circuit=window, window=window)
        pump.data(b"x" * window)  # the bucket's worth
        self.assertEqual(source.producerState, "producing")
        pump.data(b"x" * (window // 2))  # half a second over
        self.assertEqual(source.producerState, "paused")
        self.clock.advance(0.49)
        self.assertEqual(source.producerState, "paused")
        self.clock.advance(0.02)
        self.assertEqual(source.producerState, "producing")
        self.assertEqual(len(sink.value()), window + window // 2)  # paced, never dropped
        self.assertEqual(session.limits, [])

    def test_backpressure_and_rate_together(self) -> None:
        window = 64 * 1024
        pump, source, sink, session = self.pump(rate_per_circuit=window, window=window)
        pump.pauseProducing()  # the sink's buffer is full
        self.assertEqual(source.producerState, "paused")
        pump.data(b"x" * (2 * window))  # (what was read before the pause) a second over the rate
        pump.resumeProducing()  # the sink drained, but the bucket is empty
        self.assertEqual(source.producerState, "paused")
        self.clock.advance(1.01)
        self.assertEqual(source.producerState, "producing")
        pump.pauseProducing()
        self.clock.advance(10)
        self.assertEqual(source.producerState, "paused")  # still full
        pump.resumeProducing()
        self.assertEqual(source.producerState, "producing")

    def test_a_stopped_pump_passes_nothing(self) -> None:
        pump, source, sink, session = self.pump(rate_per_circuit=64 * 1024, window=64 * 1024)
        pump.data(b"x" * 100 * 1024)
        pump.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(sink.producer)
        pump.data(b"more")
        self.assertEqual(len(sink.value()), 100 * 1024)


class Sock:
    def __init__(self, takes: int) -> None:
        self.takes = takes
        self.sent = b""

    def send(self, data: bytes) -> int:
        if self.takes < 0:
            raise BlockingIOError()
        n = min(self.takes, len(data))
        self.sent += bytes(data[:n])
        return n


class TcpLike:
    """What L{_send} reads of a Twisted TCP transport."""

    connected = True
    disconnecting = False

    def __init__(self, takes: int) -> None:
        self.socket = Sock(takes)
        self._tempDataLen = 0
        self.dataBuffer = b""
        self.offset = 0
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))
        self._tempDataLen += len(data)


class SendTests(SynchronousTestCase):
    def test_straight_to_the_socket_when_nothing_waits(self) -> None:
        t = TcpLike(takes=10**6)
        _send(t, b"abc")
        self.assertEqual((t.socket.sent, t.written), (b"abc", []))

    def test_what_the_socket_does_not_take_is_buffered_and_order_kept(self) -> None:
        t = TcpLike(takes=2)
        _send(t, b"abcde")
        _send(t, b"fg")  # something waits now: through the buffer
        self.assertEqual((t.socket.sent, t.written), (b"ab", [b"cde", b"fg"]))

    def test_a_full_socket(self) -> None:
        t = TcpLike(takes=-1)
        _send(t, b"abc")
        self.assertEqual(t.written, [b"abc"])

    def test_other_transports_write(self) -> None:
        t = StringTransport()
        _send(t, b"abc")
        self.assertEqual(t.value(), b"abc")
