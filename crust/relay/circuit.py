"""
L{CircuitTransport}: one end of a relayed circuit, as the transport of the
secure connection that runs inside it.

The circuit rides on the node's existing connection to the relay R (a
L{crust.session.connection.PeerConnection}): what the protocol above writes
(Twisted's TLS layer, with the end-to-end L{PeerConnection} inside it) goes
out as DATA frames of at most L{MAX_CHUNK} bytes; DATA frames that arrive
go to the protocol's C{dataReceived}.  So the channel inside the circuit is
crust's ordinary one, TLS 1.3 bound to the two ends' identities: R forwards
ciphertext it cannot read.

Flow control is end to end, by credit: each end may have at most a window
sent that the other end has not granted back (R chooses the window,
C{RelayLimits.window}, and announces it in INVITE and READY).  An end grants
(CREDIT) as its protocol takes the data, a quarter window at a time.  A
sender out of credit keeps what it was given and pauses the producer above
(the TLS layer, and so the L{PeerConnection}, which then queues by
priority) until CREDIT comes; like a TCP transport's buffer, what it keeps
is bounded by that producer: at most what one write handed it past the
pause (one message).  R never holds more than a window per circuit and
direction, and writing to the relay connection needs no queue of its own:
a circuit never has more than a window on its way (its DATA frames go
through C{send_control}, ahead of that connection's queued messages).  An
end that sends past its window, or grants credit for bytes it was never
sent, ends the circuit (C{overflow}).

Writes within one reactor turn are joined into as few DATA frames as they
fill (the TLS layer writes one record, about 16 KiB, at a time): full chunks
go at once, the rest at the end of the turn.

Until a protocol is attached (L{CircuitTransport.attach}: while the end
tries to splice the circuit, L{crust.relay.spliced}), what arrives is held,
and credited only once the protocol takes it.  A spliced circuit carries no
DATA: its frames only end it, and its C{watcher} hears of that.

C{loseConnection} sends what is left (as credit allows), then CLOSE;
C{abortConnection} sends CLOSE at once.  A CLOSE from the other side (passed
on by R, or R's own: a limit, a refusal), or the end of the connection to
R, loses the connection with a L{RelayClosed} carrying the reason code and
its detail.  C{connectionLost} is always called in a later reactor turn, as
TCP's is.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer, ITransport
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from crust.errors import CrustError
from crust.identity import PeerId
from crust.relay import messages
from crust.relay.messages import MAX_CHUNK
from crust.relay.switch import Leg

if TYPE_CHECKING:
    from crust.relay.switch import CircuitSwitch

#: An end grants credit once its protocol took this share of the window.
GRANT_SHARE = 4


class RelayClosed(CrustError):
    """
    A relayed circuit ended from the far side: the other end closed it, R
    ended it (a limit, a refusal), or the connection to R was lost.

    @ivar reason: the code (L{crust.relay.messages.REASONS}, or a newer R's).
    @ivar detail: what exactly, for people.
    """

    def __init__(self, reason: str, detail: str = "", via: Optional[PeerId] = None) -> None:
        self.reason = reason
        self.detail = detail
        self.via = via
        where = f" via {via}" if via is not None else ""
        super().__init__(f"relayed circuit{where} closed: {reason}" + (f" ({detail})" if detail else ""))


@implementer(IAddress)
@dataclass(frozen=True)
class RelayAddress:
    """
    The address of one end of a relayed connection: a peer, through a relay.
    It has no IP address or port (a connection's C{peer_address} is None).
    """

    peer: Optional[PeerId]
    via: PeerId

    def __str__(self) -> str:
        return f"relay:{self.via}/{self.peer}"


class CircuitTLS(BufferingTLSTransport):
    """
    Twisted's TLS protocol, on a circuit.  When the circuit ends from the
    far side, the connection inside learns the relay's reason
    (L{RelayClosed}), not the unclean end of the TLS stream that follows
    from it.
    """

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if reason.check(RelayClosed) and self._reason is None:
            self._reason = reason  # (what TLS would report instead, were it not set)
        super().connectionLost(reason)


class CircuitState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@implementer(ITransport, IConsumer, IPushProducer)
class CircuitTransport(Leg):
    """
    One end of circuit C{circuit_id} on C{conn}, the connection to the relay.

    @param conn: the connection to the relay (anything with C{send_control(frame) -> bool}).
    @param peer: the other end.
    @param via: the relay.
    @param local: our own id (for C{getHost}).
    @param on_closed: called once, C{on_closed(reason, detail)}, when the circuit ends, for whatever reason.
    @param window: the circuit's window (the relay said).
    @ivar bytes_sent: data bytes sent (the protocol's, once they went out as DATA).
    @ivar bytes_received: data bytes received.
    @ivar splice_token: the relay's splice token for this end (INVITE or READY), if it offered one.
    @ivar watcher: called with the failure when the circuit ends, besides the
        protocol (the splice, L{crust.relay.spliced}, while it runs).
    """

    log = Logger()
    disconnecting = False

    def __init__(self, switch: "CircuitSwitch", conn: Any, circuit_id: int, clock: Any, *,
                 peer: Optional[PeerId], via: PeerId, local: Optional[PeerId] = None,
                 window: int, on_closed: Optional[Callable[[str, str], None]] = None) -> None:
        self._switch = switch
        self.conn = conn
        self.circuit_id = circuit_id
        self._clock = clock
        self.peer = peer
        self.via = via
        self.local = local
        self._on_closed = on_closed
        self.window = window
        self._grant_step = window // GRANT_SHARE
        self.state = CircuitState.OPEN
        self.protocol: Any = None
        # sending
        self._credit = window  # what we may still send
        self._sent = 0  # data bytes sent, in total
        self._granted = 0  # credit the other end granted, in total
        self._pending: deque[Any] = deque()  # bytes-like, not yet sent
        self._pending_bytes = 0
        self._flush_call: Any = None
        self._producer: Any = None
        self._producer_paused = False  # we paused it: out of credit
        # receiving
        self._reading_paused = False
        self._held: deque[bytes] = deque()  # received while paused
        self._outstanding = 0  # received bytes not yet granted back
        self._ungranted = 0  # of which the protocol took
        self.bytes_sent = 0
        self.bytes_received = 0
        self.close_reason: Optional[str] = None
        self.splice_token: Optional[bytes] = None
        self.watcher: Optional[Callable[[Failure], None]] = None

    def __repr__(self) -> str:
        peer = self.peer.short() if self.peer is not None else "?"
        return f"<CircuitTransport {self.circuit_id:#x} to {peer} via {self.via.short()} {self.state.value}>"

    @property
    def closed(self) -> bool:
        return self.state is CircuitState.CLOSED

    def attach(self, protocol: Any) -> None:
        """Run C{protocol} on this circuit (its C{makeConnection}); then what was held for it."""
        self.protocol = protocol
        protocol.makeConnection(self)
        if self._held and not self._reading_paused:
            self.resumeProducing()

    # -- ITransport: writing ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.state is CircuitState.CLOSED or self.disconnecting or not data:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= MAX_CHUNK:
            self._flush(whole=True)
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def _take(self, n: int) -> Any:
        """
        The first C{n} pending bytes: a memoryview of what was written when
        it holds them (no copy until the frame is made), else joined.
        """
        pending = self._pending
        self._pending_bytes -= n
        first = pending[0]
        size = len(first)
        if size >= n:
            if size == n:
                return pending.popleft()
            view = memoryview(first)
            pending[0] = view[n:]
            return view[:n]
        parts = []
        while n:
            piece = pending[0]
            size = len(piece)
            if size <= n:
                parts.append(pending.popleft())
                n -= size
            else:
                view = memoryview(piece)
                parts.append(view[:n])
                pending[0] = view[n:]
                n = 0
        return b"".join(parts)

    def _flush(self, whole: bool = False) -> None:
        """Send what credit allows (C{whole}: only full chunks; the rest at the end of this turn)."""
        if not whole:
            call, self._flush_call = self._flush_call, None
            if call is not None and call.active():
                call.cancel()
        if self.state is CircuitState.CLOSED:
            return
        send = self.conn.send_control
        c = self.circuit_id
        least = MAX_CHUNK if whole else 1
        while self._pending_bytes >= least and self._credit > 0:
            n = min(MAX_CHUNK, self._credit, self._pending_bytes)
            if not send(messages.encode_data(c, self._take(n))):
                self._gone(messages.REASON_PEER_LOST, "the connection to the relay is closing")
                return
            self._credit -= n
            self._sent += n
            self.bytes_sent += n
        if self._pending_bytes:
            if self._credit > 0:  # (whole chunks only) the rest goes at the end of this turn
                if self._flush_call is None:
                    self._flush_call = self._clock.callLater(0, self._flush)
                return
            if self._producer is not None and not self._producer_paused:
                self._producer_paused = True
                self._producer.pauseProducing()
            return
        if self._producer is not None and self._producer_paused:
            self._producer_paused = False
            self._producer.resumeProducing()  # (it may write, and flush, again)
        if self.disconnecting and not self._pending_bytes and self.state is CircuitState.OPEN:
            self._end(messages.REASON_CLOSED, "", Failure(ConnectionDone("the circuit was closed")))

    # -- ITransport: closing -------------------------------------------------------------------

    def loseConnection(self) -> None:
        """Send what is left (as credit allows), then CLOSE."""
        if self.state is CircuitState.CLOSED or self.disconnecting:
            return
        self.disconnecting = True
        self._flush()

    def abortConnection(self) -> None:
        """CLOSE at once; what was not sent is dropped."""
        if self.state is CircuitState.CLOSED:
            return
        self._pending.clear()
        self._pending_bytes = 0
        self._end(messages.REASON_ABORTED, "", Failure(ConnectionAborted("the circuit was aborted")))

    def _end(self, reason: str, detail: str, failure: Failure) -> None:
        """We end the circuit: tell the relay, then the protocol (in a later turn)."""
        if self.state is CircuitState.CLOSED:
            return
        self.conn.send_control(messages.encode_close(self.circuit_id, reason, detail))
        self._closed(reason, detail, failure)

    def _fail(self, reason: str, detail: str) -> None:
        """Something went wrong on our side of the circuit (the other end broke a rule): end it with C{reason}."""
        self.log.info("{circuit}: ending it: {reason} ({detail})", circuit=repr(self), reason=reason, detail=detail)
        self._end(reason, detail, Failure(RelayClosed(reason, detail, self.via)))

    def end(self, reason: str, detail: str) -> None:
        """End the circuit with C{reason}: CLOSE to the relay; the protocol loses it with L{RelayClosed}."""
        self._fail(reason, detail)

    def _gone(self, reason: str, detail: str) -> None:
        """The circuit ended elsewhere: nothing to send."""
        self._closed(reason, detail, Failure(RelayClosed(reason, detail, self.via)))

    def _closed(self, reason: str, detail: str, failure: Failure) -> None:
        self.state = CircuitState.CLOSED
        self.close_reason = reason
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        self._pending.clear()
        self._pending_bytes = 0
        self._held.clear()
        self._switch.remove(self.conn, self.circuit_id, self)
        if self._on_closed is not None:
            try:
                self._on_closed(reason, detail)
            except Exception:
                self.log.failure("{circuit}: its close handler failed", circuit=repr(self))
        self._clock.callLater(0, self._connection_lost, failure)

    def _connection_lost(self, failure: Failure) -> None:
        protocol, self.protocol = self.protocol, None
        producer, self._producer = self._producer, None
        watcher, self.watcher = self.watcher, None
        if producer is not None:
            producer.stopProducing()
        if protocol is not None:
            protocol.connectionLost(failure)
        if watcher is not None:
            watcher(failure)

    # -- ITransport: addresses -------------------------------------------------------------

    def getPeer(self) -> RelayAddress:
        return RelayAddress(self.peer, self.via)

    def getHost(self) -> RelayAddress:
        return RelayAddress(self.local, self.via)

    # -- IConsumer --------------------------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(f"{self!r} has a producer already: {self._producer!r}")
        if not streaming:
            raise TypeError("a circuit takes streaming (push) producers only")
        if self.state is CircuitState.CLOSED:
            producer.stopProducing()
            return
        self._producer = producer
        self._producer_paused = False
        if self._pending_bytes and not self._credit:
            self._producer_paused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producer_paused = False

    # -- IPushProducer: what we receive ------------------------------------------------------

    def pauseProducing(self) -> None:
        """Hold what arrives (and the credit for it): the other end stops after a window."""
        self._reading_paused = True

    def resumeProducing(self) -> None:
        self._reading_paused = False
        while self._held and not self._reading_paused and self.protocol is not None \
                and self.state is CircuitState.OPEN:
            self._deliver(self._held.popleft())

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- Leg: frames from the relay ---------------------------------------------------------

    def data_received(self, payload: bytes) -> None:
        if self.state is CircuitState.CLOSED:
            return
        data = payload[4:]
        n = len(data)
        self._outstanding += n
        if self._outstanding > self.window:
            self._fail(messages.REASON_OVERFLOW, f"the other end sent {self._outstanding} bytes, "
                                                 f"over its window of {self.window}")
            return
        self.bytes_received += n
        if self._reading_paused or self.protocol is None:
            self._held.append(data)
        else:
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol is not None:
            protocol.dataReceived(data)
        self._ungranted += len(data)
        if self._ungranted >= self._grant_step and self.state is CircuitState.OPEN:
            grant, self._ungranted = self._ungranted, 0
            self._outstanding -= grant
            if not self.conn.send_control(messages.encode_credit(self.circuit_id, grant)):
                self._gone(messages.REASON_PEER_LOST, "the connection to the relay is closing")

    def credit_received(self, credit: int) -> None:
        if self.state is CircuitState.CLOSED:
            return
        self._granted += credit
        if self._granted > self._sent:
            self._fail(messages.REASON_OVERFLOW, f"the other end granted credit for {self._granted - self._sent} "
                                                 "bytes never sent")
            return
        self._credit += credit
        if self._pending_bytes:
            self._flush()

    def close_received(self, reason: str, detail: str) -> None:
        if self.state is not CircuitState.CLOSED:
            self._gone(reason, detail)

    def leg_lost(self, reason: str) -> None:
        if self.state is not CircuitState.CLOSED:
            self._gone(messages.REASON_PEER_LOST, f"the connection to the relay ended: {reason}")

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for credit (or for the end of this reactor turn)."""
        return self._pending_bytes
