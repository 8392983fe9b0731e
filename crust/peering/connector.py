"""
L{Connector}: the connect attempts of one node, one per peer at a time.

It plans each attempt with the dialer's strategies, shares a running attempt
with repeated calls, and listens to the peer table: any connection to the
peer that becomes active (ours or the peer's own to us) ends the attempt in
success, and an incoming candidate that ends may leave an attempt with
nothing left to wait for.  An attempt that a relayed connection ended, with
tries still running that could make a direct one, is kept until they end,
a direct connection is active, or the peer is gone (then they stop).

It also remembers where the peers it was connected to can be reached (the
connection info we were given for them, else the listeners their HELLO
claimed): C{connect(peer_id)} with no addresses dials those beside the
other ways (through a common peer), so a peer we were disconnected from is
found again where it was.  At most L{REMEMBERED_PEERS} peers, the least
recently connected forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from crust.config import Config
from crust.peering.attempt import ConnectAttempt
from crust.peering.handover import rank
from crust.session.connection import PathInfo
from crust.connection_info import PubConnectionInfo
from crust.identity import PeerId

#: how many peers' addresses the connector remembers for C{connect(peer_id)}
REMEMBERED_PEERS = 256

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection
    from crust.peering.dialer import Dialer
    from crust.peering.table import PeerTable


class Connector:
    """
    @param emit: the observers' event fan-out (C{connect_failure} is told there).
    """

    log = Logger()

    def __init__(self, dialer: "Dialer", table: "PeerTable", clock: Any, config: Callable[[], Config],
                 emit: Callable[..., None]) -> None:
        self._dialer = dialer
        self._table = table
        self._clock = clock
        self._config = config
        self._emit = emit
        self.attempts: dict[PeerId, ConnectAttempt] = {}
        self._watchers: list[Callable[[ConnectAttempt, float], object]] = []
        self._running_on: dict[PeerId, ConnectAttempt] = {}  # done, relayed, with tries running on
        self.remembered: OrderedDict[PeerId, PubConnectionInfo] = OrderedDict()  # most recent last
        self._given: set[PeerId] = set()  # whose remembered info a user gave (kept over what a HELLO says)
        table.listen(self)

    def watch(self, watcher: Callable[[ConnectAttempt, float], object]) -> None:
        """Call C{watcher(attempt, seconds)} as each attempt ends (succeeded or failed), with how long it took."""
        self._watchers.append(watcher)

    def connect(self, info: PubConnectionInfo) -> Deferred:
        """Fires with the peer's id once a connection to it is active; fails with L{crust.errors.ConnectFailed}."""
        peer_id = info.peer_id
        attempt = self.attempts.get(peer_id)
        if attempt is not None:
            return attempt.wait()
        if info.addresses:
            self._remember(info, given=True)
        else:
            info = self.remembered.get(peer_id, info)  # where we last knew it to be, beside the rendezvous
        attempt = ConnectAttempt(peer_id, self._dialer.plan(info), self._clock, self._config().connect_timeout,
                                 self._table.has_candidates, self._attempt_done)
        self.attempts[peer_id] = attempt
        d = attempt.wait()
        attempt.start()
        return d

    def stop(self, summary: str) -> None:
        """Fail every attempt (the node is stopping)."""
        for attempt in list(self.attempts.values()):
            attempt.fail(summary)
        for peer_id in list(self._running_on):
            self._running_on.pop(peer_id).abandon()

    def _attempt_done(self, attempt: ConnectAttempt) -> None:
        if self.attempts.get(attempt.peer_id) is attempt:
            del self.attempts[attempt.peer_id]
        for watcher in self._watchers:
            watcher(attempt, self._clock.seconds() - attempt.started_at)
        if attempt.running_on:
            previous = self._running_on.pop(attempt.peer_id, None)
            if previous is not None:
                previous.abandon()
            self._running_on[attempt.peer_id] = attempt
        if attempt.error is not None:
            self.log.warn("connect to {peer} failed: {reason}", peer=str(attempt.peer_id), reason=str(attempt.error))
            self._emit("connect_failure", attempt.peer_id, attempt.error)

    def _remember(self, info: PubConnectionInfo, given: bool) -> None:
        """
        Remember C{info}; a HELLO's claim does not replace info a user gave
        that lists every listener it claims (that info says more: reflexive
        addresses, the NAT), but does replace it when the peer moved.
        """
        peer_id = info.peer_id
        known = self.remembered.get(peer_id)
        if given:
            self._given.add(peer_id)
            self.remembered[peer_id] = info
        elif known is None or peer_id not in self._given or not set(info.addresses) <= set(known.addresses):
            self._given.discard(peer_id)
            self.remembered[peer_id] = info
        self.remembered.move_to_end(peer_id)
        while len(self.remembered) > REMEMBERED_PEERS:
            forgotten, _ = self.remembered.popitem(last=False)
            self._given.discard(forgotten)

    def _claimed(self, conn: "PeerConnection", peer_id: PeerId) -> Optional[PubConnectionInfo]:
        """What the peer's HELLO says of where it listens (loopback only if it came over loopback)."""
        hello = conn.handshake.peer_hello
        if hello is None or not hello.listeners:
            return None
        local = conn.peer_address is not None and conn.peer_address.is_loopback
        addresses = tuple(a for a in hello.listeners if local or not a.is_loopback)
        return PubConnectionInfo(peer_id, addresses) if addresses else None

    # -- PeerListener ------------------------------------------------------------------

    def peer_promoted(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        claimed = self._claimed(conn, peer_id)
        if claimed is not None:
            self._remember(claimed, given=False)
        if rank(conn) > 0 and peer_id in self._running_on:
            self._running_on.pop(peer_id).abandon()  # a direct path won: the other tries are not needed
        attempt = self.attempts.get(peer_id)
        if attempt is not None:
            elapsed = self._clock.seconds() - attempt.started_at
            if conn.purpose is attempt:
                attempt.promoted(conn, peer_id)  # its path is known before anyone hears of the success
            if conn.path is None:
                conn.path = PathInfo("direct" if conn.initiator else "incoming", "", elapsed)
            elif conn.path.elapsed is None:
                conn.path = replace(conn.path, elapsed=elapsed)  # how another listener saw it made
            attempt.succeeded(conn)
        elif conn.path is None and not conn.initiator:
            conn.path = PathInfo("incoming", "")

    def connection_ended(self, conn: "PeerConnection", reason: str) -> None:
        peer_id = conn.peer_id
        if peer_id is None:
            return
        if peer_id not in self._table.active and peer_id in self._running_on:
            self._running_on.pop(peer_id).abandon()  # the peer is gone: no direct path to move to
        attempt = self.attempts.get(peer_id)
        if attempt is not None and not self._table.has_candidates(peer_id):
            attempt.check_done()
