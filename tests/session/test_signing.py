"""
Signed messages of one node, on a real connection over a StringTransport
with a Clock: what is sent (alone, in batches), what is checked and
delivered, what is refused.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from crust import signed as signed_module
from crust.config import Config
from crust.errors import InvalidPriority, MessageTooLarge, SendQueueFull, SignedNotSupported
from crust.identity import Identity
from crust.observer import CrustObserver, Observers, RecordingObserver
from crust.peering.admission import Admission
from crust.peering.table import PeerTable
from crust.session import signing as signing_module
from crust.session.connection import PeerConnection
from crust.session.framing import FrameDecoder
from crust.session.signed_frames import (
    OVERHEAD,
    SIGNED_BATCH_FRAME,
    SIGNED_FRAME,
    decode_batch,
    decode_single,
    encode_batch,
    encode_single_head,
)
from crust.session.signing import install
from crust.signed import open_batch, open_message, sign_batch, sign_message, verify_signed
from crust.wire import DATA, Hello, frame, network_hash

from tests import examples
from tests.util import ordered_identities

NET = network_hash("demo")
NAME = "demo"


class Harness:
    """A node (us, the chooser) with one active connection to a peer whose frames the test writes."""

    def __init__(self, testcase, peer_signs=True, max_message_size=4000, max_queued_bytes=12000, **config):
        self.us, self.them = ordered_identities()
        self.clock = Clock()
        self.config = Config(network_name=NAME, max_message_size=max_message_size,
                             max_queued_bytes=max_queued_bytes, **config)
        self.observers = Observers()
        self.events = RecordingObserver()
        self.observers.add(self.events)
        self.table = PeerTable(Admission(lambda: self.config), self.observers,
                               lambda conn: Hello(network=NET, signed=True))
        self.table.accepting = True
        self.signing = install(identity=self.us, network=NAME, clock=self.clock, config=lambda: self.config,
                               table=self.table, events=self.observers)
        self.peer = self.them.peer_id
        self.seq = 0
        self.connect(testcase, peer_signs)

    def connect(self, testcase, peer_signs=True):
        """A (new) active connection to the peer: C{conn}, its transport C{transport}."""
        self.conn = PeerConnection(self.table, self.clock, local_id=self.us.peer_id, network=NET, initiator=True,
                                   max_message_size=self.config.max_message_size,
                                   max_queued_bytes=self.config.max_queued_bytes, drop_after=self.config.drop_after,
                                   heartbeat_interval=20.0, inactivity_timeout=120.0, handshake_timeout=10.0)
        self.table.connection_made(self.conn)
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)
        self.conn.handshake.tls_complete(self.them.peer_id)
        self.conn.dataReceived(Hello(network=NET, signed=peer_signs).encode())
        testcase.assertTrue(self.conn.is_active)
        self.transport.clear()
        self.events.events.clear()

    def sent(self):
        """The frames we wrote since the last look: [(type, payload)]."""
        frames = []
        decoder = FrameDecoder(1 << 20, lambda p: frames.append((DATA, p)), lambda t, p: frames.append((t, p)))
        decoder.feed(self.transport.value())
        self.transport.clear()
        return frames

    def send(self, data, priority=1, mode=True):
        self.signing.send(self.conn, self.peer, data, priority, mode)

    # -- what the peer sends us ------------------------------------------------------

    def single(self, data, priority=1, seq=None, signer=None, network=NAME):
        seq = self.next_seq() if seq is None else seq
        signature = sign_message(signer or self.them, network, self.us.peer_id, priority, seq, data)
        return frame(SIGNED_FRAME, encode_single_head(priority, seq, signature) + data)

    def batch(self, payloads, priority=1, signer=None):
        entries = [(self.next_seq(), p) for p in payloads]
        signature = sign_batch(signer or self.them, NAME, self.us.peer_id, priority, entries)
        return frame(SIGNED_BATCH_FRAME, encode_batch(priority, signature, entries))

    def next_seq(self):
        self.seq += 1
        return self.seq

    def signed_received(self):
        return self.events.named("new_signed_message")


class SendingTests(SynchronousTestCase):
    def test_signed_alone_goes_at_once_and_proves_itself_to_a_third_party(self):
        h = Harness(self)
        h.send(b"hello", 1)
        [(ftype, body)] = h.sent()
        self.assertEqual(ftype, SIGNED_FRAME)
        priority, seq, signature, payload = decode_single(body)
        self.assertEqual((priority, payload), (1, b"hello"))
        proof = open_message(NAME, h.us.peer_id, h.peer, priority, seq, payload, signature)
        self.assertIsNotNone(proof)
        self.assertEqual(verify_signed(proof.to_json(), expected_sender=str(h.us.peer_id)).payload, b"hello")

    def test_sequence_numbers_increase_from_the_clock_in_microseconds(self):
        h = Harness(self)
        h.send(b"a")
        h.send(b"b", 5)
        h.clock.advance(3.5)
        h.send(b"c")
        seqs = [decode_single(body)[1] for _, body in h.sent()]
        self.assertEqual(seqs, [0, 1, 3_500_000])

    def test_a_batch_waits_for_its_window_then_goes_under_one_signature(self):
        h = Harness(self, signed_batch_window=0.01)
        for i in range(3):
            h.send(b"m%d" % i, 2, "batch")
        self.assertEqual(h.sent(), [])
        self.assertEqual(h.signing.pending(h.peer), 6)
        h.clock.advance(0.01)
        [(ftype, body)] = h.sent()
        self.assertEqual(ftype, SIGNED_BATCH_FRAME)
        priority, signature, entries = decode_batch(body)
        self.assertEqual([p for _, p in entries], [b"m0", b"m1", b"m2"])
        proofs = open_batch(NAME, h.us.peer_id, h.peer, priority, entries, signature)
        self.assertEqual([verify_signed(p.to_json()).payload for p in proofs], [b"m0", b"m1", b"m2"])
        self.assertEqual(h.signing.pending(h.peer), 0)
        self.assertEqual(h.signing.batches, {})
        self.assertEqual(h.signing.sent_messages, 3)

    def test_batches_are_per_priority_and_close_when_full(self):
        h = Harness(self, signed_batch_max=4)
        for i in range(9):
            h.send(b"%d" % i, 3, "batch")
        h.send(b"other", 4, "batch")
        counts = [len(decode_batch(body)[2]) for _, body in h.sent()]
        self.assertEqual(counts, [4, 4])
        h.clock.advance(h.config.signed_batch_window)
        rest = [decode_batch(body) for _, body in h.sent()]
        self.assertEqual(sorted((p, len(e)) for p, _, e in rest), [(3, 1), (4, 1)])

    def test_a_batch_never_outgrows_a_frame(self):
        h = Harness(self, max_message_size=1000, max_queued_bytes=10000)
        for _ in range(5):
            h.send(b"x" * 400, 1, "batch")
        h.clock.advance(1)
        frames = h.sent()
        self.assertEqual([len(decode_batch(body)[2]) for _, body in frames], [2, 2, 1])
        self.assertTrue(all(len(body) <= 1000 for _, body in frames), frames)

    def test_signing_alone_sends_the_open_batch_of_its_priority_first(self):
        h = Harness(self)
        h.send(b"batched", 1, "batch")
        h.send(b"other priority", 2, "batch")
        h.send(b"alone", 1, True)
        frames = h.sent()
        self.assertEqual([t for t, _ in frames], [SIGNED_BATCH_FRAME, SIGNED_FRAME])
        self.assertEqual(decode_batch(frames[0][1])[2][0][1], b"batched")
        self.assertEqual(list(h.signing.batches), [(h.peer, 2)])

    def test_refusals_queue_nothing(self):
        h = Harness(self)
        limit = h.conn.max_message_size - OVERHEAD
        h.send(b"x" * limit)  # the largest signed message
        with self.assertRaises(MessageTooLarge) as e:
            h.send(b"x" * (limit + 1))
        self.assertEqual((e.exception.size, e.exception.limit), (limit + 1, limit))
        self.assertRaises(MessageTooLarge, h.send, b"x" * (limit + 1), 1, "batch")
        self.assertRaises(InvalidPriority, h.send, b"x", 256)
        self.assertRaises(InvalidPriority, h.send, b"x", "1")
        self.assertRaises(ValueError, h.send, b"x", 1, "yes")
        self.assertEqual(len(h.sent()), 1)
        self.assertEqual(h.signing.batches, {})

    def test_a_peer_that_does_not_take_signed_messages(self):
        h = Harness(self, peer_signs=False)
        self.assertRaises(SignedNotSupported, h.send, b"x")
        self.assertRaises(SignedNotSupported, h.send, b"x", 1, "batch")
        self.assertEqual(h.sent(), [])

    def test_batched_bytes_count_against_the_queue_bound(self):
        h = Harness(self, max_message_size=1000, max_queued_bytes=3000)
        h.conn.pauseProducing()  # the transport is full: everything queues
        with self.assertRaises(SendQueueFull):
            for _ in range(10):
                h.send(b"x" * 800, 1, "batch")
        # what was taken stays under the bound, the open batch included
        self.assertLessEqual(h.conn.queued_bytes + h.signing.pending(h.peer), 3000 + 4 * OVERHEAD)
        h.conn.resumeProducing()
        h.clock.advance(1)
        got = [p for _, body in h.sent() for _, p in decode_batch(body)[2]]
        self.assertEqual(len(got), 3)

    def test_queued_by_priority_with_the_others_and_dropped_only_from_priority_2(self):
        h = Harness(self, max_message_size=4000, max_queued_bytes=100_000, drop_after=5.0)
        h.conn.pauseProducing()  # the transport is full
        h.conn.send_message(b"plain 1", 1)
        h.send(b"signed 1", 1)
        h.send(b"batched 1", 1, "batch")
        h.send(b"signed 5", 5)
        h.send(b"batched 5", 5, "batch")
        h.clock.advance(0.1)  # the batches close, into the queues
        h.conn.send_message(b"plain 0", 0)
        self.assertEqual(h.sent(), [])
        h.clock.advance(10)  # over drop_after: priority 5 goes, priorities 0 and 1 stay
        h.conn.resumeProducing()
        got = []
        for ftype, body in h.sent():
            if ftype == DATA:
                got.append(body)
            elif ftype == SIGNED_FRAME:
                got.append(decode_single(body)[3])
            else:
                got.extend(p for _, p in decode_batch(body)[2])
        self.assertEqual(got, [b"plain 0", b"plain 1", b"signed 1", b"batched 1"])
        [(peer, priority, count, _, reason)] = h.events.named("message_dropped")
        self.assertEqual((peer, priority, count), (h.peer, 5, 2))
        self.assertIn("insufficient bandwidth", reason)

    def test_a_batch_whose_connection_ended_is_reported_dropped(self):
        h = Harness(self)
        h.send(b"abc", 1, "batch")
        h.send(b"de", 1, "batch")
        h.conn.connectionLost()
        h.clock.advance(1)
        self.assertEqual(h.events.named("message_dropped"),
                         [(h.peer, 1, 2, 5, "the connection ended before the batch was signed")])
        self.assertEqual(h.signing.pending(h.peer), 0)

    def test_flush_all(self):
        h = Harness(self)
        h.send(b"a", 1, "batch")
        h.send(b"b", 7, "batch")
        h.signing.flush_all()
        self.assertEqual(len(h.sent()), 2)
        self.assertEqual(h.signing.batches, {})
        self.assertEqual(h.clock.getDelayedCalls(), [c for c in h.clock.getDelayedCalls() if c.active()])

    def test_sequence_numbers_of_at_most_max_peers_are_kept(self):
        self.patch(signing_module, "MAX_PEERS", 2)
        h = Harness(self)
        for _ in range(3):
            h.signing._next_seq(Identity.generate().peer_id)
        self.assertEqual(len(h.signing._sent), 2)


class ReceivingTests(SynchronousTestCase):
    def test_a_signed_message_reaches_the_observer_with_its_proof(self):
        h = Harness(self)
        h.conn.dataReceived(h.single(b"hi", 1))
        [(peer, data, proof)] = h.signed_received()
        self.assertEqual((peer, data), (h.peer, b"hi"))
        self.assertEqual(verify_signed(proof.to_json(), network_name=NAME, expected_sender=h.peer,
                                       expected_recipient=h.us.peer_id).payload, b"hi")
        self.assertFalse(h.conn.closing)
        self.assertEqual(h.signing.received_messages, 1)

    def test_a_replayed_frame_is_refused_and_closes_the_connection(self):
        h = Harness(self)
        signed = h.single(b"pay 10", 1)
        h.conn.dataReceived(signed)
        h.conn.dataReceived(signed)
        self.assertEqual(len(h.signed_received()), 1)
        self.assertTrue(h.conn.closing)
        self.assertIn("protocol-error", h.conn._close_reason)
        self.assertIn("replayed or out of order", h.conn._close_reason)
        self.assertIn(b"replayed or out of order", h.transport.value())  # the peer is told why

    def test_order_is_checked_per_priority(self):
        h = Harness(self)
        h.conn.dataReceived(h.single(b"late", 2, seq=10))
        h.conn.dataReceived(h.single(b"urgent", 0, seq=11))
        h.conn.dataReceived(h.single(b"queued longer", 2, seq=5))  # another priority's queue let it wait
        self.assertEqual([d for _, d, _ in h.signed_received()], [b"late", b"urgent"])
        self.assertTrue(h.conn.closing)
        self.assertIn("sequence number 5 after 10 (priority 2)", h.conn._close_reason)

    def test_order_holds_across_connections(self):
        h = Harness(self)
        signed = h.single(b"one", 1, seq=10)
        h.conn.dataReceived(signed)
        h.conn.connectionLost()
        h.connect(self)  # the peer again, on a new connection: the old message is still a replay
        h.conn.dataReceived(signed)
        self.assertEqual(h.signed_received(), [])
        self.assertIn("sequence number 10 after 10", h.conn._close_reason)

    def test_a_bad_signature_is_refused(self):
        for forge in ({"signer": Identity.generate()}, {"network": "other"}):  # another key, another network
            h = Harness(self)
            h.conn.dataReceived(h.single(b"x", **forge))
            self.assertEqual(h.signed_received(), [])
            self.assertTrue(h.conn.closing)
            self.assertIn("the signature of signed message 1 does not hold", h.conn._close_reason)
        h = Harness(self)
        tampered = bytearray(h.single(b"pay 10"))
        tampered[-1] ^= 1
        h.conn.dataReceived(bytes(tampered))
        self.assertEqual(h.signed_received(), [])
        self.assertIn("does not hold", h.conn._close_reason)

    def test_a_batch_is_checked_once_and_every_message_delivered_with_its_proof(self):
        h = Harness(self)
        checks = []
        original = signed_module._check
        self.patch(signed_module, "_check", lambda *a: checks.append(1) or original(*a))
        h.conn.dataReceived(h.batch([b"a", b"b", b"c", b"d", b"e"], 3))
        self.assertEqual(len(checks), 1)
        got = h.signed_received()
        self.assertEqual([d for _, d, _ in got], [b"a", b"b", b"c", b"d", b"e"])
        for _, data, proof in got:
            self.assertEqual(proof.kind, "batch")
            self.assertEqual(verify_signed(proof.to_json(), expected_sender=h.peer).payload, data)

    def test_a_tampered_batch_delivers_nothing(self):
        h = Harness(self)
        body = bytearray(h.batch([b"a", b"b"]))
        body[-1] ^= 1
        h.conn.dataReceived(bytes(body))
        self.assertEqual(h.signed_received(), [])
        self.assertIn("signed batch of messages", h.conn._close_reason)

    def test_a_replayed_batch_is_refused(self):
        h = Harness(self)
        batch = h.batch([b"a", b"b"])
        h.conn.dataReceived(batch + batch)
        self.assertEqual(len(h.signed_received()), 2)
        self.assertIn("replayed", h.conn._close_reason)

    def test_a_malformed_frame_is_a_protocol_violation(self):
        h = Harness(self)
        h.conn.dataReceived(frame(SIGNED_BATCH_FRAME, b"\x01\x00\x00" + bytes(64)))
        self.assertTrue(h.conn.closing)
        self.assertIn("protocol-error: SIGNED_BATCH of 0 messages", h.conn._close_reason)

    def test_message_frames_before_the_connection_is_chosen(self):
        h = Harness(self)
        conn = PeerConnection(h.table, h.clock, local_id=h.them.peer_id, network=NET, initiator=True,
                              max_message_size=1000, max_queued_bytes=3000, drop_after=60.0,
                              heartbeat_interval=20.0, inactivity_timeout=120.0, handshake_timeout=10.0)
        h.table.connection_made(conn)
        conn.makeConnection(StringTransport())
        conn.handshake.tls_complete(h.us.peer_id)
        conn.dataReceived(h.single(b"early"))
        self.assertIn("a message frame before the connection was chosen", conn._close_reason)
        self.assertEqual(h.signed_received(), [])

    def test_held_signed_messages_keep_their_place_among_the_others(self):
        h = Harness(self)
        h.conn.hold()  # a handover: what arrives here waits for the old connection's last frames
        h.conn.dataReceived(frame(DATA, b"one") + h.single(b"two") + frame(DATA, b"three") + h.batch([b"four"]))
        self.assertEqual(h.events.events, [])
        h.conn.release(h.observers.deliverer(h.peer))
        got = [(name, args[1]) for name, args in h.events.events]
        self.assertEqual(got, [("new_message", b"one"), ("new_signed_message", b"two"),
                               ("new_message", b"three"), ("new_signed_message", b"four")])

    def test_a_bad_held_frame_closes_the_connection_it_came_on(self):
        h = Harness(self)
        h.conn.hold()
        signed = h.single(b"x")
        h.conn.dataReceived(signed + signed + frame(DATA, b"after"))
        h.conn.release(h.observers.deliverer(h.peer))
        self.assertEqual([args[1] for _, args in h.events.events], [b"x"])
        self.assertIn("replayed", h.conn._close_reason)

    def test_last_sequence_numbers_of_at_most_max_peers_are_kept(self):
        self.patch(signing_module, "MAX_PEERS", 2)
        h = Harness(self)
        for n in range(3):
            h.signing._received_up_to(Identity.generate().peer_id, 1, n)
        self.assertEqual(len(h.signing._received), 2)


class HostileFrameTests(SynchronousTestCase):
    """Whatever a peer puts in a signed frame: a protocol-error close, or a checked message."""

    @examples(200)
    @given(st.sampled_from([SIGNED_FRAME, SIGNED_BATCH_FRAME]), st.binary(max_size=300))
    def test_random_bodies(self, ftype, body):
        h = Harness(self)
        h.conn.dataReceived(frame(ftype, body))  # raises nothing
        if h.conn.closing:
            self.assertIn("protocol-error", h.conn._close_reason)
        self.assertEqual(h.signed_received(), [])  # nobody can sign for the peer by chance

    @examples(200)
    @given(st.integers(0, 10_000), st.binary(min_size=1, max_size=4), st.booleans())
    def test_mutated_good_frames(self, where, junk, batch):
        h = Harness(self)
        good = h.batch([b"one", b"two"]) if batch else h.single(b"one")
        where = 5 + where % (len(good) - 5)  # the body, not the frame header
        mutated = good[:where] + junk + good[where + len(junk):]
        mutated = mutated[:len(good)]
        h.conn.dataReceived(mutated)
        if mutated != good:
            self.assertEqual(h.signed_received(), [])
            self.assertIn("protocol-error", h.conn._close_reason)


class ObserverTests(SynchronousTestCase):
    """A signed message reaches each observer once: with its proof if it wants it, else as a message."""

    def test_each_kind_of_observer(self):
        seen = []

        class Plain(CrustObserver):
            def new_message(self, peer_id, data):
                seen.append(("plain", data))

        class WantsProofs(CrustObserver):
            def new_message(self, peer_id, data):
                seen.append(("wants-proofs/message", data))

            def new_signed_message(self, peer_id, data, proof):
                seen.append(("wants-proofs/signed", data))

        class DuckTyped:
            def new_message(self, peer_id, data):
                seen.append(("duck", data))

        class Failing(CrustObserver):
            def new_signed_message(self, peer_id, data, proof):
                raise RuntimeError("observer bug")

        observers = Observers()
        for observer in (Plain(), Failing(), WantsProofs(), DuckTyped()):
            observers.add(observer)
        observers.deliver_signed("peer", b"x", object())
        self.assertEqual(seen, [("plain", b"x"), ("wants-proofs/signed", b"x"), ("duck", b"x")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
