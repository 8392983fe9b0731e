import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.connection_info import PubConnectionInfo
from crust.errors import InvalidConnectionInfo
from crust.identity import Identity
from tests import examples
from tests.hostile_json import HOSTILE_DOCUMENTS, hostile_json, only_refused


class AddressTests(SynchronousTestCase):
    def test_parse_and_format(self):
        self.assertEqual(str(Address.parse("tcp:1.2.3.4:5")), "tcp:1.2.3.4:5")
        self.assertEqual(str(Address.parse("udp:[::1]:80")), "udp:[::1]:80")
        self.assertEqual(Address.parse("9.9.9.9:1", default_transport="tcp").transport, "tcp")

    def test_bad(self):
        for bad in ["1.2.3.4:5", "tcp:1.2.3.4", "tcp:host:5", "tcp:1.2.3.4:0", "tcp:1.2.3.4:70000",
                    "sctp:1.2.3.4:5", "tcp:[::1:5", "tcp:::1:5", 7]:
            self.assertRaises(ValueError, Address.parse, bad)


class ConnectionInfoTests(SynchronousTestCase):
    def setUp(self):
        self.peer = Identity.generate().peer_id

    def test_round_trip_one_line(self):
        info = PubConnectionInfo(self.peer, (Address.parse("tcp:127.0.0.1:4000"), Address.parse("udp:[::1]:5")))
        text = info.to_json()
        self.assertNotIn("\n", text)
        again = PubConnectionInfo.from_json(text)
        self.assertEqual(again, info)

    def test_unknown_keys_kept_and_ignored(self):
        text = json.dumps({"crust": 2, "id": str(self.peer), "addrs": [], "punch": {"x": 1}})
        info = PubConnectionInfo.from_json(text)
        self.assertEqual(info.extra, {"punch": {"x": 1}})

    def test_errors_name_the_problem(self):
        cases = {
            "not json": "not JSON",
            "[]": "JSON object",
            json.dumps({"id": str(self.peer)}): "version",
            json.dumps({"crust": 1, "id": "nope"}): '"id"',
            json.dumps({"crust": 1, "id": str(self.peer), "addrs": "x"}): "list",
            json.dumps({"crust": 1, "id": str(self.peer), "addrs": ["tcp:1.2.3.4"]}): "bad address",
            json.dumps({"crust": 1, "id": str(self.peer), "addrs": ["tcp:1.1.1.1:1"] * 65}): "at most",
            "x" * 70000: "over",
            b"\xff\xfe": "UTF-8",
        }
        for text, fragment in cases.items():
            e = self.assertRaises(InvalidConnectionInfo, PubConnectionInfo.from_json, text)
            self.assertIn(fragment, str(e))


_PEER = Identity.from_seed(b"\x05" * 32).peer_id
_INFO = {"crust": 1, "id": str(_PEER), "addrs": ["tcp:1.2.3.4:5"], "cands": [["tcp:1.2.3.4:5", "host"]],
         "nat": {"udp": {"map": "eim"}}}


class HostileJsonTests(SynchronousTestCase):
    """Connection info of hostile JSON is an InvalidConnectionInfo that says why, quickly."""

    def test_hostile_documents(self):
        for doc in HOSTILE_DOCUMENTS:
            for text in (doc, doc.decode("utf-8", "replace")):
                only_refused(self, lambda: PubConnectionInfo.from_json(text), InvalidConnectionInfo)

    def test_deep_extra_is_refused(self):
        """Deep nesting under an unknown key was read, and could fail later as an internal error."""
        text = json.dumps(_INFO)[:-1] + ', "x": ' + "[" * 900 + "]" * 900 + "}"
        e = self.assertRaises(InvalidConnectionInfo, PubConnectionInfo.from_json, text)
        self.assertIn("arrays and objects", str(e))
        text = json.dumps(_INFO)[:-1] + ', "x": ' + "[" * 6 + "]" * 6 + "}"
        self.assertIn("nested deeper", str(self.assertRaises(InvalidConnectionInfo, PubConnectionInfo.from_json,
                                                             text)))
        text = json.dumps(_INFO)[:-1] + ', "x": ' + "[" * 5 + "]" * 5 + "}"
        self.assertEqual(PubConnectionInfo.from_json(text).extra, {"x": [[[[[]]]]]})

    def test_huge_version_number_is_named(self):
        text = json.dumps(_INFO).replace('"crust": 1', '"crust": ' + "9" * 5000)
        self.assertIn("number too long", str(self.assertRaises(InvalidConnectionInfo, PubConnectionInfo.from_json,
                                                               text)))

    def test_nan_and_repeated_keys(self):
        for text, fragment in ((json.dumps(_INFO)[:-1] + ', "x": NaN}', "NaN"),
                               (json.dumps(_INFO)[:-1] + ', "id": "x"}', "repeated")):
            self.assertIn(fragment, str(self.assertRaises(InvalidConnectionInfo, PubConnectionInfo.from_json, text)))

    @examples(300)
    @given(hostile_json(_INFO), st.booleans())
    def test_hostile(self, doc, as_text):
        text = doc.decode("utf-8", "replace") if as_text else doc
        only_refused(self, lambda: PubConnectionInfo.from_json(text), InvalidConnectionInfo)
