"""
The relay's side of spliced circuits: L{Splicer} takes the plain TCP
connections the ends open to our listening port (their preamble,
L{crust.relay.preamble}) and L{SpliceSession} joins a circuit's two.

A circuit is offered splicing when its opener asked (OPEN C{splice}) and we
can (a TCP listener, C{Config.relay_splice}): the target gets a token in
INVITE; if it accepts with C{splice}, the opener gets one in READY.  Then:

  - both ends' connections present their tokens within L{SPLICE_WAIT}
    seconds of READY: we answer each with L{crust.relay.preamble.SPLICED}
    and from then on copy bytes verbatim from one to the other, with
    Twisted's producer/consumer backpressure (a side's reading pauses while
    the other side's write buffer is full).  No cryptography here: the ends'
    TLS runs end to end through the two sockets.
  - one does not come in time, an end's connection ends before the other's
    came, or a DATA frame arrives on the circuit (an end gave up splicing):
    the splice is off.  We close what was presented without a byte, the
    tokens are revoked, and the circuit carries RELAY_DATA frames as it
    would have without splicing.

Spliced bytes are held to the circuit's limits as frames are
(L{SplicePump}): C{bytes_per_circuit} each direction (the chunk that would
pass it is not passed on: the circuit ends, C{byte-limit}), the time limit
(the circuit's timer), and C{rate_per_circuit}, by pausing the reading side
while the direction's bucket (one window) is empty.  Whatever ends a
spliced circuit, the CLOSE frames go to the ends over their secure
connections first, the sockets are closed after (aborted; flushed, within
L{CLOSE_GRACE}, when the circuit ended because an end closed cleanly).  An
end's spliced connection that ends cleanly ends the circuit as that end's
CLOSE C{closed} would (the other end is told, and its socket flushed and
closed); one that fails ends it with C{peer-lost} at both ends.  A CLOSE
C{closed} frame from an end whose spliced connection is still open waits
(at most L{CLOSE_GRACE}) for that connection's end: what the end sent last
is still on its way through it.

Costs a remote party can cause are bounded: tokens are made here (random,
single use, L{crust.relay.tokens.TOKEN_LIFETIME} at most, capped), two per
circuit, so spliced sockets are at most two per circuit the caps allow;
the listener caps connections that have not sent their preamble yet and
closes them after L{crust.transport.tcp.PREAMBLE_TIMEOUT}; a bad preamble
costs a 37-byte comparison and a dictionary look-up, and one rate-limited
log line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from crust.relay import messages
from crust.relay.preamble import SPLICED, PreambleError, parse_preamble
from crust.relay.tokens import SpliceTokens

if TYPE_CHECKING:
    from crust.relay.server import CircuitCore

SPLICE_WAIT = 5.0  # seconds from READY for both ends' connections to present their tokens
CLOSE_GRACE = 2.0  # seconds a cleanly closing side may take to flush (or for its connection to end)
SOCKET_IO_SIZE = 256 * 1024  # read size and write buffer of a spliced socket
A, T = 0, 1  # the sides of a circuit, as in crust.relay.server


class Splicer:
    """
    @param clock: an C{IReactorTime}.
    @param available: returns whether we can splice now (a TCP listener, and
        C{Config.relay_splice}).
    @param tokens: the token table (made here if not given).
    @ivar counters: C{spliced} (circuits spliced), C{refused} (connections
        presenting a bad, unknown, used or expired token, or coming when their
        circuit no longer waits), C{fell_back} (offered, not spliced).
    """

    log = Logger()

    def __init__(self, clock: Any, available: Callable[[], bool], tokens: Optional[SpliceTokens] = None) -> None:
        self.clock = clock
        self._available = available
        self.tokens = tokens if tokens is not None else SpliceTokens(clock)
        self.counters = dict.fromkeys(("spliced", "refused", "fell_back"), 0)

    def available(self) -> bool:
        return bool(self._available())

    def offer(self, core: "CircuitCore") -> Optional["SpliceSession"]:
        """A splice for a new circuit, with the target's token issued; None when we cannot."""
        if not self.available():
            return None
        session = SpliceSession(self, core)
        token = self.tokens.issue((session, T))
        if token is None:
            return None
        session.tokens[T] = token
        return session

    def claim(self, preamble: bytes, addr: Any) -> "Protocol | str":
        """
        The listener's preamble claim (L{crust.transport.tcp.TcpTransport.register_preamble}):
        the protocol that takes the connection, or why it is refused.
        """
        try:
            token = parse_preamble(preamble)
        except PreambleError as e:
            self.counters["refused"] += 1
            return f"splice: {e}"
        owner, why = self.tokens.take(token)
        if owner is None:
            self.counters["refused"] += 1
            return f"splice: {why}"
        session, side = owner
        claimed = session.present(side)
        if isinstance(claimed, str):
            self.counters["refused"] += 1
        return claimed


class SpliceSession:
    """
    The splice of one circuit (see the module docstring): its tokens, the
    two ends' sockets, the pumps between them.

    @ivar state: C{offered} (waiting for the sockets), C{spliced}, or C{off}
        (fell back to frames, or ended).
    """

    log = Logger()

    def __init__(self, splicer: Splicer, core: "CircuitCore") -> None:
        self.splicer = splicer
        self.core = core
        self.clock = splicer.clock
        self.state = "offered"
        self.tokens: list[Optional[bytes]] = [None, None]
        self.sockets: list[Optional[SpliceSocket]] = [None, None]
        self.pumps: list[Optional[SplicePump]] = [None, None]
        self.graceful = False  # how the sockets close when the circuit ends
        self._timer: Any = None
        self._close_timers: list[Any] = []

    @property
    def spliced(self) -> bool:
        return self.state == "spliced"

    def ready(self) -> Optional[bytes]:
        """The target accepted splicing: the opener's token (None: none left; the splice is off)."""
        if self.state != "offered":
            return None
        token = self.splicer.tokens.issue((self, A))
        if token is None:
            self.fall_back()
            return None
        self.tokens[A] = token
        self._timer = self.clock.callLater(SPLICE_WAIT, self._too_late)
        return token

    def present(self, side: int) -> "Protocol | str":
        """A connection presented side C{side}'s token: the protocol to run on it, or why not."""
        if self.state != "offered" or self.sockets[side] is not None:
            return "splice: the circuit no longer waits for that end"
        socket = SpliceSocket(self, side)
        self.sockets[side] = socket
        return socket

    def socket_made(self) -> None:
        """A presented socket is connected: splice if both are."""
        if self.state == "offered" and all(s is not None and s.transport is not None for s in self.sockets):
            self._splice()

    def _splice(self) -> None:
        self._cancel_timer()
        self.state = "spliced"
        self.splicer.counters["spliced"] += 1
        sockets = [s for s in self.sockets if s is not None]
        for socket in sockets:
            transport = socket.transport
            assert transport is not None
            no_delay(transport)
            transport.write(SPLICED)
        a, t = sockets
        self.pumps = [SplicePump(self, A, a.transport, t.transport), SplicePump(self, T, t.transport, a.transport)]
        for pump in self.pumps:
            assert pump is not None
            pump.start()
        self.log.debug("circuit from {a} to {t} spliced", a=str(self.core.opener), t=str(self.core.target))

    def _too_late(self) -> None:
        self._timer = None
        self.fall_back()

    def fall_back(self) -> None:
        """Not spliced after all: close what was presented (no byte: the ends go on with frames)."""
        if self.state != "offered":
            return
        self.splicer.counters["fell_back"] += 1
        self._off()
        for socket in self.sockets:
            if socket is not None and socket.transport is not None:
                socket.transport.loseConnection()

    def _off(self) -> None:
        self.state = "off"
        self._cancel_timer()
        for token in self.tokens:
            self.splicer.tokens.revoke(token)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- what the circuit's frames say ------------------------------------------------------

    def data_frame(self) -> bool:
        """A DATA frame came on the circuit: whether it may pass (not when spliced; it ends the splice offer)."""
        if self.state == "spliced":
            return False
        self.fall_back()
        return True

    def close_frame(self, side: int, reason: str) -> bool:
        """
        An end's CLOSE: whether it ends the circuit now.  Not a C{closed}
        from an end whose spliced socket is still open: that socket's end
        (or L{CLOSE_GRACE}) does.
        """
        socket = self.sockets[side]
        if self.state != "spliced" or reason != messages.REASON_CLOSED or socket is None or socket.lost:
            return True
        self._close_timers.append(self.clock.callLater(CLOSE_GRACE, self._closed_anyway, side, reason))
        return False

    def _closed_anyway(self, side: int, reason: str) -> None:
        if self.state == "spliced":
            self.graceful = True
            self.core.input.closed(side, reason, "")

    # -- what the sockets say ----------------------------------------------------------------

    def socket_lost(self, side: int, reason: Failure) -> None:
        if self.state == "offered":
            self.sockets[side] = None
            self.fall_back()  # that end goes on with frames: so must the other
            return
        if self.state != "spliced":
            return
        core = self.core
        if reason.check(ConnectionDone):
            self.graceful = True
            core.input.closed(side, messages.REASON_CLOSED, "the other end closed the connection")
            return
        why = reason.getErrorMessage()
        core.close_leg(side, messages.REASON_PEER_LOST, f"the relay lost your spliced connection: {why}")
        core.input.lost(side, f"its spliced connection ended: {why}")

    def limit(self, reason: str, detail: str) -> None:
        self.core.input.limit(reason, detail)

    # -- the end ----------------------------------------------------------------------------

    def end(self) -> None:
        """The circuit ended (its CLOSE frames went out first): close the sockets."""
        was = self.state
        self._off()
        for timer in self._close_timers:
            if timer.active():
                timer.cancel()
        self._close_timers = []
        for pump in self.pumps:
            if pump is not None:
                pump.stop()
        for socket in self.sockets:
            transport: Any = socket.transport if socket is not None else None
            if socket is None or transport is None or socket.lost:
                continue
            if was == "spliced" and self.graceful:
                transport.loseConnection()
                socket.abort_timer = self.clock.callLater(CLOSE_GRACE, socket.abort)
            else:
                transport.abortConnection()


def no_delay(transport: Any) -> None:
    """
    Big reads, and no Nagle on a spliced socket: what comes in goes out at
    once (held back for an acknowledgement, a small TLS record, the end of a
    handshake, would wait for the other side's delayed ACK at each hop).
    """
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = SOCKET_IO_SIZE
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:  # pragma: no cover - a socket already closing
            pass


def _send(transport: Any, data: bytes) -> None:
    """
    Write C{data} to a TCP transport: straight to its socket while nothing
    waits in its write buffer (what the socket does not take now goes to the
    buffer, as C{transport.write} would), else through the buffer.

    Twisted's own path buffers every write until the reactor finds the socket
    writable, and joins the buffer again at each partial send: on a spliced
    circuit, that was most of the relay's CPU (about four times this path's,
    measured on loopback).  The check reads C{FileDescriptor}'s buffer state;
    any other transport takes the plain C{write}.
    """
    sock = getattr(transport, "socket", None)
    if sock is not None and transport.connected and not transport.disconnecting \
            and not getattr(transport, "_tempDataLen", 1) and len(getattr(transport, "dataBuffer", b"x")) \
            <= getattr(transport, "offset", -1):
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # (the transport finds out and reports it as its connection's loss)
        if sent >= len(data):
            return
        data = data[sent:]
    transport.write(data)


class SpliceSocket(Protocol):
    """One end's spliced connection, at the relay."""

    def __init__(self, session: SpliceSession, side: int) -> None:
        self.session = session
        self.side = side
        self.lost = False
        self.abort_timer: Any = None  # closing: aborted if it does not flush in time

    def connectionMade(self) -> None:
        self.session.socket_made()

    def dataReceived(self, data: bytes) -> None:
        pump = self.session.pumps[self.side] if self.session.spliced else None
        if pump is not None:
            pump.data(data)
        elif self.session.state == "offered":
            # an end sends nothing before SPLICED: this one does not follow the protocol
            self.session.fall_back()

    def abort(self) -> None:
        self.abort_timer = None
        transport: Any = self.transport
        if not self.lost and transport is not None:
            transport.abortConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = True
        if self.abort_timer is not None and self.abort_timer.active():
            self.abort_timer.cancel()
        self.abort_timer = None
        self.session.socket_lost(self.side, reason)


@implementer(IPushProducer)
class SplicePump:
    """
    One direction of a spliced circuit: what side C{side}'s socket reads
    goes to the other side's socket.  Counted against the circuit's byte
    limit, paced to its rate (a bucket of one window: while it is empty,
    the reading side pauses), with backpressure (it is the producer of the
    writing side's transport: while that transport's buffer is full, the
    reading side pauses).

    @param source: the reading side's transport (paused and resumed here).
    @param sink: the writing side's transport.
    @ivar passed: bytes passed on.
    """

    def __init__(self, session: Any, side: int, source: Any, sink: Any) -> None:
        self.session = session
        self.side = side
        self.source = source
        self.sink = sink
        core = session.core
        limits = core.limits
        self.limit_bytes = limits.bytes_per_circuit
        self.rate = limits.rate_per_circuit
        self.burst = float(limits.window)
        self.clock = session.clock
        self.counters = core.server.counters
        self.passed = 0
        self.tokens = self.burst
        self.stamp = self.clock.seconds()
        self._sink_full = False
        self._resting = False  # the bucket is empty
        self._reading_paused = False
        self._timer: Any = None
        self._stopped = False

    def start(self) -> None:
        self.sink.registerProducer(self, True)

    def stop(self) -> None:
        """The circuit ended: no more."""
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        try:
            self.sink.unregisterProducer()
        except Exception:  # pragma: no cover - a transport already gone
            pass

    def data(self, data: bytes) -> None:
        if self._stopped:
            return
        n = len(data)
        if self.passed + n > self.limit_bytes:
            self.session.limit(messages.REASON_BYTE_LIMIT,
                               f"this relay carries {self.limit_bytes} bytes each way on a circuit")
            return
        self.passed += n
        self.counters["bytes_relayed"] += n
        _send(self.sink, data)
        rate = self.rate
        if rate is not None:
            now = self.clock.seconds()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * rate) - n
            self.stamp = now
            if self.tokens < 0 and not self._resting:
                self._resting = True
                self._timer = self.clock.callLater(-self.tokens / rate, self._rested)
                self._update()

    def _rested(self) -> None:
        self._timer = None
        self._resting = False
        self._update()

    def _update(self) -> None:
        if self._stopped:
            return
        pause = self._sink_full or self._resting
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self.source.pauseProducing()
            else:
                self.source.resumeProducing()

    @property
    def reading(self) -> bool:
        return not self._reading_paused

    # -- IPushProducer: the sink's buffer ----------------------------------------------------

    def pauseProducing(self) -> None:
        self._sink_full = True
        self._update()

    def resumeProducing(self) -> None:
        self._sink_full = False
        self._update()

    def stopProducing(self) -> None:
        self._stopped = True
