"""
The crust wire format inside the secure channel (see doc/protocol.md).

Every frame is::

    u32 length (big-endian, counts the type byte and the payload)
    u8  type
    payload (length - 1 bytes)

Control payloads (HELLO, REJECT, CLOSE) are UTF-8 JSON objects, read by
L{crust._util.jsonread.read_json_object} within L{MAX_CONTROL_PAYLOAD},
L{MAX_CONTROL_DEPTH} and L{MAX_CONTROL_CONTAINERS}; DATA carries the
application's message bytes unchanged; HEARTBEAT, CHOOSE and GRANT are
empty.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Optional, TypeGuard

from crust._util.jsonread import JsonRefused, read_json_object
from crust.address import Address
from crust.errors import ProtocolViolation

PROTOCOL_NAME = "crust"
PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1

HEADER = struct.Struct("!IB")
HEADER_SIZE = HEADER.size  # 5
LENGTH = struct.Struct("!I")
MAX_CONTROL_PAYLOAD = 16 * 1024
#: How deep a control payload's JSON may nest (the object itself is depth 1).
MAX_CONTROL_DEPTH = 8
#: How many arrays and objects a control payload's JSON may hold (the object itself included).
MAX_CONTROL_CONTAINERS = 256

pack_header = HEADER.pack


class FrameType(enum.IntEnum):
    HELLO = 1
    REJECT = 2
    CHOOSE = 3
    DATA = 4
    HEARTBEAT = 5
    CLOSE = 6
    GRANT = 7  # the acceptor grants a bootstrap request
    MOVE = 8  # the last frame on this connection: the peer continues on the one it chose over it


DATA = int(FrameType.DATA)
HEARTBEAT_FRAME = pack_header(1, FrameType.HEARTBEAT)
#: A HEARTBEAT the receiver answers with one of its own (doc/protocol.md section 5): asked by a side that heard
#: nothing for half its inactivity timeout, whatever the peer's heartbeat interval.
HEARTBEAT_ASK = b"\x01"
HEARTBEAT_ASK_FRAME = pack_header(2, FrameType.HEARTBEAT) + HEARTBEAT_ASK
CHOOSE_FRAME = pack_header(1, FrameType.CHOOSE)
GRANT_FRAME = pack_header(1, FrameType.GRANT)
MOVE_FRAME = pack_header(1, FrameType.MOVE)


def frame(ftype: int, payload: bytes = b"") -> bytes:
    """Encode one frame."""
    return pack_header(len(payload) + 1, ftype) + payload


#: CHOOSE of a connection that replaces an active one: both sides MOVE off the old one (doc/protocol.md §5b)
HANDOVER_PAYLOAD = b'{"handover":true}'
CHOOSE_HANDOVER_FRAME = frame(FrameType.CHOOSE, HANDOVER_PAYLOAD)


class Intent(str, enum.Enum):
    """Why a connection is opened; the acceptor answers accordingly."""

    CONNECT = "connect"  # become the peers' one active connection
    PROBE = "probe"  # exchange HELLOs (learning the observed address), then close
    BOOTSTRAP = "bootstrap"  # ask the acceptor to be our bootstrap peer


class RejectReason(str, enum.Enum):
    """Stable codes for refusals that cross the wire."""

    NETWORK_MISMATCH = "network-mismatch"
    VERSION_MISMATCH = "version-mismatch"
    WRONG_PEER = "wrong-peer"
    CONNECT_TO_SELF = "connect-to-self"
    NOT_WHITELISTED = "not-whitelisted"
    BOOTSTRAP_DENIED = "bootstrap-denied"
    FAILED_REACHABILITY = "failed-external-reachability"
    MALFORMED = "malformed"
    UNSUPPORTED_INTENT = "unsupported-intent"
    SHUTTING_DOWN = "shutting-down"


class CloseReason(str, enum.Enum):
    """Why a peer closed a connection cleanly."""

    DUPLICATE = "duplicate"  # another connection to the same peer won
    DISCONNECT = "disconnect"  # the user disconnected
    SHUTDOWN = "shutdown"  # the service is stopping
    PROBE_DONE = "probe-done"
    OVERSIZE = "oversize"
    TIMEOUT = "timeout"
    PROTOCOL_ERROR = "protocol-error"
    NOT_WHITELISTED = "not-whitelisted"
    MOVED = "moved"  # both sides moved onto another connection (handover)


def network_hash(network_name: Optional[str]) -> str:
    """The hex digest both sides compare; nodes of different names never connect."""
    name = "" if network_name is None else network_name
    return hashlib.sha256(b"crust-network-name\x00" + name.encode("utf-8")).hexdigest()


def _decode_json(payload: bytes, what: str) -> dict[str, Any]:
    try:
        return read_json_object(payload, max_size=MAX_CONTROL_PAYLOAD, max_depth=MAX_CONTROL_DEPTH,
                                max_containers=MAX_CONTROL_CONTAINERS)
    except JsonRefused as e:
        raise ProtocolViolation(f"{what}: {e.reason}") from None


def _encode_json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _is_version(v: object) -> TypeGuard[int]:
    """A protocol version number: an int (not a bool), not negative."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclass(frozen=True)
class Hello:
    """The first frame each side sends once the TLS handshake is done."""

    network: str
    intent: Optional[Intent] = Intent.CONNECT  # None in a peer's HELLO: an intent we do not know
    version: int = PROTOCOL_VERSION
    min_version: int = MIN_PROTOCOL_VERSION
    role: str = "node"
    observed: Optional[Address] = None  # the address we see the peer's connection come from
    listeners: tuple[Address, ...] = ()  # our listening addresses, for reachability tests
    echo_alt: Optional[int] = None  # a second UDP port of ours that answers address echoes (doc/protocol.md)
    handover: bool = False  # we can move an active connection onto another one (doc/protocol.md §5b)
    signed: bool = False  # we take signed messages (doc/protocol.md §6a)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def encode(self) -> bytes:
        assert self.intent is not None, "a HELLO we send has an intent"
        body: dict[str, Any] = {
            "proto": PROTOCOL_NAME,
            "version": self.version,
            "min_version": self.min_version,
            "network": self.network,
            "intent": self.intent.value,
            "role": self.role,
        }
        if self.observed is not None:
            body["observed"] = str(self.observed)
        if self.listeners:
            body["listeners"] = [str(a) for a in self.listeners]
        if self.echo_alt is not None:
            body["echo_alt"] = self.echo_alt
        if self.handover:
            body["handover"] = True
        if self.signed:
            body["signed"] = True
        body.update(self.extra)
        return frame(FrameType.HELLO, _encode_json(body))

    @classmethod
    def decode(cls, payload: bytes) -> "Hello":
        body = _decode_json(payload, "HELLO")
        if body.get("proto") != PROTOCOL_NAME:
            raise ProtocolViolation("HELLO is not a crust hello")
        version = body.get("version")
        min_version = body.get("min_version", version)
        if not (_is_version(version) and _is_version(min_version)):
            raise ProtocolViolation("HELLO has no valid version numbers")
        network = body.get("network")
        if not isinstance(network, str) or len(network) > 128:
            raise ProtocolViolation("HELLO has no valid network hash")
        intent: Optional[Intent]
        try:
            intent = Intent(body.get("intent", "connect"))
        except ValueError:
            # an intent we do not know: keep it visible, the acceptor refuses it
            intent = None
        role = body.get("role", "node")
        if not isinstance(role, str) or len(role) > 32:
            raise ProtocolViolation("HELLO has a bad role")
        observed = None
        if body.get("observed") is not None:
            try:
                observed = Address.parse(body["observed"])
            except ValueError:
                raise ProtocolViolation("HELLO has a bad observed address") from None
        raw_listeners = body.get("listeners", [])
        if not isinstance(raw_listeners, list) or len(raw_listeners) > 64:
            raise ProtocolViolation("HELLO has a bad listener list")
        listeners = []
        for a in raw_listeners:
            try:
                listeners.append(Address.parse(a))
            except ValueError:
                raise ProtocolViolation("HELLO has a bad listener address") from None
        echo_alt = body.get("echo_alt")
        if echo_alt is not None and (type(echo_alt) is not int or not 0 < echo_alt < 65536):
            raise ProtocolViolation("HELLO has a bad echo_alt port")
        handover = body.get("handover", False)
        if not isinstance(handover, bool):
            raise ProtocolViolation("HELLO has a bad handover flag")
        signed = body.get("signed", False)
        if not isinstance(signed, bool):
            raise ProtocolViolation("HELLO has a bad signed flag")
        known = {"proto", "version", "min_version", "network", "intent", "role", "observed", "listeners", "echo_alt",
                 "handover", "signed"}
        extra = {k: v for k, v in body.items() if k not in known}
        return cls(
            network=network,
            intent=intent,
            version=version,
            min_version=min_version,
            role=role,
            observed=observed,
            listeners=tuple(listeners),
            echo_alt=echo_alt,
            handover=handover,
            signed=signed,
            extra=extra,
        )


@dataclass(frozen=True)
class CertInfo:
    """
    What a node's certificate says of it (see doc/protocol.md, "Certificate").

    The same facts as its HELLO's, made known one flight earlier: a connector
    that is the chooser and finds them compatible claims the connection as
    soon as TLS completes, without waiting for the peer's HELLO (which still
    comes, and is still checked).
    """

    network: str
    version: int = PROTOCOL_VERSION
    min_version: int = MIN_PROTOCOL_VERSION
    role: str = "node"

    def encode(self) -> bytes:
        return _encode_json({"proto": PROTOCOL_NAME, "version": self.version, "min_version": self.min_version,
                             "network": self.network, "role": self.role})

    @classmethod
    def decode(cls, payload: bytes) -> "CertInfo":
        body = _decode_json(payload, "certificate info")
        if body.get("proto") != PROTOCOL_NAME:
            raise ProtocolViolation("certificate info is not crust's")
        version, min_version = body.get("version"), body.get("min_version")
        if not (_is_version(version) and _is_version(min_version)):
            raise ProtocolViolation("certificate info has no valid version numbers")
        network, role = body.get("network"), body.get("role", "node")
        if not isinstance(network, str) or len(network) > 128:
            raise ProtocolViolation("certificate info has no valid network hash")
        if not isinstance(role, str) or len(role) > 32:
            raise ProtocolViolation("certificate info has a bad role")
        return cls(network=network, version=version, min_version=min_version, role=role)


def negotiate_version(ours: tuple[int, int], theirs: tuple[int, int]) -> Optional[int]:
    """The highest version both (min, max) ranges share, or None."""
    low = max(ours[0], theirs[0])
    high = min(ours[1], theirs[1])
    return high if low <= high else None


def encode_reject(reason: RejectReason, detail: str = "") -> bytes:
    return frame(FrameType.REJECT, _encode_json({"reason": reason.value, "detail": detail[:512]}))


def encode_close(reason: CloseReason, detail: str = "") -> bytes:
    return frame(FrameType.CLOSE, _encode_json({"reason": reason.value, "detail": detail[:512]}))


def decode_reason(payload: bytes, what: str) -> tuple[str, str]:
    """Decode a REJECT or CLOSE payload into (reason code, detail)."""
    body = _decode_json(payload, what)
    reason = body.get("reason")
    detail = body.get("detail", "")
    if not isinstance(reason, str) or not isinstance(detail, str):
        raise ProtocolViolation(f"{what} has no reason")
    return reason[:64], detail[:512]
