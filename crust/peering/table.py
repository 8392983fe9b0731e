"""
The peer table: which connection is each peer's one active connection.

L{PeerTable} is the L{crust.session.connection.ConnectionOwner} of every connection of
a node.  It enforces one active connection per peer, tracks candidates still
waiting for the chooser, routes messages to observers, and reports each
connection's outcomes to the connection's purpose (L{crust.session.purpose}) and to
the listeners registered with it (L{PeerListener}).  What it asks of the
node is narrow: an admission policy, the HELLO to send, the observers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from crust._util.ratelimit import RateLimiter
from crust._util.reactor import maybe_global_reactor
from crust.identity import PeerId
from crust.session.purpose import ACCEPTED
from crust.session.send_queue import Dropped
from crust.peering.handover import Handovers, rank
from crust.peering.handover import describe as describe_path
from crust.session.signalling import ControlFrames
from crust.wire import CloseReason, Hello, RejectReason

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection

MAX_PENDING_PER_HOST = 16  # accepted connections in their handshake, from one host
MAX_PENDING = 512  # from all hosts together
MAX_CUT = 1024  # peers remembered as disconnected by the user (their connections then in the making are refused)


class AdmissionPolicy(Protocol):
    def admit(self, conn: "PeerConnection", peer_id: PeerId) -> bool:
        """May C{conn} to C{peer_id} become (or wait to become) an active connection?"""


class PeerEvents(Protocol):
    def emit(self, event: str, *args: Any) -> None: ...
    def deliverer(self, peer_id: PeerId) -> Callable[[bytes], object]: ...


class PeerListener(Protocol):
    """Told of every connection's outcome, whatever its purpose (register with L{PeerTable.listen})."""

    def peer_promoted(self, conn: "PeerConnection", peer_id: PeerId) -> None: ...
    def connection_ended(self, conn: "PeerConnection", reason: str) -> None: ...


#: C{admitter(conn, peer_id, hello)}: decide on a bootstrap request, answering with C{conn.admission_result}.
BootstrapAdmitter = Callable[["PeerConnection", PeerId, Hello], None]


class PeerTable:
    """
    @param admission: the whitelist policy (L{crust.peering.admission.Admission}).
    @param events: the observers' fan-out (L{crust.observer.Observers}).
    @param hello_for: builds the HELLO we send on a connection.
    @param clock: for the rate of log lines about peers' input; the global reactor by default.
    @ivar accepting: whether connections may become active (the node runs).
    @ivar control_frames: the control frame types subsystems claimed.
    """

    log = Logger()

    def __init__(self, admission: AdmissionPolicy, events: PeerEvents,
                 hello_for: Callable[["PeerConnection"], Hello], clock: Any = None) -> None:
        self._admission = admission
        self._events = events
        self._hello_for = hello_for
        self.accepting = False
        self.control_frames = ControlFrames()
        self.handovers = Handovers(events.emit)
        self._admitter: Optional[BootstrapAdmitter] = None
        self._listeners: list[PeerListener] = []
        self._path_classifiers: list[Callable[["PeerConnection"], None]] = []
        self.active: dict[PeerId, "PeerConnection"] = {}
        self.candidates: dict[PeerId, set["PeerConnection"]] = {}
        self.connections: set["PeerConnection"] = set()
        self.hellos: dict[PeerId, Hello] = {}
        self._superseded: set["PeerConnection"] = set()
        self._writable_waiters: dict[PeerId, list[Deferred]] = {}
        self._lost_waiters: list[Deferred] = []
        self._closed_waiters: dict["PeerConnection", list[Deferred]] = {}
        self._pending: dict["PeerConnection", str] = {}  # accepted connections in their handshake, and their host
        self._pending_per_host: dict[str, int] = {}
        # lines about what peers sent or failed to send: a few a minute for each kind, 10 a second at most
        self._input_log = RateLimiter(clock if clock is not None else maybe_global_reactor(None),
                                      per_key=(0.1, 3.0), total=(1.0, 10.0), max_keys=64)
        self.counters: dict[str, int] = {}  # early failures of connections, by kind (early_timeout...)
        self._serial: dict["PeerConnection", int] = {}  # each connection's number, in the order they were made
        self._next_serial = 0
        self._cut: dict[PeerId, int] = {}  # peer -> connections numbered below this were made before a disconnect

    # -- registration ------------------------------------------------------------

    def listen(self, listener: PeerListener) -> None:
        """Tell C{listener} of every promotion and every ended connection."""
        self._listeners.append(listener)

    def classify_paths(self, classify: Callable[["PeerConnection"], None]) -> None:
        """
        C{classify(conn)} may set the path of a connection whose path is not
        known yet, before it is ranked against another to the same peer (a
        subsystem that knows what a connection is: TURN, for connections
        through a TURN server); a relayed connection taken for a direct one
        would replace a direct one the peer ranks above it.
        """
        self._path_classifiers.append(classify)

    def _classify(self, conn: "PeerConnection") -> None:
        for classify in self._path_classifiers:
            if conn.path is not None:
                return
            classify(conn)

    def set_bootstrap_admitter(self, admitter: Optional[BootstrapAdmitter]) -> None:
        """Who decides on peers' bootstrap requests; without one, they are denied."""
        self._admitter = admitter

    # -- queries -------------------------------------------------------------

    def has_candidates(self, peer_id: PeerId) -> bool:
        return bool(self.candidates.get(peer_id))

    def usable(self, peer_id: PeerId) -> Optional["PeerConnection"]:
        """The active connection to C{peer_id}, unless there is none or it is closing."""
        conn = self.active.get(peer_id)
        return conn if conn is not None and not conn.closing else None

    def wait_writable(self, peer_id: PeerId) -> Deferred:
        d: Deferred = Deferred()
        conn = self.active.get(peer_id)
        if conn is None or conn.queued_bytes <= conn.max_queued_bytes // 2:
            d.callback(peer_id)
        else:
            self._writable_waiters.setdefault(peer_id, []).append(d)
        return d

    def when_closed(self, conn: "PeerConnection") -> Deferred:
        """Fires once C{conn} has ended (at once if it has)."""
        d: Deferred = Deferred()
        if conn not in self.connections:
            d.callback(None)
        else:
            self._closed_waiters.setdefault(conn, []).append(d)
        return d

    def wait_all_closed(self) -> Deferred:
        d: Deferred = Deferred()
        if not self.connections:
            d.callback(None)
        else:
            self._lost_waiters.append(d)
        return d

    def disconnect(self, peer_id: PeerId, reason: CloseReason = CloseReason.DISCONNECT,
                   detail: str = "closed by the peer's user", pending: bool = False) -> bool:
        """
        Close the active connection to C{peer_id}; True if there was one.
        With C{pending} (the user's disconnect), connections to the peer still
        in their handshake are closed too, or refused when they complete (an
        accepted one names its peer only then): a punch's or dial's
        connection made before the disconnect does not bring the peer back.
        """
        if pending:
            self._cut.pop(peer_id, None)
            self._cut[peer_id] = self._next_serial
            if len(self._cut) > MAX_CUT:
                del self._cut[next(iter(self._cut))]
            for other in list(self.candidates.get(peer_id, ())):
                other.close(reason, detail)
        conn = self.usable(peer_id)
        if conn is None:
            return False
        self.handovers.close_standby(peer_id, reason, detail)
        conn.close(reason, detail)
        return True

    # -- ConnectionOwner --------------------------------------------------------

    def connection_made(self, conn: "PeerConnection", accepted_from: Any = None) -> None:
        """A connection was built; C{accepted_from}: the address an accepted one came from."""
        self.connections.add(conn)
        self._serial[conn] = self._next_serial
        self._next_serial += 1
        host = getattr(accepted_from, "host", None)
        if host is not None:
            self._pending[conn] = host
            self._pending_per_host[host] = self._pending_per_host.get(host, 0) + 1
        conn.purpose.attached(conn)

    def inbound_refusal(self, addr: Any) -> Optional[str]:
        """
        Why a connection just accepted from C{addr} must be closed at once, or
        None: a host may hold at most L{MAX_PENDING_PER_HOST} connections whose
        handshake is not done, and all hosts together L{MAX_PENDING}, so a
        flood of handshakes neither exhausts descriptors nor starves our own
        outbound connections (which are not counted).
        """
        host = getattr(addr, "host", None)
        if len(self._pending) >= MAX_PENDING:
            return f"{len(self._pending)} handshakes from peers already pending (at most {MAX_PENDING})"
        if host is not None and self._pending_per_host.get(host, 0) >= MAX_PENDING_PER_HOST:
            return f"{MAX_PENDING_PER_HOST} handshakes from {host} already pending"
        return None

    def _settled(self, conn: "PeerConnection") -> None:
        """C{conn}'s handshake is over (it is active, was a probe, or ended): it is not pending any more."""
        host = self._pending.pop(conn, None)
        if host is not None:
            left = self._pending_per_host[host] - 1
            if left:
                self._pending_per_host[host] = left
            else:
                del self._pending_per_host[host]

    def role_of(self, peer_id: PeerId) -> Optional[str]:
        """The role the peer claimed in its last HELLO."""
        hello = self.hellos.get(peer_id)
        return hello.role if hello is not None else None

    def details(self, peer_id: PeerId) -> Optional[dict[str, Any]]:
        """What is known of the active connection to C{peer_id}, as JSON-ready values (None if none)."""
        conn = self.active.get(peer_id)
        if conn is None:
            return None
        hello = conn.handshake.peer_hello
        observed = hello.observed if hello is not None else None
        return {
            "peer_id": str(peer_id),
            "transport": conn.transport_name,
            "address": str(conn.peer_address) if conn.peer_address is not None else None,  # None: relayed
            "local_address": str(conn.local_address) if conn.local_address is not None else None,
            "role": self.role_of(peer_id),
            "initiator": conn.initiator,
            "queued_bytes": conn.queued_bytes,
            "observed_us_as": str(observed) if observed else None,
            "path": conn.path.to_dict() if conn.path is not None else None,
        }

    def hello_for(self, conn: "PeerConnection") -> Hello:
        return self._hello_for(conn)

    def _made_before_disconnect(self, conn: "PeerConnection", peer_id: PeerId) -> bool:
        cut = self._cut.get(peer_id)
        return cut is not None and self._serial.get(conn, cut) < cut

    def claim(self, conn: "PeerConnection", peer_id: PeerId) -> bool:
        if not self.accepting or self._made_before_disconnect(conn, peer_id):
            return False
        old = self.active.get(peer_id)
        if old is not None:
            hello = self.hellos.get(peer_id)
            self._classify(conn)
            if not self.handovers.may_replace(old, conn, hello is not None and hello.handover):
                return False
            conn.handover_chosen = True  # CHOOSE says so: both sides move off the old connection
        return self._admission.admit(conn, peer_id)

    def candidate(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        if not self._admission.admit(conn, peer_id):
            conn.close(CloseReason.NOT_WHITELISTED, "not allowed by this node's whitelist")
            return
        if self._made_before_disconnect(conn, peer_id):
            conn.close(CloseReason.DISCONNECT, "made before our user disconnected this peer")
            return
        self._classify(conn)
        self.candidates.setdefault(peer_id, set()).add(conn)
        self._remember(peer_id, hello, replace=False)

    def promote(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        self._settled(conn)
        self._discard_candidate(conn, peer_id)
        old = self.active.get(peer_id)
        self.active[peer_id] = conn
        if conn.handshake.peer_hello is not None:
            self._remember(peer_id, conn.handshake.peer_hello)
        conn.deliver = self._events.deliverer(peer_id)
        handover = (old is not None and old is not conn and conn.handover_chosen
                    and old.connected and not old.closing)
        if handover:
            assert old is not None
            self.handovers.begin(peer_id, old, conn, conn.deliver)
        elif old is not None and old is not conn:
            # the chooser chose anew: it no longer has the old connection
            self._superseded.add(old)
            old.close(CloseReason.DUPLICATE, "superseded by a newer connection")
            self._events.emit("lost_peer", peer_id, "superseded by a newer connection")
        # other candidates for this peer will never be chosen now; but a direct one may yet replace a relayed
        # connection (the chooser claims it with a handover; else it times out waiting for CHOOSE)
        for other in list(self.candidates.get(peer_id, ())):
            if not rank(other) > rank(conn):
                other.close_duplicate()
        self.log.info(
            "connected to {peer} via {transport} {address}",
            peer=peer_id, transport=conn.transport_name, address=conn.peer_address,
        )
        if not conn.is_bootstrap and not handover:
            self._events.emit("connect_success", peer_id)
        for listener in list(self._listeners):
            listener.peer_promoted(conn, peer_id)
        conn.purpose.promoted(conn, peer_id)

    def late_hello(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        if self.active.get(peer_id) is conn:
            self._remember(peer_id, hello)

    def probed(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        self._settled(conn)
        conn.purpose.probed(conn, peer_id, hello)
        conn.close(CloseReason.PROBE_DONE)

    def refused(self, conn: "PeerConnection", reason: str, detail: str) -> None:
        text = f"{reason}: {detail}" if detail else reason
        if self._input_log.allow(f"refused-{reason}"):
            self.log.info("handshake with {address} refused: {reason}", address=str(conn.peer_address), reason=text)
        conn.purpose.refused(conn, reason, detail)

    def bad_input(self, conn: "PeerConnection", kind: str, reason: str) -> None:
        if self._input_log.allow(kind):
            self.log.warn("{conn}: {reason}; closing", conn=repr(conn), reason=reason, kind=kind)

    def failed_early(self, conn: "PeerConnection", kind: str, reason: str) -> None:
        """
        An incoming connection failed before its handshake got anywhere: one
        line naming the address and the reason, at a bounded rate for each
        kind of failure (our own connects report to whoever made them).
        """
        self.counters[f"early_{kind}"] = self.counters.get(f"early_{kind}", 0) + 1
        if conn.purpose is ACCEPTED and self._input_log.allow(kind):
            self.log.info("incoming {transport} connection from {address} failed: {reason}",
                          transport=conn.transport_name, address=str(conn.peer_address), reason=reason, kind=kind)

    def admit(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        if self._admitter is None:
            conn.admission_result(False, RejectReason.BOOTSTRAP_DENIED, "this node does not accept bootstrap requests")
            return
        self._admitter(conn, peer_id, hello)

    def lost(self, conn: "PeerConnection", reason: str) -> None:
        self.connections.discard(conn)
        self._serial.pop(conn, None)
        self._settled(conn)
        superseded = conn in self._superseded
        self._superseded.discard(conn)
        peer_id = conn.peer_id
        if peer_id is not None:
            self._discard_candidate(conn, peer_id)
            what = self.handovers.lost(peer_id, conn)
            if self.active.get(peer_id) is conn:
                del self.active[peer_id]
                standby = self.handovers.take_standby(peer_id) if what == "fallback" else None
                if standby is not None:
                    # the better path died; the relayed one is still there: the connection moves back
                    self.active[peer_id] = standby
                    standby.set_deliver(self._events.deliverer(peer_id))
                    self.log.info("{peer}: {reason}; back on {standby}", peer=peer_id, reason=reason,
                                  standby=repr(standby))
                    self._events.emit("path_changed", peer_id, describe_path(conn), describe_path(standby))
                    for listener in list(self._listeners):
                        listener.peer_promoted(standby, peer_id)  # it is the active connection again
                else:
                    for d in self._writable_waiters.pop(peer_id, []):
                        d.callback(peer_id)
                    if not superseded and what != "quiet":
                        self.log.info("lost peer {peer}: {reason}", peer=peer_id, reason=reason)
                        self._events.emit("lost_peer", peer_id, reason)
                        self.handovers.close_standby(peer_id, CloseReason.DISCONNECT, "the peer is lost")
            if peer_id not in self.active and peer_id not in self.candidates \
                    and peer_id not in self.handovers.standby:
                self.hellos.pop(peer_id, None)  # nothing of that peer left: forget what it said
        for d in self._closed_waiters.pop(conn, []):
            d.callback(None)
        conn.purpose.lost(conn, reason)
        for listener in list(self._listeners):
            listener.connection_ended(conn, reason)
        if not self.connections:
            waiters, self._lost_waiters = self._lost_waiters, []
            for d in waiters:
                d.callback(None)

    def heir(self, conn: "PeerConnection") -> Optional["PeerConnection"]:
        """The standby that takes over from the active C{conn} as it ends (see L{lost}), if there is one."""
        peer_id = conn.peer_id
        if peer_id is None or self.active.get(peer_id) is not conn or peer_id in self.handovers.moving:
            return None
        standby = self.handovers.standby.get(peer_id)
        if standby is None or not standby.connected or standby.closing or not standby.is_active:
            return None
        return standby

    def dropped(self, conn: "PeerConnection", drops: list[Dropped], reason: str) -> None:
        peer_id = conn.peer_id
        for drop in drops:
            self.log.warn(
                "dropped {count} message(s), {size} bytes, of priority {priority} to {peer}: {reason}",
                count=drop.count, size=drop.size, priority=drop.priority, peer=str(peer_id), reason=reason,
            )
            self._events.emit("message_dropped", peer_id, drop.priority, drop.count, drop.size, reason)

    def writable(self, conn: "PeerConnection") -> None:
        peer_id = conn.peer_id
        if peer_id is not None and self.active.get(peer_id) is conn:
            for d in self._writable_waiters.pop(peer_id, []):
                d.callback(peer_id)

    def control_received(self, conn: "PeerConnection", ftype: int, payload: bytes) -> bool:
        return self.control_frames.dispatch(conn, ftype, payload)

    def moved(self, conn: "PeerConnection", lane: str) -> None:
        self.handovers.moved(conn, lane)

    def moves_sent(self, conn: "PeerConnection") -> None:
        self.handovers.moves_sent(conn)

    # -- helpers ------------------------------------------------------------------

    def _remember(self, peer_id: PeerId, hello: Hello, replace: bool = True) -> None:
        """Keep C{peer_id}'s HELLO (its role, its listeners)."""
        if replace:
            self.hellos[peer_id] = hello
        else:
            self.hellos.setdefault(peer_id, hello)

    def _discard_candidate(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        waiting = self.candidates.get(peer_id)
        if waiting is not None:
            waiting.discard(conn)
            if not waiting:
                del self.candidates[peer_id]
