"""
Signed messages: a proof, checkable by anyone who knows the sender's
L{PeerId}, that the sender sent a payload to a recipient (doc/signed.md).

TLS authenticates a connection to the two ends of it, but proves nothing to a
third party.  A message sent with C{signed=True} carries an Ed25519 signature
by the sender's identity key over::

    "crust-signed-message" 0x00 0x01                (context and version)
    u16 len(network) | network                      (the network name, UTF-8)
    sender (32) | recipient (32)                    (raw peer ids)
    u8 priority | u64 seq | u32 len(payload) | payload

(integers big-endian).  Every field has a fixed size or a length before it,
and the context names the kind of signature and its version, so no two
different tuples, and no other signature crust makes, sign the same bytes.

A I{batch} (C{signed="batch"}) signs many messages to one peer at once: each
message is hashed to a I{leaf}, the leaves are chained, and one signature
covers the chain's last link::

    leaf_i  = SHA-256("crust-signed-leaf" 0x00 0x01 | the fields above)
    link_0  = SHA-256("crust-signed-chain" 0x00 0x01)
    link_i  = SHA-256(link_(i-1) | leaf_i)
    signature over "crust-signed-batch" 0x00 0x01 | link_n

The proof of message i carries C{link_(i-1)} and the leaves of the messages
after it in its batch: a verifier recomputes C{leaf_i}, then the links up to
C{link_n}, and checks the one signature.  It costs one signature check and
C{n - i + 1} hashes, and 32 bytes of proof per later message (at most
L{MAX_BATCH} - 1 of them); the earlier messages stay out of the proof.

L{SignedMessage} is a proof; L{SignedMessage.to_json} and
L{SignedMessage.from_json} carry it as text (JSON, binary fields in base64),
and L{verify_signed} checks one.  Pure logic, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional, Sequence, Union

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from crust._util.jsonread import JsonRefused, read_json_object
from crust.errors import BadSignature, SignedMessageError
from crust.identity import Identity, PeerId

__all__ = [
    "FORMAT_VERSION", "MAX_BATCH", "MAX_EXPORT_SIZE", "SignedMessage", "batch_leaves", "chain", "leaf_hash",
    "message_bytes", "open_batch", "open_message", "sign_batch", "sign_message", "verify_signed",
]

#: The version in the contexts below and in the exported form.
FORMAT_VERSION = 1
MESSAGE_CONTEXT = b"crust-signed-message\x00\x01"
LEAF_CONTEXT = b"crust-signed-leaf\x00\x01"
BATCH_CONTEXT = b"crust-signed-batch\x00\x01"
CHAIN_START = hashlib.sha256(b"crust-signed-chain\x00\x01").digest()

SIGNATURE_BYTES = 64
HASH_BYTES = 32
#: The most messages one batch signature covers.
MAX_BATCH = 256
MAX_SEQ = (1 << 64) - 1
MAX_PAYLOAD = (1 << 32) - 1
MAX_NETWORK = 0xFFFF  # bytes of the network name, UTF-8
#: The largest exported proof read by default (its payload, in base64, is most of it).
MAX_EXPORT_SIZE = 64 * 1024 * 1024

_NETWORK_LENGTH = struct.Struct("!H")
_TAIL = struct.Struct("!BQI")  # priority, seq, payload length
_KINDS = ("message", "batch")
_KEYS = {"crust-signed", "kind", "network", "sender", "recipient", "priority", "seq", "payload", "signature"}
_BATCH_KEYS = _KEYS | {"link", "later"}


def _fields(network: bytes, sender: bytes, recipient: bytes, priority: int, seq: int, size: int) -> bytes:
    """The signed fields before the payload (the payload's length included)."""
    return _NETWORK_LENGTH.pack(len(network)) + network + sender + recipient + _TAIL.pack(priority, seq, size)


def _network_bytes(network: str) -> bytes:
    raw = network.encode("utf-8")
    if len(raw) > MAX_NETWORK:
        raise ValueError(f"a network name is at most {MAX_NETWORK} bytes in UTF-8")
    return raw


def message_bytes(network: str, sender: bytes, recipient: bytes, priority: int, seq: int, payload: bytes) -> bytes:
    """What the signature of one signed message covers."""
    return MESSAGE_CONTEXT + _fields(_network_bytes(network), sender, recipient, priority, seq,
                                     len(payload)) + payload


def leaf_hash(network: str, sender: bytes, recipient: bytes, priority: int, seq: int, payload: bytes) -> bytes:
    """The hash of one message of a batch."""
    h = hashlib.sha256(LEAF_CONTEXT)
    h.update(_fields(_network_bytes(network), sender, recipient, priority, seq, len(payload)))
    h.update(payload)
    return h.digest()


def chain(link: bytes, leaves: Sequence[bytes]) -> bytes:
    """The link after C{leaves}, starting from C{link}."""
    sha256 = hashlib.sha256
    for leaf in leaves:
        link = sha256(link + leaf).digest()
    return link


def batch_leaves(network: str, sender: bytes, recipient: bytes, priority: int,
                 entries: Sequence[tuple[int, bytes]]) -> list[bytes]:
    """The leaves of a batch of C{(seq, payload)} entries, in order."""
    net = _network_bytes(network)
    # the fields before the sequence number are the batch's: hashed once, the state copied per message
    base = hashlib.sha256(LEAF_CONTEXT + _NETWORK_LENGTH.pack(len(net)) + net + sender + recipient)
    pack = _TAIL.pack
    out = []
    for seq, payload in entries:
        h = base.copy()
        h.update(pack(priority, seq, len(payload)))
        h.update(payload)
        out.append(h.digest())
    return out


def sign_message(identity: Identity, network: str, recipient: bytes, priority: int, seq: int,
                 payload: bytes) -> bytes:
    """The signature of one message from C{identity} (64 bytes)."""
    data = message_bytes(network, identity.peer_id, recipient, priority, seq, payload)
    return identity.signing_key.sign(data).signature


def sign_batch(identity: Identity, network: str, recipient: bytes, priority: int,
               entries: Sequence[tuple[int, bytes]]) -> bytes:
    """The one signature of a batch of C{(seq, payload)} entries (64 bytes)."""
    leaves = batch_leaves(network, identity.peer_id, recipient, priority, entries)
    return identity.signing_key.sign(BATCH_CONTEXT + chain(CHAIN_START, leaves)).signature


@lru_cache(maxsize=1024)
def _verify_key(raw: bytes) -> VerifyKey:
    return VerifyKey(raw)


def _check(signer: bytes, data: bytes, signature: bytes) -> bool:
    try:
        _verify_key(bytes(signer)).verify(data, signature)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class SignedMessage:
    """
    A signed message and what proves it: who (C{sender}) sent what
    (C{payload}) to whom (C{recipient}) in which network, with which
    sequence number and priority.

    @ivar seq: the sender's sequence number: strictly increasing over the
        messages of one priority from the sender to the recipient (one
        counter across priorities, so no number repeats), starting near the
        sender's clock in microseconds, so it keeps increasing across restarts.
    @ivar signature: the sender's Ed25519 signature (64 bytes): of this
        message, or of its batch.
    @ivar link: a batch's proof: the link of the chain before this message
        (32 bytes); None for a message signed alone.
    @ivar later: a batch's proof: the leaves of the messages after this one
        in its batch.
    """

    network: str
    sender: PeerId
    recipient: PeerId
    priority: int
    seq: int
    payload: bytes
    signature: bytes
    link: Optional[bytes] = None
    later: tuple[bytes, ...] = ()

    @property
    def kind(self) -> str:
        """C{"message"} (signed alone) or C{"batch"} (signed with its batch)."""
        return "message" if self.link is None else "batch"

    def signed_bytes(self) -> bytes:
        """What the signature covers (the batch's: the chain's last link, with its context)."""
        if self.link is None:
            return message_bytes(self.network, self.sender, self.recipient, self.priority, self.seq, self.payload)
        leaf = leaf_hash(self.network, self.sender, self.recipient, self.priority, self.seq, self.payload)
        return BATCH_CONTEXT + chain(self.link, (leaf,) + self.later)

    def is_valid(self) -> bool:
        """Whether the signature holds (nothing else is checked)."""
        try:
            data = self.signed_bytes()
        except (ValueError, struct.error):
            return False
        return _check(self.sender, data, self.signature)

    def to_json(self) -> str:
        """
        The proof as one line of JSON (doc/signed.md)::

            {"crust-signed": 1, "kind": "message", "network": "demo",
             "sender": PEER, "recipient": PEER, "priority": 1, "seq": 1718000000000000,
             "payload": BASE64, "signature": BASE64}

        A batch's proof (C{"kind": "batch"}) adds C{"link": BASE64} and
        C{"later": [BASE64, ...]}.  Base64 is RFC 4648's, with padding.
        """
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        """The proof as the JSON object of L{to_json}."""
        body: dict[str, Any] = {
            "crust-signed": FORMAT_VERSION, "kind": self.kind, "network": self.network,
            "sender": str(self.sender), "recipient": str(self.recipient), "priority": self.priority,
            "seq": self.seq, "payload": _b64(self.payload), "signature": _b64(self.signature),
        }
        if self.link is not None:
            body["link"] = _b64(self.link)
            body["later"] = [_b64(h) for h in self.later]
        return body

    @classmethod
    def from_json(cls, data: Union[str, bytes, bytearray], max_size: int = MAX_EXPORT_SIZE) -> "SignedMessage":
        """
        Read an exported proof (L{to_json}); its signature is not checked here
        (L{verify_signed} does).

        @raise SignedMessageError: it is not a well-formed proof (never anything else).
        """
        try:
            body = read_json_object(data, max_size=max_size, max_depth=2, max_containers=2)
        except JsonRefused as e:
            raise SignedMessageError(f"not a signed message: {e.reason}") from None
        if body.get("crust-signed") != FORMAT_VERSION or type(body.get("crust-signed")) is not int:
            raise SignedMessageError(f"not a signed message of format {FORMAT_VERSION} "
                                     "(no \"crust-signed\": 1)")
        kind = body.get("kind")
        if kind not in _KINDS:
            raise SignedMessageError(f"unknown kind {_short(kind)}: \"message\" or \"batch\"")
        unknown = set(body) - (_BATCH_KEYS if kind == "batch" else _KEYS)
        if unknown:
            raise SignedMessageError(f"unknown key {_short(sorted(unknown)[0])} (nothing unsigned is accepted)")
        network = body.get("network")
        if not isinstance(network, str):
            raise SignedMessageError("the network is not text")
        try:
            _network_bytes(network)
        except (ValueError, UnicodeError):
            raise SignedMessageError(f"the network name is over {MAX_NETWORK} bytes or not UTF-8") from None
        sender = _peer(body, "sender")
        recipient = _peer(body, "recipient")
        priority = _int(body, "priority", 255)
        seq = _int(body, "seq", MAX_SEQ)
        payload = _bytes(body, "payload")
        if len(payload) > MAX_PAYLOAD:
            raise SignedMessageError(f"the payload is over {MAX_PAYLOAD} bytes")
        signature = _bytes(body, "signature", SIGNATURE_BYTES)
        link: Optional[bytes] = None
        later: tuple[bytes, ...] = ()
        if kind == "batch":
            link = _bytes(body, "link", HASH_BYTES)
            raw_later = body.get("later")
            if not isinstance(raw_later, list) or len(raw_later) >= MAX_BATCH:
                raise SignedMessageError(f"\"later\" is not a list of at most {MAX_BATCH - 1} hashes")
            later = tuple(_decode_b64(h, "an entry of \"later\"", HASH_BYTES) for h in raw_later)
        return cls(network, sender, recipient, priority, seq, payload, signature, link, later)

    def describe(self) -> str:
        """One line: who signed what for whom."""
        return (f"{self.sender} signed {len(self.payload)} bytes for {self.recipient} "
                f"(network {self.network!r}, priority {self.priority}, sequence number {self.seq}, "
                + ("signed alone)" if self.link is None else f"signed in a batch, {len(self.later)} after it)"))


def open_message(network: str, sender: PeerId, recipient: PeerId, priority: int, seq: int, payload: bytes,
                 signature: bytes) -> Optional[SignedMessage]:
    """The proof of a message signed alone, or None if its signature does not hold."""
    proof = SignedMessage(network, sender, recipient, priority, seq, payload, signature)
    return proof if proof.is_valid() else None


def open_batch(network: str, sender: PeerId, recipient: PeerId, priority: int,
               entries: Sequence[tuple[int, bytes]], signature: bytes) -> Optional[list[SignedMessage]]:
    """
    The proofs of a batch's messages, in order, checking its one signature
    once; None if it does not hold.
    """
    leaves = batch_leaves(network, sender, recipient, priority, entries)
    links = [CHAIN_START]
    sha256 = hashlib.sha256
    for leaf in leaves:
        links.append(sha256(links[-1] + leaf).digest())
    if not _check(sender, BATCH_CONTEXT + links[-1], signature):
        return None
    later = tuple(leaves)
    return [SignedMessage(network, sender, recipient, priority, seq, payload, signature, links[i], later[i + 1:])
            for i, (seq, payload) in enumerate(entries)]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _peer(body: dict[str, Any], key: str) -> PeerId:
    try:
        return PeerId.from_text(body.get(key))
    except ValueError:
        raise SignedMessageError(f"\"{key}\" is not a peer id") from None


def _int(body: dict[str, Any], key: str, top: int) -> int:
    value = body.get(key)
    if type(value) is not int or not 0 <= value <= top:
        raise SignedMessageError(f"\"{key}\" is not an integer in 0..{top}")
    return value


def _decode_b64(value: object, what: str, size: Optional[int] = None) -> bytes:
    if not isinstance(value, str):
        raise SignedMessageError(f"{what} is not base64 text")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeError):
        raise SignedMessageError(f"{what} is not valid base64") from None
    if size is not None and len(raw) != size:
        raise SignedMessageError(f"{what} is {len(raw)} bytes, not {size}")
    return raw


def _bytes(body: dict[str, Any], key: str, size: Optional[int] = None) -> bytes:
    return _decode_b64(body.get(key), f"\"{key}\"", size)


def verify_signed(proof: Union[SignedMessage, str, bytes, bytearray], network_name: Optional[str] = None,
                  expected_sender: Union[PeerId, str, None] = None,
                  expected_recipient: Union[PeerId, str, None] = None) -> SignedMessage:
    """
    Check a signed message: its proof (a L{SignedMessage} or its exported
    text) and, when given, that it was made in C{network_name}, by
    C{expected_sender}, for C{expected_recipient} (peer ids or their text).
    Only the sender's peer id, which the proof names, is needed.

    @return: the verified L{SignedMessage}: its C{sender}, C{recipient},
        C{network}, C{priority}, C{seq} and C{payload} are proven.
    @raise BadSignature: the signature does not hold (a field was changed,
        or someone else signed).
    @raise SignedMessageError: the proof is malformed, or names another
        network, sender or recipient than expected.
    """
    message = proof if isinstance(proof, SignedMessage) else SignedMessage.from_json(proof)
    if not message.is_valid():
        raise BadSignature(f"the signature does not hold: not signed by {message.sender} as it says "
                           "(the proof was changed, or made with another key)")
    if network_name is not None and message.network != network_name:
        raise SignedMessageError(f"signed in network {message.network!r}, not {network_name!r}")
    for expected, got, what in ((expected_sender, message.sender, "by"), (expected_recipient, message.recipient,
                                                                           "for")):
        if expected is None:
            continue
        try:
            want = expected if isinstance(expected, PeerId) else PeerId.from_text(expected)
        except ValueError:
            raise SignedMessageError(f"not a peer id: {_short(expected)}") from None
        if got != want:
            raise SignedMessageError(f"signed {what} {got}, not {want}")
    return message
