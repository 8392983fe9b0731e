"""
Tests for the TURN attributes of L{crust.nat.stun} and for L{crust.nat.turn_codec}:
encoding by hand-built vectors, strict parsing, ChannelData framing, and fuzzing.
"""

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.nat import stun, turn_codec
from crust.nat.turn_codec import TurnParseError

from tests import examples

TID = bytes.fromhex("0102030405060708090a0b0c")


def _message(body: bytes, method_type: int = 0x0113, tid: bytes = TID) -> bytes:
    return struct.pack("!HHI12s", method_type, len(body), stun.MAGIC_COOKIE, tid) + body


def _attr(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + b"\x00" * (-len(value) % 4)


def _decode_or_parse_error(data: bytes) -> None:
    try:
        stun.decode(data)
    except stun.StunParseError:
        pass


class TurnAttributeTests(SynchronousTestCase):
    def test_allocate_success_vector(self):
        """A hand-built Allocate success: XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS, LIFETIME."""
        cookie = stun.MAGIC_COOKIE
        relayed = struct.pack("!BBH", 0, 1, 50000 ^ (cookie >> 16)) + struct.pack("!I", 0xC000020F ^ cookie)
        mapped = struct.pack("!BBH", 0, 1, 4242 ^ (cookie >> 16)) + struct.pack("!I", 0xCB00710A ^ cookie)
        body = _attr(0x0016, relayed) + _attr(0x0020, mapped) + _attr(0x000D, struct.pack("!I", 600))
        msg = stun.decode(_message(body, method_type=0x0103))
        self.assertEqual(msg.method, stun.ALLOCATE)
        self.assertEqual(msg.message_class, stun.MessageClass.SUCCESS)
        self.assertEqual(msg.relayed_address, Address("udp", "192.0.2.15", 50000))
        self.assertEqual(msg.mapped_address, Address("udp", "203.0.113.10", 4242))
        self.assertEqual(msg.lifetime, 600)
        self.assertEqual(msg.unknown_comprehension_required(), ())
        self.assertEqual(stun.encode(msg), _message(body, method_type=0x0103))

    def test_method_names_and_type_bits(self):
        """The TURN methods' message types (RFC 8656 section 17)."""
        expected = {stun.ALLOCATE: 0x0003, stun.REFRESH: 0x0004, stun.SEND: 0x0006, stun.DATA_INDICATION: 0x0007,
                    stun.CREATE_PERMISSION: 0x0008, stun.CHANNEL_BIND: 0x0009}
        for method, request_type in expected.items():
            msg = stun.StunMessage(stun.MessageClass.REQUEST, method, TID)
            self.assertEqual(struct.unpack("!H", stun.encode(msg)[:2])[0], request_type)
        self.assertEqual(stun.encode(turn_codec.send_indication(Address("udp", "192.0.2.1", 9), b"x"))[:2],
                         b"\x00\x16")
        self.assertEqual(stun.method_name(stun.CREATE_PERMISSION), "CreatePermission")
        self.assertEqual(stun.method_name(0x0AB), "0x0ab")

    def test_peer_address_is_xored(self):
        peer = Address("udp", "198.51.100.7", 7000)
        msg = turn_codec.create_permission_request([peer], TID)
        data = stun.encode(msg)
        self.assertNotIn(peer.ip.packed, data)
        self.assertEqual(stun.decode(data).get_all(stun.XOR_PEER_ADDRESS), (peer,))

    def test_ipv6_relayed_address(self):
        addr = Address("udp", "2001:db8::1", 3478)
        msg = stun.StunMessage(stun.MessageClass.SUCCESS, stun.ALLOCATE, TID,
                               (stun.Attribute(stun.XOR_RELAYED_ADDRESS, addr),))
        self.assertEqual(stun.decode(stun.encode(msg)).relayed_address, addr)

    def test_builders_roundtrip(self):
        peer = Address("udp", "198.51.100.7", 7000)
        other = Address("udp", "203.0.113.9", 1)
        allocate = stun.decode(stun.encode(turn_codec.allocate_request(TID, lifetime=300, dont_fragment=True,
                                                                       software="crust")))
        self.assertEqual(allocate.get(stun.REQUESTED_TRANSPORT), 17)
        self.assertEqual(allocate.lifetime, 300)
        self.assertIs(allocate.get(stun.DONT_FRAGMENT), True)
        self.assertEqual(allocate.software, "crust")
        self.assertEqual(stun.decode(stun.encode(turn_codec.refresh_request(TID, lifetime=0))).lifetime, 0)
        self.assertEqual(stun.decode(stun.encode(turn_codec.refresh_request(TID))).lifetime, None)
        both = stun.decode(stun.encode(turn_codec.create_permission_request([peer, other], TID)))
        self.assertEqual(both.get_all(stun.XOR_PEER_ADDRESS), (peer, other))
        bind = stun.decode(stun.encode(turn_codec.channel_bind_request(0x4001, peer, TID)))
        self.assertEqual((bind.get(stun.CHANNEL_NUMBER), bind.peer_address), (0x4001, peer))
        data = stun.decode(stun.encode(turn_codec.data_indication(peer, b"hello")))
        self.assertEqual(turn_codec.parse_data_indication(data), (peer, b"hello"))

    def test_long_term_credentials(self):
        """The key is MD5(user:realm:password); the response check uses it."""
        key = stun.long_term_key("alice", "crust.lab", "secret")
        msg = turn_codec.with_credentials(turn_codec.allocate_request(TID), "alice", "crust.lab", "n0nce")
        back = stun.decode(stun.encode(msg, integrity_key=key))
        self.assertEqual((back.get(stun.USERNAME), back.realm, back.nonce), ("alice", "crust.lab", "n0nce"))
        self.assertTrue(back.verify_integrity(key))
        self.assertFalse(back.verify_integrity(stun.long_term_key("alice", "crust.lab", "wrong")))

    def test_other_turn_attributes(self):
        attrs = (stun.Attribute(stun.REQUESTED_ADDRESS_FAMILY, 2), stun.Attribute(stun.EVEN_PORT, True),
                 stun.Attribute(stun.RESERVATION_TOKEN, b"12345678"), stun.Attribute(stun.EVEN_PORT, False))
        msg = stun.StunMessage(stun.MessageClass.REQUEST, stun.ALLOCATE, TID, attrs)
        self.assertEqual(stun.decode(stun.encode(msg)).attributes, attrs)

    def test_refuses_bad_values(self):
        for attr in (stun.Attribute(stun.CHANNEL_NUMBER, 0x3FFF), stun.Attribute(stun.CHANNEL_NUMBER, 0x5000),
                     stun.Attribute(stun.LIFETIME, -1), stun.Attribute(stun.LIFETIME, 1 << 32),
                     stun.Attribute(stun.REQUESTED_TRANSPORT, 256), stun.Attribute(stun.REQUESTED_ADDRESS_FAMILY, 3),
                     stun.Attribute(stun.RESERVATION_TOKEN, b"short"), stun.Attribute(stun.XOR_PEER_ADDRESS, "x")):
            with self.assertRaises(ValueError):
                stun.encode(stun.StunMessage(stun.MessageClass.REQUEST, stun.ALLOCATE, TID, (attr,)))
        with self.assertRaises(ValueError):
            turn_codec.channel_bind_request(0x5000, Address("udp", "192.0.2.1", 1))
        with self.assertRaises(ValueError):
            turn_codec.create_permission_request([])


class TurnAttributeParseErrorTests(SynchronousTestCase):
    def assertRefused(self, attr_type, value, fragment):
        with self.assertRaises(stun.StunParseError) as e:
            stun.decode(_message(_attr(attr_type, value)))
        self.assertIn(fragment, str(e.exception))

    def test_channel_number(self):
        self.assertRefused(stun.CHANNEL_NUMBER, b"\x40\x00", "expected 4")
        self.assertRefused(stun.CHANNEL_NUMBER, b"\x3f\xff\x00\x00", "not in 0x4000")
        self.assertRefused(stun.CHANNEL_NUMBER, b"\x50\x00\x00\x00", "not in 0x4000")

    def test_lifetime(self):
        self.assertRefused(stun.LIFETIME, b"\x00\x00\x02", "LIFETIME is 3 bytes")

    def test_requested_transport(self):
        self.assertRefused(stun.REQUESTED_TRANSPORT, b"\x11", "expected 4")

    def test_address_family(self):
        self.assertRefused(stun.REQUESTED_ADDRESS_FAMILY, b"\x03\x00\x00\x00", "unknown family")
        self.assertRefused(stun.REQUESTED_ADDRESS_FAMILY, b"\x01", "expected 4")

    def test_even_port_dont_fragment_token(self):
        self.assertRefused(stun.EVEN_PORT, b"\x80\x00", "expected 1")
        self.assertRefused(stun.DONT_FRAGMENT, b"\x00", "expected none")
        self.assertRefused(stun.RESERVATION_TOKEN, b"1234", "expected 8")

    def test_xor_addresses(self):
        self.assertRefused(stun.XOR_PEER_ADDRESS, b"\x00\x03\x00\x01abcd", "unknown address family")
        self.assertRefused(stun.XOR_RELAYED_ADDRESS, b"\x00\x01\x00", "too short")
        # port 0 after the XOR: the encoded port is the cookie's top half
        self.assertRefused(stun.XOR_PEER_ADDRESS, b"\x00\x01\x21\x12abcd", "port 0")

    def test_data_indication_parts(self):
        bare = stun.StunMessage(stun.MessageClass.INDICATION, stun.DATA_INDICATION, TID)
        with self.assertRaises(TurnParseError):
            turn_codec.parse_data_indication(bare)
        peer_only = stun.StunMessage(stun.MessageClass.INDICATION, stun.DATA_INDICATION, TID,
                                     (stun.Attribute(stun.XOR_PEER_ADDRESS, Address("udp", "192.0.2.1", 5)),))
        with self.assertRaises(TurnParseError) as e:
            turn_codec.parse_data_indication(peer_only)
        self.assertIn("without DATA", str(e.exception))
        with self.assertRaises(TurnParseError):
            turn_codec.parse_data_indication(turn_codec.send_indication(Address("udp", "192.0.2.1", 5), b""))


class ChannelDataTests(SynchronousTestCase):
    def test_encode(self):
        self.assertEqual(turn_codec.encode_channel_data(0x4000, b"abc"), b"\x40\x00\x00\x03abc\x00")
        self.assertEqual(turn_codec.encode_channel_data(0x4FFF, b"abcd"), b"\x4f\xff\x00\x04abcd")
        self.assertEqual(turn_codec.encode_channel_data(0x4001, b"a", pad=False), b"\x40\x01\x00\x01a")
        self.assertEqual(turn_codec.encode_channel_data(0x4001, b""), b"\x40\x01\x00\x00")
        for bad in (0x3FFF, 0x5000):
            with self.assertRaises(ValueError):
                turn_codec.encode_channel_data(bad, b"x")
        with self.assertRaises(ValueError):
            turn_codec.encode_channel_data(0x4000, b"x" * 65536)

    def test_decode_padded_or_not(self):
        self.assertEqual(turn_codec.decode_channel_data(b"\x40\x00\x00\x03abc\x00"), (0x4000, b"abc"))
        self.assertEqual(turn_codec.decode_channel_data(b"\x40\x00\x00\x03abc"), (0x4000, b"abc"))
        self.assertEqual(turn_codec.decode_channel_data(b"\x40\x05\x00\x00"), (0x4005, b""))

    def test_decode_errors(self):
        for data, fragment in ((b"\x40\x00\x00", "truncated"),
                               (b"\x40\x00\x00\x05abc", "announces 5"),
                               (b"\x40\x00\x00\x03abc\x00\x00", "more than padding"),
                               (b"\x40\x00\x00\x04abcd\x00", "more than padding"),
                               (b"\x50\x00\x00\x00", "not in 0x4000"),
                               (b"\x3f\xff\x00\x00", "not in 0x4000")):
            with self.assertRaises(TurnParseError) as e:
                turn_codec.decode_channel_data(data)
            self.assertIn(fragment, str(e.exception))

    def test_is_channel_data(self):
        self.assertTrue(turn_codec.is_channel_data(b"\x40\x00\x00\x00"))
        self.assertTrue(turn_codec.is_channel_data(b"\x4f\xff\x00\x00"))
        self.assertFalse(turn_codec.is_channel_data(b"\x50\x00\x00\x00"))
        self.assertFalse(turn_codec.is_channel_data(b"\x40\x00\x00"))
        self.assertFalse(turn_codec.is_channel_data(b"\x00\x01\x00\x00"))

    def test_parse_error_is_a_stun_parse_error(self):
        self.assertTrue(issubclass(TurnParseError, stun.StunParseError))


class FuzzTests(SynchronousTestCase):
    @examples(1000)
    @given(st.binary(max_size=80))
    def test_channel_data_random_bytes(self, data):
        """Arbitrary bytes either parse as ChannelData or raise TurnParseError."""
        turn_codec.is_channel_data(data)
        try:
            channel, payload = turn_codec.decode_channel_data(data)
        except TurnParseError:
            return
        self.assertTrue(0x4000 <= channel <= 0x4FFF)
        self.assertLessEqual(len(payload), len(data) - 4)

    @examples(500)
    @given(st.integers(0x4000, 0x4FFF), st.binary(max_size=300), st.booleans())
    def test_channel_data_roundtrip(self, channel, payload, pad):
        data = turn_codec.encode_channel_data(channel, payload, pad=pad)
        self.assertEqual(len(data) % 4 == 0, pad or len(payload) % 4 == 0)
        self.assertTrue(turn_codec.is_channel_data(data))
        self.assertEqual(turn_codec.decode_channel_data(data), (channel, payload))

    @examples(500)
    @given(st.sampled_from([stun.CHANNEL_NUMBER, stun.LIFETIME, stun.XOR_PEER_ADDRESS, stun.DATA,
                            stun.XOR_RELAYED_ADDRESS, stun.REQUESTED_ADDRESS_FAMILY, stun.EVEN_PORT,
                            stun.REQUESTED_TRANSPORT, stun.DONT_FRAGMENT, stun.RESERVATION_TOKEN]),
           st.binary(max_size=24))
    def test_turn_attribute_random_values(self, attr_type, value):
        """Every TURN attribute with random bytes: a value or StunParseError, nothing else."""
        _decode_or_parse_error(_message(_attr(attr_type, value)))

    @examples(300)
    @given(st.lists(st.one_of(
        st.builds(lambda t, h, p: stun.Attribute(t, Address("udp", h, p)),
                  st.sampled_from([stun.XOR_PEER_ADDRESS, stun.XOR_RELAYED_ADDRESS]),
                  st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
                  st.integers(1, 65535)),
        st.builds(lambda n: stun.Attribute(stun.CHANNEL_NUMBER, n), st.integers(0x4000, 0x4FFF)),
        st.builds(lambda n: stun.Attribute(stun.LIFETIME, n), st.integers(0, 0xFFFFFFFF)),
        st.builds(lambda d: stun.Attribute(stun.DATA, d), st.binary(max_size=40)),
        st.builds(lambda n: stun.Attribute(stun.REQUESTED_TRANSPORT, n), st.integers(0, 255)),
        st.builds(lambda f: stun.Attribute(stun.REQUESTED_ADDRESS_FAMILY, f), st.sampled_from([1, 2])),
        st.builds(lambda b: stun.Attribute(stun.EVEN_PORT, b), st.booleans()),
        st.just(stun.Attribute(stun.DONT_FRAGMENT, True)),
        st.builds(lambda t: stun.Attribute(stun.RESERVATION_TOKEN, t), st.binary(min_size=8, max_size=8)),
    ), max_size=6), st.binary(min_size=12, max_size=12))
    def test_turn_roundtrip(self, attrs, tid):
        msg = stun.StunMessage(stun.MessageClass.REQUEST, stun.ALLOCATE, tid, tuple(attrs))
        self.assertEqual(stun.decode(stun.encode(msg)).attributes, tuple(attrs))
