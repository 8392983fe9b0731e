"""
L{BootstrapKeeper}: keeps a node part of the network.

A node bootstraps when it starts.  Without a keeper, a node whose seeds were
not up yet, whose network was not up yet, or that later lost its last peer
(a seed restarted, the laptop slept, the network changed) would stay alone
until someone ran C{crust bootstrap}; a node behind a NAT would also have lost
its rendezvous and its relay.  The keeper tries again:

  - when an attempt fails, after a delay that doubles from C{initial_delay}
    up to C{max_delay} (plus up to a second of jitter, so that nodes cut off
    together do not come back together), until a peer answers;
  - when the last connected peer is lost, after C{initial_delay} (and the
    jitter);
  - never while any peer is connected, never when there is nothing to
    bootstrap from (no contacts, no cached peers, no LAN nodes: the attempt
    says so by returning None or firing with None), and not after an
    attempt was cancelled or found the service stopped.

Whatever ends the node's solitude (a retry, a C{crust bootstrap}, a peer
connecting to us) resets the delay.  The keeper is an observer of the
service (register it with C{add_observer}); it calls only the two callables
it is given, so it has no I/O of its own beyond its clock.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust.errors import ServiceNotRunning
from crust.observer import CrustObserver

#: what L{BootstrapKeeper.state} may be
IDLE, WAITING, BOOTSTRAPPING, HELD, STOPPED = "idle", "waiting", "bootstrapping", "held", "stopped"


class BootstrapKeeper(CrustObserver):
    """
    Bootstraps again while a node has no peer.

    @param attempt: starts one bootstrap: returns its Deferred (firing when
        a peer granted it, failing when none did), or None when there is
        nothing to bootstrap from (the Deferred may also fire with None to
        say so).
    @param peer_count: how many peers are connected now.
    @param clock: when to try again.
    @param initial_delay: seconds before the first retry (and before the
        retry after losing the last peer).
    @param max_delay: the longest wait between attempts; 0: never try again
        (only L{start}'s attempt is made).
    @param jitter: added to each delay; returns seconds (0 to 1 by default).
    """

    log = Logger()

    def __init__(self, attempt: Callable[[], Optional[Deferred]], peer_count: Callable[[], int],
                 clock: IReactorTime, initial_delay: float = 1.0, max_delay: float = 60.0,
                 jitter: Callable[[], float] = random.random) -> None:
        self._attempt = attempt
        self._peer_count = peer_count
        self._clock = clock
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self._jitter = jitter
        self.state = IDLE
        #: failed attempts since the node last had a peer
        self.failures = 0
        #: when the next attempt is due (the clock's seconds), while L{state} is C{waiting}
        self.next_attempt: Optional[float] = None
        self._call: Optional[IDelayedCall] = None
        self._running: Optional[Deferred] = None

    def delay(self, failures: int) -> float:
        """Seconds to wait after C{failures} failed attempts, jitter included (Twisted's C{backoffPolicy})."""
        jitter = self._jitter
        return backoffPolicy(self.initial_delay, self.max_delay, 2.0, lambda: max(0.0, float(jitter())))(failures)

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        """Make the first attempt now."""
        self.state = IDLE
        self._try()

    def stop(self) -> None:
        """Make no more attempts (one under way is left to the service to cancel)."""
        self._cancel_call()
        self.state = STOPPED
        self._running = None

    def status(self) -> dict[str, Any]:
        """What C{crust info} shows."""
        due = None
        if self.next_attempt is not None:
            due = round(max(0.0, self.next_attempt - self._clock.seconds()), 1)
        return {"state": self.state, "failures": self.failures, "next_attempt_in": due}

    # -- attempts ---------------------------------------------------------------------------

    def _try(self) -> None:
        self._call = None
        self.next_attempt = None
        if self.state == STOPPED:
            return
        if self._peer_count() > 0:
            self._held()
            return
        try:
            d = self._attempt()
        except Exception:
            self.log.failure("the bootstrap attempt failed to start")
            d = None
        if d is None:
            self.state = IDLE  # nothing to bootstrap from: wait for a peer to go (or come)
            return
        self.state = BOOTSTRAPPING
        self._running = d
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(d,), errbackArgs=(d,))

    def _succeeded(self, result: Any, d: Deferred) -> None:
        if self._running is not d:
            return  # stopped meanwhile
        self._running = None
        if result is None and self._peer_count() == 0:
            self.state = IDLE
            return
        if self.failures:
            self.log.info("bootstrapped again after {failures} failed attempt(s)", failures=self.failures)
        self._held()

    def _failed(self, failure: Failure, d: Deferred) -> None:
        if self._running is not d:
            return
        self._running = None
        if self._peer_count() > 0:
            self._held()  # someone connected to us meanwhile
            return
        if failure.check(CancelledError, ServiceNotRunning):
            self.state = IDLE  # the service stopped (or someone cancelled): nothing to try again for
            return
        self.failures += 1
        if self.max_delay <= 0:
            self.state = IDLE  # (the bootstrapper warned of the failure itself)
            return
        delay = self._schedule(self.delay(self.failures))
        if self.failures == 1:  # (the bootstrapper warned of the failure itself)
            self.log.info("no peer answered: bootstrapping again in {delay:.1f} s, then at most every {max:g} s "
                          "until one does", delay=delay, max=self.max_delay)
        else:
            self.log.debug("bootstrap attempt {n} failed: {reason}; next in {delay:.1f} s", n=self.failures,
                           reason=failure.getErrorMessage(), delay=delay)

    def _schedule(self, delay: float) -> float:
        self._cancel_call()
        self.state = WAITING
        self.next_attempt = self._clock.seconds() + delay
        self._call = self._clock.callLater(delay, self._try)
        return delay

    def _held(self) -> None:
        self._cancel_call()
        self.state = HELD
        self.failures = 0

    def _cancel_call(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.next_attempt = None

    # -- what the service tells us ----------------------------------------------------------

    def connect_success(self, peer_id: Any) -> None:
        if self.state in (WAITING, IDLE):
            self._held()

    def bootstrap_connect(self, peer_id: Any, address: Any) -> None:
        self.connect_success(peer_id)

    def lost_peer(self, peer_id: Any, reason: str) -> None:
        if self.state in (STOPPED, BOOTSTRAPPING, WAITING) or self.max_delay <= 0:
            return
        if self._peer_count() > 0:
            return
        delay = self._schedule(self.delay(0))
        self.log.info("no peer left (the last one: {reason}): bootstrapping again in {delay:.1f} s",
                      reason=reason, delay=delay)

    new_message = None  # type: ignore[assignment]  # not told of messages
