"""
The rendezvous of hole punching: its control frames, and the sealed, signed
envelope it carries (pure: no I/O, time passed in as C{now}).

Two nodes A and T, both connected to a common peer R, exchange what a punch
needs through R.  On each connection to R, five control frames (JSON
objects, like HELLO's, of at most L{MAX_FRAME_PAYLOAD} bytes)::

    16 QUERY    {"q": <u32 request id>, "peer": "<peer id>"}                   A -> R
    17 ANSWER   {"q": id, "peer": ..., "connected": bool, "relay": bool}        R -> A
    18 FORWARD  {"to": "<peer id>", "blob": "<base64 envelope>"}                A -> R
    19 DELIVER  {"from": "<peer id>", "blob": "<base64 envelope>"}              R -> T
    20 ERROR    {"to": "<peer id>", "reason": "not-connected" | "rate-limited"
                 | "disabled" | "too-large", "detail": str}                      R -> A

R forwards blobs between two peers connected to it and never opens them.
Each C{decode_*} takes a frame's payload and raises L{ProtocolViolation}
with a clear message on anything malformed; unknown keys are ignored (for
later versions) but every value must be a scalar, and an ERROR's reason is
kept as it is, so that a newer R's reasons still read.

A blob is an envelope from A to T that only T can open and that R can
neither read nor alter nor pass off as coming from someone else::

    inner  = canonical JSON {"v":1, "t":"connect"|"reply"|"sync"|"result", "from":A, "to":T,
                             "net":<network hash>, "attempt":"<16 hex>", "ts":<unix seconds>, "body":{...}}
    signed = Ed25519 signature over CONTEXT + inner (64 bytes), then inner
    blob   = nonce(24) + crypto_box(signed, nonce, curve_pk(T), curve_sk(A))

L{open_envelope} refuses, with an L{EnvelopeError} whose C{reason} is one of
the C{REASON_*} codes, anything too large, unreadable, badly signed,
addressed to or from someone else, of another network, stale (more than
L{MAX_AGE} seconds off), replayed, or not of the fixed shape.

JSON from the network is read by L{crust._util.jsonread.read_json_object},
which refuses a payload over its cap before parsing it, and nesting deeper
(or more arrays and objects) than the shape needs, found by scanning the
brackets outside strings first: no input makes the parser recurse deeply,
and the scan costs little.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from nacl.bindings import crypto_box_afternm, crypto_box_open_afternm, crypto_sign_open
from nacl.exceptions import CryptoError

from crust._util.jsonread import JsonRefused, nesting_problem, read_json_object
from crust.errors import CrustError, ProtocolViolation
from crust.identity import Identity, PeerId
from crust.punch.checks import static_shared
from crust.wire import MAX_CONTROL_PAYLOAD, frame

# --- limits ---------------------------------------------------------------------------

#: The largest control frame payload (that of every control frame).
MAX_FRAME_PAYLOAD = MAX_CONTROL_PAYLOAD
#: The largest envelope, in bytes (a FORWARD or DELIVER blob, decoded).
MAX_BLOB = 8 * 1024
#: The largest envelope body, canonical JSON, in bytes.
MAX_BODY = 8 * 1024
#: An envelope whose time stamp is further than this from ours is stale (seconds).
MAX_AGE = 600.0
#: The length of an ERROR's detail, in characters.
MAX_DETAIL = 512
#: The most keys a control frame may have (documented and unknown together).
MAX_FRAME_KEYS = 16
#: How deep an envelope's JSON may nest (the inner object is depth 1).
MAX_ENVELOPE_DEPTH = 8
#: How many arrays and objects an envelope's JSON may hold (the inner object included).
MAX_ENVELOPE_CONTAINERS = 256

ENVELOPE_VERSION = 1
CONTEXT = b"crust-rendezvous-v1\x00"
NONCE_SIZE = 24
BOX_MAC_SIZE = 16
SIGNATURE_SIZE = 64
ATTEMPT_SIZE = 8
_BLOB_OVERHEAD = NONCE_SIZE + BOX_MAC_SIZE + SIGNATURE_SIZE
_MAX_BLOB_TEXT = 4 * ((MAX_BLOB + 2) // 3)  # its base64 length
_U32 = 0xFFFFFFFF


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


# --- control frames ---------------------------------------------------------------------


class RendezvousFrame(enum.IntEnum):
    """The control frame types of the rendezvous."""

    QUERY = 16
    ANSWER = 17
    FORWARD = 18
    DELIVER = 19
    ERROR = 20


RDV_QUERY = RendezvousFrame.QUERY
RDV_ANSWER = RendezvousFrame.ANSWER
RDV_FORWARD = RendezvousFrame.FORWARD
RDV_DELIVER = RendezvousFrame.DELIVER
RDV_ERROR = RendezvousFrame.ERROR

#: The reasons R gives in an ERROR frame.
ERROR_NOT_CONNECTED = "not-connected"
ERROR_RATE_LIMITED = "rate-limited"
ERROR_DISABLED = "disabled"
ERROR_TOO_LARGE = "too-large"
ERROR_REASONS = frozenset({ERROR_NOT_CONNECTED, ERROR_RATE_LIMITED, ERROR_DISABLED, ERROR_TOO_LARGE})
_MAX_REASON = 64


@dataclass(frozen=True)
class RdvQuery:
    """QUERY: is C{peer} connected to you?  C{q} is the request id the ANSWER repeats."""

    q: int
    peer: PeerId


@dataclass(frozen=True)
class RdvAnswer:
    """
    ANSWER to QUERY C{q}: whether C{peer} is connected to R, and whether R would relay.

    @ivar serving: False when R does not serve as a rendezvous (then
        C{connected} is False whatever it holds); sent only when False,
        absent (True) from older nodes.
    """

    q: int
    peer: PeerId
    connected: bool
    relay: bool
    serving: bool = True


@dataclass(frozen=True)
class RdvForward:
    """FORWARD: R, please deliver C{blob} (an envelope) to C{to}."""

    to: PeerId
    blob: bytes


@dataclass(frozen=True)
class RdvDeliver:
    """DELIVER: C{blob} (an envelope) comes from C{from_peer}, as R saw it."""

    from_peer: PeerId
    blob: bytes


@dataclass(frozen=True)
class RdvError:
    """ERROR: R could not forward to C{to}; C{reason} (one of L{ERROR_REASONS} or newer)."""

    to: PeerId
    reason: str
    detail: str = ""


RendezvousMessage = RdvQuery | RdvAnswer | RdvForward | RdvDeliver | RdvError


def _frame(ftype: RendezvousFrame, body: dict[str, Any]) -> bytes:
    payload = _canonical(body)
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError(f"{ftype.name} of {len(payload)} bytes is over {MAX_FRAME_PAYLOAD}")
    return frame(ftype, payload)


def _u32(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U32:
        raise ValueError(f"{what} is an integer in 0..{_U32}, not {value!r}")
    return value


def _blob_text(blob: bytes) -> str:
    if not isinstance(blob, bytes) or not 0 < len(blob) <= MAX_BLOB:
        raise ValueError(f"a blob is 1..{MAX_BLOB} bytes")
    return base64.b64encode(blob).decode("ascii")


def _peer(peer: PeerId) -> str:
    if not isinstance(peer, PeerId):
        raise TypeError(f"not a PeerId: {peer!r}")
    return str(peer)


def encode_query(q: int, peer: PeerId) -> bytes:
    """A QUERY frame."""
    return _frame(RDV_QUERY, {"q": _u32(q, "a request id"), "peer": _peer(peer)})


def encode_answer(q: int, peer: PeerId, connected: bool, relay: bool = False, serving: bool = True) -> bytes:
    """An ANSWER frame (C{"serving": false} only when we do not serve)."""
    body = {"q": _u32(q, "a request id"), "peer": _peer(peer), "connected": bool(connected), "relay": bool(relay)}
    if not serving:
        body["serving"] = False
    return _frame(RDV_ANSWER, body)


def encode_forward(to: PeerId, blob: bytes) -> bytes:
    """A FORWARD frame. @raise ValueError: C{blob} is empty or over L{MAX_BLOB}."""
    return _frame(RDV_FORWARD, {"to": _peer(to), "blob": _blob_text(blob)})


def encode_deliver(from_peer: PeerId, blob: bytes) -> bytes:
    """A DELIVER frame. @raise ValueError: C{blob} is empty or over L{MAX_BLOB}."""
    return _frame(RDV_DELIVER, {"from": _peer(from_peer), "blob": _blob_text(blob)})


def encode_error(to: PeerId, reason: str, detail: str = "") -> bytes:
    """An ERROR frame; C{detail} is cut to L{MAX_DETAIL} characters."""
    if reason not in ERROR_REASONS:
        raise ValueError(f"unknown rendezvous error reason {reason!r}")
    return _frame(RDV_ERROR, {"to": _peer(to), "reason": reason, "detail": str(detail)[:MAX_DETAIL]})


def _read_frame(payload: bytes, name: str) -> dict[str, Any]:
    try:
        body = read_json_object(payload, max_size=MAX_FRAME_PAYLOAD, max_depth=1, max_containers=1)
    except JsonRefused as e:
        raise ProtocolViolation(f"rendezvous {name}: {e}") from None
    if len(body) > MAX_FRAME_KEYS:
        raise ProtocolViolation(f"rendezvous {name} has {len(body)} keys, over {MAX_FRAME_KEYS}")
    return body


def _get(body: dict[str, Any], key: str, kind: type, name: str) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolViolation(f"rendezvous {name} has no valid {key!r} ({kind.__name__} expected)")
    return value


def _get_peer(body: dict[str, Any], key: str, name: str) -> PeerId:
    text = _get(body, key, str, name)
    try:
        return PeerId.from_text(text)
    except ValueError:
        raise ProtocolViolation(f"rendezvous {name} has a bad peer id in {key!r}") from None


def _get_q(body: dict[str, Any], name: str) -> int:
    q = _get(body, "q", int, name)
    if not 0 <= q <= _U32:
        raise ProtocolViolation(f"rendezvous {name} has a request id out of range")
    return q


def _get_blob(body: dict[str, Any], name: str) -> bytes:
    text = _get(body, "blob", str, name)
    if not 0 < len(text) <= _MAX_BLOB_TEXT:
        raise ProtocolViolation(f"rendezvous {name} has a blob of {len(text)} characters, not 1..{_MAX_BLOB_TEXT}")
    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolViolation(f"rendezvous {name} has a blob that is not base64") from None
    if base64.b64encode(blob).decode("ascii") != text:
        raise ProtocolViolation(f"rendezvous {name} has a blob in non-canonical base64")
    if not 0 < len(blob) <= MAX_BLOB:
        raise ProtocolViolation(f"rendezvous {name} has a blob of {len(blob)} bytes, not 1..{MAX_BLOB}")
    return blob


def decode_query(payload: bytes) -> RdvQuery:
    """The QUERY in a frame's payload. @raise ProtocolViolation: it is malformed."""
    body = _read_frame(payload, "QUERY")
    return RdvQuery(_get_q(body, "QUERY"), _get_peer(body, "peer", "QUERY"))


def decode_answer(payload: bytes) -> RdvAnswer:
    """The ANSWER in a frame's payload. @raise ProtocolViolation: it is malformed."""
    body = _read_frame(payload, "ANSWER")
    serving = body.get("serving", True)
    if not isinstance(serving, bool):
        raise ProtocolViolation("rendezvous ANSWER has no valid 'serving' (bool expected)")
    return RdvAnswer(_get_q(body, "ANSWER"), _get_peer(body, "peer", "ANSWER"),
                     _get(body, "connected", bool, "ANSWER"), _get(body, "relay", bool, "ANSWER"), serving)


def decode_forward(payload: bytes) -> RdvForward:
    """The FORWARD in a frame's payload. @raise ProtocolViolation: it is malformed."""
    body = _read_frame(payload, "FORWARD")
    return RdvForward(_get_peer(body, "to", "FORWARD"), _get_blob(body, "FORWARD"))


def decode_deliver(payload: bytes) -> RdvDeliver:
    """The DELIVER in a frame's payload. @raise ProtocolViolation: it is malformed."""
    body = _read_frame(payload, "DELIVER")
    return RdvDeliver(_get_peer(body, "from", "DELIVER"), _get_blob(body, "DELIVER"))


def decode_error(payload: bytes) -> RdvError:
    """
    The ERROR in a frame's payload; a reason not in L{ERROR_REASONS} is kept
    as it is (a short text).  @raise ProtocolViolation: it is malformed.
    """
    body = _read_frame(payload, "ERROR")
    to = _get_peer(body, "to", "ERROR")
    reason = _get(body, "reason", str, "ERROR")
    if not 0 < len(reason) <= _MAX_REASON:
        raise ProtocolViolation("rendezvous ERROR has a bad reason")
    detail = body.get("detail", "")
    if not isinstance(detail, str) or len(detail) > MAX_DETAIL:
        raise ProtocolViolation("rendezvous ERROR has a bad detail")
    return RdvError(to, reason, detail)


_DECODERS: dict[int, Callable[[bytes], RendezvousMessage]] = {
    RDV_QUERY: decode_query,
    RDV_ANSWER: decode_answer,
    RDV_FORWARD: decode_forward,
    RDV_DELIVER: decode_deliver,
    RDV_ERROR: decode_error,
}


def decode_frame(ftype: int, payload: bytes) -> RendezvousMessage:
    """
    The rendezvous message in a control frame of type C{ftype}.

    @raise ProtocolViolation: C{ftype} is not a rendezvous type, or the
        payload is malformed.
    """
    decoder = _DECODERS.get(ftype)
    if decoder is None:
        raise ProtocolViolation(f"frame type {ftype} is not a rendezvous frame")
    return decoder(payload)


# --- the envelope -------------------------------------------------------------------------


class EnvelopeType(str, enum.Enum):
    """What an envelope carries."""

    CONNECT = "connect"
    REPLY = "reply"
    SYNC = "sync"
    RESULT = "result"


REASON_TOO_LARGE = "too-large"
REASON_UNREADABLE = "unreadable"
REASON_BAD_SIGNATURE = "bad-signature"
REASON_MISADDRESSED = "misaddressed"
REASON_OTHER_NETWORK = "other-network"
REASON_STALE = "stale"
REASON_REPLAYED = "replayed"
REASON_MALFORMED = "malformed"


class EnvelopeError(CrustError):
    """
    An envelope was refused.

    @ivar reason: a short code, one of the C{REASON_*} constants.
    @ivar detail: what exactly, for the log.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Envelope:
    """
    An opened envelope: authentic (signed by C{from_peer}), for us, of our
    network, fresh and not seen before.
    """

    from_peer: PeerId
    to_peer: PeerId
    mtype: EnvelopeType
    attempt: bytes
    ts: float
    body: dict[str, Any]


class ReplayGuard:
    """
    The envelopes seen recently, by key: bounded to C{max_entries} (the
    oldest is forgotten first), each remembered for C{window} seconds or
    longer when asked.  Anything that can fill it with valid envelopes (a
    connected peer) must be rate limited by the caller.
    """

    def __init__(self, max_entries: int = 4096, window: float = MAX_AGE) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self.window = window
        self._forget_at: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._forget_at)

    def seen(self, key: Hashable, now: float, until: float | None = None) -> bool:
        """
        Whether C{key} was seen (and is still remembered); records it either
        way, to be remembered until C{now + window} or C{until} if later.
        """
        entries = self._forget_at
        while entries:  # forget what expired, oldest first
            first, forget_at = next(iter(entries.items()))
            if forget_at > now:
                break
            del entries[first]
        forget_at = max(now + self.window, until if until is not None else now)
        previous = entries.pop(key, None)
        entries[key] = forget_at if previous is None else max(previous, forget_at)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)
        return previous is not None and previous > now


def _body_problem(mtype: EnvelopeType, body: Any) -> str | None:
    """What is wrong with a body of type C{mtype}, or None (unknown keys are ignored)."""
    if not isinstance(body, dict):
        return "the body is not an object"
    if mtype in (EnvelopeType.CONNECT, EnvelopeType.REPLY):
        if not isinstance(body.get("info"), dict):
            return f"{mtype.value} has no connection info"
        if not isinstance(body.get("tcp"), bool) or not isinstance(body.get("udp"), bool):
            return f"{mtype.value} has no tcp/udp flags"
    elif mtype is EnvelopeType.RESULT:
        if not isinstance(body.get("ok"), bool):
            return "result has no ok flag"
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > MAX_DETAIL:
            return "result has a bad reason"
    return None


def seal(identity: Identity, to_peer: PeerId, network: str, mtype: EnvelopeType | str,
         attempt: bytes, body: dict[str, Any], now: float, shared: bytes | None = None) -> bytes:
    """
    Seal an envelope from C{identity} to C{to_peer}: signed by us, readable
    by C{to_peer} only.

    @param network: the network hash (L{crust.wire.network_hash}).
    @param attempt: the eight-byte attempt id.
    @param now: the time stamp, Unix seconds.
    @param shared: L{crust.punch.checks.static_shared}C{(identity,
        to_peer)} when the caller keeps it (it saves a scalar
        multiplication).
    @raise EnvelopeError: (C{too-large}) the body or the envelope is over
        its limit.
    @raise ValueError: an argument is not what the envelope holds (the
        body not of the shape its type requires, or not JSON).
    """
    mtype = EnvelopeType(mtype)
    if not isinstance(attempt, bytes) or len(attempt) != ATTEMPT_SIZE:
        raise ValueError(f"an attempt id is {ATTEMPT_SIZE} bytes")
    if not isinstance(network, str):
        raise TypeError("the network is its hash, as text")
    if not isinstance(now, (int, float)) or not math.isfinite(now):
        raise ValueError(f"not a time: {now!r}")
    problem = _body_problem(mtype, body)
    if problem is not None:
        raise ValueError(problem)
    try:
        encoded_body = _canonical(body)
    except (TypeError, ValueError, RecursionError) as e:
        raise ValueError(f"the body is not JSON: {e}") from None
    if len(encoded_body) > MAX_BODY:
        raise EnvelopeError(REASON_TOO_LARGE, f"body of {len(encoded_body)} bytes is over {MAX_BODY}")
    problem = nesting_problem(encoded_body.decode("utf-8"), MAX_ENVELOPE_DEPTH - 1, MAX_ENVELOPE_CONTAINERS - 1)
    if problem is not None:
        raise ValueError(f"the body is {problem}")
    inner = _canonical({
        "v": ENVELOPE_VERSION, "t": mtype.value, "from": str(identity.peer_id), "to": _peer(to_peer),
        "net": network, "attempt": attempt.hex(), "ts": float(now), "body": body,
    })
    size = _BLOB_OVERHEAD + len(inner)
    if size > MAX_BLOB:
        raise EnvelopeError(REASON_TOO_LARGE, f"envelope of {size} bytes is over {MAX_BLOB}")
    key = static_shared(identity, to_peer) if shared is None else shared
    signature = identity.signing_key.sign(CONTEXT + inner).signature
    nonce = os.urandom(NONCE_SIZE)
    return nonce + crypto_box_afternm(signature + inner, nonce, key)


_HEX16 = re.compile(r"[0-9a-f]{16}\Z")
_INNER_KEYS = frozenset({"v", "t", "from", "to", "net", "attempt", "ts", "body"})


def open_envelope(identity: Identity, from_peer: PeerId, network: str, blob: bytes, now: float,
                  replay: ReplayGuard, shared: bytes | None = None) -> Envelope:
    """
    Open an envelope that R says comes from C{from_peer}.

    @param network: our network hash (L{crust.wire.network_hash}).
    @param replay: records the envelope as seen (by sender, attempt and
        type), when everything else about it is right.
    @param shared: L{crust.punch.checks.static_shared}C{(identity,
        from_peer)} when the caller keeps it (it saves a scalar
        multiplication).
    @raise EnvelopeError: with C{reason} one of the C{REASON_*} codes.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise EnvelopeError(REASON_MALFORMED, f"an envelope is bytes, not {type(blob).__name__}")
    if len(blob) > MAX_BLOB:
        raise EnvelopeError(REASON_TOO_LARGE, f"envelope of {len(blob)} bytes is over {MAX_BLOB}")
    if len(blob) < _BLOB_OVERHEAD:
        raise EnvelopeError(REASON_UNREADABLE, f"envelope of {len(blob)} bytes is truncated")
    blob = bytes(blob)
    try:
        key = static_shared(identity, from_peer) if shared is None else shared
        signed = crypto_box_open_afternm(blob[NONCE_SIZE:], blob[:NONCE_SIZE], key)
    except (ValueError, CryptoError):
        raise EnvelopeError(REASON_UNREADABLE, f"not an envelope from {from_peer.short()} to us") from None
    signature, inner = signed[:SIGNATURE_SIZE], signed[SIGNATURE_SIZE:]
    try:
        crypto_sign_open(signature + CONTEXT + inner, from_peer.raw)
    except CryptoError:
        raise EnvelopeError(REASON_BAD_SIGNATURE, f"not signed by {from_peer.short()}") from None
    try:
        doc = read_json_object(inner, max_size=MAX_BLOB, max_depth=MAX_ENVELOPE_DEPTH,
                               max_containers=MAX_ENVELOPE_CONTAINERS)
    except JsonRefused as e:
        raise EnvelopeError(REASON_MALFORMED, str(e)) from None
    envelope = _parse_inner(doc)
    if envelope.from_peer != from_peer or envelope.to_peer != identity.peer_id:
        raise EnvelopeError(REASON_MISADDRESSED, f"from {envelope.from_peer.short()} to {envelope.to_peer.short()}")
    if doc["net"] != network:
        raise EnvelopeError(REASON_OTHER_NETWORK, "of another network")
    if abs(now - envelope.ts) > MAX_AGE:
        raise EnvelopeError(REASON_STALE, f"time stamp {now - envelope.ts:+.0f} s off")
    if replay.seen((from_peer, envelope.attempt, envelope.mtype), now, until=envelope.ts + MAX_AGE):
        raise EnvelopeError(REASON_REPLAYED, f"{envelope.mtype.value} of attempt {envelope.attempt.hex()}")
    return envelope


def _parse_inner(doc: dict[str, Any]) -> Envelope:
    def bad(what: str) -> EnvelopeError:
        return EnvelopeError(REASON_MALFORMED, what)

    if doc.keys() != _INNER_KEYS:
        raise bad("not the envelope's keys")
    v = doc["v"]
    if not isinstance(v, int) or isinstance(v, bool) or v != ENVELOPE_VERSION:
        raise bad(f"unknown envelope version {v!r}")
    try:
        mtype = EnvelopeType(doc["t"])
    except ValueError:
        raise bad("unknown envelope type") from None
    try:
        from_peer = PeerId.from_text(doc["from"])
        to_peer = PeerId.from_text(doc["to"])
    except ValueError:
        raise bad("bad peer id") from None
    if not isinstance(doc["net"], str):
        raise bad("bad network")
    attempt = doc["attempt"]
    if not isinstance(attempt, str) or not _HEX16.match(attempt):
        raise bad("bad attempt id")
    ts = doc["ts"]
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
        raise bad("bad time stamp")
    body = doc["body"]
    problem = _body_problem(mtype, body)
    if problem is not None:
        raise bad(problem)
    return Envelope(from_peer, to_peer, mtype, bytes.fromhex(attempt), float(ts), body)
