"""
UDP hole punching (L{UdpPuncher}): paced, authenticated checks from the
node's UDP socket to the peer's candidates, and QUIC over the first pair
that works both ways.

Both sides send CHECKs (L{crust.punch.checks}: keyed with the X25519 secret
of the two identities and the attempt id, so only the peer can make them)
to every UDP candidate of the other, paced by a L{CheckSchedule}; every
CHECK that arrives is answered with an ACK carrying the address it came
from, and a CHECK from an address we did not know (the peer's NAT gave it
another port) makes that address a target at once (a peer-reflexive
candidate, as in ICE).  An ACK confirms the pair.  The controlling side
(the larger peer id; on a birthday punch the side with the extra sockets)
then opens QUIC to the confirmed address from the socket that was
confirmed; the other side's dispatcher accepts it as any QUIC connection.

Symmetric NATs (L{crust.punch.predict.plan_for}):

  - the peer's NAT allocates ports sequentially: its next ports are targets too;
  - birthday probing, the easy side (our NAT maps endpoint-independently,
    the peer's does not, with random ports): we also probe random ports of
    the peer's IP, once each, paced, at most L{predict.EASY_PROBES};
  - birthday probing, the hard side (ours is the symmetric one): we open up
    to L{predict.HARD_SOCKETS} extra sockets, each sending checks to the
    peer's server-reflexive address; the one the peer's probe reaches
    carries the QUIC connection.

Everything sent toward addresses not yet confirmed counts against the
attempt's L{SendBudget} and the node's L{SendRate}: a peer or rendezvous
cannot turn the node into a packet cannon.  Checks for attempts we do not
run, or that fail their MAC, cost one dictionary look-up or one BLAKE2b and
are dropped (counted); they never touch a running connection.
"""

from __future__ import annotations

import os
import random
import weakref
from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust.address import Address, is_global
from crust.candidates import NatBehaviour
from crust.errors import CrustError
from crust.identity import Identity, PeerId
from crust.punch import checks, predict
from crust.punch.pacing import CheckSchedule, SendBudget, SendRate
from crust.punch.pairs import remote_targets
from crust.punch.plan import PunchPlan
from crust.session.purpose import Purpose

MAX_TRIGGERED = 16  # addresses learned from incoming checks, per attempt
MAX_ACKS = 1000  # ACKs one attempt sends (they answer checks that passed the MAC)
TICK_GRANULARITY = 0.002


class PunchFailed(CrustError):
    """A punch gave up; the message says what was tried and what came back."""


#: C{dial(address, purpose, expected, socket)}: QUIC from the given socket (None: the node's one); fires with the
#: connection.
QuicDial = Callable[[Address, Purpose, PeerId, Any], Deferred]
#: C{open()}: a new, bound UDP endpoint for birthday probing (the hard side).
SocketFactory = Callable[[], Any]


class UdpPuncher:
    """
    @param endpoint: the node's UDP socket (L{crust.transport.udp.UdpEndpoint}).
    @param dial: opens QUIC to a confirmed address.
    @param local_nat: returns what we know of our NAT over UDP.
    @param open_socket: opens an extra socket (birthday, hard side); None: no birthday.
    @param rate: the node-wide bucket of sends to unconfirmed addresses.
    """

    log = Logger()

    def __init__(self, endpoint: Any, identity: Identity, clock: Any, dial: QuicDial,
                 local_nat: Callable[[], NatBehaviour], *, open_socket: Optional[SocketFactory] = None,
                 rate: Optional[SendRate] = None, rng: Optional[random.Random] = None) -> None:
        self.endpoint = endpoint
        self.identity = identity
        self.clock = clock
        self._dial = dial
        self._local_nat = local_nat
        self._open_socket = open_socket
        self.rate = rate or SendRate()
        self._rng = rng or random.SystemRandom()
        self._runs: dict[bytes, _Run] = {}
        self._shared: dict[PeerId, bytes] = {}
        # extra sockets a QUIC dial runs on: the dispatcher's, which closes each with its last connection. Held
        # here, not by a run: a run's socket may hear a check of another run to the same peer (both sides of a
        # pasted connect probe at once), and that run dials on it
        self.handed: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self.counters = dict.fromkeys(("checks_sent", "checks_received", "acks_sent", "acks_received",
                                       "unknown_attempt", "bad_mac", "malformed", "budget_refused"), 0)
        endpoint.set_crust_handler(checks.CHECK, lambda data, addr: self.datagram_received(data, addr, None))
        endpoint.set_crust_handler(checks.ACK, lambda data, addr: self.datagram_received(data, addr, None))

    # -- running punches ---------------------------------------------------------------

    def punch(self, plan: PunchPlan, purpose: Purpose) -> Deferred:
        """
        Punch to C{plan}'s peer; fires with the QUIC connection we opened
        (the controlling side), or never if the peer opens it (then the
        connection reaches the peer table as any accepted one, and L{stop}
        ends this punch); fails with L{PunchFailed} and what happened.
        """
        peer = plan.peer_id
        remote = plan.info.nat.udp if plan.info.nat is not None else NatBehaviour()
        strategy = predict.plan_for(self._local_nat(), remote)
        if not strategy.possible:
            return fail(PunchFailed(f"peer and we are both behind symmetric NATs ({strategy.reason})"))
        local = list(self.endpoint.local_addresses()) if self.endpoint.listening else []
        targets = remote_targets(list(plan.info.candidates), "udp", local_addresses=local)
        if not targets:
            return fail(PunchFailed("the peer offers no UDP candidate (is UDP blocked on its side?)"))
        if plan.attempt in self._runs:
            return self._runs[plan.attempt].result_for_another()
        try:
            shared = self._shared_with(peer)
        except ValueError as e:
            return fail(PunchFailed(str(e)))
        run = _Run(self, plan, purpose, targets, strategy, checks.pair_key(shared, plan.attempt))
        self._runs[plan.attempt] = run
        run.start()
        return run.result

    def stop(self, peer_id: PeerId, connected: bool = True) -> None:
        """The peer is connected (or we give up on it): end its punches."""
        for run in [r for r in self._runs.values() if r.plan.peer_id == peer_id]:
            run.finish(None if connected else PunchFailed("stopped"))

    def stop_all(self) -> None:
        for run in list(self._runs.values()):
            run.finish(PunchFailed("the node is stopping"))

    def running(self, peer_id: PeerId) -> bool:
        return any(r.plan.peer_id == peer_id for r in self._runs.values())

    def punched_from(self, address: Address) -> Optional[PeerId]:
        """The peer whose punch confirmed C{address} lately, if any (to tell how a connection was made)."""
        for run in self._runs.values():
            if address in run.confirmed or address in run.heard:
                return run.plan.peer_id
        return None

    def _shared_with(self, peer: PeerId) -> bytes:
        shared = self._shared.get(peer)
        if shared is None:
            if len(self._shared) >= 1024:
                self._shared.clear()
            shared = self._shared[peer] = checks.static_shared(self.identity, peer)
        return shared

    def _finished(self, run: "_Run") -> None:
        if self._runs.get(run.plan.attempt) is run:
            del self._runs[run.plan.attempt]

    # -- receiving ---------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any, socket: Any) -> None:
        """A CHECK or ACK on our socket (C{socket} None) or on an extra one of a birthday punch."""
        try:
            message = checks.decode(data)
        except checks.CheckError:
            self.counters["malformed"] += 1
            return
        run = self._runs.get(message.attempt)
        if run is None:
            self.counters["unknown_attempt"] += 1
            return
        if not checks.verify(run.key, message):
            self.counters["bad_mac"] += 1
            return
        source = Address.from_sockaddr("udp", addr)
        if source is None:
            return
        if isinstance(message, checks.Check):
            self.counters["checks_received"] += 1
            run.check_received(message, source, socket)
        else:
            self.counters["acks_received"] += 1
            run.ack_received(message, source, socket)


class _Run:
    """One attempt's checks, on our socket and, for the hard side of a birthday punch, on extra sockets."""

    def __init__(self, puncher: UdpPuncher, plan: PunchPlan, purpose: Purpose, targets: list[Address],
                 strategy: predict.Plan, key: bytes) -> None:
        self.puncher = puncher
        self.plan = plan
        self.purpose = purpose
        self.key = key
        self.strategy = strategy
        self.clock = puncher.clock
        ours, theirs = puncher.identity.peer_id, plan.peer_id
        if strategy.kind == predict.KIND_BIRTHDAY_HARD:
            self.controlling = True
        elif strategy.kind == predict.KIND_BIRTHDAY_EASY:
            self.controlling = False
        else:
            self.controlling = ours > theirs
        window = strategy.window if plan.coordinated else max(strategy.window, 20.0)
        self.window = window
        targets = list(targets)
        remote_nat = plan.info.nat.udp if plan.info.nat is not None else NatBehaviour()
        if strategy.kind == predict.KIND_PREDICT and remote_nat.delta:
            seen = [a for a in targets if is_global(a.host)]
            if seen:
                base = seen[0]
                targets += [Address("udp", base.host, p) for p in
                            predict.predict_sequential([base.port], remote_nat.delta, strategy.predicted_ports)]
        self.targets = targets
        self.schedule: CheckSchedule[Address] = CheckSchedule(targets, start=plan.start_at, window=window)
        self.budget = SendBudget(puncher.rate)
        self.extra: Optional[CheckSchedule] = None  # birthday probes (easy side) or the extra sockets (hard side)
        self.sockets: dict[Any, Any] = {}  # hard side: schedule target -> endpoint
        self.result: Deferred = Deferred(lambda d: self.finish(None))
        self.confirmed: list[Address] = []
        self.heard: set[Address] = set()
        self.triggered: dict[Address, int] = {}
        self._others: list[Deferred] = []
        self._seq = 0
        self._acks = 0
        self._timer: Any = None
        self._nominated: set[tuple[Address, Any]] = set()
        self._dialling: list[Deferred] = []  # the QUIC dials this run made
        self._dials = 0
        self.sent = 0
        self.done = False
        if strategy.kind == predict.KIND_BIRTHDAY_EASY:
            public = [a for a in targets if is_global(a.host)]
            if public:
                probe = predict.BirthdayProbe(random.Random(puncher._rng.random()), exclude={public[0].port})
                self._probe_host = public[0].host
                self.extra = CheckSchedule(probe.next(strategy.easy_probes), start=plan.start_at,
                                           interval=strategy.interval, retries=strategy.retries, window=window)
        elif strategy.kind == predict.KIND_BIRTHDAY_HARD and puncher._open_socket is not None:
            self._probe_host = ""
            self.extra = CheckSchedule(range(strategy.hard_sockets), start=plan.start_at, interval=strategy.interval,
                                       retries=predict.HARD_RETRIES, window=window)

    def result_for_another(self) -> Deferred:
        """A second caller of the same attempt shares its outcome."""
        d: Deferred = Deferred()
        self._others.append(d)
        return d

    # -- sending -----------------------------------------------------------------------------

    def start(self) -> None:
        delay = max(0.0, self.plan.start_at - self.clock.seconds())
        self._timer = self.clock.callLater(delay, self._tick)
        self._deadline = self.clock.callLater(delay + self.window, self._expired)

    def _tick(self) -> None:
        self._timer = None
        if self.done:
            return
        now = self.clock.seconds()
        for target in self.schedule.due(now):
            self._send_check(target, None, now)
        for target, count in list(self.triggered.items()):
            if count > 0:
                self.triggered[target] = count - 1
                self._send_check(target, None, now)
        if self.extra is not None:
            for item in self.extra.due(now):
                if isinstance(item, int) and self._probe_host == "":
                    self._hard_socket_check(item, now)
                else:
                    self._send_check(Address("udp", self._probe_host, item), None, now, checks.BIRTHDAY)
        self._arm(now)

    def _arm(self, now: float) -> None:
        times = [t for t in (self.schedule.next_at(now), self.extra.next_at(now) if self.extra else None)
                 if t is not None]
        if any(count > 0 for count in self.triggered.values()):
            times.append(now + 0.05)
        if times and not self.done:
            self._timer = self.clock.callLater(max(TICK_GRANULARITY, min(times) - now), self._tick)

    def _send_check(self, target: Address, socket: Any, now: float, flags: int = 0) -> None:
        confirmed = target in self.confirmed
        datagram = checks.encode_check(self.key, self.plan.attempt, self._seq & 0xFFFFFFFF, flags)
        if not confirmed and not self.budget.allow(now, len(datagram)):
            self.puncher.counters["budget_refused"] += 1
            return
        self._seq += 1
        endpoint = socket if socket is not None else self.puncher.endpoint
        if endpoint.send(datagram, target.sockaddr()):
            self.sent += 1
            self.puncher.counters["checks_sent"] += 1

    def _hard_socket_check(self, index: int, now: float) -> None:
        """The hard side of a birthday punch: socket C{index} (opened on first use) checks the peer's srflx."""
        socket = self.sockets.get(index)
        if socket is None:
            try:
                socket = self.puncher._open_socket()  # type: ignore[misc]
            except Exception as e:
                self.puncher.log.info("birthday probing: cannot open another UDP socket: {error}", error=str(e))
                self.extra = None
                return
            self.sockets[index] = socket
            socket.set_crust_handler(checks.CHECK, lambda data, addr, s=socket: self.puncher.datagram_received(
                data, addr, s))
            socket.set_crust_handler(checks.ACK, lambda data, addr, s=socket: self.puncher.datagram_received(
                data, addr, s))
        for target in [a for a in self.targets if is_global(a.host)][:1] or self.targets[:1]:
            self._send_check(target, socket, now, checks.BIRTHDAY)

    # -- receiving -------------------------------------------------------------------------

    def check_received(self, check: checks.Check, source: Address, socket: Any) -> None:
        endpoint = socket if socket is not None else self.puncher.endpoint
        if self._acks < MAX_ACKS:
            self._acks += 1
            ack = checks.encode_ack(self.key, self.plan.attempt, check.seq, check.flags & checks.BIRTHDAY, source)
            if endpoint.send(ack, source.sockaddr()):
                self.puncher.counters["acks_sent"] += 1
        self.heard.add(source)
        if source not in self.targets and source not in self.triggered and len(self.triggered) < MAX_TRIGGERED:
            self.triggered[source] = 5  # a peer-reflexive candidate: check it now and a few times more
            self._send_check(source, socket, self.clock.seconds())
            if self._timer is None or not self._timer.active():
                self._arm(self.clock.seconds())
        if socket is not None and self.controlling:
            # the hard side of a birthday punch: a check from the peer reached this socket,
            # so the pair works both ways (its check proves our mapping lets it in)
            self._nominate(source, socket)

    def ack_received(self, ack: checks.Ack, source: Address, socket: Any) -> None:
        if source not in self.confirmed:
            self.confirmed.append(source)
        if source in self.schedule.targets:
            self.schedule.confirm(source, self.clock.seconds())
        self.triggered.pop(source, None)
        if self.controlling:
            self._nominate(source, socket)

    # -- the connection -------------------------------------------------------------------------

    def _nominate(self, address: Address, socket: Any) -> None:
        key = (address, socket)
        if key in self._nominated or self.done or len(self._nominated) >= 3:
            return
        self._nominated.add(key)
        self._dials += 1
        if socket is not None:
            # from now on the socket is the QUIC dispatcher's, which closes it with its last connection: the
            # connection may become active (and stop the run that opened the socket) before the dial reports it
            self.puncher.handed.add(socket)
        self.puncher.log.info("UDP punch to {peer}: {address} works both ways; opening QUIC",
                              peer=str(self.plan.peer_id), address=str(address))
        d = self.puncher._dial(address, self.purpose, self.plan.peer_id, socket)
        self._dialling.append(d)
        d.addCallbacks(self._dialled, self._dial_failed, callbackArgs=(socket,), errbackArgs=(address,))

    def _dialled(self, conn: Any, socket: Any) -> None:
        self.finish(conn)

    def _dial_failed(self, failure: Failure, address: Address) -> None:
        self._dials -= 1
        if failure.check(CancelledError):
            return  # the run ended: another dial made the connection
        self.puncher.log.info("QUIC over the punched pair {address} failed: {reason}", address=str(address),
                              reason=str(failure.value))

    # -- the end ------------------------------------------------------------------------------

    def _expired(self) -> None:
        self._deadline = None
        if self._dials:
            # a QUIC handshake over a confirmed pair is still running: give it its time
            self._deadline = self.clock.callLater(10.0, self._expired)
            return
        self.finish(PunchFailed(self.explain()))

    def explain(self) -> str:
        """What happened, for the connect error."""
        kind = self.strategy.kind
        where = f"{len(self.targets)} address(es)"
        if kind == predict.KIND_BIRTHDAY_EASY and self.extra is not None:
            extra = f"; birthday probing: {len(self.extra.targets)} random ports of the peer's symmetric NAT"
        elif kind == predict.KIND_BIRTHDAY_HARD:
            extra = f"; birthday probing from {len(self.sockets)} extra sockets (our NAT is symmetric)"
        elif kind == predict.KIND_PREDICT:
            extra = "; predicted the peer's next ports"
        else:
            extra = ""
        if self.confirmed:
            heard = f"pairs confirmed ({', '.join(map(str, self.confirmed[:3]))}) but no QUIC connection came of them"
        elif self.heard:
            sources = ", ".join(map(str, list(self.heard)[:3]))
            heard = f"the peer's checks reached us (from {sources}), ours never got an answer"
        else:
            heard = "no check from the peer got through and none of ours was answered"
        budget = " (send budget exhausted)" if self.budget.exhausted else ""
        return f"{self.sent} checks to {where}{extra} in {self.window:g} s: {heard}{budget}"

    def finish(self, outcome: Any) -> None:
        """End with C{outcome}: a connection, a L{PunchFailed}, or None (ended from outside: fire nothing)."""
        if self.done:
            return
        self.done = True
        for timer in (self._timer, getattr(self, "_deadline", None)):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._deadline = None
        self.schedule.stop()
        if self.extra is not None:
            self.extra.stop()
        # dials still running would make a second connection, after the first one (or after the peer left)
        for d in self._dialling:
            if not d.called:
                d.cancel()
        for socket in list(self.sockets.values()):
            if socket not in self.puncher.handed:
                socket.stop()
        self.sockets = {}
        if self.budget.refused:
            self.puncher.log.info("UDP punch to {peer}: {count} checks not sent (send budget)",
                                  peer=str(self.plan.peer_id), count=self.budget.refused)
        self.puncher._finished(self)
        waiters = [self.result] + self._others
        for d in waiters:
            if d.called or outcome is None:
                continue
            if isinstance(outcome, Exception):
                d.errback(Failure(outcome))
            else:
                d.callback(outcome)


def new_attempt() -> bytes:
    """A fresh attempt id."""
    return os.urandom(8)
