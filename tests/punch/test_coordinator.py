"""
Tests for L{crust.punch.coordinator}: the CONNECT / REPLY / SYNC exchange
as a state machine, driven by hand on a L{Clock}, with recording callables
in place of the rendezvous and the punchers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.connection_info import PubConnectionInfo
from crust.identity import Identity
from crust.punch.coordinator import EXCHANGE_TIMEOUT, ExchangeCore, ExchangeFailed, ExchangeMachine
from crust.punch.messages import EnvelopeType
from crust.punch.plan import PunchPlan

US = Identity.from_seed(bytes(range(32)))
PEER = Identity.from_seed(bytes(range(32, 64)))
RDV = Identity.from_seed(bytes(range(64, 96)))
ATTEMPT = bytes.fromhex("0102030405060708")
OUR_INFO = PubConnectionInfo(US.peer_id, (Address.parse("udp:198.51.100.1:4000"),))
THEIR_INFO = PubConnectionInfo(PEER.peer_id, (Address.parse("udp:203.0.113.7:5000"),
                                              Address.parse("tcp:203.0.113.7:4242")))


class Recorder:
    """The exchange's collaborators: what it sent, what it punched, whether it said it finished."""

    def __init__(self, send_ok: bool = True) -> None:
        self.sent: list[tuple[EnvelopeType, dict[str, Any]]] = []
        self.punched: list[PunchPlan] = []
        self.finished = 0
        self.send_ok = send_ok

    def send(self, mtype: EnvelopeType, body: dict[str, Any]) -> bool:
        self.sent.append((mtype, body))
        return self.send_ok

    def punch(self, plan: PunchPlan) -> None:
        self.punched.append(plan)

    def finish(self) -> None:
        self.finished += 1

    @property
    def types(self) -> list[EnvelopeType]:
        return [t for t, _ in self.sent]


class ExchangeTests(SynchronousTestCase):
    def make(self, send_ok: bool = True) -> tuple[Any, ExchangeCore, Recorder]:
        self.clock = Clock()
        self.clock.advance(100.0)
        rec = Recorder(send_ok)
        core = ExchangeCore(peer_id=PEER.peer_id, via=RDV.peer_id, attempt=ATTEMPT, clock=self.clock, send=rec.send,
                            our_info=lambda: OUR_INFO, punch=rec.punch, finished=rec.finish)
        self.results: list[Any] = []
        core.result.addBoth(self.results.append)
        return ExchangeMachine(core), core, rec

    def failure_text(self) -> str:
        self.assertEqual(len(self.results), 1)
        failure = self.results[0]
        self.assertTrue(failure.check(ExchangeFailed), failure)
        return str(failure.value)

    # -- the initiator ------------------------------------------------------------------

    def test_initiator_connect_reply_sync(self):
        machine, core, rec = self.make()
        machine.initiate()
        self.assertEqual(rec.types, [EnvelopeType.CONNECT])
        body = rec.sent[0][1]
        self.assertEqual(body["info"]["id"], str(US.peer_id))
        self.assertEqual((body["tcp"], body["udp"]), (True, True))
        self.assertEqual(self.results, [])
        self.clock.advance(0.3)  # t1 = t0 + rtt
        machine.reply_received(THEIR_INFO)
        self.assertEqual(rec.types, [EnvelopeType.CONNECT, EnvelopeType.SYNC])
        self.assertEqual(rec.sent[1][1], {})
        [plan] = self.results
        self.assertIsInstance(plan, PunchPlan)
        self.assertEqual(plan.peer_id, PEER.peer_id)
        self.assertEqual(plan.attempt, ATTEMPT)
        self.assertEqual(plan.info, THEIR_INFO)
        self.assertEqual(plan.via, RDV.peer_id)
        self.assertAlmostEqual(core.rtt, 0.3)
        self.assertAlmostEqual(plan.start_at, 100.3 + 0.15)  # t1 + rtt / 2
        self.assertEqual(rec.finished, 1)
        self.assertEqual(rec.punched, [])  # the initiator's punches belong to its connect attempt
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the timeout is disarmed

    def test_initiator_timeout_names_peer_and_rendezvous(self):
        machine, core, rec = self.make()
        machine.initiate()
        self.clock.advance(EXCHANGE_TIMEOUT - 0.01)
        self.assertEqual(self.results, [])
        self.clock.advance(0.02)
        text = self.failure_text()
        self.assertIn(PEER.peer_id.short(), text)
        self.assertIn(RDV.peer_id.short(), text)
        self.assertIn("no reply", text)
        self.assertEqual(rec.finished, 1)

    def test_initiator_refused(self):
        machine, core, rec = self.make()
        machine.initiate()
        machine.refused("not-connected: this node is not connected to that peer")
        text = self.failure_text()
        self.assertIn(RDV.peer_id.short(), text)
        self.assertIn("not-connected", text)
        self.assertEqual(rec.finished, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_initiator_cannot_send(self):
        """Not connected to the rendezvous: the exchange fails (on the next turn), naming it."""
        machine, core, rec = self.make(send_ok=False)
        machine.initiate()
        self.assertEqual(self.results, [])
        self.clock.advance(0)
        text = self.failure_text()
        self.assertIn(RDV.peer_id.short(), text)
        self.assertIn("not connected to the rendezvous", text)
        self.clock.advance(EXCHANGE_TIMEOUT * 2)
        self.assertEqual(len(self.results), 1)
        self.assertEqual(rec.finished, 1)

    def test_reply_after_timeout_changes_nothing(self):
        machine, core, rec = self.make()
        machine.initiate()
        self.clock.advance(EXCHANGE_TIMEOUT + 1)
        self.failure_text()
        machine.reply_received(THEIR_INFO)
        self.assertEqual(rec.types, [EnvelopeType.CONNECT])  # no SYNC
        self.assertEqual(len(self.results), 1)
        self.assertEqual(rec.finished, 1)

    def test_second_reply_changes_nothing(self):
        machine, core, rec = self.make()
        machine.initiate()
        self.clock.advance(0.2)
        machine.reply_received(THEIR_INFO)
        self.clock.advance(0.2)
        machine.reply_received(THEIR_INFO)
        machine.timed_out()
        machine.refused("late")
        self.assertEqual(rec.types, [EnvelopeType.CONNECT, EnvelopeType.SYNC])
        self.assertEqual(len(self.results), 1)
        self.assertIsInstance(self.results[0], PunchPlan)
        self.assertEqual(rec.finished, 1)

    def test_initiator_ignores_responder_inputs(self):
        machine, core, rec = self.make()
        machine.initiate()
        machine.connect_received(THEIR_INFO)
        machine.sync_received()
        self.assertEqual(rec.types, [EnvelopeType.CONNECT])
        self.assertEqual(rec.punched, [])
        self.assertEqual(self.results, [])
        machine.reply_received(THEIR_INFO)  # still waits for its reply
        self.assertIsInstance(self.results[0], PunchPlan)

    # -- the responder --------------------------------------------------------------------

    def test_responder_connect_reply_sync_punch(self):
        machine, core, rec = self.make()
        machine.connect_received(THEIR_INFO)
        self.assertEqual(rec.types, [EnvelopeType.REPLY])
        self.assertEqual(rec.sent[0][1]["info"]["id"], str(US.peer_id))
        self.assertEqual(rec.punched, [])
        self.clock.advance(0.4)
        machine.sync_received()
        [plan] = rec.punched
        self.assertEqual(plan.peer_id, PEER.peer_id)
        self.assertEqual(plan.attempt, ATTEMPT)
        self.assertEqual(plan.info, THEIR_INFO)
        self.assertEqual(plan.via, RDV.peer_id)
        self.assertEqual(plan.start_at, 100.4)  # now
        self.assertEqual(rec.finished, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_responder_timeout_names_peer_and_rendezvous(self):
        machine, core, rec = self.make()
        machine.connect_received(THEIR_INFO)
        self.clock.advance(EXCHANGE_TIMEOUT + 0.01)
        text = self.failure_text()
        self.assertIn(PEER.peer_id.short(), text)
        self.assertIn(RDV.peer_id.short(), text)
        self.assertIn("SYNC", text)
        self.assertEqual(rec.punched, [])
        self.assertEqual(rec.finished, 1)

    def test_responder_result_fails_for_its_owner(self):
        """On the responder's side too the result fails on timeout: its owner (the manager) consumes it."""
        machine, core, rec = self.make()
        machine.connect_received(THEIR_INFO)
        self.clock.advance(EXCHANGE_TIMEOUT + 1)
        self.assertTrue(core.result.called)
        self.failure_text()

    def test_second_sync_punches_once(self):
        machine, core, rec = self.make()
        machine.connect_received(THEIR_INFO)
        machine.sync_received()
        machine.sync_received()
        machine.timed_out()
        self.assertEqual(len(rec.punched), 1)
        self.assertEqual(rec.finished, 1)

    def test_connect_twice_replies_once(self):
        machine, core, rec = self.make()
        machine.connect_received(THEIR_INFO)
        machine.connect_received(THEIR_INFO)
        self.assertEqual(rec.types, [EnvelopeType.REPLY])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # one timeout, not re-armed
        machine.sync_received()
        machine.connect_received(THEIR_INFO)
        self.assertEqual(rec.types, [EnvelopeType.REPLY])
        self.assertEqual(len(rec.punched), 1)

    def test_sync_after_timeout_does_not_punch(self):
        machine, core, rec = self.make()
        machine.connect_received(THEIR_INFO)
        self.clock.advance(EXCHANGE_TIMEOUT + 1)
        machine.sync_received()
        self.assertEqual(rec.punched, [])
        self.assertEqual(rec.finished, 1)

    def test_responder_ignores_initiator_inputs(self):
        machine, core, rec = self.make()
        machine.connect_received(THEIR_INFO)
        machine.reply_received(THEIR_INFO)
        machine.refused("rate-limited")
        self.assertEqual(rec.types, [EnvelopeType.REPLY])
        self.assertEqual(self.results, [])
        machine.sync_received()
        self.assertEqual(len(rec.punched), 1)

    def test_idle_ignores_stray_inputs(self):
        machine, core, rec = self.make()
        machine.reply_received(THEIR_INFO)
        machine.sync_received()
        machine.timed_out()
        machine.refused("disabled")
        self.assertEqual(rec.sent, [])
        self.assertEqual(rec.punched, [])
        self.assertEqual(self.results, [])
        self.assertEqual(rec.finished, 0)
        machine.initiate()  # still idle: it can start
        self.assertEqual(rec.types, [EnvelopeType.CONNECT])

    # -- cancel -------------------------------------------------------------------------

    def cancel_in(self, reach) -> tuple[Recorder, Any]:
        machine, core, rec = self.make()
        reach(machine)
        before = (list(rec.sent), list(rec.punched), list(self.results))
        machine.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertGreaterEqual(rec.finished, 1)
        # nothing after a cancel does anything
        for late in (lambda: machine.initiate(), lambda: machine.connect_received(THEIR_INFO),
                     lambda: machine.reply_received(THEIR_INFO), machine.sync_received, machine.timed_out,
                     lambda: machine.refused("late"), machine.cancel):
            late()
        self.clock.advance(EXCHANGE_TIMEOUT * 3)
        self.assertEqual((rec.sent, rec.punched), before[:2])
        self.assertEqual(self.results, before[2])
        return rec, machine

    def test_cancel_idle(self):
        self.cancel_in(lambda m: None)
        self.assertEqual(self.results, [])

    def test_cancel_offered(self):
        rec, _ = self.cancel_in(lambda m: m.initiate())
        self.assertEqual(rec.types, [EnvelopeType.CONNECT])
        self.assertEqual(self.results, [])  # the caller cancelled: it is not told again

    def test_cancel_answered(self):
        rec, _ = self.cancel_in(lambda m: m.connect_received(THEIR_INFO))
        self.assertEqual(rec.punched, [])

    def test_cancel_done(self):
        def reach(m):
            m.connect_received(THEIR_INFO)
            m.sync_received()

        rec, _ = self.cancel_in(reach)
        self.assertEqual(len(rec.punched), 1)

    def test_cancel_failed(self):
        def reach(m):
            m.initiate()
            self.clock.advance(EXCHANGE_TIMEOUT + 1)

        self.cancel_in(reach)
        self.failure_text()
