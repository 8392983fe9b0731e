"""
L{Streams}: a node's byte streams, beside its messages.

Any number of ordered, flow-controlled byte streams ride on a crust
connection, each the transport of a Twisted protocol (L{Stream}): over QUIC
each is a QUIC stream of its own (L{crust.streams.quic}); over any other
transport (TCP, hole-punched TCP, a relayed circuit) they are multiplexed as
control frames of the connection (L{crust.streams.mux}).

Opening is authorised by the receiving side: it accepts a stream only for a
service name its application listens for (L{Streams.listen}); other opens
are refused, and the opener's Deferred fails with
L{crust.errors.StreamRefused} naming the service and the reason.

Caps, per connection: L{StreamOptions.max_streams} streams open at once
(either side's), L{StreamOptions.max_pending_opens} opens waiting for their
answer (ours) or for their header (the peer's, over QUIC); service names of
at most 255 bytes; per stream, what it holds for a protocol that paused
reading is at most its window (the peer needs credit to send more).

A stream lives on the connection it was opened on: when that connection
ends, its streams end (C{connectionLost} with the connection's reason).
After a handover (doc/protocol.md section 5b) the old connection stays as a
standby while it is relayed, so its streams go on; new streams open on the
active connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from crust._util.ratelimit import RateLimiter
from crust.errors import PeerNotConnected, ProtocolViolation, StreamOpenFailed, StreamServiceInUse
from crust.identity import PeerId
from crust.streams import frames
from crust.streams.address import StreamAddress
from crust.streams.frames import StreamFrame, check_service_name
from crust.streams.mux import FramedStreams
from crust.streams.quic import QuicStreams
from crust.streams.stream import LINGER, Stream

if TYPE_CHECKING:
    from crust.peering.table import PeerTable
    from crust.session.connection import PeerConnection

MIB = 1024 * 1024


@dataclass(frozen=True)
class StreamOptions:
    """
    Settings of a node's byte streams.

    @ivar window: the most bytes a stream receives ahead of what its
        protocol took (multiplexed streams; over QUIC the window is QUIC's
        own, C{QuicOptions.max_stream_data}), so the most it holds for a
        protocol that paused reading.
    @ivar connection_window: what the streams of one connection receive
        ahead of their protocols together, beyond C{min_window} each: a
        stream is granted less than C{window} while the others hold the rest.
    @ivar min_window: what every stream may be granted whatever the others hold.
    @ivar max_streams: streams open at once on one connection (both sides' together).
    @ivar max_pending_opens: our opens waiting for an answer, and the peer's
        QUIC streams waiting for their header, on one connection.
    @ivar open_timeout: seconds an open waits for its answer (or a QUIC stream for its header).
    @ivar high_water: bytes written to a stream and not yet sent above which
        its producer is paused.
    @ivar low_water: ... at or below which it is resumed.
    @ivar linger: seconds a stream closed with C{loseConnection} waits for
        the peer's end of stream before it resets.
    """

    window: int = 16 * MIB
    connection_window: int = 64 * MIB
    min_window: int = 128 * 1024
    max_streams: int = 1024
    max_pending_opens: int = 256
    open_timeout: float = 30.0
    high_water: int = MIB
    low_water: int = 256 * 1024
    linger: float = LINGER

    def __post_init__(self) -> None:
        for name in ("window", "connection_window", "min_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or not frames.SEND_CHUNK <= value <= frames.MAX_WINDOW:
                raise ValueError(f"{name} must be {frames.SEND_CHUNK}..{frames.MAX_WINDOW} bytes, not {value!r}")
        if not self.min_window <= self.window <= self.connection_window:
            raise ValueError("the windows must be min_window <= window <= connection_window")
        for name in ("max_streams", "max_pending_opens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not 0 <= self.low_water < self.high_water:
            raise ValueError("low_water must be below high_water")
        if self.open_timeout <= 0 or self.linger <= 0:
            raise ValueError("open_timeout and linger must be positive")


@implementer(IListeningPort)
class StreamListener:
    """Streams to one service name go to C{factory} (the C{IListeningPort} of L{Streams.listen})."""

    def __init__(self, streams: "Streams", service: str, factory: Any) -> None:
        self.streams = streams
        self.service = service
        self.factory = factory
        self.listening = True

    def __repr__(self) -> str:
        return f"<StreamListener {self.service!r} {self.factory!r}>"

    def startListening(self) -> None:
        pass  # listening from the start

    def stopListening(self) -> Deferred:
        """Refuse new streams to the service from now on (open ones go on)."""
        if self.listening:
            self.listening = False
            self.streams._unlisten(self)
            self.factory.doStop()
        return succeed(None)

    def getHost(self) -> StreamAddress:
        return StreamAddress(self.streams.local_id, self.service)


Backend = Union[FramedStreams, QuicStreams]


class Streams:
    """
    The byte streams of one node (see the module docstring).

    @param table: the node's peer table: its connections, and the control frames.
    @param local_id: our L{PeerId}.
    @param clock: the reactor's time.
    """

    log = Logger()

    def __init__(self, table: "PeerTable", local_id: PeerId, clock: IReactorTime,
                 options: Optional[StreamOptions] = None) -> None:
        self.table = table
        self.local_id = local_id
        self.clock = clock
        self.options = options or StreamOptions()
        self.listeners: dict[str, StreamListener] = {}
        self.backends: dict["PeerConnection", Backend] = {}
        self._faults = RateLimiter(clock, per_key=(1 / 60, 3), total=(1.0, 10), max_keys=256)
        self._refusals = RateLimiter(clock, per_key=(1 / 60, 3), total=(1.0, 10), max_keys=256)
        self.refused = 0  # streams refused: nobody listened for their service
        self._unregister: list[Callable[[], None]] = []
        for ftype in StreamFrame:
            handler = self._data if ftype == StreamFrame.DATA else self._handler(int(ftype))
            self._unregister.append(table.control_frames.register(int(ftype), handler))
        table.listen(self)

    def _data(self, conn: "PeerConnection", payload: bytes) -> None:
        """STREAM_DATA, the common frame: straight to the connection's streams."""
        backend = self.backends.get(conn)
        if type(backend) is FramedStreams:
            backend.data_received(payload)
        else:
            self._frame(conn, StreamFrame.DATA, payload)

    def _handler(self, ftype: int) -> Callable[["PeerConnection", bytes], None]:
        def handler(conn: "PeerConnection", payload: bytes) -> None:
            self._frame(conn, ftype, payload)
        return handler

    # -- listening ----------------------------------------------------------------------------------

    def listen(self, service: str, factory: Any) -> StreamListener:
        """
        Accept streams peers open to C{service}: each runs a protocol
        C{factory} builds (C{buildProtocol} gets the peer's L{StreamAddress}).

        @raise ValueError: C{service} is not a valid name.
        @raise StreamServiceInUse: something listens for it already.
        """
        check_service_name(service)
        if service in self.listeners:
            raise StreamServiceInUse(f"streams to service {service!r} are already taken by "
                                     f"{self.listeners[service].factory!r}")
        listener = self.listeners[service] = StreamListener(self, service, factory)
        factory.doStart()
        return listener

    def _unlisten(self, listener: StreamListener) -> None:
        if self.listeners.get(listener.service) is listener:
            del self.listeners[listener.service]

    def factory_for(self, service: str, peer_id: PeerId) -> Any:
        """The factory that takes a stream to C{service}, or None (the open is refused)."""
        listener = self.listeners.get(service)
        if listener is None:
            self.refused += 1
            if self._refusals.allow(peer_id):
                self.log.info("refused a stream from {peer} to service {service!r}: nobody listens for it "
                              "({count} refused in all)", peer=str(peer_id), service=service, count=self.refused)
            return None
        return listener.factory

    # -- opening ------------------------------------------------------------------------------------

    def open(self, peer_id: PeerId, service: str, factory: Any) -> Deferred:
        """
        Open a stream to C{service} on the connection to C{peer_id} (which
        must be active); fires with the protocol C{factory} built, once the
        peer accepted, or fails with L{crust.errors.StreamRefused},
        L{crust.errors.StreamOpenFailed} or L{crust.errors.PeerNotConnected}.
        """
        try:
            check_service_name(service)
        except ValueError as e:
            return fail(StreamOpenFailed(str(e)))
        conn = self.table.usable(peer_id)
        if conn is None:
            return fail(PeerNotConnected(f"not connected to {peer_id}"))
        try:
            return self.backend(conn, peer_id).open(service, factory)
        except StreamOpenFailed as e:
            return fail(e)

    def backend(self, conn: "PeerConnection", peer_id: PeerId) -> Backend:
        """The streams of C{conn} (made on first use)."""
        backend = self.backends.get(conn)
        if backend is None:
            transport = conn.transport
            driver = getattr(transport, "driver", None)
            if driver is not None:
                backend = QuicStreams(self, conn, driver, self.local_id, peer_id)
            else:
                backend = FramedStreams(self, conn, self.local_id, peer_id)
            self.backends[conn] = backend
        return backend

    def count(self, peer_id: PeerId) -> int:
        """Streams open (or opening) on the active connection to C{peer_id}."""
        conn = self.table.usable(peer_id)
        backend = self.backends.get(conn) if conn is not None else None
        return backend.count if backend is not None else 0

    # -- PeerListener ---------------------------------------------------------------------------------

    def peer_promoted(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        if getattr(conn.transport, "driver", None) is not None:
            self.backend(conn, peer_id)  # takes the QUIC streams the peer opens (held until now)

    def connection_ended(self, conn: "PeerConnection", reason: str) -> None:
        backend = self.backends.pop(conn, None)
        if backend is not None:
            backend.connection_lost(reason)

    # -- frames -----------------------------------------------------------------------------------------

    def _frame(self, conn: "PeerConnection", ftype: int, payload: bytes) -> None:
        backend = self.backends.get(conn)
        if backend is None:
            peer_id = conn.peer_id
            if not conn.is_active or peer_id is None:
                raise ProtocolViolation(f"stream frame (type {ftype}) before the connection was chosen")
            if ftype != StreamFrame.OPEN:
                return  # for a stream that ended with an earlier connection state: nothing to do
            backend = self.backend(conn, peer_id)
        if not isinstance(backend, FramedStreams):
            raise ProtocolViolation(f"stream frame (type {ftype}) on a QUIC connection, where streams are QUIC's")
        backend.frame_received(ftype, payload)

    # -- what the backends share ------------------------------------------------------------------------

    def address(self, peer_id: PeerId, service: str, conn: "PeerConnection") -> StreamAddress:
        path = conn.path
        transport = "relay" if path is not None and path.kind == "relayed" else conn.transport_name
        return StreamAddress(peer_id, service, transport)

    def make_stream(self, channel: Any, conn: "PeerConnection", peer_id: PeerId, service: str) -> Stream:
        options = self.options
        return Stream(channel, self.clock, self.address(self.local_id, service, conn),
                      self.address(peer_id, service, conn), high_water=options.high_water,
                      low_water=options.low_water, linger=options.linger)

    def run_protocol(self, stream: Stream, channel: Any, service: str, factory: Any) -> Any:
        """Run the protocol C{factory} builds on C{stream}; returns it."""
        protocol = factory.buildProtocol(stream.peer)
        if protocol is None:
            channel.reset(frames.REASON_REFUSED, "the service built no protocol for the stream")
            stream.lost(Failure(StreamOpenFailed("the factory built no protocol")))
            raise StreamOpenFailed(f"the factory of service {service!r} built no protocol for the stream")
        return stream.attach(protocol)

    def note_fault(self, peer_id: PeerId, detail: str) -> None:
        """A peer broke the stream protocol in a way that ends only a stream: one log line at a bounded rate."""
        if self._faults.allow(peer_id):
            self.log.warn("{peer}: {detail}; the stream was reset", peer=str(peer_id), detail=detail)

    # -- stopping ---------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Listen for nothing more (the node is stopping; its connections close, and their streams with them)."""
        for listener in list(self.listeners.values()):
            listener.stopListening()
