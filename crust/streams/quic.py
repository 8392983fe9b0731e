"""
L{QuicStreams}: the byte streams of one crust connection over QUIC, each a
bidirectional QUIC stream of its own (L{crust.transport.quic.driver.QuicAppStream}),
with QUIC's flow control (the receive window follows what the protocol
consumed) and QUIC's scheduling (aioquic serves the streams with data in
turn, the connection's urgent and bulk lanes among them).

The first bytes each way are the headers of L{crust.streams.frames}: the
opener names the service, the acceptor answers (accepted, or a refusal and
FIN).  Resets travel as QUIC resets (RESET_STREAM and STOP_SENDING) whose
application error code names the reason (L{crust.streams.frames.RESET_CODES}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust.errors import ProtocolViolation, StreamOpenFailed, StreamRefused
from crust.identity import PeerId
from crust.streams import frames
from crust.streams.stream import Stream

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection
    from crust.streams.manager import Streams

_OPENER, _ACCEPTOR, _OPEN, _REFUSED = "awaiting answer", "awaiting header", "open", "refused"


class QuicChannel:
    """
    One stream's end of a QUIC stream: the L{crust.streams.stream.Channel}
    of its L{Stream}, and the receiver of the QUIC stream's events.
    """

    def __init__(self, backend: "QuicStreams", app: Any, state: str, service: str = "", factory: Any = None,
                 deferred: Optional[Deferred] = None) -> None:
        self.backend = backend
        self.app = app
        self.state = state
        self.service = service
        self.factory = factory
        self.deferred = deferred
        self.stream: Optional[Stream] = None
        self.timer: Any = None
        self._buf = b""
        app.receiver = self

    def __repr__(self) -> str:
        return f"<QuicChannel {self.app.stream_id} {self.state}>"

    # -- Channel --------------------------------------------------------------------------------

    @property
    def notify_drain(self) -> bool:
        return bool(self.app.notify_drain)

    @notify_drain.setter
    def notify_drain(self, value: bool) -> None:
        app = self.app
        app.notify_drain = value
        if value:
            app.driver._app_drain.add(app)
            app.driver.schedule_flush()

    @property
    def buffered(self) -> int:
        return int(self.app.unsent)

    def send(self, data: bytes) -> None:
        self.app.write(data)

    def send_fin(self) -> None:
        self.app.end()

    def consumed(self, size: int) -> None:
        self.app.consumed(size)

    def reset(self, reason: str, detail: str = "") -> None:
        self.app.reset(frames.reset_code(reason))
        self.backend.discard(self)

    def closed(self) -> None:
        self.app.forget()
        self.backend.discard(self)

    # -- the QUIC stream's events ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.state == _OPEN:
            assert self.stream is not None
            self.stream.data_received(data)
            return
        if self.state == _REFUSED:
            self.app.consumed(len(data))
            return
        buf = self._buf + data
        try:
            if self.state == _OPENER:
                self._answer(buf)
            else:
                self._header(buf)
        except ProtocolViolation as e:
            self.backend.note_fault(str(e))
            self._fail(StreamOpenFailed(f"stream {self.app.stream_id} from {self.backend.peer_id}: {e}"))
            self.reset(frames.REASON_ABORTED)

    def _header(self, buf: bytes) -> None:
        parsed = frames.parse_quic_open(buf)
        if parsed is None:
            self._buf = buf
            return
        service, size = parsed
        self._buf = b""
        self._cancel_timer()
        self.app.consumed(size)
        self.backend.header_received(self, service, buf[size:])

    def _answer(self, buf: bytes) -> None:
        parsed = frames.parse_quic_answer(buf)
        if parsed is None:
            self._buf = buf
            return
        answer, size = parsed
        self._buf = b""
        self._cancel_timer()
        self.app.consumed(size)
        deferred, self.deferred = self.deferred, None
        assert deferred is not None  # awaiting the answer
        if answer is True:
            try:
                protocol = self.backend.start(self, self.service, self.factory)
            except Exception:
                deferred.errback()
                return
            deferred.callback(protocol)
            if buf[size:]:
                self.data_received(buf[size:])
        else:
            assert isinstance(answer, frames.StreamReset)
            self.state = _REFUSED
            self.app.end()  # the acceptor ended its side: end ours, and the QUIC stream is done
            self.app.forget()
            self.backend.discard(self)
            deferred.errback(StreamRefused(self.backend.peer_id, self.service, answer.reason, answer.detail))

    def fin_received(self) -> None:
        if self.state == _OPEN:
            assert self.stream is not None
            self.stream.fin_received()
        elif self.state == _REFUSED:
            self.app.forget()
            self.backend.discard(self)
        else:
            self._fail(StreamOpenFailed(f"{self.backend.peer_id} ended stream {self.app.stream_id} before its "
                                        "header"))
            self.reset(frames.REASON_ABORTED)

    def reset_received(self, code: int) -> None:
        reason = frames.reset_reason(code)
        self.backend.discard(self)
        if self.state == _OPEN:
            assert self.stream is not None
            self.stream.reset_received(reason)
        elif self.state == _OPENER:
            self._fail(StreamRefused(self.backend.peer_id, self.service, reason, "the peer reset the stream"))
        self._cancel_timer()

    def fin_sent(self) -> None:
        if self.stream is not None:
            self.stream.fin_sent()

    def drained(self) -> None:
        if self.stream is not None:
            self.stream.drained()

    # -- helpers --------------------------------------------------------------------------------

    def timed_out(self) -> None:
        self.timer = None
        if self.state in (_OPENER, _ACCEPTOR):
            timeout = self.backend.layer.options.open_timeout
            what = "answer" if self.state == _OPENER else "header"
            self._fail(StreamOpenFailed(f"no {what} from {self.backend.peer_id} on stream {self.app.stream_id} "
                                        f"within {timeout:g} s"))
            self.reset(frames.REASON_ABORTED)

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _fail(self, error: Exception) -> None:
        self._cancel_timer()
        deferred, self.deferred = self.deferred, None
        if deferred is not None:
            deferred.errback(error)

    def lost(self, text: str) -> None:
        """The connection ended."""
        self._cancel_timer()
        if self.stream is not None:
            self.stream.lost(Failure(ConnectionLost(text)))
        else:
            self._fail(StreamOpenFailed(text))


class QuicStreams:
    """
    The streams of one QUIC connection (see the module docstring).

    @param layer: the node's L{crust.streams.manager.Streams}.
    @param conn: the connection (active).
    @param driver: its L{crust.transport.quic.driver.QuicDriver}.
    """

    log = Logger()

    def __init__(self, layer: "Streams", conn: "PeerConnection", driver: Any, local_id: PeerId,
                 peer_id: PeerId) -> None:
        self.layer = layer
        self.conn = conn
        self.driver = driver
        self.local_id = local_id
        self.peer_id = peer_id
        self.channels: set[QuicChannel] = set()
        self.pending = 0  # the peer's streams whose header has not come yet
        self.closed = False
        driver.set_stream_acceptor(self._accepted)

    def __repr__(self) -> str:
        return f"<QuicStreams {len(self.channels)} on {self.conn!r}>"

    @property
    def count(self) -> int:
        return len(self.channels)

    def open(self, service: str, factory: Any) -> Deferred:
        options = self.layer.options
        if self.closed or self.driver.ended:
            raise StreamOpenFailed(f"the connection to {self.peer_id} is closing")
        if self.count >= options.max_streams:
            raise StreamOpenFailed(f"{self.count} streams are open to {self.peer_id} (at most {options.max_streams})")
        opening = sum(1 for c in self.channels if c.state == _OPENER)
        if opening >= options.max_pending_opens:
            raise StreamOpenFailed(f"{opening} streams to {self.peer_id} are waiting for an answer "
                                   f"(at most {options.max_pending_opens})")
        header = frames.encode_quic_open(service)
        app = self.driver.open_stream()
        d: Deferred = Deferred(lambda _: channel.reset(frames.REASON_ABORTED))
        channel = QuicChannel(self, app, _OPENER, service, factory, d)
        channel.timer = self.layer.clock.callLater(options.open_timeout, channel.timed_out)
        self.channels.add(channel)
        app.write(header)
        return d

    def _accepted(self, app: Any) -> None:
        options = self.layer.options
        if self.closed:
            app.reset(frames.reset_code(frames.REASON_SHUTDOWN))
            return
        if self.count >= options.max_streams or self.pending >= options.max_pending_opens:
            app.write(frames.encode_quic_refusal(frames.REASON_TOO_MANY,
                                                 f"{self.count} streams are open (at most {options.max_streams})"))
            app.end()
            app.forget()
            return
        channel = QuicChannel(self, app, _ACCEPTOR)
        self.pending += 1
        channel.timer = self.layer.clock.callLater(options.open_timeout, channel.timed_out)
        self.channels.add(channel)

    def header_received(self, channel: QuicChannel, service: str, rest: bytes) -> None:
        self.pending -= 1
        factory = self.layer.factory_for(service, self.peer_id)
        app = channel.app
        if factory is None:
            channel.state = _REFUSED
            app.write(frames.encode_quic_refusal(frames.REASON_REFUSED,
                                                 f"nobody listens for service {service!r} here"))
            app.end()
            return
        app.write(frames.ACCEPTED)
        try:
            self.start(channel, service, factory)
        except Exception:
            self.log.failure("cannot start a stream of service {service!r} from {peer}",
                             service=service, peer=str(self.peer_id))
            return
        if rest:
            channel.data_received(rest)

    def start(self, channel: QuicChannel, service: str, factory: Any) -> Any:
        channel.state = _OPEN
        channel.service = service
        stream = self.layer.make_stream(channel, self.conn, self.peer_id, service)
        channel.stream = stream
        return self.layer.run_protocol(stream, channel, service, factory)

    def discard(self, channel: QuicChannel) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            if channel.state == _ACCEPTOR:
                self.pending -= 1

    def note_fault(self, detail: str) -> None:
        self.layer.note_fault(self.peer_id, detail)

    def connection_lost(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.driver.set_stream_acceptor(None)
        channels, self.channels = list(self.channels), set()
        text = f"the crust connection to {self.peer_id} ended: {reason}"
        for channel in channels:
            channel.lost(text)
