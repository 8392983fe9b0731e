"""
The first-byte map of the node's shared UDP socket, and crust's own UDP
message types.

The node has one UDP socket (L{crust.transport.udp.UdpEndpoint}) shared by
STUN, crust's UDP messages and QUIC.  Every incoming datagram goes to its
owner by its first byte, in the spirit of RFC 7983 (updated by RFC 9443 for
QUIC)::

    first byte  owner
    0..3        STUN (when C{crust.nat.stun.is_stun} agrees): the STUN client,
                then the STUN responder
    4..15       crust's own UDP messages; the byte is the message type:
                4 echo request, 5 echo response (L{crust.nat.echo}),
                6..15 reserved for crust, hole punching first
    16..255     everything else, by registration; QUIC claims 64..255
    (else)      counted and dropped

Why 4..15: it is the only range no multiplexing scheme claims.  16..19 is
ZRTP, 20..63 DTLS (and reserved by the TLS ContentType registry for that
purpose), 64..79 TURN channels, 64..127 QUIC short headers, 128..191 RTP,
128..255 QUIC long headers (with the QUIC bit greased, RFC 9287, QUIC may use
any value above 63).  Keeping crust to 4..15 leaves the socket able to carry
QUIC, DTLS or TURN later without any change to crust's messages.

A crust message type is claimed once, here, in L{MESSAGE_TYPES}: a second
claim of the same type is an error at import time, so two features cannot
quietly share a byte.  Claiming one is a single line::

    PUNCH_CHECK = MESSAGE_TYPES.claim(6, "hole punching check")
"""

from __future__ import annotations

import struct
from typing import Optional

_STUN_HEADER_SIZE = 20
_STUN_MAX_SIZE = _STUN_HEADER_SIZE + 0xFFFC  # crust.nat.stun.MAX_MESSAGE_SIZE
_STUN_COOKIE = struct.pack("!I", 0x2112A442)


def is_stun(datagram: bytes) -> bool:
    """
    Cheap test that C{datagram} is a STUN message, for sharing a socket with
    other traffic: the first byte is 0..3 (RFC 7983, so the first two bits
    are 0), the magic cookie is at bytes 4..8, and the length field is a
    multiple of 4 that matches the datagram.  It does not parse attributes.
    """
    n = len(datagram)
    return (
        _STUN_HEADER_SIZE <= n <= _STUN_MAX_SIZE
        and datagram[0] < 4
        and datagram[4:8] == _STUN_COOKIE
        and (n - _STUN_HEADER_SIZE) % 4 == 0
        and ((datagram[2] << 8) | datagram[3]) == n - _STUN_HEADER_SIZE
    )

# first-byte ranges (inclusive)
STUN_FIRST, STUN_LAST = 0, 3
CRUST_FIRST, CRUST_LAST = 4, 15
OTHER_FIRST, OTHER_LAST = 16, 255
QUIC_FIRST, QUIC_LAST = 64, 255  # within OTHER: RFC 9443

FIRST_BYTE_RANGES = (
    ("stun", STUN_FIRST, STUN_LAST),
    ("crust", CRUST_FIRST, CRUST_LAST),
    ("other", OTHER_FIRST, OTHER_LAST),
)

RESERVED_FOR_HOLE_PUNCHING = range(6, CRUST_LAST + 1)


def check_message_type(message_type: int) -> int:
    """
    C{message_type} if it is a crust message type (4..15).

    @raise ValueError: it is not.
    """
    if isinstance(message_type, bool) or not isinstance(message_type, int) \
            or not CRUST_FIRST <= message_type <= CRUST_LAST:
        raise ValueError(f"crust message types are {CRUST_FIRST}..{CRUST_LAST}, not {message_type!r}")
    return message_type


class MessageTypes:
    """Which crust UDP message type (4..15) belongs to which message."""

    def __init__(self) -> None:
        self._names: dict[int, str] = {}

    def claim(self, message_type: int, name: str) -> int:
        """
        Claim C{message_type} for the message called C{name}; returns the
        type, for C{ECHO_REQUEST = MESSAGE_TYPES.claim(4, "echo request")}.

        @raise ValueError: the type is outside 4..15, or already claimed.
        """
        check_message_type(message_type)
        if not name:
            raise ValueError("a crust message type needs a name")
        owner = self._names.get(message_type)
        if owner is not None:
            raise ValueError(
                f"crust message type {message_type} is already claimed by {owner!r}, not free for {name!r}"
            )
        self._names[message_type] = name
        return message_type

    def name(self, message_type: int) -> Optional[str]:
        """The name C{message_type} was claimed for, or None."""
        return self._names.get(message_type)

    def claimed(self) -> dict[int, str]:
        """Every claimed type and its name, in type order."""
        return dict(sorted(self._names.items()))


MESSAGE_TYPES = MessageTypes()

ECHO_REQUEST = MESSAGE_TYPES.claim(4, "echo request")
ECHO_RESPONSE = MESSAGE_TYPES.claim(5, "echo response")


__all__ = [
    "CRUST_FIRST",
    "CRUST_LAST",
    "ECHO_REQUEST",
    "ECHO_RESPONSE",
    "FIRST_BYTE_RANGES",
    "MESSAGE_TYPES",
    "MessageTypes",
    "OTHER_FIRST",
    "OTHER_LAST",
    "QUIC_FIRST",
    "QUIC_LAST",
    "RESERVED_FOR_HOLE_PUNCHING",
    "STUN_FIRST",
    "STUN_LAST",
    "check_message_type",
]
