"""
The wire formats of byte streams (pure: no I/O).

Over a connection whose transport is one ordered byte stream (TCP, a
relayed circuit), streams are multiplexed as six control frames of the
connection (doc/protocol.md section 13)::

    32 STREAM_OPEN    sid (u32) | window (u32) | service (UTF-8, 1..255 bytes)
    33 STREAM_ACCEPT  sid (u32) | window (u32)
    34 STREAM_DATA    sid (u32) | 1..MAX_CHUNK bytes
    35 STREAM_CREDIT  sid (u32) | credit (u32, 1..MAX_WINDOW)
    36 STREAM_FIN     sid (u32)
    37 STREAM_RESET   sid (u32) | reason length (u8, 1..64) | reason (ASCII) | detail (UTF-8, 0..512 bytes)

C{sid} names a stream on one connection; the side that opens a stream picks
it in its half of the id space (the side with the larger peer id sets the
top bit, L{HIGH_BIT}), and each side's ids only increase.  C{window} is how
many bytes the sender of the frame is ready to receive on the stream before
it grants more (CREDIT).

Over QUIC a stream is a bidirectional QUIC stream of its own, with QUIC's
flow control; its first bytes each way are a small header::

    opener   -> acceptor   service length (u8, 1..255) | service (UTF-8)
    acceptor -> opener     0 (accepted), or
                           1 | reason length (u8) | reason | detail length (u16) | detail, then FIN

Every C{decode_*} and C{parse_*} function raises L{StreamFrameError} (a
L{ProtocolViolation}) with a clear message on anything malformed, and nothing
else; the parsers of the QUIC headers return C{None} while a header is
incomplete.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Optional, Union

from crust.errors import ProtocolViolation
from crust.wire import pack_header


class StreamFrame(enum.IntEnum):
    """The control frame types of multiplexed streams."""

    OPEN = 32
    ACCEPT = 33
    DATA = 34
    CREDIT = 35
    FIN = 36
    RESET = 37


# --- limits -----------------------------------------------------------------------------

#: The most bytes a STREAM_DATA frame carries (a receiver takes up to this).
MAX_CHUNK = 64 * 1024
#: The most bytes this implementation puts in one STREAM_DATA frame.
SEND_CHUNK = MAX_CHUNK
#: A service name: 1..255 bytes of UTF-8, no control characters or whitespace.
MAX_SERVICE_NAME = 255
#: Windows and credits: 1 byte .. 1 GiB.
MAX_WINDOW = 1 << 30
#: The top bit of a stream id: set on ids picked by the side with the larger peer id.
HIGH_BIT = 0x80000000
#: A RESET's reason code: 1..64 ASCII characters.
MAX_REASON = 64
#: A RESET's detail, in bytes of UTF-8.
MAX_DETAIL = 512

_U32 = 0xFFFFFFFF

# --- reset reasons ------------------------------------------------------------------------

REASON_REFUSED = "refused"  # nobody listens for that service
REASON_TOO_MANY = "too-many-streams"  # the connection holds all the streams it may
REASON_ABORTED = "aborted"  # the application aborted the stream
REASON_CLOSED = "closed"  # the side closed the stream and reads no more
REASON_OVERFLOW = "overflow"  # the other side sent past its window
REASON_SHUTDOWN = "shutdown"  # the node is stopping
REASON_BAD_NAME = "bad-service-name"

REASONS = frozenset({REASON_REFUSED, REASON_TOO_MANY, REASON_ABORTED, REASON_CLOSED, REASON_OVERFLOW,
                     REASON_SHUTDOWN, REASON_BAD_NAME})

#: Over QUIC a reset carries an application error code (RESET_STREAM, STOP_SENDING), not text.
RESET_CODES = {REASON_ABORTED: 1, REASON_CLOSED: 2, REASON_OVERFLOW: 3, REASON_SHUTDOWN: 4, REASON_TOO_MANY: 5,
               REASON_REFUSED: 6, REASON_BAD_NAME: 7}
_REASON_OF_CODE = {code: reason for reason, code in RESET_CODES.items()}


def reset_code(reason: str) -> int:
    """The QUIC application error code of a reset C{reason} (C{aborted}'s for a reason without one)."""
    return RESET_CODES.get(reason, RESET_CODES[REASON_ABORTED])


def reset_reason(code: int) -> str:
    """The reason of a QUIC reset's error C{code} (C{code-N} for a code this version does not know)."""
    return _REASON_OF_CODE.get(code, f"code-{code}")


class StreamFrameError(ProtocolViolation):
    """A stream frame or header that does not parse."""


# --- service names ------------------------------------------------------------------------


def check_service_name(name: object) -> str:
    """
    C{name} if it is a valid service name (1..255 bytes of UTF-8, printable,
    no whitespace).

    @raise ValueError: naming what is wrong.
    """
    if not isinstance(name, str):
        raise ValueError(f"a stream service name is text, not {type(name).__name__}")
    problem = _name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


def _name_problem(name: str) -> str:
    if not name:
        return "a stream service name cannot be empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "a stream service name must be valid UTF-8"
    if size > MAX_SERVICE_NAME:
        return f"a stream service name is at most {MAX_SERVICE_NAME} bytes of UTF-8, not {size}"
    if not name.isprintable() or any(c.isspace() for c in name):
        return f"a stream service name has no spaces or control characters: {name!r}"
    return ""


def _decode_name(raw: bytes, what: str) -> str:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StreamFrameError(f"{what}: the service name is not UTF-8") from None
    problem = _name_problem(name)
    if problem:
        raise StreamFrameError(f"{what}: {problem}")
    return name


# --- the multiplexed frames ---------------------------------------------------------------

_ID = struct.Struct("!I")
_ID_WINDOW = struct.Struct("!II")
_DATA_HEADER = struct.Struct("!IBI")  # frame length, type, stream id


@dataclass(frozen=True)
class StreamOpen:
    sid: int
    window: int
    service: str


@dataclass(frozen=True)
class StreamReset:
    sid: int
    reason: str
    detail: str = ""


def _u32(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U32:
        raise ValueError(f"{what} must be a u32, not {value!r}")
    return value


def _window(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_WINDOW:
        raise ValueError(f"{what} must be in 1..{MAX_WINDOW}, not {value!r}")
    return value


def _frame(ftype: int, payload: bytes) -> bytes:
    return pack_header(len(payload) + 1, ftype) + payload


def encode_open(sid: int, window: int, service: str) -> bytes:
    """STREAM_OPEN: open stream C{sid} to C{service}, ready to receive C{window} bytes."""
    name = check_service_name(service).encode("utf-8")
    return _frame(StreamFrame.OPEN, _ID_WINDOW.pack(_u32(sid, "a stream id"), _window(window, "a window")) + name)


def encode_accept(sid: int, window: int) -> bytes:
    """STREAM_ACCEPT: stream C{sid} is open; we are ready to receive C{window} bytes."""
    return _frame(StreamFrame.ACCEPT, _ID_WINDOW.pack(_u32(sid, "a stream id"), _window(window, "a window")))


def data_header(sid: int, size: int) -> bytes:
    """The 9 bytes before C{size} (1..L{MAX_CHUNK}) bytes of data on stream C{sid}."""
    if not 0 < size <= MAX_CHUNK:
        raise ValueError(f"a STREAM_DATA frame carries 1..{MAX_CHUNK} bytes, not {size}")
    return _DATA_HEADER.pack(size + 5, StreamFrame.DATA, sid)


def encode_data(sid: int, chunk: bytes) -> bytes:
    """STREAM_DATA: C{chunk} (1..L{MAX_CHUNK} bytes) on stream C{sid}."""
    return data_header(_u32(sid, "a stream id"), len(chunk)) + bytes(chunk)


def encode_credit(sid: int, credit: int) -> bytes:
    """STREAM_CREDIT: the other side may send C{credit} more bytes on stream C{sid}."""
    return _frame(StreamFrame.CREDIT, _ID_WINDOW.pack(_u32(sid, "a stream id"), _window(credit, "a credit")))


def encode_fin(sid: int) -> bytes:
    """STREAM_FIN: we send nothing more on stream C{sid}."""
    return _frame(StreamFrame.FIN, _ID.pack(_u32(sid, "a stream id")))


def encode_reset(sid: int, reason: str, detail: str = "") -> bytes:
    """STREAM_RESET: stream C{sid} ends at once, both ways, for C{reason} (C{detail} is cut to 512 bytes)."""
    code = _reason_bytes(reason)
    raw = detail.encode("utf-8")[:MAX_DETAIL].decode("utf-8", "ignore").encode("utf-8")
    return _frame(StreamFrame.RESET, _ID.pack(_u32(sid, "a stream id")) + bytes([len(code)]) + code + raw)


def _reason_bytes(reason: str) -> bytes:
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON or not reason.isascii() \
            or not reason.isprintable():
        raise ValueError(f"a stream reset reason is 1..{MAX_REASON} printable ASCII characters, not {reason!r}")
    return reason.encode("ascii")


def decode_open(payload: bytes) -> StreamOpen:
    if len(payload) < 9:
        raise StreamFrameError(f"STREAM_OPEN of {len(payload)} bytes: it needs an id, a window and a name")
    sid, window = _ID_WINDOW.unpack_from(payload)
    if not 0 < window <= MAX_WINDOW:
        raise StreamFrameError(f"STREAM_OPEN with a window of {window}, not 1..{MAX_WINDOW}")
    return StreamOpen(sid, window, _decode_name(bytes(payload[8:]), "STREAM_OPEN"))


def decode_accept(payload: bytes) -> tuple[int, int]:
    """An ACCEPT's stream id and window."""
    if len(payload) != 8:
        raise StreamFrameError(f"STREAM_ACCEPT of {len(payload)} bytes, not 8")
    sid, window = _ID_WINDOW.unpack(payload)
    if not 0 < window <= MAX_WINDOW:
        raise StreamFrameError(f"STREAM_ACCEPT with a window of {window}, not 1..{MAX_WINDOW}")
    return sid, window


def data_stream(payload: bytes) -> int:
    """
    The stream id of a DATA frame's payload, after checking its size (the data is C{payload[4:]}).
    """
    n = len(payload)
    if not 4 < n <= 4 + MAX_CHUNK:
        raise StreamFrameError(f"STREAM_DATA of {n} bytes: it is a stream id and 1..{MAX_CHUNK} bytes")
    return _ID.unpack_from(payload)[0]


def decode_data(payload: bytes) -> tuple[int, bytes]:
    """A DATA frame's stream id and data."""
    return data_stream(payload), bytes(payload[4:])


def decode_credit(payload: bytes) -> tuple[int, int]:
    """A CREDIT frame's stream id and credit."""
    if len(payload) != 8:
        raise StreamFrameError(f"STREAM_CREDIT of {len(payload)} bytes, not 8")
    sid, credit = _ID_WINDOW.unpack(payload)
    if not 0 < credit <= MAX_WINDOW:
        raise StreamFrameError(f"STREAM_CREDIT grants {credit} bytes, not 1..{MAX_WINDOW}")
    return sid, credit


def decode_fin(payload: bytes) -> int:
    if len(payload) != 4:
        raise StreamFrameError(f"STREAM_FIN of {len(payload)} bytes, not 4")
    return int(_ID.unpack(payload)[0])


def decode_reset(payload: bytes) -> StreamReset:
    n = len(payload)
    if n < 6:
        raise StreamFrameError(f"STREAM_RESET of {n} bytes: it needs an id and a reason")
    sid = _ID.unpack_from(payload)[0]
    size = payload[4]
    if not 0 < size <= MAX_REASON or n < 5 + size:
        raise StreamFrameError(f"STREAM_RESET with a reason of {size} bytes (1..{MAX_REASON}, within the frame)")
    return StreamReset(sid, _decode_reason(bytes(payload[5:5 + size]), "STREAM_RESET"),
                       _decode_detail(bytes(payload[5 + size:]), "STREAM_RESET"))


def _decode_reason(raw: bytes, what: str) -> str:
    if not raw.isascii():
        raise StreamFrameError(f"{what}: the reason is not ASCII")
    reason = raw.decode("ascii")
    if not reason.isprintable():
        raise StreamFrameError(f"{what}: the reason has control characters")
    return reason


def _decode_detail(raw: bytes, what: str) -> str:
    if len(raw) > MAX_DETAIL:
        raise StreamFrameError(f"{what}: a detail of {len(raw)} bytes, over {MAX_DETAIL}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StreamFrameError(f"{what}: the detail is not UTF-8") from None


# --- stream ids ---------------------------------------------------------------------------------


def is_ours(sid: int, high: bool) -> bool:
    """Whether C{sid} is in the half of the side whose ids have the top bit set iff C{high}."""
    return bool(sid & HIGH_BIT) == high


# --- the QUIC stream headers --------------------------------------------------------------------

#: The largest QUIC open header (its length byte, and a name of 255 bytes).
MAX_QUIC_OPEN = 1 + MAX_SERVICE_NAME
#: The largest QUIC answer: status, reason (length and 64 bytes), detail (length and 512 bytes).
MAX_QUIC_ANSWER = 1 + 1 + MAX_REASON + 2 + MAX_DETAIL

ACCEPTED = b"\x00"
_REFUSED = 1


def encode_quic_open(service: str) -> bytes:
    """The first bytes an opener sends on a new QUIC stream."""
    name = check_service_name(service).encode("utf-8")
    return bytes([len(name)]) + name


def parse_quic_open(buf: bytes) -> Optional[tuple[str, int]]:
    """The service name at the start of C{buf} and the header's size, or None if incomplete."""
    if not buf:
        return None
    size = buf[0]
    if size == 0:
        raise StreamFrameError("QUIC stream header with an empty service name")
    if len(buf) < 1 + size:
        return None
    return _decode_name(bytes(buf[1:1 + size]), "QUIC stream header"), 1 + size


def encode_quic_refusal(reason: str, detail: str = "") -> bytes:
    """The answer of an acceptor that refuses the stream (FIN follows it)."""
    code = _reason_bytes(reason)
    raw = detail.encode("utf-8")[:MAX_DETAIL].decode("utf-8", "ignore").encode("utf-8")
    return bytes([_REFUSED, len(code)]) + code + struct.pack("!H", len(raw)) + raw


def parse_quic_answer(buf: bytes) -> Optional[tuple[Union[bool, StreamReset], int]]:
    """
    The acceptor's answer at the start of C{buf}: C{(True, 1)} when the stream
    is accepted, C{(StreamReset(0, reason, detail), size)} when refused, or
    None if incomplete.
    """
    if not buf:
        return None
    status = buf[0]
    if status == 0:
        return True, 1
    if status != _REFUSED:
        raise StreamFrameError(f"QUIC stream answer with status {status}, not 0 or 1")
    if len(buf) < 2:
        return None
    size = buf[1]
    if not 0 < size <= MAX_REASON:
        raise StreamFrameError(f"QUIC stream refusal with a reason of {size} bytes, not 1..{MAX_REASON}")
    if len(buf) < 4 + size:
        return None
    reason = _decode_reason(bytes(buf[2:2 + size]), "QUIC stream refusal")
    (length,) = struct.unpack_from("!H", buf, 2 + size)
    if length > MAX_DETAIL:
        raise StreamFrameError(f"QUIC stream refusal with a detail of {length} bytes, over {MAX_DETAIL}")
    end = 4 + size + length
    if len(buf) < end:
        return None
    return StreamReset(0, reason, _decode_detail(bytes(buf[4 + size:end]), "QUIC stream refusal")), end
