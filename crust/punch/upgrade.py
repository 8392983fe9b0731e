"""
L{Upgrader}: while a peer's connection is relayed, keep trying to punch a
direct one in the background, with backoff.

A punch that succeeds makes a direct connection to the same peer; the peer
table then moves the relayed connection onto it (L{crust.peering.handover}),
without losing a message.  Tries come C{Config.upgrade_interval} (L{FIRST})
seconds after the connection became relayed, then after twice as long each
time (counted from the end of the previous try), up to
C{Config.upgrade_interval_max} (L{LONGEST}); they stop when the connection is
not relayed any more or the peer is gone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust.identity import PeerId
from crust.punch.plan import PunchPlan
from crust.session.connection import is_relayed
from crust.session.purpose import Purpose

if TYPE_CHECKING:
    from crust.peering.table import PeerTable
    from crust.punch.manager import PunchManager
    from crust.session.connection import PeerConnection

FIRST = 5.0
LONGEST = 300.0
WHILE_PUNCHING = 1.0  # seconds between looks while a punch to the peer (the connect's own) still runs


class _Upgrade(Purpose):
    """The purpose of a connection punched to replace a relayed one."""


class Upgrader:
    """
    The background re-punch of a node's relayed connections (see the module docstring).

    @param intervals: returns the first wait and the longest
        (C{Config.upgrade_interval}, C{Config.upgrade_interval_max}).
    """

    log = Logger()

    def __init__(self, manager: "PunchManager", table: "PeerTable", clock: Any,
                 intervals: Callable[[], tuple[float, float]] = lambda: (FIRST, LONGEST)) -> None:
        self._manager = manager
        self._table = table
        self._clock = clock
        self._intervals = intervals
        self._timers: dict[PeerId, Any] = {}
        self._waits: dict[PeerId, float] = {}
        self._running: dict[PeerId, Deferred] = {}
        self.tries = 0
        table.listen(self)

    # -- PeerListener -------------------------------------------------------------------

    def peer_promoted(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        # (the connection's path may be told after the listeners: look when the first try is due)
        if peer_id not in self._timers and peer_id not in self._running:
            self._waits[peer_id] = self._intervals()[0]
            self._schedule(peer_id)

    def connection_ended(self, conn: "PeerConnection", reason: str) -> None:
        peer_id = conn.peer_id
        if peer_id is not None and peer_id not in self._table.active:
            self._forget(peer_id)

    # -- trying -------------------------------------------------------------------------

    def _schedule(self, peer_id: PeerId) -> None:
        wait = self._waits.get(peer_id, self._intervals()[0])
        self._timers[peer_id] = self._clock.callLater(wait, self._try, peer_id)

    def _try(self, peer_id: PeerId) -> None:
        self._timers.pop(peer_id, None)
        conn = self._table.usable(peer_id)
        if not is_relayed(conn) or not conn.initiator:  # type: ignore[union-attr]
            self._waits.pop(peer_id, None)
            return  # direct (or gone): nothing to do; or the peer's to do (it opened the relayed connection)
        assert conn is not None
        if self._manager.punching(peer_id):
            # a punch of the connect attempt (or the peer's) still runs: let it end, and try soon after if it
            # failed (its window is long: birthday probing)
            wait = min(self._waits.get(peer_id, self._intervals()[0]), WHILE_PUNCHING)
            self._timers[peer_id] = self._clock.callLater(wait, self._try, peer_id)
            return
        self.tries += 1
        via = _peer_via(conn)
        self.log.info("{peer} is relayed: trying to punch a direct path", peer=str(peer_id))
        if via is not None and self._table.usable(via) is not None:
            d = self._manager.exchange(peer_id, via)
        else:
            d = self._manager.find(peer_id).addCallback(lambda rendezvous: self._manager.exchange(peer_id, rendezvous))
        d.addCallback(self._punch)
        d.addErrback(self._failed, peer_id)
        d.addBoth(self._done, peer_id)
        self._running[peer_id] = d

    def _punch(self, plan: PunchPlan) -> Deferred:
        purpose = _Upgrade()
        tries = [self._manager.punch_udp(plan, purpose), self._manager.punch_tcp(plan, purpose)]
        return DeferredList(tries, consumeErrors=True)

    def _failed(self, failure: Failure, peer_id: PeerId) -> None:
        self.log.info("no direct path to {peer} yet: {reason}", peer=str(peer_id), reason=str(failure.value))

    def _done(self, _: Any, peer_id: PeerId) -> None:
        self._running.pop(peer_id, None)
        if is_relayed(self._table.usable(peer_id)):
            first, longest = self._intervals()
            self._waits[peer_id] = min(longest, self._waits.get(peer_id, first) * 2)
            self._schedule(peer_id)
        else:
            self._waits.pop(peer_id, None)

    def _forget(self, peer_id: PeerId) -> None:
        timer = self._timers.pop(peer_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        running = self._running.pop(peer_id, None)
        if running is not None:
            running.cancel()
        self._waits.pop(peer_id, None)

    def stop(self) -> None:
        for peer_id in list(self._timers) + list(self._running):
            self._forget(peer_id)


def _peer_via(conn: "PeerConnection") -> Optional[PeerId]:
    """The relay peer a relayed connection goes through (not a TURN server)."""
    via = conn.path.via if conn.path is not None else None
    if via is None or via.startswith("turn:"):
        return None
    try:
        return PeerId.from_text(via)
    except ValueError:
        return None
