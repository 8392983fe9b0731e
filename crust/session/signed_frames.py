"""
The frames of signed messages (doc/protocol.md §6a, doc/signed.md): their
layout, encoding and parsing.  Pure logic, no I/O.

Both travel with DATA frames: queued by priority, on the lane of their
priority (QUIC's bulk stream for priorities >= 2), in order with the
messages of that priority, and held with them during a handover::

    SIGNED (28):        priority u8 | seq u64 | signature (64) | payload
    SIGNED_BATCH (29):  priority u8 | count u16 | signature (64)
                        | count x (seq u64 | length u32 | payload)

The network, the sender and the recipient are the connection's: they are
signed, not sent.  A batch holds 1..L{MAX_BATCH} messages with strictly
increasing sequence numbers and its lengths add up to the frame exactly;
anything else is a L{SignedFrameError}.
"""

from __future__ import annotations

import struct
from typing import Sequence

from crust.errors import ProtocolViolation
from crust.signed import MAX_BATCH, SIGNATURE_BYTES

SIGNED_FRAME = 28
SIGNED_BATCH_FRAME = 29
#: Frame types that carry messages: ordered with DATA, on its lanes, held with it.
MESSAGE_FRAME_TYPES = frozenset((SIGNED_FRAME, SIGNED_BATCH_FRAME))

_SINGLE = struct.Struct("!BQ64s")
_BATCH = struct.Struct("!BH64s")
_ENTRY = struct.Struct("!QI")
SINGLE_HEAD = _SINGLE.size  # 73
BATCH_HEAD = _BATCH.size  # 67
ENTRY_HEAD = _ENTRY.size  # 12
#: A signed message is at most the maximum message size minus this: its
#: frame (alone, or alone in a batch) must fit where a message's would.
OVERHEAD = 128

assert SIGNATURE_BYTES == 64 and BATCH_HEAD + ENTRY_HEAD <= OVERHEAD and SINGLE_HEAD <= OVERHEAD


class SignedFrameError(ProtocolViolation):
    """A signed message's frame is malformed, replayed, or its signature does not hold."""


def encode_single_head(priority: int, seq: int, signature: bytes) -> bytes:
    """A SIGNED frame's payload up to the message (the message follows)."""
    return _SINGLE.pack(priority, seq, signature)


def decode_single(body: bytes) -> tuple[int, int, bytes, bytes]:
    """A SIGNED frame's C{(priority, seq, signature, payload)}."""
    if len(body) < SINGLE_HEAD:
        raise SignedFrameError(f"SIGNED frame of {len(body)} bytes, under its {SINGLE_HEAD}-byte head")
    priority, seq, signature = _SINGLE.unpack_from(body)
    return priority, seq, signature, body[SINGLE_HEAD:]


def batch_size(payload_sizes: Sequence[int]) -> int:
    """The payload size of a SIGNED_BATCH frame holding messages of these sizes."""
    return BATCH_HEAD + ENTRY_HEAD * len(payload_sizes) + sum(payload_sizes)


def encode_batch(priority: int, signature: bytes, entries: Sequence[tuple[int, bytes]]) -> bytes:
    """A SIGNED_BATCH frame's payload."""
    if not 1 <= len(entries) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1..{MAX_BATCH} messages, not {len(entries)}")
    parts = [_BATCH.pack(priority, len(entries), signature)]
    pack = _ENTRY.pack
    for seq, payload in entries:
        parts.append(pack(seq, len(payload)))
        parts.append(payload)
    return b"".join(parts)


def decode_batch(body: bytes) -> tuple[int, bytes, list[tuple[int, bytes]]]:
    """A SIGNED_BATCH frame's C{(priority, signature, [(seq, payload), ...])}."""
    size = len(body)
    if size < BATCH_HEAD:
        raise SignedFrameError(f"SIGNED_BATCH frame of {size} bytes, under its {BATCH_HEAD}-byte head")
    priority, count, signature = _BATCH.unpack_from(body)
    if not 1 <= count <= MAX_BATCH:
        raise SignedFrameError(f"SIGNED_BATCH of {count} messages (1..{MAX_BATCH})")
    if size < BATCH_HEAD + count * ENTRY_HEAD:
        raise SignedFrameError(f"SIGNED_BATCH of {count} messages in {size} bytes")
    entries: list[tuple[int, bytes]] = []
    unpack = _ENTRY.unpack_from
    offset = BATCH_HEAD
    last = -1
    for _ in range(count):
        if size - offset < ENTRY_HEAD:
            raise SignedFrameError("SIGNED_BATCH ends inside a message's head")
        seq, length = unpack(body, offset)
        offset += ENTRY_HEAD
        if length > size - offset:
            raise SignedFrameError(f"SIGNED_BATCH message of {length} bytes runs past the frame")
        if seq <= last:
            raise SignedFrameError(f"SIGNED_BATCH sequence numbers do not increase ({seq} after {last})")
        last = seq
        entries.append((seq, body[offset:offset + length]))
        offset += length
    if offset != size:
        raise SignedFrameError(f"SIGNED_BATCH has {size - offset} bytes after its last message")
    return priority, signature, entries
