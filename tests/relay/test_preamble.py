"""Tests for L{crust.relay.preamble}: the splice preamble and the tokens' text form."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.errors import ProtocolViolation
from crust.relay.preamble import (
    MAGIC,
    PREAMBLE_SIZE,
    SPLICED,
    TOKEN_SIZE,
    VERSION,
    PreambleError,
    encode_preamble,
    parse_preamble,
    token_from_text,
    token_text,
)
from crust.transport.tcp import TLS_HANDSHAKE

TOKEN = bytes(range(32))


class PreambleTests(SynchronousTestCase):
    def test_wire_format(self) -> None:
        data = encode_preamble(TOKEN)
        self.assertEqual(data, b"CRSP\x01" + TOKEN)
        self.assertEqual(len(data), PREAMBLE_SIZE)
        self.assertEqual(PREAMBLE_SIZE, 37)
        self.assertEqual(parse_preamble(data), TOKEN)

    def test_it_cannot_be_taken_for_tls(self) -> None:
        # a TLS connection begins with a record's content type: 0x14..0x18
        self.assertFalse(0x14 <= MAGIC[0] <= 0x18)
        self.assertNotEqual(MAGIC[0], TLS_HANDSHAKE)
        self.assertNotEqual(SPLICED, b"")

    def test_errors(self) -> None:
        good = encode_preamble(TOKEN)
        for data, words in ((good[:-1], "37 bytes, not 36"), (good + b"x", "not 38"),
                            (b"CRSX" + good[4:], "wrong magic"),
                            (MAGIC + bytes([VERSION + 1]) + TOKEN, "version 2")):
            e = self.assertRaises(PreambleError, parse_preamble, data)
            self.assertIn(words, str(e))
        self.assertRaises(ValueError, encode_preamble, TOKEN[:-1])
        self.assertRaises(ValueError, encode_preamble, "x" * TOKEN_SIZE)

    @given(st.binary(max_size=80))
    def test_any_bytes_are_a_token_or_a_preamble_error(self, data: bytes) -> None:
        try:
            token = parse_preamble(data)
        except PreambleError:
            return
        self.assertEqual(len(token), TOKEN_SIZE)
        self.assertEqual(encode_preamble(token), data)

    @given(st.binary(min_size=TOKEN_SIZE, max_size=TOKEN_SIZE))
    def test_round_trips(self, token: bytes) -> None:
        self.assertEqual(parse_preamble(encode_preamble(token)), token)
        self.assertEqual(token_from_text(token_text(token)), token)

    def test_token_text(self) -> None:
        self.assertEqual(token_text(TOKEN), TOKEN.hex())
        for bad in (TOKEN.hex().upper(), TOKEN.hex()[:-1], TOKEN.hex() + "0", " " + TOKEN.hex()[1:], 7, None,
                    "g" * 64, TOKEN.hex()[:-1] + "\n"):
            self.assertRaises(ProtocolViolation, token_from_text, bad)
        self.assertRaises(ValueError, token_text, b"short")

    @given(st.text(max_size=70))
    def test_any_text_is_a_token_or_a_violation(self, text: str) -> None:
        try:
            token = token_from_text(text)
        except ProtocolViolation:
            return
        self.assertEqual(token_text(token), text)
