"""
L{CircuitSwitch}: the relay frames of one node, routed to the circuits they
belong to.

One node can be, on one connection, the relay of circuits the peer opens,
an end of circuits the peer invites it to, and an end of circuits it opens
through the peer; frame types are claimed once (L{crust.session.signalling}),
so one switch claims them all (L{crust.relay.messages.RelayFrame}) and
routes:

  - OPEN to the relay server, INVITE to the acceptor (their handlers);
  - every other frame to the I{leg} registered for its connection and
    circuit id: the relay's side of a circuit it carries
    (L{crust.relay.server}), a circuit transport at an end
    (L{crust.relay.circuit}), or an open waiting for READY.

Ids are picked by the sender of OPEN or INVITE, in its half of the id space
(L{crust.relay.messages.id_space}); an OPEN or INVITE with an id in our
half, or one already in use, is a protocol violation.  Frames for an id
that is not (or no longer) in use are dropped and counted: a circuit closed
while frames were on their way.  When a connection ends, every leg on it is
told (L{Leg.leg_lost}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger

from crust.errors import ProtocolViolation
from crust.identity import PeerId
from crust.relay import messages
from crust.relay.messages import HIGH_BIT, RelayFrame, RelayInvite, RelayOpen, RelayReady

if TYPE_CHECKING:
    from crust.peering.table import PeerTable
    from crust.session.connection import PeerConnection


class Leg:
    """
    One circuit as seen on one connection: what the switch tells it.  The
    base class drops everything; subclasses override what they expect.
    """

    def data_received(self, payload: bytes) -> None:
        """A DATA frame's payload (the circuit id, then the data; its size is checked)."""

    def credit_received(self, credit: int) -> None:
        """A CREDIT frame's grant."""

    def close_received(self, reason: str, detail: str) -> None:
        """A CLOSE frame: the circuit ended on the other side of this connection."""

    def accept_received(self, splice: bool = False) -> None:
        """An ACCEPT frame (the relay's leg toward the target); C{splice}: the target will splice."""

    def ready_received(self, ready: RelayReady) -> None:
        """A READY frame (an opening end)."""

    def leg_lost(self, reason: str) -> None:
        """The connection this leg rides on ended."""


#: C{handler(conn, message)}: an OPEN or an INVITE that passed the switch's checks.
OpenHandler = Callable[["PeerConnection", RelayOpen], None]
InviteHandler = Callable[["PeerConnection", RelayInvite], None]


class CircuitSwitch:
    """
    @param table: the node's peer table (its control frames, its connection ends).
    @param local_id: our peer id (it decides our half of the ids).
    @ivar open_handler: gets OPENs (the relay server sets it; without it, OPENs are refused).
    @ivar invite_handler: gets INVITEs (the acceptor sets it; without it, INVITEs are refused).
    """

    log = Logger()

    def __init__(self, table: "PeerTable", local_id: PeerId) -> None:
        self.local_id = local_id
        self._legs: dict["PeerConnection", dict[int, Leg]] = {}
        self._next: dict["PeerConnection", int] = {}
        self.open_handler: OpenHandler = self._refuse_open
        self.invite_handler: InviteHandler = self._refuse_invite
        self.counters = dict.fromkeys(("unknown_circuit", "malformed"), 0)
        frames = table.control_frames
        self._unregister = [
            frames.register(RelayFrame.OPEN, self._open_received),
            frames.register(RelayFrame.INVITE, self._invite_received),
            frames.register(RelayFrame.ACCEPT, self._accept_received),
            frames.register(RelayFrame.READY, self._ready_received),
            frames.register(RelayFrame.DATA, self._data_received),
            frames.register(RelayFrame.CREDIT, self._credit_received),
            frames.register(RelayFrame.CLOSE, self._close_received),
        ]
        table.listen(self)

    # -- legs ------------------------------------------------------------------------

    def allocate(self, conn: "PeerConnection") -> int:
        """A fresh circuit id in our half of C{conn}'s ids (not reused while the connection lasts)."""
        peer = conn.peer_id
        if peer is None:
            raise ValueError("a connection without a peer carries no circuits")
        space = messages.id_space(self.local_id, peer)
        legs = self._legs.get(conn, {})
        n = self._next.get(conn, 0)
        while True:
            n = (n + 1) & (HIGH_BIT - 1)
            c = n | space
            if c not in legs:
                break
        self._next[conn] = n
        return c

    def add(self, conn: "PeerConnection", c: int, leg: Leg) -> None:
        """Route circuit C{c}'s frames on C{conn} to C{leg} (replacing what was there)."""
        self._legs.setdefault(conn, {})[c] = leg

    def remove(self, conn: "PeerConnection", c: int, leg: Optional[Leg] = None) -> None:
        """Stop routing circuit C{c} on C{conn} (only if it still goes to C{leg}, when given)."""
        legs = self._legs.get(conn)
        if legs is None:
            return
        if leg is None or legs.get(c) is leg:
            legs.pop(c, None)
            if not legs:
                del self._legs[conn]

    def leg(self, conn: "PeerConnection", c: int) -> Optional[Leg]:
        legs = self._legs.get(conn)
        return legs.get(c) if legs is not None else None

    def legs_on(self, conn: "PeerConnection") -> int:
        """How many circuits ride on C{conn}."""
        return len(self._legs.get(conn, ()))

    @property
    def leg_count(self) -> int:
        return sum(len(legs) for legs in self._legs.values())

    # -- PeerListener ------------------------------------------------------------------

    def peer_promoted(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        pass

    def connection_ended(self, conn: "PeerConnection", reason: str) -> None:
        self._next.pop(conn, None)
        legs = self._legs.pop(conn, None)
        if legs:
            for leg in list(legs.values()):
                leg.leg_lost(reason)

    # -- frames ----------------------------------------------------------------------------

    def _peer(self, conn: "PeerConnection", name: str) -> PeerId:
        peer = conn.peer_id
        if peer is None or not conn.is_active:
            self.counters["malformed"] += 1
            raise ProtocolViolation(f"relay {name} before the connection was chosen")
        return peer

    def _decode(self, decode: Callable[[bytes], Any], payload: bytes) -> Any:
        try:
            return decode(payload)
        except ProtocolViolation as e:
            # the peer's malformed frame: its connection is closed by the violation, nothing else
            self.counters["malformed"] += 1
            raise ProtocolViolation(f"relay: {e}") from None

    def _new_circuit(self, conn: "PeerConnection", c: int, name: str) -> None:
        peer = self._peer(conn, name)
        if not messages.picked_by(c, peer, self.local_id):
            self.counters["malformed"] += 1
            raise ProtocolViolation(f"relay {name} picks circuit id {c:#x} in our half of the ids")
        if self.leg(conn, c) is not None:
            self.counters["malformed"] += 1
            raise ProtocolViolation(f"relay {name} reuses circuit id {c:#x}, which is open")

    def _open_received(self, conn: "PeerConnection", payload: bytes) -> None:
        message = self._decode(messages.decode_open, payload)
        self._new_circuit(conn, message.c, "OPEN")
        self.open_handler(conn, message)

    def _invite_received(self, conn: "PeerConnection", payload: bytes) -> None:
        message = self._decode(messages.decode_invite, payload)
        self._new_circuit(conn, message.c, "INVITE")
        self.invite_handler(conn, message)

    def _routed(self, conn: "PeerConnection", c: int, name: str) -> Optional[Leg]:
        self._peer(conn, name)
        legs = self._legs.get(conn)
        leg = legs.get(c) if legs is not None else None
        if leg is None:
            self.counters["unknown_circuit"] += 1  # closed while the frame was on its way
        return leg

    def _accept_received(self, conn: "PeerConnection", payload: bytes) -> None:
        message = self._decode(messages.decode_accept, payload)
        leg = self._routed(conn, message.c, "ACCEPT")
        if leg is not None:
            leg.accept_received(message.splice)

    def _ready_received(self, conn: "PeerConnection", payload: bytes) -> None:
        message = self._decode(messages.decode_ready, payload)
        leg = self._routed(conn, message.c, "READY")
        if leg is not None:
            leg.ready_received(message)

    def _data_received(self, conn: "PeerConnection", payload: bytes) -> None:
        # the hot path: one look-up, the payload handed on as it is
        c = self._decode(messages.data_circuit, payload)
        legs = self._legs.get(conn)
        leg = legs.get(c) if legs is not None else None
        if leg is not None:
            leg.data_received(payload)
        else:
            self._routed(conn, c, "DATA")

    def _credit_received(self, conn: "PeerConnection", payload: bytes) -> None:
        c, credit = self._decode(messages.decode_credit, payload)
        leg = self._routed(conn, c, "CREDIT")
        if leg is not None:
            leg.credit_received(credit)

    def _close_received(self, conn: "PeerConnection", payload: bytes) -> None:
        message = self._decode(messages.decode_close, payload)
        leg = self._routed(conn, message.c, "CLOSE")
        if leg is not None:
            leg.close_received(message.reason, message.detail)

    # -- without a server or an acceptor ------------------------------------------------

    def _refuse_open(self, conn: "PeerConnection", message: RelayOpen) -> None:
        conn.send_control(messages.encode_close(message.c, messages.REASON_DISABLED, "this node does not relay"))

    def _refuse_invite(self, conn: "PeerConnection", message: RelayInvite) -> None:
        conn.send_control(messages.encode_close(message.c, messages.REASON_REFUSED,
                                                "this node does not accept relayed connections"))
