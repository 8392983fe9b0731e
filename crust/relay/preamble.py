"""
The splice preamble (pure: no I/O): what an end of a relayed circuit sends
first on the plain TCP connection it opens to the relay's listening port, so
that the relay can join it to the circuit's other end (L{crust.relay.splicer},
doc/protocol.md section 12)::

    offset  size  what
    0       4     MAGIC, "CRSP" (0x43 0x52 0x53 0x50)
    4       1     VERSION, 1
    5       32    the splice token the relay gave this end (INVITE or READY)

A TLS connection's first byte is a record's content type (0x16 for the
ClientHello; never above 0x18), so the listener tells the two apart by the
first byte, at no cost to TLS.  The relay answers with one byte,
L{SPLICED}, once both ends presented their tokens: every byte after it is
the other end's.  A relay that does not splice closes the connection
instead, without a byte; the end then carries the circuit in RELAY_DATA
frames, as without splicing.

Tokens travel in INVITE and READY as 64 lowercase hexadecimal digits
(L{token_text}, L{token_from_text}).
"""

from __future__ import annotations

import re

from crust.errors import ProtocolViolation

MAGIC = b"CRSP"
VERSION = 1
TOKEN_SIZE = 32
PREAMBLE_SIZE = len(MAGIC) + 1 + TOKEN_SIZE
#: The relay's one-byte answer: spliced.  Anything else, or the end of the connection: not spliced.
SPLICED = b"\x01"
_HEX = re.compile(r"[0-9a-f]{64}")


class PreambleError(ProtocolViolation):
    """Bytes that are not a splice preamble of this version."""


def encode_preamble(token: bytes) -> bytes:
    """The preamble presenting C{token}. @raise ValueError: it is not L{TOKEN_SIZE} bytes."""
    if not isinstance(token, bytes) or len(token) != TOKEN_SIZE:
        raise ValueError(f"a splice token is {TOKEN_SIZE} bytes, not {token!r}")
    return MAGIC + bytes([VERSION]) + token


def parse_preamble(data: bytes) -> bytes:
    """
    The token a preamble presents.

    @param data: exactly the L{PREAMBLE_SIZE} first bytes of a connection.
    @raise PreambleError: not that size, not the magic, or another version.
    """
    if len(data) != PREAMBLE_SIZE:
        raise PreambleError(f"a splice preamble is {PREAMBLE_SIZE} bytes, not {len(data)}")
    if data[:len(MAGIC)] != MAGIC:
        raise PreambleError("not a splice preamble (wrong magic)")
    version = data[len(MAGIC)]
    if version != VERSION:
        raise PreambleError(f"splice preamble version {version}, this node speaks {VERSION}")
    return bytes(data[len(MAGIC) + 1:])


def token_text(token: bytes) -> str:
    """A token as it travels in JSON."""
    if not isinstance(token, bytes) or len(token) != TOKEN_SIZE:
        raise ValueError(f"a splice token is {TOKEN_SIZE} bytes, not {token!r}")
    return token.hex()


def token_from_text(text: object) -> bytes:
    """A token from its JSON text. @raise ProtocolViolation: not 64 lowercase hexadecimal digits."""
    if not isinstance(text, str) or not _HEX.fullmatch(text):
        raise ProtocolViolation("a splice token is 64 lowercase hexadecimal digits")
    return bytes.fromhex(text)


__all__ = ["MAGIC", "VERSION", "TOKEN_SIZE", "PREAMBLE_SIZE", "SPLICED", "PreambleError", "encode_preamble",
           "parse_preamble", "token_text", "token_from_text"]
