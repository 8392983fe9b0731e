"""
L{PeerConnection}: one secure connection to a peer, as a Twisted protocol.

It runs inside Twisted's TLS wrapper (the transport it sees is the TLS
layer) and joins the pure parts together: the L{Handshake} machine, the
L{FrameDecoder}, the priority L{SendQueues} and the liveness timers.  The
L{ConnectionOwner} (the service's peer table) decides what a connection means
for the node; the connection only reports.

Sending never piles unbounded data into the transport: the connection is a
push producer registered with its transport, writes go straight through while
the transport accepts them, and are queued by priority (bounded in bytes)
while it is paused.

A L{StreamSource} (the byte streams multiplexed on the connection,
L{crust.streams}) shares the transport with the messages: what it has to
send goes out after queued messages of priorities 0 and 1, and alternates
with queued messages of priorities 2 and above, one batch each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol as TypingProtocol

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from crust.address import Address
from crust.errors import InvalidPriority, MessageTooLarge, PeerNotConnected, ProtocolViolation, SendQueueFull
from crust.session.framing import FrameDecoder, FrameTooLarge
from crust.session.handshake import Handshake, HandshakeState
from crust.identity import PeerId
from crust.session.purpose import ACCEPTED, Purpose
from crust.session.send_queue import NEVER_DROPPED_BELOW, Dropped, SendQueues
from crust.session.signed_frames import MESSAGE_FRAME_TYPES
from crust.transport.interfaces import ISecureTransport
from crust.transport.tls import cert_info, peer_id_from_certificate, readable_certificate
from crust.wire import (
    CHOOSE_FRAME,
    CHOOSE_HANDOVER_FRAME,
    HANDOVER_PAYLOAD,
    MOVE_FRAME,
    DATA,
    GRANT_FRAME,
    HEARTBEAT_ASK,
    HEARTBEAT_ASK_FRAME,
    HEARTBEAT_FRAME,
    CloseReason,
    FrameType,
    CertInfo,
    Hello,
    Intent,
    RejectReason,
    decode_reason,
    encode_close,
    encode_reject,
    pack_header,
)

_CLOSE_GRACE = 5.0  # seconds a closing connection may take to flush before it is aborted
# Twisted's TCP transports read up to, and pause their producer above,
# bufferSize bytes (64 KiB): larger batches mean fewer wake-ups per megabyte.
_SOCKET_IO_SIZE = 256 * 1024
_DRAIN_BATCH = 64 * 1024  # bytes of queued frames joined into one transport write
_LIVENESS_GRAIN = 4  # while sending, the liveness timer looks every interval/4


class StreamSource(TypingProtocol):
    """Frames that share a connection's transport with its messages (L{PeerConnection.set_stream_source})."""

    def pending(self) -> bool:
        """Whether there is something to send."""

    def take(self, limit: int) -> bytes:
        """Frames to send now: at least one when L{pending}, more while they fit in C{limit} bytes."""


class ConnectionOwner(TypingProtocol):
    """What a L{PeerConnection} reports to, and asks of, its node."""

    def hello_for(self, conn: "PeerConnection") -> Hello: ...
    def claim(self, conn: "PeerConnection", peer_id: PeerId) -> bool: ...
    def promote(self, conn: "PeerConnection", peer_id: PeerId) -> None: ...
    def candidate(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None: ...
    def admit(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None: ...
    def probed(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None: ...
    def late_hello(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None: ...
    def refused(self, conn: "PeerConnection", reason: str, detail: str) -> None: ...
    def bad_input(self, conn: "PeerConnection", kind: str, reason: str) -> None:
        """What the peer sent ends C{conn} (a protocol violation, an oversize frame): say so, at a bounded rate."""
    def failed_early(self, conn: "PeerConnection", kind: str, reason: str) -> None:
        """
        C{conn} ended before its handshake got anywhere (no TLS, a foreign
        certificate, a timeout before HELLO): nothing else said so.
        """
    def lost(self, conn: "PeerConnection", reason: str) -> None: ...
    def heir(self, conn: "PeerConnection") -> Optional["PeerConnection"]:
        """
        The connection that takes over the messages C{conn} still had queued
        as it ended (the peer's standby, when C{conn} was its active one), or None.
        """
    def dropped(self, conn: "PeerConnection", drops: list[Dropped], reason: str) -> None: ...
    def writable(self, conn: "PeerConnection") -> None: ...
    def control_received(self, conn: "PeerConnection", ftype: int, payload: bytes) -> bool: ...
    def moved(self, conn: "PeerConnection", lane: str) -> None: ...
    def moves_sent(self, conn: "PeerConnection") -> None: ...


@dataclass(frozen=True)
class PathInfo:
    """
    How a connection was made.

    @ivar kind: C{direct}, C{mapped} (to a port-mapped address), C{punched-tcp},
        C{punched-udp} (hole punching), C{relayed}; C{incoming} for a
        connection the peer opened to us that no punch of ours explains.
    @ivar strategy: the dial strategy that made it (C{tcp}, C{quic}, C{tcp-punch}...), or "".
    @ivar elapsed: seconds from the connect call to the connection being
        active, or None for connections nobody of ours waited on.
    @ivar via: for a relayed connection, the relay: a peer id, or
        C{turn:HOST:PORT}.
    """

    kind: str
    strategy: str = ""
    elapsed: Optional[float] = None
    via: Optional[str] = None  # relayed: the relay (a peer id, or "turn:HOST:PORT")

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind, "strategy": self.strategy,
                                "elapsed": round(self.elapsed, 3) if self.elapsed is not None else None}
        if self.via is not None:
            body["via"] = self.via
        return body


def is_relayed(conn: Any) -> bool:
    """Whether C{conn} (a L{PeerConnection}, or None) runs through a relay: a crust circuit or TURN."""
    if conn is None:
        return False
    path = conn.path
    return conn.transport_name == "relay" or (path is not None and path.kind == "relayed")


@implementer(IHandshakeListener, IPushProducer)
class PeerConnection(Protocol):
    """One crust connection; see the module docstring."""

    log = Logger()
    transport: Optional[ISecureTransport]
    connected: bool

    def __init__(
        self,
        owner: ConnectionOwner,
        clock: IReactorTime,
        *,
        local_id: PeerId,
        network: str,
        intent: Intent = Intent.CONNECT,
        expected_peer: Optional[PeerId] = None,
        initiator: bool,
        max_message_size: int,
        max_queued_bytes: int,
        drop_after: float,
        heartbeat_interval: float,
        inactivity_timeout: float,
        handshake_timeout: float,
        transport_name: str = "tcp",
        purpose: Purpose = ACCEPTED,
    ) -> None:
        self.owner = owner
        self.purpose = purpose  # what this connection is for: the owner reports outcomes to it
        self.clock = clock
        self.initiator = initiator
        self.transport_name = transport_name
        self.handshake = Handshake(self, local_id, network, intent, expected_peer, initiator=initiator)
        self.max_message_size = max_message_size
        self.max_queued_bytes = max_queued_bytes
        self.heartbeat_interval = heartbeat_interval
        self.inactivity_timeout = inactivity_timeout
        self.handshake_timeout = handshake_timeout
        self.queues = SendQueues(drop_after)
        self._decoder = FrameDecoder(max_message_size, self._data_before_active, self._control)
        self._paused = False
        self._producing = False  # registered as our transport's producer (and the bulk lane's, on QUIC)
        self._timer: Optional[IDelayedCall] = None
        self._close_timer: Optional[IDelayedCall] = None
        self._tls_problem = ""
        self._early: Optional[tuple[str, str]] = None  # (kind, reason) of an early failure (see failed_early)
        self._reported = False  # a line about how this connection failed was asked for already
        self._verified_peer: Optional[PeerId] = None
        self._verified_info: Optional[CertInfo] = None
        self.tls_verdict: Optional[bool] = None
        self._close_reason: Optional[str] = None  # set when we decide to close
        self.close_code: Optional[str] = None  # the CloseReason code of the close that ended it (ours or the peer's)
        self._last_sent = 0.0
        self._sent = False  # data went out since the liveness timer last looked
        self._direct = False  # see _update_direct
        self._usable = False  # active, connected, not closing (see _update_direct)
        self._write: Callable[[bytes], object] = _discard
        # QUIC carries priorities >= 2 on a second ("bulk") stream; TCP has none
        self._bulk: Any = None
        self._bulk_lane: Optional[_BulkLane] = None
        self._bulk_decoder: Optional[FrameDecoder] = None
        self._bulk_paused = False  # the bulk lane asked us to stop writing
        self._direct_bulk = False
        self._queue_bulk = False  # bulk sends go to bulk_queues without _send_checked (see _update_direct)
        self._bulk_write: Callable[[bytes], object] = _discard
        self.bulk_queues = SendQueues(drop_after)
        self._last_received = 0.0
        self._asked_at = -1.0  # the _last_received our last asking HEARTBEAT went out after
        self._answer_waiters: list[Deferred] = []  # ask_peer's: fired by the next HEARTBEAT that comes
        self.peer_address: Optional[Address] = None
        self.local_address: Optional[Address] = None
        self.deliver: Callable[[bytes], object] = _discard
        # messages (and their bytes) that came in message frames, counted by the frames' handler (signed ones)
        self.frame_messages = [0, 0]
        self.connected = False
        self.path: Optional[PathInfo] = None  # how this connection was made (set when it is promoted)
        self.handover_chosen = False  # chosen to replace the peer's active connection (doc/protocol.md §5b)
        self._move_pending: list[str] = []  # lanes whose MOVE waits for their queued data to go out
        # messages received while held (handover): DATA payloads, and (type, payload) of other message frames
        self._held: Optional[list[Any]] = None
        self._stream_source: Optional[StreamSource] = None
        self._streams_next = False  # whose turn it is: the stream source's, or queued messages'

    # -- identity -----------------------------------------------------------

    @property
    def peer_id(self) -> Optional[PeerId]:
        return self.handshake.peer_id

    @property
    def state(self) -> HandshakeState:
        return self.handshake.state

    @property
    def is_active(self) -> bool:
        return self.handshake.state is HandshakeState.ACTIVE

    @property
    def is_bootstrap(self) -> bool:
        """Whether this connection was opened to bootstrap (by either side)."""
        return self.handshake.is_bootstrap

    @property
    def closing(self) -> bool:
        """We decided to close: nothing more is sent or delivered."""
        return self._close_reason is not None

    def __repr__(self) -> str:
        peer = self.peer_id.short() if self.peer_id else "?"
        return f"<PeerConnection {self.transport_name} {peer} {self.peer_address} {self.state.value}>"

    # -- Twisted protocol ----------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.connected = True
        self.peer_address = Address.from_sockaddr(self.transport_name, transport.getPeer())
        self.local_address = Address.from_sockaddr(self.transport_name, transport.getHost())
        transport.registerProducer(self, True)
        self._producing = True
        socket_transport = getattr(transport, "transport", None)  # TCP under the TLS layer
        if socket_transport is not None and getattr(socket_transport, "bufferSize", 0) < _SOCKET_IO_SIZE:
            socket_transport.bufferSize = _SOCKET_IO_SIZE
        driver = getattr(transport, "driver", None)
        if driver is not None:  # QUIC: a second lane for priorities >= 2
            self._bulk = driver.bulk
            self._bulk_lane = _BulkLane(self)
            self._bulk_decoder = FrameDecoder(self.max_message_size, self._data_before_active, _bulk_control)
            self._bulk.receiver = self._bulk_lane
            self._bulk.registerProducer(self._bulk_lane, True)
            self._bulk.pauseProducing()  # hold the peer's bulk bytes until CHOOSE: they may overtake it
        now = self.clock.seconds()
        self._last_received = self._last_sent = now
        self._timer = self.clock.callLater(self.handshake_timeout, self._handshake_timed_out)

    def tls_verify_peer(self, peer_id: Optional[PeerId], problem: str, info: Optional[CertInfo] = None) -> bool:
        """Called by the TLS layer while the handshake runs."""
        problem = problem or self.handshake.check_key(peer_id) or ""
        if problem:
            self._tls_problem = problem
            self.tls_verdict = False
            return False
        self._verified_peer = peer_id
        self._verified_info = info
        self.tls_verdict = True
        return True

    def handshakeCompleted(self) -> None:
        transport = self.transport
        assert transport is not None
        peer_id, info = self._verified_peer, self._verified_info  # what the verify callback saw
        if peer_id is None:  # QUIC: the driver checked the certificate; read it here
            driver = getattr(transport, "driver", None)
            cert = getattr(driver, "peer_certificate", None)
            if cert is None:
                x509 = transport.getPeerCertificate()
                cert = readable_certificate(x509) if x509 is not None else None
            if cert is not None:
                peer_id, info = peer_id_from_certificate(cert), cert_info(cert)
        problem = self.handshake.check_key(peer_id)
        if problem or peer_id is None:
            self._tls_problem = problem or "no peer certificate"
            transport.abortConnection()
            return
        self.handshake.tls_complete(peer_id, info)

    def dataReceived(self, data: bytes) -> None:
        self._feed(self._decoder, data)

    def _bulk_received(self, data: bytes) -> None:
        self._feed(self._bulk_decoder, data)

    def _feed(self, decoder: Optional[FrameDecoder], data: bytes) -> None:
        if self._close_reason is not None or decoder is None:
            return  # we are closing: nothing the peer says now changes that
        self._last_received = self.clock.seconds()
        try:
            decoder.feed(data)
        except ProtocolViolation as e:
            self._violation(e)

    def _violation(self, e: ProtocolViolation) -> None:
        """The peer broke the protocol: say why (at a bounded rate: the owner's), and close."""
        self._reported = True
        if isinstance(e, FrameTooLarge):
            self.owner.bad_input(self, "oversize", str(e))
            self.close(CloseReason.OVERSIZE, str(e))
            return
        self.owner.bad_input(self, "protocol-violation", f"protocol violation: {e}")
        if self.handshake.state is not HandshakeState.CLOSED:
            self.handshake.closed()
        self.close(CloseReason.PROTOCOL_ERROR, str(e))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self._direct = self._direct_bulk = self._queue_bulk = self._usable = False
        for timer in (self._timer, self._close_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._close_timer = None
        was = self.handshake.state
        self.handshake.closed()
        if self._close_reason is not None:
            text = self._close_reason
        elif self._tls_problem:
            text = self._tls_problem
        elif was is HandshakeState.AWAIT_TLS:
            text = f"TLS handshake failed: {_failure_text(reason)}"
        else:
            text = f"connection lost: {_failure_text(reason)}"
        early = self._early
        if early is None and not self._reported and was in _EARLY_STATES and self._close_reason is None:
            if self._tls_problem:
                early = ("certificate", self._tls_problem)
            elif was is HandshakeState.AWAIT_TLS:
                # OpenSSL refused what came (random bytes, an HTTP request...), or it ended mid-handshake
                early = ("not-tls" if isinstance(reason.value, SSL.Error) else "closed-during-tls", text)
            else:
                early = ("closed-during-handshake", text)
        if early is not None and not self._reported:
            self._reported = True
            self.owner.failed_early(self, *early)
        if self.queues.count or self.bulk_queues.count:
            heir = self.owner.heir(self)
            if heir is not None:  # the connection goes on elsewhere: what was not sent yet goes there
                heir.adopt(self.queues.take_frames_of(DATA) + self.bulk_queues.take_frames_of(DATA))
        lost = self.queues.clear() + self.bulk_queues.clear()
        if lost:
            self.owner.dropped(self, lost, "connection closed")
        self.owner.lost(self, text)
        waiters, self._answer_waiters = self._answer_waiters, []
        for d in waiters:  # (after the owner: whoever waited finds the connection gone from it)
            d.errback(Failure(ConnectionDone(text)))
        # the reason's traceback holds the frames that made it (the TLS layer's, with the TLS
        # connection in them), and through them the reason itself: keep its text only
        reason.cleanFailure()
        self._let_go()

    def _let_go(self) -> None:
        """
        The connection ended: drop the references back to it from its parts
        (the handshake's delegate, the decoders' handlers, the writers), so
        that it is freed as soon as nobody else holds it, not at the next full
        collection of cyclic garbage (a node under churn would otherwise
        carry every ended connection until then).
        """
        self.handshake.detach()
        if self._producing:  # it ended without our close: our transport still holds us as its producer
            self._producing = False
            if self._bulk is not None:
                self._bulk.unregisterProducer()
            if self.transport is not None:
                self.transport.unregisterProducer()
        if self._bulk is not None:
            self._bulk.receiver = None
        self._bulk_lane = None  # (it holds us)
        for decoder in (self._decoder, self._bulk_decoder):
            if decoder is not None:
                decoder.set_handlers(_discard, _ignore_control)
                decoder.reset()
        self._write = self._bulk_write = _discard

    # -- IPushProducer -------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        self._direct = False

    def resumeProducing(self) -> None:
        self._paused = False
        source = self._stream_source
        if self.queues or (source is not None and source.pending()):
            self._drain()
        self._update_direct()

    def stopProducing(self) -> None:
        self._paused = True
        self._direct = False

    # -- sending ---------------------------------------------------------------

    def send_message(self, data: bytes, priority: int) -> None:
        """
        Send one message.  Raises at once, queueing nothing, if it is over the
        size limit, the priority is invalid, the connection is closing, or the
        queue is at its bound.
        """
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        if size <= self.max_message_size and type(priority) is int and 0 <= priority <= 255:
            if priority >= 2 and self._bulk is not None:
                if self._direct_bulk:
                    self._bulk_write(pack_header(size + 1, DATA) + data)
                    self._sent = True
                    return
                if self._queue_bulk:
                    # the bulk lane is paused (or its queue not yet drained): queue, as
                    # _send_checked would, without re-checking what we know
                    queues = self.bulk_queues
                    if queues.size + self.queues.size + size <= self.max_queued_bytes:
                        queues.push(priority, pack_header(size + 1, DATA), data, self.clock.seconds())
                        return
            elif self._direct:
                # the hot path: the transport takes data, nothing is queued
                self._write(pack_header(size + 1, DATA) + data)
                self._sent = True  # the liveness timer reads the clock, not every send
                return
            elif self._paused and self._usable:
                # the transport is full: queue by priority (the checks of _send_checked hold)
                queues = self.queues
                if queues.size + self.bulk_queues.size + size <= self.max_queued_bytes:
                    queues.push(priority, pack_header(size + 1, DATA), data, self.clock.seconds())
                    return
        self._send_checked(data, size, priority)

    def _send_checked(self, data: bytes, size: int, priority: int) -> None:
        """The slow path of L{send_message}: errors, queueing, state changes."""
        if size > self.max_message_size:
            raise MessageTooLarge(size, self.max_message_size)
        if type(priority) is not int or not 0 <= priority <= 255:
            raise InvalidPriority(f"priority must be an integer in 0..255, not {priority!r}")
        if self._close_reason is not None or not self.connected or not self.is_active:
            raise PeerNotConnected(f"the connection is not active ({self._close_reason or self.state.value})")
        bulk = priority >= 2 and self._bulk is not None
        queues = self.bulk_queues if bulk else self.queues
        if (self._bulk_paused if bulk else self._paused) or queues.count:
            now = self.clock.seconds()
            if self.queued_bytes + size > self.max_queued_bytes:
                self._expire(now)
                if self.queued_bytes + size > self.max_queued_bytes:
                    raise SendQueueFull(
                        f"{self.queued_bytes} bytes already queued for this peer (bound {self.max_queued_bytes})"
                    )
            queues.push(priority, pack_header(size + 1, DATA), data, now)
            return
        transport = self.transport
        assert transport is not None  # connected
        (self._bulk.write if bulk else transport.write)(pack_header(size + 1, DATA) + data)
        self._sent = True
        self._update_direct()

    def send_frame(self, ftype: int, prefix: bytes, payload: bytes, priority: int, bounded: bool = True) -> None:
        """
        Send a frame that carries messages (L{MESSAGE_FRAME_TYPES}: a signed
        message, a signed batch): C{prefix} then C{payload}, queued by
        C{priority} and sent on its lane as a message of that priority is.
        Raises as L{send_message}, queueing nothing; with C{bounded} false
        it is queued even past L{max_queued_bytes} (its messages were
        counted against the bound when they were sent).
        """
        size = len(prefix) + len(payload)
        if size > self.max_message_size:
            raise MessageTooLarge(size, self.max_message_size)
        if type(priority) is not int or not 0 <= priority <= 255:
            raise InvalidPriority(f"priority must be an integer in 0..255, not {priority!r}")
        if self._close_reason is not None or not self.connected or not self.is_active:
            raise PeerNotConnected(f"the connection is not active ({self._close_reason or self.state.value})")
        header = pack_header(size + 1, ftype) + prefix
        bulk = priority >= 2 and self._bulk is not None
        queues = self.bulk_queues if bulk else self.queues
        if (self._bulk_paused if bulk else self._paused) or queues.count:
            now = self.clock.seconds()
            if bounded and self.queued_bytes + size > self.max_queued_bytes:
                self._expire(now)
                if self.queued_bytes + size > self.max_queued_bytes:
                    raise SendQueueFull(
                        f"{self.queued_bytes} bytes already queued for this peer (bound {self.max_queued_bytes})"
                    )
            queues.push(priority, header, payload, now)
            return
        transport = self.transport
        assert transport is not None  # connected
        (self._bulk.write if bulk else transport.write)(header + payload)
        self._sent = True
        self._update_direct()

    def _update_direct(self) -> None:
        """May sends go straight to the transport?  (Active, not paused, nothing queued, not closing.)"""
        usable = self._usable = (self.connected and self._close_reason is None
                                 and self.handshake.state is HandshakeState.ACTIVE)
        self._direct = usable and not self._paused and not self.queues.count
        if self._direct:
            transport = self.transport
            assert transport is not None  # connected
            self._write = transport.write
        if self._bulk is not None:
            self._direct_bulk = usable and not self._bulk_paused and not self.bulk_queues.count
            self._queue_bulk = usable and not self._direct_bulk
            if self._direct_bulk:
                self._bulk_write = self._bulk.write

    # -- handover (doc/protocol.md §5b) -----------------------------------------------

    def adopt(self, frames: list[tuple[int, bytes, bytes]]) -> None:
        """
        Send the messages another connection to the peer had queued and did
        not send before it ended (this one carries on for it), ahead of
        anything sent from now on, each on its priority's lane.
        """
        if not frames or not self.connected:
            return
        now = self.clock.seconds()
        for priority, header, payload in frames:
            queues = self.bulk_queues if priority >= 2 and self._bulk is not None else self.queues
            queues.push(priority, header, payload, now)
        self._direct = self._direct_bulk = False  # nothing may overtake them
        if not self._paused:
            self._drain()
        self._update_direct()

    @property
    def lanes(self) -> int:
        """How many ordered lanes the connection has (QUIC: urgent and bulk; TCP: one)."""
        return 2 if self._bulk is not None else 1

    def send_move(self) -> None:
        """
        Send MOVE on every lane as the last frame there, once what is queued
        on the lane went out (the peer continues on the connection that
        replaced this one).  Nothing should be sent here after it.
        """
        self._move_pending = ["urgent"] + (["bulk"] if self._bulk is not None else [])
        self._flush_moves()

    def _flush_moves(self) -> None:
        if not self._move_pending or not self.connected:
            return
        transport = self.transport
        assert transport is not None
        if "urgent" in self._move_pending and not self.queues.count:
            self._move_pending.remove("urgent")
            transport.write(MOVE_FRAME)
        if "bulk" in self._move_pending and not self.bulk_queues.count and self._bulk is not None:
            self._move_pending.remove("bulk")
            self._bulk.write(MOVE_FRAME)
        if not self._move_pending:
            self.owner.moves_sent(self)

    def hold(self) -> None:
        """Keep what arrives from now on, undelivered, until L{release}; read no more meanwhile."""
        if self._held is not None:
            return
        self._held = []
        self.set_deliver(self._held.append, keep=True)
        self._pause_reading(True)

    def release(self, deliver: Callable[[bytes], object]) -> None:
        """Deliver what was held, then everything as it comes, to C{deliver}."""
        held, self._held = self._held or [], None
        self.set_deliver(deliver)
        self._pause_reading(False)
        for message in held:
            if type(message) is bytes:
                deliver(message)
                continue
            try:
                self._control(*message)  # a signed message, held in its place among the others
            except ProtocolViolation as e:
                self._violation(e)
                return

    def set_deliver(self, deliver: Callable[[bytes], object], keep: bool = False) -> None:
        """Where messages go from now on (C{keep}: the owner's C{deliver} stays what it was)."""
        if not keep:
            self.deliver = deliver
        if self.is_active:
            control = self._control
            self._decoder.set_handlers(deliver, control)
            if self._bulk_decoder is not None:
                self._bulk_decoder.set_handlers(deliver, _bulk_control_for(self))

    def _pause_reading(self, pause: bool) -> None:
        transport = self.transport
        socket_transport = getattr(transport, "transport", None)  # TCP under the TLS layer
        for producer in (socket_transport if socket_transport is not None else transport, self._bulk):
            method = getattr(producer, "pauseProducing" if pause else "resumeProducing", None)
            if method is not None:
                method()

    def send_control(self, frame: bytes) -> bool:
        """
        Send a control frame (a subsystem's, L{crust.session.signalling}) ahead
        of queued data; False if the connection is not active or is closing.
        """
        if not self.is_active or self._close_reason is not None or not self.connected:
            return False
        self._write_control(frame)
        return True

    def ask_peer(self) -> Deferred:
        """
        Send an asking HEARTBEAT (doc/protocol.md section 6) on this active
        connection: the returned Deferred fires with None at the next
        HEARTBEAT the peer sends, which shows that the peer holds the
        connection as active (it sends none before, and none once it closed
        it), and that it read everything we sent before the question (a
        CHOOSE, say) unless that HEARTBEAT crossed it.  It fails with
        C{ConnectionDone} if the connection ends first (or is not active).
        """
        d: Deferred = Deferred()
        if not self.is_active or self._close_reason is not None or not self.connected:
            d.errback(Failure(ConnectionDone("the connection is not active")))
            return d
        self._answer_waiters.append(d)
        self._write_control(HEARTBEAT_ASK_FRAME)
        return d

    def _write_control(self, frame: bytes) -> None:
        """Control frames (priority 0) go ahead of queued data."""
        if self.transport is None or not self.connected:
            return
        if self._paused and self.queues.count:
            self.queues.push(0, frame, b"", self.clock.seconds())
            return
        self.transport.write(frame)
        self._last_sent = self.clock.seconds()

    def set_channel_handler(self, ftype: int, handler: Optional[Callable[[int, bytes], object]]) -> None:
        """
        Control frames of C{ftype} (a subsystem's, L{crust.session.signalling})
        whose payload is a u32 channel id and data go to C{handler(channel,
        data)}, without the copy of splitting the payload (None: back to the
        control-frame table).
        """
        self._decoder.set_channel_handler(ftype, handler)

    def set_stream_source(self, source: Optional[StreamSource]) -> None:
        """Share the transport with C{source} (see the module docstring); None removes it."""
        self._stream_source = source

    def write_frame(self, frame: bytes) -> bool:
        """
        Write C{frame} (a stream source's) at once if the transport takes
        data and nothing is queued; False (nothing written) otherwise.
        """
        if not self._direct or self._stream_source is None:
            return False
        self._write(frame)
        self._sent = True
        return True

    def streams_ready(self) -> None:
        """The stream source has something to send: send it now if the transport takes data."""
        source = self._stream_source
        if source is None or not self._direct:
            return  # paused (the drain sends it), or not usable
        transport = self.transport
        assert transport is not None  # direct: connected
        write = transport.write
        while not self._paused and source.pending():
            write(source.take(_DRAIN_BATCH))
            self._sent = True
        if self._paused:
            self._direct = False

    def _drain(self) -> None:
        transport = self.transport
        assert transport is not None  # connected: the transport resumed us
        now = self.clock.seconds()
        self._expire(now)
        had = self.queued_bytes
        queues, write, source = self.queues, transport.write, self._stream_source
        if source is None:
            take = queues.take
            while queues.count and not self._paused:
                write(take(_DRAIN_BATCH))  # one transport write per ~64 KiB, not per message
        else:
            while not self._paused:  # streams and messages of priority >= 2 take turns
                urgent = queues.most_urgent
                if urgent is not None and (urgent < NEVER_DROPPED_BELOW or not self._streams_next
                                           or not source.pending()):
                    self._streams_next = True
                    write(queues.take(_DRAIN_BATCH))
                elif source.pending():
                    self._streams_next = False
                    write(source.take(_DRAIN_BATCH))
                    self._sent = True
                else:
                    break
        bulk = self._bulk
        if bulk is not None:  # without it, nothing is queued for bulk
            queues = self.bulk_queues
            while queues.count and not self._bulk_paused:
                bulk.write(queues.take(_DRAIN_BATCH))
        if self.queued_bytes < had:
            self._last_sent = now
        if self._move_pending:
            self._flush_moves()
        if self.queued_bytes <= self.max_queued_bytes // 2:
            self.owner.writable(self)

    def _expire(self, now: float) -> None:
        drops = self.queues.expire(now) + self.bulk_queues.expire(now)
        if drops:
            self.owner.dropped(self, drops, f"waited over {self.queues.drop_after:g} s (insufficient bandwidth)")

    @property
    def received(self) -> tuple[int, int]:
        """The messages received on every lane so far (signed ones too), and their bytes."""
        decoders = (self._decoder, self._bulk_decoder) if self._bulk_decoder is not None else (self._decoder,)
        messages, nbytes = self.frame_messages
        return (messages + sum(d.data_frames for d in decoders),
                nbytes + sum(d.data_bytes for d in decoders))

    @property
    def queued_bytes(self) -> int:
        return self.queues.size + self.bulk_queues.size

    @property
    def is_paused(self) -> bool:
        return self._paused

    # -- closing -----------------------------------------------------------------

    def close(self, reason: CloseReason, detail: str = "") -> None:
        """Tell the peer why, then close cleanly (abort if it will not flush)."""
        self._direct = self._direct_bulk = self._queue_bulk = self._usable = False
        if self._close_reason is None:
            self._close_reason = f"{reason.value}: {detail}" if detail else reason.value
            self.close_code = reason.value
        if not self.connected:
            return
        if self.handshake.state is not HandshakeState.AWAIT_TLS:
            transport = self.transport
            assert transport is not None  # connected
            transport.write(encode_close(reason, detail))
        self._lose()

    def close_duplicate(self) -> None:
        """Close a candidate that lost the race to another connection."""
        self.close(CloseReason.DUPLICATE, "another connection to this peer was chosen")

    def _lose(self) -> None:
        self._direct = self._direct_bulk = self._queue_bulk = self._usable = False
        # closing: nothing more the peer sent is read, not even the rest of the chunk at hand
        self._decoder.stop()
        if self._bulk_decoder is not None:
            self._bulk_decoder.stop()
        if self._close_timer is None and self.connected:
            transport = self.transport
            assert transport is not None
            if self._bulk is not None:
                self._bulk.unregisterProducer()
            transport.unregisterProducer()
            self._producing = False
            transport.loseConnection()
            self._close_timer = self.clock.callLater(_CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        # _close_timer stays set (called): closing starts once, however long the transport takes to go
        if self.connected:
            transport = self.transport
            assert transport is not None
            transport.abortConnection()

    def _send_frame(self, frame: bytes) -> None:
        """Write a handshake frame (the handshake runs only while connected)."""
        transport = self.transport
        assert transport is not None
        transport.write(frame)

    # -- HandshakeDelegate -----------------------------------------------------------

    def send_hello(self) -> None:
        self._send_frame(self.owner.hello_for(self).encode())

    def send_choose(self) -> None:
        self._send_frame(CHOOSE_HANDOVER_FRAME if self.handover_chosen else CHOOSE_FRAME)

    def send_grant(self) -> None:
        self._send_frame(GRANT_FRAME)

    def admit(self, peer_id: PeerId, hello: Hello) -> None:
        self.owner.admit(self, peer_id, hello)

    def admission_result(self, granted: bool, reason: Optional[RejectReason] = None, detail: str = "") -> None:
        """The node's decision on the peer's bootstrap request (after L{ConnectionOwner.admit})."""
        self.handshake.admission_result(granted, reason, detail)

    def reject(self, reason: RejectReason, detail: str) -> None:
        self._reported = True
        self.owner.bad_input(self, f"refusing-{reason.value}", f"refusing: {reason.value}: {detail}")
        self._close_reason = f"{reason.value}: {detail}"
        self._send_frame(encode_reject(reason, detail))
        self._lose()

    def claim(self, peer_id: PeerId) -> bool:
        return self.owner.claim(self, peer_id)

    def promote(self, peer_id: PeerId) -> None:
        self._cancel_timer()
        self._schedule_liveness(self.clock.seconds())
        self.owner.promote(self, peer_id)  # sets self.deliver (and may hold delivery: a handover)
        deliver = self._held.append if self._held is not None else self.deliver
        self._decoder.set_handlers(deliver, self._control)
        if self._bulk is not None:
            bulk_decoder = self._bulk_decoder
            assert bulk_decoder is not None  # made with the bulk lane
            bulk_decoder.set_handlers(deliver, _bulk_control_for(self))
            if self._held is None:
                self._bulk.resumeProducing()  # deliver what the peer sent on the bulk lane meanwhile
        self._update_direct()

    def candidate(self, peer_id: PeerId, hello: Hello) -> None:
        self.owner.candidate(self, peer_id, hello)

    def probed(self, peer_id: PeerId, hello: Hello) -> None:
        self._cancel_timer()
        self.owner.probed(self, peer_id, hello)

    def late_hello(self, peer_id: PeerId, hello: Hello) -> None:
        self.owner.late_hello(self, peer_id, hello)

    def refused(self, reason: str, detail: str) -> None:
        self._reported = True  # the owner says why
        self._close_reason = f"{reason}: {detail}" if detail else reason
        self.owner.refused(self, reason, detail)
        self._lose()

    # -- frames --------------------------------------------------------------------

    def _data_before_active(self, payload: bytes) -> None:
        raise ProtocolViolation("DATA before the connection was chosen")

    def _control(self, ftype: int, payload: bytes) -> None:
        """A control frame: ours by the table below, else the owner's (L{crust.session.signalling})."""
        handler = _CONTROL_HANDLERS.get(ftype)
        if handler is not None:
            handler(self, payload)
            return
        if ftype in MESSAGE_FRAME_TYPES:  # messages, like DATA: only once chosen, held with DATA
            if not self.is_active:
                raise ProtocolViolation("a message frame before the connection was chosen")
            if self._held is not None:
                self._held.append((ftype, payload))
                return
        if not self.owner.control_received(self, ftype, payload):
            raise ProtocolViolation(f"unknown frame type {ftype}")

    def _heartbeat_received(self, payload: bytes) -> None:
        # receiving it is the point: _feed dated it.  An asking one is answered, one frame for one frame,
        # while our transport takes data (paused, the peer is not reading: answers would only pile up)
        if payload[:1] == HEARTBEAT_ASK and not self._paused:
            self._write_control(HEARTBEAT_FRAME)
        if self._answer_waiters:
            waiters, self._answer_waiters = self._answer_waiters, []
            for d in waiters:
                d.callback(None)

    def _hello_received(self, payload: bytes) -> None:
        self.handshake.hello_received(Hello.decode(payload))

    def _choose_received(self, payload: bytes) -> None:
        if payload:
            self.handover_chosen = payload == HANDOVER_PAYLOAD
            if not self.handover_chosen:
                raise ProtocolViolation("CHOOSE with an unknown payload")
        self.handshake.choose_received()

    def _move_received(self, payload: bytes) -> None:
        self.owner.moved(self, "urgent")

    def _grant_received(self, payload: bytes) -> None:
        self.handshake.grant_received()

    def _reject_received(self, payload: bytes) -> None:
        reason, detail = decode_reason(payload, "REJECT")
        self.handshake.reject_received(reason, detail)
        if self._close_reason is None:  # refused after it was active (an early claim undone)
            self._close_reason = f"refused by the peer: {reason}" + (f" ({detail})" if detail else "")
        self._lose()

    def _close_received(self, payload: bytes) -> None:
        reason, detail = decode_reason(payload, "CLOSE")
        if self._close_reason is None:
            self._close_reason = f"peer closed: {reason}" + (f" ({detail})" if detail else "")
            self.close_code = reason
        self.handshake.closed()
        self._lose()

    # -- timers ----------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._close_reason is not None:
            return  # closing already, for the reason it has
        if self.handshake.state is HandshakeState.AWAIT_CHOICE:
            self.handshake.choice_timed_out()
            return
        if self.handshake.state in _EARLY_STATES:
            self._close_reason = f"timeout: handshake not complete after {self.handshake_timeout:g} s"
            self._early = ("timeout", f"{self._close_reason} ({self.handshake.state.value})")
            self.handshake.closed()
            self._lose()

    def _schedule_liveness(self, now: float, sending: bool = False) -> None:
        due = min(self._last_sent + self.heartbeat_interval, self._last_received + self.inactivity_timeout)
        if self._asked_at != self._last_received:
            due = min(due, self._last_received + self.inactivity_timeout / 2)
        if sending:
            # sends do not read the clock: while they go on, look again soon to date the last one
            due = min(due, now + self.heartbeat_interval / _LIVENESS_GRAIN)
        # (at least a millisecond on: a moment computed as a sum may land a rounding error short of it, and a
        # tick that finds nothing due must not come again at the same instant)
        self._timer = self.clock.callLater(max(_LIVENESS_MIN_DELAY, due - now), self._liveness_tick)

    def _liveness_tick(self) -> None:
        self._timer = None
        if not self.connected or self._close_reason is not None:
            return
        now = self.clock.seconds()
        sending = self._sent
        if sending:
            # data went out since the last look: date it now, so a heartbeat
            # follows the last send after between 1 and 1.25 intervals
            self._sent = False
            self._last_sent = now
        if now >= self._last_received + self.inactivity_timeout:  # (as _schedule_liveness adds them)
            self.close(CloseReason.TIMEOUT, f"nothing received for {self.inactivity_timeout:g} s")
            # nothing came for that long: the path is dead, and waiting to flush would only delay what
            # follows the loss (a standby connection taking over, a new connect)
            if self.connected:
                transport = self.transport
                assert transport is not None
                transport.abortConnection()
            return
        if self.queues or self.bulk_queues:
            self._expire(now)
        if now >= self._last_received + self.inactivity_timeout / 2 and self._asked_at != self._last_received:
            # silent for half the time we wait: ask the peer to answer, however seldom it sends heartbeats
            self._asked_at = self._last_received
            self._write_control(HEARTBEAT_ASK_FRAME)
        elif now >= self._last_sent + self.heartbeat_interval:
            self._write_control(HEARTBEAT_FRAME)
            self._last_sent = now
        self._schedule_liveness(now, sending)


#: The shortest wait between two liveness ticks, in seconds.
_LIVENESS_MIN_DELAY = 0.001

# States where nothing about the peer is settled: a failure here is "early" (ConnectionOwner.failed_early)
_EARLY_STATES = frozenset((HandshakeState.AWAIT_TLS, HandshakeState.AWAIT_HELLO,
                           HandshakeState.AWAIT_GRANT, HandshakeState.ADMITTING))


def _discard(payload: bytes) -> None:
    pass


def _ignore_control(ftype: int, payload: bytes) -> None:
    pass


# The frames a connection handles itself, by type (the rest go to its owner).
_CONTROL_HANDLERS: dict[int, Callable[[PeerConnection, bytes], None]] = {
    FrameType.HEARTBEAT: PeerConnection._heartbeat_received,
    FrameType.HELLO: PeerConnection._hello_received,
    FrameType.CHOOSE: PeerConnection._choose_received,
    FrameType.GRANT: PeerConnection._grant_received,
    FrameType.REJECT: PeerConnection._reject_received,
    FrameType.CLOSE: PeerConnection._close_received,
    FrameType.MOVE: PeerConnection._move_received,
}


def _bulk_control(ftype: int, payload: bytes) -> None:
    raise ProtocolViolation(f"control frame (type {ftype}) on the bulk stream")


def _bulk_control_for(conn: "PeerConnection") -> Callable[[int, bytes], None]:
    """The bulk lane's control frames: message frames, and MOVE (the lane's last frame in a handover)."""
    def control(ftype: int, payload: bytes) -> None:
        if ftype in MESSAGE_FRAME_TYPES:
            conn._control(ftype, payload)
        elif ftype == FrameType.MOVE:
            conn.owner.moved(conn, "bulk")
        else:
            _bulk_control(ftype, payload)
    return control


@implementer(IPushProducer)
class _BulkLane:
    """The bulk lane's producer and receiver, on behalf of its L{PeerConnection}."""

    def __init__(self, conn: PeerConnection) -> None:
        self.conn = conn

    def pauseProducing(self) -> None:
        conn = self.conn
        conn._bulk_paused = True
        if conn._direct_bulk:  # it was usable: sends now queue
            conn._direct_bulk = False
            conn._queue_bulk = True

    def resumeProducing(self) -> None:
        conn = self.conn
        conn._bulk_paused = False
        if conn.bulk_queues and conn.connected:
            conn._drain()
        conn._update_direct()

    def stopProducing(self) -> None:
        self.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.conn._bulk_received(data)


def _failure_text(reason: Failure) -> str:
    value = reason.value
    text = str(value) or type(value).__name__
    return text.strip()
