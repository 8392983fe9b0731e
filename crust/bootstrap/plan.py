"""
Bootstrap candidate planning, and the bootstrap state machine.

L{plan_candidates} orders the addresses to try (LAN discovery replies,
then cached peers most recently used first, then the hard-coded contacts
shuffled), drops duplicates and blacklisted ones.  L{BootstrapAttempt} is
a pure state machine that runs them with a concurrency cap: its inputs are
method calls, its outputs go to an L{IBootstrapCallbacks}; the first success
wins and cancels the rest.  L{run_bootstrap} drives it with Deferreds and an
injected clock (the overall timeout).
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict, deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterable, NamedTuple, Optional, Union

from twisted.internet import defer
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from crust._util.reactor import maybe_global_reactor
from crust.address import Address, split_host_port
from crust.errors import CrustError
from crust.identity import PeerId

DEFAULT_CONCURRENCY = 64
DEFAULT_TIMEOUT = 10.0

SOURCE_LAN = "lan"
SOURCE_CACHE = "cache"
SOURCE_HARD_CODED = "hard-coded"

FAILED_EXTERNAL_REACHABILITY = "failed external reachability"

log = Logger()


@dataclass(frozen=True)
class Candidate:
    """One address to bootstrap off; C{peer_id} is who we expect there, if known."""

    address: Address
    peer_id: Optional[PeerId] = None
    source: str = SOURCE_HARD_CODED

    def __str__(self) -> str:
        return f"{self.address} ({self.peer_id.short()})" if self.peer_id else str(self.address)


# -- blacklist ---------------------------------------------------------------

class Blacklist:
    """
    Addresses never to bootstrap off.  Entries: an L{Address} or its text
    (C{"tcp:1.2.3.4:5"}: exactly that), C{"1.2.3.4:5"} (either transport), or
    a bare IP C{"1.2.3.4"} (every port of that host).
    """

    def __init__(self, entries: Iterable[Union[Address, str]] = ()) -> None:
        self._exact: set[Address] = set()
        self._host_port: set[tuple[str, int]] = set()
        self._hosts: set[str] = set()
        for entry in entries:
            self.add(entry)

    def add(self, entry: Union[Address, str]) -> None:
        """@raise ValueError: C{entry} is not an address, host:port or IP."""
        if isinstance(entry, Address):
            self._exact.add(entry)
            return
        text = entry.strip()
        head = text.partition(":")[0]
        if head in ("tcp", "udp"):
            self._exact.add(Address.parse(text))
            return
        try:
            host, port = split_host_port(text)
            self._host_port.add((Address("tcp", host, port).host, port))
        except ValueError:
            self._hosts.add(Address("tcp", text.strip("[]"), 1).host)

    def blocks(self, address: Address) -> bool:
        return (address in self._exact or (address.host, address.port) in self._host_port
                or address.host in self._hosts)

    def __bool__(self) -> bool:
        return bool(self._exact or self._host_port or self._hosts)


# -- ordering ----------------------------------------------------------------

def _pair(item: Any) -> tuple[Optional[PeerId], Address]:
    if hasattr(item, "address") and hasattr(item, "peer_id"):
        return item.peer_id, item.address
    peer_id, address = item
    return peer_id, address


def plan_candidates(lan: Iterable[Any] = (), cached: Iterable[Any] = (), hard_coded: Iterable[Any] = (),
                    blacklist: Union[Blacklist, Iterable[Union[Address, str]]] = (),
                    blacklisted_peer_ids: Iterable[PeerId] = (), our_peer_id: Optional[PeerId] = None,
                    transports: Optional[Iterable[str]] = None,
                    rng: Optional[random.Random] = None) -> list[Candidate]:
    """
    The bootstrap candidates in the order to try them.

    @param lan: LAN discovery replies, C{(PeerId, [Address])}, in arrival order.
    @param cached: bootstrap cache entries (or C{(PeerId, Address)}) in the
        order to try them: the fresh ones most recently used first, then the
        stale ones (a bootstrap attempt re-validates them).
    @param hard_coded: L{crust.config.HardCodedContact}s (or pairs); shuffled.
    @param blacklist: a L{Blacklist} or its entries.
    @param blacklisted_peer_ids: peers never to bootstrap off.
    @param our_peer_id: ourselves, never a candidate.
    @param transports: if given, only addresses of these transports.
    @param rng: shuffles the hard-coded contacts (inject for determinism).
    @return: candidates, each address once (its first, best-ranked source wins).
    """
    rng = rng if rng is not None else random.SystemRandom()
    if not isinstance(blacklist, Blacklist):
        blacklist = Blacklist(blacklist)
    banned_ids = set(blacklisted_peer_ids)
    if our_peer_id is not None:
        banned_ids.add(our_peer_id)
    allowed_transports = None if transports is None else set(transports)

    ordered: list[Candidate] = []
    for peer_id, addresses in lan:
        ordered.extend(Candidate(a, peer_id, SOURCE_LAN) for a in addresses)
    for item in cached:
        peer_id, address = _pair(item)
        ordered.append(Candidate(address, peer_id, SOURCE_CACHE))
    seeds = [Candidate(address, peer_id, SOURCE_HARD_CODED) for peer_id, address in map(_pair, hard_coded)]
    rng.shuffle(seeds)
    ordered.extend(seeds)

    seen: set[Address] = set()
    out = []
    for c in ordered:
        if c.address in seen:
            continue
        seen.add(c.address)
        if allowed_transports is not None and c.address.transport not in allowed_transports:
            continue
        if blacklist.blocks(c.address) or (c.peer_id is not None and c.peer_id in banned_ids):
            log.debug("bootstrap: skipping blacklisted {candidate}", candidate=str(c))
            continue
        out.append(c)
    return out


# -- failure reasons -----------------------------------------------------------

def describe_reason(reason: Any) -> str:
    """Short text for why an attempt failed (a Failure, exception, enum or text)."""
    if isinstance(reason, Failure):
        reason = reason.value
    if isinstance(reason, Enum):
        value = reason.value
        return value if isinstance(value, str) else _words(reason.name)
    if isinstance(reason, str):
        return reason
    if isinstance(reason, CancelledError):
        return "cancelled"
    if isinstance(reason, BaseException):
        inner = getattr(reason, "reason", None)
        if hasattr(reason, "detail") and isinstance(inner, (str, Enum)):  # HandshakeRefused and the like
            text = describe_reason(inner)
            if not text.startswith("denied"):
                text = "denied: " + text
            detail = getattr(reason, "detail", "")
            return f"{text} ({detail})" if detail else text
        if isinstance(reason, ConnectionRefusedError) or type(reason).__name__ == "ConnectionRefusedError":
            return "connection refused"
        if isinstance(reason, TimeoutError) or type(reason).__name__ in ("TimeoutError", "TCPTimedOutError"):
            return "timed out"
        text = str(reason).strip()
        return f"{type(reason).__name__}: {text}" if text else type(reason).__name__
    return str(reason)


def _words(name: str) -> str:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return re.sub(r"[\s_\-]+", " ", spaced).strip().lower()


def is_reachability_denial(reason: Any) -> bool:
    """Was an attempt denied because the peer could not reach us back?"""
    return "external reachability" in _words(describe_reason(reason))


def summarise_failures(failures: Iterable[tuple[Candidate, str]], per_reason: int = 3) -> str:
    """C{"connection refused: tcp:a, tcp:b; denied: invalid network name: tcp:c"}."""
    groups: "OrderedDict[str, list[Candidate]]" = OrderedDict()
    for candidate, reason in failures:
        groups.setdefault(reason, []).append(candidate)
    parts = []
    for reason, candidates in groups.items():
        names = ", ".join(str(c.address) for c in candidates[:per_reason])
        more = len(candidates) - per_reason
        parts.append(f"{reason}: {names}" + (f" and {more} more" if more > 0 else ""))
    return "; ".join(parts)


class BootstrapFailed(CrustError):
    """
    A bootstrap found no peer.

    @ivar failures: C{(Candidate, reason text)} for every failed attempt.
    @ivar timed_out: the overall timeout expired.
    @ivar external_reachability: a peer denied us because it could not
        connect back to our listener (we cannot join as a node).
    @ivar not_tried: candidates never attempted (timeout or fatal denial).
    """

    def __init__(self, summary: str, failures: Iterable[tuple[Candidate, str]] = (), timed_out: bool = False,
                 external_reachability: bool = False, not_tried: int = 0) -> None:
        super().__init__(summary)
        self.summary = summary
        self.failures = list(failures)
        self.timed_out = timed_out
        self.external_reachability = external_reachability
        self.not_tried = not_tried


class BootstrapResult(NamedTuple):
    candidate: Candidate
    peer_id: PeerId


# -- the state machine ---------------------------------------------------------

class IBootstrapCallbacks(Interface):
    """The outputs of a L{BootstrapAttempt}."""

    def start_attempt(candidate):
        """Start trying C{candidate}; report with attempt_succeeded/attempt_failed."""

    def cancel_attempt(candidate):
        """Abandon the running attempt on C{candidate} (its report is then ignored)."""

    def succeeded(candidate, peer_id):
        """The bootstrap succeeded through C{candidate} to C{peer_id}.  Final."""

    def failed(reason):
        """The bootstrap failed; C{reason} is a L{BootstrapFailed}.  Final."""


class State(Enum):
    IDLE = "idle"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


class BootstrapAttempt:
    """
    One bootstrap: at most C{concurrency} candidates are tried at a time, in
    order; the first success wins and every other running attempt is
    cancelled.  Exactly one of C{succeeded}/C{failed} is emitted, except
    after L{stop}, which emits neither.

    A denial for failed external reachability ends the bootstrap at once
    (every peer would run the same test on us) when
    C{stop_on_reachability_denial}; other failures only drop that candidate.

    @param timeout_hint: the overall timeout, used in the failure message.
    """

    def __init__(self, callbacks: IBootstrapCallbacks, concurrency: int = DEFAULT_CONCURRENCY,
                 blacklisted_peer_ids: Iterable[PeerId] = (), stop_on_reachability_denial: bool = True,
                 timeout_hint: Optional[float] = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.callbacks = callbacks
        self.concurrency = concurrency
        self.blacklisted_peer_ids = frozenset(blacklisted_peer_ids)
        self.stop_on_reachability_denial = stop_on_reachability_denial
        self.timeout_hint = timeout_hint
        self.state = State.IDLE
        self.failures: list[tuple[Candidate, str]] = []
        self._pending: deque[Candidate] = deque()
        self._running: "OrderedDict[Candidate, None]" = OrderedDict()
        self._filling = False
        self.total = 0

    @property
    def running(self) -> list[Candidate]:
        return list(self._running)

    @property
    def pending(self) -> list[Candidate]:
        return list(self._pending)

    # -- inputs -----------------------------------------------------------

    def start(self, candidates: Iterable[Candidate]) -> None:
        """Begin with C{candidates} (in order).  An empty list fails at once."""
        if self.state is not State.IDLE:
            raise RuntimeError(f"this bootstrap is already {self.state.value}")
        self.state = State.RUNNING
        unique = OrderedDict.fromkeys(
            c for c in candidates if c.peer_id is None or c.peer_id not in self.blacklisted_peer_ids)
        self._pending.extend(unique)
        self.total = len(self._pending)
        if not self._pending:
            self._fail(BootstrapFailed(
                "bootstrap failed: no candidates to try (no LAN peer answered, the bootstrap cache is "
                "empty, and there are no usable hard-coded contacts once the blacklist is applied)"))
            return
        log.info("bootstrapping: {count} candidates, at most {concurrency} at a time",
                 count=self.total, concurrency=self.concurrency)
        self._fill()

    def attempt_succeeded(self, candidate: Candidate, peer_id: PeerId) -> bool:
        """
        The attempt on C{candidate} reached C{peer_id}.

        @return: True if this wins the bootstrap; False if it came too late,
            or the peer is not the expected or an allowed one (it then
            counts as a failure): the caller must drop that connection.
        """
        if self.state is not State.RUNNING or candidate not in self._running:
            return False
        if candidate.peer_id is not None and peer_id != candidate.peer_id:
            self.attempt_failed(candidate, f"wrong peer (expected {candidate.peer_id.short()}, "
                                           f"reached {peer_id.short()})")
            return False
        if peer_id in self.blacklisted_peer_ids:
            self.attempt_failed(candidate, "blacklisted peer id")
            return False
        del self._running[candidate]
        self.state = State.SUCCEEDED
        self._cancel_all()
        log.info("bootstrapped off {peer} at {address}", peer=peer_id.short(), address=str(candidate.address))
        self.callbacks.succeeded(candidate, peer_id)
        return True

    def attempt_failed(self, candidate: Candidate, reason: Any) -> bool:
        """The attempt on C{candidate} failed.  @return: False if ignored (not running)."""
        if self.state is not State.RUNNING or candidate not in self._running:
            return False
        del self._running[candidate]
        text = describe_reason(reason)
        self.failures.append((candidate, text))
        log.debug("bootstrap attempt on {candidate} failed: {reason}", candidate=str(candidate), reason=text)
        if self.stop_on_reachability_denial and is_reachability_denial(reason):
            not_tried = len(self._pending)
            self.state = State.FAILED
            self._cancel_all()
            self._fail(BootstrapFailed(
                f"bootstrap failed: {candidate} denied us: {FAILED_EXTERNAL_REACHABILITY} - it could not "
                f"connect back to our listener addresses, so we cannot join as a node. Make the listener "
                f"reachable from the internet (port forwarding, enable_port_mapping, "
                f"force_acceptor_port_in_ext_ep) or bootstrap as a client. All failures: "
                f"{summarise_failures(self.failures)}",
                self.failures, external_reachability=True, not_tried=not_tried))
            return True
        self._fill()
        return True

    def timeout(self) -> None:
        """The overall timeout expired: cancel what runs and fail."""
        if self.state is not State.RUNNING:
            return
        running, not_started = len(self._running), len(self._pending)
        self.state = State.FAILED
        self._cancel_all()
        after = f" after {self.timeout_hint:g} s" if self.timeout_hint is not None else ""
        summary = (f"bootstrap timed out{after}: {running} of {self.total} attempts still running, "
                   f"{not_started} not started")
        if self.failures:
            summary += f"; failures: {summarise_failures(self.failures)}"
        self._fail(BootstrapFailed(summary, self.failures, timed_out=True, not_tried=not_started + running))

    def stop(self) -> None:
        """Abandon the bootstrap: cancel what runs; no event is emitted."""
        if self.state is not State.RUNNING:
            return
        self.state = State.STOPPED
        self._cancel_all()

    # -- internals ----------------------------------------------------------

    def _fill(self) -> None:
        if self._filling:  # re-entered from start_attempt: the outer loop continues
            return
        self._filling = True
        try:
            while self.state is State.RUNNING and self._pending and len(self._running) < self.concurrency:
                candidate = self._pending.popleft()
                self._running[candidate] = None
                self.callbacks.start_attempt(candidate)
        finally:
            self._filling = False
        if self.state is State.RUNNING and not self._running and not self._pending:
            self._fail(BootstrapFailed(
                f"bootstrap failed: all {self.total} candidates failed: {summarise_failures(self.failures)}",
                self.failures))

    def _fail(self, reason: BootstrapFailed) -> None:
        self.state = State.FAILED
        log.debug("{summary}", summary=reason.summary)  # the caller says it (the bootstrapper, once)
        self.callbacks.failed(reason)

    def _cancel_all(self) -> None:
        running = list(self._running)
        self._running.clear()
        self._pending.clear()
        for candidate in running:
            self.callbacks.cancel_attempt(candidate)


# -- the Twisted driver ----------------------------------------------------------

@implementer(IBootstrapCallbacks)
class _Runner:
    def __init__(self, try_candidate: Callable[[Candidate], Any], clock: Any, timeout: float, cache: Any,
                 release: Optional[Callable[[Candidate, PeerId], Any]], **machine_args: Any) -> None:
        self.try_candidate = try_candidate
        self.clock = clock
        self.cache = cache
        self.release = release
        self.attempts: dict[Candidate, defer.Deferred] = {}
        self.result: defer.Deferred = defer.Deferred(self._cancel)
        self.machine = BootstrapAttempt(self, timeout_hint=timeout, **machine_args)
        self.timer = clock.callLater(timeout, self.machine.timeout)

    def start_attempt(self, candidate: Candidate) -> None:
        d = defer.maybeDeferred(self.try_candidate, candidate)
        self.attempts[candidate] = d
        d.addCallbacks(self._ok, self._failed, callbackArgs=(candidate,), errbackArgs=(candidate,))

    def cancel_attempt(self, candidate: Candidate) -> None:
        d = self.attempts.pop(candidate, None)
        if d is not None:
            d.cancel()

    def succeeded(self, candidate: Candidate, peer_id: PeerId) -> None:
        self._stop_timer()
        if self.cache is not None:
            self.cache.put(peer_id, candidate.address)
        self.result.callback(BootstrapResult(candidate, peer_id))

    def failed(self, reason: BootstrapFailed) -> None:
        self._stop_timer()
        self.result.errback(reason)

    def _ok(self, peer_id: PeerId, candidate: Candidate) -> None:
        self.attempts.pop(candidate, None)
        if not self.machine.attempt_succeeded(candidate, peer_id) and self.release is not None:
            self.release(candidate, peer_id)

    def _failed(self, reason: Failure, candidate: Candidate) -> None:
        self.attempts.pop(candidate, None)
        if reason.check(CancelledError):
            return None
        if (self.machine.attempt_failed(candidate, reason) and self.cache is not None
                and candidate.peer_id is not None):
            self.cache.record_failure(candidate.peer_id)
        return None

    def _cancel(self, _: defer.Deferred) -> None:
        self._stop_timer()
        self.machine.stop()

    def _stop_timer(self) -> None:
        if self.timer.active():
            self.timer.cancel()


def run_bootstrap(candidates: Iterable[Candidate], try_candidate: Callable[[Candidate], Any],
                  clock: Any = None, timeout: float = DEFAULT_TIMEOUT, concurrency: int = DEFAULT_CONCURRENCY,
                  blacklisted_peer_ids: Iterable[PeerId] = (), stop_on_reachability_denial: bool = True,
                  cache: Any = None, release: Optional[Callable[[Candidate, PeerId], Any]] = None
                  ) -> defer.Deferred:
    """
    Run a L{BootstrapAttempt} over C{candidates}.

    @param try_candidate: C{(Candidate) -> Deferred[PeerId]}: connect and
        bootstrap off one candidate; cancelling the Deferred must abandon it
        and close whatever connection it made.
    @param clock: an C{IReactorTime} for the overall C{timeout}.
    @param cache: a L{crust.bootstrap.cache.BootstrapCache} told about
        successes (C{put}) and failures of cached peers (C{record_failure}).
    @param release: called with C{(candidate, peer_id)} for a success that
        does not count (not the expected peer, or a blacklisted one): close
        that connection.
    @return: a Deferred firing with a L{BootstrapResult}, or failing with
        L{BootstrapFailed}; cancelling it stops the bootstrap.
    """
    clock = maybe_global_reactor(clock)
    runner = _Runner(try_candidate, clock, timeout, cache, release, concurrency=concurrency,
                     blacklisted_peer_ids=blacklisted_peer_ids,
                     stop_on_reachability_denial=stop_on_reachability_denial)
    runner.machine.start(candidates)
    return runner.result
