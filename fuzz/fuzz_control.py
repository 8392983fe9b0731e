"""
atheris target: the control socket (crust.node.control), both ends: request
lines to the node's side (with a node that does nothing), or answer lines
to the client's side; the first byte picks which.  Every answer must be a
JSON object with C{ok}, and no request may end in an C{internal} error.
"""

import json

from _target import chunked, instrumented, main, selected

with instrumented():
    from crust.address import Address
    from crust.connection_info import PubConnectionInfo
    from crust.errors import PeerNotConnected
    from crust.identity import PeerId
    from crust.node.control.client import ControlClient
    from crust.node.control.protocol import EventHub
    from crust.node.control.server import ControlFactory

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

ME = PeerId(b"\x01" * 32)


class Service:
    bootstrap_cache = None

    def connected_peers(self):
        return []

    def peer_details(self, peer_id):
        return None

    def queued_bytes(self, peer_id):
        return 0

    def send(self, peer_id, data, priority):
        raise PeerNotConnected(f"not connected to {peer_id}")

    def disconnect(self, peer_id):
        return False


class Node:
    def __init__(self):
        self.clock = Clock()
        self.service = Service()
        self.events = EventHub(self.clock)

    def describe(self):
        return succeed({"peer_id": str(ME)})

    def connection_info(self):
        return succeed(PubConnectionInfo(ME, (Address("tcp", "127.0.0.1", 5000),)))

    def connect(self, info, timeout):
        return Deferred()

    def bootstrap(self, blacklist, role):
        return fail(PeerNotConnected("no bootstrap peer"))


def _strict(text):
    raise ValueError(f"not JSON: {text}")


def server(data: bytes) -> None:
    node = Node()
    proto = ControlFactory(node, max_request=4096).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    for chunk in chunked(data):
        proto.dataReceived(chunk)
        node.clock.advance(1)
    node.clock.advance(3600)
    for line in transport.value().splitlines():
        answer = json.loads(line, parse_constant=_strict)
        if not isinstance(answer, dict) or ("ok" not in answer and "event" not in answer):
            raise AssertionError(f"not an answer: {line!r}")
        if answer.get("code") == "internal":
            raise AssertionError(f"an internal error: {line!r}")


def client(data: bytes) -> None:
    client = ControlClient()
    client.makeConnection(StringTransport())
    client.request("info").addErrback(lambda failure: None)
    for chunk in chunked(data):
        client.dataReceived(chunk)


def test_one(data: bytes) -> None:
    side, rest = selected(data, (server, client))
    side(rest)


if __name__ == "__main__":
    main(test_one)
