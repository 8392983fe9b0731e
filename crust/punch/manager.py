"""
L{PunchManager}: hole punching for one node, wiring the rendezvous, the
exchanges (L{crust.punch.coordinator}) and the two punchers.

  - As the side that connects, a connect attempt's C{rendezvous} strategy
    (L{crust.punch.strategies}) asks it for a common peer and an exchange
    (L{PunchManager.find}, L{PunchManager.exchange}), then punches through
    the attempt's C{tcp-punch} and C{udp-punch} legs.
  - As the side connected to, it answers CONNECT envelopes (at most
    L{REQUEST_RATE} per peer), and punches when SYNC arrives.
  - Envelopes that do not open, are not signed by their claimed sender,
    are stale or replayed are dropped with one rate-limited log line each.
  - When a direct connection to a peer becomes active, every punch to it
    stops; a connection that a punch of ours explains is marked
    C{punched-tcp} or C{punched-udp}.  A relayed one stops none: what a
    punch then makes replaces it (L{crust.peering.handover}), and a peer
    reached through a relay that asks to punch is answered with a punch.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust._util.ratelimit import RateLimiter
from crust.connection_info import PubConnectionInfo
from crust.errors import CrustError
from crust.identity import Identity, PeerId
from crust.punch.coordinator import EXCHANGE_TIMEOUT, ExchangeCore, ExchangeMachine
from crust.punch.messages import Envelope, EnvelopeError, EnvelopeType, ReplayGuard, open_envelope, seal
from crust.punch.plan import ATTEMPT_SIZE, PunchPlan, blind_attempt
from crust.punch.rendezvous import Rendezvous
from crust.session.connection import is_relayed
from crust.session.connection import PathInfo
from crust.session.purpose import Purpose

if TYPE_CHECKING:
    from crust.peering.table import PeerTable
    from crust.punch.tcp import TcpPuncher
    from crust.punch.udp import UdpPuncher
    from crust.session.connection import PeerConnection

REQUEST_RATE = (0.5, 5.0)  # CONNECT requests answered per second (and burst) from one peer
REQUEST_TOTAL = (20.0, 40.0)
MAX_EXCHANGES = 256  # exchanges running at once
LOG_RATE = (0.1, 3.0)  # log lines about dropped envelopes, per sender


class _Responding(Purpose):
    """The purpose of connections our punch makes when the peer asked for it (no attempt of ours waits)."""


class PunchManager:
    """
    @param serving: returns whether we serve as a rendezvous for others.
    @param our_info: returns our connection info now (candidates, NAT).
    @param wall: the wall clock (envelope time stamps).
    """

    log = Logger()

    def __init__(self, *, identity: Identity, network: str, clock: Any, table: "PeerTable",
                 serving: Callable[[], bool], our_info: Callable[[], PubConnectionInfo],
                 udp: Optional["UdpPuncher"], tcp: Optional["TcpPuncher"],
                 wall: Callable[[], float] = time.time) -> None:
        self.identity = identity
        self.network = network
        self.clock = clock
        self.table = table
        self.udp = udp
        self.tcp = tcp
        self._our_info = our_info
        self._wall = wall  # envelope time stamps are wall-clock seconds: both sides compare them with their own
        self.rendezvous = Rendezvous(table, clock, serving=serving, delivered=self._delivered, refused=self._refused)
        self._replay = ReplayGuard()
        self._exchanges: dict[tuple[PeerId, bytes], tuple[Any, ExchangeCore]] = {}
        self._waiting: set[Deferred] = set()  # what exchange() returned, until it fires
        self._requests = RateLimiter(clock, REQUEST_RATE, REQUEST_TOTAL)
        self._logs = RateLimiter(clock, LOG_RATE, (2.0, 10.0))
        self.counters = dict.fromkeys(("exchanges", "answered", "dropped", "rate_limited", "punched"), 0)
        self.upgrader: Any = None  # crust.punch.upgrade.Upgrader, set by the wiring
        self._relayed: dict[PeerId, Any] = {}  # peers whose active connection is relayed: punches to them go on
        table.listen(self)

    # -- as the side that connects -----------------------------------------------------------

    def find(self, peer_id: PeerId) -> Deferred:
        """Fires with a common peer serving as a rendezvous; fails with L{crust.punch.rendezvous.NoCommonPeer}."""
        return self.rendezvous.find(peer_id)

    def exchange(self, peer_id: PeerId, via: PeerId) -> Deferred:
        """Run the exchange with C{peer_id} through C{via}; fires with the L{PunchPlan}."""
        if len(self._exchanges) >= MAX_EXCHANGES:
            return fail(CrustError("too many hole-punching exchanges running"))
        attempt = os.urandom(ATTEMPT_SIZE)
        machine, core = self._machine(peer_id, via, attempt)
        self.counters["exchanges"] += 1
        d = core.result

        def cancelled(d: Deferred) -> None:
            machine.cancel()

        out: Deferred = Deferred(cancelled)
        d.addCallbacks(out.callback, lambda f: None if out.called else out.errback(f))
        self._waiting.add(out)
        out.addBoth(self._answered, out)
        machine.initiate()
        return out

    def _answered(self, result: Any, out: Deferred) -> Any:
        self._waiting.discard(out)
        return result

    def blind_plan(self, info: PubConnectionInfo) -> PunchPlan:
        """A punch without a rendezvous: the other side punches too when its user pastes our info."""
        return PunchPlan(info.peer_id, blind_attempt(self.identity.peer_id, info.peer_id), info, self.clock.seconds())

    def punch_udp(self, plan: PunchPlan, purpose: Purpose) -> Deferred:
        if self.udp is None:
            return fail(CrustError("UDP is off on this node"))
        return self.udp.punch(plan, purpose)

    def punch_tcp(self, plan: PunchPlan, purpose: Purpose) -> Deferred:
        if self.tcp is None:
            return fail(CrustError("TCP is off on this node"))
        return self.tcp.punch(plan, purpose)

    def punching(self, peer_id: PeerId) -> bool:
        """Whether a punch to C{peer_id} runs (ours or one it asked for)."""
        return any(p is not None and p.running(peer_id) for p in (self.udp, self.tcp))

    def stop(self) -> None:
        if self.upgrader is not None:
            self.upgrader.stop()
        for out in list(self._waiting):
            out.cancel()  # whoever waits on an exchange hears that it ended
        for machine, _ in list(self._exchanges.values()):
            machine.cancel()
        self._exchanges.clear()
        self.rendezvous.stop()
        if self.udp is not None:
            self.udp.stop_all()
        if self.tcp is not None:
            self.tcp.stop_all()

    # -- exchanges ------------------------------------------------------------------------

    def _machine(self, peer_id: PeerId, via: PeerId, attempt: bytes) -> tuple[Any, ExchangeCore]:
        key = (peer_id, attempt)

        def send(mtype: EnvelopeType, body: dict[str, Any]) -> bool:
            try:
                blob = seal(self.identity, peer_id, self.network, mtype, attempt, body, self._wall())
            except (CrustError, ValueError) as e:
                self.log.warn("cannot seal a {type} for {peer}: {error}", type=mtype.value, peer=str(peer_id),
                              error=str(e))
                return False
            return self.rendezvous.send(via, peer_id, blob)

        def finished() -> None:
            self._exchanges.pop(key, None)

        core = ExchangeCore(peer_id=peer_id, via=via, attempt=attempt, clock=self.clock, send=send,
                            our_info=self._our_info, punch=self._punch_as_responder, finished=finished)
        machine = ExchangeMachine(core)
        self._exchanges[key] = (machine, core)
        return machine, core

    def _delivered(self, from_peer: PeerId, via: PeerId, blob: bytes) -> None:
        """An envelope a rendezvous delivered: open it, check it, act on it."""
        try:
            envelope = open_envelope(self.identity, from_peer, self.network, blob, self._wall(), self._replay)
        except EnvelopeError as e:
            self.counters["dropped"] += 1
            if self._logs.allow(from_peer):
                self.log.warn("dropping a rendezvous envelope claimed to come from {peer} via {via}: "
                              "{reason} ({detail})",
                              peer=str(from_peer), via=str(via), reason=e.reason, detail=e.detail)
            return
        handler = {EnvelopeType.CONNECT: self._connect_received, EnvelopeType.REPLY: self._reply_received,
                   EnvelopeType.SYNC: self._sync_received}.get(envelope.mtype)
        if handler is not None:
            handler(envelope, via)

    def _info(self, envelope: Envelope) -> Optional[PubConnectionInfo]:
        try:
            info = PubConnectionInfo.from_dict(envelope.body.get("info"))
        except CrustError as e:
            self.counters["dropped"] += 1
            self.log.info("a {type} from {peer} carries bad connection info: {error}", type=envelope.mtype.value,
                          peer=str(envelope.from_peer), error=str(e))
            return None
        if info.peer_id != envelope.from_peer:
            self.counters["dropped"] += 1
            self.log.info("a {type} from {peer} carries another peer's connection info", type=envelope.mtype.value,
                          peer=str(envelope.from_peer))
            return None
        return info

    def _connect_received(self, envelope: Envelope, via: PeerId) -> None:
        peer = envelope.from_peer
        if (peer, envelope.attempt) in self._exchanges:
            return
        if not self._requests.allow(peer):
            self.counters["rate_limited"] += 1
            if self._logs.allow(peer):
                self.log.info("ignoring a hole-punching request from {peer}: too many lately", peer=str(peer))
            return
        if len(self._exchanges) >= MAX_EXCHANGES:
            self.counters["rate_limited"] += 1
            return
        info = self._info(envelope)
        if info is None:
            return
        self.counters["answered"] += 1
        self.log.info("{peer} asks to punch through {via}", peer=str(peer), via=str(via))
        machine, core = self._machine(peer, via, envelope.attempt)
        core.result.addErrback(self._answered_exchange_failed, peer)  # nobody else waits on it
        if self.tcp is not None:
            # its SYN may reach our listener before its SYNC reaches us: the TLS roles must match then too
            self.tcp.prepare(PunchPlan(peer, envelope.attempt, info, self.clock.seconds(), via), _Responding(),
                             EXCHANGE_TIMEOUT)
        machine.connect_received(info)

    def _reply_received(self, envelope: Envelope, via: PeerId) -> None:
        entry = self._exchanges.get((envelope.from_peer, envelope.attempt))
        info = self._info(envelope) if entry is not None else None
        if entry is not None and info is not None:
            entry[0].reply_received(info)

    def _sync_received(self, envelope: Envelope, via: PeerId) -> None:
        entry = self._exchanges.get((envelope.from_peer, envelope.attempt))
        if entry is not None:
            entry[0].sync_received()

    def _refused(self, via: PeerId, to: PeerId, reason: str, detail: str) -> None:
        for (peer, _), (machine, core) in list(self._exchanges.items()):
            if peer == to and core.via == via:
                machine.refused(f"{reason}: {detail}" if detail else reason)

    def _punch_as_responder(self, plan: PunchPlan) -> None:
        """The peer that asked sent SYNC: punch both ways; its connect attempt waits on what comes of it."""
        conn = self.table.usable(plan.peer_id)
        if conn is not None and not is_relayed(conn):
            return  # connected directly meanwhile (relayed: the punch is for a direct path to move to)
        purpose = _Responding()
        for name, d in (("udp", self.punch_udp(plan, purpose)), ("tcp", self.punch_tcp(plan, purpose))):
            d.addCallbacks(self._responder_punched, self._responder_failed, callbackArgs=(name,),
                           errbackArgs=(name, plan.peer_id))

    def _responder_punched(self, conn: Any, name: str) -> None:
        """Our punch made C{conn} (its run is over before it is promoted): say so on it."""
        if getattr(conn, "path", False) is None:
            conn.path = PathInfo(f"punched-{name}", f"{name}-punch")

    def _answered_exchange_failed(self, failure: Failure, peer: PeerId) -> None:
        self.log.info("the hole-punching exchange {peer} asked for ended: {reason}", peer=str(peer),
                      reason=str(failure.value))

    def _responder_failed(self, failure: Failure, name: str, peer: PeerId) -> None:
        self.log.info("{name} punch to {peer} (it asked): {reason}", name=name, peer=str(peer),
                      reason=str(failure.value))

    # -- PeerListener -------------------------------------------------------------------

    def peer_promoted(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        if is_relayed(conn):
            self._relayed[peer_id] = conn
            return  # punches to the peer go on: a direct path they open replaces the relayed one
        self._relayed.pop(peer_id, None)
        address = conn.peer_address
        path = conn.path
        if (path is None or (path.kind == "incoming" and not path.strategy)) and address is not None:
            # made while we punch to that peer (whoever dialled: a direct dial to its NAT's address gets
            # through only because the punch opened it), or from an address a punch confirmed; "incoming"
            # is what the connector calls a connection the peer opened when no connect of ours waited for it
            puncher, kind, strategy = self._punchers().get(address.transport, (None, "", ""))
            if puncher is not None and (puncher.punched_from(address) == peer_id or puncher.running(peer_id)):
                conn.path = PathInfo(kind, strategy)
        for puncher in (self.udp, self.tcp):
            if puncher is not None:
                puncher.stop(peer_id)

    def _punchers(self) -> dict[str, tuple[Any, str, str]]:
        """Each transport's puncher, the path kind and the strategy of what it punches."""
        return {"udp": (self.udp, "punched-udp", "udp-punch"), "tcp": (self.tcp, "punched-tcp", "tcp-punch")}

    def connection_ended(self, conn: "PeerConnection", reason: str) -> None:
        peer_id = conn.peer_id
        if peer_id is not None and self._relayed.get(peer_id) is conn and self.table.usable(peer_id) is None:
            del self._relayed[peer_id]  # the peer is gone: its punches would only connect it again
            for puncher in (self.udp, self.tcp):
                if puncher is not None:
                    puncher.stop(peer_id)
