"""Tests for L{crust.relay.messages}: the relay frames, their encoders and their decoders."""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.errors import ProtocolViolation
from crust.identity import Identity
from crust.relay import messages as m
from crust.relay.messages import (
    HIGH_BIT,
    MAX_CHUNK,
    MAX_WINDOW,
    MIN_WINDOW,
    CircuitLimits,
    RelayAccept,
    RelayClose,
    RelayFrame,
    RelayInvite,
    RelayOpen,
    RelayReady,
)
from crust.session.framing import FrameDecoder

from tests import examples

A = Identity.from_seed(bytes(range(32))).peer_id
T = Identity.from_seed(bytes(range(32, 64))).peer_id
LIMITS = CircuitLimits(256 * 1024 * 1024, 3600.0, 8 * 1024 * 1024, 1024 * 1024)
WINDOW = 256 * 1024

JSON_DECODERS = [m.decode_open, m.decode_invite, m.decode_accept, m.decode_ready, m.decode_close]
u32 = st.integers(0, 2**32 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=60),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
field_values = st.one_of(json_values, st.just(str(T)), u32, st.sampled_from(sorted(m.REASONS)),
                         st.fixed_dictionaries({"bytes": st.integers(-2, 10**12), "seconds": st.floats(),
                                                "rate": st.none() | st.integers(-1, 10**9)}))


def split(data: bytes) -> tuple[int, bytes]:
    """The type and payload of one encoded frame (checking its length)."""
    length, ftype = struct.unpack("!IB", data[:5])
    assert length == len(data) - 4
    return ftype, data[5:]


class FrameTests(SynchronousTestCase):
    def test_types(self) -> None:
        self.assertEqual([int(t) for t in RelayFrame], list(range(21, 28)))

    def test_round_trips(self) -> None:
        cases = [
            (m.encode_open(7, T), RelayOpen(7, T)),
            (m.encode_invite(HIGH_BIT | 9, A, WINDOW), RelayInvite(HIGH_BIT | 9, A, WINDOW)),
            (m.encode_accept(0), RelayAccept(0)),
            (m.encode_ready(2**32 - 1, LIMITS), RelayReady(2**32 - 1, LIMITS)),
            (m.encode_ready(3, CircuitLimits(1, 0.5, None, MIN_WINDOW)),
             RelayReady(3, CircuitLimits(1, 0.5, None, MIN_WINDOW))),
            (m.encode_close(5, m.REASON_BYTE_LIMIT, "256 MiB each way"),
             RelayClose(5, "byte-limit", "256 MiB each way")),
        ]
        for data, expected in cases:
            ftype, payload = split(data)
            self.assertEqual(m.decode_frame(ftype, payload), expected)

    def test_json_shape(self) -> None:
        """The wire text is what doc/protocol.md shows."""
        self.assertEqual(json.loads(split(m.encode_open(7, T))[1]), {"c": 7, "to": str(T)})
        self.assertEqual(json.loads(split(m.encode_invite(7, A, WINDOW))[1]),
                         {"c": 7, "from": str(A), "window": WINDOW})
        self.assertEqual(json.loads(split(m.encode_ready(1, LIMITS))[1]),
                         {"c": 1, "limits": {"bytes": 268435456, "seconds": 3600.0, "rate": 8388608,
                                             "window": 1048576}})
        self.assertEqual(json.loads(split(m.encode_close(1, "timeout", "x"))[1]),
                         {"c": 1, "reason": "timeout", "detail": "x"})

    def test_splice_fields(self) -> None:
        token = bytes(range(32))
        cases = [
            (m.encode_open(7, T, splice=True), RelayOpen(7, T, splice=True), {"c": 7, "to": str(T), "splice": True}),
            (m.encode_invite(9, A, WINDOW, splice=token), RelayInvite(9, A, WINDOW, splice=token),
             {"c": 9, "from": str(A), "window": WINDOW, "splice": token.hex()}),
            (m.encode_accept(3, splice=True), RelayAccept(3, splice=True), {"c": 3, "splice": True}),
            (m.encode_ready(1, LIMITS, splice=token), RelayReady(1, LIMITS, splice=token), None),
        ]
        for data, expected, body in cases:
            ftype, payload = split(data)
            self.assertEqual(m.decode_frame(ftype, payload), expected)
            if body is not None:
                self.assertEqual(json.loads(payload), body)
        self.assertEqual(json.loads(split(m.encode_ready(1, LIMITS, splice=token))[1])["splice"], token.hex())
        # absent: not asked, not offered (an older node's frames read the same)
        self.assertNotIn(b"splice", split(m.encode_open(7, T))[1] + split(m.encode_accept(7))[1])
        # malformed
        for decode, body in ((m.decode_open, {"c": 1, "to": str(T), "splice": 1}),
                             (m.decode_accept, {"c": 1, "splice": "yes"}),
                             (m.decode_invite, {"c": 1, "from": str(A), "window": WINDOW, "splice": "00"}),
                             (m.decode_invite, {"c": 1, "from": str(A), "window": WINDOW, "splice": True}),
                             (m.decode_ready, {"c": 1, "limits": {"bytes": 1, "seconds": 1.0, "rate": None,
                                                                  "window": WINDOW}, "splice": token.hex().upper()})):
            e = self.assertRaises(ProtocolViolation, decode, json.dumps(body).encode())
            self.assertIn("splice", str(e))

    def test_data_and_credit(self) -> None:
        data = m.encode_data(0x01020304, b"ciphertext")
        self.assertEqual(data, struct.pack("!IBI", 15, 25, 0x01020304) + b"ciphertext")
        ftype, payload = split(data)
        self.assertEqual(ftype, RelayFrame.DATA)
        self.assertEqual(m.decode_data(payload), (0x01020304, b"ciphertext"))
        self.assertEqual(m.data_circuit(payload), 0x01020304)
        credit = m.encode_credit(HIGH_BIT, MAX_WINDOW)
        self.assertEqual(split(credit), (RelayFrame.CREDIT, struct.pack("!II", HIGH_BIT, MAX_WINDOW)))
        self.assertEqual(m.decode_credit(split(credit)[1]), (HIGH_BIT, MAX_WINDOW))

    def test_rewrite_data(self) -> None:
        """The relay passes a DATA frame's bytes on as another circuit, unchanged."""
        _, payload = split(m.encode_data(1, b"\x00secret\xff" * 100))
        forwarded = m.rewrite_data(payload, 0x80000002)
        self.assertEqual(forwarded, m.encode_data(0x80000002, b"\x00secret\xff" * 100))

    def test_the_largest_data_frame_fits_a_node_frame_limit(self) -> None:
        frames: list[tuple[int, bytes]] = []
        decoder = FrameDecoder(m.MAX_DATA_FRAME - 5, lambda p: None, lambda t, p: frames.append((t, p)))
        decoder.feed(m.encode_data(1, b"x" * MAX_CHUNK))
        self.assertEqual(m.decode_data(frames[0][1]), (1, b"x" * MAX_CHUNK))

    def test_encoders_refuse_bad_values(self) -> None:
        for call in (lambda: m.encode_open(-1, T), lambda: m.encode_open(2**32, T), lambda: m.encode_open(True, T),
                     lambda: m.encode_data(1, b""), lambda: m.encode_data(1, b"x" * (MAX_CHUNK + 1)),
                     lambda: m.encode_credit(1, 0), lambda: m.encode_credit(1, MAX_WINDOW + 1),
                     lambda: m.encode_invite(1, T, MIN_WINDOW - 1), lambda: m.encode_invite(1, T, MAX_WINDOW + 1),
                     lambda: m.encode_ready(1, CircuitLimits(1, 1.0, None, MAX_WINDOW + 1)),
                     lambda: m.encode_close(1, ""), lambda: m.encode_close(1, "x" * 65),
                     lambda: m.encode_ready(1, CircuitLimits(0, 1.0, None, WINDOW)),
                     lambda: m.encode_ready(1, CircuitLimits(1, 0.0, None, WINDOW)),
                     lambda: m.encode_ready(1, CircuitLimits(1, float("inf"), None, WINDOW)),
                     lambda: m.encode_ready(1, CircuitLimits(1, 1.0, 0, WINDOW))):
            self.assertRaises(ValueError, call)
        self.assertRaises(TypeError, m.encode_open, 1, str(T))

    def test_close_keeps_a_newer_reason_and_cuts_the_detail(self) -> None:
        ftype, payload = split(m.encode_close(1, "some-new-reason", "d" * 2000))
        close = m.decode_close(payload)
        self.assertEqual((close.reason, len(close.detail)), ("some-new-reason", m.MAX_DETAIL))

    def test_id_space(self) -> None:
        big, small = max(A, T), min(A, T)
        self.assertEqual(m.id_space(big, small), HIGH_BIT)
        self.assertEqual(m.id_space(small, big), 0)
        self.assertTrue(m.picked_by(HIGH_BIT | 5, big, small))
        self.assertFalse(m.picked_by(5, big, small))
        self.assertTrue(m.picked_by(5, small, big))


class DecoderTests(SynchronousTestCase):
    def assert_refused(self, decoder: Any, body: Any, needle: str = "") -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self.assertRaises(ProtocolViolation) as cm:
            decoder(payload)
        self.assertIn(needle, str(cm.exception))

    def test_malformed(self) -> None:
        self.assert_refused(m.decode_open, {"c": 1}, "'to'")
        self.assert_refused(m.decode_open, {"c": -1, "to": str(T)}, "'c'")
        self.assert_refused(m.decode_open, {"c": 2**32, "to": str(T)}, "'c'")
        self.assert_refused(m.decode_open, {"c": True, "to": str(T)}, "'c'")
        self.assert_refused(m.decode_open, {"c": 1.0, "to": str(T)}, "'c'")
        self.assert_refused(m.decode_open, {"c": 1, "to": "not a peer"}, "bad peer id")
        self.assert_refused(m.decode_invite, {"c": 1, "to": str(T), "window": WINDOW}, "'from'")
        self.assert_refused(m.decode_invite, {"c": 1, "from": str(T)}, "'window'")
        self.assert_refused(m.decode_invite, {"c": 1, "from": str(T), "window": MIN_WINDOW - 1}, "'window'")
        self.assert_refused(m.decode_invite, {"c": 1, "from": str(T), "window": MAX_WINDOW + 1}, "'window'")
        self.assert_refused(m.decode_accept, [1], "not a JSON object")
        self.assert_refused(m.decode_accept, b"\xff", "UTF-8")
        self.assert_refused(m.decode_accept, b'{"c": 1, "c": 2}', "repeated")
        self.assert_refused(m.decode_accept, b'{"c": NaN}', "NaN")
        self.assert_refused(m.decode_accept, {"c": 1, "x": [1]}, "arrays and objects")
        self.assert_refused(m.decode_accept, {str(i): i for i in range(17)} | {"c": 1}, "keys")
        self.assert_refused(m.decode_accept, b" " * (m.MAX_FRAME_PAYLOAD + 1), "over")
        self.assert_refused(m.decode_close, {"c": 1, "reason": ""}, "reason")
        self.assert_refused(m.decode_close, {"c": 1, "reason": "x" * 65}, "reason")
        self.assert_refused(m.decode_close, {"c": 1, "reason": "closed", "detail": 3}, "detail")
        self.assert_refused(m.decode_close, {"c": 1, "reason": "closed", "detail": "d" * 513}, "detail")

    def test_ready(self) -> None:
        ok = {"bytes": 1, "seconds": 1, "rate": None, "window": WINDOW}
        self.assertEqual(m.decode_ready(json.dumps({"c": 1, "limits": ok, "new": 2}).encode()),
                         RelayReady(1, CircuitLimits(1, 1.0, None, WINDOW)))
        self.assert_refused(m.decode_ready, {"c": 1}, "limits")
        self.assert_refused(m.decode_ready, {"c": 1, "limits": [1]}, "limits")
        self.assert_refused(m.decode_ready, {"c": 1, "limits": ok, "x": {}}, "")
        self.assert_refused(m.decode_ready, {"c": 1, "limits": {**ok, "bytes": 0}}, "'bytes'")
        self.assert_refused(m.decode_ready, {"c": 1, "limits": {**ok, "seconds": 0}}, "time limit")
        self.assert_refused(m.decode_ready, {"c": 1, "limits": {**ok, "seconds": True}}, "time limit")
        self.assert_refused(m.decode_ready, b'{"c": 1, "limits": {"bytes": 1, "seconds": 1e999, "window": 65536}}',
                            "out of range")
        self.assert_refused(m.decode_ready, {"c": 1, "limits": {**ok, "rate": 0}}, "'rate'")
        self.assert_refused(m.decode_ready, {"c": 1, "limits": {**ok, "rate": "fast"}}, "'rate'")
        self.assert_refused(m.decode_ready, {"c": 1, "limits": {**ok, "window": 1}}, "'window'")
        self.assert_refused(m.decode_ready, {"c": 1, "limits": {**ok, "window": None}}, "'window'")
        self.assert_refused(m.decode_ready, {"c": 1, "limits": {**ok, "x": {"y": 1}}}, "arrays and objects")

    def test_data_and_credit_sizes(self) -> None:
        for payload in (b"", b"\x00\x00\x00\x01", b"\x00" * (5 + MAX_CHUNK)):
            self.assertRaises(ProtocolViolation, m.data_circuit, payload)
        for payload in (b"", b"\x00" * 7, b"\x00" * 9, struct.pack("!II", 1, 0),
                        struct.pack("!II", 1, MAX_WINDOW + 1)):
            self.assertRaises(ProtocolViolation, m.decode_credit, payload)

    def test_not_a_json_relay_frame(self) -> None:
        for ftype in (RelayFrame.DATA, RelayFrame.CREDIT, 1, 20, 28):
            self.assertRaises(ProtocolViolation, m.decode_frame, ftype, b"{}")

    @examples(300)
    @given(st.sampled_from(JSON_DECODERS + [m.data_circuit, m.decode_data, m.decode_credit]),
           st.binary(max_size=200))
    def test_random_bytes(self, decoder: Any, payload: bytes) -> None:
        """Random bytes decode or raise ProtocolViolation, nothing else."""
        try:
            decoder(payload)
        except ProtocolViolation:
            pass

    @examples(500)
    @given(st.sampled_from(JSON_DECODERS),
           st.dictionaries(st.sampled_from(["c", "to", "from", "window", "limits", "reason", "detail", "other"]),
                           field_values,
                           max_size=5))
    def test_random_json(self, decoder: Any, body: dict[str, Any]) -> None:
        """Random objects of the frames' keys decode or raise ProtocolViolation, nothing else."""
        try:
            decoder(json.dumps(body).encode())
        except ProtocolViolation:
            pass

    @examples(200)
    @given(st.sampled_from(JSON_DECODERS), json_values)
    def test_random_json_values(self, decoder: Any, value: Any) -> None:
        try:
            decoder(json.dumps(value).encode())
        except ProtocolViolation:
            pass

    @examples(200)
    @given(u32, st.sampled_from([A, T]), st.integers(1, 10**12), st.floats(0.001, 1e9),
           st.none() | st.integers(1, 10**10), st.integers(MIN_WINDOW, MAX_WINDOW), st.text(max_size=600))
    def test_round_trips_of_any_value(self, c: int, peer: Any, nbytes: int, seconds: float, rate: Any,
                                      window: int, detail: str) -> None:
        limits = CircuitLimits(nbytes, seconds, rate, window)
        self.assertEqual(m.decode_ready(split(m.encode_ready(c, limits))[1]), RelayReady(c, limits))
        self.assertEqual(m.decode_open(split(m.encode_open(c, peer))[1]), RelayOpen(c, peer))
        self.assertEqual(m.decode_invite(split(m.encode_invite(c, peer, window))[1]), RelayInvite(c, peer, window))
        close = m.decode_close(split(m.encode_close(c, m.REASON_PEER_LOST, detail))[1])
        self.assertEqual(close, RelayClose(c, m.REASON_PEER_LOST, detail[:m.MAX_DETAIL]))

    @examples(200)
    @given(u32, st.binary(min_size=1, max_size=300), st.integers(1, MAX_WINDOW))
    def test_binary_round_trips(self, c: int, chunk: bytes, credit: int) -> None:
        self.assertEqual(m.decode_data(split(m.encode_data(c, chunk))[1]), (c, chunk))
        self.assertEqual(m.decode_credit(split(m.encode_credit(c, credit))[1]), (c, credit))
