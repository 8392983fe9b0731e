"""
The UDP connectivity checks of hole punching: CHECK and ACK (pure codec).

Each side of a punch sends CHECKs to the other's candidate addresses; a
CHECK that gets through is answered with an ACK carrying the CHECK's source
address as the responder saw it (so the checker learns its peer-reflexive
address, as with STUN).  Wire format, after the crust UDP message type::

    CHECK: 6 | "cp" | 1 | attempt(8) | seq(u32) | flags(u8) | mac(16)                            33 bytes
    ACK:   7 | "cp" | 1 | attempt(8) | seq(u32) | flags(u8) | family(u8) | port(u16) | addr(16)
           | mac(16)                                                                             52 bytes

The address field is C{family} 4 (the four IPv4 bytes left-aligned, the
rest zero) or 6.  The MAC is keyed BLAKE2b (16 bytes, personalised
C{b"crust-punch-v1"}) over everything before it, under the pair key
L{pair_key}C{(static_shared, attempt)}: L{static_shared} is the X25519
secret of the two node identities (the same on both sides, known to no one
else), the attempt id eight bytes chosen by the initiator (all zero when
both sides pasted each other's connection info).  The attempt id is
readable without the key, so that a receiver finds the attempt, and so the
key, before it checks the MAC with L{verify}.

L{decode} looks at the size first and allocates nothing in proportion to
its input; it raises L{CheckError} and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass

from nacl.bindings import crypto_box_beforenm

from crust.transport.udp_messages import MESSAGE_TYPES
from crust.address import Address
from crust.errors import CrustError
from crust.identity import Identity, PeerId
from crust.nat.echo import curve_public_key, curve_secret_key

CHECK = MESSAGE_TYPES.claim(6, "hole punching check")
ACK = MESSAGE_TYPES.claim(7, "hole punching check answer")
MAGIC = b"cp"
VERSION = 1

#: Flag bit 0: the sender will run QUIC over this pair.
NOMINATE = 1
#: Flag bit 1: sent from one of the extra sockets of a birthday punch.
BIRTHDAY = 2

ATTEMPT_SIZE = 8
KEY_SIZE = 32
MAC_SIZE = 16
MAC_PERSON = b"crust-punch-v1"
KEY_PERSON = b"crust-punchkey"

_CHECK_BODY = struct.Struct("!B2sB8sIB")  # type, magic, version, attempt, seq, flags
_ACK_BODY = struct.Struct("!B2sB8sIBBH16s")  # ... family, port, address
CHECK_SIZE = _CHECK_BODY.size + MAC_SIZE  # 33
ACK_SIZE = _ACK_BODY.size + MAC_SIZE  # 52

_ZERO_PAD = bytes(12)


class CheckError(CrustError):
    """A datagram is not a well-formed CHECK or ACK (size, magic, version, type or address)."""


@dataclass(frozen=True)
class Check:
    """
    A decoded CHECK (its MAC not yet verified: see L{verify}).

    @ivar attempt: the eight-byte attempt id.
    @ivar seq: the sender's sequence number (echoed in the ACK).
    @ivar flags: L{NOMINATE}, L{BIRTHDAY}; unknown bits are kept.
    @ivar mac: the sixteen MAC bytes as received.
    """

    attempt: bytes
    seq: int
    flags: int
    mac: bytes

    @property
    def nominate(self) -> bool:
        return bool(self.flags & NOMINATE)

    @property
    def birthday(self) -> bool:
        return bool(self.flags & BIRTHDAY)


@dataclass(frozen=True)
class Ack:
    """
    A decoded ACK (its MAC not yet verified: see L{verify}).

    @ivar observed: the source address of the CHECK as the responder saw it
        (a C{udp} L{Address}).
    """

    attempt: bytes
    seq: int
    flags: int
    observed: Address
    mac: bytes

    @property
    def nominate(self) -> bool:
        return bool(self.flags & NOMINATE)

    @property
    def birthday(self) -> bool:
        return bool(self.flags & BIRTHDAY)


Message = Check | Ack


def static_shared(identity: Identity, peer_id: PeerId) -> bytes:
    """
    The X25519 shared secret of our identity and a peer's (32 bytes; the
    peer computes the same from its side).  Computing it costs a scalar
    multiplication: keep it for the peer.

    @raise ValueError: C{peer_id} is not a usable Ed25519 public key.
    """
    try:
        return crypto_box_beforenm(curve_public_key(peer_id), curve_secret_key(identity))
    except RuntimeError:  # a low-order point: libsodium refuses it
        raise ValueError(f"{peer_id} is not a usable Ed25519 public key") from None


def pair_key(shared: bytes, attempt: bytes) -> bytes:
    """The MAC key of one attempt: keyed BLAKE2b of the attempt id under L{static_shared}."""
    if len(shared) != KEY_SIZE:
        raise ValueError(f"the shared secret is {KEY_SIZE} bytes, not {len(shared)}")
    _check_attempt(attempt)
    return hashlib.blake2b(attempt, key=shared, person=KEY_PERSON, digest_size=KEY_SIZE).digest()


def _check_attempt(attempt: bytes) -> None:
    if not isinstance(attempt, bytes) or len(attempt) != ATTEMPT_SIZE:
        raise ValueError(f"an attempt id is {ATTEMPT_SIZE} bytes")


def _check_fields(attempt: bytes, seq: int, flags: int) -> None:
    _check_attempt(attempt)
    if not 0 <= seq <= 0xFFFFFFFF:
        raise ValueError(f"seq out of range: {seq}")
    if not 0 <= flags <= 0xFF:
        raise ValueError(f"flags out of range: {flags}")


def _mac(key: bytes, body: bytes) -> bytes:
    return hashlib.blake2b(body, key=key, person=MAC_PERSON, digest_size=MAC_SIZE).digest()


def _address_field(address: Address) -> tuple[int, int, bytes]:
    ip = address.ip
    return ip.version, address.port, ip.packed.ljust(16, b"\x00")


def _check_body(attempt: bytes, seq: int, flags: int) -> bytes:
    return _CHECK_BODY.pack(CHECK, MAGIC, VERSION, attempt, seq, flags)


def _ack_body(attempt: bytes, seq: int, flags: int, observed: Address) -> bytes:
    return _ACK_BODY.pack(ACK, MAGIC, VERSION, attempt, seq, flags, *_address_field(observed))


def encode_check(key: bytes, attempt: bytes, seq: int, flags: int = 0) -> bytes:
    """A CHECK of C{CHECK_SIZE} bytes. @raise ValueError: a field is out of range."""
    _check_fields(attempt, seq, flags)
    body = _check_body(attempt, seq, flags)
    return body + _mac(key, body)


def encode_ack(key: bytes, attempt: bytes, seq: int, flags: int, observed: Address) -> bytes:
    """
    An ACK of C{ACK_SIZE} bytes answering CHECK C{seq}; C{observed} is the
    CHECK's source address.  @raise ValueError: a field is out of range.
    """
    _check_fields(attempt, seq, flags)
    body = _ack_body(attempt, seq, flags, observed)
    return body + _mac(key, body)


def decode(data: bytes | bytearray | memoryview) -> Message:
    """
    Parse a CHECK or an ACK (without verifying its MAC).

    @raise CheckError: wrong size, magic, version or type, or (ACK) a bad
        address field; never anything else.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CheckError(f"a check is bytes, not {type(data).__name__}")
    size = len(data)
    if size == CHECK_SIZE:
        expected = CHECK
    elif size == ACK_SIZE:
        expected = ACK
    else:
        raise CheckError(f"a punch check is {CHECK_SIZE} or {ACK_SIZE} bytes, not {size}")
    data = bytes(data)
    if data[0] != expected:
        raise CheckError(f"a message of {size} bytes with type {data[0]} is not a punch check")
    if data[1:3] != MAGIC:
        raise CheckError("bad punch check magic")
    if data[3] != VERSION:
        raise CheckError(f"unknown punch check version {data[3]}")
    mac = data[-MAC_SIZE:]
    if expected == CHECK:
        _, _, _, attempt, seq, flags = _CHECK_BODY.unpack_from(data)
        return Check(attempt, seq, flags, mac)
    _, _, _, attempt, seq, flags, family, port, raw = _ACK_BODY.unpack_from(data)
    host: str
    if family == 4:
        if raw[4:] != _ZERO_PAD:
            raise CheckError("ACK has an IPv4 address with non-zero padding")
        host = str(ipaddress.IPv4Address(raw[:4]))
    elif family == 6:
        host = str(ipaddress.IPv6Address(raw))
    else:
        raise CheckError(f"ACK has unknown address family {family}")
    if port == 0:
        raise CheckError("ACK has port 0")
    return Ack(attempt, seq, flags, Address("udp", host, port), mac)


def verify(key: bytes, msg: Message) -> bool:
    """Whether C{msg}'s MAC is right for C{key} (a constant-time comparison)."""
    if isinstance(msg, Check):
        body = _check_body(msg.attempt, msg.seq, msg.flags)
    elif isinstance(msg, Ack):
        body = _ack_body(msg.attempt, msg.seq, msg.flags, msg.observed)
    else:
        return False
    return hmac.compare_digest(_mac(key, body), msg.mac)
