"""
Tests for L{crust.punch.tcp}: L{TcpPuncher} with a fake dial (from the
listening port) and a fake claim, on a L{Clock}.
"""

from __future__ import annotations

import errno
from typing import Any, Optional

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.candidates import Candidate, CandidateKind, MappingKind, NatBehaviour, NatInfo
from crust.connection_info import PubConnectionInfo
from crust.identity import Identity, PeerId
from crust.punch.plan import PunchPlan
from crust.punch.tcp import BLIND_WINDOW, RETRY, WINDOW, TcpPuncher, TcpPunchFailed
from crust.session.purpose import Purpose

_a, _b = Identity.from_seed(b"p" * 32), Identity.from_seed(b"q" * 32)
BIG, SMALL = (_a.peer_id, _b.peer_id) if _a.peer_id > _b.peer_id else (_b.peer_id, _a.peer_id)
THIRD = Identity.from_seed(b"3" * 32).peer_id
VIA = Identity.from_seed(b"v" * 32).peer_id
ATTEMPT = b"\x05" * 8
T1 = Address.parse("tcp:203.0.113.2:4242")
T2 = Address.parse("tcp:198.51.100.2:4242")
STEP = 0.01


def info(peer: PeerId, *addresses: Address, tcp_nat: Optional[NatBehaviour] = None) -> PubConnectionInfo:
    return PubConnectionInfo(peer, candidates=tuple(Candidate(a, CandidateKind.SRFLX, "hello") for a in addresses)
                             + (Candidate(Address.parse("udp:203.0.113.2:5000"), CandidateKind.SRFLX, "echo"),),
                             nat=NatInfo(tcp=tcp_nat) if tcp_nat is not None else None)


class Dialled:
    def __init__(self, at: float, address: Address, peer: PeerId, tls_client: bool) -> None:
        self.at = at
        self.address = address
        self.peer = peer
        self.tls_client = tls_client
        self.cancelled = False
        self.d: Deferred = Deferred(self._cancel)

    def _cancel(self, d: Deferred) -> None:
        self.cancelled = True


class TcpPuncherTests(SynchronousTestCase):
    def make(self, local: PeerId = BIG) -> TcpPuncher:
        self.clock = Clock()
        self.clock.advance(200.0)
        self.dials: list[Dialled] = []
        self.claims: list[tuple[Purpose, PeerId]] = []
        return TcpPuncher(self.clock, local, self.dial, self.claim)

    def dial(self, address: Address, purpose: Purpose, peer: PeerId, tls_client: bool) -> Deferred:
        dialled = Dialled(self.clock.seconds(), address, peer, tls_client)
        self.dials.append(dialled)
        return dialled.d

    def claim(self, purpose: Purpose, peer: PeerId) -> Any:
        self.claims.append((purpose, peer))
        return ("factory", peer)

    def elapse(self, seconds: float) -> None:
        for _ in range(round(seconds / STEP)):
            self.clock.advance(STEP)

    def punch(self, puncher: TcpPuncher, peer: PeerId = SMALL, *targets: Address, start: float = 0.5,
              coordinated: bool = True, tcp_nat: Optional[NatBehaviour] = None) -> list[Any]:
        plan = PunchPlan(peer, ATTEMPT, info(peer, *(targets or (T1, T2)), tcp_nat=tcp_nat),
                         self.clock.seconds() + start, VIA if coordinated else None)
        self.purpose = Purpose()
        results: list[Any] = []
        puncher.punch(plan, self.purpose).addBoth(results.append)
        return results

    def pending(self, address: Address) -> list[Dialled]:
        return [d for d in self.dials if d.address == address and not d.d.called]

    # -- dialling -----------------------------------------------------------------------

    def test_dials_every_target_at_start(self):
        puncher = self.make()
        self.punch(puncher)
        self.elapse(0.49)
        self.assertEqual(self.dials, [])
        self.elapse(0.02)
        self.assertEqual([d.address for d in self.dials], [T1, T2])
        self.assertTrue(all(d.at == self.dials[0].at for d in self.dials))
        self.assertTrue(all(d.peer == SMALL and d.tls_client for d in self.dials))  # the larger id is TLS client

    def test_the_smaller_id_is_tls_server(self):
        puncher = self.make(SMALL)
        self.punch(puncher, BIG)
        self.elapse(0.6)
        self.assertTrue(self.dials)
        self.assertFalse(any(d.tls_client for d in self.dials))

    def test_refused_targets_are_retried_until_the_window(self):
        puncher = self.make()
        results = self.punch(puncher, SMALL, T1)
        self.elapse(0.5 + STEP)
        refused_at = []
        while self.clock.seconds() < 200.5 + WINDOW + 1:
            for d in self.pending(T1):
                refused_at.append(self.clock.seconds())
                d.d.errback(error.ConnectionRefusedError("Connection refused"))
            self.elapse(STEP)
        gaps = [b - a for a, b in zip(refused_at, refused_at[1:])]
        self.assertGreater(len(refused_at), WINDOW / (RETRY + 2 * STEP) - 2)
        self.assertTrue(all(g >= RETRY - 1e-6 for g in gaps), gaps)
        self.assertLess(max(d.at for d in self.dials), 200.5 + WINDOW)
        [failure] = results
        self.assertTrue(failure.check(TcpPunchFailed))
        text = str(failure.value)
        self.assertIn(f"simultaneous open for {WINDOW:g} s", text)
        self.assertIn(f"{T1}: refused (RST) ({len(self.dials)} tries)", text)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_peers_syn_won(self):
        """Address not available: that pair is connected already (accepted); it is not dialled again."""
        puncher = self.make()
        results = self.punch(puncher, SMALL, T1)
        self.elapse(0.5 + STEP)
        [d] = self.dials
        d.d.errback(error.getConnectError((errno.EADDRNOTAVAIL, "Cannot assign requested address")))
        self.elapse(WINDOW + 1)
        self.assertEqual(len(self.dials), 1)
        self.assertIn("connected by the peer's SYN", str(results[0].value))

    def test_the_peers_syn_won_by_errno(self):
        """As the reactor reports it: a ConnectError whose osError is the errno (its text may be localised)."""
        puncher = self.make()
        self.punch(puncher, SMALL, T1)
        self.elapse(0.5 + STEP)
        self.dials[0].d.errback(error.getConnectError((errno.EADDRNOTAVAIL, "Adresse nicht verfügbar")))
        self.elapse(1.0)
        self.assertEqual(len(self.dials), 1)

    def test_first_connection_wins(self):
        puncher = self.make()
        results = self.punch(puncher)
        self.elapse(0.5 + STEP)
        first, second = self.dials
        first.d.errback(error.ConnectionRefusedError())
        self.elapse(RETRY + STEP)
        self.assertEqual(len(self.dials), 3)
        conn = object()
        second.d.callback(conn)
        self.assertEqual(results, [conn])
        self.assertTrue(self.dials[2].cancelled)  # the retry of the first target
        self.assertFalse(puncher.running(SMALL))
        self.elapse(WINDOW)
        self.assertEqual(len(self.dials), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_tcp_candidate(self):
        puncher = self.make()
        plan = PunchPlan(SMALL, ATTEMPT, PubConnectionInfo(SMALL, (Address.parse("udp:203.0.113.2:5000"),)), 0.0, VIA)
        failures: list[Any] = []
        puncher.punch(plan, Purpose()).addErrback(failures.append)
        self.assertIn("no TCP candidate", str(failures[0].value))

    def test_blind_punch_has_the_longer_window(self):
        puncher = self.make()
        results = self.punch(puncher, SMALL, T1, coordinated=False, start=0.0)
        self.elapse(WINDOW + 1)
        self.assertEqual(results, [])
        self.elapse(BLIND_WINDOW - WINDOW)
        self.assertIn(f"for {BLIND_WINDOW:g} s", str(results[0].value))

    def test_stop_cancels_quietly(self):
        puncher = self.make()
        results = self.punch(puncher)
        self.elapse(0.5 + STEP)
        puncher.stop(SMALL)
        self.assertTrue(all(d.cancelled for d in self.dials))
        self.assertEqual(results, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self):
        puncher = self.make()
        plan = PunchPlan(SMALL, ATTEMPT, info(SMALL, T1), self.clock.seconds(), VIA)
        d = puncher.punch(plan, Purpose())
        self.elapse(STEP)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.dials[0].cancelled)
        self.assertFalse(puncher.running(SMALL))

    # -- accepting ----------------------------------------------------------------------

    def test_accept_hook_claims_a_target_as_the_larger_id(self):
        puncher = self.make(BIG)
        self.punch(puncher)
        factory = puncher.accept_hook(IPv4Address("TCP", T2.host, T2.port))
        self.assertEqual(factory, ("factory", SMALL))
        self.assertEqual(self.claims, [(self.purpose, SMALL)])
        self.assertEqual(puncher.punched_from(T2), SMALL)

    def test_accept_hook_as_the_smaller_id(self):
        puncher = self.make(SMALL)
        self.punch(puncher, BIG)
        self.assertIsNone(puncher.accept_hook(IPv4Address("TCP", T1.host, T1.port)))
        self.assertEqual(self.claims, [])
        self.assertEqual(puncher._runs[ATTEMPT].accepted, 1)  # it is the punch's, run as TLS server

    def test_accept_hook_ignores_others(self):
        puncher = self.make(BIG)
        self.assertIsNone(puncher.accept_hook(IPv4Address("TCP", T1.host, T1.port)))  # no punch runs
        self.punch(puncher, SMALL, T1, tcp_nat=NatBehaviour(MappingKind.EIM))
        self.assertIsNone(puncher.accept_hook(IPv4Address("TCP", "192.0.2.99", T1.port)))
        # the peer's NAT maps endpoint-independently: another port of its host is not the punch
        self.assertIsNone(puncher.accept_hook(IPv4Address("TCP", T1.host, 50000)))
        self.assertEqual(self.claims, [])
        self.assertIsNone(puncher.accept_hook(object()))

    def test_accept_hook_another_port_of_a_target_host(self):
        """The peer's NAT is not known to map endpoint-independently: its SYN may come from another port."""
        puncher = self.make(BIG)
        self.punch(puncher, SMALL, T1)
        self.assertEqual(puncher.accept_hook(IPv4Address("TCP", T1.host, 50000)), ("factory", SMALL))
        self.assertIsNone(puncher.accept_hook(IPv4Address("TCP", T2.host, 50000)))  # not a target's host

    def test_accept_hook_after_the_punch(self):
        puncher = self.make(BIG)
        self.punch(puncher)
        puncher.stop(SMALL)
        self.assertIsNone(puncher.accept_hook(IPv4Address("TCP", T1.host, T1.port)))

    def test_accept_hook_picks_the_right_punch(self):
        puncher = self.make(BIG)
        self.punch(puncher, SMALL, T1)
        plan = PunchPlan(THIRD, b"\x06" * 8, info(THIRD, T2), self.clock.seconds(), VIA)
        puncher.punch(plan, Purpose())
        self.assertEqual(puncher.accept_hook(IPv4Address("TCP", T1.host, T1.port)), ("factory", SMALL))
        theirs = puncher.accept_hook(IPv4Address("TCP", T2.host, T2.port))
        self.assertEqual(theirs, ("factory", THIRD) if BIG > THIRD else None)
        self.assertEqual(puncher._runs[b"\x06" * 8].accepted, 1)

    # -- prepared runs (the responder, between its REPLY and the SYNC) ----------------------

    def prepare(self, puncher: TcpPuncher, peer: PeerId = SMALL, lifetime: float = 5.0) -> PunchPlan:
        plan = PunchPlan(peer, ATTEMPT, info(peer, T1, T2), self.clock.seconds(), VIA)
        self.prepared_purpose = Purpose()
        puncher.prepare(plan, self.prepared_purpose, lifetime)
        return plan

    def test_prepared_run_claims_without_dialling(self):
        puncher = self.make(BIG)
        self.prepare(puncher)
        self.assertTrue(puncher.running(SMALL))
        self.assertEqual(puncher.accept_hook(IPv4Address("TCP", T1.host, T1.port)), ("factory", SMALL))
        self.assertEqual(self.claims, [(self.prepared_purpose, SMALL)])
        self.elapse(1.0)
        self.assertEqual(self.dials, [])

    def test_prepared_run_claims_only_the_targets_themselves(self):
        """Before our punch starts, a connection from another port of the peer's host is its direct dial."""
        puncher = self.make(BIG)
        self.prepare(puncher)
        self.assertIsNone(puncher.accept_hook(IPv4Address("TCP", T1.host, 50000)))
        self.assertEqual(puncher._runs[ATTEMPT].accepted, 0)
        self.punch(puncher, SMALL, T1, T2, start=0.0)
        self.assertEqual(puncher.accept_hook(IPv4Address("TCP", T1.host, 50000)), ("factory", SMALL))

    def test_prepared_run_as_the_smaller_id(self):
        puncher = self.make(SMALL)
        self.prepare(puncher, BIG)
        self.assertIsNone(puncher.accept_hook(IPv4Address("TCP", T1.host, T1.port)))
        self.assertEqual(puncher._runs[ATTEMPT].accepted, 1)

    def test_punch_starts_the_prepared_run(self):
        puncher = self.make(BIG)
        self.prepare(puncher)
        puncher.accept_hook(IPv4Address("TCP", T1.host, T1.port))
        prepared = puncher._runs[ATTEMPT]
        results = self.punch(puncher, SMALL, T1, T2, start=0.0)
        self.assertIs(puncher._runs[ATTEMPT], prepared)
        self.assertIs(prepared.purpose, self.purpose)
        self.elapse(STEP)
        self.assertEqual([d.address for d in self.dials], [T1, T2])
        self.elapse(5.0)  # the prepared lifetime no longer applies
        self.assertEqual(results, [])
        self.elapse(WINDOW)
        self.assertIn(f"for {WINDOW:g} s", str(results[0].value))

    def test_prepared_run_ends_quietly(self):
        puncher = self.make(BIG)
        self.prepare(puncher, lifetime=5.0)
        self.elapse(4.9)
        self.assertTrue(puncher.running(SMALL))
        self.elapse(0.2)
        self.assertFalse(puncher.running(SMALL))
        self.assertIsNone(puncher.accept_hook(IPv4Address("TCP", T1.host, T1.port)))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_prepared_run_stopped(self):
        puncher = self.make(BIG)
        self.prepare(puncher)
        puncher.stop(SMALL)
        self.assertFalse(puncher.running(SMALL))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_prepare_without_tcp_candidate(self):
        puncher = self.make(BIG)
        plan = PunchPlan(SMALL, ATTEMPT, PubConnectionInfo(SMALL, (Address.parse("udp:203.0.113.2:5000"),)), 0.0, VIA)
        puncher.prepare(plan, Purpose(), 5.0)
        self.assertFalse(puncher.running(SMALL))
