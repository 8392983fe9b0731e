"""Tests for L{crust.transport.udp_messages}: the first-byte map and the crust message-type registry."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.transport import udp_messages
from crust.transport.udp_messages import (
    CRUST_FIRST,
    CRUST_LAST,
    ECHO_REQUEST,
    ECHO_RESPONSE,
    FIRST_BYTE_RANGES,
    MESSAGE_TYPES,
    QUIC_FIRST,
    RESERVED_FOR_HOLE_PUNCHING,
    MessageTypes,
    check_message_type,
)


class FirstByteMapTests(SynchronousTestCase):
    def test_ranges_cover_every_byte_once(self):
        owners = [name for name, first, last in FIRST_BYTE_RANGES for _ in range(first, last + 1)]
        self.assertEqual(len(owners), 256)
        self.assertEqual((owners[0], owners[3], owners[4], owners[15], owners[16], owners[255]),
                         ("stun", "stun", "crust", "crust", "other", "other"))

    def test_quic_is_above_crust_and_dtls(self):
        self.assertEqual(QUIC_FIRST, 64)
        self.assertGreater(QUIC_FIRST, CRUST_LAST)

    def test_the_echo_types_are_claimed(self):
        self.assertEqual((ECHO_REQUEST, ECHO_RESPONSE), (4, 5))
        self.assertEqual(MESSAGE_TYPES.name(4), "echo request")
        self.assertEqual(MESSAGE_TYPES.name(5), "echo response")
        self.assertEqual(list(RESERVED_FOR_HOLE_PUNCHING), list(range(6, 16)))
        import crust.punch.checks  # noqa: F401  (hole punching claims its two types when imported)

        self.assertEqual(MESSAGE_TYPES.name(6), "hole punching check")
        self.assertEqual(MESSAGE_TYPES.name(7), "hole punching check answer")
        for message_type in range(8, 16):
            self.assertIsNone(MESSAGE_TYPES.name(message_type))

    def test_claiming_the_echo_types_again_is_refused(self):
        self.assertRaises(ValueError, MESSAGE_TYPES.claim, ECHO_REQUEST, "something else")
        self.assertEqual(MESSAGE_TYPES.name(ECHO_REQUEST), "echo request")

    def test_the_module_names_what_it_exports(self):
        for name in udp_messages.__all__:
            self.assertTrue(hasattr(udp_messages, name), name)


class MessageTypesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.types = MessageTypes()

    def test_claim_is_one_line(self):
        punch = self.types.claim(6, "hole punching check")
        self.assertEqual(punch, 6)
        self.assertEqual(self.types.name(6), "hole punching check")
        self.assertEqual(self.types.claimed(), {6: "hole punching check"})

    def test_duplicate_claim_refused(self):
        self.types.claim(7, "first")
        error = self.assertRaises(ValueError, self.types.claim, 7, "second")
        self.assertIn("'first'", str(error))
        self.assertEqual(self.types.name(7), "first")

    def test_out_of_range_refused(self):
        for bad in (-1, 0, 3, 16, 20, 64, 255, 256, 4.0, True, "4", None):
            self.assertRaises(ValueError, self.types.claim, bad, "bad")
        self.assertEqual(self.types.claimed(), {})

    def test_a_name_is_needed(self):
        self.assertRaises(ValueError, self.types.claim, 8, "")

    def test_claimed_in_type_order(self):
        for message_type in (15, 6, 9):
            self.types.claim(message_type, f"type {message_type}")
        self.assertEqual(list(self.types.claimed()), [6, 9, 15])

    @given(st.integers(-1000, 1000))
    def test_check_message_type(self, value):
        if CRUST_FIRST <= value <= CRUST_LAST:
            self.assertEqual(check_message_type(value), value)
        else:
            self.assertRaises(ValueError, check_message_type, value)
