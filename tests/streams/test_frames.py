"""Tests for L{crust.streams.frames}: the stream frames and QUIC stream headers, their encoders and parsers."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.errors import ProtocolViolation
from crust.session.framing import FrameDecoder
from crust.streams import frames as f
from crust.streams.frames import MAX_CHUNK, MAX_WINDOW, StreamFrame, StreamFrameError, StreamOpen, StreamReset

from tests import examples
from tests.mutate import valid_or_mutated

DECODERS = [f.decode_open, f.decode_accept, f.decode_data, f.decode_credit, f.decode_fin, f.decode_reset]
u32 = st.integers(0, 2**32 - 1)
names = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp", "Cn", "Co", "Cf")),
                min_size=1, max_size=60).filter(lambda n: f._name_problem(n) == "")


def split(data: bytes) -> tuple[int, bytes]:
    """The type and payload of one encoded frame (checking its length)."""
    length, ftype = struct.unpack("!IB", data[:5])
    assert length == len(data) - 4
    return ftype, data[5:]


class FrameTests(SynchronousTestCase):
    def test_types(self) -> None:
        self.assertEqual([int(t) for t in StreamFrame], list(range(32, 38)))

    def test_round_trips(self) -> None:
        ftype, payload = split(f.encode_open(0x80000001, 1 << 20, "web"))
        self.assertEqual((ftype, f.decode_open(payload)), (StreamFrame.OPEN, StreamOpen(0x80000001, 1 << 20, "web")))
        ftype, payload = split(f.encode_accept(7, 65536))
        self.assertEqual((ftype, f.decode_accept(payload)), (StreamFrame.ACCEPT, (7, 65536)))
        ftype, payload = split(f.encode_data(9, b"hello"))
        self.assertEqual((ftype, f.decode_data(payload)), (StreamFrame.DATA, (9, b"hello")))
        self.assertEqual(f.data_stream(payload), 9)
        ftype, payload = split(f.encode_credit(9, 4096))
        self.assertEqual((ftype, f.decode_credit(payload)), (StreamFrame.CREDIT, (9, 4096)))
        ftype, payload = split(f.encode_fin(3))
        self.assertEqual((ftype, f.decode_fin(payload)), (StreamFrame.FIN, 3))
        ftype, payload = split(f.encode_reset(3, "refused", "nobody listens for service 'x' here"))
        self.assertEqual((ftype, f.decode_reset(payload)),
                         (StreamFrame.RESET, StreamReset(3, "refused", "nobody listens for service 'x' here")))

    def test_data_header_matches_encode_data(self) -> None:
        self.assertEqual(f.data_header(5, 3) + b"abc", f.encode_data(5, b"abc"))

    def test_encoders_refuse_bad_values(self) -> None:
        for bad in (lambda: f.encode_open(1, 0, "x"), lambda: f.encode_open(1, MAX_WINDOW + 1, "x"),
                    lambda: f.encode_open(-1, 10, "x"), lambda: f.encode_open(2**32, 10, "x"),
                    lambda: f.encode_open(1, 10, ""), lambda: f.encode_open(1, 10, "a b"),
                    lambda: f.encode_open(1, 10, "é" * 128), lambda: f.encode_data(1, b""),
                    lambda: f.encode_data(1, b"x" * (MAX_CHUNK + 1)), lambda: f.encode_credit(1, 0),
                    lambda: f.encode_reset(1, ""), lambda: f.encode_reset(1, "x" * 65),
                    lambda: f.encode_reset(1, "naïve"), lambda: f.encode_quic_open("a\nb")):
            self.assertRaises(ValueError, bad)

    def test_reset_detail_is_cut_on_a_character_boundary(self) -> None:
        _, payload = split(f.encode_reset(1, "aborted", "é" * 400))
        reset = f.decode_reset(payload)
        self.assertLessEqual(len(reset.detail.encode("utf-8")), f.MAX_DETAIL)
        self.assertEqual(reset.detail, "é" * 256)

    def test_malformed_frames(self) -> None:
        cases = [
            (f.decode_open, b"\x00\x00\x00\x01\x00\x00\x00\x01"),  # no name
            (f.decode_open, b"\x00\x00\x00\x01\x00\x00\x00\x00web"),  # window 0
            (f.decode_open, b"\x00\x00\x00\x01\x00\x00\x00\x01\xff"),  # not UTF-8
            (f.decode_open, b"\x00\x00\x00\x01\x00\x00\x00\x01a b"),  # a space
            (f.decode_accept, b"\x00" * 7),
            (f.decode_accept, b"\x00" * 8),  # window 0
            (f.decode_data, b"\x00\x00\x00\x01"),  # no data
            (f.decode_data, b"\x00" * (5 + MAX_CHUNK)),
            (f.decode_credit, b"\x00" * 9),
            (f.decode_credit, b"\x00\x00\x00\x01\x40\x00\x00\x01"),  # over MAX_WINDOW
            (f.decode_fin, b"\x00" * 5),
            (f.decode_reset, b"\x00\x00\x00\x01\x00"),
            (f.decode_reset, b"\x00\x00\x00\x01\x05abc"),  # reason longer than the frame
            (f.decode_reset, b"\x00\x00\x00\x01\x01\x07"),  # a control character
            (f.decode_reset, b"\x00\x00\x00\x01\x01a\xff"),  # detail not UTF-8
            (f.decode_reset, b"\x00\x00\x00\x01\x01a" + b"d" * 513),
        ]
        for decode, payload in cases:
            self.assertRaises(StreamFrameError, decode, payload)

    def test_frame_error_is_a_protocol_violation(self) -> None:
        self.assertTrue(issubclass(StreamFrameError, ProtocolViolation))

    def test_id_halves(self) -> None:
        self.assertTrue(f.is_ours(0x80000001, True))
        self.assertFalse(f.is_ours(0x80000001, False))
        self.assertTrue(f.is_ours(1, False))

    def test_reset_codes(self) -> None:
        for reason in f.REASONS:
            self.assertEqual(f.reset_reason(f.reset_code(reason)), reason)
        self.assertEqual(f.reset_reason(999), "code-999")
        self.assertEqual(f.reset_code("something new"), f.reset_code(f.REASON_ABORTED))

    def test_service_names(self) -> None:
        self.assertEqual(f.check_service_name("web-1.example_x"), "web-1.example_x")
        self.assertEqual(f.check_service_name("é" * 127), "é" * 127)
        for bad in ("", " ", "a\tb", "x" * 256, "é" * 128, "\x00", 7, b"web"):
            self.assertRaises(ValueError, f.check_service_name, bad)


class QuicHeaderTests(SynchronousTestCase):
    def test_open_header(self) -> None:
        header = f.encode_quic_open("amp")
        self.assertEqual(header, b"\x03amp")
        self.assertEqual(f.parse_quic_open(header + b"rest"), ("amp", 4))
        for i in range(len(header)):
            self.assertIsNone(f.parse_quic_open(header[:i]))

    def test_answers(self) -> None:
        self.assertEqual(f.parse_quic_answer(f.ACCEPTED + b"data"), (True, 1))
        refusal = f.encode_quic_refusal("refused", "nobody listens for service 'x' here")
        self.assertEqual(f.parse_quic_answer(refusal + b"trailing"),
                         (StreamReset(0, "refused", "nobody listens for service 'x' here"), len(refusal)))
        for i in range(len(refusal)):
            self.assertIsNone(f.parse_quic_answer(refusal[:i]))

    def test_malformed_headers(self) -> None:
        self.assertRaises(StreamFrameError, f.parse_quic_open, b"\x00")
        self.assertRaises(StreamFrameError, f.parse_quic_open, b"\x02\xff\xfe")
        self.assertRaises(StreamFrameError, f.parse_quic_answer, b"\x02")
        self.assertRaises(StreamFrameError, f.parse_quic_answer, b"\x01\x00")
        self.assertRaises(StreamFrameError, f.parse_quic_answer, b"\x01\x41")
        self.assertRaises(StreamFrameError, f.parse_quic_answer, b"\x01\x01a\x02\x01")
        self.assertRaises(StreamFrameError, f.parse_quic_answer, b"\x01\x01a\x00\x01\xff")


_valid_payloads = st.one_of(
    st.builds(lambda sid, window, name: f.encode_open(sid, window, name)[5:], u32, st.integers(1, MAX_WINDOW),
              st.sampled_from(["web", "amp", "é" * 10])),
    st.builds(lambda sid, window: f.encode_accept(sid, window)[5:], u32, st.integers(1, MAX_WINDOW)),
    st.builds(lambda sid, data: f.encode_data(sid, data)[5:], u32, st.binary(min_size=1, max_size=100)),
    st.builds(lambda sid, credit: f.encode_credit(sid, credit)[5:], u32, st.integers(1, MAX_WINDOW)),
    st.builds(lambda sid: f.encode_fin(sid)[5:], u32),
    st.builds(lambda sid, reason, detail: f.encode_reset(sid, reason, detail)[5:], u32,
              st.sampled_from(sorted(f.REASONS)), st.text(max_size=30)),
)
_valid_headers = st.one_of(
    st.builds(f.encode_quic_open, st.sampled_from(["web", "amp", "x" * 255])),
    st.just(f.ACCEPTED),
    st.builds(f.encode_quic_refusal, st.sampled_from(sorted(f.REASONS)), st.text(max_size=40)),
)


class PropertyTests(SynchronousTestCase):
    @examples(500)
    @given(st.sampled_from(DECODERS), valid_or_mutated(_valid_payloads, 600))
    def test_decoders_raise_only_frame_errors(self, decode, payload) -> None:
        try:
            decode(payload)
        except StreamFrameError:
            pass

    @examples(300)
    @given(valid_or_mutated(_valid_headers, 400))
    def test_quic_parsers_raise_only_frame_errors(self, data) -> None:
        for parse in (f.parse_quic_open, f.parse_quic_answer):
            try:
                result = parse(data)
            except StreamFrameError:
                continue
            if result is not None:
                self.assertLessEqual(result[1], len(data))  # a header never claims bytes it does not have

    @examples(200)
    @given(u32, st.integers(1, MAX_WINDOW), names)
    def test_open_round_trip(self, sid, window, name) -> None:
        ftype, payload = split(f.encode_open(sid, window, name))
        self.assertEqual(f.decode_open(payload), StreamOpen(sid, window, name))

    @examples(200)
    @given(u32, st.binary(min_size=1, max_size=2000), u32, st.integers(1, MAX_WINDOW))
    def test_binary_round_trips(self, sid, data, other, credit) -> None:
        self.assertEqual(f.decode_data(split(f.encode_data(sid, data))[1]), (sid, data))
        self.assertEqual(f.decode_credit(split(f.encode_credit(other, credit))[1]), (other, credit))
        self.assertEqual(f.decode_fin(split(f.encode_fin(other))[1]), other)

    @examples(200)
    @given(u32, st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=64),
           st.text(max_size=600))
    def test_reset_round_trip(self, sid, reason, detail) -> None:
        reset = f.decode_reset(split(f.encode_reset(sid, reason, detail))[1])
        self.assertEqual((reset.sid, reset.reason), (sid, reason))
        self.assertTrue(detail.startswith(reset.detail))

    @examples(100)
    @given(names, st.binary(max_size=50), st.integers(1, 8))
    def test_open_header_in_pieces(self, name, rest, step) -> None:
        data = f.encode_quic_open(name) + rest
        size = len(f.encode_quic_open(name))
        for i in range(0, len(data), step):
            parsed = f.parse_quic_open(data[:i])
            if i < size:
                self.assertIsNone(parsed)
            else:
                self.assertEqual(parsed, (name, size))

    @examples(100)
    @given(st.lists(st.tuples(st.sampled_from(list(StreamFrame)), st.binary(max_size=100)), max_size=20),
           st.integers(1, 50))
    def test_frames_through_the_connection_decoder(self, items, step) -> None:
        """Stream frames are ordinary control frames of the connection's framing."""
        got: list = []
        decoder = FrameDecoder(MAX_CHUNK + 4, lambda p: None, lambda t, p: got.append((t, p)))
        stream = b"".join(struct.pack("!IB", len(p) + 1, t) + p for t, p in items)
        for i in range(0, len(stream), step):
            decoder.feed(stream[i:i + step])
        self.assertEqual(got, [(int(t), p) for t, p in items])
