"""
Moving a peer's connection onto a better one, make before break
(doc/protocol.md §5b).

When a direct connection to a peer completes while its active connection is
relayed, and both sides can (HELLO C{handover}), the chooser claims the new
one with a CHOOSE that says so.  From then on each side:

  1. sends new messages on the new connection;
  2. sends MOVE on every lane of the old one, behind everything queued there
     (its last frame on it);
  3. holds what arrives on the new connection, undelivered, and reads no
     more there, until the peer's MOVE arrived on every lane of the old
     one: everything the peer sent before the switch is delivered first;
  4. once both its MOVEs went out and the peer's came in, keeps the old
     connection as a standby if it was relayed (the connection moves back
     to it if the new one dies), else closes it ("moved").

The application sees one connection throughout: no C{lost_peer}, no
C{connect_success}, one C{path_changed}.  No message is lost, repeated or
reordered across the switch, since every lane of the old connection is
drained in order before the new one is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger

from crust.identity import PeerId
from crust.session.connection import is_relayed
from crust.wire import CloseReason

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection


def rank(conn: "PeerConnection") -> int:
    """How good a path is: relayed 0, anything direct 1."""
    return 0 if is_relayed(conn) else 1


def describe(conn: Optional["PeerConnection"]) -> Optional[dict[str, Any]]:
    """A connection's path for the C{path_changed} event."""
    if conn is None:
        return None
    path: dict[str, Any] = conn.path.to_dict() if conn.path is not None else {"kind": "direct"}
    path["transport"] = conn.transport_name
    path["address"] = str(conn.peer_address) if conn.peer_address is not None else None
    return path


@dataclass
class Move:
    """One handover in progress."""

    old: "PeerConnection"
    new: "PeerConnection"
    deliver: Callable[[bytes], object]
    moves_received: set[str] = field(default_factory=set)
    sent: bool = False

    @property
    def received(self) -> bool:
        return len(self.moves_received) >= self.old.lanes


class Handovers:
    """
    The handovers and standby connections of one peer table.

    @param emit: the observers' event fan-out.
    """

    log = Logger()

    def __init__(self, emit: Callable[..., None]) -> None:
        self._emit = emit
        self.moving: dict[PeerId, Move] = {}
        self.standby: dict[PeerId, "PeerConnection"] = {}
        # MOVEs that came before we learnt of the handover (the peer's CHOOSE on the new connection
        # and its MOVE on the old one race): the connection they came on, and their lanes
        self._early: dict[PeerId, tuple["PeerConnection", set[str]]] = {}

    def may_replace(self, old: "PeerConnection", new: "PeerConnection", peer_can: bool) -> bool:
        """Whether C{new} may replace the active C{old} (both sides able, and the path better)."""
        if not peer_can or old.closing or not old.connected:
            return False
        if old.peer_id in self.moving:
            return False
        return rank(new) > rank(old)

    def begin(self, peer_id: PeerId, old: "PeerConnection", new: "PeerConnection",
              deliver: Callable[[bytes], object]) -> None:
        """C{new} was chosen over the active C{old}: switch (the table made C{new} active)."""
        move = Move(old, new, deliver)
        early = self._early.pop(peer_id, None)
        if early is not None and early[0] is old:
            move.moves_received |= early[1]
        self.moving[peer_id] = move
        self.log.info("moving {peer} from {old} to {new}", peer=str(peer_id), old=repr(old), new=repr(new))
        new.hold()
        if move.received:  # the peer's MOVEs all came early: nothing more will come on the old one
            new.release(deliver)
        old.send_move()  # reports moves_sent when it went out (at once when nothing is queued)

    def moved(self, conn: "PeerConnection", lane: str) -> None:
        """The peer's MOVE arrived on one lane of C{conn}."""
        peer_id = conn.peer_id
        move = self.moving.get(peer_id) if peer_id is not None else None
        if move is None:
            self.early(conn, lane)
            return
        if move.old is not conn:
            return  # a MOVE on a connection we are not leaving: nothing follows it there anyway
        move.moves_received.add(lane)
        if move.received:
            move.new.release(move.deliver)
            self._finish_if_done(peer_id, move)  # type: ignore[arg-type]

    def early(self, conn: "PeerConnection", lane: str) -> None:
        """A MOVE on an active connection before any handover: the peer's CHOOSE is on its way."""
        peer_id = conn.peer_id
        if peer_id is None:
            return
        entry = self._early.get(peer_id)
        if entry is None or entry[0] is not conn:
            entry = self._early[peer_id] = (conn, set())
        entry[1].add(lane)

    def moves_sent(self, conn: "PeerConnection") -> None:
        peer_id = conn.peer_id
        move = self.moving.get(peer_id) if peer_id is not None else None
        if move is not None and move.old is conn:
            move.sent = True
            self._finish_if_done(peer_id, move)  # type: ignore[arg-type]

    def _finish_if_done(self, peer_id: PeerId, move: Move) -> None:
        if not (move.sent and move.received):
            return
        del self.moving[peer_id]
        old, new = move.old, move.new
        if rank(old) == 0 and old.connected and not old.closing:
            previous = self.standby.pop(peer_id, None)
            if previous is not None and previous is not old:
                previous.close(CloseReason.MOVED, "replaced by another standby connection")
            self.standby[peer_id] = old  # the relayed path stays, idle, in case the direct one dies
        else:
            old.close(CloseReason.MOVED, "the connection moved to another path")
        self.log.info("{peer} moved to {new}", peer=str(peer_id), new=repr(new))
        self._emit("path_changed", peer_id, describe(old), describe(new))

    def lost(self, peer_id: PeerId, conn: "PeerConnection") -> Optional[str]:
        """
        C{conn} ended; returns what the table should do: C{"quiet"} (not the
        active connection: say nothing), C{"fallback"} (the table should make
        the standby active), or None (a normal loss).
        """
        early = self._early.get(peer_id)
        if early is not None and early[0] is conn:
            del self._early[peer_id]
        move = self.moving.get(peer_id)
        if move is not None and conn is move.old:
            # the old path died before the peer's MOVE: what it still carried is lost; go on
            del self.moving[peer_id]
            move.new.release(move.deliver)
            self._emit("path_changed", peer_id, describe(conn), describe(move.new))
            return "quiet"
        if move is not None and conn is move.new:
            del self.moving[peer_id]  # the new path died mid-way: the peer stopped using the old one
            move.old.close(CloseReason.MOVED, "the connection it moved to was lost")
            return None
        if self.standby.get(peer_id) is conn:
            del self.standby[peer_id]
            return "quiet"
        standby = self.standby.get(peer_id)
        if standby is not None and standby.connected and not standby.closing:
            return "fallback"
        return None

    def take_standby(self, peer_id: PeerId) -> Optional["PeerConnection"]:
        return self.standby.pop(peer_id, None)

    def close_standby(self, peer_id: PeerId, reason: CloseReason, detail: str) -> None:
        standby = self.standby.pop(peer_id, None)
        if standby is not None:
            standby.close(reason, detail)
