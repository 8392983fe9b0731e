"""
The peer table: which connection is each peer's one active connection.

L{PeerTable} is the L{crust.connection.ConnectionOwner} of every connection of
a service.  It enforces one active connection per peer, tracks candidates
still waiting for the chooser, routes messages to observers, and reports
connections' outcomes to the connect attempts and probes that wait on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from crust.identity import PeerId
from crust.send_queue import Dropped
from crust.wire import CloseReason, Hello

if TYPE_CHECKING:
    from crust.connection import PeerConnection
    from crust.service import Service


class PeerTable:
    log = Logger()

    def __init__(self, service: "Service") -> None:
        self._service = service
        self.active: dict[PeerId, "PeerConnection"] = {}
        self.candidates: dict[PeerId, set["PeerConnection"]] = {}
        self.connections: set["PeerConnection"] = set()
        self.hellos: dict[PeerId, Hello] = {}
        self._writable_waiters: dict[PeerId, list[Deferred]] = {}
        self._lost_waiters: list[Deferred] = []

    # -- queries -------------------------------------------------------------

    def has_candidates(self, peer_id: PeerId) -> bool:
        return bool(self.candidates.get(peer_id))

    def wait_writable(self, peer_id: PeerId) -> Deferred:
        d: Deferred = Deferred()
        conn = self.active.get(peer_id)
        if conn is None or conn.queued_bytes <= conn.max_queued_bytes // 2:
            d.callback(peer_id)
        else:
            self._writable_waiters.setdefault(peer_id, []).append(d)
        return d

    def wait_all_closed(self) -> Deferred:
        d: Deferred = Deferred()
        if not self.connections:
            d.callback(None)
        else:
            self._lost_waiters.append(d)
        return d

    # -- ConnectionOwner --------------------------------------------------------

    def connection_made(self, conn: "PeerConnection") -> None:
        self.connections.add(conn)

    def hello_for(self, conn: "PeerConnection") -> Hello:
        return self._service._hello_for(conn)

    def claim(self, conn: "PeerConnection", peer_id: PeerId) -> bool:
        if not self._service.running_for_peers:
            return False
        if peer_id in self.active:
            return False
        return self._service._admit(conn, peer_id)

    def candidate(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        if not self._service._admit(conn, peer_id):
            conn.close(CloseReason.NOT_WHITELISTED, "not allowed by this node's whitelist")
            return
        self.candidates.setdefault(peer_id, set()).add(conn)
        self.hellos.setdefault(peer_id, hello)

    def promote(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        self._discard_candidate(conn, peer_id)
        old = self.active.get(peer_id)
        self.active[peer_id] = conn
        if conn.handshake.peer_hello is not None:
            self.hellos[peer_id] = conn.handshake.peer_hello
        conn.deliver = self._service._deliverer(peer_id)
        if old is not None and old is not conn:
            # the chooser chose anew: it no longer has the old connection
            old.superseded = True
            old.close(CloseReason.DUPLICATE, "superseded by a newer connection")
            self._service._emit("lost_peer", peer_id, "superseded by a newer connection")
        # other candidates for this peer will never be chosen now
        for other in list(self.candidates.get(peer_id, ())):
            other.close_duplicate()
        self.log.info(
            "connected to {peer} via {transport} {address}",
            peer=peer_id, transport=conn.transport_name, address=conn.peer_address,
        )
        self._service._connection_promoted(conn, peer_id)

    def late_hello(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        if self.active.get(peer_id) is conn:
            self.hellos[peer_id] = hello

    def probed(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        self._service._probe_finished(conn, peer_id, hello)

    def refused(self, conn: "PeerConnection", reason: str, detail: str) -> None:
        text = f"{reason}: {detail}" if detail else reason
        self.log.info("handshake with {address} refused: {reason}", address=str(conn.peer_address), reason=text)
        self._service._connection_refused(conn, reason, detail)

    def admit(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        self._service._admit_bootstrap(conn, peer_id, hello)

    def lost(self, conn: "PeerConnection", reason: str) -> None:
        self.connections.discard(conn)
        peer_id = conn.peer_id
        if peer_id is not None:
            self._discard_candidate(conn, peer_id)
            if self.active.get(peer_id) is conn:
                del self.active[peer_id]
                for d in self._writable_waiters.pop(peer_id, []):
                    d.callback(peer_id)
                if not getattr(conn, "superseded", False):
                    self.log.info("lost peer {peer}: {reason}", peer=peer_id, reason=reason)
                    self._service._emit("lost_peer", peer_id, reason)
        self._service._connection_lost(conn, reason)
        if not self.connections:
            waiters, self._lost_waiters = self._lost_waiters, []
            for d in waiters:
                d.callback(None)

    def dropped(self, conn: "PeerConnection", drops: list[Dropped], reason: str) -> None:
        peer_id = conn.peer_id
        for drop in drops:
            self.log.warn(
                "dropped {count} message(s), {size} bytes, of priority {priority} to {peer}: {reason}",
                count=drop.count, size=drop.size, priority=drop.priority, peer=str(peer_id), reason=reason,
            )
            self._service._emit("message_dropped", peer_id, drop.priority, drop.count, drop.size, reason)

    def writable(self, conn: "PeerConnection") -> None:
        peer_id = conn.peer_id
        if peer_id is not None and self.active.get(peer_id) is conn:
            for d in self._writable_waiters.pop(peer_id, []):
                d.callback(peer_id)

    def control_received(self, conn: "PeerConnection", ftype: int, payload: bytes) -> bool:
        return self._service._control_received(conn, ftype, payload)

    # -- helpers ------------------------------------------------------------------

    def _discard_candidate(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        waiting = self.candidates.get(peer_id)
        if waiting is not None:
            waiting.discard(conn)
            if not waiting:
                del self.candidates[peer_id]
