import json

from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.connection_info import PubConnectionInfo
from crust.errors import InvalidConnectionInfo
from crust.identity import Identity


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
