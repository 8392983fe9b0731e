"""
Tests for L{crust.punch.checks}: the CHECK/ACK codec of UDP hole punching,
its keys and MACs, and its refusal of anything malformed or altered.
"""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.errors import CrustError
from crust.identity import Identity, PeerId
from crust.punch.checks import (
    ACK,
    ACK_SIZE,
    BIRTHDAY,
    CHECK,
    CHECK_SIZE,
    NOMINATE,
    Ack,
    Check,
    CheckError,
    decode,
    encode_ack,
    encode_check,
    pair_key,
    static_shared,
    verify,
)

from tests import examples

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(32, 64)))
CAROL = Identity.from_seed(bytes(range(64, 96)))
ATTEMPT = bytes.fromhex("0102030405060708")
SHARED = static_shared(ALICE, BOB.peer_id)
KEY = pair_key(SHARED, ATTEMPT)
V4 = Address("udp", "203.0.113.7", 40000)
V6 = Address("udp", "2001:db8::17", 5000)

addresses = st.one_of(
    st.builds(lambda packed, port: Address("udp", ".".join(str(b) for b in packed), port),
              st.binary(min_size=4, max_size=4), st.integers(1, 65535)),
    st.builds(lambda packed, port: Address("udp", str(ipaddress.IPv6Address(packed)), port),
              st.binary(min_size=16, max_size=16), st.integers(1, 65535)),
)


class KeyTests(SynchronousTestCase):
    def test_static_shared_is_symmetric(self) -> None:
        """Both sides compute the same secret; another pair computes another."""
        self.assertEqual(static_shared(BOB, ALICE.peer_id), SHARED)
        self.assertEqual(len(SHARED), 32)
        self.assertNotEqual(static_shared(ALICE, CAROL.peer_id), SHARED)
        self.assertNotEqual(static_shared(CAROL, BOB.peer_id), SHARED)

    def test_static_shared_refuses_unusable_keys(self) -> None:
        """A peer id that is no usable Ed25519 point is a ValueError."""
        for raw in (bytes(32), b"\xff" * 32, b"\x01" + bytes(31)):
            self.assertRaises(ValueError, static_shared, ALICE, PeerId(raw))

    def test_pair_key(self) -> None:
        """The key depends on the shared secret and the attempt; sizes are checked."""
        self.assertEqual(len(KEY), 32)
        self.assertEqual(pair_key(SHARED, ATTEMPT), KEY)
        self.assertNotEqual(pair_key(SHARED, bytes(8)), KEY)
        self.assertNotEqual(pair_key(static_shared(ALICE, CAROL.peer_id), ATTEMPT), KEY)
        self.assertNotEqual(KEY, SHARED)
        self.assertRaises(ValueError, pair_key, SHARED, bytes(7))
        self.assertRaises(ValueError, pair_key, SHARED[:31], ATTEMPT)


class CodecTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        self.assertEqual((CHECK, ACK, CHECK_SIZE, ACK_SIZE, NOMINATE, BIRTHDAY), (6, 7, 33, 52, 1, 2))
        self.assertEqual(len(encode_check(KEY, ATTEMPT, 1)), CHECK_SIZE)
        self.assertEqual(len(encode_ack(KEY, ATTEMPT, 1, 0, V6)), ACK_SIZE)

    def test_check_round_trip(self) -> None:
        """A CHECK decodes to its fields, and its MAC verifies under its key only."""
        data = encode_check(KEY, ATTEMPT, 0xDEADBEEF, NOMINATE | BIRTHDAY)
        self.assertEqual(data[:4], b"\x06cp\x01")
        msg = decode(data)
        assert isinstance(msg, Check)
        self.assertEqual((msg.attempt, msg.seq, msg.flags), (ATTEMPT, 0xDEADBEEF, 3))
        self.assertTrue(msg.nominate)
        self.assertTrue(msg.birthday)
        self.assertTrue(verify(KEY, msg))
        self.assertFalse(decode(encode_check(KEY, ATTEMPT, 1, 0)).nominate)

    def test_ack_round_trip(self) -> None:
        """An ACK carries the observed address, IPv4 left-aligned and zero padded, or IPv6."""
        for observed in (V4, V6):
            data = encode_ack(KEY, ATTEMPT, 7, NOMINATE, observed)
            msg = decode(data)
            assert isinstance(msg, Ack)
            self.assertEqual((msg.attempt, msg.seq, msg.flags, msg.observed), (ATTEMPT, 7, 1, observed))
            self.assertTrue(msg.nominate)
            self.assertFalse(msg.birthday)
            self.assertTrue(verify(KEY, msg))
        data = encode_ack(KEY, ATTEMPT, 7, 0, V4)
        self.assertEqual(data[17:20], struct.pack("!BH", 4, 40000))
        self.assertEqual(data[20:36], bytes([203, 0, 113, 7]) + bytes(12))
        msg = decode(encode_ack(KEY, ATTEMPT, 7, 0, V6))
        assert isinstance(msg, Ack)
        self.assertEqual(msg.observed.host, "2001:db8::17")

    def test_other_keys_fail(self) -> None:
        """Another attempt's key, another pair's key: the MAC does not verify."""
        other_attempt = pair_key(SHARED, bytes(8))
        other_pair = pair_key(static_shared(ALICE, CAROL.peer_id), ATTEMPT)
        for data in (encode_check(KEY, ATTEMPT, 1), encode_ack(KEY, ATTEMPT, 1, 0, V4)):
            msg = decode(data)
            self.assertTrue(verify(KEY, msg))
            self.assertFalse(verify(other_attempt, msg))
            self.assertFalse(verify(other_pair, msg))

    def test_every_byte_tampered(self) -> None:
        """Changing any byte of a CHECK or an ACK makes it fail decoding or verification."""
        originals = [encode_check(KEY, ATTEMPT, 99, NOMINATE), encode_ack(KEY, ATTEMPT, 99, 0, V4),
                     encode_ack(KEY, ATTEMPT, 99, BIRTHDAY, V6)]
        for data in originals:
            for i in range(len(data)):
                for mask in (0x01, 0x80, 0xFF):
                    altered = bytearray(data)
                    altered[i] ^= mask
                    try:
                        msg = decode(bytes(altered))
                    except CheckError:
                        continue
                    self.assertFalse(verify(KEY, msg), f"byte {i} ^ {mask:#x} went unnoticed")

    def test_wrong_sizes(self) -> None:
        """Any size but the two is a CheckError, as is a truncated or extended message."""
        check = encode_check(KEY, ATTEMPT, 1)
        ack = encode_ack(KEY, ATTEMPT, 1, 0, V4)
        for size in range(100):
            if size not in (CHECK_SIZE, ACK_SIZE):
                self.assertRaises(CheckError, decode, bytes([CHECK]) * size)
        for data in (check[:-1], check + b"\0", ack[:-1], ack + b"\0", b""):
            self.assertRaises(CheckError, decode, data)

    def test_bad_headers(self) -> None:
        """Type, magic, version and the ACK's address field are checked."""
        check = encode_check(KEY, ATTEMPT, 1)
        ack = encode_ack(KEY, ATTEMPT, 1, 0, V4)
        bad = [
            bytes([ACK]) + check[1:],  # an ACK type with a CHECK's size
            bytes([CHECK]) + ack[1:],
            bytes([4]) + check[1:],  # another crust UDP message type
            check[:1] + b"cq" + check[3:],
            check[:3] + b"\x02" + check[4:],
            ack[:17] + b"\x05" + ack[18:],  # unknown family
            ack[:17] + b"\x04" + ack[18:20] + bytes(4) + b"\x01" + bytes(11) + ack[36:],  # v4 padding
            ack[:18] + b"\x00\x00" + ack[20:],  # port 0
        ]
        for data in bad:
            self.assertIn(len(data), (CHECK_SIZE, ACK_SIZE))
            self.assertRaises(CheckError, decode, data)
        self.assertTrue(issubclass(CheckError, CrustError))

    def test_memoryview_and_non_bytes(self) -> None:
        """A memoryview decodes; text is refused with a CheckError."""
        data = encode_check(KEY, ATTEMPT, 5)
        self.assertEqual(decode(memoryview(data)), decode(data))
        self.assertRaises(CheckError, decode, "x" * CHECK_SIZE)  # type: ignore[arg-type]

    def test_encoder_refuses_bad_fields(self) -> None:
        for args in ((bytes(7), 1, 0), (ATTEMPT, -1, 0), (ATTEMPT, 2**32, 0), (ATTEMPT, 1, 256), (ATTEMPT, 1, -1)):
            self.assertRaises(ValueError, encode_check, KEY, *args)
            self.assertRaises(ValueError, encode_ack, KEY, *args, V4)

    def test_verify_refuses_other_objects(self) -> None:
        self.assertFalse(verify(KEY, object()))  # type: ignore[arg-type]

    @given(st.binary(min_size=8, max_size=8), st.integers(0, 2**32 - 1), st.integers(0, 255), addresses)
    def test_round_trip_property(self, attempt: bytes, seq: int, flags: int, observed: Address) -> None:
        key = pair_key(SHARED, attempt)
        check = decode(encode_check(key, attempt, seq, flags))
        ack = decode(encode_ack(key, attempt, seq, flags, observed))
        self.assertEqual(check, Check(attempt, seq, flags, check.mac))
        self.assertEqual(ack, Ack(attempt, seq, flags, observed, ack.mac))
        self.assertTrue(verify(key, check) and verify(key, ack))
        self.assertFalse(verify(KEY if key != KEY else pair_key(SHARED, bytes(8)), check))

    @examples(500)
    @given(st.binary(max_size=80))
    def test_random_bytes(self, data: bytes) -> None:
        """Random input decodes or raises CheckError, nothing else; it never verifies."""
        try:
            msg = decode(data)
        except CheckError:
            return
        self.assertIn(len(data), (CHECK_SIZE, ACK_SIZE))
        self.assertFalse(verify(KEY, msg))

    @examples(500)
    @given(st.sampled_from([(CHECK, CHECK_SIZE), (ACK, ACK_SIZE)]), st.binary(min_size=48, max_size=48),
           st.sampled_from([4, 6, 0, 255]))
    def test_random_bodies(self, kind: tuple[int, int], rest: bytes, family: int) -> None:
        """Well-formed headers with random bodies (and families) decode or raise CheckError only."""
        mtype, size = kind
        data = (bytes([mtype]) + b"cp\x01" + rest[:13] + bytes([family]) + rest[14:])[:size]
        try:
            msg = decode(data)
        except CheckError:
            return
        self.assertIsInstance(msg, Check if mtype == CHECK else Ack)
        self.assertFalse(verify(KEY, msg))
