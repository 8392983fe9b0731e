import os
import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.errors import ProtocolViolation
from crust.session.framing import FrameDecoder, FrameTooLarge
from crust.wire import DATA, HEADER_SIZE, FrameType, frame

from tests import examples
from tests.mutate import chunks, cuts, mutated


class Collector:
    def __init__(self, limit=1000):
        self.frames = []
        self.decoder = FrameDecoder(limit, self.data, self.control)

    def data(self, payload):
        self.frames.append((DATA, payload))

    def control(self, ftype, payload):
        self.frames.append((ftype, payload))


class FrameDecoderTests(SynchronousTestCase):
    def test_byte_by_byte(self):
        c = Collector()
        stream = frame(DATA, b"hello") + frame(FrameType.HEARTBEAT) + frame(DATA, b"") + frame(DATA, b"x" * 999)
        for i in range(len(stream)):
            c.decoder.feed(stream[i : i + 1])
        self.assertEqual(c.frames, [(DATA, b"hello"), (FrameType.HEARTBEAT, b""), (DATA, b""), (DATA, b"x" * 999)])
        self.assertEqual(c.decoder.buffered, 0)
        self.assertEqual((c.decoder.data_frames, c.decoder.data_bytes), (3, 5 + 999))  # control frames not counted

    def test_many_in_one_chunk(self):
        c = Collector()
        c.decoder.feed(b"".join(frame(DATA, b"%d" % i) for i in range(500)))
        self.assertEqual([p for _, p in c.frames], [b"%d" % i for i in range(500)])

    def test_oversize_rejected_from_header_alone(self):
        c = Collector(limit=1000)
        header = struct.pack("!IB", 1002, DATA)
        e = self.assertRaises(FrameTooLarge, c.decoder.feed, header)
        self.assertEqual(e.size, 1001)
        self.assertIn("over the limit of 1000", str(e))

    def test_exactly_the_limit_is_fine(self):
        c = Collector(limit=1000)
        c.decoder.feed(frame(DATA, b"y" * 1000))
        self.assertEqual(len(c.frames[0][1]), 1000)

    def test_zero_length_frame_is_a_violation(self):
        c = Collector()
        self.assertRaises(ProtocolViolation, c.decoder.feed, b"\x00\x00\x00\x00\x04")

    def test_garbage(self):
        c = Collector(limit=1000)
        self.assertRaises(ProtocolViolation, c.decoder.feed, b"GET / HTTP/1.1\r\n\r\n")

    def test_large_frame_in_small_chunks(self):
        c = Collector(limit=4 * 1024 * 1024)
        payload = os.urandom(3 * 1024 * 1024)
        stream = frame(DATA, payload) + frame(DATA, b"after")
        for i in range(0, len(stream), 1000):
            c.decoder.feed(stream[i : i + 1000])
        self.assertEqual(c.frames, [(DATA, payload), (DATA, b"after")])
        self.assertEqual((c.decoder.data_frames, c.decoder.data_bytes), (2, len(payload) + 5))

    def test_handler_swap_takes_effect_mid_chunk(self):
        got = []
        decoder = FrameDecoder(100, lambda p: got.append(("first", p)), None)

        def control(ftype, payload):
            decoder.set_handlers(lambda p: got.append(("second", p)), control)

        decoder.set_handlers(lambda p: got.append(("first", p)), control)
        decoder.feed(frame(DATA, b"a") + frame(FrameType.CHOOSE) + frame(DATA, b"b"))
        self.assertEqual(got, [("first", b"a"), ("second", b"b")])

    def test_stop_in_a_handler_ends_the_chunk(self):
        got = []
        decoder = FrameDecoder(100, got.append, lambda ftype, payload: decoder.stop())
        decoder.feed(frame(DATA, b"a") + frame(FrameType.CLOSE) + frame(DATA, b"b") + b"\x00\x00")
        decoder.feed(frame(DATA, b"c"))
        self.assertEqual(got, [b"a"])
        self.assertEqual(decoder.buffered, 0)


_LIMIT = 64
_frames = st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=_LIMIT)), max_size=8)
_streams = _frames.map(lambda fs: b"".join(frame(t, p) for t, p in fs))


class FrameDecoderPropertyTests(SynchronousTestCase):
    """Any stream, cut anywhere: frames, or L{ProtocolViolation}; never more buffered than one frame."""

    def feed_all(self, collector, stream, where):
        """Feed C{stream} in the chunks C{where} cuts: True if it was refused (then nothing more is fed)."""
        decoder = collector.decoder
        for chunk in chunks(stream, where):
            try:
                decoder.feed(chunk)
            except ProtocolViolation:
                return True
            # at most one incomplete frame is held, however the stream is cut
            self.assertLess(decoder.buffered, HEADER_SIZE + _LIMIT)
        return False

    @examples(300)
    @given(_frames, cuts)
    def test_valid_streams_decode_however_cut(self, frames, where):
        c = Collector(limit=_LIMIT)
        stream = b"".join(frame(t, p) for t, p in frames)
        self.assertFalse(self.feed_all(c, stream, where))
        self.assertEqual(c.frames, frames)
        self.assertEqual(c.decoder.buffered, 0)

    @examples(500)
    @given(st.one_of(mutated(_streams), st.binary(max_size=400)), cuts)
    def test_mutated_streams(self, stream, where):
        c = Collector(limit=_LIMIT)
        refused = self.feed_all(c, stream, where)
        for ftype, payload in c.frames:
            self.assertLessEqual(len(payload), _LIMIT)
        if not refused:
            # what was not decoded is the start of one frame, still incomplete
            self.assertEqual(sum(4 + 1 + len(p) for _, p in c.frames) + c.decoder.buffered, len(stream))

    @examples(100)
    @given(st.integers(_LIMIT + 2, 2**32 - 1), st.binary(min_size=1, max_size=20))
    def test_oversize_header_refused_before_the_payload(self, length, rest):
        c = Collector(limit=_LIMIT)
        e = self.assertRaises(FrameTooLarge, c.decoder.feed, struct.pack("!I", length) + rest)
        self.assertEqual(e.size, length - 1)


class ChannelFrameTests(SynchronousTestCase):
    """Frames of a type with a channel handler: a u32 channel id and data, split by the decoder."""

    def test_channel_frames_split_others_unchanged(self):
        c = Collector(limit=100_000)
        channel = []
        c.decoder.set_channel_handler(30, lambda ch, data: channel.append((ch, data)))
        stream = (frame(30, struct.pack("!I", 7) + b"seven") + frame(DATA, b"message")
                  + frame(30, struct.pack("!I", 0x80000001) + b"y" * 70_000) + frame(31, b"other")
                  + frame(30, b"\x00\x01"))  # too short for a channel id: the control handler decides
        for i in range(0, len(stream), 1000):
            c.decoder.feed(stream[i:i + 1000])
        self.assertEqual(channel, [(7, b"seven"), (0x80000001, b"y" * 70_000)])
        self.assertEqual(c.frames, [(DATA, b"message"), (31, b"other"), (30, b"\x00\x01")])

    def test_removing_the_handler(self):
        c = Collector()
        c.decoder.set_channel_handler(30, lambda ch, data: self.fail("removed"))
        c.decoder.set_channel_handler(30, None)
        c.decoder.feed(frame(30, b"\x00\x00\x00\x01data"))
        self.assertEqual(c.frames, [(30, b"\x00\x00\x00\x01data")])

    @examples(200)
    @given(st.lists(st.tuples(st.sampled_from([DATA, 30, 31]), st.binary(max_size=300)), max_size=20),
           st.integers(1, 64))
    def test_any_chunking(self, items, step):
        c = Collector()
        channel = []
        c.decoder.set_channel_handler(30, lambda ch, data: channel.append((30, struct.pack("!I", ch) + data)))
        stream = b"".join(frame(t, p) for t, p in items)
        for i in range(0, len(stream), step):
            c.decoder.feed(stream[i:i + step])
        expected_channel = [(t, p) for t, p in items if t == 30 and len(p) >= 4]
        self.assertEqual(channel, expected_channel)
        self.assertEqual(c.frames, [(t, p) for t, p in items if not (t == 30 and len(p) >= 4)])
