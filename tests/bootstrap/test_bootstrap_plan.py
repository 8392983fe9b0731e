"""Tests for crust.bootstrap.plan: candidate order, blacklist, the state machine, its Twisted driver."""

from __future__ import annotations

import random
from enum import Enum

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from crust.address import Address
from crust.bootstrap.cache import BootstrapCache
from crust.bootstrap.plan import (
    Blacklist,
    BootstrapAttempt,
    BootstrapFailed,
    BootstrapResult,
    Candidate,
    IBootstrapCallbacks,
    SOURCE_CACHE,
    SOURCE_HARD_CODED,
    SOURCE_LAN,
    State,
    describe_reason,
    is_reachability_denial,
    plan_candidates,
    run_bootstrap,
)
from crust.config import HardCodedContact
from crust.errors import HandshakeRefused
from crust.identity import Identity


def peer(n: int):
    return Identity.from_seed(bytes([n]) * 32).peer_id


def addr(n: int, transport: str = "tcp") -> Address:
    return Address(transport, f"198.51.100.{n}", 5483)


def cand(n: int, source: str = SOURCE_HARD_CODED, with_id: bool = True) -> Candidate:
    return Candidate(addr(n), peer(n) if with_id else None, source)


class PlanTests(unittest.TestCase):
    def test_order_lan_then_cache_then_shuffled_hard_coded(self) -> None:
        lan = [(peer(1), [addr(1), addr(101)]), (peer(2), [addr(2)])]
        cached = [(peer(3), addr(3)), (peer(4), addr(4))]
        hard = [HardCodedContact(peer(n), addr(n)) for n in range(10, 20)]
        got = plan_candidates(lan, cached, hard, rng=random.Random(7))
        self.assertEqual(got[:5], [Candidate(addr(1), peer(1), SOURCE_LAN), Candidate(addr(101), peer(1), SOURCE_LAN),
                                   Candidate(addr(2), peer(2), SOURCE_LAN), Candidate(addr(3), peer(3), SOURCE_CACHE),
                                   Candidate(addr(4), peer(4), SOURCE_CACHE)])
        expected = list(range(10, 20))
        random.Random(7).shuffle(expected)
        self.assertEqual([c.address for c in got[5:]], [addr(n) for n in expected])
        self.assertNotEqual(expected, list(range(10, 20)))  # the seed really shuffles
        self.assertTrue(all(c.source == SOURCE_HARD_CODED for c in got[5:]))

    def test_cache_entries_accepted(self) -> None:
        clock = Clock()
        cache = BootstrapCache(self.mktemp(), clock=clock)
        cache.put(peer(1), addr(1))
        cache.put(peer(2), addr(2))
        got = plan_candidates(cached=cache.entries())
        self.assertEqual(got, [Candidate(addr(2), peer(2), SOURCE_CACHE), Candidate(addr(1), peer(1), SOURCE_CACHE)])
        cache.flush()

    def test_duplicates_keep_best_source(self) -> None:
        got = plan_candidates(lan=[(peer(1), [addr(1), addr(1)])], cached=[(peer(1), addr(1)), (peer(2), addr(2))],
                              hard_coded=[(peer(2), addr(2)), (peer(3), addr(3))], rng=random.Random(1))
        self.assertEqual([(c.address, c.source) for c in got],
                         [(addr(1), SOURCE_LAN), (addr(2), SOURCE_CACHE), (addr(3), SOURCE_HARD_CODED)])

    def test_blacklist(self) -> None:
        hard = [(peer(n), addr(n)) for n in range(1, 8)] + [(peer(8), addr(8, "udp"))]
        blacklist = [addr(1), "tcp:198.51.100.2:5483", "198.51.100.3:5483", "198.51.100.4", "tcp:198.51.100.8:5483"]
        got = plan_candidates(hard_coded=hard, blacklist=blacklist, blacklisted_peer_ids=[peer(5)],
                              our_peer_id=peer(6), rng=random.Random(0))
        self.assertEqual(sorted(c.address for c in got), [addr(7), addr(8, "udp")])

    def test_blacklist_bare_ip_matches_any_port_and_transport(self) -> None:
        b = Blacklist(["198.51.100.4", "[2001:db8::1]:9", "2001:db8::2"])
        self.assertTrue(b.blocks(Address("udp", "198.51.100.4", 1)))
        self.assertTrue(b.blocks(Address("udp", "2001:db8::1", 9)))
        self.assertFalse(b.blocks(Address("udp", "2001:db8::1", 10)))
        self.assertTrue(b.blocks(Address("tcp", "2001:db8::2", 10)))
        self.assertRaises(ValueError, Blacklist, ["not-an-address"])

    def test_transport_filter(self) -> None:
        got = plan_candidates(hard_coded=[(peer(1), addr(1)), (peer(2), addr(2, "udp"))], transports=["tcp"])
        self.assertEqual([c.address for c in got], [addr(1)])

    def test_nothing(self) -> None:
        self.assertEqual(plan_candidates(), [])


@implementer(IBootstrapCallbacks)
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.on_start = None

    def start_attempt(self, candidate):
        self.events.append(("start", candidate))
        if self.on_start:
            self.on_start(candidate)

    def cancel_attempt(self, candidate):
        self.events.append(("cancel", candidate))

    def succeeded(self, candidate, peer_id):
        self.events.append(("succeeded", candidate, peer_id))

    def failed(self, reason):
        self.events.append(("failed", reason))

    def named(self, name):
        return [e[1:] for e in self.events if e[0] == name]


class DenyReason(Enum):
    INVALID_NAME_HASH = "invalid network name"
    FAILED_EXTERNAL_REACHABILITY = 3


class StateMachineTests(unittest.TestCase):
    def setUp(self) -> None:
        self.cb = Recorder()
        verifyObject(IBootstrapCallbacks, self.cb)

    def test_empty_fails_at_once(self) -> None:
        m = BootstrapAttempt(self.cb)
        m.start([])
        (reason,), = self.cb.named("failed")
        self.assertIsInstance(reason, BootstrapFailed)
        self.assertIn("no candidates", str(reason))
        self.assertEqual(m.state, State.FAILED)
        self.assertRaises(RuntimeError, m.start, [cand(1)])

    def test_concurrency_cap(self) -> None:
        cands = [cand(n) for n in range(1, 101)]
        m = BootstrapAttempt(self.cb)  # default cap 64
        m.start(cands)
        self.assertEqual([c for (c,) in self.cb.named("start")], cands[:64])
        self.assertEqual(len(m.running), 64)
        self.assertEqual(len(m.pending), 36)
        m.attempt_failed(cands[10], "connection refused")
        self.assertEqual(self.cb.named("start")[-1], (cands[64],))
        self.assertEqual(len(m.running), 64)
        for c in cands[:64]:
            m.attempt_failed(c, "connection refused")
            self.assertLessEqual(len(m.running), 64)
        self.assertEqual(len(self.cb.named("start")), 100)
        self.assertEqual(self.cb.named("failed"), [])

    def test_small_cap_runs_in_order(self) -> None:
        cands = [cand(n) for n in range(1, 6)]
        m = BootstrapAttempt(self.cb, concurrency=2)
        m.start(cands)
        self.assertEqual(len(self.cb.named("start")), 2)
        m.attempt_failed(cands[1], "refused")
        m.attempt_failed(cands[0], "refused")
        self.assertEqual([c for (c,) in self.cb.named("start")], cands[:4])

    def test_first_success_wins_and_cancels_others(self) -> None:
        cands = [cand(n) for n in range(1, 6)]
        m = BootstrapAttempt(self.cb, concurrency=3)
        m.start(cands)
        self.assertTrue(m.attempt_succeeded(cands[1], peer(2)))
        self.assertEqual(self.cb.named("succeeded"), [(cands[1], peer(2))])
        self.assertEqual(sorted(c.address for (c,) in self.cb.named("cancel")), [addr(1), addr(3)])
        self.assertEqual(len(self.cb.named("start")), 3)  # nothing more started
        self.assertFalse(m.attempt_succeeded(cands[0], peer(1)))  # too late
        self.assertFalse(m.attempt_failed(cands[2], "x"))
        self.assertEqual(len(self.cb.named("succeeded")), 1)
        self.assertEqual(self.cb.named("failed"), [])
        self.assertEqual(m.state, State.SUCCEEDED)

    def test_all_fail_summarises_reasons(self) -> None:
        cands = [cand(n) for n in range(1, 7)]
        m = BootstrapAttempt(self.cb)
        m.start(cands)
        m.attempt_failed(cands[0], ConnectionRefusedError())
        m.attempt_failed(cands[1], Failure(ConnectionRefusedError()))
        m.attempt_failed(cands[2], HandshakeRefused("invalid network name", "theirs is 'testnet'"))
        m.attempt_failed(cands[3], DenyReason.INVALID_NAME_HASH)
        m.attempt_failed(cands[4], "node not whitelisted")
        self.assertEqual(self.cb.named("failed"), [])
        m.attempt_failed(cands[5], defer.TimeoutError())
        (reason,), = self.cb.named("failed")
        text = str(reason)
        self.assertIn("all 6 candidates failed", text)
        self.assertIn("connection refused: tcp:198.51.100.1:5483, tcp:198.51.100.2:5483", text)
        self.assertIn("denied: invalid network name (theirs is 'testnet'): tcp:198.51.100.3:5483", text)
        self.assertIn("invalid network name: tcp:198.51.100.4:5483", text)
        self.assertIn("node not whitelisted: tcp:198.51.100.5:5483", text)
        self.assertIn("timed out: tcp:198.51.100.6:5483", text)
        self.assertEqual([c for c, _ in reason.failures], cands)
        self.assertFalse(reason.timed_out or reason.external_reachability)

    def test_many_of_one_reason_abbreviated(self) -> None:
        cands = [cand(n) for n in range(1, 11)]
        m = BootstrapAttempt(self.cb)
        m.start(cands)
        for c in cands:
            m.attempt_failed(c, "connection refused")
        (reason,), = self.cb.named("failed")
        self.assertIn("and 7 more", str(reason))

    def test_external_reachability_denial_is_fatal_and_clear(self) -> None:
        cands = [cand(n) for n in range(1, 5)]
        m = BootstrapAttempt(self.cb, concurrency=2)
        m.start(cands)
        m.attempt_failed(cands[0], HandshakeRefused("FailedExternalReachability"))
        (reason,), = self.cb.named("failed")
        self.assertTrue(reason.external_reachability)
        self.assertIn("failed external reachability", str(reason))
        self.assertIn("bootstrap as a client", str(reason))
        self.assertIn(str(cands[0]), str(reason))
        self.assertEqual(self.cb.named("cancel"), [(cands[1],)])
        self.assertEqual(reason.not_tried, 2)
        self.assertEqual(m.state, State.FAILED)

    def test_reachability_reason_forms(self) -> None:
        for r in ("failed external reachability", "failed_external_reachability",
                  DenyReason.FAILED_EXTERNAL_REACHABILITY,
                  HandshakeRefused("failed external reachability", "no listener reachable")):
            self.assertTrue(is_reachability_denial(r), r)
        self.assertFalse(is_reachability_denial("invalid network name"))

    def test_reachability_not_fatal_when_disabled(self) -> None:
        m = BootstrapAttempt(self.cb, stop_on_reachability_denial=False)
        m.start([cand(1), cand(2)])
        m.attempt_failed(cand(1), "failed external reachability")
        self.assertEqual(self.cb.named("failed"), [])
        m.attempt_failed(cand(2), "failed external reachability")
        (reason,), = self.cb.named("failed")
        self.assertIn("failed external reachability: tcp:198.51.100.1:5483, tcp:198.51.100.2:5483", str(reason))

    def test_timeout_cancels_and_fails(self) -> None:
        cands = [cand(n) for n in range(1, 5)]
        m = BootstrapAttempt(self.cb, concurrency=2, timeout_hint=10.0)
        m.start(cands)
        m.attempt_failed(cands[0], "connection refused")
        m.timeout()
        (reason,), = self.cb.named("failed")
        self.assertTrue(reason.timed_out)
        self.assertIn("timed out after 10 s", str(reason))
        self.assertIn("2 of 4 attempts still running, 1 not started", str(reason))
        self.assertIn("connection refused: tcp:198.51.100.1:5483", str(reason))
        self.assertEqual(sorted(c.address for (c,) in self.cb.named("cancel")), [addr(2), addr(3)])
        m.timeout()
        self.assertEqual(len(self.cb.named("failed")), 1)

    def test_stop_cancels_silently(self) -> None:
        m = BootstrapAttempt(self.cb)
        m.start([cand(1), cand(2)])
        m.stop()
        self.assertEqual(len(self.cb.named("cancel")), 2)
        self.assertEqual(self.cb.named("failed") + self.cb.named("succeeded"), [])
        self.assertFalse(m.attempt_succeeded(cand(1), peer(1)))

    def test_wrong_peer_is_a_failure(self) -> None:
        m = BootstrapAttempt(self.cb)
        m.start([cand(1)])
        self.assertFalse(m.attempt_succeeded(cand(1), peer(9)))
        (reason,), = self.cb.named("failed")
        self.assertIn("wrong peer", str(reason))

    def test_unknown_peer_id_accepts_anyone_but_blacklisted(self) -> None:
        m = BootstrapAttempt(self.cb, blacklisted_peer_ids=[peer(9)])
        m.start([cand(1, with_id=False), cand(2, with_id=False), cand(3)])
        self.assertFalse(m.attempt_succeeded(cand(1, with_id=False), peer(9)))
        self.assertTrue(m.attempt_succeeded(cand(2, with_id=False), peer(8)))
        self.assertEqual(self.cb.named("succeeded"), [(cand(2, with_id=False), peer(8))])

    def test_blacklisted_peer_ids_filtered_at_start(self) -> None:
        m = BootstrapAttempt(self.cb, blacklisted_peer_ids=[peer(1)])
        m.start([cand(1), cand(2), cand(2)])
        self.assertEqual(self.cb.named("start"), [(cand(2),)])
        self.assertEqual(m.total, 1)

    def test_synchronous_failures_in_start_attempt(self) -> None:
        m = BootstrapAttempt(self.cb, concurrency=3)
        self.cb.on_start = lambda c: m.attempt_failed(c, "unsupported transport")
        m.start([cand(n) for n in range(1, 51)])
        self.assertEqual(len(self.cb.named("start")), 50)
        (reason,), = self.cb.named("failed")
        self.assertIn("all 50 candidates failed", str(reason))

    def test_synchronous_success_in_start_attempt(self) -> None:
        m = BootstrapAttempt(self.cb, concurrency=3)
        self.cb.on_start = lambda c: m.attempt_succeeded(c, c.peer_id) if c == cand(2) else None
        m.start([cand(n) for n in range(1, 6)])
        self.assertEqual(self.cb.named("succeeded"), [(cand(2), peer(2))])
        self.assertEqual(self.cb.named("cancel"), [(cand(1),)])
        self.assertEqual(len(self.cb.named("start")), 2)

    def test_describe_reason(self) -> None:
        self.assertEqual(describe_reason(defer.CancelledError()), "cancelled")
        self.assertEqual(describe_reason(ValueError("bad")), "ValueError: bad")
        self.assertEqual(describe_reason(DenyReason.FAILED_EXTERNAL_REACHABILITY), "failed external reachability")


class FakeCache:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def put(self, peer_id, address):
        self.calls.append(("put", peer_id, address))

    def record_failure(self, peer_id):
        self.calls.append(("failure", peer_id))


class RunnerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.attempts: dict[Candidate, defer.Deferred] = {}
        self.cancelled: list[Candidate] = []
        self.cache = FakeCache()
        self.released: list[tuple] = []

    def try_candidate(self, candidate):
        d = defer.Deferred(lambda _: self.cancelled.append(candidate))
        self.attempts[candidate] = d
        return d

    def start(self, cands, **kw):
        kw.setdefault("clock", self.clock)
        kw.setdefault("cache", self.cache)
        kw.setdefault("release", lambda c, p: self.released.append((c, p)))
        return run_bootstrap(cands, self.try_candidate, **kw)

    def test_success(self) -> None:
        cands = [cand(1, SOURCE_CACHE), cand(2), cand(3)]
        d = self.start(cands)
        self.attempts[cands[0]].errback(ConnectionRefusedError())
        self.attempts[cands[2]].callback(peer(3))
        self.assertEqual(self.successResultOf(d), BootstrapResult(cands[2], peer(3)))
        self.assertEqual(self.cancelled, [cands[1]])
        self.assertEqual(self.cache.calls, [("failure", peer(1)), ("put", peer(3), addr(3))])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        cands = [cand(n) for n in range(1, 4)]
        d = self.start(cands, timeout=10.0, concurrency=2)
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        f = self.failureResultOf(d, BootstrapFailed)
        self.assertTrue(f.value.timed_out)
        self.assertIn("timed out after 10 s", str(f.value))
        self.assertEqual(sorted(c.address for c in self.cancelled), [addr(1), addr(2)])
        self.assertNotIn(cands[2], self.attempts)  # never started
        self.assertEqual(self.cache.calls, [])  # cancellations are not failures

    def test_all_fail(self) -> None:
        cands = [cand(1), cand(2)]
        d = self.start(cands)
        self.attempts[cands[0]].errback(HandshakeRefused("invalid network name"))
        self.attempts[cands[1]].errback(ConnectionRefusedError())
        f = self.failureResultOf(d, BootstrapFailed)
        self.assertIn("denied: invalid network name: tcp:198.51.100.1:5483", str(f.value))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_empty(self) -> None:
        f = self.failureResultOf(self.start([]), BootstrapFailed)
        self.assertIn("no candidates", str(f.value))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_synchronous_try_candidate(self) -> None:
        def try_candidate(c):
            if c == cand(1):
                raise ValueError("unsupported")
            return peer(2)
        d = run_bootstrap([cand(1), cand(2)], try_candidate, clock=self.clock)
        self.assertEqual(self.successResultOf(d), BootstrapResult(cand(2), peer(2)))

    def test_cancel(self) -> None:
        cands = [cand(1), cand(2)]
        d = self.start(cands)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(sorted(c.address for c in self.cancelled), [addr(1), addr(2)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wrong_peer_is_released(self) -> None:
        cands = [cand(1), cand(2)]
        d = self.start(cands)
        self.attempts[cands[0]].callback(peer(7))
        self.assertEqual(self.released, [(cands[0], peer(7))])
        self.assertNoResult(d)
        self.attempts[cands[1]].callback(peer(2))
        self.assertEqual(self.successResultOf(d).peer_id, peer(2))
