"""
Tests for L{crust.node.control}: the control protocol over a StringTransport
(requests, garbage, oversize, limits, watching), event encoding, endpoint
parsing, and the Twisted client against a real server on a UNIX socket.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import stat
import tempfile
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from hypothesis import given
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from crust.address import Address
from crust.config import Config
from crust.connection_info import PubConnectionInfo
from crust.node.control import (
    DEFAULT_MAX_REQUEST,
    MAX_IN_FLIGHT,
    ControlClient,
    ControlError,
    ControlFactory,
    ControlServer,
    ControlTimeout,
    EventHub,
    clear_stale_socket,
    connect_control,
    event_to_json,
    node_commands,
    parse_control_endpoint,
)
from crust.node.datadir import NodeAlreadyRunning
from crust.errors import (
    ConnectFailed,
    CrustError,
    InvalidPriority,
    MessageTooLarge,
    PeerNotConnected,
    SendQueueFull,
)
from crust.identity import Identity, PeerId
from crust.interfaces import ICrustObserver
from crust.observer import EVENT_NAMES
from crust.node.control.protocol import CLOSE_GRACE, IDLE_TIMEOUT, REQUEST_TIMEOUT
from crust.roles import Role
from tests import examples
from tests.hostile_json import HOSTILE_DOCUMENTS, hostile_json, only_refused

ME = Identity.from_seed(b"\x01" * 32).peer_id
PEER = Identity.from_seed(b"\x02" * 32).peer_id
OTHER = Identity.from_seed(b"\x03" * 32).peer_id
THEIR_INFO = PubConnectionInfo(PEER, (Address("tcp", "127.0.0.1", 4242),))


class FakeService:
    """The parts of L{crust.Service} the control commands use."""

    def __init__(self) -> None:
        self.active: dict[PeerId, dict[str, Any]] = {}
        self.sent: list[tuple[PeerId, bytes, int]] = []
        self.disconnected: list[PeerId] = []
        self.send_error: Optional[Exception] = None

    def connected_peers(self) -> list[PeerId]:
        return list(self.active)

    def peer_details(self, peer_id: PeerId) -> Optional[dict[str, Any]]:
        d = self.active.get(peer_id)
        return None if d is None else dict(d, peer_id=str(peer_id))

    def send(self, peer_id: PeerId, data: bytes, priority: int, signed: Any = False) -> None:
        if self.send_error is not None:
            raise self.send_error
        if peer_id not in self.active:
            raise PeerNotConnected(f"not connected to {peer_id}")
        if not 0 <= priority <= 255:
            raise InvalidPriority("bad priority")
        self.sent.append((peer_id, data, priority, signed) if signed else (peer_id, data, priority))

    def queued_bytes(self, peer_id: PeerId) -> int:
        return sum(len(sent[1]) for sent in self.sent if sent[0] == peer_id)

    def disconnect(self, peer_id: PeerId) -> bool:
        if peer_id in self.active:
            del self.active[peer_id]
            self.disconnected.append(peer_id)
            return True
        return False


class FakeNode:
    """The parts of L{crust.node.node.Node} the control commands use."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.service = FakeService()
        self.events = EventHub(self.clock)
        self.connects: list[tuple[PubConnectionInfo, Optional[float]]] = []
        self.connect_result: Any = None  # None: a Deferred that never fires
        self.pending: list[Deferred] = []

    def describe(self) -> Deferred:
        return succeed({"peer_id": str(ME), "peers": len(self.service.active)})

    def connection_info(self) -> Deferred:
        return succeed(PubConnectionInfo(ME, (Address("tcp", "127.0.0.1", 5000),)))

    def connect(self, info: PubConnectionInfo, timeout: Optional[float]) -> Deferred:
        self.connects.append((info, timeout))
        if isinstance(self.connect_result, Exception):
            return fail(self.connect_result)
        if self.connect_result is not None:
            return succeed(self.connect_result)
        d: Deferred = Deferred()
        self.pending.append(d)
        return d


class ProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = FakeNode()
        self.factory = ControlFactory(self.node, max_request=4096)
        self.proto, self.transport = self.connect()

    def connect(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def lines(self, transport: Optional[StringTransport] = None) -> list[dict[str, Any]]:
        t = transport or self.transport
        data = t.value()
        t.clear()
        self.assertTrue(data == b"" or data.endswith(b"\n"), data)
        return [json.loads(line) for line in data.splitlines()]

    def ask(self, body: Any, raw: bool = False) -> list[dict[str, Any]]:
        data = body if raw else json.dumps(body).encode() + b"\n"
        self.proto.dataReceived(data)
        return self.lines()

    def one(self, body: Any, raw: bool = False) -> dict[str, Any]:
        found = self.ask(body, raw)
        self.assertEqual(len(found), 1, found)
        return found[0]

    def assertError(self, response: dict[str, Any], code: str, *fragments: str) -> None:
        self.assertIs(response["ok"], False, response)
        self.assertEqual(response["code"], code, response)
        for fragment in fragments:
            self.assertIn(fragment, response["error"])

    # -- ordinary requests ------------------------------------------------------------

    def test_ping_echoes_id(self) -> None:
        self.assertEqual(self.one({"id": 7, "cmd": "ping"}),
                         {"id": 7, "ok": True, "result": {"pong": True, "protocol": 1}})
        self.assertEqual(self.one({"id": "abc", "cmd": "ping"})["id"], "abc")
        self.assertIsNone(self.one({"cmd": "ping"})["id"])

    def test_registers_as_streaming_producer(self) -> None:
        self.assertIs(self.transport.producer, self.proto)
        self.assertTrue(self.transport.streaming)

    def test_help_lists_commands(self) -> None:
        result = self.one({"id": 1, "cmd": "help"})["result"]
        for name in ("info", "peers", "connection-info", "connect", "send", "disconnect", "watch", "unwatch"):
            self.assertIn(name, result["commands"])

    def test_info(self) -> None:
        self.assertEqual(self.one({"id": 1, "cmd": "info"})["result"], {"peer_id": str(ME), "peers": 0})

    def test_unknown_argument(self) -> None:
        self.assertError(self.one({"id": 1, "cmd": "info", "verbose": True}), "bad-request", "'verbose'")

    def test_peers(self) -> None:
        self.node.service.active[PEER] = {"address": "tcp:127.0.0.1:4242", "initiator": True}
        result = self.one({"id": 1, "cmd": "peers"})["result"]
        self.assertEqual(result, {"peers": [{"peer_id": str(PEER), "address": "tcp:127.0.0.1:4242",
                                             "initiator": True}]})

    def test_connection_info(self) -> None:
        result = self.one({"id": 1, "cmd": "connection-info"})["result"]
        self.assertEqual(result["connection_info"], {"crust": 1, "id": str(ME), "addrs": ["tcp:127.0.0.1:5000"]})
        # it is the very text connect accepts
        self.assertEqual(PubConnectionInfo.from_dict(result["connection_info"]).peer_id, ME)

    def test_connect_with_object_or_text(self) -> None:
        self.node.connect_result = PEER
        info = json.loads(THEIR_INFO.to_json())
        self.assertEqual(self.one({"id": 1, "cmd": "connect", "info": info})["result"], {"peer_id": str(PEER)})
        self.assertEqual(self.one({"id": 2, "cmd": "connect", "info": THEIR_INFO.to_json(), "timeout": 5})["result"],
                         {"peer_id": str(PEER)})
        self.assertEqual([(i.peer_id, t) for (i, t) in self.node.connects], [(PEER, None), (PEER, 5.0)])

    def test_connect_answers_when_done(self) -> None:
        self.assertEqual(self.ask({"id": 1, "cmd": "connect", "info": THEIR_INFO.to_json()}), [])
        self.assertEqual(self.one({"id": 2, "cmd": "ping"})["id"], 2)  # not blocked behind it
        self.node.pending[0].callback(PEER)
        self.assertEqual(self.lines(), [{"id": 1, "ok": True, "result": {"peer_id": str(PEER)}}])

    def test_connect_bad_info(self) -> None:
        self.assertError(self.one({"id": 1, "cmd": "connect", "info": "not json"}), "bad-request",
                         "bad connection info")
        self.assertError(self.one({"id": 1, "cmd": "connect", "info": {"crust": 1, "id": "x"}}), "bad-request",
                         "bad connection info")
        self.assertError(self.one({"id": 1, "cmd": "connect", "info": 5}), "bad-request")
        self.assertError(self.one({"id": 1, "cmd": "connect"}), "bad-request", "'info'")
        self.assertError(self.one({"id": 1, "cmd": "connect", "info": THEIR_INFO.to_json(), "timeout": -1}),
                         "bad-request", "timeout")
        self.assertEqual(self.node.connects, [])

    def test_connect_failed(self) -> None:
        self.node.connect_result = ConnectFailed(PEER, ["tcp:127.0.0.1:4242: refused"], "could not connect")
        self.assertError(self.one({"id": 1, "cmd": "connect", "info": THEIR_INFO.to_json()}), "connect-failed",
                         "refused")

    def test_connect_timeout(self) -> None:
        self.node.connect_result = ControlTimeout("not connected within 1 s")
        self.assertError(self.one({"id": 1, "cmd": "connect", "info": THEIR_INFO.to_json()}), "timeout")

    def test_send_text(self) -> None:
        self.node.service.active[PEER] = {}
        result = self.one({"id": 1, "cmd": "send", "peer_id": str(PEER), "text": "héllo"})["result"]
        self.assertEqual(result, {"peer_id": str(PEER), "size": 6, "priority": 1, "queued_bytes": 6})
        self.assertEqual(self.node.service.sent, [(PEER, "héllo".encode(), 1)])

    def test_send_base64_with_priority(self) -> None:
        self.node.service.active[PEER] = {}
        data = bytes(range(256))
        body = {"id": 1, "cmd": "send", "peer_id": str(PEER).upper(), "data_b64": base64.b64encode(data).decode(),
                "priority": 3}
        self.assertTrue(self.one(body)["ok"])
        self.assertEqual(self.node.service.sent, [(PEER, data, 3)])

    def test_send_signed(self) -> None:
        self.node.service.active[PEER] = {}
        for signed in (True, "batch"):
            result = self.one({"id": 1, "cmd": "send", "peer_id": str(PEER), "text": "x", "signed": signed})
            self.assertEqual(result["result"]["signed"], signed)
        self.one({"id": 1, "cmd": "send", "peer_id": str(PEER), "text": "y", "signed": False})
        self.assertEqual(self.node.service.sent, [(PEER, b"x", 1, True), (PEER, b"x", 1, "batch"), (PEER, b"y", 1)])
        for bad in (1, 0, 1.0, "yes", "true", [], {}):
            self.assertError(self.one({"id": 1, "cmd": "send", "peer_id": str(PEER), "text": "x", "signed": bad}),
                             "bad-request", "'signed' must be false, true or \"batch\"")
        self.assertEqual(len(self.node.service.sent), 3)

    def test_send_bad_arguments(self) -> None:
        self.node.service.active[PEER] = {}
        p = str(PEER)
        cases = [
            ({"peer_id": p}, "exactly one"),
            ({"peer_id": p, "text": "a", "data_b64": "YQ=="}, "exactly one"),
            ({"peer_id": p, "data_b64": "!!!"}, "base64"),
            ({"peer_id": "nope", "text": "a"}, "bad peer_id"),
            ({"peer_id": 5, "text": "a"}, "must be a string"),
            ({"text": "a"}, "'peer_id'"),
            ({"peer_id": p, "text": "a", "priority": 256}, "between 0 and 255"),
            ({"peer_id": p, "text": "a", "priority": "high"}, "integer"),
            ({"peer_id": p, "text": "a", "priority": True}, "integer"),
            ({"peer_id": p, "text": 7}, "must be a string"),
        ]
        for args, fragment in cases:
            self.assertError(self.one(dict(args, id=1, cmd="send")), "bad-request", fragment)
        self.assertEqual(self.node.service.sent, [])

    def test_send_failures_map_to_codes(self) -> None:
        self.assertError(self.one({"id": 1, "cmd": "send", "peer_id": str(OTHER), "text": "x"}),
                         "not-connected", str(OTHER))
        self.node.service.active[PEER] = {}
        for error, code in [(MessageTooLarge(10, 5), "message-too-large"), (SendQueueFull("full"), "queue-full"),
                            (CrustError("odd"), "failed")]:
            self.node.service.send_error = error
            self.assertError(self.one({"id": 1, "cmd": "send", "peer_id": str(PEER), "text": "x"}), code)

    def test_disconnect(self) -> None:
        self.node.service.active[PEER] = {}
        self.assertEqual(self.one({"id": 1, "cmd": "disconnect", "peer_id": str(PEER)})["result"],
                         {"peer_id": str(PEER), "disconnected": True})
        self.assertError(self.one({"id": 2, "cmd": "disconnect", "peer_id": str(PEER)}), "not-connected")
        self.assertEqual(self.node.service.disconnected, [PEER])

    # -- watching ---------------------------------------------------------------------------

    def test_watch_streams_events(self) -> None:
        self.assertEqual(self.one({"id": 9, "cmd": "watch"})["result"], {"watching": list(EVENT_NAMES)})
        self.node.events.connect_success(PEER)
        self.node.events.new_message(PEER, b"hi")
        self.node.events.new_message(PEER, b"\xff\x00")
        t = self.node.clock.seconds()
        self.assertEqual(self.lines(), [
            {"event": "connect_success", "id": 9, "time": t, "peer_id": str(PEER)},
            {"event": "new_message", "id": 9, "time": t, "peer_id": str(PEER), "size": 2, "text": "hi"},
            {"event": "new_message", "id": 9, "time": t, "peer_id": str(PEER), "size": 2, "data_b64": "/wA="},
        ])

    def test_watch_filter_and_unwatch(self) -> None:
        self.assertEqual(self.one({"id": 1, "cmd": "watch", "events": ["lost_peer"]})["result"],
                         {"watching": ["lost_peer"]})
        self.node.events.new_message(PEER, b"hi")
        self.node.events.lost_peer(PEER, "gone")
        self.assertEqual([e["event"] for e in self.lines()], ["lost_peer"])
        self.assertEqual(self.one({"id": 2, "cmd": "unwatch"})["result"], {"watching": []})
        self.assertEqual(self.node.events.subscriber_count, 0)
        self.node.events.lost_peer(PEER, "gone")
        self.assertEqual(self.lines(), [])

    def test_signed_messages_are_messages_with_a_proof(self) -> None:
        from crust.signed import open_message, sign_message, verify_signed

        sender, recipient = Identity.generate(), Identity.generate()
        proof = open_message("demo", sender.peer_id, recipient.peer_id, 1, 5, b"hi",
                             sign_message(sender, "demo", recipient.peer_id, 1, 5, b"hi"))
        for watched, seen in ((["new_message"], True), (["new_signed_message"], True), (["lost_peer"], False)):
            self.one({"id": 1, "cmd": "watch", "events": watched})
            self.node.events.new_message(PEER, b"plain")
            self.node.events.new_signed_message(PEER, b"hi", proof)
            lines = self.lines()
            if not seen:
                self.assertEqual(lines, [])
                continue
            signed = [e for e in lines if "proof" in e]
            self.assertEqual(len(signed), 1, watched)
            self.assertEqual((signed[0]["event"], signed[0]["text"]), ("new_message", "hi"))
            self.assertEqual(verify_signed(json.dumps(signed[0]["proof"])).payload, b"hi")
            self.assertEqual(len(lines), 2 if watched == ["new_message"] else 1)

    def test_watch_bad_events(self) -> None:
        self.assertError(self.one({"id": 1, "cmd": "watch", "events": ["nope"]}), "bad-request", "unknown event")
        self.assertError(self.one({"id": 1, "cmd": "watch", "events": "new_message"}), "bad-request")
        self.assertEqual(self.node.events.subscriber_count, 0)

    def test_watch_ends_with_connection(self) -> None:
        self.one({"id": 1, "cmd": "watch"})
        self.assertEqual(self.node.events.subscriber_count, 1)
        self.proto.connectionLost(None)
        self.assertEqual(self.node.events.subscriber_count, 0)
        self.node.events.lost_peer(PEER, "gone")  # nothing written, nothing raised
        self.assertEqual(self.transport.value(), b"")

    def test_slow_reader_loses_events_not_memory(self) -> None:
        self.one({"id": 1, "cmd": "watch"})
        self.proto.pauseProducing()  # the transport's buffer is full
        self.assertEqual(self.transport.producerState, "paused")  # we stop reading requests too
        for _ in range(5):
            self.node.events.new_message(PEER, b"x" * 100)
        self.assertEqual(self.transport.value(), b"")
        self.proto.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")
        [notice] = self.lines()
        self.assertEqual((notice["event"], notice["count"], notice["id"]), ("events_dropped", 5, 1))
        self.node.events.new_message(PEER, b"y")
        self.assertEqual([e["event"] for e in self.lines()], ["new_message"])

    def test_subscriber_error_does_not_stop_others(self) -> None:
        self.one({"id": 1, "cmd": "watch"})

        def broken(event: dict[str, Any]) -> None:
            raise RuntimeError("boom")

        self.node.events._subscribers.insert(0, broken)
        self.node.events.lost_peer(PEER, "gone")
        self.assertEqual([e["event"] for e in self.lines()], ["lost_peer"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    # -- framing and garbage ---------------------------------------------------------------

    def test_pipelined_and_split_requests(self) -> None:
        data = b'{"id":1,"cmd":"ping"}\n{"id":2,"cmd":"ping"}\r\n\n   \n{"id":3,"cmd":"ping"}\n'
        for i in range(len(data)):
            self.proto.dataReceived(data[i:i + 1])
        self.assertEqual([r["id"] for r in self.lines()], [1, 2, 3])

    def test_garbage_gets_errors_and_the_connection_lives(self) -> None:
        garbage = [
            (b"hello\n", "not JSON"),
            (b"\xff\xfe\n", "not UTF-8"),
            (b"[1,2]\n", "JSON object"),
            (b'"info"\n', "JSON object"),
            (b'{"id":1}\n', '"cmd"'),
            (b'{"id":1,"cmd":5}\n', '"cmd"'),
            (b'{"id":[1],"cmd":"ping"}\n', '"id"'),
            (b'{"id":true,"cmd":"ping"}\n', '"id"'),
            (b'{"id":1,"cmd":"ping","x":NaN}\n', "NaN"),
            (b"[" * 3000 + b"\n", "JSON"),
            (b'{"id":"' + b"x" * 300 + b'","cmd":"ping"}\n', "256"),
        ]
        for line, fragment in garbage:
            response = self.one(line, raw=True)
            self.assertEqual(response["ok"], False, line[:40])
            self.assertEqual(response["code"], "bad-request", line[:40])
            self.assertIn(fragment, response["error"], line[:40])
        self.assertFalse(self.transport.disconnecting)
        self.assertTrue(self.one({"id": 1, "cmd": "ping"})["ok"])

    def test_unknown_command(self) -> None:
        response = self.one({"id": 4, "cmd": "launch-missiles"})
        self.assertError(response, "unknown-command", "launch-missiles", "info")
        self.assertEqual(response["id"], 4)

    def test_oversize_line_closes_the_connection(self) -> None:
        self.proto.dataReceived(b'{"id":1,"cmd":"ping","pad":"' + b"x" * 5000 + b'"}\n')
        [response] = self.lines()
        self.assertError(response, "too-large", "4096")
        self.assertNotIn("max_message_size", response["error"])  # this node has no config to name
        self.assertTrue(self.transport.disconnecting)
        self.proto.dataReceived(b'{"id":2,"cmd":"ping"}\n')  # ignored once closing

    def test_oversize_line_names_the_message_limit(self) -> None:
        self.node.config = Config(max_message_size=1000, max_queued_bytes=10000)  # type: ignore[attr-defined]
        self.proto.dataReceived(b'{"id":1,"cmd":"send","data":"' + b"x" * 5000 + b'"}\n')
        [response] = self.lines()
        self.assertError(response, "too-large", "4096", "a message is at most 1000 bytes: max_message_size")
        self.assertEqual(self.transport.value(), b"")

    def test_oversize_without_newline(self) -> None:
        for _ in range(5):
            self.proto.dataReceived(b"x" * 1000)
        [response] = self.lines()
        self.assertError(response, "too-large")
        self.assertTrue(self.transport.disconnecting)

    def test_a_line_at_the_limit_is_fine(self) -> None:
        pad = 4096 - len(b'{"id":1,"cmd":"ping","pad":""}')
        line = b'{"id":1,"cmd":"ping","pad":"' + b"x" * pad + b'"}'
        self.assertEqual(len(line), 4096)
        self.assertError(self.one(line + b"\n", raw=True), "bad-request", "'pad'")
        self.assertFalse(self.transport.disconnecting)

    def test_default_limit(self) -> None:
        self.assertEqual(ControlFactory(self.node).max_request, DEFAULT_MAX_REQUEST)

    def test_in_flight_bound(self) -> None:
        info = THEIR_INFO.to_json()
        for i in range(MAX_IN_FLIGHT):
            self.assertEqual(self.ask({"id": i, "cmd": "connect", "info": info}), [])
        self.assertError(self.one({"id": "extra", "cmd": "connect", "info": info}), "busy")
        self.node.pending[0].callback(PEER)
        self.lines()
        self.assertEqual(self.ask({"id": "again", "cmd": "connect", "info": info}), [])

    def test_connection_bound(self) -> None:
        self.factory.max_connections = 2
        self.connect()
        proto3, transport3 = self.connect()
        [response] = self.lines(transport3)
        self.assertError(response, "busy", "too many control connections")
        self.assertTrue(transport3.disconnecting)
        proto3.connectionLost(None)
        self.assertEqual(len(self.factory.connections), 2)

    def test_result_after_the_client_left_is_dropped(self) -> None:
        self.ask({"id": 1, "cmd": "connect", "info": THEIR_INFO.to_json()})
        self.proto.connectionLost(None)
        self.node.pending[0].callback(PEER)  # no write to a closed transport, no error
        self.assertEqual(self.transport.value(), b"")

    def test_handler_bug_is_an_internal_error(self) -> None:
        def broken(proto: Any, request: Any) -> None:
            raise ZeroDivisionError("oops")

        self.factory.commands.register("broken", broken)
        self.assertError(self.one({"id": 1, "cmd": "broken"}), "internal", "ZeroDivisionError")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(self.one({"id": 2, "cmd": "ping"})["ok"])

    def test_registry_is_extensible(self) -> None:
        self.factory.commands.register("frobnicate", lambda proto, req: {"contacts": 0}, "frobnicate now")
        self.assertEqual(self.one({"id": 1, "cmd": "frobnicate"})["result"], {"contacts": 0})
        self.assertNotIn("frobnicate", node_commands().names())  # each registry is its own


def strict_json(line: bytes) -> Any:
    """C{line} read as JSON proper: no NaN or Infinity."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


class HostileRequestTests(SynchronousTestCase):
    """Hostile JSON in requests: a bad-request answer, valid JSON always, the connection lives."""

    def setUp(self) -> None:
        self.node = FakeNode()
        self.factory = ControlFactory(self.node, max_request=1 << 20)
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def answers(self, data: bytes) -> list[Any]:
        self.proto.dataReceived(data)
        out = self.transport.value()
        self.transport.clear()
        return [strict_json(line) for line in out.splitlines()]

    def test_hostile_documents(self) -> None:
        for doc in HOSTILE_DOCUMENTS:
            line = doc.replace(b"\n", b" ").replace(b"\r", b" ")
            if not line.strip():
                continue
            answers = only_refused(self, lambda: self.answers(line + b"\n"))
            self.assertEqual([(a["ok"], a["code"], a["id"]) for a in answers], [(False, "bad-request", None)], doc[:30])
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.answers(b'{"id":1,"cmd":"ping"}\n')[0]["ok"], True)

    def test_deep_request_is_a_bad_request(self) -> None:
        [answer] = self.answers(b'{"id":1,"cmd":"ping","x":' + b"[" * 3000 + b"]" * 3000 + b"}\n")
        self.assertEqual(answer["code"], "bad-request")
        self.assertIn("nested deeper", answer["error"])

    def test_infinite_id_is_refused_and_answered_in_json(self) -> None:
        """An id of 1e999 used to be answered with "id":Infinity, which is not JSON."""
        for line in (b'{"id":1e999,"cmd":"ping"}', b'{"id":-1e999,"cmd":"ping"}', b'{"id":NaN,"cmd":"ping"}',
                     b'{"id":' + b"9" * 5000 + b',"cmd":"ping"}'):
            [answer] = self.answers(line + b"\n")
            self.assertEqual((answer["ok"], answer["code"], answer["id"]), (False, "bad-request", None), line)
        [answer] = self.answers(b'{"id":2.5,"cmd":"ping"}\n')
        self.assertEqual((answer["ok"], answer["id"]), (True, 2.5))

    def test_unencodable_results_are_answered_in_json(self) -> None:
        self.factory.commands.register("inf", lambda proto, req: {"x": float("inf")})
        self.factory.commands.register("deep", lambda proto, req: {"x": self._deep(5000)})
        for cmd in ("inf", "deep"):
            [answer] = self.answers(json.dumps({"id": cmd, "cmd": cmd}).encode() + b"\n")
            self.assertEqual((answer["id"], answer["ok"], answer["code"]), (cmd, False, "internal"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)

    def test_id_is_checked_where_the_response_is_written(self) -> None:
        self.proto._send_error(float("nan"), "failed", "x")  # a bug elsewhere: still JSON, id null
        [answer] = self.answers(b"")
        self.assertIsNone(answer["id"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_events_are_json(self) -> None:
        self.answers(b'{"id":1,"cmd":"watch"}\n')
        self.node.events.message_dropped(PEER, 1, 1, float("nan"), "x")
        self.node.events.publish("lost_peer", PEER, [float("inf")])
        events = self.answers(b"")
        self.assertEqual([e["event"] for e in events], ["message_dropped", "lost_peer"])
        self.assertIsNone(events[0]["size"])

    @staticmethod
    def _deep(n: int) -> Any:
        value: Any = []
        for _ in range(n):
            value = [value]
        return value

    def test_connect_with_nested_info_is_a_bad_request(self) -> None:
        """Deeply nested connection info is refused as such (it was an 'internal' error)."""
        info = json.loads(THEIR_INFO.to_json())
        for depth, fragment in ((40, "nested deeper"), (900, "arrays and objects")):
            text = json.dumps(info)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
            [answer] = self.answers(json.dumps({"id": 1, "cmd": "connect", "info": text}).encode() + b"\n")
            self.assertEqual((answer["id"], answer["code"]), (1, "bad-request"))
            self.assertIn(fragment, answer["error"])
            [answer] = self.answers(b'{"id":2,"cmd":"connect","info":' + text.encode() + b"}\n")
            self.assertEqual(answer["code"], "bad-request")
            self.assertIn("nested deeper", answer["error"])  # the info object, or the request it is in
        self.assertEqual(self.node.connects, [])

    @examples(200)
    @given(hostile_json({"id": 1, "cmd": "connect", "info": json.loads(THEIR_INFO.to_json()), "timeout": 5}))
    def test_hostile(self, doc: bytes) -> None:
        line = doc.replace(b"\n", b" ").replace(b"\r", b" ")
        for answer in only_refused(self, lambda: self.answers(line + b"\n")):
            self.assertIn("ok", answer)  # and it is JSON proper: answers() read it so
        self.assertEqual(self.flushLoggedErrors(), [])


class ClientHostileLineTests(SynchronousTestCase):
    """The Twisted client skips lines it cannot read, hostile or not, and goes on."""

    def setUp(self) -> None:
        self.client = ControlClient()
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)

    def test_hostile_lines_are_skipped(self) -> None:
        answers: list[Any] = []
        self.client.request("ping").addCallback(answers.append)
        for doc in HOSTILE_DOCUMENTS:
            only_refused(self, lambda: self.client.dataReceived(doc.replace(b"\n", b" ") + b"\n"))
        self.assertEqual(answers, [])
        self.client.dataReceived(b'{"id": 1, "ok": true, "result": {"pong": true}}\n')
        self.assertEqual(answers, [{"pong": True}])

    def test_an_id_that_is_no_key_answers_nothing(self) -> None:
        """An answer whose id is a list or an object is no answer of ours (it raised TypeError: unhashable)."""
        answers: list[Any] = []
        self.client.request("ping").addCallback(answers.append)
        for line in (b'{"id": ["n"], "ok": true}\n', b'{"id": {"a": 1}, "ok": true}\n'):
            self.client.dataReceived(line)
        self.assertEqual(answers, [])
        self.assertEqual(len(self.client.errors), 2)
        self.client.dataReceived(b'{"id": 1, "ok": true, "result": {"pong": true}}\n')
        self.assertEqual(answers, [{"pong": True}])

    def test_requests_are_json(self) -> None:
        self.assertRaises(ValueError, self.client.request, "send", priority=float("nan"))
        self.assertEqual((self.client._pending, self.transport.value()), ({}, b""))
        self.client.request("ping")
        self.assertEqual(strict_json(self.transport.value()), {"id": 1, "cmd": "ping"})

    @examples(200)
    @given(hostile_json({"id": 1, "ok": True, "result": {"pong": True}}))
    def test_hostile(self, doc: bytes) -> None:
        self.client._pending.clear()
        self.client.request("ping").addErrback(lambda f: None)
        only_refused(self, lambda: self.client.dataReceived(doc.replace(b"\n", b" ") + b"\n"))


class TimeoutTests(SynchronousTestCase):
    """Stalled control connections are closed, on the node's clock."""

    def setUp(self) -> None:
        self.node = FakeNode()
        self.clock = self.node.clock
        self.factory = ControlFactory(self.node)
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def connect(self) -> tuple[Any, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def closing_lines(self) -> list[str]:
        return [formatEvent(e) for e in self.logged if "closing a control connection" in formatEvent(e)]

    def lose(self, proto: Any) -> None:
        proto.connectionLost(Failure(ConnectionDone()))

    def test_partial_request_times_out(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b'{"id": 1, "cm')
        self.clock.advance(REQUEST_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b'd"')  # trickling does not extend the deadline
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        [answer] = [strict_json(line) for line in transport.value().splitlines()]
        self.assertEqual((answer["id"], answer["code"]), (None, "timeout"))
        self.assertIn("incomplete", answer["error"])
        self.assertEqual(len(self.closing_lines()), 1)
        self.lose(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_complete_requests_restart_the_deadline(self) -> None:
        proto, transport = self.connect()
        for _ in range(5):
            proto.dataReceived(b'{"id": 1, "cmd": "ping"}\n{"id": 2, ')
            self.clock.advance(REQUEST_TIMEOUT - 1)
            proto.dataReceived(b'"cmd": "ping"}\n')
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)

    def test_idle_connection_times_out(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b'{"id": 1, "cmd": "ping"}\n')
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b'{"id": 2, "cmd": "ping"}\n')
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertIn("idle", strict_json(transport.value().splitlines()[-1])["error"])

    def test_watchers_and_waiting_requests_are_not_idle(self) -> None:
        watcher, watcher_transport = self.connect()
        watcher.dataReceived(b'{"id": 1, "cmd": "watch"}\n')
        waiter, waiter_transport = self.connect()
        waiter.dataReceived(json.dumps({"id": 1, "cmd": "connect", "info": THEIR_INFO.to_json()}).encode() + b"\n")
        self.clock.advance(IDLE_TIMEOUT * 3)
        self.assertFalse(watcher_transport.disconnecting)
        self.assertFalse(waiter_transport.disconnecting)
        self.node.pending[0].callback(PEER)  # answered: idle from now on
        self.clock.advance(IDLE_TIMEOUT)
        self.assertTrue(waiter_transport.disconnecting)
        watcher.dataReceived(b'{"id": 2, "cmd": "unwatch"}\n')
        self.clock.advance(IDLE_TIMEOUT)
        self.assertTrue(watcher_transport.disconnecting)

    def test_client_that_reads_nothing_is_closed_then_aborted(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b'{"id": 1, "cmd": "watch"}\n')
        proto.pauseProducing()  # its socket buffer is full: it reads nothing
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        self.clock.advance(CLOSE_GRACE)  # it took nothing of what was left to write
        self.assertTrue(transport.disconnected)  # aborted
        self.lose(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_paused_reading_does_not_count_against_the_client(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b'{"id": 1, "cmd": "watch"}\n{"id": 2, ')
        proto.pauseProducing()  # we stopped reading: its request may be waiting in the socket
        self.clock.advance(REQUEST_TIMEOUT * 2)
        self.assertFalse(transport.disconnecting)
        proto.resumeProducing()
        self.clock.advance(REQUEST_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_half_written_connections_no_longer_lock_the_cli_out(self) -> None:
        """64 connections with half a request each used to make every later one 'busy', forever."""
        stalled = [self.connect() for _ in range(self.factory.max_connections)]
        for proto, _ in stalled:
            proto.dataReceived(b'{"id": 1, "cmd": "in')
        late, late_transport = self.connect()
        self.assertEqual(strict_json(late_transport.value())["code"], "busy")
        self.lose(late)
        self.clock.advance(REQUEST_TIMEOUT)
        self.assertTrue(all(t.disconnecting for _, t in stalled))
        self.assertLessEqual(len(self.closing_lines()), 3)  # rate-limited
        self.assertGreaterEqual(len(self.closing_lines()), 1)
        for proto, _ in stalled:
            self.lose(proto)
        cli, cli_transport = self.connect()
        cli.dataReceived(b'{"id": 1, "cmd": "ping"}\n')
        self.assertEqual(strict_json(cli_transport.value())["ok"], True)

    def test_stalled_connections_are_aborted_even_if_close_never_completes(self) -> None:
        stalled = [self.connect() for _ in range(3)]
        for proto, _ in stalled:
            proto.dataReceived(b"{")
        self.clock.advance(REQUEST_TIMEOUT)
        self.assertTrue(all(t.disconnecting and not t.disconnected for _, t in stalled))
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(all(t.disconnected for _, t in stalled))


class EventEncodingTests(SynchronousTestCase):
    def test_every_event_has_fields(self) -> None:
        for name in EVENT_NAMES:
            self.assertIn(name, json.dumps(event_to_json(name, ())))

    def test_shapes(self) -> None:
        failure = ConnectFailed(PEER, ["tcp:1.2.3.4:5: refused", "tcp:1.2.3.4:6: timeout"], "could not connect")
        self.assertEqual(event_to_json("connect_failure", (PEER, failure)), {
            "event": "connect_failure", "peer_id": str(PEER), "reason": str(failure),
            "reasons": ["tcp:1.2.3.4:5: refused", "tcp:1.2.3.4:6: timeout"]})
        self.assertEqual(event_to_json("listener_started", (Address("tcp", "0.0.0.0", 5483),), 5.0),
                         {"event": "listener_started", "time": 5.0, "address": "tcp:0.0.0.0:5483"})
        self.assertEqual(event_to_json("bootstrap_accept", (PEER, Role.CLIENT)),
                         {"event": "bootstrap_accept", "peer_id": str(PEER), "role": "client"})
        self.assertEqual(event_to_json("message_dropped", (PEER, 3, 2, 100, "too old")),
                         {"event": "message_dropped", "peer_id": str(PEER), "priority": 3, "count": 2,
                          "size": 100, "reason": "too old"})
        self.assertEqual(event_to_json("bootstrap_failed", (ValueError(),)),
                         {"event": "bootstrap_failed", "reason": "ValueError"})

    def test_hub_does_no_work_without_subscribers(self) -> None:
        hub = EventHub(Clock())
        hub.new_message(PEER, object())  # would not encode; never tried
        seen: list[dict[str, Any]] = []
        unsubscribe = hub.subscribe(seen.append)
        hub.lost_peer(PEER, "bye")
        unsubscribe()
        unsubscribe()
        hub.lost_peer(PEER, "bye")
        self.assertEqual(seen, [{"event": "lost_peer", "time": 0.0, "peer_id": str(PEER), "reason": "bye"}])

    def test_hub_publishes_every_event(self) -> None:
        hub = EventHub(Clock())
        verifyObject(ICrustObserver, hub)
        seen: list[dict[str, Any]] = []
        hub.subscribe(seen.append)
        for name in EVENT_NAMES:
            args = (b"x",) * len(ICrustObserver[name].positional)
            getattr(hub, name)(*args)
        # a signed message is a new_message event with its proof
        self.assertEqual([event["event"] for event in seen],
                         [name if name != "new_signed_message" else "new_message" for name in EVENT_NAMES])


class EndpointTests(SynchronousTestCase):
    def test_accepted(self) -> None:
        self.assertEqual(parse_control_endpoint("unix:/run/x.sock"), "/run/x.sock")
        self.assertEqual(parse_control_endpoint("unix:address=/run/x.sock:mode=600"), "/run/x.sock")
        self.assertEqual(parse_control_endpoint("unix:/run/a\\:b.sock:lockfile=1"), "/run/a:b.sock")
        self.assertEqual(parse_control_endpoint("/tmp/c.sock"), "/tmp/c.sock")
        self.assertEqual(parse_control_endpoint("unix:rel.sock"), os.path.abspath("rel.sock"))
        self.assertIsNone(parse_control_endpoint("none"))

    def test_refused(self) -> None:
        for bad in ["tcp:1234", "tcp:1234:interface=127.0.0.1", "ssl:443", "unix:", "unix:/a:colour=red",
                    "unix:/a:/b", "foo"]:
            self.assertRaises(ValueError, parse_control_endpoint, bad)
        e = self.assertRaises(ValueError, parse_control_endpoint, "tcp:1234")
        self.assertIn("UNIX socket", str(e))


class SocketFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="crust-ctl-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "c.sock")

    def test_missing_is_fine(self) -> None:
        self.assertFalse(clear_stale_socket(self.path))

    def test_stale_socket_is_removed(self) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind(self.path)
        s.close()  # the file stays, nobody listens
        self.assertTrue(clear_stale_socket(self.path))
        self.assertFalse(os.path.exists(self.path))

    def test_live_socket_is_an_error(self) -> None:
        s = socket.socket(socket.AF_UNIX)
        self.addCleanup(s.close)
        s.bind(self.path)
        s.listen(1)
        e = self.assertRaises(NodeAlreadyRunning, clear_stale_socket, self.path)
        self.assertIn("another node", str(e))
        self.assertTrue(os.path.exists(self.path))

    def test_not_a_socket_is_an_error(self) -> None:
        with open(self.path, "w") as f:
            f.write("precious")
        e = self.assertRaises(CrustError, clear_stale_socket, self.path)
        self.assertIn("not a socket", str(e))
        with open(self.path) as f:
            self.assertEqual(f.read(), "precious")


class ClientServerTests(TestCase):
    """The Twisted client against a real L{ControlServer} on a UNIX socket."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="crust-ctl-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "control.sock")
        self.node = FakeNode()
        self.server = ControlServer(self.node, self.path, reactor)
        self.server.startService()
        self.addCleanup(self.server.stopService)

    def test_socket_mode(self) -> None:
        self.assertTrue(stat.S_ISSOCK(os.stat(self.path).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_second_server_refused(self) -> None:
        other = ControlServer(self.node, self.path, reactor)
        self.assertRaises(NodeAlreadyRunning, other.listen)

    @inlineCallbacks
    def test_requests_errors_and_events(self):
        client = yield connect_control(reactor, self.path)
        self.addCleanup(client.transport.loseConnection)
        info = yield client.request("info")
        self.assertEqual(info["peer_id"], str(ME))
        error = yield self.assertFailure(client.request("send", peer_id=str(PEER), text="x"), ControlError)
        self.assertEqual(error.code, "not-connected")
        events: list[dict[str, Any]] = []
        got: Deferred = Deferred()

        def on_event(event: dict[str, Any]) -> None:
            events.append(event)
            got.callback(None)

        client.on_event = on_event
        watching = yield client.request("watch", events=["new_message"])
        self.assertEqual(watching, {"watching": ["new_message"]})
        self.node.events.new_message(PEER, b"over the socket")
        yield got
        self.assertEqual(events[0]["text"], "over the socket")
        client.send_raw(b"garbage\n")
        pong = yield client.request("ping")
        self.assertTrue(pong["pong"])
        self.assertEqual(client.errors[0]["code"], "bad-request")

    @inlineCallbacks
    def test_stop_closes_watchers_and_removes_socket(self):
        client = yield connect_control(reactor, self.path)
        yield client.request("watch")
        yield self.server.stopService()
        yield client.closed
        self.assertFalse(os.path.exists(self.path))
        self.assertEqual(self.node.events.subscriber_count, 0)
