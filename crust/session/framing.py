"""
The frame decoder: bytes in, whole frames out.  Pure logic, no I/O.

It rejects a frame as soon as its header announces more than the limit, so an
oversize frame is never buffered; a large frame arriving in many small chunks
is collected without quadratic copying.
"""

from __future__ import annotations

from typing import Callable, Optional

from crust.errors import ProtocolViolation
from crust.wire import DATA, HEADER_SIZE, LENGTH


# A frame still missing more than this many bytes is collected as a list of
# chunks and joined once, rather than re-joined with every chunk that arrives.
_COLLECT_ABOVE = 8192


class FrameTooLarge(ProtocolViolation):
    """A frame header announced more than the maximum frame size."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"peer announced a frame of {size} bytes, over the limit of {limit}")
        self.size = size
        self.limit = limit


class FrameDecoder:
    """
    Splits a byte stream into frames.

    DATA payloads go to C{on_data(payload)}, every other frame to
    C{on_control(type, payload)}, but frames of a type given a channel
    handler (L{set_channel_handler}): their payload is a u32 channel id and
    data, and they go to C{handler(channel, data)}, the data sliced from
    what was read once.  Errors raise L{ProtocolViolation}; the decoder is
    then unusable, as is the stream it read.  After L{stop} (a handler may
    call it), nothing more is delivered.

    @ivar data_frames: the DATA frames decoded so far (those of a chunk whose
        handler raised are not counted).
    @ivar data_bytes: their payload bytes.
    """

    __slots__ = ("_max_length", "_on_data", "_on_control", "_buffer", "_pending", "_pending_size", "_need",
                 "data_frames", "data_bytes", "_stopped", "_channels")

    def __init__(
        self,
        max_payload: int,
        on_data: Callable[[bytes], object],
        on_control: Callable[[int, bytes], object],
    ) -> None:
        self._max_length = max_payload + 1  # the type byte counts
        self._on_data: Optional[Callable[[bytes], object]] = on_data
        self._on_control = on_control
        self._buffer = b""
        self._pending: list[bytes] = []  # chunks of a frame larger than what we hold
        self._pending_size = 0
        self._need = 0  # total bytes the pending frame needs (header included)
        self.data_frames = 0  # DATA frames decoded so far
        self.data_bytes = 0  # and their payload bytes
        self._stopped = False
        self._channels: dict[int, Callable[[int, bytes], object]] = {}

    def set_channel_handler(self, ftype: int, handler: Optional[Callable[[int, bytes], object]]) -> None:
        """
        Frames of C{ftype} go to C{handler(channel, data)} (see the class
        docstring); a payload shorter than a channel id still goes to
        C{on_control}.  None: back to C{on_control}.
        """
        if handler is None:
            self._channels.pop(ftype, None)
        else:
            self._channels[ftype] = handler

    def set_handlers(self, on_data: Callable[[bytes], object], on_control: Callable[[int, bytes], object]) -> None:
        self._on_data = on_data
        self._on_control = on_control

    def reset(self) -> None:
        """Forget what was buffered (the stream ended: a partial frame will never be completed)."""
        self._buffer = b""
        self._pending = []
        self._pending_size = 0
        self._need = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer) + self._pending_size

    def stop(self) -> None:
        """Deliver no more frames, not even the rest of the chunk being read; drop what is buffered."""
        self._stopped = True
        self._on_data = None  # (what _parse looks at after each frame)
        self._buffer = b""
        self._pending = []
        self._pending_size = self._need = 0

    def feed(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._need:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size < self._need:
                return
            data = b"".join(self._pending)
            self._pending = []
            self._pending_size = 0
            self._need = 0
        elif self._buffer:
            data = self._buffer + data
        self._parse(data)

    def _parse(self, buf: bytes) -> None:
        unpack = LENGTH.unpack_from
        max_length = self._max_length
        on_data = self._on_data
        channels = self._channels
        size = len(buf)
        offset = 0
        # DATA frames, counted once per chunk; their bytes are what was read less the control frames' (counted
        # on their path, the rare one) and the DATA frames' headers
        frames = control = 0
        while size - offset >= HEADER_SIZE:
            (length,) = unpack(buf, offset)
            if length > max_length:
                self._buffer = b""
                raise FrameTooLarge(length - 1, max_length - 1)
            if length == 0:
                self._buffer = b""
                raise ProtocolViolation("peer sent a frame of length 0")
            end = offset + 4 + length
            if end > size:
                break
            ftype = buf[offset + 4]
            if ftype == DATA:
                on_data(buf[offset + 5 : end])  # type: ignore[misc]  # (None only once stopped: the loop ends)
                frames += 1
            else:
                control += end - offset
                if channels and ftype in channels and length >= 5:
                    channels[ftype](unpack(buf, offset + 5)[0], buf[offset + 9 : end])
                else:
                    self._on_control(ftype, buf[offset + 5 : end])
            offset = end
            # a handler may have swapped handlers (state change): pick them up; None: it stopped us, and what
            # follows is not read
            on_data = self._on_data
            if on_data is None:
                break
        if frames:
            self.data_frames += frames
            self.data_bytes += offset - control - HEADER_SIZE * frames
        if self._stopped:
            return
        rest = buf[offset:] if offset else buf
        if len(rest) >= HEADER_SIZE:
            (length,) = unpack(rest, 0)
            need = 4 + length
            if need - len(rest) > _COLLECT_ABOVE:
                # a large frame: collect the chunks, join them once
                self._buffer = b""
                self._pending = [rest]
                self._pending_size = len(rest)
                self._need = need
                return
        self._buffer = rest
