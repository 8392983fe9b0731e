"""
Tests for L{crust.bootstrap.keeper}: bootstrapping again while a node has
no peer, on a L{Clock} (no reactor, no sockets).
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.bootstrap.keeper import BOOTSTRAPPING, HELD, IDLE, STOPPED, WAITING, BootstrapKeeper
from crust.bootstrap.plan import BootstrapFailed
from crust.observer import Observers


class Attempts:
    """The keeper's attempt callable: records each call, answers as told."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.pending: list[Deferred] = []
        self.sources = True

    def __call__(self, clock: Clock) -> Optional[Deferred]:
        self.calls.append(clock.seconds())
        if not self.sources:
            return None
        d: Deferred = Deferred()
        self.pending.append(d)
        return d

    def fail(self) -> None:
        self.pending.pop(0).errback(BootstrapFailed("no candidate granted the request", []))

    def succeed(self, value: object = "peer") -> None:
        self.pending.pop(0).callback(value)


class KeeperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.attempts = Attempts()
        self.peers = 0
        self.keeper = BootstrapKeeper(lambda: self.attempts(self.clock), lambda: self.peers, self.clock,
                                      initial_delay=1.0, max_delay=10.0, jitter=lambda: 0.0)

    def advance_to(self, when: float) -> None:
        self.clock.advance(when - self.clock.seconds())

    def test_failed_attempts_back_off_up_to_the_maximum(self) -> None:
        self.keeper.start()
        self.assertEqual(self.keeper.state, BOOTSTRAPPING)
        for _ in range(7):
            self.attempts.fail()
            self.assertEqual(self.keeper.state, WAITING)
            self.clock.advance(self.keeper.next_attempt - self.clock.seconds())  # type: ignore[operator]
        # 0, then 2, 4, 8 and 10 (the cap) apart
        gaps = [b - a for a, b in zip(self.attempts.calls, self.attempts.calls[1:])]
        self.assertEqual(gaps, [2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0])
        self.assertEqual(self.keeper.failures, 7)

    def test_success_resets_the_backoff(self) -> None:
        self.keeper.start()
        self.attempts.fail()
        self.clock.advance(2.0)
        self.attempts.fail()
        self.clock.advance(4.0)
        self.peers = 1
        self.attempts.succeed()
        self.assertEqual((self.keeper.state, self.keeper.failures), (HELD, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_losing_the_last_peer_bootstraps_again_soon(self) -> None:
        self.peers = 1
        self.keeper.start()
        self.assertEqual(self.keeper.state, HELD)  # a peer already: no attempt
        self.assertEqual(self.attempts.calls, [])
        self.peers = 0
        self.keeper.lost_peer("p", "connection lost")
        self.assertEqual(self.keeper.state, WAITING)
        self.clock.advance(0.999)
        self.assertEqual(self.attempts.calls, [])
        self.clock.advance(0.001)
        self.assertEqual(self.attempts.calls, [1.0])

    def test_losing_one_of_several_peers_does_nothing(self) -> None:
        self.peers = 2
        self.keeper.start()
        self.peers = 1
        self.keeper.lost_peer("p", "connection lost")
        self.assertEqual(self.keeper.state, HELD)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_peer_arriving_cancels_the_retry(self) -> None:
        self.keeper.start()
        self.attempts.fail()
        self.assertEqual(self.keeper.state, WAITING)
        self.peers = 1
        self.keeper.connect_success("p")  # somebody connected to us
        self.assertEqual((self.keeper.state, self.keeper.failures), (HELD, 0))
        self.clock.advance(100)
        self.assertEqual(len(self.attempts.calls), 1)

    def test_a_peer_by_the_time_the_retry_is_due(self) -> None:
        self.keeper.start()
        self.attempts.fail()
        self.peers = 1  # no event told us (say, an observer registered late)
        self.clock.advance(2.0)
        self.assertEqual(len(self.attempts.calls), 1)
        self.assertEqual(self.keeper.state, HELD)

    def test_failure_while_a_peer_connected_counts_as_held(self) -> None:
        self.keeper.start()
        self.peers = 1
        self.attempts.fail()
        self.assertEqual((self.keeper.state, self.keeper.failures), (HELD, 0))

    def test_nothing_to_bootstrap_from(self) -> None:
        self.attempts.sources = False
        self.keeper.start()
        self.assertEqual(self.keeper.state, IDLE)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # ... and it looks again when a peer it had is gone (its cache may know peers now)
        self.keeper.lost_peer("p", "gone")
        self.clock.advance(1.0)
        self.assertEqual(len(self.attempts.calls), 2)
        self.assertEqual(self.keeper.state, IDLE)

    def test_an_attempt_that_found_nothing(self) -> None:
        self.keeper.start()
        self.attempts.succeed(None)  # LAN discovery found nobody
        self.assertEqual(self.keeper.state, IDLE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zero_maximum_tries_only_at_start(self) -> None:
        self.keeper.max_delay = 0.0
        self.keeper.start()
        self.attempts.fail()
        self.assertEqual(self.keeper.state, IDLE)
        self.keeper.lost_peer("p", "gone")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.attempts.calls), 1)

    def test_stop_cancels_the_retry_and_ignores_the_attempt_under_way(self) -> None:
        self.keeper.start()
        self.attempts.fail()
        self.keeper.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.keeper.lost_peer("p", "gone")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.keeper.state, STOPPED)

        keeper = BootstrapKeeper(lambda: self.attempts(self.clock), lambda: 0, self.clock, jitter=lambda: 0.0)
        keeper.start()
        keeper.stop()
        self.attempts.pending.pop().errback(CancelledError())  # the service cancels it as it stops
        self.assertEqual((keeper.state, keeper.failures), (STOPPED, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_stopped_service_or_a_cancelled_attempt_is_not_retried(self) -> None:
        from crust.errors import ServiceNotRunning

        for error in (ServiceNotRunning("the service is not running"), CancelledError()):
            self.keeper.start()
            self.attempts.pending.pop(0).errback(error)
            self.assertEqual((self.keeper.state, self.keeper.failures), (IDLE, 0))
            self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_attempt_that_raises_is_logged_not_fatal(self) -> None:
        def broken() -> Deferred:
            raise RuntimeError("broken")

        keeper = BootstrapKeeper(broken, lambda: 0, self.clock)
        keeper.start()
        self.assertEqual(keeper.state, IDLE)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_jitter_is_added(self) -> None:
        keeper = BootstrapKeeper(lambda: self.attempts(self.clock), lambda: 0, self.clock, initial_delay=1.0,
                                 max_delay=60.0, jitter=lambda: 0.5)
        keeper.start()
        self.attempts.fail()
        self.assertEqual(keeper.next_attempt, 2.5)
        self.assertEqual(keeper.status(), {"state": WAITING, "failures": 1, "next_attempt_in": 2.5})

    def test_delays(self) -> None:
        self.assertEqual([self.keeper.delay(n) for n in (0, 1, 2, 3, 4, 1000)], [1.0, 2.0, 4.0, 8.0, 10.0, 10.0])

    def test_an_observer_not_told_of_messages(self) -> None:
        observers = Observers()
        observers.add(self.keeper)
        observers.deliverer("p")(b"x")  # not an observer of messages: it is not handed them
        observers.deliver_signed("p", b"x", None)
        self.assertEqual(self.flushLoggedErrors(), [])
        observers.emit("lost_peer", "p", "gone")
        self.assertEqual(self.keeper.state, WAITING)

    def test_already_fired_attempt(self) -> None:
        self.peers = 0
        keeper = BootstrapKeeper(lambda: succeed("peer"), lambda: self.peers, self.clock, jitter=lambda: 0.0)
        keeper.start()
        self.assertEqual(keeper.state, HELD)
