"""
Candidate pair ordering (pure: no reactor, no sockets).
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.candidates import Candidate, CandidateKind
from crust.punch.pairs import MAX_PAIRS, MAX_REMOTE, pair_order, remote_targets

from tests import examples


def A(text):
    return Address.parse(text)


def C(text, kind="host", source=""):
    return Candidate(A(text), CandidateKind(kind), source)


def addresses(pairs):
    return [str(r.address) for _, r in pairs]


class PairOrderTests(SynchronousTestCase):
    def test_tiers(self):
        local = [("s", C("udp:192.168.1.5:4000")), ("s", C("udp:198.51.100.1:4000", "srflx"))]
        # Given worst first: the tier decides, not the peer's order.
        remote = [
            C("udp:10.9.9.9:1"),  # private, another subnet
            C("udp:203.0.113.4:2"),  # public host
            C("udp:198.51.100.2:3", "srflx"),
            C("udp:198.51.100.2:4", "mapped"),
            C("udp:192.168.1.9:5"),  # our LAN
        ]
        self.assertEqual(addresses(pair_order(local, remote)), [
            "udp:192.168.1.9:5", "udp:198.51.100.2:4", "udp:198.51.100.2:3", "udp:203.0.113.4:2", "udp:10.9.9.9:1",
        ])

    def test_prflx_ranks_with_srflx_in_peer_order(self):
        local = [(0, C("udp:10.0.0.2:1"))]
        remote = [C("udp:198.51.100.7:1", "prflx"), C("udp:198.51.100.8:1", "srflx"), C("udp:198.51.100.9:1", "prflx")]
        self.assertEqual(addresses(pair_order(local, remote)),
                         ["udp:198.51.100.7:1", "udp:198.51.100.8:1", "udp:198.51.100.9:1"])

    def test_remote_order_then_local_order(self):
        local = [("b", C("udp:10.0.0.2:1")), ("a", C("udp:10.0.0.3:1"))]
        remote = [C("udp:198.51.100.2:1", "srflx"), C("udp:198.51.100.3:1", "srflx")]
        self.assertEqual([(k, str(r.address)) for k, r in pair_order(local, remote)], [
            ("b", "udp:198.51.100.2:1"), ("a", "udp:198.51.100.2:1"),
            ("b", "udp:198.51.100.3:1"), ("a", "udp:198.51.100.3:1"),
        ])

    def test_lan_needs_host_on_both_sides(self):
        # Our only candidate for key "r" is reflexive: the remote host is then just "other private".
        local = [("r", C("udp:198.51.100.1:4000", "srflx")), ("h", C("udp:10.0.0.2:4000"))]
        remote = [C("udp:198.51.100.9:1", "srflx"), C("udp:10.0.0.9:1")]
        pairs = [(k, str(r.address)) for k, r in pair_order(local, remote)]
        self.assertEqual(pairs[0], ("h", "udp:10.0.0.9:1"))
        self.assertEqual(pairs[-1], ("r", "udp:10.0.0.9:1"))
        # A reflexive remote on our subnet is not LAN either.
        remote = [C("udp:203.0.113.1:1"), C("udp:10.0.0.9:1", "prflx")]
        self.assertEqual(addresses(pair_order([("h", C("udp:10.0.0.2:1"))], remote)),
                         ["udp:10.0.0.9:1", "udp:203.0.113.1:1"])

    def test_subnet_boundaries(self):
        local = [(0, C("udp:192.168.1.5:1")), (1, C("udp:[fd00:1::5]:1"))]
        remote = [
            C("udp:203.0.113.1:1"),  # public host, tier 4
            C("udp:192.168.2.9:1"),  # another /24: last
            C("udp:[fd00:1:0:1::9]:1"),  # another /64: last
            C("udp:[fd00:1::9]:1"),  # same /64: LAN
            C("udp:192.168.1.200:1"),  # same /24: LAN
        ]
        self.assertEqual(addresses(pair_order(local, remote)), [
            "udp:[fd00:1::9]:1", "udp:192.168.1.200:1", "udp:203.0.113.1:1",
            "udp:192.168.2.9:1", "udp:[fd00:1:0:1::9]:1",
        ])

    def test_global_neighbours_are_not_lan(self):
        local = [(0, C("udp:203.0.113.5:1"))]
        remote = [C("udp:198.51.100.9:1", "srflx"), C("udp:203.0.113.6:1")]
        self.assertEqual(addresses(pair_order(local, remote)), ["udp:198.51.100.9:1", "udp:203.0.113.6:1"])

    def test_families_and_transports_never_mixed(self):
        local = [("v4", C("udp:10.0.0.2:1")), ("v6", C("udp:[2600:1::2]:1")), ("t4", C("tcp:10.0.0.2:1"))]
        remote = [C("udp:198.51.100.9:1", "srflx"), C("udp:[2600:1::9]:1"), C("tcp:[2600:1::9]:1"),
                  C("tcp:10.0.0.9:2")]
        pairs = pair_order(local, remote)
        self.assertEqual([(k, str(r.address)) for k, r in pairs], [
            ("t4", "tcp:10.0.0.9:2"), ("v4", "udp:198.51.100.9:1"), ("v6", "udp:[2600:1::9]:1"),
        ])
        self.assertEqual(pair_order([("v4", C("udp:10.0.0.2:1"))], [C("udp:[2600:1::9]:1")]), [])

    def test_loopback_only_with_loopback(self):
        remote = [C("udp:127.0.0.1:9"), C("udp:[::1]:9"), C("udp:198.51.100.9:1", "srflx")]
        self.assertEqual(addresses(pair_order([(0, C("udp:127.0.0.1:1"))], remote)), ["udp:127.0.0.1:9"])
        self.assertEqual(addresses(pair_order([(0, C("udp:[::1]:1"))], remote)), ["udp:[::1]:9"])
        self.assertEqual(addresses(pair_order([(0, C("udp:10.0.0.2:1"))], remote)), ["udp:198.51.100.9:1"])

    def test_unusable_addresses_skipped(self):
        remote = [C("udp:[fe80::1]:1"), C("udp:169.254.1.1:1"), C("udp:224.0.0.1:1"), C("udp:0.0.0.0:1"),
                  C("udp:[::]:1"), C("udp:[ff02::1]:1"), C("udp:[::ffff:10.0.0.9]:1")]
        local = [(0, C("udp:10.0.0.2:1")), (1, C("udp:[fe80::2]:1")), (2, C("udp:[2600:1::2]:1"))]
        self.assertEqual(pair_order(local, remote), [])

    def test_dedup_keeps_best_tier(self):
        # A public host also reports its address as server-reflexive; one pair, as srflx.
        local = [("s", C("udp:10.0.0.2:1")), ("s", C("udp:198.51.100.1:1", "srflx"))]
        remote = [C("udp:203.0.113.9:1", "host", "local"), C("udp:203.0.113.9:1", "srflx", "stun"),
                  C("udp:10.0.0.7:1")]
        pairs = pair_order(local, remote)
        self.assertEqual(pairs, [("s", C("udp:10.0.0.7:1")), ("s", C("udp:203.0.113.9:1", "srflx", "stun"))])

    def test_caps(self):
        local = [(0, C("udp:10.0.0.2:1")), (1, C("udp:10.0.0.3:1"))]
        remote = [C(f"udp:198.51.100.9:{p}", "srflx") for p in range(1, 41)]
        self.assertEqual(len(pair_order(local, remote)), MAX_PAIRS)
        self.assertEqual([(k, r.address.port) for k, r in pair_order(local, remote, max_pairs=3)],
                         [(0, 1), (1, 1), (0, 2)])
        self.assertEqual(pair_order(local, remote, max_pairs=0), [])
        # Only the first MAX_REMOTE remote candidates are looked at.
        late = [C("udp:[2600:1::9]:1")] * MAX_REMOTE + [C("udp:198.51.100.9:1", "srflx")]
        self.assertEqual(pair_order(local, late), [])
        self.assertEqual(len(pair_order(local, late[1:])), 2)


class RemoteTargetsTests(SynchronousTestCase):
    # (crust.address.is_global counts 2001:db8::/32 as private, so a global IPv6 prefix here.)
    REMOTE = (
        C("udp:10.9.9.9:1"),
        C("udp:[2600:1::9]:6"),
        C("udp:203.0.113.4:2"),
        C("udp:198.51.100.2:3", "srflx"),
        C("tcp:198.51.100.2:3", "srflx"),
        C("udp:198.51.100.2:4", "mapped"),
        C("udp:192.168.1.9:5"),
        C("udp:127.0.0.1:7"),
    )

    def test_order_with_our_addresses(self):
        ours = [A("tcp:192.168.1.5:4242"), A("udp:[2600:1::5]:4242")]
        self.assertEqual([str(a) for a in remote_targets(self.REMOTE, "udp", local_addresses=ours)], [
            "udp:192.168.1.9:5", "udp:198.51.100.2:4", "udp:198.51.100.2:3", "udp:[2600:1::9]:6",
            "udp:203.0.113.4:2", "udp:10.9.9.9:1",
        ])

    def test_without_our_addresses_private_hosts_come_last(self):
        self.assertEqual([str(a) for a in remote_targets(self.REMOTE, "udp")], [
            "udp:198.51.100.2:4", "udp:198.51.100.2:3", "udp:[2600:1::9]:6", "udp:203.0.113.4:2",
            "udp:10.9.9.9:1", "udp:192.168.1.9:5",
        ])

    def test_families(self):
        v4 = remote_targets(self.REMOTE, "udp", local_families={4})
        self.assertNotIn(A("udp:[2600:1::9]:6"), v4)
        self.assertEqual(len(v4), 5)
        self.assertEqual(remote_targets(self.REMOTE, "udp", local_families={6}), [A("udp:[2600:1::9]:6")])

    def test_transport(self):
        self.assertEqual(remote_targets(self.REMOTE, "tcp"), [A("tcp:198.51.100.2:3")])

    def test_loopback_only_when_we_are_on_loopback(self):
        self.assertNotIn(A("udp:127.0.0.1:7"), remote_targets(self.REMOTE, "udp"))
        first = remote_targets(self.REMOTE, "udp", local_addresses=[A("udp:127.0.0.1:1")])[0]
        self.assertEqual(first, A("udp:127.0.0.1:7"))
        # On IPv6 loopback only: IPv4 loopback is still not ours to try.
        self.assertNotIn(A("udp:127.0.0.1:7"), remote_targets(self.REMOTE, "udp", local_addresses=[A("udp:[::1]:1")]))

    def test_dedup_and_cap(self):
        remote = [C("udp:203.0.113.9:1"), C("udp:203.0.113.9:1", "srflx"), C("udp:203.0.113.9:1", "prflx")]
        self.assertEqual(remote_targets(remote, "udp"), [A("udp:203.0.113.9:1")])
        many = [C(f"udp:198.51.100.9:{p}", "srflx") for p in range(1, 50)]
        self.assertEqual(len(remote_targets(many, "udp")), MAX_PAIRS)
        self.assertEqual(remote_targets(many, "udp", max_targets=2), [A("udp:198.51.100.9:1"), A("udp:198.51.100.9:2")])

    def test_unusable_skipped(self):
        remote = [C("udp:[fe80::1]:1"), C("udp:224.0.0.1:1"), C("udp:0.0.0.0:1"), C("udp:[::ffff:10.0.0.9]:1")]
        self.assertEqual(remote_targets(remote, "udp", local_addresses=[A("udp:[fe80::2]:1")]), [])


_HOSTS = st.sampled_from([
    "10.0.0.2", "10.0.0.9", "10.0.1.9", "192.168.1.5", "198.51.100.2", "203.0.113.4", "127.0.0.1",
    "fd00::2", "fd00::9", "fd00:0:0:1::9", "2600:1::9", "::1", "fe80::1", "::ffff:10.0.0.9", "224.0.0.1",
])


def _candidate(host, port, kind, transport):
    return Candidate(Address(transport, host, port), kind)


_CANDIDATE = st.builds(_candidate, _HOSTS, st.integers(1, 4), st.sampled_from(list(CandidateKind)),
                       st.sampled_from(["udp", "tcp"]))


class PairPropertyTests(SynchronousTestCase):
    @examples(300)
    @given(st.lists(st.tuples(st.integers(0, 3), _CANDIDATE), max_size=8), st.lists(_CANDIDATE, max_size=80),
           st.integers(0, 40))
    def test_invariants(self, local, remote, max_pairs):
        pairs = pair_order(local, remote, max_pairs)
        self.assertLessEqual(len(pairs), max_pairs)
        slots = [(k, r.address) for k, r in pairs]
        self.assertEqual(len(slots), len(set(slots)))
        for key, r in pairs:
            self.assertIn(r, remote[:MAX_REMOTE])
            mates = [c.address for k, c in local if k == key]
            self.assertTrue(any(m.transport == r.address.transport and m.ip.version == r.address.ip.version
                                for m in mates))
            if r.address.is_loopback:
                self.assertTrue(any(m.is_loopback for m in mates))

    @examples(300)
    @given(st.lists(_CANDIDATE, max_size=80), st.sampled_from(["udp", "tcp"]), st.lists(_HOSTS, max_size=4))
    def test_targets_invariants(self, remote, transport, ours):
        local = [Address("udp", h, 1) for h in ours]
        targets = remote_targets(remote, transport, local_families={4}, local_addresses=local)
        self.assertLessEqual(len(targets), MAX_PAIRS)
        self.assertEqual(len(targets), len(set(targets)))
        for a in targets:
            self.assertEqual(a.transport, transport)
            self.assertEqual(a.ip.version, 4)
            self.assertIn(a, [c.address for c in remote[:MAX_REMOTE]])
