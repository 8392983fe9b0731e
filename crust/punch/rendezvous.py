"""
L{Rendezvous}: in-band signalling through a peer both sides are connected
to, over the secure connections they already have (control frames,
L{crust.punch.messages}).

As the B{rendezvous} (the common peer R, typically the seed both
bootstrapped to), a node answers "are you connected to T?" (C{QUERY}) and
forwards sealed envelopes from one peer connected to it to another
(C{FORWARD} in, C{DELIVER} out).  It forwards only between two peers
connected to it, only while serving is on (C{Config.serve_rendezvous}: on in
the ready node), and at most C{FORWARD_RATE} envelopes a second from each
peer; it never opens an envelope (it cannot: they are sealed to the
addressee) and cannot alter one unnoticed (they are signed by the sender).

Its ANSWER also says whether it would relay to the target (C{relay}: it
relays, C{Config.serve_relay}, and is connected to the target): the relay
layer finds a relay the same way (L{Rendezvous.find} with C{want_relay}).

As an B{end}, a node finds a common peer (L{Rendezvous.find}: it asks its
connected peers at once, and the first that is connected to the target and
serves wins) and sends envelopes through it (L{Rendezvous.send}); envelopes
delivered to it go to the handler given at construction, with the name of
the peer they claim to come from (the handler opens and checks them).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust._util.ratelimit import RateLimiter
from crust.errors import CrustError, ProtocolViolation
from crust.identity import PeerId
from crust.punch import messages
from crust.punch.messages import RendezvousFrame

if TYPE_CHECKING:
    from crust.peering.table import PeerTable
    from crust.session.connection import PeerConnection

FIND_TIMEOUT = 2.0  # seconds to wait for a common peer
MAX_ASKED = 32  # connected peers asked at once
MAX_PENDING_QUERIES = 256
FORWARD_RATE = (20.0, 40.0)  # envelopes a second (and burst) forwarded for each peer
FORWARD_TOTAL = (400.0, 800.0)
ANSWER_RATE = (20.0, 40.0)  # queries answered a second (and burst) for each peer

#: C{handler(from_peer, via_peer, blob)}: an envelope delivered to us.
EnvelopeHandler = Callable[[PeerId, PeerId, bytes], None]
#: C{handler(via_peer, to_peer, reason, detail)}: the rendezvous could not forward our envelope.
ErrorHandler = Callable[[PeerId, PeerId, str, str], None]


class NoCommonPeer(CrustError):
    """None of our connected peers is connected to the target and serves as a rendezvous (or relay)."""


class Rendezvous:
    """
    @param serving: returns whether we forward for others.
    @param delivered: gets each envelope delivered to us.
    @param refused: gets each error a rendezvous answered for our envelope.
    @param relaying: returns whether we relay circuits for others (our
        ANSWERs say so); the relay layer may set it later, as the
        C{relaying} attribute.
    """

    log = Logger()

    def __init__(self, table: "PeerTable", clock: Any, *, serving: Callable[[], bool],
                 delivered: EnvelopeHandler, refused: Optional[ErrorHandler] = None,
                 relaying: Callable[[], bool] = lambda: False) -> None:
        self._table = table
        self._clock = clock
        self._serving = serving
        self.relaying = relaying
        self._delivered = delivered
        self._refused = refused
        self._forward_limit = RateLimiter(clock, FORWARD_RATE, FORWARD_TOTAL)
        self._answer_limit = RateLimiter(clock, ANSWER_RATE, FORWARD_TOTAL)
        self._deliver_limit = RateLimiter(clock, FORWARD_RATE, FORWARD_TOTAL)
        self._queries = itertools.count(1)
        self._pending: dict[int, _Search] = {}
        self.counters = dict.fromkeys(("queries_answered", "forwarded", "forward_refused", "delivered", "rate_limited",
                                       "malformed"), 0)
        frames = table.control_frames
        self._unregister = [
            frames.register(RendezvousFrame.QUERY, self._query_received),
            frames.register(RendezvousFrame.ANSWER, self._answer_received),
            frames.register(RendezvousFrame.FORWARD, self._forward_received),
            frames.register(RendezvousFrame.DELIVER, self._deliver_received),
            frames.register(RendezvousFrame.ERROR, self._error_received),
        ]

    def stop(self) -> None:
        for search in list(self._pending.values()):
            search.finish(None)
        self._pending.clear()

    # -- as an end ------------------------------------------------------------------

    def find(self, target: PeerId, exclude: tuple[PeerId, ...] = (), want_relay: bool = False) -> Deferred:
        """
        Fires with a connected peer that is connected to C{target} and
        serves as a rendezvous (with C{want_relay}: that would relay to
        C{target}); fails with L{NoCommonPeer} (saying how many peers were
        asked) when none is, within L{FIND_TIMEOUT}.
        """
        asked = [p for p, c in self._table.active.items()
                 if p != target and p not in exclude and not c.closing][:MAX_ASKED]
        search = _Search(self, target, len(asked), want_relay)
        if not asked or len(self._pending) + 1 > MAX_PENDING_QUERIES:
            search.finish(None)
            return search.result
        q = next(self._queries) & 0xFFFFFFFF
        self._pending[q] = search
        frame = messages.encode_query(q, target)
        sent = 0
        for peer in asked:
            conn = self._table.usable(peer)
            if conn is not None and conn.send_control(frame):
                sent += 1
        search.expect(q, sent, self._clock.callLater(FIND_TIMEOUT, search.finish, None))
        return search.result

    def send(self, via: PeerId, to: PeerId, blob: bytes) -> bool:
        """Send an envelope for C{to} through C{via}; False if we are not connected to C{via}."""
        conn = self._table.usable(via)
        return conn is not None and conn.send_control(messages.encode_forward(to, blob))

    def _answer_received(self, conn: "PeerConnection", payload: bytes) -> None:
        answer = self._decode(conn, messages.decode_answer, payload)
        if answer is None:
            return
        search = self._pending.get(answer.q)
        if search is None or answer.peer != search.target or conn.peer_id is None:
            return  # late, or not ours: ignored
        if search.want_relay:
            search.answered(conn.peer_id, answer.relay)
        else:
            search.answered(conn.peer_id, answer.connected, answer.serving)

    def _deliver_received(self, conn: "PeerConnection", payload: bytes) -> None:
        deliver = self._decode(conn, messages.decode_deliver, payload)
        if deliver is None or conn.peer_id is None:
            return
        if not self._deliver_limit.allow(conn.peer_id):
            # each envelope costs an X25519 and a box to open: a flood through one rendezvous is cut here
            self.counters["rate_limited"] += 1
            return
        self.counters["delivered"] += 1
        self._delivered(deliver.from_peer, conn.peer_id, deliver.blob)

    def _error_received(self, conn: "PeerConnection", payload: bytes) -> None:
        error = self._decode(conn, messages.decode_error, payload)
        if error is None or conn.peer_id is None:
            return
        self.log.info("rendezvous {via} could not forward to {to}: {reason} {detail}", via=str(conn.peer_id),
                      to=str(error.to), reason=error.reason, detail=error.detail)
        if self._refused is not None:
            self._refused(conn.peer_id, error.to, error.reason, error.detail)

    # -- as the rendezvous ---------------------------------------------------------------

    def _query_received(self, conn: "PeerConnection", payload: bytes) -> None:
        query = self._decode(conn, messages.decode_query, payload)
        if query is None or conn.peer_id is None:
            return
        if not self._answer_limit.allow(conn.peer_id):
            self.counters["rate_limited"] += 1
            return
        serving = self._serving()
        reachable = query.peer != conn.peer_id and self._table.usable(query.peer) is not None
        connected = reachable and serving
        relay = reachable and self.relaying()
        self.counters["queries_answered"] += 1
        conn.send_control(messages.encode_answer(query.q, query.peer, connected, relay, serving=serving))

    def _forward_received(self, conn: "PeerConnection", payload: bytes) -> None:
        forward = self._decode(conn, messages.decode_forward, payload)
        source = conn.peer_id
        if forward is None or source is None:
            return
        reason = ""
        target = None
        if not self._serving():
            reason = messages.ERROR_DISABLED
        elif not self._forward_limit.allow(source):
            reason = messages.ERROR_RATE_LIMITED
            self.counters["rate_limited"] += 1
        else:
            target = self._table.usable(forward.to) if forward.to != source else None
            if target is None:
                reason = messages.ERROR_NOT_CONNECTED
        if target is None:
            self.counters["forward_refused"] += 1
            conn.send_control(messages.encode_error(forward.to, reason, _detail(reason)))
            return
        if target.send_control(messages.encode_deliver(source, forward.blob)):
            self.counters["forwarded"] += 1

    def _decode(self, conn: "PeerConnection", decode: Callable[[bytes], Any], payload: bytes) -> Any:
        try:
            return decode(payload)
        except ProtocolViolation as e:
            # one peer's malformed frame: its connection is closed by the violation, nothing else
            self.counters["malformed"] += 1
            raise ProtocolViolation(f"rendezvous: {e}") from None


class _Search:
    """One L{Rendezvous.find}: the first peer that says yes wins."""

    def __init__(self, rendezvous: Rendezvous, target: PeerId, asked: int, want_relay: bool = False) -> None:
        self._rendezvous = rendezvous
        self.target = target
        self.asked = asked
        self.want_relay = want_relay
        self.result: Deferred = Deferred(lambda d: self.finish(None, cancelled=True))
        self._q: Optional[int] = None
        self._waiting = 0
        self._timer: Any = None
        self._noes = 0
        self._answered: set[PeerId] = set()
        self._not_serving: list[PeerId] = []

    def expect(self, q: int, sent: int, timer: Any) -> None:
        self._q, self._waiting, self._timer = q, sent, timer
        if sent == 0:
            self.finish(None)

    def answered(self, peer: PeerId, connected: bool, serving: bool = True) -> None:
        if connected and serving:
            self.finish(peer)
            return
        if peer in self._answered:
            return  # one answer per peer asked: a peer cannot end the search by saying no twice
        self._answered.add(peer)
        if not serving and len(self._not_serving) < 3:
            self._not_serving.append(peer)
        self._noes += 1
        if self._noes >= self._waiting:
            self.finish(None)

    def finish(self, peer: Optional[PeerId], cancelled: bool = False) -> None:
        if self._q is not None:
            self._rendezvous._pending.pop(self._q, None)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.result.called or cancelled:
            return
        if peer is not None:
            self.result.callback(peer)
            return
        what = "no relay" if self.want_relay else "no common peer"
        if self.asked == 0:
            text = f"{what}: we are connected to no other peer to ask"
        else:
            role = "relays" if self.want_relay else "serves as a rendezvous"
            text = (f"{what}: none of the {self.asked} peer(s) we asked is connected to "
                    f"{self.target.short()} and {role}")
            if self._not_serving:
                names = ", ".join(p.short() for p in self._not_serving)
                text += f" ({names} {'does' if len(self._not_serving) == 1 else 'do'} not serve as a rendezvous)"
        self.result.errback(Failure(NoCommonPeer(text)))


def _detail(reason: str) -> str:
    return {
        messages.ERROR_DISABLED: "this node does not serve as a rendezvous",
        messages.ERROR_RATE_LIMITED: "too many envelopes from you; try again shortly",
        messages.ERROR_NOT_CONNECTED: "this node is not connected to that peer",
    }.get(reason, "")
