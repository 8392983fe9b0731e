"""Signed messages between two services on 127.0.0.1, over TCP and over QUIC, with real sockets and TLS."""

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from crust import SignedMessage, verify_signed
from crust.errors import BadSignature
from crust.session.signed_frames import SIGNED_FRAME, encode_single_head
from crust.wire import frame

from tests.util import connect_pair, make_service, wait_for

TRANSPORTS = {"tcp": {}, "quic": {"enable_tcp": False}}


def received(service):
    """What the service's observer got, in order: ("plain" or the proof's kind, data)."""
    out = []
    for name, args in service.events.events:
        if name == "new_message":
            out.append(("plain", args[1]))
        elif name == "new_signed_message":
            out.append((args[2].kind, args[1]))
    return out


class RoundTripTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def check_round_trip(self, transport):
        options = TRANSPORTS[transport]
        a = make_service(self, network_name="ledger", **options)
        b = make_service(self, network_name="ledger", **options)
        peer = yield connect_pair(self, a, b)
        self.assertEqual(a.peers.active[peer].transport_name, "tcp" if transport == "tcp" else "udp")
        expected = []
        for priority in (1, 3):  # on QUIC: the urgent lane, and the bulk lane
            a.send(peer, b"plain %d" % priority, priority)
            a.send(peer, b"alone %d" % priority, priority, signed=True)
            for i in range(5):
                a.send(peer, b"batched %d/%d" % (priority, i), priority, signed="batch")
            a.send(peer, b"after %d" % priority, priority)  # the open batch of its priority goes first
            expected.append([("plain", b"plain %d" % priority), ("message", b"alone %d" % priority)]
                            + [("batch", b"batched %d/%d" % (priority, i)) for i in range(5)]
                            + [("plain", b"after %d" % priority)])
        yield wait_for(lambda: len(received(b)) >= 16)
        got = received(b)
        for priority, want in zip((1, 3), expected):  # the order within each priority
            self.assertEqual([m for m in got if m[1].split(b" ")[-1].startswith(b"%d" % priority)], want)
        proofs = [args[2] for name, args in b.events.events if name == "new_signed_message"]
        self.assertEqual(len(proofs), 12)
        self.assertEqual(len({p.signature for p in proofs if p.kind == "batch"}), 2)  # one per batch
        seqs = [p.seq for p in proofs]
        self.assertEqual(len(set(seqs)), len(seqs))
        # a third party: the exported text and the sender's peer id, nothing else
        for proof in proofs:
            text = proof.to_json()
            checked = verify_signed(text, network_name="ledger", expected_sender=str(a.peer_id),
                                    expected_recipient=str(b.peer_id))
            self.assertEqual(checked.payload, proof.payload)
            forged = text.replace(str(b.peer_id), str(a.peer_id))  # "it was for someone else"
            self.assertRaises(BadSignature, verify_signed, forged)
        self.assertEqual(b.events.named("lost_peer"), [])

    def test_round_trip_tcp(self):
        return self.check_round_trip("tcp")

    def test_round_trip_quic(self):
        return self.check_round_trip("quic")

    @defer.inlineCallbacks
    def test_signed_messages_count_in_the_metrics(self):
        a, b = make_service(self), make_service(self)
        peer = yield connect_pair(self, a, b)
        a.send(peer, b"plain", 1)
        a.send(peer, b"alone", 1, signed=True)
        for _ in range(3):
            a.send(peer, b"in a batch", 1, signed="batch")
        yield wait_for(lambda: len(received(b)) == 5)
        sent = a.metrics.registry.get_sample_value
        got = b.metrics.registry.get_sample_value
        self.assertEqual(sent("crust_messages_sent_total", {"priority": "1"}), 5)
        self.assertEqual(sent("crust_message_bytes_sent_total", {"priority": "1"}), 40)
        self.assertEqual(got("crust_messages_received_total"), 5)
        self.assertEqual(got("crust_message_bytes_received_total"), 40)

    @defer.inlineCallbacks
    def test_an_open_batch_goes_out_before_the_service_stops(self):
        a, b = make_service(self), make_service(self, signed_batch_window=1.0)
        yield connect_pair(self, a, b)
        b.send(a.peer_id, b"last words", 0, signed="batch")
        self.assertEqual(b.queued_bytes(a.peer_id), len(b"last words"))  # waiting in its batch
        yield b.stopService()
        yield wait_for(lambda: received(a))
        self.assertEqual(received(a), [("batch", b"last words")])


class ReplayTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_replayed_signed_frame_is_refused(self):
        a, b = make_service(self), make_service(self)
        peer = yield connect_pair(self, a, b)
        a.send(peer, b"pay 10", 1, signed=True)
        yield wait_for(lambda: b.events.named("new_signed_message"))
        [(_, _, proof)] = b.events.named("new_signed_message")
        # the same frame, byte for byte, again on the wire
        again = frame(SIGNED_FRAME, encode_single_head(proof.priority, proof.seq, proof.signature) + proof.payload)
        a.peers.active[peer].transport.write(again)
        yield wait_for(lambda: b.events.named("lost_peer") and a.events.named("lost_peer"))
        self.assertEqual(len(b.events.named("new_signed_message")), 1)  # delivered once
        [(_, reason)] = b.events.named("lost_peer")
        self.assertIn("protocol-error", reason)
        self.assertIn(f"replayed or out of order: sequence number {proof.seq} after {proof.seq}", reason)
        [(_, reason)] = a.events.named("lost_peer")
        self.assertIn("peer closed: protocol-error", reason)  # the sender is told why
        # the exported proof is still good: it proves what was sent once
        self.assertEqual(verify_signed(SignedMessage.from_json(proof.to_json())).payload, b"pay 10")
