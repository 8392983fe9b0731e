"""
Tests for L{crust.punch.rendezvous}: the rendezvous answering and forwarding
for peers connected to it, and an end finding a common peer; with a real
L{PeerTable} and active L{PeerConnection}s over L{StringTransport}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from crust.errors import ProtocolViolation
from crust.identity import Identity, PeerId
from crust.punch import messages
from crust.punch.messages import RendezvousFrame
from crust.punch.rendezvous import ANSWER_RATE, FIND_TIMEOUT, FORWARD_RATE, NoCommonPeer, Rendezvous
from crust.wire import CloseReason, frame

from tests.punch.fakes import TableNode, split_frames

R = Identity.from_seed(b"r" * 32).peer_id
A = Identity.from_seed(b"a" * 32).peer_id
T = Identity.from_seed(b"t" * 32).peer_id
C = Identity.from_seed(b"c" * 32).peer_id
R2 = Identity.from_seed(b"s" * 32).peer_id
R3 = Identity.from_seed(b"u" * 32).peer_id
BLOB = b"\x01sealed envelope\xff" * 4


class RendezvousNode(TableNode):
    def __init__(self, local_id: PeerId, serving: bool = True, relaying: bool = False) -> None:
        super().__init__(local_id)
        self.serving = serving
        self.relaying = relaying
        self.delivered: list[tuple[PeerId, PeerId, bytes]] = []
        self.refused: list[tuple[PeerId, PeerId, str, str]] = []
        self.rdv = Rendezvous(self.table, self.clock, serving=lambda: self.serving,
                              delivered=lambda *a: self.delivered.append(a),
                              refused=lambda *a: self.refused.append(a), relaying=lambda: self.relaying)


def timers(node: TableNode) -> list[Any]:
    """The node's pending calls, but for its connections' own liveness ticks."""
    return [c for c in node.clock.getDelayedCalls() if getattr(c.func, "__name__", "") != "_liveness_tick"]


def only(frames: list[tuple[int, bytes]], ftype: int) -> list[Any]:
    """The decoded frames of type C{ftype} (and there are no others)."""
    assert all(t == ftype for t, _ in frames), frames
    return [messages.decode_frame(t, p) for t, p in frames]


class ServingTests(SynchronousTestCase):
    """As the rendezvous R, with A, T (and C) connected to it."""

    def setUp(self) -> None:
        self.r = RendezvousNode(R)
        self.conn_a = self.r.connect(A)
        self.conn_t = self.r.connect(T)

    def query(self, conn, q: int, peer: PeerId) -> Any:
        conn.dataReceived(messages.encode_query(q, peer))
        [answer] = only(self.r.frames(conn.peer_id), RendezvousFrame.ANSWER)
        return answer

    def forward(self, conn, to: PeerId, blob: bytes = BLOB) -> None:
        conn.dataReceived(messages.encode_forward(to, blob))

    def test_query_connected(self):
        answer = self.query(self.conn_a, 7, T)
        self.assertEqual((answer.q, answer.peer, answer.connected), (7, T, True))
        self.assertEqual(self.r.rdv.counters["queries_answered"], 1)

    def test_query_not_connected(self):
        answer = self.query(self.conn_a, 8, C)
        self.assertEqual((answer.q, answer.peer, answer.connected), (8, C, False))

    def test_query_about_itself(self):
        answer = self.query(self.conn_a, 9, A)
        self.assertFalse(answer.connected)

    def test_query_not_serving(self):
        self.r.serving = False
        answer = self.query(self.conn_a, 10, T)
        self.assertFalse(answer.connected)

    def test_query_not_serving_says_so(self):
        self.r.serving = False
        answer = self.query(self.conn_a, 12, T)
        self.assertFalse(answer.serving)
        self.r.serving = True
        self.assertTrue(self.query(self.conn_a, 13, T).serving)

    def test_query_says_whether_it_relays(self):
        answer = self.query(self.conn_a, 12, T)
        self.assertEqual((answer.connected, answer.relay), (True, False))
        self.r.relaying = True
        answer = self.query(self.conn_a, 13, T)
        self.assertEqual((answer.connected, answer.relay), (True, True))
        self.r.serving = False  # a relay that is no rendezvous
        answer = self.query(self.conn_a, 14, T)
        self.assertEqual((answer.connected, answer.relay), (False, True))
        answer = self.query(self.conn_a, 15, C)  # not connected to C: no relay to it either
        self.assertEqual((answer.connected, answer.relay), (False, False))
        answer = self.query(self.conn_a, 16, A)
        self.assertEqual((answer.connected, answer.relay), (False, False))

    def test_relaying_may_be_set_later(self):
        self.r.rdv.relaying = lambda: True
        self.assertTrue(self.query(self.conn_a, 1, T).relay)

    def test_query_target_closing(self):
        self.conn_t.close(CloseReason.DISCONNECT, "bye")
        answer = self.query(self.conn_a, 11, T)
        self.assertFalse(answer.connected)

    def test_query_flood_is_rate_limited(self):
        rate, burst = ANSWER_RATE
        for q in range(int(burst) + 50):
            self.conn_a.dataReceived(messages.encode_query(q, T))
        answers = only(self.r.frames(A), RendezvousFrame.ANSWER)
        self.assertEqual(len(answers), int(burst))
        self.assertEqual(self.r.rdv.counters["rate_limited"], 50)
        self.assertEqual(self.query(self.conn_t, 1, A).connected, True)  # T is not affected

    def test_forward_delivers_with_sender(self):
        self.forward(self.conn_a, T)
        self.assertEqual(self.r.frames(A), [])
        [deliver] = only(self.r.frames(T), RendezvousFrame.DELIVER)
        self.assertEqual(deliver.from_peer, A)
        self.assertEqual(deliver.blob, BLOB)
        self.assertEqual(self.r.rdv.counters["forwarded"], 1)
        self.assertEqual(self.r.delivered, [])  # R never opens it

    def assert_error(self, reason: str) -> Any:
        [error] = only(self.r.frames(A), RendezvousFrame.ERROR)
        self.assertEqual(error.reason, reason)
        self.assertEqual(self.r.frames(T), [])
        return error

    def test_forward_not_connected(self):
        self.forward(self.conn_a, C)
        error = self.assert_error(messages.ERROR_NOT_CONNECTED)
        self.assertEqual(error.to, C)
        self.assertIn("not connected", error.detail)
        self.assertEqual(self.r.rdv.counters["forward_refused"], 1)

    def test_forward_not_serving(self):
        self.r.serving = False
        self.forward(self.conn_a, T)
        error = self.assert_error(messages.ERROR_DISABLED)
        self.assertIn("does not serve", error.detail)
        self.assertEqual(self.r.rdv.counters["forwarded"], 0)

    def test_forward_to_oneself(self):
        self.forward(self.conn_a, A)
        error = self.assert_error(messages.ERROR_NOT_CONNECTED)
        self.assertEqual(error.to, A)

    def test_forward_rate_limited_per_peer(self):
        rate, burst = FORWARD_RATE
        flood = int(burst) + 60
        for _ in range(flood):
            self.forward(self.conn_a, T)
        delivered = only(self.r.frames(T), RendezvousFrame.DELIVER)
        self.assertEqual(len(delivered), int(burst))
        errors = only(self.r.frames(A), RendezvousFrame.ERROR)
        self.assertEqual(len(errors), flood - int(burst))
        self.assertEqual({e.reason for e in errors}, {messages.ERROR_RATE_LIMITED})
        self.assertIn("too many", errors[0].detail)
        self.assertEqual(self.r.rdv.counters["rate_limited"], flood - int(burst))
        # another peer is not affected
        conn_c = self.r.connect(C)
        self.forward(conn_c, T)
        [deliver] = only(self.r.frames(T), RendezvousFrame.DELIVER)
        self.assertEqual(deliver.from_peer, C)
        self.assertEqual(self.r.frames(C), [])
        # and A gets its rate back over time: about FORWARD_RATE a second
        self.r.clock.advance(1.0)
        for _ in range(flood):
            self.forward(self.conn_a, T)
        self.assertEqual(len(only(self.r.frames(T), RendezvousFrame.DELIVER)), int(rate))

    def test_malformed_frames_close_only_that_connection(self):
        for ftype in RendezvousFrame:
            conn = self.r.connect(C)
            conn.dataReceived(frame(ftype, b"{not json"))
            self.assertTrue(conn.closing, ftype)
            self.assertIn("rendezvous", conn._close_reason)
            self.r.table.lost(conn, "closed")  # as its transport would, once closed
        self.assertEqual(self.r.rdv.counters["malformed"], len(RendezvousFrame))
        self.assertFalse(self.conn_a.closing)
        self.assertFalse(self.conn_t.closing)

    def test_malformed_frame_is_a_protocol_violation(self):
        self.assertRaises(ProtocolViolation, self.conn_a._control, RendezvousFrame.FORWARD, b'{"to": 1}')
        self.assertEqual(self.r.rdv.counters["malformed"], 1)

    def test_deliver_goes_to_the_handler(self):
        self.conn_t.dataReceived(messages.encode_deliver(A, BLOB))
        self.assertEqual(self.r.delivered, [(A, T, BLOB)])

    def test_error_goes_to_the_handler(self):
        self.conn_t.dataReceived(messages.encode_error(C, messages.ERROR_RATE_LIMITED, "slow down"))
        self.assertEqual(self.r.refused, [(T, C, messages.ERROR_RATE_LIMITED, "slow down")])


class FindTests(SynchronousTestCase):
    """As an end: A asks the peers it is connected to whether they know T."""

    def setUp(self) -> None:
        self.a = RendezvousNode(A, serving=False)
        self.results: list[Any] = []

    def find(self, target: PeerId = T, want_relay: bool = False) -> Any:
        d = self.a.rdv.find(target, want_relay=want_relay)
        d.addBoth(self.results.append)
        return d

    def queries(self, peer: PeerId) -> list[Any]:
        return only(self.a.frames(peer), RendezvousFrame.QUERY)

    def answer(self, conn, q: int, connected: bool, peer: PeerId = T, relay: bool = False) -> None:
        conn.dataReceived(messages.encode_answer(q, peer, connected, relay))

    def no_common_peer(self) -> str:
        [failure] = self.results
        self.assertTrue(failure.check(NoCommonPeer), failure)
        return str(failure.value)

    def test_first_yes_wins(self):
        conns = [self.a.connect(p) for p in (R, R2, R3)]
        self.find()
        qs = []
        for p in (R, R2, R3):
            [query] = self.queries(p)
            self.assertEqual(query.peer, T)
            qs.append(query.q)
        self.assertEqual(len(set(qs)), 1)
        self.answer(conns[0], qs[0], False)
        self.assertEqual(self.results, [])
        self.answer(conns[2], qs[0], True)
        self.assertEqual(self.results, [R3])
        self.answer(conns[1], qs[0], True)  # late: ignored
        self.assertEqual(self.results, [R3])
        self.assertEqual(timers(self.a), [])

    def test_finding_a_relay(self):
        conns = [self.a.connect(p) for p in (R, R2, R3)]
        self.find(want_relay=True)
        q = self.queries(R)[0].q
        self.answer(conns[0], q, True, relay=False)  # a rendezvous, no relay
        self.answer(conns[1], q, False, relay=True)  # a relay, no rendezvous
        self.assertEqual(self.results, [R2])

    def test_no_relay(self):
        conns = [self.a.connect(p) for p in (R, R2)]
        self.find(want_relay=True)
        q = self.queries(R)[0].q
        for conn in conns:
            self.answer(conn, q, True, relay=False)
        text = self.no_common_peer()
        self.assertIn("no relay: none of the 2 peer(s) we asked is connected to", text)
        self.assertIn("and relays", text)

    def test_the_target_is_not_asked(self):
        self.a.connect(R)
        self.a.connect(T)
        self.find()
        self.assertEqual(len(self.queries(R)), 1)
        self.assertEqual(self.a.frames(T), [])

    def test_all_no(self):
        conns = [self.a.connect(p) for p in (R, R2, R3)]
        self.find()
        q = self.queries(R)[0].q
        for conn in conns:
            self.answer(conn, q, False)
        text = self.no_common_peer()
        self.assertIn("no common peer", text)
        self.assertIn("3 peer(s)", text)
        self.assertIn(T.short(), text)

    def test_not_serving_is_named(self):
        conns = [self.a.connect(p) for p in (R, R2)]
        self.find()
        q = self.queries(R)[0].q
        conns[0].dataReceived(messages.encode_answer(q, T, False, serving=False))
        self.answer(conns[1], q, False)
        text = self.no_common_peer()
        self.assertIn(f"({R.short()} does not serve as a rendezvous)", text)
        self.assertNotIn(R2.short(), text)

    def test_a_yes_from_a_peer_not_serving_is_no(self):
        conn = self.a.connect(R)
        self.find()
        q = self.queries(R)[0].q
        conn.dataReceived(messages.encode_answer(q, T, True, serving=False))
        self.assertIn("does not serve", self.no_common_peer())

    def test_answers_about_another_peer_or_query_are_ignored(self):
        conn = self.a.connect(R)
        self.find()
        q = self.queries(R)[0].q
        self.answer(conn, q, True, peer=C)
        self.answer(conn, q + 1000, True)
        self.assertEqual(self.results, [])
        self.answer(conn, q, True)
        self.assertEqual(self.results, [R])

    def test_nobody_to_ask(self):
        self.find()
        text = self.no_common_peer()
        self.assertIn("no common peer", text)
        self.assertIn("connected to no other peer", text)
        self.assertEqual(timers(self.a), [])

    def test_only_the_target_connected(self):
        self.a.connect(T)
        self.find()
        self.assertIn("connected to no other peer", self.no_common_peer())

    def test_timeout(self):
        self.a.connect(R)
        self.a.connect(R2)
        self.find()
        self.a.clock.advance(FIND_TIMEOUT - 0.01)
        self.assertEqual(self.results, [])
        self.a.clock.advance(0.02)
        text = self.no_common_peer()
        self.assertIn("2 peer(s)", text)
        self.assertEqual(self.a.rdv._pending, {})

    def test_cancel(self):
        self.a.connect(R)
        d = self.find()
        d.cancel()
        self.assertEqual(len(self.results), 1)
        self.assertEqual(timers(self.a), [])
        self.assertEqual(self.a.rdv._pending, {})

    def test_stop_ends_searches(self):
        self.a.connect(R)
        self.find()
        self.a.rdv.stop()
        self.no_common_peer()
        self.assertEqual(timers(self.a), [])

    def test_send_through(self):
        self.a.connect(R)
        self.assertTrue(self.a.rdv.send(R, T, BLOB))
        [forward] = only(self.a.frames(R), RendezvousFrame.FORWARD)
        self.assertEqual((forward.to, forward.blob), (T, BLOB))
        self.assertFalse(self.a.rdv.send(R2, T, BLOB))  # not connected to R2


class EndToEndTests(SynchronousTestCase):
    """A's QUERY and FORWARD through a serving R reach T, by moving the frames by hand."""

    def test_find_then_forward(self):
        r = RendezvousNode(R)
        a = RendezvousNode(A, serving=False)
        t = RendezvousNode(T, serving=False)
        r_a, r_t = r.connect(A), r.connect(T)
        a_r, t_r = a.connect(R), t.connect(R)
        found: list[Any] = []
        a.rdv.find(T).addBoth(found.append)
        for ftype, payload in a.frames(R):
            r_a.dataReceived(frame(ftype, payload))
        for ftype, payload in r.frames(A):
            a_r.dataReceived(frame(ftype, payload))
        self.assertEqual(found, [R])
        a.rdv.send(R, T, BLOB)
        for ftype, payload in a.frames(R):
            r_a.dataReceived(frame(ftype, payload))
        for ftype, payload in r.frames(T):
            t_r.dataReceived(frame(ftype, payload))
        self.assertEqual(t.delivered, [(A, R, BLOB)])
        self.assertFalse(r_t.closing)


class AnswerServingTests(SynchronousTestCase):
    """ANSWER's optional C{serving} key: sent only when False, read as True when absent."""

    def test_serving_answer_is_unchanged(self):
        ftype, payload = split_frames(messages.encode_answer(3, T, True))[0]
        self.assertNotIn(b"serving", payload)
        self.assertTrue(messages.decode_answer(payload).serving)

    def test_not_serving_round_trip(self):
        ftype, payload = split_frames(messages.encode_answer(3, T, False, serving=False))[0]
        self.assertIn(b'"serving":false', payload)
        answer = messages.decode_answer(payload)
        self.assertEqual((answer.q, answer.peer, answer.connected, answer.serving), (3, T, False, False))

    def test_bad_serving_is_a_violation(self):
        payload = json.dumps({"q": 1, "peer": str(T), "connected": False, "relay": False, "serving": 0}).encode()
        self.assertRaises(ProtocolViolation, messages.decode_answer, payload)
