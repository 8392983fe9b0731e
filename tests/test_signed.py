"""Signed messages' proofs: what is signed, checking a proof with the sender's peer id alone, the exported form."""

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust import verify_signed as exported_verify_signed
from crust.errors import BadSignature, SignedMessageError
from crust.identity import Identity, PeerId
from crust.signed import (
    BATCH_CONTEXT,
    MAX_BATCH,
    MESSAGE_CONTEXT,
    SignedMessage,
    message_bytes,
    open_batch,
    open_message,
    sign_batch,
    sign_message,
    verify_signed,
)

ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
MALLORY = Identity.from_seed(b"m" * 32)


def signed_alone(payload=b"pay me 10", seq=7, priority=1, network="demo"):
    signature = sign_message(ALICE, network, BOB.peer_id, priority, seq, payload)
    proof = open_message(network, ALICE.peer_id, BOB.peer_id, priority, seq, payload, signature)
    assert proof is not None
    return proof


def signed_batch(n=5, priority=3, network="demo"):
    entries = [(100 + 3 * i, b"message %d" % i) for i in range(n)]
    signature = sign_batch(ALICE, network, BOB.peer_id, priority, entries)
    proofs = open_batch(network, ALICE.peer_id, BOB.peer_id, priority, entries, signature)
    assert proofs is not None
    return proofs


class ProofTests(SynchronousTestCase):
    def test_a_third_party_verifies_with_the_senders_peer_id_alone(self):
        text = signed_alone().to_json()
        # a third party: nothing but the text and, to be sure of the signer, the sender's peer id as text
        message = verify_signed(text, network_name="demo", expected_sender=str(ALICE.peer_id),
                                expected_recipient=str(BOB.peer_id))
        self.assertEqual((message.sender, message.recipient, message.network, message.priority, message.seq,
                          message.payload, message.kind),
                         (ALICE.peer_id, BOB.peer_id, "demo", 1, 7, b"pay me 10", "message"))
        self.assertIs(exported_verify_signed, verify_signed)

    def test_every_message_of_a_batch_verifies_alone(self):
        proofs = signed_batch(6)
        for i, proof in enumerate(proofs):
            self.assertEqual(proof.kind, "batch")
            self.assertEqual(len(proof.later), 5 - i)  # what comes after it; nothing of what came before
            got = verify_signed(proof.to_json(), expected_sender=ALICE.peer_id)
            self.assertEqual((got.seq, got.payload), (100 + 3 * i, b"message %d" % i))
        self.assertEqual(len({p.signature for p in proofs}), 1)  # one signature for the batch

    def test_changing_any_field_breaks_the_signature(self):
        for proof in [signed_alone(), *signed_batch(3)]:
            changes = {
                "payload": proof.payload + b"0",
                "sender": MALLORY.peer_id,
                "recipient": MALLORY.peer_id,
                "seq": proof.seq + 1,
                "network": "other",
                "priority": proof.priority ^ 1,
                "signature": bytes([proof.signature[0] ^ 1]) + proof.signature[1:],
            }
            if proof.kind == "batch":
                changes["link"] = bytes(32)
                changes["later"] = proof.later + (bytes(32),)
            for field, value in changes.items():
                forged = dataclasses.replace(proof, **{field: value})
                self.assertFalse(forged.is_valid(), field)
                with self.assertRaises(BadSignature, msg=field):
                    verify_signed(forged)
                with self.assertRaises(BadSignature, msg=field):
                    verify_signed(forged.to_json())  # and through the exported form

    def test_tampered_exported_text_fails(self):
        body = json.loads(signed_alone().to_json())
        body["payload"] = "cGF5IG1lIDEwMA=="  # "pay me 100"
        with self.assertRaises(BadSignature) as e:
            verify_signed(json.dumps(body))
        self.assertIn("does not hold", str(e.exception))

    def test_another_key_cannot_sign_for_the_sender(self):
        signature = sign_message(MALLORY, "demo", BOB.peer_id, 1, 7, b"x")
        self.assertIsNone(open_message("demo", ALICE.peer_id, BOB.peer_id, 1, 7, b"x", signature))
        entries = [(1, b"x")]
        signature = sign_batch(MALLORY, "demo", BOB.peer_id, 1, entries)
        self.assertIsNone(open_batch("demo", ALICE.peer_id, BOB.peer_id, 1, entries, signature))

    def test_expectations(self):
        text = signed_alone().to_json()
        for kwargs, words in [({"network_name": "other"}, "network 'demo', not 'other'"),
                              ({"expected_sender": BOB.peer_id}, "signed by"),
                              ({"expected_recipient": str(ALICE.peer_id)}, "signed for"),
                              ({"expected_sender": "not a peer"}, "not a peer id")]:
            with self.assertRaises(SignedMessageError) as e:
                verify_signed(text, **kwargs)
            self.assertNotIsInstance(e.exception, BadSignature)
            self.assertIn(words, str(e.exception))
        self.assertEqual(verify_signed(text, network_name="demo").seq, 7)

    def test_a_message_signature_is_not_a_batch_signature(self):
        # the same message signed alone and as a batch of one: different bytes, so neither passes as the other
        alone = signed_alone(seq=1)
        [batched] = open_batch("demo", ALICE.peer_id, BOB.peer_id, 1, [(1, alone.payload)],
                               sign_batch(ALICE, "demo", BOB.peer_id, 1, [(1, alone.payload)]))
        self.assertFalse(dataclasses.replace(batched, signature=alone.signature).is_valid())
        self.assertFalse(dataclasses.replace(alone, signature=batched.signature).is_valid())
        self.assertTrue(alone.signed_bytes().startswith(MESSAGE_CONTEXT))
        self.assertTrue(batched.signed_bytes().startswith(BATCH_CONTEXT))

    def test_unnamed_network(self):
        proof = signed_alone(network="")
        self.assertEqual(verify_signed(proof.to_json(), network_name="").network, "")

    def test_describe(self):
        self.assertIn(f"{ALICE.peer_id} signed 9 bytes for {BOB.peer_id}", signed_alone().describe())
        self.assertIn("sequence number 7", signed_alone().describe())


def _tuples():
    return st.tuples(st.text(max_size=8), st.sampled_from([ALICE.peer_id, BOB.peer_id]),
                     st.sampled_from([ALICE.peer_id, BOB.peer_id]), st.integers(0, 255),
                     st.integers(0, (1 << 64) - 1), st.binary(max_size=16))


class DomainSeparationTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(_tuples(), _tuples())
    def test_different_tuples_sign_different_bytes(self, one, two):
        if one != two:
            self.assertNotEqual(message_bytes(*one), message_bytes(*two))

    def test_moving_bytes_between_fields_changes_what_is_signed(self):
        # without length prefixes these two would be "ab" + "c" and "a" + "bc"
        self.assertNotEqual(message_bytes("ab", ALICE.peer_id, BOB.peer_id, 1, 1, b"c"),
                            message_bytes("a", ALICE.peer_id, BOB.peer_id, 1, 1, b"bc"))


class ExportedFormTests(SynchronousTestCase):
    def test_round_trip(self):
        for proof in [signed_alone(), *signed_batch(4)]:
            text = proof.to_json()
            self.assertNotIn("\n", text)
            self.assertEqual(SignedMessage.from_json(text), proof)
            self.assertEqual(SignedMessage.from_json(text.encode("utf-8")), proof)
            self.assertEqual(json.loads(text), proof.to_dict())

    def test_the_form(self):
        body = signed_batch(2)[0].to_dict()
        self.assertEqual(sorted(body), ["crust-signed", "kind", "later", "link", "network", "payload", "priority",
                                        "recipient", "sender", "seq", "signature"])
        self.assertEqual((body["crust-signed"], body["kind"], body["sender"]), (1, "batch", str(ALICE.peer_id)))

    def test_refusals(self):
        good = signed_batch(2)[0].to_dict()
        cases = [
            ({"crust-signed": 2}, "format 1"),
            ({"crust-signed": True}, "format 1"),
            ({"kind": "letter"}, "unknown kind"),
            ({"extra": "unsigned words"}, "unknown key 'extra'"),
            ({"sender": "abc"}, "\"sender\" is not a peer id"),
            ({"priority": 256}, "\"priority\" is not an integer"),
            ({"priority": True}, "\"priority\" is not an integer"),
            ({"seq": -1}, "\"seq\" is not an integer"),
            ({"seq": 1 << 64}, "\"seq\" is not an integer"),
            ({"payload": "not base64!"}, "not valid base64"),
            ({"payload": 5}, "not base64 text"),
            ({"signature": "AAAA"}, "is 3 bytes, not 64"),
            ({"link": "AAAA"}, "is 3 bytes, not 32"),
            ({"later": "AAAA"}, "\"later\" is not a list"),
            ({"later": ["AAAA"] * MAX_BATCH}, "\"later\" is not a list"),
            ({"network": 5}, "the network is not text"),
        ]
        for change, words in cases:
            with self.assertRaises(SignedMessageError, msg=change) as e:
                SignedMessage.from_json(json.dumps({**good, **change}))
            self.assertIn(words, str(e.exception))
        alone = signed_alone().to_dict()
        with self.assertRaises(SignedMessageError) as e:
            SignedMessage.from_json(json.dumps({**alone, "link": good["link"]}))  # a message's proof has no link
        self.assertIn("unknown key 'link'", str(e.exception))
        for bad in ["", "[]", "{", '{"crust-signed": 1', "\xff", b"\xff\xfe", "1e999", '{"a": NaN}']:
            self.assertRaises(SignedMessageError, SignedMessage.from_json, bad)
        self.assertRaises(SignedMessageError, SignedMessage.from_json, json.dumps(good), max_size=10)


_VALID = [signed_alone().to_json(), signed_batch(3)[1].to_json()]
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                  max_size=4),
                     max_leaves=12)


class ImporterPropertyTests(SynchronousTestCase):
    """Whatever the text, the importer and the verifier raise their own error or give a proof."""

    def check(self, data):
        try:
            proof = verify_signed(data)
        except SignedMessageError:
            return
        self.assertIsInstance(proof, SignedMessage)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400) | st.text(max_size=400))
    def test_random_input(self, data):
        self.check(data)

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(_VALID), st.integers(0, 2000), st.binary(min_size=1, max_size=4))
    def test_mutated_proofs(self, text, where, junk):
        raw = text.encode("utf-8")
        where %= len(raw)
        self.check(raw[:where] + junk + raw[where + len(junk):])

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(_VALID), st.sampled_from(sorted(SignedMessage.__dataclass_fields__) + ["crust-signed",
                                                                                                    "kind", "later"]),
           _JSON)
    def test_fields_of_any_json_value(self, text, key, value):
        body = json.loads(text)
        body[key] = value
        self.check(json.dumps(body))

    def test_is_valid_never_raises_on_odd_fields(self):
        proof = signed_alone()
        for change in ({"priority": 300}, {"seq": -1}, {"network": "x" * 70000}, {"signature": b"short"},
                       {"link": b"short"}):
            self.assertFalse(dataclasses.replace(proof, **change).is_valid(), change)


class PeerIdTests(SynchronousTestCase):
    def test_proofs_name_peer_ids_in_their_text_form(self):
        body = signed_alone().to_dict()
        self.assertEqual(PeerId.from_text(body["sender"]), ALICE.peer_id)
