"""
TURN (RFC 8656) on top of the STUN codec: the requests and indications a
client sends, the Data indication it receives, and ChannelData framing.
Pure logic, no I/O.

The TURN methods and attributes themselves (ALLOCATE, XOR-RELAYED-ADDRESS,
LIFETIME, CHANNEL-NUMBER...) are part of L{crust.nat.stun}: L{stun.decode}
parses them strictly like every other attribute, within the same bounds
(the header checked first, at most L{stun.MAX_ATTRIBUTES} attributes), and
the TURN client reads a message's header (L{stun.peek}) to decide whether it
is a Data indication or a response of its own before decoding anything.

ChannelData (RFC 8656 section 12.4) is not STUN::

     0                   1                   2                   3
    +-------------------------------+-------------------------------+
    |         Channel Number        |            Length             |
    +-------------------------------+-------------------------------+
    |                 Application Data (Length bytes)              ...
    +---------------------------------------------------------------+

The channel number is 0x4000..0x4FFF, so the first byte is 64..79.  Over
UDP the message may be padded to a multiple of 4; L{encode_channel_data}
pads, L{decode_channel_data} accepts it either way.
"""

from __future__ import annotations

import struct
from typing import Iterable, Optional

from crust.address import Address
from crust.nat import stun
from crust.nat.stun import Attribute, MessageClass, StunMessage, StunParseError

CHANNEL_FIRST = stun.CHANNEL_FIRST
CHANNEL_LAST = stun.CHANNEL_LAST
CHANNEL_HEADER_SIZE = 4
UDP = 17  # REQUESTED-TRANSPORT: the IP protocol number of UDP
MAX_CHANNEL_DATA = 0xFFFF

_CHANNEL_HEADER = struct.Struct("!HH")
_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")


class TurnParseError(StunParseError):
    """A datagram is not a well-formed TURN message or ChannelData; the text says why."""


# --- ChannelData -------------------------------------------------------------------


def is_channel_data(datagram: bytes) -> bool:
    """Whether the first byte says ChannelData (64..79) and there is a header; cheap, for demultiplexing."""
    return len(datagram) >= CHANNEL_HEADER_SIZE and 0x40 <= datagram[0] <= 0x4F


def encode_channel_data(channel: int, data: bytes, *, pad: bool = True) -> bytes:
    """
    A ChannelData message carrying C{data} on C{channel}, padded to a
    multiple of 4 bytes unless C{pad} is false.

    @raise ValueError: the channel is not 0x4000..0x4FFF or C{data} is over 65535 bytes.
    """
    if not CHANNEL_FIRST <= channel <= CHANNEL_LAST:
        raise ValueError(f"channel 0x{channel:04x} is not in 0x4000..0x4fff")
    n = len(data)
    if n > MAX_CHANNEL_DATA:
        raise ValueError(f"ChannelData holds at most {MAX_CHANNEL_DATA} bytes, not {n}")
    return _CHANNEL_HEADER.pack(channel, n) + data + (_PAD[n & 3] if pad else b"")


def decode_channel_data(datagram: bytes) -> tuple[int, bytes]:
    """
    The C{(channel, data)} of a ChannelData datagram.

    @raise TurnParseError: the channel is outside 0x4000..0x4FFF, or the
        datagram is shorter than its length field says, or longer than that
        length padded to a multiple of 4.
    """
    n = len(datagram)
    if n < CHANNEL_HEADER_SIZE:
        raise TurnParseError(f"truncated: {n} bytes is shorter than the 4-byte ChannelData header")
    channel, length = _CHANNEL_HEADER.unpack_from(datagram)
    if not CHANNEL_FIRST <= channel <= CHANNEL_LAST:
        raise TurnParseError(f"ChannelData on channel 0x{channel:04x}, not in 0x4000..0x4fff")
    end = CHANNEL_HEADER_SIZE + length
    if n < end:
        raise TurnParseError(f"truncated: ChannelData announces {length} bytes, has {n - CHANNEL_HEADER_SIZE}")
    if n > end + (-length & 3):
        raise TurnParseError(f"{n - end} bytes after {length} bytes of ChannelData (more than padding)")
    return channel, bytes(datagram[CHANNEL_HEADER_SIZE:end])


# --- what a client sends -------------------------------------------------------------


def allocate_request(transaction_id: Optional[bytes] = None, *, lifetime: Optional[int] = None,
                     dont_fragment: bool = False, software: Optional[str] = None) -> StunMessage:
    """An Allocate request for a UDP relay (REQUESTED-TRANSPORT 17), without credentials."""
    attrs = [Attribute(stun.REQUESTED_TRANSPORT, UDP)]
    if lifetime is not None:
        attrs.append(Attribute(stun.LIFETIME, lifetime))
    if dont_fragment:
        attrs.append(Attribute(stun.DONT_FRAGMENT, True))
    if software is not None:
        attrs.append(Attribute(stun.SOFTWARE, software))
    return StunMessage(MessageClass.REQUEST, stun.ALLOCATE, transaction_id or stun.new_transaction_id(), tuple(attrs))


def refresh_request(transaction_id: Optional[bytes] = None, *, lifetime: Optional[int] = None) -> StunMessage:
    """A Refresh request; C{lifetime=0} deletes the allocation."""
    attrs = () if lifetime is None else (Attribute(stun.LIFETIME, lifetime),)
    return StunMessage(MessageClass.REQUEST, stun.REFRESH, transaction_id or stun.new_transaction_id(), attrs)


def create_permission_request(peers: Iterable[Address], transaction_id: Optional[bytes] = None) -> StunMessage:
    """A CreatePermission request for the IPs of C{peers} (their ports are ignored by the server)."""
    attrs = tuple(Attribute(stun.XOR_PEER_ADDRESS, peer) for peer in peers)
    if not attrs:
        raise ValueError("a CreatePermission request names at least one peer")
    return StunMessage(MessageClass.REQUEST, stun.CREATE_PERMISSION,
                       transaction_id or stun.new_transaction_id(), attrs)


def channel_bind_request(channel: int, peer: Address, transaction_id: Optional[bytes] = None) -> StunMessage:
    """A ChannelBind request binding C{channel} (0x4000..0x4FFF) to C{peer}."""
    if not CHANNEL_FIRST <= channel <= CHANNEL_LAST:
        raise ValueError(f"channel 0x{channel:04x} is not in 0x4000..0x4fff")
    return StunMessage(MessageClass.REQUEST, stun.CHANNEL_BIND, transaction_id or stun.new_transaction_id(),
                       (Attribute(stun.CHANNEL_NUMBER, channel), Attribute(stun.XOR_PEER_ADDRESS, peer)))


def send_indication(peer: Address, data: bytes, transaction_id: Optional[bytes] = None) -> StunMessage:
    """A Send indication: the server relays C{data} to C{peer} from our relayed address."""
    return StunMessage(MessageClass.INDICATION, stun.SEND, transaction_id or stun.new_transaction_id(),
                       (Attribute(stun.XOR_PEER_ADDRESS, peer), Attribute(stun.DATA, bytes(data))))


def data_indication(peer: Address, data: bytes, transaction_id: Optional[bytes] = None) -> StunMessage:
    """A Data indication (what a server sends; for tests and fakes)."""
    return StunMessage(MessageClass.INDICATION, stun.DATA_INDICATION, transaction_id or stun.new_transaction_id(),
                       (Attribute(stun.XOR_PEER_ADDRESS, peer), Attribute(stun.DATA, bytes(data))))


def with_credentials(message: StunMessage, username: str, realm: str, nonce: str) -> StunMessage:
    """C{message} with USERNAME, REALM and NONCE appended (encode it with the long-term key)."""
    attrs = message.attributes + (Attribute(stun.USERNAME, username), Attribute(stun.REALM, realm),
                                  Attribute(stun.NONCE, nonce))
    return StunMessage(message.message_class, message.method, message.transaction_id, attrs)


# --- what a client receives ------------------------------------------------------------


def parse_data_indication(message: StunMessage) -> tuple[Address, bytes]:
    """
    The C{(peer, data)} of a decoded Data indication.

    @raise TurnParseError: it is not a Data indication, or lacks XOR-PEER-ADDRESS or DATA.
    """
    if message.method != stun.DATA_INDICATION or message.message_class != MessageClass.INDICATION:
        raise TurnParseError(f"not a Data indication: {message.message_class.name.lower()} "
                             f"of {stun.method_name(message.method)}")
    peer = message.peer_address
    if peer is None:
        raise TurnParseError("Data indication without XOR-PEER-ADDRESS")
    data = message.get(stun.DATA)
    if data is None:
        raise TurnParseError("Data indication without DATA")
    return peer, data


__all__ = [
    "CHANNEL_FIRST",
    "CHANNEL_HEADER_SIZE",
    "CHANNEL_LAST",
    "TurnParseError",
    "UDP",
    "allocate_request",
    "channel_bind_request",
    "create_permission_request",
    "data_indication",
    "decode_channel_data",
    "encode_channel_data",
    "is_channel_data",
    "parse_data_indication",
    "refresh_request",
    "send_indication",
    "with_credentials",
]
