"""
L{QuicDriver}: one aioquic (sans-I/O) QUIC connection driven by Twisted, and
its two L{QuicLane}s, the stream transports a crust connection runs on.

Everything that reaches aioquic goes through the driver: datagrams in
(L{QuicDriver.datagram_received}), datagrams out (the injected
C{send_datagram(data, addr)}), time (the injected C{IReactorTime}: aioquic's
single timer becomes one rescheduled C{callLater}), and events out (handshake,
stream data, connection ids, termination).

Sending is batched: a lane's C{write} only queues bytes and asks for one flush
in the current reactor turn (C{callLater(0)}); the flush hands each lane's
bytes to aioquic in one piece, builds every datagram aioquic may send now and
re-arms the timer.  Received stream data is likewise collected and handed to
the lane's receiver once per turn, in order.

Lanes: each side sends on two unidirectional streams of its own, I{urgent}
(crust's control frames and priorities 0-1) and I{bulk} (priorities >= 2), so
a large low-priority transfer never stands in front of a priority-0 message;
aioquic serves streams with data round-robin, packet by packet.  A client
sends on streams 2 (urgent) and 6 (bulk), a server on 3 and 7; data on any
other stream is a protocol error.

Backpressure is per lane: its producer is paused when the bytes not yet sent
on its stream (queued here, or buffered in aioquic beyond what flow and
congestion control let out) exceed C{high_water}, and resumed after a flush
leaves them at or below C{low_water}.

Application streams: bidirectional QUIC streams, opened by either side
(L{QuicDriver.open_stream}; the peer's go to C{stream_acceptor}, held until
there is one), each a L{QuicAppStream} that carries one of crust's byte
streams (L{crust.streams}).  Their receive window follows what the
application consumed (L{crust.transport.quic.tls.CrustQuicConnection}), so a
reader that stops reading stops its sender.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol as TypingProtocol

from aioquic.quic import events
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from OpenSSL import crypto
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from crust.errors import ConfigError, HandshakeRefused
from crust.identity import PeerId
from crust.transport.interfaces import ISecureTransport
from crust.transport.quic.congestion import CONGESTION_CONTROLS
from crust.transport.quic.tls import CrustQuicConnection, check_peer_certificate

# Application error codes in CONNECTION_CLOSE (frame type 0x1d)
CLOSED = 0  # a graceful close: every byte both ways was delivered
ABORTED = 1  # one side gave up on the connection (abortConnection, timeouts)
PROTOCOL_ERROR = 2  # the peer broke crust's use of QUIC (a stream crust does not use...)

_APPLICATION_CODES = {CLOSED: "closed", ABORTED: "aborted", PROTOCOL_ERROR: "protocol error"}

SendDatagram = Callable[[bytes, Any], Any]

TIMER_GRANULARITY = 0.001  # seconds: the shortest sleep a reactor's poll() honours


@dataclass(frozen=True)
class QuicOptions:
    """
    Settings of crust's QUIC connections.

    @ivar idle_timeout: seconds without receiving anything before QUIC gives
        up on the peer.  Keep it above the crust connection's inactivity
        timeout (120 s by default) so crust reports a lost peer with its own
        reason; QUIC's is the backstop.
    @ivar keepalive_interval: a PING goes out after this many seconds
        without sending anything (NAT mappings commonly expire after 30 s of
        silence); None disables keepalives.
    @ivar handshake_timeout: seconds for the QUIC handshake (and identity
        check) to complete.
    @ivar close_timeout: seconds a graceful close may take (the peer
        acknowledging our data and finishing its own) before it is aborted.
    @ivar high_water: unsent bytes on a lane at which its producer is paused.
    @ivar low_water: unsent bytes at or below which it is resumed.
    @ivar max_receive_buffer: bytes held for a lane whose reading is paused
        (or not yet attached) before the connection is aborted.
    @ivar max_connections: connections a dispatcher holds at once (both
        directions); further Initials are dropped and counted.
    @ivar outbound_reserve: of those, how many connections the peers that
        open connections to us can never take, so our own connects always
        find room: inbound connections hold at most C{max_connections -
        outbound_reserve}.  None (default): a quarter of C{max_connections}.
    @ivar retry_threshold: once this many inbound handshakes are pending, an
        Initial from an address not yet validated is answered with a Retry
        (RFC 9000 section 8.1.2: a stateless token the client sends back from
        its address) instead of a connection; 0 validates every address
        first (one more round trip on every incoming connection).
    @ivar max_pending_inbound: inbound handshakes pending at once (Initials
        beyond it are dropped and counted).
    @ivar max_pending_per_source: inbound handshakes pending from one IP
        address; an Initial beyond it is answered with a Retry, or dropped
        when its address was validated already.
    @ivar max_datagram_size: bytes per UDP datagram we send (1200..65527).
    @ivar max_data: the connection flow-control window we grant at first
        (aioquic raises it as data arrives).
    @ivar max_stream_data: the same per stream.
    @ivar congestion_control: C{"crust-bbr"} (crust's model-based controller,
        L{crust.transport.quic.congestion}; random loss does not slow it down),
        C{"reno"} or C{"cubic"} (aioquic's loss-based ones).
    """

    idle_timeout: float = 130.0
    keepalive_interval: Optional[float] = 15.0
    handshake_timeout: float = 10.0
    close_timeout: float = 10.0
    high_water: int = 1 << 20
    low_water: int = 256 * 1024
    max_receive_buffer: int = 16 << 20
    max_connections: int = 256
    outbound_reserve: Optional[int] = None
    retry_threshold: int = 16
    max_pending_inbound: int = 64
    max_pending_per_source: int = 8
    max_datagram_size: int = 1200
    max_data: int = 1 << 20
    max_stream_data: int = 1 << 20
    congestion_control: str = "crust-bbr"

    def __post_init__(self) -> None:
        def positive(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"QUIC option {name} must be a positive number, not {value!r}")

        for name in ("idle_timeout", "handshake_timeout", "close_timeout", "high_water", "max_receive_buffer",
                     "max_connections", "max_data", "max_stream_data", "max_pending_inbound",
                     "max_pending_per_source"):
            positive(name, getattr(self, name))
        for name in ("max_connections", "max_pending_inbound", "max_pending_per_source"):
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"QUIC option {name} must be a whole number, not {getattr(self, name)!r}")
        reserve = self.outbound_reserve
        if reserve is not None and (isinstance(reserve, bool) or not isinstance(reserve, int)
                                    or not 0 <= reserve < self.max_connections):
            raise ConfigError(f"QUIC option outbound_reserve must be in 0..max_connections-1, not {reserve!r}")
        threshold = self.retry_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or \
                not 0 <= threshold <= self.max_pending_inbound:
            raise ConfigError(f"QUIC option retry_threshold must be in 0..max_pending_inbound, not {threshold!r}")
        if self.keepalive_interval is not None:
            positive("keepalive_interval", self.keepalive_interval)
        if not isinstance(self.low_water, int) or not 0 <= self.low_water < self.high_water:
            raise ConfigError(f"QUIC option low_water must be in 0..high_water-1, not {self.low_water!r}")
        if not isinstance(self.max_datagram_size, int) or not 1200 <= self.max_datagram_size <= 65527:
            raise ConfigError(f"QUIC option max_datagram_size must be in 1200..65527, not {self.max_datagram_size!r}")
        if self.congestion_control not in CONGESTION_CONTROLS:
            raise ConfigError("QUIC option congestion_control must be one of {}, not {!r}".format(
                ", ".join(CONGESTION_CONTROLS), self.congestion_control))

    @property
    def max_inbound(self) -> int:
        """The most connections peers may open to us at once (L{max_connections} less the outbound reserve)."""
        reserve = self.outbound_reserve if self.outbound_reserve is not None else self.max_connections // 4
        return self.max_connections - reserve

    def configuration_options(self) -> dict[str, Any]:
        """The keyword arguments of L{crust.transport.quic.tls.make_configuration}."""
        return dict(idle_timeout=self.idle_timeout, max_datagram_size=self.max_datagram_size,
                    max_data=self.max_data, max_stream_data=self.max_stream_data,
                    congestion_control=self.congestion_control)


class _QuicEnded(Exception):
    def __init__(self, message: str, *, error_code: Optional[int] = None, reason: str = "",
                 by_peer: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code
        self.reason = reason
        self.by_peer = by_peer

    def __str__(self) -> str:
        return self.message


class QuicConnectionDone(_QuicEnded, ConnectionDone):
    """The QUIC connection closed cleanly (every byte both ways delivered)."""


class QuicConnectionLost(_QuicEnded, ConnectionLost):
    """The QUIC connection ended otherwise; the message says why and who decided."""


class DriverOwner(TypingProtocol):
    """What a driver reports to its dispatcher."""

    def cid_issued(self, driver: "QuicDriver", cid: bytes) -> None: ...
    def cid_retired(self, driver: "QuicDriver", cid: bytes) -> None: ...
    def driver_terminated(self, driver: "QuicDriver") -> None: ...


@implementer(ISecureTransport, IPushProducer)
class QuicLane:
    """
    One direction pair of streams as a Twisted transport: C{write} sends on
    our stream, the peer's stream's bytes go to C{receiver.dataReceived}.
    Closing either lane closes the whole connection.  As a push producer it
    pauses and resumes I{reading} (bytes are held, up to
    C{max_receive_buffer}).
    """

    disconnecting = False

    def __init__(self, driver: "QuicDriver", name: str, send_stream_id: int, receive_stream_id: int) -> None:
        self.driver = driver
        self.name = name
        self.send_stream_id = send_stream_id
        self.receive_stream_id = receive_stream_id
        self.receiver: Any = None
        self.producer: Any = None
        self.producer_paused = False
        self.reading_paused = False
        self.fin_received = False
        self.bytes_written = 0
        self.bytes_received = 0
        self._out: list[bytes] = []
        self._out_size = 0
        self._handed = 0  # bytes given to aioquic
        self._stream: Any = None  # aioquic's QuicStream, once it exists
        self._fin = False  # FIN wanted after the queued bytes
        self._fin_handed = False
        self._in: list[bytes] = []
        self._in_size = 0

    def __repr__(self) -> str:
        return f"<QuicLane {self.name} out={self.send_stream_id} in={self.receive_stream_id} {self.driver!r}>"

    # -- ITransport ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._fin or self.driver.ended or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        self._out.append(data)
        self._out_size += len(data)
        self.bytes_written += len(data)
        self.driver.schedule_flush()
        if self.producer is not None and not self.producer_paused and self.unsent > self.driver.options.high_water:
            self.producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.driver.lose_connection()

    def abortConnection(self) -> None:
        self.driver.abort_connection("aborted by the application")

    def getPeer(self):
        return self.driver.peer_address()

    def getHost(self):
        return self.driver.host_address()

    def getPeerCertificate(self) -> Optional[crypto.X509]:
        """The peer's certificate (as pyOpenSSL's C{X509}, like Twisted's TLS transports)."""
        cert = self.driver.peer_certificate
        return crypto.X509.from_cryptography(cert) if cert is not None else None

    # -- IConsumer ---------------------------------------------------------------

    def registerProducer(self, producer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"{self!r} already has a producer")
        if not streaming:
            raise ValueError("QUIC lanes take push (streaming) producers only")
        if self.driver.ended:
            producer.stopProducing()
            return
        self.producer = producer
        self.producer_paused = False
        if self.unsent > self.driver.options.high_water:
            self.producer_paused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.producer_paused = False

    # -- IPushProducer (reading) -----------------------------------------------------

    def pauseProducing(self) -> None:
        self.reading_paused = True

    def resumeProducing(self) -> None:
        self.reading_paused = False
        if self._in:
            self.driver.schedule_flush()

    def stopProducing(self) -> None:
        self.driver.lose_connection()

    # -- accounting ----------------------------------------------------------------

    @property
    def unsent(self) -> int:
        """Bytes written to this lane that have not been sent once yet."""
        stream = self._stream
        sent = stream.sender.highest_offset if stream is not None else 0
        return self._out_size + self._handed - sent

    @property
    def buffered_in(self) -> int:
        """Received bytes not yet handed to the receiver."""
        return self._in_size

    @property
    def all_acknowledged(self) -> bool:
        """Our FIN and every byte before it were acknowledged by the peer."""
        return self._fin_handed and self._stream is not None and self._stream.sender.is_finished

    # -- driver side -----------------------------------------------------------------

    def _push(self, quic: CrustQuicConnection) -> None:
        """Hand the queued bytes (and a wanted FIN) to aioquic."""
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self._out = []
            self._handed += self._out_size
            self._out_size = 0
            quic.send_stream_data(self.send_stream_id, data, end_stream=self._fin)
            self._fin_handed = self._fin
        elif self._fin and not self._fin_handed:
            quic.send_stream_data(self.send_stream_id, b"", end_stream=True)
            self._fin_handed = True

    def _open(self, quic: CrustQuicConnection) -> None:
        """Create our stream (nothing is sent): streams open in order, urgent first."""
        quic.send_stream_data(self.send_stream_id, b"")
        self._stream = quic._streams[self.send_stream_id]

    def _deliver(self) -> None:
        if not self._in or self.reading_paused or self.receiver is None:
            return
        data = self._in[0] if len(self._in) == 1 else b"".join(self._in)
        self._in = []
        self._in_size = 0
        self.receiver.dataReceived(data)


#: Streams the peer opened before anyone took them (C{stream_acceptor}), held at most.
MAX_HELD_STREAMS = 64


class QuicAppStream:
    """
    One bidirectional QUIC stream of the application.  What arrives goes to
    C{receiver} in the driver's flush: C{data_received(data)},
    C{fin_received()} (after all the data), C{reset_received(code)} (the
    peer reset the stream or stopped reading it; the stream is then
    forgotten); C{fin_sent()} once our FIN went to QUIC, and C{drained()}
    once C{notify_drain} is set and the bytes not yet sent fell to the low-water mark.
    """

    __slots__ = ("driver", "stream_id", "receiver", "notify_drain", "consumed_total", "bytes_written",
                 "bytes_received", "_out", "_out_size", "_handed", "_stream", "_fin", "_fin_handed",
                 "_fin_told", "_in", "_in_size", "_fin_received", "_fin_delivered", "_reset_code", "_gone")

    def __init__(self, driver: "QuicDriver", stream_id: int) -> None:
        self.driver = driver
        self.stream_id = stream_id
        self.receiver: Any = None
        self.notify_drain = False
        self.consumed_total = 0
        self.bytes_written = 0
        self.bytes_received = 0
        self._out: list[bytes] = []
        self._out_size = 0
        self._handed = 0
        self._stream: Any = None
        self._fin = False
        self._fin_handed = False
        self._fin_told = False
        self._in: list[bytes] = []
        self._in_size = 0
        self._fin_received = False
        self._fin_delivered = False
        self._reset_code: Optional[int] = None
        self._gone = False

    def __repr__(self) -> str:
        return f"<QuicAppStream {self.stream_id} {self.driver!r}>"

    @property
    def unsent(self) -> int:
        """Bytes written that have not been sent once yet."""
        stream = self._stream
        sent = stream.sender.highest_offset if stream is not None else 0
        return self._out_size + self._handed - sent

    def write(self, data: bytes) -> None:
        if self._fin or self._gone or self.driver.ended or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        self._out.append(data)
        self._out_size += len(data)
        self.bytes_written += len(data)
        self.driver._app_out.add(self)
        self.driver.schedule_flush()

    def end(self) -> None:
        """Send FIN after what is queued."""
        if self._fin or self._gone:
            return
        self._fin = True
        self.driver._app_out.add(self)
        self.driver.schedule_flush()

    def consumed(self, size: int) -> None:
        """The application took C{size} more bytes: the peer may send as many more (QUIC flow control)."""
        if self._gone or size <= 0:
            return
        self.consumed_total += size
        quic = self.driver.quic
        quic.stream_consumed[self.stream_id] = self.consumed_total
        stream = self._stream or quic._streams.get(self.stream_id)
        if stream is not None and \
                self.consumed_total + quic.stream_window - stream.max_stream_data_local >= quic.stream_window // 4:
            self.driver.schedule_flush()  # a MAX_STREAM_DATA is due

    def reset(self, code: int) -> None:
        """Abort both ways (RESET_STREAM and STOP_SENDING with C{code}) and forget the stream."""
        if self._gone:
            return
        driver = self.driver
        if not driver.ended:
            quic = driver.quic
            try:
                quic.reset_stream(self.stream_id, code)
            except ValueError:
                pass  # finished already
            if not self._fin_received and self.stream_id in quic._streams:
                try:
                    quic.stop_stream(self.stream_id, code)
                except ValueError:
                    pass
            driver.schedule_flush()
        self._out, self._out_size = [], 0
        self.driver._app_out.discard(self)
        self.forget()

    def forget(self) -> None:
        """
        Nothing more is delivered for this stream, nor can be written; what
        was written (and the FIN) still goes out.
        """
        if self._gone:
            return
        self._gone = True
        self._in, self._in_size = [], 0
        driver = self.driver
        driver._app.pop(self.stream_id, None)
        driver._app_in.discard(self)
        driver._app_drain.discard(self)
        driver.quic.stream_consumed.pop(self.stream_id, None)

    def _push(self, quic: CrustQuicConnection) -> None:
        if self._stream is None:
            self._stream = quic._streams.get(self.stream_id)
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self._out = []
            self._handed += self._out_size
            self._out_size = 0
            quic.send_stream_data(self.stream_id, data, end_stream=self._fin)
            self._fin_handed = self._fin
        elif self._fin and not self._fin_handed:
            quic.send_stream_data(self.stream_id, b"", end_stream=True)
            self._fin_handed = True
        if self._stream is None:
            self._stream = quic._streams.get(self.stream_id)


class QuicDriver:
    """
    Runs one L{CrustQuicConnection}; see the module docstring.

    @ivar ready: fires with this driver once the handshake completed and the
        peer's identity passed crust's checks, or fails (L{HandshakeRefused},
        L{QuicConnectionLost}) if the connection ends first.  Cancelling it
        aborts the connection.
    @ivar peer_id: the peer's L{PeerId}, once known.
    @ivar urgent: the L{QuicLane} for control frames and priorities 0-1.
    @ivar bulk: the L{QuicLane} for priorities >= 2.
    @ivar counters: datagrams and bytes both ways, send failures, keepalives.
    """

    log = Logger()

    def __init__(self, quic: CrustQuicConnection, clock: IReactorTime, send_datagram: SendDatagram,
                 options: QuicOptions, *, owner: Optional[DriverOwner] = None,
                 expected_peer: Optional[PeerId] = None,
                 host: Optional[Callable[[], Any]] = None) -> None:
        self.quic = quic
        self.clock = clock
        self.options = options
        self.is_client = quic.configuration.is_client
        self.expected_peer = expected_peer
        self.peer_id: Optional[PeerId] = None
        self.peer_certificate: Any = None
        self.established = False
        self.ended = False  # the connection is over for its user (connectionLost decided)
        self.terminated = False  # aioquic is done with it
        self.protocol: Any = None
        self.ready: Deferred = Deferred(self._cancel_ready)
        ours, theirs = (2, 3) if self.is_client else (3, 2)
        self.urgent = QuicLane(self, "urgent", ours, theirs)
        self.bulk = QuicLane(self, "bulk", ours + 4, theirs + 4)
        self._lanes = (self.urgent, self.bulk)
        self._lane_by_stream = {theirs: self.urgent, theirs + 4: self.bulk}
        #: called with each L{QuicAppStream} the peer opens (they are held until it is set)
        self.stream_acceptor: Optional[Callable[[QuicAppStream], None]] = None
        self._app: dict[int, QuicAppStream] = {}
        self._app_out: set[QuicAppStream] = set()
        self._app_in: set[QuicAppStream] = set()
        self._app_drain: set[QuicAppStream] = set()
        self._app_new: list[QuicAppStream] = []  # the peer's, not yet given to the acceptor
        self._app_peer_next = 1 if self.is_client else 0  # the peer's next new bidirectional stream id
        self._send = send_datagram
        self._owner = owner
        self._host = host
        self._flush_call: Any = None
        self._timer: Any = None
        self._timer_at: Optional[float] = None
        self._last_fired_at: Optional[float] = None
        self._keepalive: Any = None
        self._close_timer: Any = None
        self._closing = False  # graceful close under way
        self._failure: Optional[Failure] = None  # why it ended, once decided
        self._reported = False
        self._aborted = False  # we dropped the connection: nothing more is delivered
        self._ping_uid = 0
        self._last_sent = self._last_received = clock.seconds()
        self.counters = dict.fromkeys(
            ("datagrams_sent", "bytes_sent", "datagrams_received", "bytes_received", "send_failures",
             "keepalives", "keepalives_acked"), 0)
        self._handshake_timer: Any = clock.callLater(options.handshake_timeout, self._handshake_timed_out)

    def __repr__(self) -> str:
        peer = self.peer_id.short() if self.peer_id else "?"
        side = "client" if self.is_client else "server"
        return f"<QuicDriver {side} {peer} {_text(self.quic.get_peer_address())}>"

    # -- input -----------------------------------------------------------------------

    def start(self) -> None:
        """Send what aioquic has to send now (the client's first flight)."""
        self._flush()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """One datagram for this connection (the dispatcher routed it by connection id)."""
        if self.terminated:
            return
        counters = self.counters
        counters["datagrams_received"] += 1
        counters["bytes_received"] += len(data)
        now = self._last_received = self.clock.seconds()
        self.quic.receive_datagram(data, addr, now)
        if self._flush_call is None:  # events are handled in the flush, once per turn
            self._flush_call = self.clock.callLater(0, self._flush)

    def first_datagram_received(self, size: int, now: float) -> None:
        """
        The connection's first datagram (of C{size} bytes) went to aioquic
        already: the dispatcher hands an Initial over itself, to see that it
        decrypts before it holds a connection for it.
        """
        counters = self.counters
        counters["datagrams_received"] += 1
        counters["bytes_received"] += size
        self._last_received = now
        self.schedule_flush()

    # -- application side ---------------------------------------------------------------

    def attach(self, protocol, bulk_receiver: Any = None):
        """
        Give the connection to C{protocol}: it gets C{makeConnection(urgent)}
        and, as the handshake is already complete, C{handshakeCompleted()}
        (if it has one).  The bulk lane's bytes go to
        C{bulk_receiver.dataReceived} (or to whatever C{protocol} sets as
        C{transport.driver.bulk.receiver} in C{connectionMade}); without a
        bulk receiver, bulk bytes from the peer are a protocol error.
        Returns C{protocol}.
        """
        if self.protocol is not None:
            raise RuntimeError(f"{self!r} already carries {self.protocol!r}")
        self.protocol = protocol
        self.urgent.receiver = protocol
        self.bulk.receiver = bulk_receiver
        protocol.makeConnection(self.urgent)
        if self._reported:  # it ended before anyone was attached
            self.clock.callLater(0, self._tell_lost)
            return protocol
        handshake_completed = getattr(protocol, "handshakeCompleted", None)
        if handshake_completed is not None and not self.ended:
            handshake_completed()
        if self.bulk.buffered_in and self.bulk.receiver is None:
            self._protocol_error("the peer sent on the bulk stream, which this connection does not use")
        self.schedule_flush()
        return protocol

    def open_stream(self) -> QuicAppStream:
        """A new bidirectional stream of ours (nothing is sent on it yet)."""
        if not self.established or self.ended:
            raise RuntimeError(f"{self!r} is not established")
        stream_id = self.quic.get_next_available_stream_id()
        self.quic.send_stream_data(stream_id, b"")  # it exists now: the next id is another
        app = self._app[stream_id] = QuicAppStream(self, stream_id)
        self.quic.stream_consumed[stream_id] = 0
        return app

    def set_stream_acceptor(self, acceptor: Optional[Callable[[QuicAppStream], None]]) -> None:
        """Give the streams the peer opens to C{acceptor} (those it opened already first)."""
        self.stream_acceptor = acceptor
        if acceptor is not None and self._app_new:
            self.schedule_flush()

    def lose_connection(self) -> None:
        """
        Close cleanly: send what is queued, FIN both streams, and close the
        QUIC connection once the peer acknowledged everything and finished
        its own streams.  The protocol's C{connectionLost} follows.
        """
        if self._closing or self.ended:
            return
        if not self.established:
            self.abort_connection("closed before the handshake completed")
            return
        self._closing = True
        for lane in self._lanes:
            lane._fin = True
            lane.disconnecting = True
        self._close_timer = self.clock.callLater(self.options.close_timeout, self._close_timed_out)
        self.schedule_flush()

    def abort_connection(self, reason: str, error_code: int = ABORTED) -> None:
        """Close at once, dropping unsent data; the peer is told C{reason}."""
        if self.ended:
            return
        self._aborted = True
        self._decide(QuicConnectionLost(f"aborted: {reason}", error_code=error_code, reason=reason))
        self.quic.close(error_code=error_code, reason_phrase=reason)
        self.schedule_flush()

    def close_now(self, reason: str) -> None:
        """
        Abort, send the CONNECTION_CLOSE at once and forget the connection
        (no closing period): for when the socket is about to close.
        """
        if self.terminated:
            return
        self.abort_connection(reason)
        self._flush()
        if not self.terminated:
            self._terminated(None)

    def stats(self) -> dict[str, Any]:
        """Counters and state, for status displays."""
        return {
            "peer": str(self.peer_id) if self.peer_id else None,
            "address": _text(self.quic.get_peer_address()),
            "side": "client" if self.is_client else "server",
            "established": self.established,
            "ended": self.ended,
            **self.counters,
            **{f"{lane.name}_{key}": value for lane in self._lanes for key, value in (
                ("written", lane.bytes_written), ("received", lane.bytes_received), ("unsent", lane.unsent))},
        }

    # -- addresses --------------------------------------------------------------------

    def peer_address(self):
        """The peer's current address (it follows migration), as C{IPv4Address("UDP", ...)}."""
        return _udp_address(self.quic.get_peer_address())

    def host_address(self):
        if self._host is not None:
            return self._host()
        return IPv4Address("UDP", "0.0.0.0", 0)

    # -- flushing and timers ---------------------------------------------------------------

    def schedule_flush(self) -> None:
        if self._flush_call is None and not self.terminated:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self, now: Optional[float] = None) -> None:
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if self.terminated:
            return
        self._process_events()
        if self.terminated:
            return
        for lane in self._lanes:
            if lane._in:
                self._deliver(lane)
        if self.terminated:  # a receiver closed everything (close_now)
            return
        if (self._app_new or self._app_in) and not self.ended:
            self._deliver_app()
            if self.terminated:
                return
        if self.urgent.fin_received and not self._closing and not self.ended:
            self.lose_connection()  # the peer is closing: like a FIN on TCP
        quic = self.quic
        if self.established and not self.ended:
            for lane in self._lanes:
                if lane._out or (lane._fin and not lane._fin_handed):
                    lane._push(quic)
            if self._app_out:
                self._push_app()
        self._transmit(now)
        if self._app_drain and not self.ended:
            self._app_drained()
        if self._closing and not self.ended and self._all_done():
            self._decide(QuicConnectionDone("closed cleanly"))
            quic.close(error_code=CLOSED, reason_phrase="closed")
            self._transmit(now)
        if not self.ended and self._resume_producers() and not self.ended:
            # a producer that ran dry wrote again: what congestion control allows goes now
            for lane in self._lanes:
                if lane._out:
                    lane._push(quic)
            self._transmit(now)
        self._check_closed()
        if self._failure is not None and not self._reported:
            self._report()

    def _deliver_app(self) -> None:
        """Hand the peer's new streams to the acceptor, and what arrived to each stream's receiver."""
        acceptor = self.stream_acceptor
        if self._app_new and acceptor is not None:
            new, self._app_new = self._app_new, []
            for app in new:
                if not app._gone:
                    self._call(acceptor, app)
        for app in list(self._app_in):
            if self.ended:
                return
            if app.receiver is None:
                continue  # not taken yet: it keeps its data
            self._app_in.discard(app)
            if app._in:
                data = app._in[0] if len(app._in) == 1 else b"".join(app._in)
                app._in, app._in_size = [], 0
                self._call(app.receiver.data_received, data)
            if app._gone:
                continue
            if app._reset_code is not None:
                code = app._reset_code
                app.forget()
                self._call(app.receiver.reset_received, code)
            elif app._fin_received and not app._fin_delivered:
                app._fin_delivered = True
                self._call(app.receiver.fin_received)

    def _push_app(self) -> None:
        quic = self.quic
        told = []
        for app in self._app_out:
            app._push(quic)
            if app._fin_handed and not app._fin_told:
                app._fin_told = True
                told.append(app)
            if app.notify_drain:
                self._app_drain.add(app)
        self._app_out.clear()
        for app in told:
            if not app._gone and app.receiver is not None:
                self._call(app.receiver.fin_sent)

    def _app_drained(self) -> None:
        low = self.options.low_water
        for app in list(self._app_drain):
            if not app.notify_drain or app._gone:
                self._app_drain.discard(app)
            elif app.unsent <= low:
                self._app_drain.discard(app)
                app.notify_drain = False
                if app.receiver is not None:
                    self._call(app.receiver.drained)

    def _call(self, method: Callable[..., Any], *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            self.log.failure("{method!r} failed on {driver}", method=method, driver=repr(self))

    def _app_data(self, event: StreamDataReceived) -> None:
        stream_id = event.stream_id
        app = self._app.get(stream_id)
        if app is None:
            if stream_id & 2:
                self._protocol_error(f"the peer sent on unidirectional stream {stream_id}; crust uses only "
                                     f"streams {sorted(self._lane_by_stream)} from this peer")
                return
            if stream_id & 1 == (0 if self.is_client else 1) or stream_id < self._app_peer_next:
                return  # one of ours, or an old one of the peer's: it was reset or ended, nothing more for it
            if self.stream_acceptor is None and len(self._app_new) >= MAX_HELD_STREAMS:
                self._protocol_error(f"the peer opened over {MAX_HELD_STREAMS} streams nobody took yet")
                return
            self._app_peer_next = stream_id + 4
            app = self._app[stream_id] = QuicAppStream(self, stream_id)
            self.quic.stream_consumed[stream_id] = 0
            self._app_new.append(app)
        data = event.data
        if data:
            app._in.append(data)
            app._in_size += len(data)
            app.bytes_received += len(data)
            limit = self.options.max_receive_buffer
            if app._in_size > limit:
                self._protocol_error(f"over {limit} bytes held for stream {stream_id}")
                return
        if event.end_stream:
            app._fin_received = True
        self._app_in.add(app)

    def _app_reset(self, stream_id: int, code: int) -> None:
        app = self._app.get(stream_id)
        if app is not None and app._reset_code is None:
            app._reset_code = code
            self._app_in.add(app)

    def _resume_producers(self) -> bool:
        """Resume the producers of lanes at or below the low-water mark; whether any wrote."""
        low = self.options.low_water
        wrote = False
        for lane in self._lanes:
            if lane.producer_paused and lane.producer is not None and lane.unsent <= low:
                lane.producer_paused = False
                lane.producer.resumeProducing()
                wrote = wrote or bool(lane._out)
        return wrote

    def _transmit(self, now: Optional[float] = None) -> None:
        if self.terminated:
            return
        if now is None:
            now = self.clock.seconds()
        send = self._send
        counters = self.counters
        datagrams = self.quic.datagrams_to_send(now)
        for data, addr in datagrams:
            if send(data, addr) is False:
                counters["send_failures"] += 1
            counters["bytes_sent"] += len(data)
        if datagrams:
            counters["datagrams_sent"] += len(datagrams)
            self._last_sent = now
        self._process_events()  # sending issues connection ids
        if not self.terminated:
            self._arm_timer(now, bool(datagrams))

    def _arm_timer(self, now: float, sent: bool = False) -> None:
        at = self.quic.get_timer()
        if at == self._timer_at and (at is None or self._timer is not None):
            return
        self._timer_at = at
        if at is None:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            return
        delay = max(0.0, at - now)
        if sent and delay < TIMER_GRANULARITY:
            # Pacing asks for the next packet sooner than the reactor can sleep
            # (epoll rounds up to 1 ms): go on in the next reactor turn instead,
            # where the elapsed time lets the pacer release what it owes.
            delay = 0.0
        elif self._last_fired_at is not None and at <= self._last_fired_at:
            delay = max(delay, TIMER_GRANULARITY)  # a deadline aioquic already had: never spin
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self.clock.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        at = self._timer_at
        self._timer = None
        self._timer_at = None
        if self.terminated:
            return
        now = self.clock.seconds()
        self._last_fired_at = at
        # A timer may fire up to TIMER_GRANULARITY early (see _arm_timer): let
        # aioquic act on the deadline it asked for, but date what is sent by
        # the real clock, or its RTT samples come out short.
        self.quic.handle_timer(max(at, now) if at is not None else now)
        self._flush(now)

    def _start_keepalive(self) -> None:
        interval = self.options.keepalive_interval
        if interval is not None:
            self._keepalive = self.clock.callLater(interval, self._keepalive_tick)

    def _keepalive_tick(self) -> None:
        self._keepalive = None
        if self.ended or self.terminated:
            return
        interval = self.options.keepalive_interval
        assert interval is not None  # the tick was scheduled with it
        now = self.clock.seconds()
        silent = now - self._last_sent
        if silent >= interval * 0.999:
            self._ping_uid += 1
            self.counters["keepalives"] += 1
            self.quic.send_ping(self._ping_uid)
            self._flush(now)
            if self.ended or self.terminated:
                return
            silent = 0.0
        self._keepalive = self.clock.callLater(interval - silent, self._keepalive_tick)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if not self.established and not self.ended:
            seconds = self.options.handshake_timeout
            self.abort_connection(f"timeout: QUIC handshake not complete after {seconds:g} s")

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if not self.ended:
            self.abort_connection(f"timeout: the close did not complete within {self.options.close_timeout:g} s")

    # -- events --------------------------------------------------------------------------

    def _process_events(self) -> None:
        next_event = self.quic.next_event
        lanes = self._lane_by_stream
        limit = self.options.max_receive_buffer
        event = next_event()
        while event is not None:
            # stream data first: the common event costs one type() call
            if type(event) is StreamDataReceived:
                lane = lanes.get(event.stream_id)
                if lane is None:
                    if not self.ended:
                        self._app_data(event)
                elif not self.ended:
                    data = event.data
                    if data:
                        lane._in.append(data)
                        lane._in_size += len(data)
                        lane.bytes_received += len(data)
                        if lane._in_size > limit:
                            self._protocol_error(f"over {limit} bytes held for the {lane.name} lane, "
                                                 "which is not reading")
                    if event.end_stream:
                        lane.fin_received = True
            elif type(event) is events.HandshakeCompleted:
                self._handshake_completed(event)
            elif type(event) is events.ConnectionIdIssued:
                if self._owner is not None:
                    self._owner.cid_issued(self, event.connection_id)
            elif type(event) is events.ConnectionIdRetired:
                if self._owner is not None:
                    self._owner.cid_retired(self, event.connection_id)
            elif type(event) is events.PingAcknowledged:
                self.counters["keepalives_acked"] += 1
            elif type(event) is events.ConnectionTerminated:
                self._terminated(event)
            elif type(event) is events.StreamReset or type(event) is events.StopSendingReceived:
                if event.stream_id in lanes or event.stream_id & 2:
                    self._protocol_error(f"the peer reset stream {event.stream_id} (error {event.error_code})")
                else:
                    self._app_reset(event.stream_id, event.error_code)
            event = next_event()

    def _handshake_completed(self, event: events.HandshakeCompleted) -> None:
        if self.ended:
            return
        peer_id, problem = check_peer_certificate(self.quic, event.alpn_protocol, self.expected_peer)
        if problem is not None:
            error_code, reason, detail = problem
            # a peer that connected to us is refused in the dispatcher's one line about failed handshakes
            level = self.log.info if self.is_client else self.log.debug
            level("QUIC connection {driver} refused: {reason}: {detail}", driver=repr(self), reason=reason,
                  detail=detail)
            self._decide(HandshakeRefused(reason, detail))
            self.quic.close(error_code=error_code, frame_type=QuicFrameType.CRYPTO,
                            reason_phrase=f"{reason}: {detail}")
            self.schedule_flush()
            return
        self.peer_id = peer_id
        self.peer_certificate = self.quic.tls._peer_certificate
        for lane in self._lanes:
            lane._open(self.quic)
        self.established = True
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self._start_keepalive()
        self.log.info("QUIC connection to {peer} at {address} established ({side})",
                      peer=str(peer_id), address=_text(self.quic.get_peer_address()),
                      side="client" if self.is_client else "server")
        if not self.ready.called:
            self.ready.callback(self)

    def _protocol_error(self, detail: str) -> None:
        if self.ended:
            return
        self.log.warn("QUIC connection {driver}: {detail}; closing", driver=repr(self), detail=detail)
        self.abort_connection(f"protocol error: {detail}", error_code=PROTOCOL_ERROR)

    def _check_closed(self) -> None:
        """Learn that the connection closed (by the peer, or by aioquic on an error) as soon as it does."""
        event = self.quic.close_event
        if event is not None and self._failure is None:
            self._decide(_describe(event, self.quic.closed_by_peer))

    def _terminated(self, event: Optional[events.ConnectionTerminated]) -> None:
        self.terminated = True
        if self._failure is None and event is not None:
            if self.quic.close_event is None and event.reason_phrase == "Idle timeout":
                silent = self.clock.seconds() - self._last_received
                self._decide(QuicConnectionLost(
                    f"QUIC idle timeout: nothing received from the peer for {silent:.0f} s",
                    error_code=event.error_code, reason=event.reason_phrase))
            else:
                self._decide(_describe(event, self.quic.closed_by_peer))
        for lane in self._lanes:
            if lane._in:
                self._deliver(lane)
        if not self._reported:
            self._report()
        for name in ("_flush_call", "_timer", "_keepalive", "_handshake_timer", "_close_timer"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        self._timer_at = None
        if self._owner is not None:
            self._owner.driver_terminated(self)

    # -- the end -------------------------------------------------------------------------

    def _decide(self, error: Exception) -> None:
        if self._failure is None:
            self._failure = Failure(error)
            self.ended = True

    def _report(self) -> None:
        self._reported = True
        failure = self._failure
        assert failure is not None  # reported once decided
        if not self.ready.called:
            self.ready.errback(failure)
        level = self.log.info if self.established else self.log.debug
        level("QUIC connection {driver} ended: {reason}", driver=repr(self), reason=str(failure.value))
        for lane in self._lanes:
            producer, lane.producer = lane.producer, None
            if producer is not None:
                producer.stopProducing()
        self._tell_lost()

    def _tell_lost(self) -> None:
        """
        Tell the protocol the connection ended, then let go of it (as
        Twisted's transports do): the protocol holds its lanes, and through
        them us, so it is freed as soon as its user lets go of it.
        """
        protocol, failure = self.protocol, self._failure
        if protocol is not None:
            try:
                protocol.connectionLost(failure)
            except Exception:
                self.log.failure("connectionLost of {protocol!r} failed", protocol=protocol)
        self.protocol = None
        for lane in self._lanes:
            lane.receiver = None

    def _deliver(self, lane: QuicLane) -> None:
        if self._aborted:
            return
        if lane.receiver is None and lane is self.bulk and self.protocol is not None:
            self._protocol_error("the peer sent on the bulk stream, which this connection does not use")
            return
        try:
            lane._deliver()
        except Exception:
            self.log.failure("{receiver!r} failed on data from {driver}", receiver=lane.receiver, driver=repr(self))
            self.abort_connection("internal error")

    def _all_done(self) -> bool:
        return all(lane.all_acknowledged and lane.fin_received for lane in self._lanes)

    def _cancel_ready(self, d: Deferred) -> None:
        self.abort_connection("connect cancelled")


def _describe(event: events.ConnectionTerminated, by_peer: bool) -> Exception:
    code, reason = event.error_code, event.reason_phrase
    if event.frame_type is None:  # application close
        code_text = _APPLICATION_CODES.get(code, f"application error {code}")
    elif code >= QuicErrorCode.CRYPTO_ERROR and code < QuicErrorCode.CRYPTO_ERROR + 256:
        code_text = f"TLS alert {code - QuicErrorCode.CRYPTO_ERROR}"
    else:
        try:
            code_text = QuicErrorCode(code).name
        except ValueError:
            code_text = f"transport error {code:#x}"
    who = "the peer" if by_peer else "QUIC"
    detail = f"{code_text}: {reason}" if reason and reason != code_text else code_text
    if event.frame_type is None and code == CLOSED:
        return QuicConnectionDone(f"{who} closed the connection cleanly",
                                  error_code=code, reason=reason, by_peer=by_peer)
    return QuicConnectionLost(f"{who} closed the connection ({detail})",
                              error_code=code, reason=reason, by_peer=by_peer)


def _udp_address(addr: Any):
    if not addr:
        return None
    host, port = addr[0], addr[1]
    if ":" in host:
        return IPv6Address("UDP", host, port)
    return IPv4Address("UDP", host, port)


def _text(addr: Any) -> str:
    if not addr:
        return "-"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


__all__ = [
    "ABORTED",
    "CLOSED",
    "PROTOCOL_ERROR",
    "QuicConnectionDone",
    "QuicConnectionLost",
    "QuicDriver",
    "QuicLane",
    "QuicOptions",
]
