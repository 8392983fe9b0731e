"""
Tests for L{crust.nat.portmap.gateway}: parsing the Linux routing tables.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.nat.portmap import gateway
from crust.nat.portmap.gateway import Gateway

from tests import examples

HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"

# captured from a Linux host (little-endian), with a reject route added
ROUTE = HEADER + (
    "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0                                  \n"
    "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0                                  \n"
)

IPV6_ROUTE = (
    "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
)


class IPv4Tests(SynchronousTestCase):
    def test_default_route(self) -> None:
        self.assertEqual(gateway.parse_ipv4_routes(ROUTE, "little"), [Gateway("192.0.2.1", "eth0", 0)])

    def test_big_endian(self) -> None:
        text = HEADER + "eth0\t00000000\tC0000201\t0003\t0\t0\t5\t00000000\t0\t0\t0\n"
        self.assertEqual(gateway.parse_ipv4_routes(text, "big"), [Gateway("192.0.2.1", "eth0", 5)])

    def test_lowest_metric_first(self) -> None:
        text = HEADER + (
            "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
            "eth0\t00000000\t010010AC\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        )
        self.assertEqual([g.address for g in gateway.parse_ipv4_routes(text, "little")],
                         ["172.16.0.1", "192.168.1.1"])

    def test_skips_non_default_down_reject_and_gatewayless(self) -> None:
        text = HEADER + (
            "eth0\t000200C0\t010200C0\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # not default
            "eth0\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n"  # not up
            "eth0\t00000000\t010200C0\t0203\t0\t0\t0\t00000000\t0\t0\t0\n"  # reject
            "eth0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n"  # no gateway
        )
        self.assertEqual(gateway.parse_ipv4_routes(text, "little"), [])

    def test_malformed_lines_skipped(self) -> None:
        text = HEADER + "garbage\n" + "eth0\tZZZZ\t010200C0\t0003\t0\t0\t0\t00000000\n" + ROUTE.split("\n", 1)[1]
        self.assertEqual(len(gateway.parse_ipv4_routes(text, "little")), 1)

    @given(st.text(max_size=500))
    def test_garbage_never_raises(self, text: str) -> None:
        self.assertIsInstance(gateway.parse_ipv4_routes(HEADER + text), list)


_V4_FIELDS = st.sampled_from(["eth0", "lo", "00000000", "010200C0", "FFFFFFFF", "1FFFFFFFF", "-1", "-0", "0003",
                               "0001", "0203", "9" * 5000, "zz", "1_0", "0x10", "\u0663", "\xb2"])
_V6_FIELDS = st.sampled_from(["0" * 32, "fd" + "0" * 29 + "1", "fe80" + "0" * 27 + "1", "z" * 32, "-" + "0" * 31,
                              "0" * 31, "00", "40", "ffffffff", "00000003", "00200200", "-1", "1_0", "eth0", "lo",
                              "\u0663" * 32])


class ShapedRouteTests(SynchronousTestCase):
    """Lines with the right number of fields, of values a parser may trip on: skipped or read, never raised."""

    @examples(500)
    @given(st.lists(st.lists(_V4_FIELDS, min_size=7, max_size=12), max_size=4))
    def test_ipv4(self, lines: list[list[str]]) -> None:
        text = HEADER + "".join("\t".join(fields) + "\n" for fields in lines)
        for byteorder in ("little", "big"):
            for g in gateway.parse_ipv4_routes(text, byteorder):
                self.assertFalse(g.is_v6)

    @examples(500)
    @given(st.lists(st.lists(_V6_FIELDS, min_size=9, max_size=11), max_size=4))
    def test_ipv6(self, lines: list[list[str]]) -> None:
        text = "".join(" ".join(fields) + "\n" for fields in lines)
        for g in gateway.parse_ipv6_routes(text):
            self.assertTrue(g.is_v6)


class IPv6Tests(SynchronousTestCase):
    def test_default_route(self) -> None:
        self.assertEqual(gateway.parse_ipv6_routes(IPV6_ROUTE), [Gateway("fd00::1", "eth0", 0x400)])

    def test_link_local_gets_zone(self) -> None:
        text = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
                "fe800000000000000000000000000001 00000400 00000002 00000000 00000003     wlan0\n")
        [gw] = gateway.parse_ipv6_routes(text)
        self.assertEqual(gw.address, "fe80::1%wlan0")
        self.assertTrue(gw.is_v6)

    @given(st.text(max_size=500))
    def test_garbage_never_raises(self, text: str) -> None:
        self.assertIsInstance(gateway.parse_ipv6_routes(text), list)


class ReaderTests(SynchronousTestCase):
    def test_reads_files(self) -> None:
        route, route6 = self.mktemp(), self.mktemp()
        with open(route, "w") as f:
            f.write(ROUTE)
        with open(route6, "w") as f:
            f.write(IPV6_ROUTE)
        found = gateway.default_gateways(route, route6)
        self.assertEqual([g.address for g in found][-1], "fd00::1")
        self.assertEqual(len(found), 2)

    def test_missing_files(self) -> None:
        self.assertEqual(gateway.default_gateways(self.mktemp(), self.mktemp()), [])
        self.assertIsNone(gateway.default_gateway_v4(self.mktemp()))

    def test_this_host(self) -> None:
        """Reading the real tables works (whatever they hold)."""
        result = gateway.default_gateway_v4()
        self.assertTrue(result is None or isinstance(result, str))
