"""
Candidates and NAT behaviour: their JSON, alone and inside connection info.
"""

import json
import time

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.candidates import (
    Candidate,
    CandidateKind,
    FilteringKind,
    MappingKind,
    NatBehaviour,
    NatInfo,
    PortAllocation,
    candidates_from_json,
    candidates_to_json,
    nat_info_from_json,
    nat_info_to_json,
)
from crust.connection_info import PubConnectionInfo
from crust.errors import InvalidConnectionInfo
from crust.identity import Identity

from tests import examples

PEER = Identity.generate().peer_id


def A(text):
    return Address.parse(text)


def C(text, kind="host", source=""):
    return Candidate(A(text), CandidateKind(kind), source)


SAMPLE = (
    C("tcp:10.0.0.2:4242", "host", "local"),
    C("tcp:203.0.113.10:4242", "mapped", "pcp"),
    C("udp:203.0.113.10:5000", "srflx", "echo"),
    C("udp:[2001:db8::5]:5000", "prflx"),
)


class CandidateTests(SynchronousTestCase):
    def test_kind_from_text(self):
        self.assertIs(Candidate(A("udp:1.2.3.4:5"), "srflx").kind, CandidateKind.SRFLX)
        self.assertIs(Candidate(A("udp:1.2.3.4:5"), "relay").kind, CandidateKind.RELAY)
        self.assertRaises(ValueError, Candidate, A("udp:1.2.3.4:5"), "future")
        self.assertRaises(TypeError, Candidate, "udp:1.2.3.4:5", CandidateKind.HOST)

    def test_json_round_trip(self):
        obj = candidates_to_json(SAMPLE)
        self.assertEqual(obj[0], ["tcp:10.0.0.2:4242", "host", "local"])
        self.assertEqual(obj[3], ["udp:[2001:db8::5]:5000", "prflx"])  # no source: two elements
        self.assertEqual(candidates_from_json(json.loads(json.dumps(obj))), SAMPLE)

    def test_unknown_kind_skipped(self):
        obj = [["udp:1.2.3.4:5", "future", "turn"], ["udp:1.2.3.4:6", "srflx"]]
        self.assertEqual(candidates_from_json(obj), (C("udp:1.2.3.4:6", "srflx"),))

    def test_duplicates_dropped_order_kept(self):
        obj = [["udp:1.2.3.4:6", "srflx"], ["tcp:1.2.3.4:5", "host"], ["udp:1.2.3.4:6", "srflx"]]
        self.assertEqual(candidates_from_json(obj), (C("udp:1.2.3.4:6", "srflx"), C("tcp:1.2.3.4:5")))

    def test_malformed_entries_named(self):
        cases = [
            ("x", '"cands" must be a list'),
            ([["udp:1.2.3.4:5", "host"]] * 65, "at most 64"),
            ([["udp:1.2.3.4:5", "host"], "udp:1.2.3.4:6"], "entry 1 must be a list"),
            ([["udp:1.2.3.4:5"]], "entry 0 must be a list"),
            ([["udp:1.2.3.4:5", "host", "a", "b"]], "entry 0 must be a list"),
            ([["udp:1.2.3.4:5", 3]], "entry 0: the kind must be text"),
            ([["udp:1.2.3.4:5", "host", None]], "entry 0: the source must be text"),
            ([["udp:1.2.3.4:5", "host", "s" * 33]], "entry 0: the source is over 32"),
            ([["udp:1.2.3.4:5", "host"], ["udp:1.2.3.4", "host"]], "entry 1: bad address"),
            ([[17, "host"]], "entry 0: bad address"),
            # A bad address is an error even when the kind is one we skip.
            ([["udp:nowhere:5", "relay"]], "entry 0: bad address"),
        ]
        for obj, fragment in cases:
            e = self.assertRaises(InvalidConnectionInfo, candidates_from_json, obj)
            self.assertIn(fragment, str(e))

    def test_max_entries(self):
        obj = [[f"udp:1.2.3.4:{p}", "host"] for p in range(1, 5)]
        self.assertEqual(len(candidates_from_json(obj, max_entries=4)), 4)
        e = self.assertRaises(InvalidConnectionInfo, candidates_from_json, obj, max_entries=3)
        self.assertIn("at most 3", str(e))


class NatInfoTests(SynchronousTestCase):
    def test_round_trip_omits_unknown(self):
        info = NatInfo(
            udp=NatBehaviour(MappingKind.EIM, FilteringKind.APDF, PortAllocation.PRESERVED),
            tcp=NatBehaviour(MappingKind.EDM, ports=PortAllocation.SEQUENTIAL, delta=-2),
        )
        obj = nat_info_to_json(info)
        self.assertEqual(obj, {
            "udp": {"map": "eim", "filter": "apdf", "ports": "preserved"},
            "tcp": {"map": "edm", "ports": "sequential", "delta": -2},
        })
        self.assertEqual(nat_info_from_json(json.loads(json.dumps(obj))), info)

    def test_public_and_empty(self):
        self.assertEqual(nat_info_to_json(NatInfo()), {})
        self.assertEqual(nat_info_from_json({}), NatInfo())
        info = NatInfo(udp=NatBehaviour(public=True))
        self.assertEqual(nat_info_to_json(info), {"udp": {"public": True}})
        self.assertEqual(nat_info_from_json({"udp": {"public": True}}), info)

    def test_for_transport(self):
        info = NatInfo(udp=NatBehaviour(MappingKind.EIM), tcp=NatBehaviour(MappingKind.EDM))
        self.assertEqual(info.for_transport("udp").mapping, MappingKind.EIM)
        self.assertEqual(info.for_transport("tcp").mapping, MappingKind.EDM)
        self.assertRaises(ValueError, info.for_transport, "sctp")

    def test_unknown_keys_and_values_read_as_unknown(self):
        obj = {"udp": {"map": "quantum", "filter": "eif", "ports": "fancy", "hairpin": True},
               "sctp": {"map": "eim"}, "tcp": None}
        info = nat_info_from_json(obj)
        self.assertEqual(info, NatInfo(udp=NatBehaviour(filtering=FilteringKind.EIF)))

    def test_bad_values_named(self):
        cases = [
            ([], '"nat" must be an object'),
            ({"udp": "eim"}, '"nat".udp must be an object'),
            ({"tcp": {"map": 1}}, '"nat".tcp.map must be text'),
            ({"udp": {"filter": ["eif"]}}, '"nat".udp.filter must be text'),
            ({"udp": {"ports": {}}}, '"nat".udp.ports must be text'),
            ({"udp": {"delta": True}}, '"nat".udp.delta must be an integer'),
            ({"udp": {"delta": 1.5}}, '"nat".udp.delta must be an integer'),
            ({"udp": {"delta": 1001}}, '"nat".udp.delta is out of range'),
            ({"udp": {"delta": -1001}}, '"nat".udp.delta is out of range'),
            ({"tcp": {"public": "yes"}}, '"nat".tcp.public must be true or false'),
        ]
        for obj, fragment in cases:
            e = self.assertRaises(InvalidConnectionInfo, nat_info_from_json, obj)
            self.assertIn(fragment, str(e))

    def test_delta_bounds_accepted(self):
        self.assertEqual(nat_info_from_json({"udp": {"delta": 1000}}).udp.delta, 1000)
        self.assertEqual(nat_info_from_json({"udp": {"delta": -1000}}).udp.delta, -1000)


class ConnectionInfoCandidateTests(SynchronousTestCase):
    def test_round_trip_with_candidates_and_nat(self):
        nat = NatInfo(udp=NatBehaviour(MappingKind.EIM, FilteringKind.APDF, PortAllocation.PRESERVED))
        info = PubConnectionInfo(PEER, (A("tcp:10.0.0.2:4242"),), candidates=SAMPLE, nat=nat)
        text = info.to_json()
        self.assertNotIn("\n", text)
        body = json.loads(text)
        # addrs keeps every address: the given ones first, then each candidate's.
        self.assertEqual(body["addrs"], ["tcp:10.0.0.2:4242", "tcp:203.0.113.10:4242",
                                         "udp:203.0.113.10:5000", "udp:[2001:db8::5]:5000"])
        self.assertEqual(body["cands"], candidates_to_json(SAMPLE))
        self.assertEqual(body["nat"], {"udp": {"map": "eim", "filter": "apdf", "ports": "preserved"}})
        again = PubConnectionInfo.from_json(text)
        self.assertEqual(again, info)
        self.assertEqual(again.candidates, SAMPLE)
        self.assertEqual(again.nat, nat)
        self.assertEqual(again.extra, {})

    def test_design_example_parses(self):
        text = (
            '{"crust":1,"id":"PEER","addrs":["tcp:10.0.0.2:4242","tcp:203.0.113.10:4242","udp:203.0.113.10:5000"],'
            '"cands":[["tcp:10.0.0.2:4242","host","local"],["udp:203.0.113.10:5000","srflx","echo"]],'
            '"nat":{"udp":{"map":"eim","filter":"apdf","ports":"preserved"},"tcp":{"map":"edm","ports":"random"}}}'
        ).replace("PEER", str(PEER))
        info = PubConnectionInfo.from_json(text)
        self.assertEqual(len(info.addresses), 3)
        self.assertEqual(info.candidates_for("udp"), (C("udp:203.0.113.10:5000", "srflx", "echo"),))
        self.assertEqual(info.candidates_for("tcp"), (C("tcp:10.0.0.2:4242", "host", "local"),))
        self.assertEqual(info.nat.tcp, NatBehaviour(MappingKind.EDM, ports=PortAllocation.RANDOM))

    def test_old_format_derives_host_candidates(self):
        text = json.dumps({"crust": 1, "id": str(PEER), "addrs": ["tcp:10.0.0.2:1", "udp:198.51.100.1:2"]})
        info = PubConnectionInfo.from_json(text)
        self.assertEqual(info.candidates, (C("tcp:10.0.0.2:1"), C("udp:198.51.100.1:2")))
        self.assertIsNone(info.nat)
        self.assertEqual(info.candidates_for("udp"), (C("udp:198.51.100.1:2"),))

    def test_plain_info_writes_no_new_keys(self):
        info = PubConnectionInfo(PEER, (A("tcp:10.0.0.2:1"), A("udp:[::1]:2")))
        self.assertEqual(info.candidates, (C("tcp:10.0.0.2:1"), C("udp:[::1]:2")))
        self.assertEqual(json.loads(info.to_json()),
                         {"crust": 1, "id": str(PEER), "addrs": ["tcp:10.0.0.2:1", "udp:[::1]:2"]})

    def test_empty_nat_written_as_known(self):
        info = PubConnectionInfo(PEER, (A("tcp:10.0.0.2:1"),), nat=NatInfo())
        self.assertEqual(json.loads(info.to_json())["nat"], {})
        self.assertEqual(PubConnectionInfo.from_json(info.to_json()).nat, NatInfo())

    def test_null_nat_is_absent(self):
        text = json.dumps({"crust": 1, "id": str(PEER), "addrs": [], "nat": None})
        info = PubConnectionInfo.from_json(text)
        self.assertIsNone(info.nat)
        self.assertNotIn("nat", info.extra)

    def test_candidate_address_not_in_addrs_is_added(self):
        text = json.dumps({"crust": 1, "id": str(PEER), "addrs": ["tcp:10.0.0.2:1"],
                           "cands": [["udp:203.0.113.9:7", "srflx", "stun"]]})
        info = PubConnectionInfo.from_json(text)
        self.assertEqual(info.addresses, (A("tcp:10.0.0.2:1"), A("udp:203.0.113.9:7")))
        self.assertEqual(info.udp_addresses(), (A("udp:203.0.113.9:7"),))
        self.assertEqual(info.candidates, (C("udp:203.0.113.9:7", "srflx", "stun"),))
        self.assertEqual(PubConnectionInfo.from_json(info.to_json()), info)

    def test_unknown_kinds_skipped_addresses_kept(self):
        text = json.dumps({"crust": 1, "id": str(PEER), "addrs": ["udp:10.0.0.2:1", "udp:192.0.2.7:9"],
                           "cands": [["udp:10.0.0.2:1", "host"], ["udp:192.0.2.7:9", "future"]]})
        info = PubConnectionInfo.from_json(text)
        self.assertEqual(info.candidates, (C("udp:10.0.0.2:1"),))
        self.assertEqual(info.addresses, (A("udp:10.0.0.2:1"), A("udp:192.0.2.7:9")))
        self.assertNotIn("cands", info.extra)

    def test_cands_and_nat_not_in_extra(self):
        text = json.dumps({"crust": 1, "id": str(PEER), "addrs": [], "cands": [], "nat": {}, "relay": [1]})
        info = PubConnectionInfo.from_json(text)
        self.assertEqual(info.extra, {"relay": [1]})
        self.assertEqual(json.loads(info.to_json())["relay"], [1])

    def test_extra_never_overrides_known_keys(self):
        info = PubConnectionInfo(PEER, (A("tcp:10.0.0.2:1"),), {"addrs": [], "cands": "x", "later": 2})
        body = json.loads(info.to_json())
        self.assertEqual(body["addrs"], ["tcp:10.0.0.2:1"])
        self.assertNotIn("cands", body)
        self.assertEqual(body["later"], 2)

    def test_address_total_capped(self):
        addrs = [f"tcp:10.0.0.1:{p}" for p in range(1, 41)]
        cands = [[f"udp:10.0.0.1:{p}", "host"] for p in range(1, 41)]
        text = json.dumps({"crust": 1, "id": str(PEER), "addrs": addrs, "cands": cands})
        e = self.assertRaises(InvalidConnectionInfo, PubConnectionInfo.from_json, text)
        self.assertIn("together have 80 addresses, at most 64", str(e))

    def test_errors_in_new_keys_named(self):
        cases = {
            json.dumps({"crust": 1, "id": str(PEER), "cands": {}}): '"cands" must be a list',
            json.dumps({"crust": 1, "id": str(PEER), "cands": [["udp:1.2.3.4:5", "host", 9]]}): "entry 0",
            json.dumps({"crust": 1, "id": str(PEER), "nat": "eim"}): '"nat" must be an object',
            json.dumps({"crust": 1, "id": str(PEER), "nat": {"udp": {"delta": 5000}}}): "delta",
        }
        for text, fragment in cases.items():
            e = self.assertRaises(InvalidConnectionInfo, PubConnectionInfo.from_json, text)
            self.assertIn(fragment, str(e))

    def test_deep_nesting_is_an_error(self):
        e = self.assertRaises(InvalidConnectionInfo, PubConnectionInfo.from_json, "[" * 60000)
        self.assertIn("arrays and objects", str(e))
        e = self.assertRaises(InvalidConnectionInfo, PubConnectionInfo.from_json, '{"x":' + "[" * 10 + "]" * 10 + "}")
        self.assertIn("nested deeper", str(e))


# Arbitrary JSON-ish values, with the strings the parsers look for mixed in so
# that generated input reaches past the first type check.
_WORDS = st.sampled_from([
    "host", "mapped", "srflx", "prflx", "relay", "eim", "edm", "eif", "adf", "apdf", "preserved",
    "sequential", "random", "unknown", "udp", "tcp", "map", "filter", "ports", "delta", "public",
    "udp:1.2.3.4:5", "tcp:[::1]:80", "udp:10.0.0.1:0", "tcp:1.2.3.4", "udp:[fe80::1]:9", "", "\x00",
])
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2000, 2000), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=40), _WORDS,
)
_JSONISH = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(_WORDS, st.text(max_size=8)), inner, max_size=6),
    ),
    max_leaves=40,
)
_GOOD_ADDRESS = st.sampled_from(["udp:1.2.3.4:5", "tcp:[::1]:80", "udp:10.0.0.1:9", "tcp:203.0.113.7:4242"])
_KIND = st.sampled_from(["host", "mapped", "srflx", "prflx", "relay", "future"])
_CAND_ENTRY = st.one_of(
    st.tuples(_GOOD_ADDRESS, _KIND).map(list),
    st.tuples(_GOOD_ADDRESS, _KIND, st.sampled_from(["", "stun", "pcp"])).map(list),
    st.lists(st.one_of(_WORDS, _SCALARS), min_size=0, max_size=4),
)
_CANDS = st.one_of(_JSONISH, st.lists(_CAND_ENTRY, max_size=70), st.lists(st.one_of(_CAND_ENTRY, _JSONISH), max_size=8))
_NAT_VALUE = st.one_of(_WORDS, _SCALARS)
_BEHAVIOUR = st.one_of(
    _JSONISH,
    st.dictionaries(st.sampled_from(["map", "filter", "ports", "delta", "public", "other"]), _NAT_VALUE, max_size=6),
    st.fixed_dictionaries({}, optional={
        "map": st.sampled_from(["eim", "edm", "unknown", "later"]),
        "filter": st.sampled_from(["eif", "adf", "apdf"]),
        "ports": st.sampled_from(["preserved", "sequential", "random"]),
        "delta": st.integers(-1000, 1000),
        "public": st.booleans(),
    }),
)
_NAT = st.one_of(_JSONISH, st.dictionaries(st.sampled_from(["udp", "tcp", "sctp"]), _BEHAVIOUR, max_size=3))
_OPTIONAL = {
    "addrs": st.one_of(st.lists(_GOOD_ADDRESS, max_size=8), st.lists(_WORDS, max_size=8), _JSONISH),
    "cands": _CANDS,
    "nat": _NAT,
    "more": _JSONISH,
}
# Well formed at the top, so that the new keys are reached.
_BODY = st.fixed_dictionaries({"crust": st.just(1), "id": st.just(str(PEER))}, optional=_OPTIONAL)
_ANY_BODY = st.one_of(
    st.fixed_dictionaries({}, optional={"crust": _SCALARS, "id": st.one_of(st.just(str(PEER)), _SCALARS), **_OPTIONAL}),
    _JSONISH,
)

class ParserPropertyTests(SynchronousTestCase):
    """Whatever arrives, the parsers answer or raise InvalidConnectionInfo, quickly."""

    def check(self, parse, value):
        started = time.perf_counter()
        try:
            parse(value)
        except InvalidConnectionInfo:
            pass
        self.assertLess(time.perf_counter() - started, 1.0)

    @examples(500)
    @given(_CANDS)
    def test_candidates_from_json(self, value):
        self.check(candidates_from_json, value)

    @examples(500)
    @given(_NAT)
    def test_nat_info_from_json(self, value):
        self.check(nat_info_from_json, value)

    @examples(500)
    @given(_BODY)
    def test_connection_info_from_json(self, body):
        self.check(PubConnectionInfo.from_json, json.dumps(body))
        self.check(PubConnectionInfo.from_dict, body)

    @examples(300)
    @given(_ANY_BODY)
    def test_connection_info_from_anything(self, body):
        self.check(PubConnectionInfo.from_json, json.dumps(body))

    @examples(300)
    @given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
    def test_connection_info_from_text(self, text):
        self.check(PubConnectionInfo.from_json, text)

    @examples(200)
    @given(_BODY)
    def test_accepted_info_round_trips(self, body):
        try:
            info = PubConnectionInfo.from_dict(body)
        except InvalidConnectionInfo:
            return
        again = PubConnectionInfo.from_json(info.to_json())
        self.assertEqual(again, info)
        self.assertEqual(again.candidates, info.candidates)
        self.assertEqual(again.nat, info.nat)
