"""
Tests for L{crust.address.Address.from_sockaddr}: socket addresses as the
socket module and Twisted give them (tuples, C{IPv4Address}/C{IPv6Address}),
IPv4-mapped IPv6, scope ids, and whatever else a caller might hand it.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address

from tests import examples

ports = st.integers(1, 65535)
ipv4s = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
# IPv6 addresses that are not IPv4-mapped (those have their own tests)
ipv6s = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)).filter(lambda ip: ip.ipv4_mapped is None)
scopes = st.one_of(st.integers(1, 2**32 - 1).map(str), st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True))


def mapped(ip: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)


class FromSockaddrTests(SynchronousTestCase):
    def test_examples(self):
        self.assertEqual(Address.from_sockaddr("udp", ("127.0.0.1", 5)), Address("udp", "127.0.0.1", 5))
        self.assertEqual(Address.from_sockaddr("udp", ("::ffff:127.0.0.1", 5)), Address("udp", "127.0.0.1", 5))
        self.assertEqual(Address.from_sockaddr("udp", ("fe80::1%eth0", 5)), Address("udp", "fe80::1", 5))
        self.assertIsNone(Address.from_sockaddr("udp", ("nonsense", 5)))
        self.assertIsNone(Address.from_sockaddr("udp", ("127.0.0.1", 0)))
        self.assertIsNone(Address.from_sockaddr("udp", None))

    def test_twisted_addresses(self):
        self.assertEqual(Address.from_sockaddr("tcp", IPv4Address("TCP", "192.0.2.1", 4242)),
                         Address("tcp", "192.0.2.1", 4242))
        self.assertEqual(Address.from_sockaddr("tcp", IPv6Address("TCP", "::ffff:192.0.2.1", 4242)),
                         Address("tcp", "192.0.2.1", 4242))
        self.assertEqual(Address.from_sockaddr("udp", IPv6Address("UDP", "FE80::1%3", 9)),
                         Address("udp", "fe80::1", 9))
        self.assertIsNone(Address.from_sockaddr("tcp", IPv4Address("TCP", "192.0.2.1", 0)))
        self.assertIsNone(Address.from_sockaddr("tcp", UNIXAddress(b"/tmp/socket")))

    def test_mapped_written_in_hex(self):
        self.assertEqual(Address.from_sockaddr("udp", ("::ffff:c000:201", 7)), Address("udp", "192.0.2.1", 7))

    def test_unusable(self):
        for addr in [(), ("127.0.0.1",), ("127.0.0.1", -1), ("127.0.0.1", 65536), ("127.0.0.1", "5"),
                     ("127.0.0.1", 5.0), ("127.0.0.1", True), (None, 5), (b"127.0.0.1", 5), ("", 5),
                     ("example.org", 80), ("1.2.3", 5), ("%eth0", 5), 7, "127.0.0.1:5", {}]:
            self.assertIsNone(Address.from_sockaddr("udp", addr), repr(addr))

    def test_unknown_transport_is_an_error(self):
        self.assertRaises(ValueError, Address.from_sockaddr, "sctp", ("127.0.0.1", 5))

    @examples(300)
    @given(ipv4s, ports, st.sampled_from(["tcp", "udp"]))
    def test_ipv4(self, ip, port, transport):
        self.assertEqual(Address.from_sockaddr(transport, (str(ip), port)), Address(transport, str(ip), port))
        self.assertEqual(Address.from_sockaddr(transport, IPv4Address(transport.upper(), str(ip), port)),
                         Address(transport, str(ip), port))

    @examples(300)
    @given(ipv4s, ports, st.booleans())
    def test_ipv4_mapped_becomes_ipv4(self, ip, port, compressed):
        v6 = mapped(ip)
        text = v6.compressed if compressed else v6.exploded
        got = Address.from_sockaddr("udp", (text, port, 0, 0))
        self.assertEqual(got, Address("udp", str(ip), port))
        self.assertFalse(got.family_is_v6)

    @examples(300)
    @given(ipv6s, ports, st.one_of(st.none(), scopes), st.integers(0, 2**20 - 1))
    def test_ipv6_with_or_without_scope(self, ip, port, scope, flowinfo):
        text = str(ip) if scope is None else f"{ip}%{scope}"
        got = Address.from_sockaddr("udp", (text, port, flowinfo, 0))
        self.assertEqual(got, Address("udp", str(ip), port))
        self.assertNotIn("%", got.host)

    @examples(500)
    @given(st.one_of(
        st.tuples(st.one_of(st.text(max_size=50), st.binary(max_size=20), st.none(), st.integers()),
                  st.one_of(st.integers(), st.text(max_size=5), st.none(), st.floats())),
        st.tuples(), st.none(), st.integers(), st.text(max_size=20),
    ))
    def test_anything_gives_an_address_or_none(self, addr):
        got = Address.from_sockaddr("udp", addr)
        if got is not None:
            self.assertEqual(got.transport, "udp")
            self.assertTrue(0 < got.port < 65536)
            self.assertEqual(Address.parse(str(got)), got)  # a well-formed address
