"""
STUN message codec (RFC 8489), with the NAT behaviour discovery attributes of
RFC 5780.  Pure logic, no I/O.

L{decode} parses one datagram into a L{StunMessage} strictly: the magic
cookie, a length that is a multiple of 4 and matches the datagram, attribute
lengths inside the message, well-formed values of the known attributes, and
FINGERPRINT (checked whenever present).  Anything else raises
L{StunParseError} with a message naming what is wrong; no other exception
escapes it.  MESSAGE-INTEGRITY is checked on demand with
L{StunMessage.verify_integrity}, since only the caller knows the key.

L{encode} builds the wire form, appending MESSAGE-INTEGRITY and FINGERPRINT
when asked.  L{is_stun} is the cheap test used to demultiplex a UDP socket
shared with other traffic (RFC 7983).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from crust.address import Address
from crust.errors import CrustError
from crust.transport.udp_messages import is_stun as _is_stun

MAGIC_COOKIE = 0x2112A442
HEADER_SIZE = 20
MAX_BODY_SIZE = 0xFFFC  # the largest multiple of 4 the 16-bit length field holds
MAX_MESSAGE_SIZE = HEADER_SIZE + MAX_BODY_SIZE
#: The most attributes L{decode} reads in one message: real messages carry a
#: dozen at most, and a 64 KiB message of empty attributes holds over 16,000.
MAX_ATTRIBUTES = 32
#: The largest Binding message the STUN client and responder read: a Binding
#: request or response fits in one datagram of the path MTU (RFC 8489 section
#: 6.1); TURN's Data indications, which carry whole datagrams, may be larger.
MAX_BINDING_SIZE = 1500
TRANSACTION_ID_SIZE = 12
FINGERPRINT_XOR = 0x5354554E

BINDING = 0x001
# TURN methods (RFC 8656 section 17)
ALLOCATE = 0x003
REFRESH = 0x004
SEND = 0x006  # the Send method: indications only
DATA_INDICATION = 0x007  # the Data method: indications only
CREATE_PERMISSION = 0x008
CHANNEL_BIND = 0x009

METHOD_NAMES = {
    BINDING: "Binding",
    ALLOCATE: "Allocate",
    REFRESH: "Refresh",
    SEND: "Send",
    DATA_INDICATION: "Data",
    CREATE_PERMISSION: "CreatePermission",
    CHANNEL_BIND: "ChannelBind",
}

# Attribute types.  Comprehension-required: 0x0000-0x7FFF; optional: 0x8000-0xFFFF.
MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003  # RFC 5780
SOURCE_ADDRESS = 0x0004  # RFC 3489, still sent by some servers
CHANGED_ADDRESS = 0x0005  # RFC 3489, still sent by some servers
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
CHANNEL_NUMBER = 0x000C  # TURN
LIFETIME = 0x000D  # TURN
XOR_PEER_ADDRESS = 0x0012  # TURN
DATA = 0x0013  # TURN
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016  # TURN
REQUESTED_ADDRESS_FAMILY = 0x0017  # TURN
EVEN_PORT = 0x0018  # TURN
REQUESTED_TRANSPORT = 0x0019  # TURN
DONT_FRAGMENT = 0x001A  # TURN
MESSAGE_INTEGRITY_SHA256 = 0x001C
XOR_MAPPED_ADDRESS = 0x0020
RESERVATION_TOKEN = 0x0022  # TURN
SOFTWARE = 0x8022
FINGERPRINT = 0x8028
RESPONSE_ORIGIN = 0x802B  # RFC 5780
OTHER_ADDRESS = 0x802C  # RFC 5780

ATTRIBUTE_NAMES = {
    MAPPED_ADDRESS: "MAPPED-ADDRESS",
    CHANGE_REQUEST: "CHANGE-REQUEST",
    SOURCE_ADDRESS: "SOURCE-ADDRESS",
    CHANGED_ADDRESS: "CHANGED-ADDRESS",
    USERNAME: "USERNAME",
    MESSAGE_INTEGRITY: "MESSAGE-INTEGRITY",
    ERROR_CODE: "ERROR-CODE",
    UNKNOWN_ATTRIBUTES: "UNKNOWN-ATTRIBUTES",
    CHANNEL_NUMBER: "CHANNEL-NUMBER",
    LIFETIME: "LIFETIME",
    XOR_PEER_ADDRESS: "XOR-PEER-ADDRESS",
    DATA: "DATA",
    REALM: "REALM",
    NONCE: "NONCE",
    XOR_RELAYED_ADDRESS: "XOR-RELAYED-ADDRESS",
    REQUESTED_ADDRESS_FAMILY: "REQUESTED-ADDRESS-FAMILY",
    EVEN_PORT: "EVEN-PORT",
    REQUESTED_TRANSPORT: "REQUESTED-TRANSPORT",
    DONT_FRAGMENT: "DONT-FRAGMENT",
    MESSAGE_INTEGRITY_SHA256: "MESSAGE-INTEGRITY-SHA256",
    XOR_MAPPED_ADDRESS: "XOR-MAPPED-ADDRESS",
    RESERVATION_TOKEN: "RESERVATION-TOKEN",
    SOFTWARE: "SOFTWARE",
    FINGERPRINT: "FINGERPRINT",
    RESPONSE_ORIGIN: "RESPONSE-ORIGIN",
    OTHER_ADDRESS: "OTHER-ADDRESS",
}

_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")
_FAMILY_V4 = 0x01
_FAMILY_V6 = 0x02
_TEXT_MAX_BYTES = {USERNAME: 513, SOFTWARE: 763, REALM: 763, NONCE: 763}
_REASON_MAX_BYTES = 763
_CHANGE_IP = 0x04
_CHANGE_PORT = 0x02
_XOR_ADDRESS_TYPES = frozenset((XOR_MAPPED_ADDRESS, XOR_PEER_ADDRESS, XOR_RELAYED_ADDRESS))
_ADDRESS_TYPES = frozenset((MAPPED_ADDRESS, RESPONSE_ORIGIN, OTHER_ADDRESS, SOURCE_ADDRESS, CHANGED_ADDRESS)) \
    | _XOR_ADDRESS_TYPES
CHANNEL_FIRST = 0x4000  # TURN channel numbers (RFC 8656 section 12)
CHANNEL_LAST = 0x4FFF


class StunParseError(CrustError, ValueError):
    """A datagram is not a well-formed STUN message; the text says why."""


class MessageClass(enum.IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


@dataclass(frozen=True)
class ChangeRequest:
    """The CHANGE-REQUEST flags (RFC 5780 section 7.2)."""

    change_ip: bool = False
    change_port: bool = False


@dataclass(frozen=True)
class ErrorCode:
    """An ERROR-CODE value: C{code} in 300..699 and a reason phrase."""

    code: int
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.code, int) or not 300 <= self.code <= 699:
            raise ValueError(f"STUN error code {self.code!r} is not in 300..699")

    def __str__(self) -> str:
        return f"{self.code} {self.reason}".rstrip()


@dataclass(frozen=True)
class Attribute:
    """
    One attribute: C{type} and its decoded C{value}.

    Values: L{Address} for the address attributes (XOR-PEER-ADDRESS and
    XOR-RELAYED-ADDRESS of TURN too), L{ChangeRequest}, L{ErrorCode},
    C{str} for USERNAME/SOFTWARE/REALM/NONCE, a tuple of C{int} for
    UNKNOWN-ATTRIBUTES, C{int} for FINGERPRINT, and for TURN: C{int} for
    CHANNEL-NUMBER (0x4000..0x4FFF), LIFETIME (seconds),
    REQUESTED-TRANSPORT (an IP protocol number) and
    REQUESTED-ADDRESS-FAMILY (1: IPv4, 2: IPv6), C{bool} for EVEN-PORT
    (its R bit) and DONT-FRAGMENT (always C{True}), 8 C{bytes} for
    RESERVATION-TOKEN; the raw C{bytes} for DATA, MESSAGE-INTEGRITY and
    every other type.
    """

    type: int
    value: Any

    @property
    def name(self) -> str:
        return attribute_name(self.type)


def attribute_name(attr_type: int) -> str:
    """C{"XOR-MAPPED-ADDRESS"}, or C{"0x8029"} for a type this codec does not know."""
    return ATTRIBUTE_NAMES.get(attr_type, f"0x{attr_type:04x}")


def method_name(method: int) -> str:
    """C{"Allocate"}, or C{"0x00a"} for a method this codec does not know."""
    return METHOD_NAMES.get(method, f"0x{method:03x}")


@dataclass(frozen=True)
class StunMessage:
    """
    A STUN message.  L{decode} also records the datagram (C{raw}) and where
    MESSAGE-INTEGRITY sits in it, for L{verify_integrity}.
    """

    message_class: MessageClass
    method: int
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()
    raw: bytes = field(default=b"", repr=False, compare=False)
    integrity_offset: Optional[int] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.transaction_id, bytes) or len(self.transaction_id) != TRANSACTION_ID_SIZE:
            raise ValueError("a STUN transaction id is 12 bytes")
        if not isinstance(self.method, int) or not 0 <= self.method <= 0xFFF:
            raise ValueError(f"STUN method {self.method!r} is not in 0..0xfff")
        object.__setattr__(self, "message_class", MessageClass(self.message_class))
        object.__setattr__(self, "attributes", tuple(self.attributes))

    def get(self, attr_type: int, default: Any = None) -> Any:
        """The value of the first attribute of C{attr_type} (later duplicates are ignored)."""
        for attr in self.attributes:
            if attr.type == attr_type:
                return attr.value
        return default

    def get_all(self, attr_type: int) -> tuple[Any, ...]:
        """The values of every attribute of C{attr_type}, in order (CreatePermission names several peers)."""
        return tuple(attr.value for attr in self.attributes if attr.type == attr_type)

    def types(self) -> tuple[int, ...]:
        return tuple(attr.type for attr in self.attributes)

    @property
    def mapped_address(self) -> Optional[Address]:
        """XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (RFC 3489 servers), else C{None}."""
        return self.get(XOR_MAPPED_ADDRESS) or self.get(MAPPED_ADDRESS)

    @property
    def response_origin(self) -> Optional[Address]:
        """RESPONSE-ORIGIN, else the legacy SOURCE-ADDRESS."""
        return self.get(RESPONSE_ORIGIN) or self.get(SOURCE_ADDRESS)

    @property
    def other_address(self) -> Optional[Address]:
        """OTHER-ADDRESS, else the legacy CHANGED-ADDRESS."""
        return self.get(OTHER_ADDRESS) or self.get(CHANGED_ADDRESS)

    @property
    def error_code(self) -> Optional[ErrorCode]:
        return self.get(ERROR_CODE)

    @property
    def software(self) -> Optional[str]:
        return self.get(SOFTWARE)

    @property
    def realm(self) -> Optional[str]:
        return self.get(REALM)

    @property
    def nonce(self) -> Optional[str]:
        return self.get(NONCE)

    @property
    def lifetime(self) -> Optional[int]:
        """LIFETIME (TURN), seconds."""
        return self.get(LIFETIME)

    @property
    def relayed_address(self) -> Optional[Address]:
        """XOR-RELAYED-ADDRESS (TURN)."""
        return self.get(XOR_RELAYED_ADDRESS)

    @property
    def peer_address(self) -> Optional[Address]:
        """The first XOR-PEER-ADDRESS (TURN)."""
        return self.get(XOR_PEER_ADDRESS)

    def unknown_comprehension_required(self) -> tuple[int, ...]:
        """Types in 0x0000-0x7FFF this codec does not understand (RFC 8489 section 7.3)."""
        return tuple(
            t for t in self.types() if t < 0x8000 and t not in ATTRIBUTE_NAMES
        )

    def verify_integrity(self, key: bytes) -> bool:
        """
        True when this decoded message carries a MESSAGE-INTEGRITY made with
        C{key} (see L{short_term_key}, L{long_term_key}).  False when it is
        wrong or absent.
        """
        if self.integrity_offset is None or not self.raw:
            return False
        offset = self.integrity_offset
        expected = self.raw[offset + 4 : offset + 24]
        actual = _integrity(key, self.raw[:offset], offset - HEADER_SIZE + 24)
        return hmac.compare_digest(expected, actual)


def short_term_key(password: str) -> bytes:
    """
    The MESSAGE-INTEGRITY key of a short-term credential.  The password is
    used as given (its OpaqueString preparation, a no-op for ASCII, is the
    caller's).
    """
    return password.encode("utf-8")


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """MD5(username ":" realm ":" password), the RFC 8489 long-term key; the password is used as given."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode("utf-8")).digest()


def new_transaction_id() -> bytes:
    return os.urandom(TRANSACTION_ID_SIZE)


def make_binding_request(
    transaction_id: Optional[bytes] = None,
    *,
    change_ip: bool = False,
    change_port: bool = False,
    software: Optional[str] = None,
    username: Optional[str] = None,
) -> StunMessage:
    """A Binding request; CHANGE-REQUEST is included when either flag is set."""
    attrs = []
    if username is not None:
        attrs.append(Attribute(USERNAME, username))
    if software is not None:
        attrs.append(Attribute(SOFTWARE, software))
    if change_ip or change_port:
        attrs.append(Attribute(CHANGE_REQUEST, ChangeRequest(change_ip, change_port)))
    return StunMessage(
        MessageClass.REQUEST, BINDING, transaction_id or new_transaction_id(), tuple(attrs)
    )


def make_binding_success(
    request: StunMessage,
    mapped: Address,
    *,
    response_origin: Optional[Address] = None,
    other_address: Optional[Address] = None,
    software: Optional[str] = None,
) -> StunMessage:
    """The success response to C{request}, reporting C{mapped} in XOR-MAPPED-ADDRESS."""
    attrs = [Attribute(XOR_MAPPED_ADDRESS, mapped)]
    if response_origin is not None:
        attrs.append(Attribute(RESPONSE_ORIGIN, response_origin))
    if other_address is not None:
        attrs.append(Attribute(OTHER_ADDRESS, other_address))
    if software is not None:
        attrs.append(Attribute(SOFTWARE, software))
    return StunMessage(MessageClass.SUCCESS, request.method, request.transaction_id, tuple(attrs))


def make_binding_error(
    request: StunMessage,
    code: int,
    reason: str = "",
    *,
    unknown_attributes: tuple[int, ...] = (),
    software: Optional[str] = None,
) -> StunMessage:
    """The error response to C{request} (UNKNOWN-ATTRIBUTES is for code 420)."""
    attrs = [Attribute(ERROR_CODE, ErrorCode(code, reason))]
    if unknown_attributes:
        attrs.append(Attribute(UNKNOWN_ATTRIBUTES, tuple(unknown_attributes)))
    if software is not None:
        attrs.append(Attribute(SOFTWARE, software))
    return StunMessage(MessageClass.ERROR, request.method, request.transaction_id, tuple(attrs))


# --- demultiplexing ---------------------------------------------------------


# L{crust.transport.udp_messages.is_stun}: the test the UDP socket's demultiplexer uses, kept
# with the first-byte map (the socket must tell STUN apart without depending on this codec)
is_stun = _is_stun


# --- decoding ---------------------------------------------------------------


def peek(datagram: bytes, max_size: int = MAX_MESSAGE_SIZE) -> tuple[int, MessageClass, bytes]:
    """
    The C{(method, message class, transaction id)} of a STUN message, from
    its 20-byte header alone: what a receiver needs to decide whether the
    message is worth decoding (a response to a transaction it runs, a request
    it answers) before it spends anything on the attributes.  Checks the
    size (at most C{max_size} bytes), the first two bits, the magic cookie,
    and that the length field is a multiple of 4 matching the datagram.

    @raise StunParseError: with a message naming the defect.
    """
    if isinstance(datagram, (bytearray, memoryview)):
        datagram = bytes(datagram)
    if not isinstance(datagram, bytes):
        raise StunParseError(f"a STUN message is bytes, not {type(datagram).__name__}")
    n = len(datagram)
    if n < HEADER_SIZE:
        raise StunParseError(f"truncated: {n} bytes is shorter than the 20-byte STUN header")
    if n > max_size:
        if max_size < MAX_MESSAGE_SIZE:
            raise StunParseError(f"oversize: {n} bytes is more than the {max_size} read here")
        raise StunParseError(f"oversize: {n} bytes is more than a STUN message can hold ({MAX_MESSAGE_SIZE})")
    msg_type, length, cookie, transaction_id = _HEADER.unpack_from(datagram)
    if msg_type & 0xC000:
        raise StunParseError(f"not STUN: the first two bits of the type 0x{msg_type:04x} are not zero")
    if cookie != MAGIC_COOKIE:
        raise StunParseError(f"not STUN: magic cookie is 0x{cookie:08x}, expected 0x{MAGIC_COOKIE:08x}")
    if length % 4:
        raise StunParseError(f"message length {length} is not a multiple of 4")
    if HEADER_SIZE + length > n:
        raise StunParseError(f"truncated: header announces {length} body bytes, datagram has {n - HEADER_SIZE}")
    if HEADER_SIZE + length < n:
        raise StunParseError(f"{n - HEADER_SIZE - length} trailing bytes after the {length}-byte body")
    method, message_class = _split_type(msg_type)
    return method, MessageClass(message_class), transaction_id


def _count_attributes(datagram: bytes, limit: int) -> None:
    """
    Walk the attribute headers (nothing is decoded) and refuse a message
    with more than C{limit} attributes, or one whose attributes overrun it:
    a bound checked before any attribute costs anything.
    """
    n = len(datagram)
    offset = HEADER_SIZE
    count = 0
    unpack = _ATTR_HEADER.unpack_from
    while offset < n:
        if count == limit:
            raise StunParseError(f"more than {limit} attributes")
        if n - offset < 4:
            raise StunParseError(f"truncated attribute header at offset {offset}")
        attr_type, attr_len = unpack(datagram, offset)
        padded_end = offset + 4 + ((attr_len + 3) & ~3)
        if padded_end > n:
            raise StunParseError(
                f"attribute {attribute_name(attr_type)} of {attr_len} bytes at offset {offset} "
                f"overruns the message ({n - offset - 4} bytes left)"
            )
        offset = padded_end
        count += 1


def decode(datagram: bytes, transport: str = "udp", *, max_size: int = MAX_MESSAGE_SIZE,
           max_attributes: int = MAX_ATTRIBUTES) -> StunMessage:
    """
    Parse one STUN message; addresses in it get C{transport}.

    Cheap bounds come first, before any attribute is decoded: the size (at
    most C{max_size} bytes), the header (L{peek}), and the number of
    attributes (at most C{max_attributes}), so a message built to cost
    (64 KiB of empty attributes) is refused in microseconds.

    Attributes after MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256
    and FINGERPRINT are ignored (RFC 8489 section 14.5); FINGERPRINT must be
    last and correct.

    @raise StunParseError: with a message naming the defect.
    """
    if isinstance(datagram, (bytearray, memoryview)):
        datagram = bytes(datagram)
    method, message_class, transaction_id = peek(datagram, max_size)
    _count_attributes(datagram, max_attributes)
    n = len(datagram)

    attributes: list[Attribute] = []
    integrity_offset: Optional[int] = None
    offset = HEADER_SIZE
    while offset < n:  # every attribute header is inside the message (_count_attributes)
        attr_type, attr_len = _ATTR_HEADER.unpack_from(datagram, offset)
        start = offset + 4
        end = start + attr_len
        padded_end = start + ((attr_len + 3) & ~3)
        value = datagram[start:end]
        if attr_type == FINGERPRINT:
            if padded_end != n:
                raise StunParseError("FINGERPRINT is not the last attribute")
            if attr_len != 4:
                raise StunParseError(f"FINGERPRINT is {attr_len} bytes, expected 4")
            (received,) = struct.unpack("!I", value)
            computed = (zlib.crc32(datagram[:offset]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            if received != computed:
                raise StunParseError(
                    f"FINGERPRINT mismatch: message says 0x{received:08x}, computed 0x{computed:08x}"
                )
            attributes.append(Attribute(FINGERPRINT, received))
        elif integrity_offset is not None and attr_type != MESSAGE_INTEGRITY_SHA256:
            pass  # after MESSAGE-INTEGRITY: ignored
        elif attr_type == MESSAGE_INTEGRITY:
            if attr_len != 20:
                raise StunParseError(f"MESSAGE-INTEGRITY is {attr_len} bytes, expected 20")
            integrity_offset = offset
            attributes.append(Attribute(MESSAGE_INTEGRITY, value))
        else:
            decoder = _DECODERS.get(attr_type)
            if decoder is None:
                attributes.append(Attribute(attr_type, value))
            else:
                attributes.append(Attribute(attr_type, decoder(attr_type, value, transaction_id, transport)))
        offset = padded_end
    return StunMessage(
        message_class,
        method,
        transaction_id,
        tuple(attributes),
        raw=datagram,
        integrity_offset=integrity_offset,
    )


def _split_type(msg_type: int) -> tuple[int, int]:
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    message_class = ((msg_type >> 7) & 0b10) | ((msg_type >> 4) & 0b01)
    return method, message_class


def _join_type(method: int, message_class: int) -> int:
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 0b01) << 4)
        | ((message_class & 0b10) << 7)
    )


def _decode_address(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> Address:
    name = attribute_name(attr_type)
    if len(value) < 4:
        raise StunParseError(f"{name} is {len(value)} bytes, too short for an address")
    family = value[1]
    port = (value[2] << 8) | value[3]
    raw_ip = value[4:]
    if family == _FAMILY_V4:
        if len(raw_ip) != 4:
            raise StunParseError(f"{name} IPv4 address is {len(raw_ip)} bytes, expected 4")
    elif family == _FAMILY_V6:
        if len(raw_ip) != 16:
            raise StunParseError(f"{name} IPv6 address is {len(raw_ip)} bytes, expected 16")
    else:
        raise StunParseError(f"{name} has unknown address family 0x{family:02x}")
    if attr_type in _XOR_ADDRESS_TYPES:
        port ^= MAGIC_COOKIE >> 16
        raw_ip = _xor(raw_ip, _COOKIE_BYTES + transaction_id)
    if port == 0:
        raise StunParseError(f"{name} has port 0")
    host = str(ipaddress.ip_address(raw_ip))
    return Address(transport, host, port)


def _decode_text(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> str:
    name = attribute_name(attr_type)
    limit = _TEXT_MAX_BYTES[attr_type]
    if len(value) > limit:
        raise StunParseError(f"{name} is {len(value)} bytes, over the limit of {limit}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise StunParseError(f"{name} is not valid UTF-8") from None


def _decode_change_request(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> ChangeRequest:
    if len(value) != 4:
        raise StunParseError(f"CHANGE-REQUEST is {len(value)} bytes, expected 4")
    flags = value[3]
    return ChangeRequest(bool(flags & _CHANGE_IP), bool(flags & _CHANGE_PORT))


def _decode_error_code(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> ErrorCode:
    if len(value) < 4:
        raise StunParseError(f"ERROR-CODE is {len(value)} bytes, shorter than 4")
    if len(value) > 4 + _REASON_MAX_BYTES:
        raise StunParseError(f"ERROR-CODE reason is over {_REASON_MAX_BYTES} bytes")
    klass, number = value[2] & 0x07, value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise StunParseError(f"ERROR-CODE has invalid class {klass} / number {number}")
    try:
        reason = value[4:].decode("utf-8")
    except UnicodeDecodeError:
        raise StunParseError("ERROR-CODE reason is not valid UTF-8") from None
    return ErrorCode(klass * 100 + number, reason)


def _decode_unknown_attributes(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> tuple[int, ...]:
    if len(value) % 2:
        raise StunParseError(f"UNKNOWN-ATTRIBUTES is {len(value)} bytes, not a multiple of 2")
    return struct.unpack(f"!{len(value) // 2}H", value)


def _decode_integrity_sha256(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> bytes:
    if not 16 <= len(value) <= 32 or len(value) % 4:
        raise StunParseError(f"MESSAGE-INTEGRITY-SHA256 is {len(value)} bytes, expected 16..32 in steps of 4")
    return value


def _decode_channel_number(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> int:
    if len(value) != 4:
        raise StunParseError(f"CHANNEL-NUMBER is {len(value)} bytes, expected 4")
    number = (value[0] << 8) | value[1]
    if not CHANNEL_FIRST <= number <= CHANNEL_LAST:
        raise StunParseError(f"CHANNEL-NUMBER 0x{number:04x} is not in 0x4000..0x4fff")
    return number


def _decode_u32(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> int:
    if len(value) != 4:
        raise StunParseError(f"{attribute_name(attr_type)} is {len(value)} bytes, expected 4")
    number: int = struct.unpack("!I", value)[0]
    return number


def _decode_requested_transport(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> int:
    if len(value) != 4:
        raise StunParseError(f"REQUESTED-TRANSPORT is {len(value)} bytes, expected 4")
    return value[0]


def _decode_address_family(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> int:
    if len(value) != 4:
        raise StunParseError(f"REQUESTED-ADDRESS-FAMILY is {len(value)} bytes, expected 4")
    if value[0] not in (_FAMILY_V4, _FAMILY_V6):
        raise StunParseError(f"REQUESTED-ADDRESS-FAMILY has unknown family 0x{value[0]:02x}")
    return value[0]


def _decode_even_port(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> bool:
    if len(value) != 1:
        raise StunParseError(f"EVEN-PORT is {len(value)} bytes, expected 1")
    return bool(value[0] & 0x80)


def _decode_dont_fragment(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> bool:
    if value:
        raise StunParseError(f"DONT-FRAGMENT is {len(value)} bytes, expected none")
    return True


def _decode_reservation_token(attr_type: int, value: bytes, transaction_id: bytes, transport: str) -> bytes:
    if len(value) != 8:
        raise StunParseError(f"RESERVATION-TOKEN is {len(value)} bytes, expected 8")
    return value


_Decoder = Callable[[int, bytes, bytes, str], Any]
_DECODERS: dict[int, _Decoder] = {
    MAPPED_ADDRESS: _decode_address,
    XOR_MAPPED_ADDRESS: _decode_address,
    XOR_PEER_ADDRESS: _decode_address,
    XOR_RELAYED_ADDRESS: _decode_address,
    CHANNEL_NUMBER: _decode_channel_number,
    LIFETIME: _decode_u32,
    REQUESTED_TRANSPORT: _decode_requested_transport,
    REQUESTED_ADDRESS_FAMILY: _decode_address_family,
    EVEN_PORT: _decode_even_port,
    DONT_FRAGMENT: _decode_dont_fragment,
    RESERVATION_TOKEN: _decode_reservation_token,
    RESPONSE_ORIGIN: _decode_address,
    OTHER_ADDRESS: _decode_address,
    SOURCE_ADDRESS: _decode_address,
    CHANGED_ADDRESS: _decode_address,
    CHANGE_REQUEST: _decode_change_request,
    USERNAME: _decode_text,
    SOFTWARE: _decode_text,
    REALM: _decode_text,
    NONCE: _decode_text,
    ERROR_CODE: _decode_error_code,
    UNKNOWN_ATTRIBUTES: _decode_unknown_attributes,
    MESSAGE_INTEGRITY_SHA256: _decode_integrity_sha256,
}


# --- encoding ---------------------------------------------------------------


def encode(
    message: StunMessage,
    *,
    integrity_key: Optional[bytes] = None,
    fingerprint: bool = False,
    padding: bytes = b"\x00",
) -> bytes:
    """
    The wire form of C{message}, followed by MESSAGE-INTEGRITY (when
    C{integrity_key} is given) and FINGERPRINT (when asked).  Those two are
    computed here, so C{message.attributes} must not contain them.
    C{padding} is the byte that pads attribute values to 4 bytes.

    @raise ValueError: an attribute value cannot be encoded.
    """
    if len(padding) != 1:
        raise ValueError("padding is a single byte")
    tid = message.transaction_id
    body = bytearray()
    for attr in message.attributes:
        if attr.type in (MESSAGE_INTEGRITY, FINGERPRINT):
            raise ValueError(
                f"{attribute_name(attr.type)} is computed by encode(): "
                "pass integrity_key= or fingerprint=True instead"
            )
        if not 0 <= attr.type <= 0xFFFF:
            raise ValueError(f"attribute type {attr.type!r} out of range")
        value = _encode_value(attr, tid)
        if len(value) > 0xFFFF:
            raise ValueError(f"{attr.name} value of {len(value)} bytes is too long")
        body += _ATTR_HEADER.pack(attr.type, len(value)) + value + padding * (-len(value) % 4)
    msg_type = _join_type(message.method, message.message_class)
    if integrity_key is not None:
        head = _HEADER.pack(msg_type, len(body) + 24, MAGIC_COOKIE, tid)
        mac = _integrity(integrity_key, head + bytes(body), len(body) + 24)
        body += _ATTR_HEADER.pack(MESSAGE_INTEGRITY, 20) + mac
    if fingerprint:
        head = _HEADER.pack(msg_type, len(body) + 8, MAGIC_COOKIE, tid)
        crc = (zlib.crc32(head + bytes(body)) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        body += _ATTR_HEADER.pack(FINGERPRINT, 4) + struct.pack("!I", crc)
    if len(body) > MAX_BODY_SIZE:
        raise ValueError(f"message body of {len(body)} bytes is over the STUN limit of {MAX_BODY_SIZE}")
    return _HEADER.pack(msg_type, len(body), MAGIC_COOKIE, tid) + bytes(body)


def _encode_value(attr: Attribute, transaction_id: bytes) -> bytes:
    t, v = attr.type, attr.value
    if t in _ADDRESS_TYPES:
        if not isinstance(v, Address):
            raise ValueError(f"{attr.name} needs an Address, not {type(v).__name__}")
        raw_ip = v.ip.packed
        port = v.port
        if t in _XOR_ADDRESS_TYPES:
            port ^= MAGIC_COOKIE >> 16
            raw_ip = _xor(raw_ip, _COOKIE_BYTES + transaction_id)
        family = _FAMILY_V6 if len(raw_ip) == 16 else _FAMILY_V4
        return struct.pack("!BBH", 0, family, port) + raw_ip
    if t == CHANGE_REQUEST:
        if not isinstance(v, ChangeRequest):
            raise ValueError(f"CHANGE-REQUEST needs a ChangeRequest, not {type(v).__name__}")
        return struct.pack("!I", (_CHANGE_IP if v.change_ip else 0) | (_CHANGE_PORT if v.change_port else 0))
    if t in _TEXT_MAX_BYTES:
        if not isinstance(v, str):
            raise ValueError(f"{attr.name} needs text, not {type(v).__name__}")
        data = v.encode("utf-8")
        if len(data) > _TEXT_MAX_BYTES[t]:
            raise ValueError(f"{attr.name} is {len(data)} bytes, over the limit of {_TEXT_MAX_BYTES[t]}")
        return data
    if t == ERROR_CODE:
        if not isinstance(v, ErrorCode):
            raise ValueError(f"ERROR-CODE needs an ErrorCode, not {type(v).__name__}")
        reason = v.reason.encode("utf-8")
        if len(reason) > _REASON_MAX_BYTES:
            raise ValueError(f"ERROR-CODE reason is over {_REASON_MAX_BYTES} bytes")
        return struct.pack("!HBB", 0, v.code // 100, v.code % 100) + reason
    if t == UNKNOWN_ATTRIBUTES:
        return struct.pack(f"!{len(v)}H", *v)
    if t == CHANNEL_NUMBER:
        if not isinstance(v, int) or not CHANNEL_FIRST <= v <= CHANNEL_LAST:
            raise ValueError(f"CHANNEL-NUMBER {v!r} is not in 0x4000..0x4fff")
        return struct.pack("!HH", v, 0)
    if t == LIFETIME:
        if not isinstance(v, int) or not 0 <= v <= 0xFFFFFFFF:
            raise ValueError(f"LIFETIME {v!r} is not a 32-bit count of seconds")
        return struct.pack("!I", v)
    if t == REQUESTED_TRANSPORT:
        if not isinstance(v, int) or not 0 <= v <= 255:
            raise ValueError(f"REQUESTED-TRANSPORT {v!r} is not an IP protocol number")
        return struct.pack("!B3x", v)
    if t == REQUESTED_ADDRESS_FAMILY:
        if v not in (_FAMILY_V4, _FAMILY_V6):
            raise ValueError(f"REQUESTED-ADDRESS-FAMILY {v!r} is not 1 (IPv4) or 2 (IPv6)")
        return struct.pack("!B3x", v)
    if t == EVEN_PORT:
        return b"\x80" if v else b"\x00"
    if t == DONT_FRAGMENT:
        return b""
    if t == RESERVATION_TOKEN and (not isinstance(v, (bytes, bytearray)) or len(v) != 8):
        raise ValueError("RESERVATION-TOKEN is 8 bytes")
    if not isinstance(v, (bytes, bytearray)):
        raise ValueError(f"attribute {attr.name} needs raw bytes, not {type(v).__name__}")
    return bytes(v)


def _integrity(key: bytes, message_prefix: bytes, length: int) -> bytes:
    """HMAC-SHA1 over C{message_prefix} with its length field set to C{length}."""
    data = message_prefix[:2] + struct.pack("!H", length) + message_prefix[4:]
    return hmac.new(key, data, hashlib.sha1).digest()


def _xor(data: bytes, mask: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, mask))
