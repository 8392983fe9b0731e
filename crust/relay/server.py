"""
L{RelayServer}: a node that carries circuits between two peers connected to
it (C{Config.serve_relay}).

A asks (OPEN, with its circuit id and the target T); the server checks that
it relays, its caps (circuits in total, circuits each peer opened), OPENs
from A lately (at most L{OPEN_RATE}), and that T is connected, then
invites T (INVITE, with an id of its own on that connection).  T accepts
(ACCEPT) within L{ACCEPT_TIMEOUT}, or the circuit ends (CLOSE C{timeout} to
A; a refusal is passed on as T gave it).  Then READY tells A the circuit is
open and what its limits are.

While open, DATA and CREDIT frames go from one leg to the other with the id
rewritten; the server never reads the data (the ends' secure channel runs
inside the circuit).  It counts, in each direction:
  - the bytes: past C{bytes_per_circuit}, the circuit ends (C{byte-limit});
  - the window (C{window}, told to both ends): a side that sends more than
    a window beyond what the other granted, or grants credit for bytes it
    was never sent, ends the circuit (C{overflow}): so the server never
    holds more than a window per direction;
  - the rate: past C{rate_per_circuit} bytes a second (a bucket of one
    window), it holds the DATA frames (at most a window: the sender runs out
    of credit) and passes them on as the bucket refills.  Pacing, not
    closing: a circuit over its rate is slowed to it, as a slow link would.
After C{seconds_per_circuit} the circuit ends (C{time-limit}).

A circuit may instead be I{spliced} (L{crust.relay.splicer}): each end
connects to our TCP listener and the two connections are joined, bytes
copied as they come, the same limits held on them; the frames still open,
limit and close it.  A circuit
that a limit ends is closed toward both ends, with the reason; when a leg's
connection is lost, the other end is told (C{peer-lost}); a CLOSE from one
end is passed on to the other.

Each circuit is an Automat machine (C{invited} -> C{open} -> C{closed}); the
DATA and CREDIT path is plain code beside it, the hot path.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from automat import TypeMachineBuilder
from twisted.logger import Logger

from crust._util.ratelimit import RateLimiter
from crust.config import RelayLimits
from crust.identity import PeerId
from crust.relay import messages
from crust.relay.messages import CircuitLimits, RelayOpen
from crust.relay.switch import CircuitSwitch, Leg
from crust.session.connection import is_relayed

if TYPE_CHECKING:
    from crust.relay.splicer import SpliceSession, Splicer
    from crust.peering.table import PeerTable
    from crust.session.connection import PeerConnection

ACCEPT_TIMEOUT = 5.0  # seconds T has to accept an INVITE
OPEN_RATE = (2.0, 10.0)  # OPENs a second (and burst) from one peer
OPEN_TOTAL = (50.0, 100.0)  # OPENs a second (and burst) from everyone
A, T = 0, 1  # the legs of a circuit: toward the peer that opened it, toward the target


class CircuitInputs(Protocol):
    """The inputs of one relayed circuit at the relay."""

    def accepted(self, splice: bool) -> None:
        "T accepted the INVITE (C{splice}: and will splice)."

    def closed(self, side: int, reason: str, detail: str) -> None:
        "A CLOSE came from one end."

    def lost(self, side: int, reason: str) -> None:
        "One end's connection to us ended."

    def timed_out(self) -> None:
        "T did not accept in time."

    def limit(self, reason: str, detail: str) -> None:
        "A limit ends the circuit."

    def stop(self) -> None:
        "The relay stops."


class _Direction:
    """What flows from one leg to the other: counts, the window, the rate's bucket, what is held."""

    __slots__ = ("received", "forwarded", "credited", "tokens", "stamp", "held", "timer")

    def __init__(self, burst: float, now: float) -> None:
        self.received = 0  # data bytes from the sending leg
        self.forwarded = 0  # of which passed on
        self.credited = 0  # credit the receiving end granted back
        self.tokens = burst
        self.stamp = now
        self.held: deque[bytes] = deque()  # DATA payloads waiting for the bucket
        self.timer: Any = None


@dataclass(eq=False)
class CircuitCore:
    """One circuit at the relay: its two legs and what flows through it."""

    server: "RelayServer"
    opener: PeerId
    target: PeerId
    conns: tuple[Any, Any]  # the connections to A and to T
    ids: tuple[int, int]  # the circuit's id on each
    limits: RelayLimits
    clock: Any
    legs: list["_ServerLeg"] = field(default_factory=list)
    timer: Any = None
    open: bool = False
    splice: Optional["SpliceSession"] = None  # offered or spliced (L{crust.relay.splicer})
    input: Any = None  # the circuit's machine (L{CircuitInputs})
    dirs: tuple[_Direction, _Direction] = field(init=False)

    def __post_init__(self) -> None:
        now = self.clock.seconds()
        burst = float(self.limits.window)
        self.dirs = (_Direction(burst, now), _Direction(burst, now))

    # -- sending ------------------------------------------------------------------------

    def send(self, side: int, frame: bytes) -> bool:
        return bool(self.conns[side].send_control(frame))

    def close_leg(self, side: int, reason: str, detail: str) -> None:
        self.send(side, messages.encode_close(self.ids[side], reason, detail))

    def arm(self, seconds: float, fire: Callable[[], None]) -> None:
        self.disarm()
        self.timer = self.clock.callLater(seconds, fire)

    def disarm(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def finish(self) -> None:
        """Forget the circuit: timers, legs, held data."""
        self.open = False
        self.disarm()
        for d in self.dirs:
            if d.timer is not None and d.timer.active():
                d.timer.cancel()
            d.timer = None
            d.held.clear()
        for leg in self.legs:
            self.server.switch.remove(leg.conn, leg.c, leg)
        if self.splice is not None:
            self.splice.end()  # (the CLOSE frames went out before)
        self.server._forget(self)

    # -- the hot path ----------------------------------------------------------------------

    def data(self, side: int, payload: bytes, machine: CircuitInputs) -> None:
        """A DATA frame from leg C{side}: check, count, pass on (or hold it for the rate)."""
        if not self.open:
            self.server.counters["dropped"] += 1  # before READY (or after the end): not for us to pass on
            return
        if self.splice is not None and not self.splice.data_frame():
            machine.limit(messages.REASON_OVERFLOW, "an end sent DATA on a spliced circuit")
            return
        d = self.dirs[side]
        n = len(payload) - 4
        if d.received + n - d.credited > self.limits.window:
            machine.limit(messages.REASON_OVERFLOW, "an end sent more than its window")
            return
        if d.received + n > self.limits.bytes_per_circuit:
            machine.limit(messages.REASON_BYTE_LIMIT,
                          f"this relay carries {self.limits.bytes_per_circuit} bytes each way on a circuit")
            return
        d.received += n
        rate = self.limits.rate_per_circuit
        if rate is not None:
            if d.held or not self._take_tokens(d, rate, n):
                d.held.append(payload)
                if d.timer is None:
                    d.timer = self.clock.callLater(max(0.001, -d.tokens / rate), self._release, side)
                return
        self._forward(side, d, payload)

    def _take_tokens(self, d: _Direction, rate: int, n: int) -> bool:
        now = self.clock.seconds()
        d.tokens = min(float(self.limits.window), d.tokens + (now - d.stamp) * rate)
        d.stamp = now
        if d.tokens <= 0:
            return False
        d.tokens -= n  # may go below zero: the next frame waits for it
        return True

    def _release(self, side: int) -> None:
        d = self.dirs[side]
        d.timer = None
        rate = self.limits.rate_per_circuit
        if not self.open or rate is None:
            return
        while d.held and self._take_tokens(d, rate, len(d.held[0]) - 4):
            self._forward(side, d, d.held.popleft())
            if not self.open:
                return
        if d.held:
            d.timer = self.clock.callLater(max(0.001, -d.tokens / rate), self._release, side)

    def _forward(self, side: int, d: _Direction, payload: bytes) -> None:
        other = 1 - side
        n = len(payload) - 4
        d.forwarded += n
        self.server.counters["bytes_relayed"] += n
        self.conns[other].send_control(messages.rewrite_data(payload, self.ids[other]))

    def credit(self, side: int, credit: int, machine: CircuitInputs) -> None:
        """A CREDIT frame from leg C{side}: it grants the other end more of its window."""
        if not self.open:
            return
        d = self.dirs[1 - side]  # the data it grants for flows toward it
        if d.credited + credit > d.forwarded:
            machine.limit(messages.REASON_OVERFLOW, "an end granted credit for bytes it was never sent")
            return
        d.credited += credit
        other = 1 - side
        self.send(other, messages.encode_credit(self.ids[other], credit))


_builder = TypeMachineBuilder(CircuitInputs, CircuitCore)
_invited = _builder.state("invited")
_open = _builder.state("open")
_closed = _builder.state("closed")


@_invited.upon(CircuitInputs.accepted).to(_open)
def _accepted(circuit: CircuitInputs, core: CircuitCore, splice: bool) -> None:
    limits = core.limits
    core.open = True
    token = None
    if core.splice is not None:
        token = core.splice.ready() if splice else None
        if token is None:
            core.splice.fall_back()
            core.splice = None
    core.send(A, messages.encode_ready(core.ids[A], CircuitLimits(
        limits.bytes_per_circuit, limits.seconds_per_circuit, limits.rate_per_circuit, limits.window), token))
    core.arm(limits.seconds_per_circuit,
             lambda: circuit.limit(messages.REASON_TIME_LIMIT,
                                   f"this relay carries a circuit for {limits.seconds_per_circuit:g} s"))
    core.server._opened(core)


@_invited.upon(CircuitInputs.timed_out).to(_closed)
def _no_answer(circuit: CircuitInputs, core: CircuitCore) -> None:
    detail = f"{core.target} did not accept within {ACCEPT_TIMEOUT:g} s"
    core.close_leg(A, messages.REASON_TIMEOUT, detail)
    core.close_leg(T, messages.REASON_TIMEOUT, detail)
    core.finish()


for _state in (_invited, _open):
    @_state.upon(CircuitInputs.closed).to(_closed)
    def _passed_on(circuit: CircuitInputs, core: CircuitCore, side: int, reason: str, detail: str) -> None:
        core.close_leg(1 - side, reason, detail)
        core.finish()

    @_state.upon(CircuitInputs.lost).to(_closed)
    def _lost(circuit: CircuitInputs, core: CircuitCore, side: int, reason: str) -> None:
        gone = core.opener if side == A else core.target
        core.close_leg(1 - side, messages.REASON_PEER_LOST, f"the relay lost its connection to {gone}: {reason}")
        core.finish()

    @_state.upon(CircuitInputs.stop).to(_closed)
    def _stop(circuit: CircuitInputs, core: CircuitCore) -> None:
        core.close_leg(A, messages.REASON_SHUTDOWN, "the relay is stopping")
        core.close_leg(T, messages.REASON_SHUTDOWN, "the relay is stopping")
        core.finish()


@_open.upon(CircuitInputs.limit).to(_closed)
def _limited(circuit: CircuitInputs, core: CircuitCore, reason: str, detail: str) -> None:
    core.server.counters["limit_closed"] += 1
    core.close_leg(A, reason, detail)
    core.close_leg(T, reason, detail)
    core.finish()


# late, repeated or out-of-place inputs change nothing
_open.upon(CircuitInputs.accepted).loop().returns(None)
_open.upon(CircuitInputs.timed_out).loop().returns(None)
_invited.upon(CircuitInputs.limit).loop().returns(None)
for _input in (CircuitInputs.accepted, CircuitInputs.closed, CircuitInputs.lost, CircuitInputs.timed_out,
               CircuitInputs.limit, CircuitInputs.stop):
    _closed.upon(_input).loop().returns(None)

CircuitMachine = _builder.build()


class _ServerLeg(Leg):
    """The relay's side of one circuit on one of its two connections."""

    def __init__(self, core: CircuitCore, machine: CircuitInputs, side: int) -> None:
        self.core = core
        self.machine = machine
        self.side = side
        self.conn = core.conns[side]
        self.c = core.ids[side]

    def data_received(self, payload: bytes) -> None:
        self.core.data(self.side, payload, self.machine)

    def credit_received(self, credit: int) -> None:
        self.core.credit(self.side, credit, self.machine)

    def close_received(self, reason: str, detail: str) -> None:
        splice = self.core.splice
        if splice is not None and not splice.close_frame(self.side, reason):
            return  # its spliced socket's end closes it
        self.machine.closed(self.side, reason, detail)

    def accept_received(self, splice: bool = False) -> None:
        if self.side == T:
            self.machine.accepted(splice)

    def leg_lost(self, reason: str) -> None:
        self.machine.lost(self.side, reason)


class RelayServer:
    """
    @param switch: the node's relay frames (the server takes its OPENs).
    @param serving: returns whether we relay (C{Config.serve_relay}).
    @param limits: returns the limits for new circuits (C{Config.relay_limits}).
    @param frame_ok: returns whether our connections take DATA frames of
        L{crust.relay.messages.MAX_CHUNK} bytes (C{Config.max_message_size}).
    @param splicer: splices circuits whose ends can (None: never).
    @ivar counters: C{circuits_total} (opened), C{bytes_relayed}, C{refused},
        C{limit_closed}, C{dropped} (DATA frames not ours to pass on).
    """

    log = Logger()

    def __init__(self, switch: CircuitSwitch, table: "PeerTable", clock: Any, *, serving: Callable[[], bool],
                 limits: Callable[[], RelayLimits], frame_ok: Callable[[], bool] = lambda: True,
                 splicer: Optional["Splicer"] = None) -> None:
        self.switch = switch
        self.splicer = splicer
        self._table = table
        self._clock = clock
        self._serving = serving
        self._limits = limits
        self._frame_ok = frame_ok
        self._opens = RateLimiter(clock, OPEN_RATE, OPEN_TOTAL)
        self._circuits: dict[CircuitCore, CircuitInputs] = {}
        self._opened_by: Counter[PeerId] = Counter()  # circuits (open or invited) each peer opened
        self.counters = dict.fromkeys(("circuits_total", "bytes_relayed", "refused", "limit_closed", "dropped"), 0)
        switch.open_handler = self.open_received

    @property
    def circuits(self) -> int:
        """Circuits carried now (invited or open)."""
        return len(self._circuits)

    def serving(self) -> bool:
        return bool(self._serving()) and self._frame_ok()

    def stop(self) -> None:
        """End every circuit (CLOSE C{shutdown} to both ends)."""
        for machine in list(self._circuits.values()):
            machine.stop()

    def stats(self) -> dict[str, Any]:
        splice = self.splicer.counters if self.splicer is not None else {}
        return {"serving": self.serving(), "circuits": self.circuits, **self.counters,
                **{f"splice_{k}": v for k, v in splice.items()}}

    def open_received(self, conn: "PeerConnection", message: RelayOpen) -> None:
        opener = conn.peer_id
        assert opener is not None  # the switch checked
        limits = self._limits()
        target_conn = None
        reason = detail = ""
        if not self.serving():
            reason, detail = messages.REASON_DISABLED, "this node does not relay"
        elif is_relayed(conn):
            reason, detail = messages.REASON_REFUSED, "this node carries no circuits over relayed connections"
        elif not self._opens.allow(opener):
            reason, detail = messages.REASON_RATE_LIMITED, "too many circuits asked for lately; try again shortly"
        elif len(self._circuits) >= limits.circuits_total:
            reason, detail = messages.REASON_TOO_MANY, f"this relay carries {limits.circuits_total} circuits at most"
        elif self._opened_by[opener] >= limits.circuits_per_peer:
            reason, detail = messages.REASON_TOO_MANY, f"you have {limits.circuits_per_peer} circuits here already"
        else:
            target_conn = self._table.usable(message.to) if message.to not in (opener, self.switch.local_id) else None
            if target_conn is None or is_relayed(target_conn):
                target_conn = None
                reason, detail = messages.REASON_NOT_CONNECTED, "this node is not connected to that peer"
        if target_conn is None:
            self.counters["refused"] += 1
            conn.send_control(messages.encode_close(message.c, reason, detail))
            return
        t_id = self.switch.allocate(target_conn)
        core = CircuitCore(self, opener, message.to, (conn, target_conn), (message.c, t_id), limits, self._clock)
        machine = CircuitMachine(core)
        core.input = machine
        if message.splice and self.splicer is not None:
            core.splice = self.splicer.offer(core)
        core.legs = [_ServerLeg(core, machine, A), _ServerLeg(core, machine, T)]
        for leg in core.legs:
            self.switch.add(leg.conn, leg.c, leg)
        self._circuits[core] = machine
        self._opened_by[opener] += 1
        core.arm(ACCEPT_TIMEOUT, machine.timed_out)
        token = core.splice.tokens[T] if core.splice is not None else None
        if not target_conn.send_control(messages.encode_invite(t_id, opener, limits.window, token)):
            machine.lost(T, "the connection is closing")

    def _opened(self, core: CircuitCore) -> None:
        self.counters["circuits_total"] += 1
        self.log.info("relaying a circuit from {a} to {t}", a=str(core.opener), t=str(core.target))

    def _forget(self, core: CircuitCore) -> None:
        if self._circuits.pop(core, None) is None:
            return
        self._opened_by[core.opener] -= 1
        if self._opened_by[core.opener] <= 0:
            del self._opened_by[core.opener]
