"""
The ends of relayed circuits: the C{relay} dial strategy (the side that
connects) and L{RelayEnds}, which opens circuits and answers invitations.

  - L{RelayStrategy}, a dial strategy (L{crust.peering.dialer}) that starts
    after C{Config.relay_delay} (at once when every earlier leg failed):
    it finds a peer connected to the target that relays (the rendezvous
    QUERY, L{crust.punch.rendezvous.Rendezvous.find} with C{want_relay}),
    opens a circuit through it (OPEN, then READY) and runs the secure
    handshake inside, as TLS client, expecting the target's key.  The
    connection's purpose is the connect attempt, its path
    C{relayed} C{via} the relay.  When a relay fails us (no READY, a CLOSE
    other than the target's refusal, or a circuit that ends before the
    secure handshake is done: a relay that drops or corrupts what it
    carries), the attempt gets another leg through another relay, at most
    L{MAX_RELAYS} in all.
  - L{RelayEnds.invite_received}: a relay invites us to a circuit from a
    peer.  Unless C{Config.accept_relayed} is off (or a node whitelist is
    set: a relayed connection has no IP address to check), we accept
    (ACCEPT) and run the secure handshake inside as TLS server, expecting
    the key of the peer the relay named: the relay cannot pass itself off
    as anyone.

Where the relay offers it, both ends splice the circuit
(L{crust.relay.spliced}): the secure connection then runs on a plain TCP
connection to the relay that it joins to the other end's, and falls back to
the circuit's frames when that cannot be made.

Both ends' circuits are capped (L{MAX_ENDS}; L{MAX_ENDS_PER_RELAY} invited
through one relay, and at most L{INVITE_RATE} invitations a second from
each relay: each costs a TLS handshake), and both report
C{relay_circuit_opened(peer_id, via)} and C{relay_circuit_closed(peer_id,
via, reason)}.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from crust._util.ratelimit import RateLimiter
from crust.config import Config
from crust.connection_info import PubConnectionInfo
from crust.errors import CrustError
from crust.identity import PeerId
from crust.peering.attempt import Leg as AttemptLeg
from crust.punch.rendezvous import NoCommonPeer
from crust.relay import messages
from crust.relay.circuit import CircuitTLS, CircuitTransport, RelayClosed
from crust.relay.messages import MAX_DATA_FRAME, RelayInvite, RelayReady
from crust.session.connection import is_relayed
from crust.relay.switch import CircuitSwitch, Leg
from crust.session.connection import PathInfo
from crust.session.purpose import ACCEPTED, Purpose
from crust.wire import HEADER_SIZE

if TYPE_CHECKING:
    from crust.peering.attempt import ConnectAttempt
    from crust.peering.dialer import Dialer
    from crust.peering.table import PeerTable
    from crust.punch.rendezvous import Rendezvous
    from crust.relay.spliced import EndSplicing
    from crust.session.connection import PeerConnection
    from crust.transport.tls import ConnectionCreator

OPEN_TIMEOUT = 10.0  # seconds for READY after OPEN (the relay gives the target 5)
MAX_ENDS = 64  # circuits we are an end of, opened and invited together
MAX_ENDS_PER_RELAY = 16  # circuits one relay invites us to at once
INVITE_RATE = (5.0, 20.0)  # invitations taken a second (and burst) from one relay
INVITE_TOTAL = (20.0, 60.0)
LOG_RATE = (0.2, 5.0)  # log lines about refused invitations, per relay
PATH_KIND = "relayed"
STRATEGY = "relay"
MAX_RELAYS = 3  # relays one connect attempt tries, one after the other


def takes_circuits(config: Config) -> bool:
    """Whether a node with C{config} can carry DATA frames (its frame limit holds one)."""
    return config.max_message_size >= MAX_DATA_FRAME - HEADER_SIZE


class RelayEnds:
    """
    The circuits this node is an end of.

    @param creator: returns the node's TLS connection creator (its identity).
    @param emit: the observers' event fan-out.
    @param splice: splices our circuits where the relay offers it (None: never).
    @ivar counters: C{opened} (as the side that connects), C{accepted}
        (invited), C{refused} (invitations we refused), C{failed} (opens that
        did not get READY).
    """

    log = Logger()

    def __init__(self, switch: CircuitSwitch, table: "PeerTable", dialer: "Dialer", clock: Any, *,
                 creator: Callable[[], "ConnectionCreator"], config: Callable[[], Config],
                 emit: Callable[..., None], splice: Optional["EndSplicing"] = None) -> None:
        self.switch = switch
        self.splice = splice
        self._table = table
        self._dialer = dialer
        self._clock = clock
        self._creator = creator
        self._config = config
        self._emit = emit
        self._ends: set[Any] = set()  # openings and circuits
        self._invited_by: Counter[PeerId] = Counter()
        self._invites = RateLimiter(clock, INVITE_RATE, INVITE_TOTAL)
        self._logs = RateLimiter(clock, LOG_RATE, (2.0, 10.0))
        self.counters = dict.fromkeys(("opened", "accepted", "refused", "failed"), 0)
        switch.invite_handler = self.invite_received

    @property
    def circuits(self) -> int:
        """Circuits we are an end of now (open or opening)."""
        return len(self._ends)

    def stop(self) -> None:
        for end in list(self._ends):
            if isinstance(end, _Opening):
                end.cancel("the node is stopping")
            else:
                end.abortConnection()

    # -- as the side that connects -----------------------------------------------------

    def open(self, via: PeerId, peer: PeerId) -> Deferred:
        """
        Open a circuit to C{peer} through C{via}: fires with its
        L{CircuitTransport} (nothing runs on it yet) at READY; fails with
        L{RelayClosed} (the relay's or the peer's reason), or L{CrustError}.
        """
        conn = self._table.usable(via)
        if conn is None:
            return fail(CrustError(f"not connected to the relay {via}"))
        if len(self._ends) >= MAX_ENDS:
            return fail(CrustError(f"this node is an end of {MAX_ENDS} relayed circuits already"))
        c = self.switch.allocate(conn)
        opening = _Opening(self, conn, c, via, peer)
        self.switch.add(conn, c, opening)
        self._ends.add(opening)
        opening.splice = splice = self.splice is not None and self.splice.can_splice(conn)
        if not conn.send_control(messages.encode_open(c, peer, splice)):
            opening.fail(CrustError(f"the connection to the relay {via} is closing"))
        return opening.result

    def connect_over(self, circuit: Any, purpose: Purpose, *, tls_client: bool) -> "PeerConnection":
        """
        Run a secure connection to the circuit's peer on C{circuit} (a
        L{CircuitTransport}, or the circuit's splice,
        L{crust.relay.spliced.SpliceLink}); return it (handshake running).
        """
        factory = self._dialer.factory(purpose, initiator=tls_client, expected=circuit.peer, transport_name="tcp")
        tls = TLSMemoryBIOFactory(self._creator(), tls_client, factory, clock=self._clock)
        tls.protocol = CircuitTLS
        protocol = tls.buildProtocol(circuit.getPeer())
        conn: PeerConnection = protocol.wrappedProtocol  # type: ignore[assignment]  # what our factory builds
        conn.path = PathInfo(PATH_KIND, STRATEGY, None, via=str(circuit.via))
        circuit.attach(protocol)
        return conn

    def run(self, circuit: CircuitTransport, purpose: Purpose, *, tls_client: bool) -> Deferred:
        """
        Run a secure connection to the circuit's peer: on its splice if the
        relay offered one and it can be made, else on the circuit's frames.
        Fires with the connection (handshake running), or fails with
        L{RelayClosed} if the circuit ends before.
        """
        token = circuit.splice_token
        if token is None or self.splice is None:
            return succeed(self.connect_over(circuit, purpose, tls_client=tls_client))
        return self.splice.start(circuit, token, circuit.conn,
                                 lambda transport: self.connect_over(transport, purpose, tls_client=tls_client))

    def _ready(self, opening: "_Opening", ready: RelayReady) -> CircuitTransport:
        self._ends.discard(opening)
        circuit = self._circuit(opening.conn, opening.c, opening.peer, opening.via, ready.limits.window)
        circuit.splice_token = ready.splice if opening.splice else None
        self.counters["opened"] += 1
        self.log.info("circuit to {peer} via {via} open (limits: {bytes} bytes, {seconds:g} s, rate {rate}, "
                      "window {window})", peer=str(opening.peer), via=str(opening.via), bytes=ready.limits.bytes,
                      seconds=ready.limits.seconds, rate=ready.limits.rate, window=ready.limits.window)
        return circuit

    def _circuit(self, conn: "PeerConnection", c: int, peer: PeerId, via: PeerId, window: int,
                 invited: bool = False) -> CircuitTransport:
        def closed(reason: str, detail: str) -> None:
            self._ends.discard(circuit)
            if invited:
                self._invited_by[via] -= 1
                if self._invited_by[via] <= 0:
                    del self._invited_by[via]
            self._emit("relay_circuit_closed", peer, via, reason)

        circuit = CircuitTransport(self.switch, conn, c, self._clock, peer=peer, via=via,
                                   local=self.switch.local_id, window=window, on_closed=closed)
        self.switch.add(conn, c, circuit)
        self._ends.add(circuit)
        if invited:
            self._invited_by[via] += 1
        self._emit("relay_circuit_opened", peer, via)
        return circuit

    # -- invited ---------------------------------------------------------------------------

    def invite_received(self, conn: "PeerConnection", invite: RelayInvite) -> None:
        via = conn.peer_id
        assert via is not None  # the switch checked
        config = self._config()
        peer = invite.from_peer
        reason, detail = messages.REASON_REFUSED, ""
        if not config.accept_relayed:
            detail = "this node does not accept relayed connections"
        elif config.whitelisted_node_ips is not None:
            detail = "this node whitelists IP addresses, and a relayed connection has none"
        elif not takes_circuits(config):
            detail = f"this node's frame limit is under {MAX_DATA_FRAME - HEADER_SIZE} bytes"
        elif not self._table.accepting:
            reason, detail = messages.REASON_SHUTDOWN, "this node is not running"
        elif is_relayed(conn):
            detail = "this node takes no circuits over relayed connections"
        elif peer in (self.switch.local_id, via):
            detail = "a circuit from the relay itself, or from us"
        elif len(self._ends) >= MAX_ENDS or self._invited_by[via] >= MAX_ENDS_PER_RELAY:
            reason, detail = messages.REASON_TOO_MANY, "this node is an end of too many relayed circuits"
        elif not self._invites.allow(via):
            reason, detail = messages.REASON_RATE_LIMITED, "too many invitations lately; try again shortly"
        if detail:
            self.counters["refused"] += 1
            if self._logs.allow(via):
                self.log.info("refusing a circuit from {peer} via {via}: {detail}", peer=str(peer), via=str(via),
                              detail=detail)
            conn.send_control(messages.encode_close(invite.c, reason, detail))
            return
        splice = invite.splice is not None and self.splice is not None and self.splice.can_splice(conn)
        if not conn.send_control(messages.encode_accept(invite.c, splice)):
            return
        self.counters["accepted"] += 1
        circuit = self._circuit(conn, invite.c, peer, via, invite.window, invited=True)
        circuit.splice_token = invite.splice if splice else None
        self.run(circuit, ACCEPTED, tls_client=False).addErrback(lambda f: None)  # (the circuit's end says why)

    def stats(self) -> dict[str, Any]:
        return {"circuits": self.circuits, **self.counters}


class _Opening(Leg):
    """An OPEN sent, waiting for READY (or a CLOSE: a refusal)."""

    def __init__(self, ends: RelayEnds, conn: "PeerConnection", c: int, via: PeerId, peer: PeerId) -> None:
        self._ends = ends
        self.conn = conn
        self.c = c
        self.via = via
        self.peer = peer
        self.splice = False  # we asked for a splice
        self.result: Deferred = Deferred(lambda d: self.cancel("the connect attempt ended"))
        self._waiting = True
        self._timer = ends._clock.callLater(OPEN_TIMEOUT, self._timed_out)

    def _done(self) -> bool:
        """Stop waiting; False if we had stopped already."""
        if not self._waiting:
            return False
        self._waiting = False
        if self._timer.active():
            self._timer.cancel()
        self._ends.switch.remove(self.conn, self.c, self)
        self._ends._ends.discard(self)
        return True

    def fail(self, error: Exception) -> None:
        if self._done():
            self._ends.counters["failed"] += 1
            if not self.result.called:
                self.result.errback(Failure(error))

    def cancel(self, why: str) -> None:
        if self._done():
            self.conn.send_control(messages.encode_close(self.c, messages.REASON_CLOSED, why))

    def _timed_out(self) -> None:
        self.conn.send_control(messages.encode_close(self.c, messages.REASON_TIMEOUT, "no READY in time"))
        self.fail(CrustError(f"no answer from the relay {self.via} within {OPEN_TIMEOUT:g} s"))

    def ready_received(self, ready: RelayReady) -> None:
        if self._done():
            circuit = self._ends._ready(self, ready)
            self.result.callback(circuit)

    def close_received(self, reason: str, detail: str) -> None:
        self.fail(RelayClosed(reason, detail, self.via))

    def leg_lost(self, reason: str) -> None:
        self.fail(RelayClosed(messages.REASON_PEER_LOST, f"the connection to the relay ended: {reason}", self.via))


@dataclass(frozen=True)
class RelayTarget:
    """
    The relay leg's one target: the peer (which relay is found when the leg
    starts), and the relays that failed this attempt already (not asked again).
    """

    peer_id: PeerId
    tried: tuple[PeerId, ...] = ()

    def __str__(self) -> str:
        if not self.tried:
            return STRATEGY
        return f"{STRATEGY} (not via {', '.join(p.short() for p in self.tried)})"


class RelayStrategy:
    """
    The C{relay} dial strategy (see the module docstring).

    @param rendezvous: finds a relay connected to the peer
        (L{crust.punch.rendezvous.Rendezvous.find} with C{want_relay}).
    """

    name = STRATEGY
    path_kind = PATH_KIND

    def __init__(self, ends: RelayEnds, rendezvous: "Rendezvous", table: "PeerTable",
                 config: Callable[[], Config]) -> None:
        self._ends = ends
        self._rendezvous = rendezvous
        self._table = table
        self._config = config

    def delay(self, hints: Mapping[str, Any]) -> float:
        return self._config().relay_delay

    def targets(self, info: PubConnectionInfo, hints: Mapping[str, Any]) -> list[RelayTarget]:
        if hints:
            return []  # legs added later (a punch plan): the relay leg was planned at the start
        config = self._config()
        if config.whitelisted_node_ips is not None or not takes_circuits(config):
            return []  # a relayed connection has no IP address a whitelist could check
        if not self._relays(info.peer_id):
            return []  # no other peer to relay through
        return [RelayTarget(info.peer_id)]

    def _relays(self, peer: PeerId) -> list[PeerId]:
        """The peers we might relay through: connected, not the target, not themselves relayed."""
        return [p for p, conn in self._table.active.items()
                if p != peer and not conn.closing and not is_relayed(conn)]

    def _relayed(self) -> tuple[PeerId, ...]:
        """The peers whose connection to us is itself relayed (not asked)."""
        return tuple(p for p, conn in self._table.active.items() if is_relayed(conn))

    def dial(self, target: RelayTarget, attempt: "ConnectAttempt") -> Deferred:
        running: list[Deferred] = []

        def cancel(d: Deferred) -> None:
            for r in running:
                if not r.called:
                    r.cancel()

        out: Deferred = Deferred(cancel)
        peer = target.peer_id
        relay: list[PeerId] = []

        def step(d: Deferred) -> Deferred:
            running[:] = [d]
            return d

        def found(via: PeerId) -> Deferred:
            relay.append(via)
            return step(self._ends.open(via, peer))

        def ready(circuit: CircuitTransport) -> Optional[Deferred]:
            if out.called:  # cancelled meanwhile
                circuit.abortConnection()
                return None
            return step(self._ends.run(circuit, attempt, tls_client=True))

        def connected(conn: "PeerConnection") -> None:
            if out.called:
                return
            # (told before the attempt hears of the loss: it has the next leg before it counts what is left)
            self._table.when_closed(conn).addCallback(lambda _: None if conn.is_active else elsewhere())
            out.callback(conn)

        def elsewhere() -> None:
            """This relay failed us: another leg through another relay, if the attempt still runs."""
            if relay and not getattr(attempt, "done", True) and len(target.tried) + 1 < MAX_RELAYS:
                retry = RelayTarget(peer, target.tried + (relay[0],))
                attempt.extend([AttemptLeg(STRATEGY, 0.0, (retry,), self.dial, PATH_KIND)])

        def failed(failure: Failure) -> None:
            if out.called:
                return
            refused = isinstance(failure.value, RelayClosed) and failure.value.reason == messages.REASON_REFUSED
            if not (refused or failure.check(NoCommonPeer, CancelledError)):
                elsewhere()  # (the target's refusal would be the same through any relay)
            if failure.check(NoCommonPeer, RelayClosed):
                out.errback(Failure(_ReasonError(str(failure.value))))
            else:
                out.errback(failure)

        step(self._rendezvous.find(peer, exclude=self._relayed() + target.tried, want_relay=True))
        running[0].addCallback(found).addCallback(ready).addCallbacks(connected, failed)
        return out


class _ReasonError(CrustError):
    pass
