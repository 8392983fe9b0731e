"""
L{Stream}: one byte stream as the Twisted transport of the protocol that
runs on it, over a L{Channel} (multiplexed frames, L{crust.streams.mux}, or
a QUIC stream, L{crust.streams.quic}).

The transport behaves as a TCP transport does:

  - C{write} / C{writeSequence} queue bytes; a registered producer
    (C{registerProducer}, push or pull) is paused while more than
    C{high_water} bytes wait to be sent, and resumed at C{low_water};
  - as a push producer itself, C{pauseProducing} stops delivering data to
    the protocol: what arrives meanwhile is held (at most the stream's
    window, since the other side needs credit to send more), and no credit
    goes back, so the sender stops; C{resumeProducing} delivers it;
  - C{loseWriteConnection} sends what is queued, then the end of the stream
    (FIN) one way; the peer's protocol gets C{readConnectionLost} if it
    provides C{IHalfCloseableProtocol}, else its transport closes too;
  - C{loseConnection} sends what is queued and FIN, reads no more (what
    still arrives is dropped) and ends the stream once the peer's FIN
    arrives (after C{linger} seconds without it, with a reset);
  - C{abortConnection} resets the stream both ways at once.

C{connectionLost} comes in a later reactor turn, once: with
C{ConnectionDone} for a clean end both ways, C{ConnectionAborted} after
C{abortConnection}, L{StreamReset} when the peer reset the stream, and
C{ConnectionLost} naming the reason when the crust connection under it
ended.
"""

from __future__ import annotations

from typing import Any, Protocol as TypingProtocol

from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from crust.streams.address import StreamAddress
from crust.streams.frames import REASON_ABORTED, REASON_CLOSED

#: Seconds a closed stream waits for the peer's FIN before it resets.
LINGER = 10.0


class StreamReset(ConnectionLost):
    """
    The other side reset the stream (or it was reset for a reason of the
    stream's own, such as flow control).

    @ivar reason: the reason code (C{aborted}, C{closed}, C{overflow}, ...).
    @ivar detail: what exactly, for people.
    """

    def __init__(self, reason: str, detail: str = "", by_peer: bool = True) -> None:
        self.reason = reason
        self.detail = detail
        self.by_peer = by_peer
        who = "the peer reset the stream" if by_peer else "stream reset"
        text = f"{who}: {reason}" + (f" ({detail})" if detail else "")
        super().__init__(text)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "stream reset"


class Channel(TypingProtocol):
    """What a L{Stream} needs of the channel it runs over."""

    notify_drain: bool  # set by the stream: call L{Stream.drained} once buffered <= low water

    @property
    def buffered(self) -> int:
        """Bytes written that are not sent yet."""

    def send(self, data: bytes) -> None:
        """Send C{data} (in order, as flow control allows)."""

    def send_fin(self) -> None:
        """Send the end of the stream after what is queued; then call L{Stream.fin_sent}."""

    def consumed(self, size: int) -> None:
        """The protocol took C{size} more bytes: let the other side send as many more."""

    def reset(self, reason: str, detail: str = "") -> None:
        """End the stream both ways at once, telling the other side C{reason}; nothing more is reported."""

    def closed(self) -> None:
        """The stream ended cleanly both ways: forget it."""


@implementer(ITransport, IConsumer, IPushProducer)
class Stream:
    """
    One byte stream; see the module docstring.

    @ivar protocol: the protocol running on it, once attached.
    @ivar connected: the stream is open (not yet lost).
    @ivar disconnecting: C{loseConnection} was called.
    """

    log = Logger()

    def __init__(self, channel: Channel, clock: IReactorTime, host: StreamAddress, peer: StreamAddress, *,
                 high_water: int, low_water: int, linger: float = LINGER) -> None:
        self.channel = channel
        self.clock = clock
        self.host = host
        self.peer = peer
        self.high_water = high_water
        self.low_water = low_water
        self.linger = linger
        self.protocol: Any = None
        self.connected = True
        self.disconnecting = False
        self.producer: Any = None
        self.streaming = False
        self.producer_paused = False
        self.reading_paused = False
        self.bytes_written = 0
        self.bytes_received = 0
        self._in: list[bytes] = []
        self._in_size = 0
        self._write_open = True  # we may still write (no FIN wanted yet)
        self._fin_sent = False
        self._fin_received = False  # the peer's FIN arrived (it may wait behind held data)
        self._read_done = False  # the protocol was told of the peer's FIN (or we stopped reading)
        self._discarding = False  # loseConnection: what arrives is dropped
        self._linger: Any = None
        self._ended = False  # connectionLost decided

    def __repr__(self) -> str:
        return f"<Stream {self.peer} {'open' if self.connected else 'closed'}>"

    # -- wiring -------------------------------------------------------------------------------

    def attach(self, protocol: Any) -> Any:
        """Run C{protocol} on this stream (C{makeConnection}); returns it."""
        self.protocol = protocol
        protocol.makeConnection(self)
        return protocol

    # -- ITransport ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self._write_open or self._ended or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        self.bytes_written += len(data)
        self.channel.send(data)
        self._check_high_water()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self._ended or self.disconnecting:
            return
        self.disconnecting = True
        self._discarding = True
        if self._in:  # held data the protocol will never read: let the peer send on to its FIN
            size, self._in, self._in_size = self._in_size, [], 0
            self.channel.consumed(size)
        self._close_write()
        if self._fin_sent and self._fin_received:
            self._end(Failure(ConnectionDone("the stream was closed cleanly")))
        elif not self._fin_received:
            self._linger = self.clock.callLater(self.linger, self._linger_expired)

    def loseWriteConnection(self) -> None:
        """Send what is queued, then the end of the stream; go on reading."""
        if not self._ended:
            self._close_write()

    def abortConnection(self) -> None:
        if self._ended:
            return
        self.channel.reset(REASON_ABORTED, "aborted by the application")
        self._end(Failure(ConnectionAborted("the stream was aborted")))

    def getPeer(self) -> StreamAddress:
        return self.peer

    def getHost(self) -> StreamAddress:
        return self.host

    # -- IConsumer ---------------------------------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"cannot register producer {producer!r}: {self.producer!r} is registered")
        if self._ended:
            producer.stopProducing()
            return
        self.producer = producer
        self.streaming = bool(streaming)
        self.producer_paused = False
        if not streaming:
            producer.resumeProducing()
        self._check_high_water()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.producer_paused = False
        self.channel.notify_drain = False

    def _check_high_water(self) -> None:
        producer = self.producer
        if producer is None:
            return
        if self.channel.buffered > self.high_water:
            if self.streaming and not self.producer_paused:
                self.producer_paused = True
                producer.pauseProducing()
            self.channel.notify_drain = True
        elif not self.streaming:
            self.channel.notify_drain = True  # a pull producer is asked again once what it wrote went out

    # -- IPushProducer (reading) -------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self.reading_paused = True

    def resumeProducing(self) -> None:
        if not self.reading_paused:
            return
        self.reading_paused = False
        if self._in:
            data = b"".join(self._in)
            self._in, self._in_size = [], 0
            self._deliver(data)
        if self._fin_received and not self._in and not self.reading_paused and not self._read_done:
            self._peer_finished()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- from the channel ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        self.bytes_received += len(data)
        if self._discarding:
            self.channel.consumed(len(data))
            return
        if self.reading_paused:
            self._in.append(data)
            self._in_size += len(data)
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        try:
            self.protocol.dataReceived(data)
        except Exception:
            self.log.failure("{protocol!r} failed on data from {peer}", protocol=self.protocol, peer=str(self.peer))
            if not self._ended:
                self.channel.reset(REASON_ABORTED, "the protocol failed")
                self._end(Failure())
            return
        if not self._ended:
            self.channel.consumed(len(data))

    @property
    def held(self) -> int:
        """Bytes received and held for the protocol while it paused reading."""
        return self._in_size

    def fin_received(self) -> None:
        """The peer sends no more (its FIN came after everything it sent)."""
        if self._ended or self._fin_received:
            return
        self._fin_received = True
        if self._discarding:
            self._cancel_linger()
            if self._fin_sent:
                self._end(Failure(ConnectionDone("the stream was closed cleanly")))
            return
        if not self._in and not self.reading_paused:
            self._peer_finished()

    def _peer_finished(self) -> None:
        self._read_done = True
        if self._fin_sent:
            self._end(Failure(ConnectionDone("the stream was closed cleanly")))
        elif not self._write_open:
            pass  # our FIN is on its way: the stream ends when it went out
        elif IHalfCloseableProtocol.providedBy(self.protocol):
            try:
                self.protocol.readConnectionLost()
            except Exception:
                self.log.failure("readConnectionLost of {protocol!r} failed", protocol=self.protocol)
                self.abortConnection()
        else:
            self.loseConnection()

    def fin_sent(self) -> None:
        """Our FIN went out (everything written before it too)."""
        if self._ended or self._fin_sent:
            return
        self._fin_sent = True
        if self._read_done or (self._discarding and self._fin_received):
            self._end(Failure(ConnectionDone("the stream was closed cleanly")))
            return
        if not self.disconnecting and IHalfCloseableProtocol.providedBy(self.protocol):
            write_lost = getattr(self.protocol, "writeConnectionLost", None)
            if write_lost is not None:
                try:
                    write_lost()
                except Exception:
                    self.log.failure("writeConnectionLost of {protocol!r} failed", protocol=self.protocol)

    def drained(self) -> None:
        """What was written went out down to the low-water mark: the producer may go on."""
        producer = self.producer
        if producer is None or self._ended:
            return
        if self.streaming:
            if self.producer_paused:
                self.producer_paused = False
                producer.resumeProducing()
        else:
            producer.resumeProducing()

    def reset_received(self, reason: str, detail: str = "", by_peer: bool = True) -> None:
        """The stream was reset (by the peer, or for a fault of the peer's): it ends at once."""
        if not self._ended:
            self._end(Failure(StreamReset(reason, detail, by_peer)))

    def lost(self, reason: Failure) -> None:
        """The crust connection under the stream ended (or the node is stopping)."""
        if not self._ended:
            self._end(reason)

    # -- the end -------------------------------------------------------------------------------------

    def _close_write(self) -> None:
        if self._write_open:
            self._write_open = False
            self.channel.send_fin()

    def _linger_expired(self) -> None:
        self._linger = None
        if not self._ended:
            self.channel.reset(REASON_CLOSED, f"no end of stream from the peer within {self.linger:g} s of the close")
            self._end(Failure(ConnectionDone("the stream was closed (the peer did not finish in time)")),
                      reset=True)

    def _cancel_linger(self) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None

    def _end(self, reason: Failure, reset: bool = False) -> None:
        self._ended = True
        self._write_open = False
        self._cancel_linger()
        if not reset and reason.check(ConnectionDone):
            self.channel.closed()  # both ways ended cleanly (otherwise the channel was reset, or is gone)
        self._in, self._in_size = [], 0
        self.clock.callLater(0, self._report, reason)

    def _report(self, reason: Failure) -> None:
        self.connected = False
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                self.log.failure("stopProducing of {producer!r} failed", producer=producer)
        protocol = self.protocol
        if protocol is not None:
            try:
                protocol.connectionLost(reason)
            except Exception:
                self.log.failure("connectionLost of {protocol!r} failed", protocol=protocol)
        self.protocol = None
