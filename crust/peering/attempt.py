"""
Racing the ways to reach a peer: L{ConnectAttempt}.

An attempt runs the legs its dialer planned (L{Leg}: one per registered dial
strategy that has something to try: direct TCP, direct QUIC, and so on),
each after its own start delay, counted from the start of the earliest leg.
A leg that waits starts at once when everything started before it has failed
(Happy Eyeballs, RFC 8305: where TCP and QUIC both work, TCP, much the faster
in Python, usually wins; where TCP is blocked, QUIC costs only its delay).
Each try that connects runs the secure handshake.  The attempt succeeds as
soon as the peer table has an active connection to the peer (from any try,
ours or theirs) and fails once every try has failed, or at the deadline, with
every reason.

When the connection that ends it is relayed, the tries that could still
make a direct one (a punch that takes longer than the relay's start delay)
are not abandoned: they run to their own end, and a direct connection they
make replaces the relayed one (L{crust.peering.handover}).

The attempt is the L{crust.session.purpose.Purpose} of the connections its tries
make: the peer table reports their refusals and losses to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Optional, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust.errors import ConnectFailed
from crust.identity import PeerId
from crust.peering.handover import rank
from crust.session.connection import PathInfo
from crust.session.purpose import Purpose

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection

#: C{dial(target, attempt)}: one try; fires with the L{PeerConnection} it made (handshake still running).
Dial = Callable[[Any, "ConnectAttempt"], Deferred]


@dataclass(frozen=True)
class Leg:
    """
    One strategy's share of an attempt: what it tries (C{targets}, each
    hashable and readable: an address, a punch plan...), after how long, and
    how (C{dial}).
    """

    name: str
    delay: float
    targets: tuple[Hashable, ...]
    dial: Dial
    path_kind: str = "direct"  # what a connection this leg makes is (L{crust.session.connection.PathInfo})
    kinds: Mapping[Hashable, str] = field(default_factory=dict)  # targets whose connections are another kind


class ConnectAttempt(Purpose):
    """One L{crust.service.Service.connect} in progress (shared by repeated calls)."""

    log = Logger()

    def __init__(
        self,
        peer_id: PeerId,
        legs: Sequence[Leg],
        clock: Any,
        timeout: float,
        has_candidates: Callable[[PeerId], bool],
        on_done: Callable[["ConnectAttempt"], None],
    ) -> None:
        self.peer_id = peer_id
        self.legs = tuple(leg for leg in legs if leg.targets)
        self.targets = tuple(t for leg in self.legs for t in leg.targets)
        self._leg_of: dict[Hashable, Leg] = {t: leg for leg in self.legs for t in leg.targets}
        self._clock = clock
        self._timeout = timeout
        self._has_candidates = has_candidates
        self._on_done = on_done
        self._waiters: list[Deferred] = []
        self._tries: dict[Hashable, Deferred] = {}
        self._connections: dict["PeerConnection", Hashable] = {}
        self.reasons: dict[Hashable, str] = {}
        self.done = False
        self.error: Optional[ConnectFailed] = None
        self._timer: Any = None
        self._held: list[tuple[Leg, Any]] = []  # legs waiting for their turn, with their timers
        self._starting = 0
        self._promoted: Optional["PeerConnection"] = None
        self._promoted_at = 0.0
        self._running_on: set[Hashable] = set()  # tries left running after a relayed success
        self.started_at = clock.seconds()

    def wait(self) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def start(self) -> None:
        self._timer = self._clock.callLater(self._timeout, self._timed_out)
        if not self.legs:
            self._check_done()
            return
        first = min(leg.delay for leg in self.legs)
        legs = sorted(self.legs, key=lambda leg: leg.delay)
        for leg in legs:  # hold the later legs first: an early leg that ends at once must find them
            wait = leg.delay - first
            if wait > 0:
                self._held.append((leg, self._clock.callLater(wait, self._release, leg)))
        for leg in legs:
            if leg.delay - first <= 0:
                self._start_leg(leg)

    @property
    def started(self) -> tuple[str, ...]:
        """The names of the legs started so far."""
        held = {leg.name for leg, _ in self._held}
        return tuple(leg.name for leg in self.legs if leg.name not in held)

    def extend(self, legs: Sequence[Leg]) -> None:
        """
        More legs, learned while the attempt runs (the peer's candidates from
        a rendezvous): each starts after its own delay from now; targets
        already tried are not tried again.
        """
        if self.done:
            return
        for leg in legs:
            targets = tuple(t for t in leg.targets if t not in self._leg_of)
            if not targets:
                continue
            leg = Leg(leg.name, leg.delay, targets, leg.dial, leg.path_kind, leg.kinds)
            self.legs += (leg,)
            self.targets += targets
            for target in targets:
                self._leg_of[target] = leg
            if leg.delay <= 0:
                self._start_leg(leg)
            else:
                self._held.append((leg, self._clock.callLater(leg.delay, self._release, leg)))
                self._held.sort(key=lambda entry: entry[1].getTime())

    def _start_leg(self, leg: Leg) -> None:
        self._starting += 1  # a try failing at once must not end the attempt before the others start
        try:
            for target in leg.targets:
                if self.done:
                    return
                d = leg.dial(target, self)
                self._tries[target] = d
                d.addCallbacks(self._dialled, self._dial_failed, callbackArgs=(target,), errbackArgs=(target,))
        finally:
            self._starting -= 1
        self._check_done()

    def _release(self, leg: Leg) -> None:
        """Start a held leg (once): its delay is over, or everything before it failed."""
        for entry in list(self._held):
            if entry[0] is leg:
                self._held.remove(entry)
                if entry[1].active():
                    entry[1].cancel()
                if not self.done:
                    self._start_leg(leg)
                return

    # -- reports from tries and connections ------------------------------------

    def _dialled(self, conn: Optional["PeerConnection"], target: Hashable) -> None:
        self._tries.pop(target, None)
        if conn is None:  # a try that made no connection of its own (it extended the attempt)
            self._check_done()
            return
        if conn is not None and conn is self._promoted and conn.path is None:
            self._set_path(conn, target)  # (QUIC: the connection was promoted before its dial fired)
        if self.done:
            if conn.connected and not conn.is_active and target not in self._running_on:
                conn.close_duplicate()
            return
        if conn.connected:
            self._connections[conn] = target
        self._check_done()

    def _dial_failed(self, failure: Failure, target: Hashable) -> None:
        self._tries.pop(target, None)
        if not failure.check(CancelledError):
            self.reasons[target] = f"{target}: {_failure_text(failure)}"
        self._check_done()

    def promoted(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        if self._promoted is conn:
            return  # told already (the connector tells us before the attempt's waiters hear of success)
        self._promoted = conn
        self._promoted_at = self._clock.seconds()
        if conn.path is not None:
            return  # someone who knows better said how it was made (a punch that opened the way)
        target = self._connections.get(conn)
        if target is None:
            target = self._guess_target(conn)
        if target is not None:
            self._set_path(conn, target)

    def _guess_target(self, conn: "PeerConnection") -> Optional[Hashable]:
        """Which of our tries made C{conn} (QUIC promotes a connection before its dial reports it)."""
        if conn.peer_address in self._leg_of:
            return conn.peer_address
        wanted = f"punched-{conn.transport_name}"
        for leg in self.legs:
            if leg.path_kind == wanted and leg.targets:
                return leg.targets[0]
        return None

    def _set_path(self, conn: "PeerConnection", target: Hashable) -> None:
        leg = self._leg_of.get(target)
        if leg is not None and conn.path is None:
            conn.path = PathInfo(leg.kinds.get(target, leg.path_kind), leg.name, self._promoted_at - self.started_at)

    def lost(self, conn: "PeerConnection", reason: str) -> None:
        if self._promoted is conn:
            self._promoted = None  # (the connection holds the attempt as its purpose: no cycle to outlive it)
        target = self._connections.pop(conn, None)
        if target is None:
            return
        if not self.done:
            self.reasons.setdefault(target, f"{target}: {reason}")
            self._check_done()

    def refused(self, conn: "PeerConnection", reason: str, detail: str) -> None:
        """A handshake check failed on one of our connections (its loss follows)."""
        target = self._connections.get(conn)
        if target is not None:
            text = f"{reason}: {detail}" if detail else reason
            self.reasons.setdefault(target, f"{target}: {text}")

    def owns(self, conn: "PeerConnection") -> bool:
        return conn in self._connections

    # -- outcome -----------------------------------------------------------------

    def succeeded(self, conn: Optional["PeerConnection"] = None) -> None:
        """The peer has an active connection (C{conn}, when known)."""
        if self.done:
            return
        self._finish(relayed=conn is not None and rank(conn) == 0)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.peer_id)

    def fail(self, summary: str) -> None:
        if self.done:
            return
        reasons = [self.reasons[t] for t in self.targets if t in self.reasons]
        reasons += [r for t, r in self.reasons.items() if t not in self.targets]
        error = self.error = ConnectFailed(self.peer_id, reasons, summary)
        self._finish()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(Failure(error))

    def _finish(self, relayed: bool = False) -> None:
        """
        Stop the clock and abandon the tries that did not win (with a
        C{relayed} winner, those that could make a direct connection run on).
        """
        self.done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for _, timer in self._held:
            if timer.active():
                timer.cancel()
        self._held = []
        if relayed:
            self._running_on = {t for t in self._tries if self._kind_of(t) != "relayed"}
        self._on_done(self)
        for target, d in list(self._tries.items()):
            if target not in self._running_on:
                d.cancel()
        for conn, target in list(self._connections.items()):
            if not conn.is_active and not (relayed and rank(conn) > 0 and self._kind_of(target) != "relayed"):
                conn.close_duplicate()

    @property
    def running_on(self) -> bool:
        """Whether tries still run after a relayed success."""
        return bool(self._running_on & self._tries.keys())

    def abandon(self) -> None:
        """Stop the tries left running after a relayed success (the peer is gone, or a direct path won)."""
        running, self._running_on = self._running_on, set()
        for target in running:
            d = self._tries.get(target)
            if d is not None:
                d.cancel()

    def _kind_of(self, target: Hashable) -> str:
        """The path kind a connection C{target}'s try makes would have."""
        leg = self._leg_of.get(target)
        return "direct" if leg is None else leg.kinds.get(target, leg.path_kind)

    def check_done(self) -> None:
        """Fail if nothing is left to wait for (an incoming candidate of the peer may just have ended)."""
        self._check_done()

    def _check_done(self) -> None:
        if self.done or self._starting or self._tries or self._connections:
            return
        if self._held:
            # everything started before failed: the next legs need not wait
            first = min(timer.getTime() for _, timer in self._held)
            for leg in [leg for leg, timer in self._held if timer.getTime() <= first + 1e-9]:
                self._release(leg)
            return
        if self._has_candidates(self.peer_id):
            return  # an incoming candidate may still become the connection
        if not self.legs:
            self.fail(f"could not connect to {self.peer_id}: its connection info has no address we can use")
        else:
            self.fail(f"could not connect to {self.peer_id}")

    def _timed_out(self) -> None:
        self._timer = None
        self.fail(f"could not connect to {self.peer_id} within {self._timeout:g} s")


def _failure_text(failure: Failure) -> str:
    return (str(failure.value) or type(failure.value).__name__).strip()
