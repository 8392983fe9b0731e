"""
Tests for L{crust.relay.server} and L{crust.relay.switch}: the relay R with
A and T connected to it (real L{PeerTable} and L{PeerConnection}s over
L{StringTransport}), frames written by hand.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from crust.config import RelayLimits
from crust.errors import ProtocolViolation
from crust.identity import Identity, PeerId
from crust.relay import messages
from crust.relay.messages import MAX_CHUNK, RelayFrame, id_space
from crust.relay.preamble import SPLICED, encode_preamble
from crust.relay.server import ACCEPT_TIMEOUT, OPEN_RATE, RelayServer
from crust.relay.splicer import Splicer
from crust.relay.switch import CircuitSwitch
from crust.session.connection import PathInfo
from crust.wire import FrameType, frame

from tests.punch.fakes import TableNode

R = Identity.from_seed(b"r" * 32).peer_id
A = Identity.from_seed(b"a" * 32).peer_id
T = Identity.from_seed(b"t" * 32).peer_id
C = Identity.from_seed(b"c" * 32).peer_id
WINDOW = RelayLimits().window


def decoded(frames: list[tuple[int, bytes]]) -> list[Any]:
    out = []
    for ftype, payload in frames:
        if ftype == RelayFrame.DATA:
            out.append(("DATA",) + messages.decode_data(payload))
        elif ftype == RelayFrame.CREDIT:
            out.append(("CREDIT",) + messages.decode_credit(payload))
        else:
            out.append(messages.decode_frame(ftype, payload))
    return out


class RelayNode(TableNode):
    def __init__(self, local_id: PeerId, limits: RelayLimits | None = None, serving: bool = True) -> None:
        super().__init__(local_id)
        self.limits = limits or RelayLimits()
        self.serving = serving
        self.switch = CircuitSwitch(self.table, local_id)
        self.server = RelayServer(self.switch, self.table, self.clock, serving=lambda: self.serving,
                                  limits=lambda: self.limits)

    def sent(self, peer: PeerId) -> list[Any]:
        """The relay frames sent to C{peer} (heartbeats aside)."""
        return decoded([(t, p) for t, p in self.frames(peer) if t != FrameType.HEARTBEAT])


def cid(picker: PeerId, other: PeerId, n: int) -> int:
    return id_space(picker, other) | n


class ServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.r = RelayNode(R)
        self.conn_a = self.r.connect(A)
        self.conn_t = self.r.connect(T)

    def open(self, n: int = 1, to: PeerId = T, conn: Any = None) -> int:
        c = cid(A, R, n)
        (conn or self.conn_a).dataReceived(messages.encode_open(c, to))
        return c

    def established(self, n: int = 1) -> tuple[int, int]:
        """Circuit n from A to T, open: (A's id, R's id on T's leg)."""
        c = self.open(n)
        [invite] = self.r.sent(T)
        self.assertIsInstance(invite, messages.RelayInvite)
        self.assertEqual(invite.window, self.r.limits.window)
        self.conn_t.dataReceived(messages.encode_accept(invite.c))
        [ready] = self.r.sent(A)
        self.assertEqual(ready, messages.RelayReady(c, messages.CircuitLimits(
            self.r.limits.bytes_per_circuit, self.r.limits.seconds_per_circuit, self.r.limits.rate_per_circuit,
            self.r.limits.window)))
        return c, invite.c

    def assert_closed(self, peer: PeerId, c: int, reason: str) -> messages.RelayClose:
        [close] = self.r.sent(peer)
        self.assertIsInstance(close, messages.RelayClose)
        self.assertEqual((close.c, close.reason), (c, reason))
        return close

    def test_open_invite_accept_ready(self) -> None:
        c = self.open()
        [invite] = self.r.sent(T)
        self.assertEqual(invite.from_peer, A)
        self.assertTrue(messages.picked_by(invite.c, R, T))
        self.assertEqual(self.r.sent(A), [])  # not before T accepts
        self.assertEqual(self.r.server.circuits, 1)
        self.assertEqual(self.r.server.counters["circuits_total"], 0)
        self.conn_t.dataReceived(messages.encode_accept(invite.c))
        [ready] = self.r.sent(A)
        self.assertEqual(ready.c, c)
        self.assertEqual(self.r.server.counters["circuits_total"], 1)

    def test_data_and_credit_pass_with_the_id_rewritten(self) -> None:
        c, t = self.established()
        self.conn_a.dataReceived(messages.encode_data(c, b"ciphertext from A"))
        self.assertEqual(self.r.sent(T), [("DATA", t, b"ciphertext from A")])
        self.conn_t.dataReceived(messages.encode_data(t, b"from T"))
        self.assertEqual(self.r.sent(A), [("DATA", c, b"from T")])
        self.conn_t.dataReceived(messages.encode_credit(t, 17))
        self.assertEqual(self.r.sent(A), [("CREDIT", c, 17)])
        self.assertEqual(self.r.server.counters["bytes_relayed"], 23)

    def test_close_is_passed_on(self) -> None:
        c, t = self.established()
        self.conn_a.dataReceived(messages.encode_close(c, messages.REASON_CLOSED, "bye"))
        close = self.assert_closed(T, t, messages.REASON_CLOSED)
        self.assertEqual(close.detail, "bye")
        self.assertEqual(self.r.sent(A), [])
        self.assertEqual(self.r.server.circuits, 0)
        self.assertEqual(self.r.switch.leg_count, 0)
        self.conn_a.dataReceived(messages.encode_data(c, b"late"))  # dropped, counted
        self.assertEqual(self.r.sent(T), [])
        self.assertEqual(self.r.switch.counters["unknown_circuit"], 1)
        self.assertFalse(self.conn_a.closing)

    def test_a_newer_reason_is_passed_on_as_it_is(self) -> None:
        c, t = self.established()
        self.conn_t.dataReceived(messages.encode_close(t, "moved-elsewhere", ""))
        self.assert_closed(A, c, "moved-elsewhere")

    def test_refusal_by_the_target(self) -> None:
        c = self.open()
        [invite] = self.r.sent(T)
        self.conn_t.dataReceived(messages.encode_close(invite.c, messages.REASON_REFUSED, "not today"))
        close = self.assert_closed(A, c, messages.REASON_REFUSED)
        self.assertEqual(close.detail, "not today")
        self.assertEqual(self.r.server.circuits, 0)

    def test_no_accept_in_time(self) -> None:
        c = self.open()
        [invite] = self.r.sent(T)
        self.r.clock.advance(ACCEPT_TIMEOUT - 0.1)
        self.assertEqual(self.r.sent(A), [])
        self.r.clock.advance(0.2)
        self.assert_closed(A, c, messages.REASON_TIMEOUT)
        self.assert_closed(T, invite.c, messages.REASON_TIMEOUT)
        self.conn_t.dataReceived(messages.encode_accept(invite.c))  # late: ignored
        self.assertEqual(self.r.sent(A), [])
        self.assertEqual(self.r.server.circuits, 0)

    def test_refusals(self) -> None:
        cases = [(lambda: self.open(1, to=C), messages.REASON_NOT_CONNECTED),
                 (lambda: self.open(2, to=A), messages.REASON_NOT_CONNECTED),
                 (lambda: self.open(3, to=R), messages.REASON_NOT_CONNECTED)]
        for call, reason in cases:
            c = call()
            self.assert_closed(A, c, reason)
        self.r.serving = False
        c = self.open(4)
        close = self.assert_closed(A, c, messages.REASON_DISABLED)
        self.assertIn("does not relay", close.detail)
        self.assertEqual(self.r.sent(T), [])
        self.assertEqual(self.r.server.counters["refused"], 4)

    def test_no_circuits_over_relayed_connections(self) -> None:
        self.conn_t.path = PathInfo("relayed", "relay", via=str(C))
        self.assert_closed(A, self.open(1), messages.REASON_NOT_CONNECTED)
        self.conn_a.path = PathInfo("relayed", "relay", via=str(C))
        self.assert_closed(A, self.open(2), messages.REASON_REFUSED)

    def test_a_flood_of_opens_is_capped(self) -> None:
        self.r.limits = RelayLimits(circuits_per_peer=8, circuits_total=64)
        for n in range(1, 1001):
            self.open(n)
        invites = self.r.sent(T)
        self.assertLessEqual(len(invites), 8)
        refusals = self.r.sent(A)
        self.assertEqual(len(invites) + len(refusals), 1000)
        self.assertEqual({r.reason for r in refusals}, {messages.REASON_TOO_MANY, messages.REASON_RATE_LIMITED})
        self.assertEqual(self.r.server.circuits, len(invites))
        # another peer still gets its circuits to a third
        conn_c = self.r.connect(C)
        conn_c.dataReceived(messages.encode_open(cid(C, R, 1), A))
        [invite] = self.r.sent(A)
        self.assertIsInstance(invite, messages.RelayInvite)

    def test_opens_from_one_peer_are_rate_limited(self) -> None:
        self.r.limits = RelayLimits(circuits_per_peer=1000, circuits_total=1000)
        rate, burst = OPEN_RATE
        for n in range(1, 101):
            self.open(n)
        self.assertEqual(len(self.r.sent(T)), int(burst))
        self.assertEqual({r.reason for r in self.r.sent(A)}, {messages.REASON_RATE_LIMITED})

    def test_the_total_cap(self) -> None:
        self.r.limits = RelayLimits(circuits_per_peer=100, circuits_total=2)
        self.open(1)
        conn_c = self.r.connect(C)
        conn_c.dataReceived(messages.encode_open(cid(C, R, 1), T))
        conn_c.dataReceived(messages.encode_open(cid(C, R, 2), T))
        [close] = self.r.sent(C)
        self.assertEqual(close.reason, messages.REASON_TOO_MANY)
        self.assertIn("2 circuits", close.detail)

    def test_byte_limit_ends_the_circuit_at_both_ends(self) -> None:
        self.r.limits = RelayLimits(bytes_per_circuit=100_000, rate_per_circuit=None)
        c, t = self.established()
        self.conn_a.dataReceived(messages.encode_data(c, b"x" * 60_000))
        self.conn_t.dataReceived(messages.encode_credit(t, 60_000))
        self.r.frames(T), self.r.frames(A)
        self.conn_a.dataReceived(messages.encode_data(c, b"x" * 40_000))  # exactly the limit: passed on
        self.assertEqual(len(self.r.sent(T)), 1)
        self.conn_a.dataReceived(messages.encode_data(c, b"x"))
        close_a = self.assert_closed(A, c, messages.REASON_BYTE_LIMIT)
        close_t = self.assert_closed(T, t, messages.REASON_BYTE_LIMIT)
        self.assertEqual(close_a.detail, close_t.detail)
        self.assertIn("100000 bytes", close_a.detail)
        self.assertEqual(self.r.server.counters["limit_closed"], 1)
        self.assertEqual(self.r.server.circuits, 0)

    def test_time_limit(self) -> None:
        self.r.limits = RelayLimits(seconds_per_circuit=60.0)
        c, t = self.established()
        self.r.clock.advance(59.9)
        self.assertEqual(self.r.sent(A), [])
        self.r.clock.advance(0.2)
        self.assert_closed(A, c, messages.REASON_TIME_LIMIT)
        self.assert_closed(T, t, messages.REASON_TIME_LIMIT)
        self.assertEqual(self.r.clock.getDelayedCalls() and
                         [d for d in self.r.clock.getDelayedCalls() if "liveness" not in repr(d.func)], [])

    def test_past_the_window_is_overflow(self) -> None:
        self.r.limits = RelayLimits(rate_per_circuit=None)
        c, t = self.established()
        for _ in range(WINDOW // MAX_CHUNK):
            self.conn_a.dataReceived(messages.encode_data(c, b"y" * MAX_CHUNK))
        self.assertEqual(len(self.r.sent(T)), WINDOW // MAX_CHUNK)
        self.conn_a.dataReceived(messages.encode_data(c, b"y"))
        self.assert_closed(A, c, messages.REASON_OVERFLOW)
        self.assert_closed(T, t, messages.REASON_OVERFLOW)

    def test_credit_lets_the_sender_go_on(self) -> None:
        self.r.limits = RelayLimits(rate_per_circuit=None)
        c, t = self.established()
        for _ in range(3):
            for _ in range(WINDOW // MAX_CHUNK):
                self.conn_a.dataReceived(messages.encode_data(c, b"y" * MAX_CHUNK))
            self.conn_t.dataReceived(messages.encode_credit(t, WINDOW))
        self.assertEqual(len(self.r.sent(T)), 3 * WINDOW // MAX_CHUNK)
        self.assertEqual(self.r.server.counters["bytes_relayed"], 3 * WINDOW)

    def test_credit_for_bytes_never_sent_is_overflow(self) -> None:
        c, t = self.established()
        self.conn_a.dataReceived(messages.encode_data(c, b"z" * 10))
        self.r.frames(T)
        self.conn_t.dataReceived(messages.encode_credit(t, 11))
        self.assert_closed(A, c, messages.REASON_OVERFLOW)
        self.assert_closed(T, t, messages.REASON_OVERFLOW)

    def test_the_rate_is_paced(self) -> None:
        rate, window = 100_000, 4 * MAX_CHUNK
        self.r.limits = RelayLimits(rate_per_circuit=rate, window=window)
        c, t = self.established()
        for _ in range(4):
            self.conn_a.dataReceived(messages.encode_data(c, b"p" * MAX_CHUNK))
        self.assertEqual(len(self.r.sent(T)), 4)  # a window's burst goes at once
        self.r.clock.advance(10)  # the bucket refills
        self.conn_t.dataReceived(messages.encode_credit(t, window))
        self.r.frames(A)
        for _ in range(4):
            self.conn_a.dataReceived(messages.encode_data(c, b"p" * MAX_CHUNK))
        self.assertEqual(len(self.r.sent(T)), 4)  # the bucket's second window
        self.conn_t.dataReceived(messages.encode_credit(t, window))
        self.r.frames(A)
        for _ in range(4):
            self.conn_a.dataReceived(messages.encode_data(c, b"q" * MAX_CHUNK))
        self.assertEqual(self.r.sent(T), [])  # the bucket is empty: held
        forwarded = 0
        elapsed = 0.0
        while forwarded < 4:
            self.r.clock.advance(0.1)
            elapsed += 0.1
            forwarded += len(self.r.sent(T))
            self.assertLess(elapsed, 10)
        self.assertLess(abs(elapsed - 3 * MAX_CHUNK / rate), 0.25)
        self.assertEqual(self.r.server.circuits, 1)  # slowed, not closed

    def test_losing_a_leg_tells_the_other_end(self) -> None:
        c, t = self.established()
        self.conn_t.connectionLost(Failure(ConnectionLost("reset")))
        close = self.assert_closed(A, c, messages.REASON_PEER_LOST)
        self.assertIn(str(T), close.detail)
        self.assertEqual(self.r.server.circuits, 0)

    def test_losing_the_opener_while_inviting(self) -> None:
        self.open()
        [invite] = self.r.sent(T)
        self.conn_a.connectionLost(Failure(ConnectionLost("gone")))
        self.assert_closed(T, invite.c, messages.REASON_PEER_LOST)
        self.r.clock.advance(ACCEPT_TIMEOUT + 1)
        self.assertEqual(self.r.sent(T), [])

    def test_stop_ends_every_circuit(self) -> None:
        c, t = self.established()
        self.r.server.stop()
        self.assert_closed(A, c, messages.REASON_SHUTDOWN)
        self.assert_closed(T, t, messages.REASON_SHUTDOWN)

    def test_data_before_accept_is_not_passed_on(self) -> None:
        c = self.open()
        [invite] = self.r.sent(T)
        self.conn_a.dataReceived(messages.encode_data(c, b"early"))
        self.conn_t.dataReceived(messages.encode_data(invite.c, b"early"))
        self.assertEqual((self.r.sent(T), self.r.sent(A)), ([], []))
        self.assertEqual(self.r.server.counters["dropped"], 2)


class SwitchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.r = RelayNode(R)
        self.conn_a = self.r.connect(A)
        self.conn_t = self.r.connect(T)

    def test_malformed_frames_close_only_that_connection(self) -> None:
        for ftype in RelayFrame:
            conn = self.r.connect(C)
            conn.dataReceived(frame(ftype, b"{not json" if ftype not in (RelayFrame.DATA, RelayFrame.CREDIT)
                                    else b"\x00"))
            self.assertTrue(conn.closing, ftype)
            self.assertIn("relay", conn._close_reason)
            self.r.table.lost(conn, "closed")
        self.assertEqual(self.r.switch.counters["malformed"], len(RelayFrame))
        self.assertFalse(self.conn_a.closing or self.conn_t.closing)

    def test_an_open_in_our_half_of_the_ids_is_a_violation(self) -> None:
        c = cid(R, A, 1)
        self.assertRaises(ProtocolViolation, self.conn_a._control, RelayFrame.OPEN, messages.encode_open(c, T)[5:])

    def test_an_open_reusing_an_open_id_is_a_violation(self) -> None:
        c = cid(A, R, 1)
        self.conn_a.dataReceived(messages.encode_open(c, T))
        self.assertRaises(ProtocolViolation, self.conn_a._control, RelayFrame.OPEN, messages.encode_open(c, T)[5:])

    def test_ids_are_in_our_half_and_not_reused(self) -> None:
        ids = [self.r.switch.allocate(self.conn_a) for _ in range(5)]
        self.assertEqual(len(set(ids)), 5)
        self.assertTrue(all(messages.picked_by(c, R, A) for c in ids))

    def test_frames_for_unknown_circuits_are_dropped(self) -> None:
        for data in (messages.encode_data(5, b"x"), messages.encode_credit(5, 1), messages.encode_accept(5),
                     messages.encode_ready(5, messages.CircuitLimits(1, 1.0, None, WINDOW)),
                     messages.encode_close(5, "closed")):
            self.conn_a.dataReceived(data)
        self.assertEqual(self.r.switch.counters["unknown_circuit"], 5)
        self.assertFalse(self.conn_a.closing)

    def test_without_an_acceptor_invites_are_refused(self) -> None:
        c = cid(A, R, 1)
        self.conn_a.dataReceived(messages.encode_invite(c, T, WINDOW))
        [close] = self.r.sent(A)
        self.assertEqual((close.c, close.reason), (c, messages.REASON_REFUSED))


class SocketAt(StringTransport):
    """An end's spliced socket at the relay: on abort, notes what the relay had written to the ends by then."""

    def __init__(self, node: "RelayNode") -> None:
        super().__init__()
        self.node = node
        self.aborted_after: list[bytes] | None = None

    def abortConnection(self) -> None:
        self.aborted_after = [self.node.transports[p].value() for p in (A, T)]


class SpliceServerTests(SynchronousTestCase):
    """The relay's frames and splices together (L{crust.relay.splicer}, the sockets on StringTransports)."""

    def setUp(self) -> None:
        self.r = RelayNode(R, RelayLimits(bytes_per_circuit=1000, rate_per_circuit=None))
        self.r.server.splicer = Splicer(self.r.clock, lambda: True)
        self.conn_a = self.r.connect(A)
        self.conn_t = self.r.connect(T)

    def offered(self, accept_splice: bool = True) -> tuple[int, int, Any, Any]:
        c = cid(A, R, 1)
        self.conn_a.dataReceived(messages.encode_open(c, T, splice=True))
        [invite] = self.r.sent(T)
        self.conn_t.dataReceived(messages.encode_accept(invite.c, splice=accept_splice))
        [ready] = self.r.sent(A)
        return c, invite.c, invite.splice, ready.splice

    def present(self, token: bytes) -> SocketAt:
        claimed = self.r.server.splicer.claim(encode_preamble(token), None)  # type: ignore[union-attr]
        transport = SocketAt(self.r)
        claimed.makeConnection(transport)  # type: ignore[union-attr]
        return transport

    def test_tokens_for_both_ends(self) -> None:
        c, t, t_token, a_token = self.offered()
        self.assertEqual((len(t_token), len(a_token)), (32, 32))
        self.assertNotEqual(t_token, a_token)
        sa, st = self.present(a_token), self.present(t_token)
        self.assertEqual((sa.value(), st.value()), (SPLICED, SPLICED))
        self.assertEqual(self.r.server.stats()["splice_spliced"], 1)

    def test_no_offer_unless_the_opener_asks(self) -> None:
        self.conn_a.dataReceived(messages.encode_open(cid(A, R, 1), T))
        [invite] = self.r.sent(T)
        self.assertIsNone(invite.splice)
        self.assertEqual(self.r.server.splicer.tokens.counters["issued"], 0)  # type: ignore[union-attr]

    def test_no_token_for_the_opener_when_the_target_declines(self) -> None:
        c, t, t_token, a_token = self.offered(accept_splice=False)
        self.assertIsNone(a_token)
        self.assertIn("unknown or used", self.r.server.splicer.claim(encode_preamble(t_token), None))  # type: ignore
        self.conn_a.dataReceived(messages.encode_data(c, b"frames then"))
        self.assertEqual(self.r.sent(T), [("DATA", t, b"frames then")])

    def test_a_data_frame_before_the_splice_means_frames(self) -> None:
        c, t, t_token, a_token = self.offered()
        st = self.present(t_token)
        self.conn_a.dataReceived(messages.encode_data(c, b"ClientHello"))
        self.assertEqual(self.r.sent(T), [("DATA", t, b"ClientHello")])
        self.assertTrue(st.disconnecting)  # T's splice connection closed without a byte: T goes on with frames
        self.assertEqual(st.value(), b"")

    def test_data_frames_on_a_spliced_circuit_end_it(self) -> None:
        c, t, t_token, a_token = self.offered()
        sa, st = self.present(a_token), self.present(t_token)
        self.conn_a.dataReceived(messages.encode_data(c, b"confused"))
        self.assert_both_closed(c, t, messages.REASON_OVERFLOW)
        self.assertIsNotNone(sa.aborted_after)
        self.assertIsNotNone(st.aborted_after)

    def assert_both_closed(self, c: int, t: int, reason: str) -> None:
        for peer, cc in ((A, c), (T, t)):
            [close] = self.r.sent(peer)
            self.assertEqual((close.c, close.reason), (cc, reason))
        self.assertEqual(self.r.server.circuits, 0)

    def test_the_byte_limit_closes_the_frames_first_then_the_sockets(self) -> None:
        c, t, t_token, a_token = self.offered()
        sa, st = self.present(a_token), self.present(t_token)
        [core] = list(self.r.server._circuits)
        core.splice.sockets[0].dataReceived(b"x" * 600)  # type: ignore[union-attr]
        self.assertEqual(st.value(), SPLICED + b"x" * 600)
        core.splice.sockets[0].dataReceived(b"x" * 600)  # type: ignore[union-attr]  # past 1000
        for socket in (sa, st):
            # when the sockets were aborted, both CLOSE frames had been written
            written = socket.aborted_after
            assert written is not None
            self.assertTrue(all(b"byte-limit" in w for w in written), written)
        self.assert_both_closed(c, t, messages.REASON_BYTE_LIMIT)
        self.assertEqual(self.r.server.counters["limit_closed"], 1)

    def test_the_time_limit_ends_a_spliced_circuit(self) -> None:
        self.r.limits = RelayLimits(seconds_per_circuit=10.0)
        c, t, t_token, a_token = self.offered()
        sa, st = self.present(a_token), self.present(t_token)
        self.r.clock.advance(self.r.limits.seconds_per_circuit)
        self.assert_both_closed(c, t, messages.REASON_TIME_LIMIT)
        self.assertIsNotNone(sa.aborted_after)
        self.assertIsNotNone(st.aborted_after)

    def test_the_relay_stopping_ends_spliced_circuits(self) -> None:
        c, t, t_token, a_token = self.offered()
        sa, st = self.present(a_token), self.present(t_token)
        self.r.server.stop()
        self.assert_both_closed(c, t, messages.REASON_SHUTDOWN)
        self.assertIsNotNone(sa.aborted_after)
        self.assertIsNotNone(st.aborted_after)
