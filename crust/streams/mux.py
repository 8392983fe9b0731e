"""
L{FramedStreams}: the byte streams of one connection whose transport is a
single ordered byte stream (TCP, a relayed circuit), multiplexed as control
frames (L{crust.streams.frames}, doc/protocol.md section 13).

Flow control is per stream, by credit: each side announces the window it
receives in (OPEN, ACCEPT) and grants CREDIT as its protocol takes the
data, once a quarter window was taken; a sender never has more than the
other side's grant outstanding.  A protocol that pauses reading
(C{pauseProducing} on its stream) so stops its sender, and only its
sender: the other streams and the connection's messages go on.  A side that
sends past its window gets its stream reset (C{overflow}), not the
connection.

Sending: the streams with something to send (data and credit, or a FIN
after all their data) take turns, one frame of at most
L{crust.streams.frames.SEND_CHUNK} bytes each, as the connection asks
(L{crust.session.connection.StreamSource}); the connection sends them after
queued messages of priority 0-1 and alternately with messages of priority 2
and above, so no stream holds up urgent messages or the other streams.
OPEN, ACCEPT, CREDIT and RESET go ahead of queued data (C{send_control}).

Opening: OPEN names the service; the receiving side answers ACCEPT if its
application listens for that service, else RESET C{refused}.  Data flows
after ACCEPT.  Stream ids are in halves (the side with the larger peer id
sets the top bit) and only increase; an OPEN whose id is in the receiver's
half, or not above the sender's last, is a protocol violation.  Frames for
an id that is not open (a stream that ended while they were on their way)
are dropped.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust.errors import ProtocolViolation, StreamOpenFailed, StreamRefused
from crust.identity import PeerId
from crust.streams import frames
from crust.streams.frames import HIGH_BIT, MAX_CHUNK, SEND_CHUNK, StreamFrame, data_header, is_ours
from crust.streams.stream import Stream

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection
    from crust.streams.manager import Streams


_DATA_HEADER = struct.Struct("!IBI")  # frame length, type, stream id


class FramedChannel:
    """One stream's end of the frames (a L{crust.streams.stream.Channel})."""

    __slots__ = ("mux", "sid", "stream", "notify_drain", "credit", "window", "recv_limit", "received",
                 "consumed_total", "_out", "_out_size", "fin_wanted", "fin_taken", "fin_received", "queued",
                 "gone")

    def __init__(self, mux: "FramedStreams", sid: int, credit: int) -> None:
        self.mux = mux
        self.sid = sid
        self.stream: Optional[Stream] = None
        self.notify_drain = False
        self.credit = credit  # bytes we may still send
        self.window = mux.window  # the most we let the other side send ahead of what the protocol took
        self.recv_limit = mux.commit(0)  # total bytes the other side may send
        self.received = 0
        self.consumed_total = 0
        self._out: deque[Union[bytes, memoryview]] = deque()
        self._out_size = 0
        self.fin_wanted = False
        self.fin_taken = False
        self.fin_received = False
        self.queued = False  # in the mux's ready queue
        self.gone = False

    def __repr__(self) -> str:
        return f"<FramedChannel {self.sid:#x}>"

    # -- Channel ------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return self._out_size

    def send(self, data: bytes) -> None:
        if self.gone or self.fin_wanted:
            return
        size = len(data)
        if not self._out_size and size <= self.credit and size <= SEND_CHUNK and self.mux.write_now(
                _DATA_HEADER.pack(size + 5, StreamFrame.DATA, self.sid) + data):
            self.credit -= size  # the fast path: nothing of ours waits, and the connection takes data
            return
        self._out.append(data)
        self._out_size += len(data)
        if self.credit > 0:
            self.mux.ready(self)

    def send_fin(self) -> None:
        if self.gone or self.fin_wanted:
            return
        self.fin_wanted = True
        self.mux.ready(self)

    def consumed(self, size: int) -> None:
        if self.gone:
            return
        self.consumed_total = consumed = self.consumed_total + size
        mux = self.mux
        mux.committed -= size
        grant = consumed + self.window - self.recv_limit
        if grant >= self.window >> 2:
            grant = mux.commit(self.recv_limit - consumed, grant)
            if grant:
                self.recv_limit += grant
                mux.send_control(frames.encode_credit(self.sid, grant))

    def reset(self, reason: str, detail: str = "") -> None:
        if not self.gone:
            self.mux.send_control(frames.encode_reset(self.sid, reason, detail))
            self.mux.forget(self)

    @property
    def outstanding(self) -> int:
        """Bytes the other side may still send (granted, not yet taken by the protocol)."""
        return self.recv_limit - self.consumed_total

    def closed(self) -> None:
        self.mux.forget(self)

    # -- sending --------------------------------------------------------------------------------

    def sendable(self) -> bool:
        if self.gone:
            return False
        if self._out_size:
            return self.credit > 0
        return self.fin_wanted and not self.fin_taken

    def take_into(self, out: list) -> int:
        """Append one frame (data, or the FIN after the data) to C{out}; return its size."""
        if self._out_size:
            n = min(SEND_CHUNK, self.credit, self._out_size)
            out.append(data_header(self.sid, n))
            left = n
            queue = self._out
            while left:
                head = queue[0]
                size = len(head)
                if size <= left:
                    out.append(head)
                    queue.popleft()
                    left -= size
                else:
                    view = head if isinstance(head, memoryview) else memoryview(head)
                    out.append(view[:left])
                    queue[0] = view[left:]
                    left = 0
            self._out_size -= n
            self.credit -= n
            return n + 9
        self.fin_taken = True
        out.append(frames.encode_fin(self.sid))
        return 9


class _Opening:
    """An OPEN of ours waiting for its answer."""

    __slots__ = ("channel", "service", "factory", "deferred", "timer")

    def __init__(self, channel: FramedChannel, service: str, factory: Any, deferred: Deferred, timer: Any) -> None:
        self.channel = channel
        self.service = service
        self.factory = factory
        self.deferred = deferred
        self.timer = timer


class FramedStreams:
    """
    The streams of one connection (see the module docstring); the
    connection's L{crust.session.connection.StreamSource}.

    @param layer: the node's L{crust.streams.manager.Streams} (listeners, options, addresses).
    @param conn: the connection (active).
    """

    log = Logger()

    def __init__(self, layer: "Streams", conn: "PeerConnection", local_id: PeerId, peer_id: PeerId) -> None:
        self.layer = layer
        self.conn = conn
        self.local_id = local_id
        self.peer_id = peer_id
        options = layer.options
        self.window = options.window
        self.connection_window = options.connection_window
        self.min_window = options.min_window
        self.committed = 0  # granted to the peer on all streams and not yet taken by their protocols
        self.high = local_id > peer_id  # our ids have the top bit set
        self.channels: dict[int, FramedChannel] = {}
        self._opening: dict[int, _Opening] = {}
        self._ready: deque[FramedChannel] = deque()
        self._next = 1  # our next id (without the top bit)
        self._peer_last = -1  # the peer's last id (without the top bit)
        self._notify: list[tuple[Callable[[], None], FramedChannel]] = []
        self._notify_call: Any = None
        self.closed = False
        conn.set_stream_source(self)
        conn.set_channel_handler(StreamFrame.DATA, self.channel_data)

    def __repr__(self) -> str:
        return f"<FramedStreams {len(self.channels)} open on {self.conn!r}>"

    @property
    def count(self) -> int:
        """Streams open or opening."""
        return len(self.channels) + len(self._opening)

    # -- StreamSource -------------------------------------------------------------------------------

    def pending(self) -> bool:
        return bool(self._ready)

    def take(self, limit: int) -> bytes:
        out: list = []
        total = 0
        ready = self._ready
        notify = self._notify
        while ready and total < limit:
            channel = ready.popleft()
            if channel.gone:
                channel.queued = False
                continue
            total += channel.take_into(out)
            stream = channel.stream
            if channel.fin_taken and not channel._out_size:
                if stream is not None:
                    notify.append((stream.fin_sent, channel))
            elif channel.notify_drain and stream is not None and channel._out_size <= stream.low_water:
                channel.notify_drain = False
                notify.append((stream.drained, channel))
            if channel.sendable():
                ready.append(channel)
            else:
                channel.queued = False
        if notify and self._notify_call is None:
            # after the transport write: what they do next must not overtake these frames
            self._notify_call = self.layer.clock.callLater(0, self._run_notify)
        return b"".join(out)

    def _run_notify(self) -> None:
        self._notify_call = None
        notify, self._notify = self._notify, []
        for method, _ in notify:
            method()  # (a stream that ended meanwhile ignores it)

    def ready(self, channel: FramedChannel) -> None:
        """C{channel} may have something to send."""
        if channel.queued or not channel.sendable():
            return
        channel.queued = True
        self._ready.append(channel)
        self.conn.streams_ready()

    def write_now(self, frame: bytes) -> bool:
        """Write a stream's frame at once, if no other stream waits and the connection takes data."""
        return not self._ready and not self.closed and self.conn.write_frame(frame)

    def send_control(self, frame: bytes) -> None:
        if not self.closed:
            self.conn.send_control(frame)

    def commit(self, outstanding: int, want: Optional[int] = None) -> int:
        """
        How much more a stream that has C{outstanding} bytes granted may be
        granted, up to C{want} (a window): the connection's streams together
        hold at most C{connection_window} granted and not taken, but every
        stream may have C{min_window}.  The grant is counted as committed.
        """
        if want is None:
            want = self.window
        room = max(self.connection_window - self.committed, self.min_window - outstanding, 0)
        grant = min(want, room)
        self.committed += grant
        return grant

    def forget(self, channel: FramedChannel) -> None:
        if not channel.gone:
            channel.gone = True
            self.committed -= channel.outstanding
        if self.channels.get(channel.sid) is channel:
            del self.channels[channel.sid]

    # -- opening ------------------------------------------------------------------------------------

    def open(self, service: str, factory: Any) -> Deferred:
        """Open a stream to C{service}; fires with the protocol C{factory} built once the peer accepted."""
        options = self.layer.options
        if self.closed:
            raise StreamOpenFailed(f"the connection to {self.peer_id} is closing")
        if self.count >= options.max_streams:
            raise StreamOpenFailed(f"{self.count} streams are open to {self.peer_id} (at most {options.max_streams})")
        if len(self._opening) >= options.max_pending_opens:
            raise StreamOpenFailed(f"{len(self._opening)} streams to {self.peer_id} are waiting for an answer "
                                   f"(at most {options.max_pending_opens})")
        if self._next > HIGH_BIT - 1:
            raise StreamOpenFailed(f"the connection to {self.peer_id} used up its stream ids")
        sid = self._next | (HIGH_BIT if self.high else 0)
        self._next += 1
        channel = FramedChannel(self, sid, 0)
        d: Deferred = Deferred(lambda _: self._cancel_open(sid))
        timer = self.layer.clock.callLater(options.open_timeout, self._open_timed_out, sid)
        self._opening[sid] = _Opening(channel, service, factory, d, timer)
        self.conn.send_control(frames.encode_open(sid, channel.recv_limit, service))
        return d

    def _cancel_open(self, sid: int) -> None:
        opening = self._opening.pop(sid, None)
        if opening is not None:
            self.forget(opening.channel)
            if opening.timer.active():
                opening.timer.cancel()
            self.send_control(frames.encode_reset(sid, frames.REASON_ABORTED, "the open was cancelled"))

    def _open_timed_out(self, sid: int) -> None:
        opening = self._opening.pop(sid, None)
        if opening is not None:
            self.forget(opening.channel)
            self.send_control(frames.encode_reset(sid, frames.REASON_ABORTED, "no answer in time"))
            timeout = self.layer.options.open_timeout
            opening.deferred.errback(StreamOpenFailed(
                f"{self.peer_id} did not answer the stream open to service {opening.service!r} "
                f"within {timeout:g} s"))

    # -- frames from the peer -------------------------------------------------------------------------

    def frame_received(self, ftype: int, payload: bytes) -> None:
        if ftype == StreamFrame.DATA:
            self.data_received(payload)
        elif ftype == StreamFrame.CREDIT:
            self._credit(payload)
        elif ftype == StreamFrame.OPEN:
            self._open(payload)
        elif ftype == StreamFrame.ACCEPT:
            self._accept(payload)
        elif ftype == StreamFrame.FIN:
            self._fin(payload)
        elif ftype == StreamFrame.RESET:
            self._reset(payload)

    def data_received(self, payload: bytes) -> None:
        """A STREAM_DATA frame's payload."""
        self.channel_data(frames.data_stream(payload), payload[4:])

    def channel_data(self, sid: int, data: bytes) -> None:
        """The stream id and data of a STREAM_DATA frame (the connection splits them)."""
        size = len(data)
        if not 0 < size <= MAX_CHUNK:
            raise frames.StreamFrameError(f"STREAM_DATA of {size} bytes, not 1..{MAX_CHUNK}")
        channel = self.channels.get(sid)
        if channel is None:
            return  # ended while it was on its way
        if channel.fin_received:
            self._fault(channel, frames.REASON_OVERFLOW, "data after the end of the stream")
            return
        channel.received += size
        if channel.received > channel.recv_limit:
            self._fault(channel, frames.REASON_OVERFLOW,
                        f"the peer sent {channel.received} bytes, {channel.received - channel.recv_limit} "
                        "over its window")
            return
        stream = channel.stream
        if stream is not None:
            stream.data_received(data)

    def _fault(self, channel: FramedChannel, reason: str, detail: str) -> None:
        self.layer.note_fault(self.peer_id, f"stream {channel.sid:#x}: {detail}")
        channel.reset(reason, detail)
        if channel.stream is not None:
            channel.stream.reset_received(reason, detail, by_peer=False)

    def _credit(self, payload: bytes) -> None:
        sid, credit = frames.decode_credit(payload)
        channel = self.channels.get(sid)
        if channel is not None:
            channel.credit += credit
            if channel._out_size:
                self.ready(channel)

    def _fin(self, payload: bytes) -> None:
        channel = self.channels.get(frames.decode_fin(payload))
        if channel is None or channel.fin_received:
            return
        channel.fin_received = True
        if channel.stream is not None:
            channel.stream.fin_received()

    def _reset(self, payload: bytes) -> None:
        reset = frames.decode_reset(payload)
        opening = self._opening.pop(reset.sid, None)
        if opening is not None:
            self.forget(opening.channel)
            if opening.timer.active():
                opening.timer.cancel()
            opening.deferred.errback(StreamRefused(self.peer_id, opening.service, reset.reason, reset.detail))
            return
        channel = self.channels.get(reset.sid)
        if channel is not None:
            self.forget(channel)
            if channel.stream is not None:
                channel.stream.reset_received(reset.reason, reset.detail)

    def _accept(self, payload: bytes) -> None:
        sid, window = frames.decode_accept(payload)
        opening = self._opening.pop(sid, None)
        if opening is None:
            if is_ours(sid, self.high) and (sid & ~HIGH_BIT) < self._next and sid not in self.channels:
                # an open we gave up on (timed out, cancelled) and reset: the RESET is on its way
                return
            raise ProtocolViolation(f"STREAM_ACCEPT for stream {sid:#x}, which we did not open")
        if opening.timer.active():
            opening.timer.cancel()
        channel = opening.channel
        channel.credit = window
        self.channels[sid] = channel
        try:
            protocol = self._start(channel, opening.service, opening.factory)
        except Exception:
            opening.deferred.errback()
            return
        opening.deferred.callback(protocol)

    def _open(self, payload: bytes) -> None:
        request = frames.decode_open(payload)
        sid = request.sid
        if is_ours(sid, self.high):
            raise ProtocolViolation(f"STREAM_OPEN with id {sid:#x}, which is in our half of the ids")
        number = sid & ~HIGH_BIT
        if number <= self._peer_last:
            raise ProtocolViolation(f"STREAM_OPEN with id {sid:#x}, not above the peer's last ({self._peer_last})")
        self._peer_last = number
        options = self.layer.options
        if self.count >= options.max_streams:
            self.send_control(frames.encode_reset(sid, frames.REASON_TOO_MANY,
                                                  f"{self.count} streams are open (at most {options.max_streams})"))
            return
        factory = self.layer.factory_for(request.service, self.peer_id)
        if factory is None:
            self.send_control(frames.encode_reset(sid, frames.REASON_REFUSED,
                                                  f"nobody listens for service {request.service!r} here"))
            return
        channel = FramedChannel(self, sid, request.window)
        self.channels[sid] = channel
        self.send_control(frames.encode_accept(sid, channel.recv_limit))  # ahead of anything the protocol writes
        try:
            self._start(channel, request.service, factory)
        except Exception:
            self.log.failure("cannot start a stream of service {service!r} from {peer}",
                             service=request.service, peer=str(self.peer_id))

    def _start(self, channel: FramedChannel, service: str, factory: Any) -> Any:
        """Make the stream of an open channel and run C{factory}'s protocol on it."""
        stream = self.layer.make_stream(channel, self.conn, self.peer_id, service)
        channel.stream = stream
        return self.layer.run_protocol(stream, channel, service, factory)

    # -- the end --------------------------------------------------------------------------------------

    def connection_lost(self, reason: str) -> None:
        """The connection ended: every stream on it ends, every open fails."""
        if self.closed:
            return
        self.closed = True
        self.conn.set_stream_source(None)
        self.conn.set_channel_handler(StreamFrame.DATA, None)
        channels, self.channels = list(self.channels.values()), {}
        openings, self._opening = list(self._opening.values()), {}
        self._ready.clear()
        text = f"the crust connection to {self.peer_id} ended: {reason}"
        for channel in channels:
            channel.gone = True
            if channel.stream is not None:
                channel.stream.lost(Failure(ConnectionLost(text)))
        for opening in openings:
            if opening.timer.active():
                opening.timer.cancel()
            opening.deferred.errback(StreamOpenFailed(text))
