"""
The control frames of relayed circuits (pure: no I/O).

A node A connected to a relay R opens a circuit through R to a peer T that
R is also connected to; inside the circuit A and T run crust's ordinary
secure channel, end to end.  On each connection to R, seven control
frames::

    21 OPEN    {"c": u32, "to": "<peer id>", "splice"?: true}       A -> R
    22 INVITE  {"c": u32, "from": "<peer id>", "window": int,
                "splice"?: token}                                   R -> T
    23 ACCEPT  {"c": u32, "splice"?: true}                          T -> R
    24 READY   {"c": u32, "limits": {"bytes": int, "seconds": number,
                 "rate": int or null, "window": int},
                "splice"?: token}                                   R -> A
    25 DATA    c (u32, big-endian) | bytes                          both ways, through R
    26 CREDIT  c (u32) | credit (u32)                               both ways, through R
    27 CLOSE   {"c": u32, "reason": code, "detail": text}           any -> any

C{c} names the circuit on one connection (a I{leg}); R rewrites it when it
forwards.  C{window} is how far each end may send beyond what the other
granted back (end-to-end flow control, L{crust.relay.circuit}): R chooses
it (it holds up to a window per direction), L{MIN_WINDOW}..L{MAX_WINDOW},
and tells both ends.  The side that picks an id (the sender of OPEN or INVITE) picks it
in its half of the id space: ids picked by the side with the larger peer id
have the top bit set (L{id_space}), so the two sides of a connection never
pick the same id, whichever of them opens circuits through the other.

C{splice} (optional, absent when not wanted): an end that can open a TCP
connection to R says C{true} in OPEN or ACCEPT; R, when it can splice, gives
each end a fresh single-use token (L{crust.relay.preamble}, 64 hexadecimal
digits) in INVITE (if A asked) and READY (if T accepted with C{splice}).
Each end then presents its token on a plain TCP connection to R, which
joins the two connections (L{crust.relay.splicer}); the frames above still
open, limit and close the circuit.

JSON frames are read by the one bounded reader,
L{crust._util.jsonread.read_json_object} (size capped before parsing,
nesting checked before recursing): flat objects of scalars, except READY's
C{limits}.
Unknown keys are ignored (for later versions); a CLOSE's reason is kept as
it is (short text), so that a newer R's reasons still read.  DATA carries
1..L{MAX_CHUNK} bytes; CREDIT grants 1..L{MAX_WINDOW} bytes.  Every C{decode_*}
raises L{ProtocolViolation} with a clear message on anything malformed,
and nothing else.
"""

from __future__ import annotations

import enum
import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Callable, Optional

from crust._util.jsonread import JsonRefused, read_json_object
from crust.errors import ProtocolViolation
from crust.identity import PeerId
from crust.relay.preamble import token_from_text, token_text
from crust.wire import HEADER_SIZE, MAX_CONTROL_PAYLOAD, frame


class RelayFrame(enum.IntEnum):
    """The control frame types of relayed circuits."""

    OPEN = 21
    INVITE = 22
    ACCEPT = 23
    READY = 24
    DATA = 25
    CREDIT = 26
    CLOSE = 27


RELAY_OPEN = RelayFrame.OPEN
RELAY_INVITE = RelayFrame.INVITE
RELAY_ACCEPT = RelayFrame.ACCEPT
RELAY_READY = RelayFrame.READY
RELAY_DATA = RelayFrame.DATA
RELAY_CREDIT = RelayFrame.CREDIT
RELAY_CLOSE = RelayFrame.CLOSE

# --- limits -----------------------------------------------------------------------------

#: The largest JSON frame payload (that of every control frame).
MAX_FRAME_PAYLOAD = MAX_CONTROL_PAYLOAD
#: The most bytes one DATA frame carries.
MAX_CHUNK = 64 * 1024
#: The bounds of a circuit's window: how far a sender may run ahead of what the other end granted
#: (bytes, each direction; R chooses it, L{crust.config.RelayLimits.window}).
MIN_WINDOW = MAX_CHUNK
MAX_WINDOW = 16 * 1024 * 1024
#: The largest DATA frame, header included: a node whose C{max_message_size}
#: is below C{MAX_DATA_FRAME - HEADER_SIZE} cannot take part in circuits.
MAX_DATA_FRAME = HEADER_SIZE + 4 + MAX_CHUNK
#: The length of a CLOSE's detail, in characters.
MAX_DETAIL = 512
#: The most keys a frame (or READY's limits) may have.
MAX_FRAME_KEYS = 16
_MAX_REASON = 64
_U32 = 0xFFFFFFFF
#: The top bit of a circuit id: set on ids picked by the side with the larger peer id.
HIGH_BIT = 0x80000000

# --- close reasons ---------------------------------------------------------------------

REASON_CLOSED = "closed"  # an end closed its connection
REASON_ABORTED = "aborted"  # an end aborted its connection
REASON_REFUSED = "refused"  # T refused the circuit (or R refused one it may not carry)
REASON_TIMEOUT = "timeout"  # T did not answer the INVITE in time
REASON_DISABLED = "disabled"  # R does not relay
REASON_NOT_CONNECTED = "not-connected"  # R is not connected to the target
REASON_TOO_MANY = "too-many-circuits"  # R's caps
REASON_RATE_LIMITED = "rate-limited"  # too many OPENs from this peer lately
REASON_BYTE_LIMIT = "byte-limit"  # the circuit carried its bytes in one direction
REASON_TIME_LIMIT = "time-limit"  # the circuit lasted its time
REASON_OVERFLOW = "overflow"  # a side ran past its window, or granted credit for bytes never sent
REASON_PEER_LOST = "peer-lost"  # the connection to the other end (or to R) ended
REASON_SHUTDOWN = "shutdown"  # R (or an end) is stopping

#: The reasons this version sends.
REASONS = frozenset({
    REASON_CLOSED, REASON_ABORTED, REASON_REFUSED, REASON_TIMEOUT, REASON_DISABLED, REASON_NOT_CONNECTED,
    REASON_TOO_MANY, REASON_RATE_LIMITED, REASON_BYTE_LIMIT, REASON_TIME_LIMIT, REASON_OVERFLOW,
    REASON_PEER_LOST, REASON_SHUTDOWN,
})


# --- messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class CircuitLimits:
    """
    What R gives one circuit: C{bytes} each direction, C{seconds}, C{rate}
    bytes a second (None: unlimited), and its C{window}.
    """

    bytes: int
    seconds: float
    rate: Optional[int]
    window: int


@dataclass(frozen=True)
class RelayOpen:
    """OPEN: R, please open circuit C{c} (our id) to C{to}; C{splice}: we can splice it."""

    c: int
    to: PeerId
    splice: bool = False


@dataclass(frozen=True)
class RelayInvite:
    """
    INVITE: C{from_peer} (as R names it) opens circuit C{c} (R's id) to you,
    with this C{window}; C{splice}: your splice token, if R offers to splice.
    """

    c: int
    from_peer: PeerId
    window: int
    splice: Optional[bytes] = None


@dataclass(frozen=True)
class RelayAccept:
    """ACCEPT: T takes circuit C{c}; C{splice}: and will splice it."""

    c: int
    splice: bool = False


@dataclass(frozen=True)
class RelayReady:
    """READY: circuit C{c} is open, with C{limits}; C{splice}: your splice token, if it is to be spliced."""

    c: int
    limits: CircuitLimits
    splice: Optional[bytes] = None


@dataclass(frozen=True)
class RelayClose:
    """CLOSE: circuit C{c} ended; C{reason} (one of L{REASONS} or newer), C{detail} for people."""

    c: int
    reason: str
    detail: str = ""


RelayMessage = RelayOpen | RelayInvite | RelayAccept | RelayReady | RelayClose


# --- ids --------------------------------------------------------------------------------


def id_space(picker: PeerId, other: PeerId) -> int:
    """The top bit of the circuit ids C{picker} picks on its connection to C{other}: L{HIGH_BIT} or 0."""
    return HIGH_BIT if picker > other else 0


def picked_by(c: int, picker: PeerId, other: PeerId) -> bool:
    """Whether circuit id C{c} is in C{picker}'s half of its connection to C{other}."""
    return (c & HIGH_BIT) == id_space(picker, other)


# --- encoding ---------------------------------------------------------------------------


def _u32(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U32:
        raise ValueError(f"{what} is an integer in 0..{_U32}, not {value!r}")
    return value


def _peer(peer: PeerId) -> str:
    if not isinstance(peer, PeerId):
        raise TypeError(f"not a PeerId: {peer!r}")
    return str(peer)


def _json_frame(ftype: RelayFrame, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(payload) > MAX_FRAME_PAYLOAD:  # pragma: no cover - every field is bounded
        raise ValueError(f"{ftype.name} of {len(payload)} bytes is over {MAX_FRAME_PAYLOAD}")
    return frame(ftype, payload)


def _with_splice(body: dict[str, Any], splice: Any) -> dict[str, Any]:
    if splice is True:
        body["splice"] = True
    elif splice is not None and splice is not False:
        body["splice"] = token_text(splice)
    return body


def encode_open(c: int, to: PeerId, splice: bool = False) -> bytes:
    """An OPEN frame (C{splice}: we can splice the circuit)."""
    return _json_frame(RELAY_OPEN, _with_splice({"c": _u32(c, "a circuit id"), "to": _peer(to)}, bool(splice)))


def _window(window: int) -> int:
    if not isinstance(window, int) or isinstance(window, bool) or not MIN_WINDOW <= window <= MAX_WINDOW:
        raise ValueError(f"a window is an integer in {MIN_WINDOW}..{MAX_WINDOW}, not {window!r}")
    return window


def encode_invite(c: int, from_peer: PeerId, window: int, splice: Optional[bytes] = None) -> bytes:
    """An INVITE frame (C{splice}: the invitee's splice token)."""
    return _json_frame(RELAY_INVITE, _with_splice({"c": _u32(c, "a circuit id"), "from": _peer(from_peer),
                                                   "window": _window(window)}, splice))


def encode_accept(c: int, splice: bool = False) -> bytes:
    """An ACCEPT frame (C{splice}: we will splice the circuit)."""
    return _json_frame(RELAY_ACCEPT, _with_splice({"c": _u32(c, "a circuit id")}, bool(splice)))


def encode_ready(c: int, limits: CircuitLimits, splice: Optional[bytes] = None) -> bytes:
    """A READY frame. @raise ValueError: a limit is out of range."""
    if not isinstance(limits.bytes, int) or isinstance(limits.bytes, bool) or limits.bytes < 1:
        raise ValueError(f"a byte limit is a positive integer, not {limits.bytes!r}")
    if not isinstance(limits.seconds, (int, float)) or not math.isfinite(limits.seconds) or limits.seconds <= 0:
        raise ValueError(f"a time limit is a positive number, not {limits.seconds!r}")
    rate = limits.rate
    if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate < 1):
        raise ValueError(f"a rate limit is a positive integer or None, not {rate!r}")
    return _json_frame(RELAY_READY, _with_splice({"c": _u32(c, "a circuit id"), "limits": {
        "bytes": limits.bytes, "seconds": float(limits.seconds), "rate": rate, "window": _window(limits.window)}},
        splice))


def encode_close(c: int, reason: str, detail: str = "") -> bytes:
    """
    A CLOSE frame; C{detail} is cut to L{MAX_DETAIL} characters.  C{reason}
    is one of L{REASONS}, or (a relay passing on another's CLOSE) any reason
    L{decode_close} accepts.

    @raise ValueError: C{reason} is not 1..64 characters of text.
    """
    if not isinstance(reason, str) or not 0 < len(reason) <= _MAX_REASON:
        raise ValueError(f"a relay close reason is 1..{_MAX_REASON} characters, not {reason!r}")
    return _json_frame(RELAY_CLOSE, {"c": _u32(c, "a circuit id"), "reason": reason,
                                     "detail": str(detail)[:MAX_DETAIL]})


_ID = struct.Struct("!I")
_CREDIT = struct.Struct("!II")
_DATA_HEADER = struct.Struct("!IBI")  # frame length, type, circuit id
_CREDIT_FRAME = struct.Struct("!IBII")


def encode_data(c: int, chunk: bytes) -> bytes:
    """
    A DATA frame carrying C{chunk} (bytes-like, 1..L{MAX_CHUNK} bytes) on circuit C{c}.

    @raise ValueError: C{chunk} is empty or too large, or C{c} is not a u32.
    """
    n = len(chunk)
    if not 0 < n <= MAX_CHUNK:
        raise ValueError(f"a DATA frame carries 1..{MAX_CHUNK} bytes, not {n}")
    return _DATA_HEADER.pack(n + 5, RELAY_DATA, _u32(c, "a circuit id")) + chunk


def rewrite_data(payload: bytes, c: int) -> bytes:
    """The DATA frame that carries a received DATA frame's C{payload} (checked) onward as circuit C{c}."""
    return _DATA_HEADER.pack(len(payload) + 1, RELAY_DATA, c) + memoryview(payload)[4:]


def encode_credit(c: int, credit: int) -> bytes:
    """A CREDIT frame granting C{credit} (1..L{MAX_WINDOW}) bytes on circuit C{c}."""
    if not isinstance(credit, int) or isinstance(credit, bool) or not 0 < credit <= MAX_WINDOW:
        raise ValueError(f"a CREDIT frame grants 1..{MAX_WINDOW} bytes, not {credit!r}")
    return _CREDIT_FRAME.pack(9, RELAY_CREDIT, _u32(c, "a circuit id"), credit)


# --- decoding ---------------------------------------------------------------------------


def data_circuit(payload: bytes) -> int:
    """
    The circuit id of a DATA frame's payload, after checking its size (the
    data is C{payload[4:]}).

    @raise ProtocolViolation: it carries no data, or more than L{MAX_CHUNK} bytes.
    """
    n = len(payload)
    if not 4 < n <= 4 + MAX_CHUNK:
        raise ProtocolViolation(f"relay DATA of {n} bytes: it is a circuit id and 1..{MAX_CHUNK} bytes")
    return _ID.unpack_from(payload)[0]


def decode_data(payload: bytes) -> tuple[int, bytes]:
    """A DATA frame's circuit id and data. @raise ProtocolViolation: see L{data_circuit}."""
    return data_circuit(payload), bytes(payload[4:])


def decode_credit(payload: bytes) -> tuple[int, int]:
    """
    A CREDIT frame's circuit id and credit.

    @raise ProtocolViolation: not 8 bytes, or a credit outside 1..L{MAX_WINDOW}.
    """
    if len(payload) != 8:
        raise ProtocolViolation(f"relay CREDIT of {len(payload)} bytes, not 8")
    c, credit = _CREDIT.unpack(payload)
    if not 0 < credit <= MAX_WINDOW:
        raise ProtocolViolation(f"relay CREDIT grants {credit} bytes, not 1..{MAX_WINDOW}")
    return c, credit


def _read_frame(payload: bytes, name: str, depth: int = 1) -> dict[str, Any]:
    try:
        body = read_json_object(payload, max_size=MAX_FRAME_PAYLOAD, max_depth=depth, max_containers=depth)
    except JsonRefused as e:
        raise ProtocolViolation(f"relay {name}: {e}") from None
    if len(body) > MAX_FRAME_KEYS:
        raise ProtocolViolation(f"relay {name} has {len(body)} keys, over {MAX_FRAME_KEYS}")
    return body




def _get_int(body: dict[str, Any], key: str, name: str, low: int, high: Optional[int] = None) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise ProtocolViolation(f"relay {name} has no valid {key!r} (an integer of at least {low} expected)")
    return value


def _get_c(body: dict[str, Any], name: str) -> int:
    return _get_int(body, "c", name, 0, _U32)


def _get_peer(body: dict[str, Any], key: str, name: str) -> PeerId:
    text = body.get(key)
    if not isinstance(text, str):
        raise ProtocolViolation(f"relay {name} has no valid {key!r} (a peer id expected)")
    try:
        return PeerId.from_text(text)
    except ValueError:
        raise ProtocolViolation(f"relay {name} has a bad peer id in {key!r}") from None


def _get_flag(body: dict[str, Any], name: str) -> bool:
    value = body.get("splice", False)
    if not isinstance(value, bool):
        raise ProtocolViolation(f"relay {name} has a 'splice' that is not a boolean")
    return value


def _get_token(body: dict[str, Any], name: str) -> Optional[bytes]:
    if "splice" not in body:
        return None
    try:
        return token_from_text(body["splice"])
    except ProtocolViolation as e:
        raise ProtocolViolation(f"relay {name}: {e}") from None


def decode_open(payload: bytes) -> RelayOpen:
    """The OPEN in a frame's payload. @raise ProtocolViolation: it is malformed."""
    body = _read_frame(payload, "OPEN")
    return RelayOpen(_get_c(body, "OPEN"), _get_peer(body, "to", "OPEN"), _get_flag(body, "OPEN"))


def decode_invite(payload: bytes) -> RelayInvite:
    """The INVITE in a frame's payload. @raise ProtocolViolation: it is malformed."""
    body = _read_frame(payload, "INVITE")
    return RelayInvite(_get_c(body, "INVITE"), _get_peer(body, "from", "INVITE"),
                       _get_int(body, "window", "INVITE", MIN_WINDOW, MAX_WINDOW), _get_token(body, "INVITE"))


def decode_accept(payload: bytes) -> RelayAccept:
    """The ACCEPT in a frame's payload. @raise ProtocolViolation: it is malformed."""
    body = _read_frame(payload, "ACCEPT")
    return RelayAccept(_get_c(body, "ACCEPT"), _get_flag(body, "ACCEPT"))


def decode_ready(payload: bytes) -> RelayReady:
    """The READY in a frame's payload. @raise ProtocolViolation: it is malformed."""
    body = _read_frame(payload, "READY", depth=2)
    c = _get_c(body, "READY")
    for key, value in body.items():
        if key != "limits" and isinstance(value, (dict, list)):
            raise ProtocolViolation(f"relay READY has a structured value in {key!r}")
    limits = body.get("limits")
    if not isinstance(limits, dict):
        raise ProtocolViolation("relay READY has no limits object")
    if len(limits) > MAX_FRAME_KEYS:
        raise ProtocolViolation(f"relay READY's limits have {len(limits)} keys, over {MAX_FRAME_KEYS}")
    nbytes = _get_int(limits, "bytes", "READY", 1)
    seconds = limits.get("seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds) \
            or seconds <= 0:
        raise ProtocolViolation("relay READY has no valid time limit (a positive number expected)")
    rate = limits.get("rate")
    if rate is not None:
        rate = _get_int(limits, "rate", "READY", 1)
    window = _get_int(limits, "window", "READY", MIN_WINDOW, MAX_WINDOW)
    return RelayReady(c, CircuitLimits(nbytes, float(seconds), rate, window), _get_token(body, "READY"))


def decode_close(payload: bytes) -> RelayClose:
    """
    The CLOSE in a frame's payload; a reason not in L{REASONS} is kept as it
    is (a short text).  @raise ProtocolViolation: it is malformed.
    """
    body = _read_frame(payload, "CLOSE")
    c = _get_c(body, "CLOSE")
    reason = body.get("reason")
    if not isinstance(reason, str) or not 0 < len(reason) <= _MAX_REASON:
        raise ProtocolViolation("relay CLOSE has a bad reason")
    detail = body.get("detail", "")
    if not isinstance(detail, str) or len(detail) > MAX_DETAIL:
        raise ProtocolViolation("relay CLOSE has a bad detail")
    return RelayClose(c, reason, detail)


_DECODERS: dict[int, Callable[[bytes], RelayMessage]] = {
    RELAY_OPEN: decode_open,
    RELAY_INVITE: decode_invite,
    RELAY_ACCEPT: decode_accept,
    RELAY_READY: decode_ready,
    RELAY_CLOSE: decode_close,
}


def decode_frame(ftype: int, payload: bytes) -> RelayMessage:
    """
    The JSON relay message in a control frame of type C{ftype} (DATA and
    CREDIT have their own decoders).

    @raise ProtocolViolation: C{ftype} is not a JSON relay frame, or the payload is malformed.
    """
    decoder = _DECODERS.get(ftype)
    if decoder is None:
        raise ProtocolViolation(f"frame type {ftype} is not a JSON relay frame")
    return decoder(payload)


__all__ = [
    "CircuitLimits", "RelayFrame", "RelayOpen", "RelayInvite", "RelayAccept", "RelayReady", "RelayClose",
    "RelayMessage", "MAX_CHUNK", "MIN_WINDOW", "MAX_WINDOW", "MAX_DATA_FRAME", "REASONS", "encode_open",
    "encode_invite", "encode_accept", "encode_ready", "encode_close", "encode_data", "rewrite_data", "encode_credit",
    "data_circuit", "decode_data", "decode_credit", "decode_open", "decode_invite", "decode_accept",
    "decode_ready", "decode_close", "decode_frame", "id_space", "picked_by",
]
