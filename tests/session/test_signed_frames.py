"""The frames of signed messages: layout, round trips, and that bad input yields the module's own error only."""

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.errors import ProtocolViolation
from crust.session.signed_frames import (
    BATCH_HEAD,
    ENTRY_HEAD,
    OVERHEAD,
    SINGLE_HEAD,
    SignedFrameError,
    batch_size,
    decode_batch,
    decode_single,
    encode_batch,
    encode_single_head,
)
from crust.signed import MAX_BATCH

from tests import examples

SIG = bytes(range(64))


class LayoutTests(SynchronousTestCase):
    def test_single(self):
        body = encode_single_head(3, 0x0102030405060708, SIG) + b"payload"
        self.assertEqual(body[:9], b"\x03\x01\x02\x03\x04\x05\x06\x07\x08")
        self.assertEqual(body[9:73], SIG)
        self.assertEqual(decode_single(body), (3, 0x0102030405060708, SIG, b"payload"))
        self.assertEqual(decode_single(encode_single_head(0, 0, SIG)), (0, 0, SIG, b""))

    def test_batch(self):
        entries = [(5, b"a"), (9, b""), (1 << 63, b"ccc")]
        body = encode_batch(200, SIG, entries)
        self.assertEqual(body[:3], b"\xc8\x00\x03")
        self.assertEqual(body[3:67], SIG)
        self.assertEqual(body[67:79], struct.pack("!QI", 5, 1))
        self.assertEqual(len(body), batch_size([1, 0, 3]))
        self.assertEqual(decode_batch(body), (200, SIG, entries))

    def test_overhead_covers_a_message_alone_in_either_frame(self):
        self.assertLessEqual(SINGLE_HEAD, OVERHEAD)
        self.assertLessEqual(BATCH_HEAD + ENTRY_HEAD, OVERHEAD)

    def test_refusals(self):
        ok = encode_batch(1, SIG, [(1, b"ab"), (2, b"c")])
        cases = [
            (b"", "under its 67-byte head"),
            (ok[:-1], "runs past the frame"),
            (ok + b"x", "1 bytes after its last message"),
            (ok[:2] + b"\x00" + ok[3:], "of 0 messages"),
            (encode_batch(1, SIG, [(2, b"ab"), (2, b"c")]), "do not increase (2 after 2)"),
            (encode_batch(1, SIG, [(3, b"ab"), (2, b"c")]), "do not increase"),
            (ok[:1] + struct.pack("!H", MAX_BATCH + 1) + ok[3:], f"of {MAX_BATCH + 1} messages"),
            (ok[:1] + struct.pack("!H", 3) + ok[3:], "3 messages in"),
        ]
        for body, words in cases:
            with self.assertRaises(SignedFrameError, msg=words) as e:
                decode_batch(body)
            self.assertIn(words, str(e.exception))
            self.assertIsInstance(e.exception, ProtocolViolation)
        with self.assertRaises(SignedFrameError) as e:
            decode_single(b"\x00" * 72)
        self.assertIn("under its 73-byte head", str(e.exception))
        self.assertRaises(ValueError, encode_batch, 1, SIG, [])
        self.assertRaises(ValueError, encode_batch, 1, SIG, [(i, b"") for i in range(MAX_BATCH + 1)])


_ENTRIES = st.lists(st.tuples(st.integers(0, 1000), st.binary(max_size=20)), min_size=1, max_size=8)


class ParserPropertyTests(SynchronousTestCase):
    @examples(500)
    @given(st.binary(max_size=300))
    def test_random_bytes(self, body):
        for decode in (decode_single, decode_batch):
            try:
                decode(body)
            except SignedFrameError:
                pass

    @examples(300)
    @given(_ENTRIES, st.integers(0, 255))
    def test_round_trip(self, entries, priority):
        seqs = sorted({seq for seq, _ in entries})
        entries = list(zip(seqs, [payload for _, payload in entries]))
        self.assertEqual(decode_batch(encode_batch(priority, SIG, entries)), (priority, SIG, entries))

    @examples(500)
    @given(_ENTRIES, st.integers(0, 10_000), st.binary(min_size=1, max_size=6), st.booleans())
    def test_mutated_batches(self, entries, where, junk, insert):
        seqs = sorted({seq for seq, _ in entries})
        body = encode_batch(1, SIG, list(zip(seqs, [p for _, p in entries])))
        where %= len(body)
        mutated = body[:where] + junk + body[where + (0 if insert else len(junk)):]
        try:
            priority, signature, got = decode_batch(mutated)
        except SignedFrameError:
            return
        # what parses is consistent: the lengths add up, the numbers increase
        self.assertEqual(batch_size([len(p) for _, p in got]), len(mutated))
        self.assertEqual([s for s, _ in got], sorted({s for s, _ in got}))
        self.assertTrue(1 <= len(got) <= MAX_BATCH)
