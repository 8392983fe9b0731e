"""
Signed messages of one node (doc/signed.md): the sender's sequence numbers
and batches, and the receiver's checks.

Sending, L{Signing.send}: a message sent with C{signed=True} is signed at
once and goes out as a SIGNED frame
(L{crust.session.signed_frames}), queued by its priority like any message.
With C{signed="batch"} it joins the open batch of its peer and priority; the
batch is signed once and sent as one SIGNED_BATCH frame when its window
(C{Config.signed_batch_window}) ends, when it holds C{signed_batch_max}
messages or would outgrow a frame, or just before another message of that
peer and priority is sent (so messages of one priority keep their order,
signed or not).  Batching adds up to the window to a message's latency.

Sequence numbers: one counter per peer, strictly increasing across all
priorities, each number the larger of the last one plus one and the clock in
microseconds: they keep increasing across restarts of the sender (given a
clock that does not go back) and when the counter was forgotten (at most
L{MAX_PEERS} peers are remembered).

Receiving: each frame is parsed, its sequence number must be above the last
one of that peer and priority (priorities are reordered by the sender's
queues, never within one), and its signature (a batch's: once for the
batch) must hold; then each message reaches the observers with its proof
(L{crust.observer.Observers.deliver_signed}).  Anything else is a
L{SignedFrameError}, a protocol violation: nothing of the frame is
delivered, the connection logs one line and closes with
C{protocol-error} and the reason, which the peer is told and the
application hears in C{lost_peer}.  The last sequence numbers of at most
L{MAX_PEERS} peers are remembered, least recently heard from forgotten first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from crust.config import Config
from crust.errors import (
    CrustError,
    InvalidPriority,
    MessageTooLarge,
    PeerNotConnected,
    SendQueueFull,
    SignedNotSupported,
)
from crust.identity import Identity, PeerId
from crust.session.signalling import ControlFrames
from crust.session.signed_frames import (
    BATCH_HEAD,
    ENTRY_HEAD,
    OVERHEAD,
    SIGNED_BATCH_FRAME,
    SIGNED_FRAME,
    SignedFrameError,
    decode_batch,
    decode_single,
    encode_batch,
    encode_single_head,
)
from crust.signed import open_batch, open_message, sign_batch, sign_message

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection

#: Peers whose sequence numbers are remembered, each way.
MAX_PEERS = 4096

#: What C{signed} may be in C{send}: a message signed alone, or in a batch.
MODES = (True, "batch")


class SigningTable(Protocol):
    """What signing needs of the peer table."""

    control_frames: ControlFrames

    def usable(self, peer_id: PeerId) -> Optional["PeerConnection"]: ...


class SignedEvents(Protocol):
    """What signing tells the application (L{crust.observer.Observers})."""

    def emit(self, event: str, *args: Any) -> None: ...
    def deliver_signed(self, peer_id: Any, payload: bytes, proof: Any) -> None: ...


@dataclass
class _Batch:
    """The open batch of one peer and priority."""

    entries: list[tuple[int, bytes]] = field(default_factory=list)
    size: int = BATCH_HEAD  # its frame's payload so far
    payload_bytes: int = 0
    timer: Optional[IDelayedCall] = None


class Signing:
    """
    Signed messages of one node; see the module docstring.

    @param network: the network name (signed into every message).
    @ivar batches: the open batches, by C{(peer id, priority)}.
    """

    log = Logger()

    def __init__(self, identity: Identity, network: str, clock: IReactorTime, config: Callable[[], Config],
                 table: SigningTable, events: SignedEvents) -> None:
        self._identity = identity
        self._local_id = identity.peer_id
        self._network = network
        self._clock = clock
        self._config = config
        self._table = table
        self._events = events
        self.batches: dict[tuple[PeerId, int], _Batch] = {}
        self._pending: dict[PeerId, int] = {}  # payload bytes in a peer's open batches
        self._sent: dict[PeerId, int] = {}  # the last sequence number sent to each peer
        self._received: dict[PeerId, dict[int, int]] = {}  # the last one received, per peer and priority
        self.sent_messages = 0
        self.received_messages = 0

    def install(self) -> Callable[[], None]:
        """Claim the signed frame types; returns what undoes it."""
        frames = self._table.control_frames
        undo = (frames.register(SIGNED_FRAME, self.single_received),
                frames.register(SIGNED_BATCH_FRAME, self.batch_received))

        def uninstall() -> None:
            for claim in undo:
                claim()

        return uninstall

    # -- sending --------------------------------------------------------------------

    def send(self, conn: "PeerConnection", peer_id: PeerId, data: bytes, priority: int, mode: object) -> None:
        """
        Send C{data} signed (C{mode} True) or in a signed batch (C{"batch"})
        on C{conn}, C{peer_id}'s connection.  Raises at once, sending
        nothing: L{MessageTooLarge} (over C{max_message_size} - L{OVERHEAD}),
        L{InvalidPriority}, L{SignedNotSupported}, L{SendQueueFull},
        L{crust.errors.PeerNotConnected}; C{ValueError} for another C{mode}.
        """
        if mode is not True and mode != "batch":
            raise ValueError(f"signed is False, True or \"batch\", not {mode!r}")
        if type(data) is not bytes:
            data = bytes(data)
        limit = max(0, conn.max_message_size - OVERHEAD)
        if len(data) > limit:
            raise MessageTooLarge(len(data), limit)
        if type(priority) is not int or not 0 <= priority <= 255:
            raise InvalidPriority(f"priority must be an integer in 0..255, not {priority!r}")
        hello = conn.handshake.peer_hello
        if hello is not None and not hello.signed:
            raise SignedNotSupported(f"{peer_id} does not take signed messages (an older crust)")
        if mode == "batch":
            self._add(conn, peer_id, data, priority)
            return
        if self.batches:
            self.flush(peer_id, priority)
        seq = self._next_seq(peer_id)
        signature = sign_message(self._identity, self._network, peer_id, priority, seq, data)
        conn.send_frame(SIGNED_FRAME, encode_single_head(priority, seq, signature), data, priority)
        self.sent_messages += 1

    def _add(self, conn: "PeerConnection", peer_id: PeerId, data: bytes, priority: int) -> None:
        key = (peer_id, priority)
        batch = self.batches.get(key)
        size = len(data)
        if batch is not None and batch.size + ENTRY_HEAD + size > conn.max_message_size:
            self._flush(key)  # it would outgrow a frame: this message starts the next one
            batch = None
        pending = self._pending.get(peer_id, 0)
        if conn.queued_bytes + pending + size > conn.max_queued_bytes:
            raise SendQueueFull(f"{conn.queued_bytes + pending} bytes already queued for this peer "
                                f"(bound {conn.max_queued_bytes})")
        if not conn.is_active or conn.closing:
            raise PeerNotConnected(f"the connection is not active ({conn.state.value})")
        config = self._config()
        if batch is None:
            batch = self.batches[key] = _Batch()
            batch.timer = self._clock.callLater(config.signed_batch_window, self._flush, key)
        batch.entries.append((self._next_seq(peer_id), data))
        batch.size += ENTRY_HEAD + size
        batch.payload_bytes += size
        self._pending[peer_id] = pending + size
        if len(batch.entries) >= config.signed_batch_max:
            self._flush(key)

    def pending(self, peer_id: PeerId) -> int:
        """Bytes of messages to C{peer_id} waiting in open batches."""
        return self._pending.get(peer_id, 0)

    def flush(self, peer_id: PeerId, priority: int) -> None:
        """Sign and send the open batch of C{peer_id} and C{priority}, if any."""
        if (peer_id, priority) in self.batches:
            self._flush((peer_id, priority))

    def flush_all(self) -> None:
        """Sign and send every open batch (the node is stopping)."""
        for key in list(self.batches):
            self._flush(key)

    def _flush(self, key: tuple[PeerId, int]) -> None:
        batch = self.batches.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None and batch.timer.active():
            batch.timer.cancel()
        peer_id, priority = key
        left = self._pending.get(peer_id, 0) - batch.payload_bytes
        if left > 0:
            self._pending[peer_id] = left
        else:
            self._pending.pop(peer_id, None)
        conn = self._table.usable(peer_id)
        if conn is None:
            self._lost(peer_id, priority, batch, "the connection ended before the batch was signed")
            return
        signature = sign_batch(self._identity, self._network, peer_id, priority, batch.entries)
        body = encode_batch(priority, signature, batch.entries)
        try:
            # its messages were counted against the queue's bound as they were sent
            conn.send_frame(SIGNED_BATCH_FRAME, b"", body, priority, bounded=False)
        except CrustError as e:
            self._lost(peer_id, priority, batch, str(e))
            return
        self.sent_messages += len(batch.entries)

    def _lost(self, peer_id: PeerId, priority: int, batch: _Batch, reason: str) -> None:
        count = len(batch.entries)
        self.log.warn("dropped a signed batch of {count} message(s), {size} bytes, of priority {priority} "
                      "to {peer}: {reason}", count=count, size=batch.payload_bytes, priority=priority,
                      peer=str(peer_id), reason=reason)
        self._events.emit("message_dropped", peer_id, priority, count, batch.payload_bytes, reason)

    def _next_seq(self, peer_id: PeerId) -> int:
        sent = self._sent
        last = sent.pop(peer_id, -1)
        seq = max(last + 1, int(self._clock.seconds() * 1_000_000))
        sent[peer_id] = seq  # at the end: the most recently used
        if len(sent) > MAX_PEERS:
            del sent[next(iter(sent))]
        return seq

    # -- receiving ------------------------------------------------------------------

    def single_received(self, conn: "PeerConnection", body: bytes) -> None:
        """A SIGNED frame arrived on C{conn} (an active connection, in order)."""
        peer_id = conn.peer_id
        assert peer_id is not None  # active
        priority, seq, signature, payload = decode_single(body)
        self._check_order(peer_id, priority, seq)
        proof = open_message(self._network, peer_id, self._local_id, priority, seq, payload, signature)
        if proof is None:
            raise SignedFrameError(f"the signature of signed message {seq} does not hold")
        self._received_up_to(peer_id, priority, seq)
        self.received_messages += 1
        counts = conn.frame_messages
        counts[0] += 1
        counts[1] += len(payload)
        self._events.deliver_signed(peer_id, payload, proof)

    def batch_received(self, conn: "PeerConnection", body: bytes) -> None:
        """A SIGNED_BATCH frame arrived on C{conn}: checked once, then each message delivered."""
        peer_id = conn.peer_id
        assert peer_id is not None  # active
        priority, signature, entries = decode_batch(body)
        self._check_order(peer_id, priority, entries[0][0])
        proofs = open_batch(self._network, peer_id, self._local_id, priority, entries, signature)
        if proofs is None:
            raise SignedFrameError(f"the signature of the signed batch of messages {entries[0][0]}.."
                                   f"{entries[-1][0]} does not hold")
        self._received_up_to(peer_id, priority, entries[-1][0])
        self.received_messages += len(entries)
        counts = conn.frame_messages
        counts[0] += len(entries)
        counts[1] += sum(len(payload) for _, payload in entries)
        deliver = self._events.deliver_signed
        for (_, payload), proof in zip(entries, proofs):
            deliver(peer_id, payload, proof)

    def _check_order(self, peer_id: PeerId, priority: int, seq: int) -> None:
        last = self._received.get(peer_id, {}).get(priority, -1)
        if seq <= last:
            raise SignedFrameError(f"signed message replayed or out of order: sequence number {seq} after {last} "
                                   f"(priority {priority})")

    def _received_up_to(self, peer_id: PeerId, priority: int, seq: int) -> None:
        received = self._received
        last = received.pop(peer_id, None)
        if last is None:
            last = {}
        last[priority] = seq
        received[peer_id] = last  # at the end: the most recently heard from
        if len(received) > MAX_PEERS:
            del received[next(iter(received))]


def install(*, identity: Identity, network: str, clock: IReactorTime, config: Callable[[], Config],
            table: SigningTable, events: SignedEvents) -> Signing:
    """Signed messages for a node: the sender and receiver, its frame types claimed."""
    signing = Signing(identity, network, clock, config, table, events)
    signing.install()
    return signing
