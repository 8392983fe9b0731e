"""
Tests for the C{crust} command (L{crust.node.cli}): argument handling, output and
exit codes against a scripted control server in a thread, and end to end:
two real nodes (C{twistd -n crust node} subprocesses on 127.0.0.1) driven
by C{python -m crust.node.cli} subprocesses.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from hypothesis import given
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from crust.node import cli
from crust.node.cli import CliError
from tests import examples
from tests.hostile_json import HOSTILE_DOCUMENTS, hostile_json, only_refused

REPO = Path(__file__).resolve().parent.parent.parent
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]
PEER = "a" * 52
OTHER = "b" * 52


def temp_dir(case) -> Path:
    path = tempfile.mkdtemp(prefix="crust-cli-")
    case.addCleanup(shutil.rmtree, path, True)
    return Path(path)


class ScriptedNode:
    """
    A control server in a thread: C{answer(request) -> list of response
    dicts} (or a callable doing its own writes).  Records the requests.
    """

    def __init__(self, path: str, answer: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    request = json.loads(line)
                    outer.requests.append(request)
                    for response in answer(request):
                        self.wfile.write(json.dumps(response).encode() + b"\n")
                        self.wfile.flush()

        self.server = socketserver.ThreadingUnixStreamServer(path, Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ok(request: dict[str, Any], result: Any) -> dict[str, Any]:
    return {"id": request.get("id"), "ok": True, "result": result}


def error(request: dict[str, Any], code: str, text: str) -> dict[str, Any]:
    return {"id": request.get("id"), "ok": False, "code": code, "error": text}


class HostileLineTests(SynchronousTestCase):
    """What the command reads from the node's socket: a hostile line is a CliError, quickly."""

    def client_reading(self, data: bytes) -> cli.NodeClient:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        client = cli.NodeClient("unused", timeout=5)
        client._sock = ours
        client._buffer = bytearray(data)
        return client

    def test_hostile_lines(self) -> None:
        for doc in HOSTILE_DOCUMENTS:
            line = doc.replace(b"\n", b" ") + b"\n"
            client = self.client_reading(line)
            e = self.assertRaises(CliError, only_refused, self, client.read)
            self.assertIn("the node sent", str(e))

    def test_a_request_the_node_refused_as_too_large_and_hung_up_on(self) -> None:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        refusal = error({"id": None}, "too-large", "request line over 10 bytes (a message is at most 5 bytes: "
                                                   "max_message_size); closing the connection")
        theirs.sendall(json.dumps(refusal).encode() + b"\n")
        theirs.close()
        client = cli.NodeClient("unused", timeout=5)
        client._sock = ours
        e = self.assertRaises(cli.CliError, client.send, "send", data="x" * (1 << 20))
        self.assertNotIsInstance(e, cli.NodeUnreachable)  # it said why: not "Broken pipe"
        self.assertEqual((e.status, e.code), (cli.EXIT_USAGE, "too-large"))
        self.assertIn("max_message_size", e.message)

    def test_hung_up_on_without_a_word(self) -> None:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        theirs.close()
        client = cli.NodeClient("unused", timeout=5)
        client._sock = ours
        e = self.assertRaises(cli.NodeUnreachable, client.send, "send", data="x" * (1 << 20))
        self.assertIn("lost the connection to the node", e.message)

    def test_a_good_line(self) -> None:
        self.assertEqual(self.client_reading(b'{"id": 1, "ok": true}\n').read(), {"id": 1, "ok": True})

    @examples(200)
    @given(hostile_json({"id": 1, "ok": True, "result": {"peers": [{"peer_id": PEER}]}}))
    def test_hostile(self, doc: bytes) -> None:
        client = self.client_reading(doc.replace(b"\n", b" ") + b"\n")
        only_refused(self, client.read, CliError)


class ScriptedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.path = str(self.dir / "control.sock")
        self.answers: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {}

        def answer(request: dict[str, Any]) -> list[dict[str, Any]]:
            handler = self.answers.get(request["cmd"])
            return handler(request) if handler else [error(request, "unknown-command", "no such command")]

        self.node = ScriptedNode(self.path, answer)
        self.addCleanup(self.node.close)

    def run_cli(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(["--control", self.path, *args], out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def test_info_text_and_json(self) -> None:
        info = {"peer_id": PEER, "listen_addresses": ["tcp:127.0.0.1:5"], "peers": 2, "uptime": 75,
                "connection_info": {"crust": 1, "id": PEER, "addrs": ["tcp:127.0.0.1:5"]}}
        self.answers["info"] = lambda r: [ok(r, info)]
        status, out, err = self.run_cli("info")
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"peer id:          {PEER}", out)
        self.assertIn("connected peers:  2", out)
        self.assertIn("up 1m15s", out)
        status, out, _ = self.run_cli("info", "--json")  # --json after the command works too
        self.assertEqual(json.loads(out), info)
        self.assertEqual(self.node.requests[0], {"id": 1, "cmd": "info"})

    def test_info_shows_turn_allocations(self) -> None:
        info = {"peer_id": PEER, "turn": [
            {"server": "udp:192.0.2.1:3478", "state": "allocated", "relayed": "udp:192.0.2.1:50000",
             "lifetime": 600, "expires_in": 300.0, "permissions": ["198.51.100.7"], "channels": 1},
            {"server": "udp:192.0.2.2:3478", "state": "retrying", "relayed": None, "error": "401 Unauthorized"}]}
        self.answers["info"] = lambda r: [ok(r, info)]
        status, out, _ = self.run_cli("info")
        self.assertEqual(status, 0)
        self.assertIn("TURN relay:       udp:192.0.2.1:50000 on udp:192.0.2.1:3478 (lifetime 600 s, expires in "
                      "300.0 s; 1 permission(s), 1 channel(s))", out)
        self.assertIn("TURN relay:       udp:192.0.2.2:3478: retrying (401 Unauthorized)", out)

    def test_info_rebootstrap(self) -> None:
        info: dict[str, Any] = {"peer_id": PEER, "rebootstrap": {"state": "waiting", "failures": 3,
                                                                 "next_attempt_in": 7.5}}
        self.answers["info"] = lambda r: [ok(r, info)]
        self.assertIn("bootstrapped to:  (not bootstrapped); bootstrapping again in 7.5 s (3 failed attempt(s))\n",
                      self.run_cli("info")[1])
        info["rebootstrap"] = {"state": "bootstrapping", "failures": 3, "next_attempt_in": None}
        self.assertIn("(not bootstrapped); bootstrapping again (3 failed attempt(s))\n", self.run_cli("info")[1])
        for status in ({"state": "held", "failures": 0, "next_attempt_in": None}, None, "garbage"):
            info["rebootstrap"] = status
            self.assertIn("bootstrapped to:  (not bootstrapped)\n", self.run_cli("info")[1])

    def test_connection_info_is_one_json_line(self) -> None:
        info = {"crust": 1, "id": PEER, "addrs": ["tcp:127.0.0.1:5"]}
        self.answers["connection-info"] = lambda r: [ok(r, {"connection_info": info})]
        for args in (["connection-info"], ["--json", "connection-info"]):
            status, out, _ = self.run_cli(*args)
            self.assertEqual(status, 0)
            self.assertEqual(out, json.dumps(info, separators=(",", ":")) + "\n")

    def test_peers(self) -> None:
        self.answers["peers"] = lambda r: [ok(r, {"peers": []})]
        self.assertEqual(self.run_cli("peers")[1], "no connected peers\n")
        peer = {"peer_id": PEER, "transport": "tcp", "address": "tcp:127.0.0.1:5", "initiator": False,
                "role": "node", "queued_bytes": 0}
        self.answers["peers"] = lambda r: [ok(r, {"peers": [peer]})]
        status, out, _ = self.run_cli("peers")
        self.assertIn(PEER, out)
        self.assertIn("incoming", out)
        self.assertEqual(json.loads(self.run_cli("--json", "peers")[1]), {"peers": [peer]})
        relayed = dict(peer, address=None, initiator=True,
                       path={"kind": "relayed", "strategy": "relay", "elapsed": 2.5, "via": OTHER})
        self.answers["peers"] = lambda r: [ok(r, {"peers": [relayed]})]
        status, out, _ = self.run_cli("peers")
        self.assertIn(f"{PEER}  -  outgoing  relayed via {OTHER} in 2.50 s", out)

    def test_info_relaying(self) -> None:
        info = {"peer_id": PEER, "relay": {"serving": True, "circuits": 2, "circuits_total": 7,
                                           "bytes_relayed": 3 * 1024 * 1024 + 1, "ends": 1}}
        self.answers["info"] = lambda r: [ok(r, info)]
        out = self.run_cli("info")[1]
        self.assertIn("relaying:         yes: 2 circuit(s) now, 7 in all, 3.0 MiB relayed; "
                      "1 relayed circuit(s) of ours", out)
        info["relay"]["splice_spliced"] = 5
        self.assertIn("yes: 2 circuit(s) now, 7 in all (5 spliced), 3.0 MiB relayed", self.run_cli("info")[1])
        info["relay"] = {"serving": False, "ends": 0}
        self.assertIn("relaying:         no\n", self.run_cli("info")[1])

    def test_connect(self) -> None:
        self.answers["connect"] = lambda r: [ok(r, {"peer_id": PEER})]
        info = json.dumps({"crust": 1, "id": PEER, "addrs": []})
        status, out, err = self.run_cli("connect", info, "--timeout", "3")
        self.assertEqual((status, out, err), (0, PEER + "\n", ""))
        self.assertEqual(self.node.requests[-1], {"id": 1, "cmd": "connect", "info": info, "timeout": 3.0})

    def test_connect_to_neither_a_peer_id_nor_info(self) -> None:
        for text in ("zzzz", PEER[:-1], PEER + "a", "tcp:127.0.0.1:5483"):
            status, out, err = self.run_cli("connect", text)
            self.assertEqual((status, out), (2, ""))
            self.assertIn("is neither a peer id (52 base32 characters) nor connection info", err)
        self.assertEqual(self.node.requests, [])  # refused before asking the node

    def test_connect_says_which_path(self) -> None:
        relayed = {"peer_id": PEER, "address": None,
                   "path": {"kind": "relayed", "strategy": "relay", "elapsed": 2.5, "via": OTHER}}
        self.answers["connect"] = lambda r: [ok(r, relayed)]
        status, out, err = self.run_cli("connect", PEER)
        self.assertEqual((status, out, err), (0, PEER + "\n", f"connected relayed via {OTHER} in 2.50 s\n"))
        direct = {"peer_id": PEER, "address": "udp:203.0.113.7:4000",
                  "path": {"kind": "punched-udp", "strategy": "udp-punch", "elapsed": 0.25}}
        self.answers["connect"] = lambda r: [ok(r, direct)]
        status, out, err = self.run_cli("connect", PEER)
        self.assertEqual(err, "connected punched-udp udp:203.0.113.7:4000 in 0.25 s\n")

    def test_connect_from_file(self) -> None:
        self.answers["connect"] = lambda r: [ok(r, {"peer_id": PEER})]
        (self.dir / "info.json").write_text("  {\"crust\":1}\n")
        self.assertEqual(self.run_cli("connect", f"@{self.dir / 'info.json'}")[0], 0)
        self.assertEqual(self.node.requests[-1]["info"], '{"crust":1}')

    def test_connect_failure_exit_1_with_reason(self) -> None:
        self.answers["connect"] = lambda r: [error(r, "connect-failed", "could not connect: tcp:1.2.3.4:5: refused")]
        status, out, err = self.run_cli("connect", "{}")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("refused", err)
        status, out, err = self.run_cli("--json", "connect", "{}")
        self.assertEqual(json.loads(out), {"ok": False, "code": "connect-failed",
                                           "error": "could not connect: tcp:1.2.3.4:5: refused"})

    def test_bad_request_is_a_usage_error(self) -> None:
        self.answers["connect"] = lambda r: [error(r, "bad-request", "bad connection info: not JSON")]
        status, _, err = self.run_cli("connect", "{nonsense")
        self.assertEqual(status, 2)
        self.assertIn("bad connection info", err)

    def test_send_text_file_and_priority(self) -> None:
        self.answers["send"] = lambda r: [ok(r, {"peer_id": r["peer_id"], "size": 5, "priority": r["priority"]})]
        status, out, _ = self.run_cli("send", PEER.upper(), "héllo", "--priority", "3")
        self.assertEqual(status, 0)
        self.assertIn("queued 5 bytes", out)
        self.assertEqual(self.node.requests[-1], {"id": 1, "cmd": "send", "peer_id": PEER, "priority": 3,
                                                  "text": "héllo"})
        (self.dir / "blob").write_bytes(b"\xff\x00\x01")
        self.run_cli("send", PEER, f"@{self.dir / 'blob'}")
        self.assertEqual(self.node.requests[-1]["data_b64"], "/wAB")
        self.assertEqual(self.node.requests[-1]["priority"], 1)
        self.run_cli("send", PEER, "@@literal")
        self.assertEqual(self.node.requests[-1]["text"], "@literal")

    def test_send_signed(self) -> None:
        self.answers["send"] = lambda r: [ok(r, {"peer_id": r["peer_id"], "size": 1, "priority": 1,
                                                 **({"signed": r["signed"]} if "signed" in r else {})})]
        status, out, _ = self.run_cli("send", PEER, "x", "--signed")
        self.assertEqual((status, out), (0, f"queued 1 bytes for {PEER} (priority 1, signed)\n"))
        self.assertIs(self.node.requests[-1]["signed"], True)
        status, out, _ = self.run_cli("send", PEER, "x", "--batch")
        self.assertEqual((status, out), (0, f"queued 1 bytes for {PEER} (priority 1, signed in a batch)\n"))
        self.assertEqual(self.node.requests[-1]["signed"], "batch")
        self.run_cli("send", PEER, "x")
        self.assertNotIn("signed", self.node.requests[-1])

    def test_send_usage_errors_never_reach_the_node(self) -> None:
        for args in (["send", "not-a-peer", "x"], ["send", PEER, "x", "--priority", "300"],
                     ["send", PEER, "x", "--signed", "--batch"],
                     ["send", PEER, "@/nonexistent/file"], ["send", PEER], ["send", PEER, "x", "--priority", "hi"]):
            status, _, err = self.run_cli(*args)
            self.assertEqual(status, 2, args)
        self.assertEqual(self.node.requests, [])

    def test_send_not_connected(self) -> None:
        self.answers["send"] = lambda r: [error(r, "not-connected", f"not connected to {OTHER}")]
        status, _, err = self.run_cli("send", OTHER, "hi")
        self.assertEqual(status, 1)
        self.assertIn("crust send: not connected to", err)

    def test_disconnect(self) -> None:
        self.answers["disconnect"] = lambda r: [ok(r, {"peer_id": r["peer_id"], "disconnected": True})]
        self.assertEqual(self.run_cli("disconnect", PEER)[:2], (0, f"disconnected {PEER}\n"))

    def test_watch(self) -> None:
        def watch(r: dict[str, Any]) -> list[dict[str, Any]]:
            return [
                ok(r, {"watching": r.get("events", ["all"])}),
                {"event": "connect_success", "id": r["id"], "time": 0, "peer_id": PEER},
                {"event": "events_dropped", "id": r["id"], "count": 3, "reason": "slow"},
                {"event": "new_message", "id": r["id"], "time": 0, "peer_id": PEER, "size": 8,
                 "text": "hi\x1b[2Jyo"},
                {"event": "new_message", "id": r["id"], "time": 0, "peer_id": PEER, "size": 1, "data_b64": "/w=="},
            ]

        self.answers["watch"] = watch
        status, out, err = self.run_cli("watch", "--count", "3")
        self.assertEqual(status, 0)
        self.assertIn("watching", err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 4)  # the dropped-events notice does not count
        self.assertIn(f"connected to {PEER}", lines[0])
        self.assertIn("3 events dropped", lines[1])
        self.assertIn("message from", lines[2])
        self.assertNotIn("\x1b", out)  # a peer's text cannot drive the terminal
        self.assertIn("\\x1b[2J", lines[2])
        self.assertIn("not text", lines[3])
        self.assertEqual(cli.format_event({"event": "new_message", "time": 0, "peer_id": PEER, "size": 2,
                                           "text": "hi", "proof": {"seq": 42}}).split(" ", 1)[1],
                         f"signed message from {PEER} (sequence number 42): hi")
        status, out, _ = self.run_cli("watch", "--json", "--count", "1", "--events", "new_message,lost_peer")
        self.assertEqual(json.loads(out.splitlines()[0])["event"], "connect_success")
        self.assertEqual(self.node.requests[-1]["events"], ["new_message", "lost_peer"])

    def test_watch_timeout_and_node_stopping(self) -> None:
        self.answers["watch"] = lambda r: [ok(r, {"watching": []})]
        status, _, err = self.run_cli("watch", "--timeout", "0.2")
        self.assertEqual(status, 1)
        self.assertIn("timed out", err)
        self.assertEqual(self.run_cli("watch", "--events", "nope")[0], 2)

    def test_unknown_command_at_the_node(self) -> None:
        status, _, err = self.run_cli("peers")
        self.assertEqual(status, 1)
        self.assertIn("older version", err)

    def test_slow_node_times_out(self) -> None:
        self.answers["info"] = lambda r: []
        self.patch(cli, "DEFAULT_TIMEOUT", 0.2)
        status, _, err = self.run_cli("info")
        self.assertEqual(status, 1)
        self.assertIn("did not answer", err)


class CommandLineTests(SynchronousTestCase):
    def run_cli(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", err)  # argparse writes there
        status = cli.main(list(args), out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def test_usage_errors_exit_2(self) -> None:
        for args in ([], ["frobnicate"], ["send"], ["connect"], ["info", "--bogus"], ["watch", "--count", "0"],
                     ["--control", "tcp:1234", "info"]):
            self.assertEqual(self.run_cli(*args)[0], 2, args)

    def test_unreachable_exit_3_with_hint(self) -> None:
        d = temp_dir(self)
        status, out, err = self.run_cli("--data-dir", str(d), "info")
        self.assertEqual((status, out), (3, ""))
        self.assertIn("is the node running? start it with: twistd -n crust node", err)
        self.assertIn(f"--data-dir {d}", err)
        status, out, err = self.run_cli("--data-dir", str(d), "--json", "peers")
        self.assertEqual(status, 3)
        self.assertEqual(json.loads(out)["code"], "unreachable")

    def test_registry(self) -> None:
        for name in ("info", "peers", "connection-info", "connect", "send", "disconnect", "watch", "verify"):
            self.assertIn(name, cli.COMMANDS)
        ran: list[Any] = []

        @cli.register("netcheck", "check the network", lambda p: p.add_argument("--fast", action="store_true"))
        def netcheck(ctx: cli.Context) -> int:
            ran.append(ctx.args.fast)
            return 0

        self.addCleanup(cli.COMMANDS.pop, "netcheck")
        self.assertEqual(self.run_cli("netcheck", "--fast")[0], 0)
        self.assertEqual(ran, [True])

    def test_control_socket_path(self) -> None:
        d = temp_dir(self)
        self.assertEqual(cli.control_socket_path(str(d), None), str(d / "control.sock"))
        self.assertEqual(cli.control_socket_path(None, "unix:/run/c.sock"), "/run/c.sock")
        self.assertEqual(cli.control_socket_path(None, "/run/c.sock"), "/run/c.sock")
        # a node started with --control elsewhere says so in node.json
        elsewhere = d / "elsewhere.sock"
        elsewhere.write_text("")
        (d / "node.json").write_text(json.dumps({"control": str(elsewhere)}))
        self.assertEqual(cli.control_socket_path(str(d), None), str(elsewhere))

    def test_control_socket_path_with_a_hostile_node_json(self) -> None:
        """A corrupt node.json only means the default socket path."""
        d = temp_dir(self)
        for data in HOSTILE_DOCUMENTS + (b'{"control": ' + b"[" * 100 + b"]" * 100 + b"}",):
            (d / "node.json").write_bytes(data)
            path = only_refused(self, lambda: cli.control_socket_path(str(d), None))
            self.assertEqual(path, str(d / "control.sock"), data[:30])

    def test_event_names_match_the_library(self) -> None:
        from crust.observer import EVENT_NAMES

        self.assertEqual(cli.EVENT_NAMES, EVENT_NAMES)  # kept here so the command imports no Twisted

    def test_data_dir_default_matches_the_node(self) -> None:
        from crust.node.datadir import default_data_dir

        self.assertEqual(cli.control_socket_path(None, None), str(default_data_dir() / "control.sock"))

    def test_quick_to_import(self) -> None:
        # the command itself imports nothing heavy (no Twisted, no crypto)
        import ast

        tree = ast.parse((REPO / "crust" / "node" / "cli.py").read_text())
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        self.assertIn("crust.node.datadir", imported)
        self.assertEqual({m for m in imported if m.startswith(("twisted", "nacl", "OpenSSL", "crust.service"))},
                         set())


class VerifyTests(SynchronousTestCase):
    """C{crust verify}: a proof's signer, recipient, network and sequence number; no node needed."""

    def setUp(self) -> None:
        from crust.identity import Identity
        from crust.signed import open_batch, open_message, sign_batch, sign_message

        self.dir = temp_dir(self)
        self.alice, self.bob = Identity.generate(), Identity.generate()
        proof = open_message("demo", self.alice.peer_id, self.bob.peer_id, 1, 77, b"pay Bob 10",
                             sign_message(self.alice, "demo", self.bob.peer_id, 1, 77, b"pay Bob 10"))
        self.proof = json.loads(proof.to_json())
        entries = [(5, b"\xff\x00"), (6, b"second")]
        self.batched = [p.to_dict() for p in open_batch(
            "demo", self.alice.peer_id, self.bob.peer_id, 4, entries,
            sign_batch(self.alice, "demo", self.bob.peer_id, 4, entries))]

    def write(self, body: Any, name: str = "proof.json") -> str:
        path = self.dir / name
        path.write_text(body if isinstance(body, str) else json.dumps(body))
        return str(path)

    def run_cli(self, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        status = cli.main(["--control", str(self.dir / "no-node.sock"), *args], out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def test_good(self) -> None:
        status, out, err = self.run_cli("verify", self.write(self.proof))
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out.splitlines(), [
            f"good signature by {self.alice.peer_id}",
            f"  for:       {self.bob.peer_id}",
            "  network:   'demo'",
            "  sequence:  77 (priority 1, signed alone)",
            "  message:   10 bytes: pay Bob 10",
        ])
        status, out, _ = self.run_cli("--json", "verify", self.write(self.proof), "--sender", str(self.alice.peer_id),
                                      "--recipient", str(self.bob.peer_id), "--network", "demo")
        self.assertEqual(status, 0)
        self.assertEqual(json.loads(out), {"ok": True, "verified": True, "sender": str(self.alice.peer_id),
                                           "recipient": str(self.bob.peer_id), "network": "demo", "priority": 1,
                                           "seq": 77, "kind": "message", "size": 10, "text": "pay Bob 10"})

    def test_batched_from_standard_input(self) -> None:
        status, out, _ = self.run_cli("verify", "-", stdin=json.dumps(self.batched[0]).encode())
        self.assertEqual(status, 0)
        self.assertIn("  sequence:  5 (priority 4, signed in a batch, 1 after it)", out)
        self.assertIn("(not text; --json shows it as base64)", out)
        self.assertEqual(json.loads(self.run_cli("--json", "verify", self.write(self.batched[1]))[1])["text"],
                         "second")

    def test_a_watch_event_line(self) -> None:
        event = {"event": "new_message", "id": 1, "time": 0, "peer_id": str(self.alice.peer_id), "size": 10,
                 "text": "pay Bob 10", "proof": self.proof}
        status, out, _ = self.run_cli("verify", self.write(event))
        self.assertEqual(status, 0)
        self.assertIn(f"good signature by {self.alice.peer_id}", out)

    def test_tampered_exit_1(self) -> None:
        for change in ({"payload": "cGF5IEJvYiAxMDA="}, {"seq": 78}, {"recipient": str(self.alice.peer_id)},
                       {"network": "other"}, {"sender": str(self.bob.peer_id)},
                       {"signature": self.batched[0]["signature"]}):
            status, out, err = self.run_cli("verify", self.write({**self.proof, **change}))
            self.assertEqual((status, out), (1, ""), change)
            self.assertIn("crust verify: bad signature: the signature does not hold", err)
        status, out, _ = self.run_cli("--json", "verify", self.write({**self.proof, "seq": 78}))
        self.assertEqual(json.loads(out)["code"], "bad-signature")

    def test_not_what_was_expected_exit_1(self) -> None:
        for args, words in ((["--sender", str(self.bob.peer_id)], "signed by"),
                            (["--recipient", str(self.alice.peer_id)], "signed for"),
                            (["--network", "other"], "signed in network 'demo', not 'other'")):
            status, _, err = self.run_cli("verify", self.write(self.proof), *args)
            self.assertEqual(status, 1, args)
            self.assertIn(f"crust verify: not verified: {words}", err)

    def test_not_a_proof(self) -> None:
        for text, words in (("", "not a signed message"), ("{}", "no \"crust-signed\": 1"),
                            ('{"event": "lost_peer", "proof": 5}', "no \"crust-signed\": 1"),
                            ("[" * 10000, "not a signed message")):
            status, out, err = self.run_cli("verify", self.write(text))
            self.assertEqual((status, out), (1, ""))
            self.assertIn(words, err)
        self.assertEqual(self.run_cli("verify", str(self.dir / "missing"))[0], 2)
        self.assertEqual(self.run_cli("verify", self.write(self.proof), "--sender", "nope")[0], 2)
        self.assertEqual(self.run_cli("verify")[0], 2)


# -- end to end ------------------------------------------------------------------------------


def env_with_repo() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("CRUST_DATA_DIR", None)
    return env


class RealNodesTests(SynchronousTestCase):
    """Two nodes as subprocesses on 127.0.0.1, driven by the crust command."""

    def setUp(self) -> None:
        if not hasattr(select, "select") or sys.platform == "win32":
            raise SkipTest("needs POSIX: UNIX sockets and twistd")
        self.root = temp_dir(self)
        self.env = env_with_repo()

    def start_node(
        self, name: str, *twistd_options: str, node_options: tuple[str, ...] = ()
    ) -> tuple[subprocess.Popen, Path]:
        data_dir = self.root / name
        log = open(self.root / f"{name}.log", "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", *twistd_options, "crust", "node", "--data-dir", str(data_dir),
                      "--listen-host", "127.0.0.1", "--network", "cli-test", *node_options],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=str(self.root))
        self.addCleanup(self.stop, proc)
        return proc, data_dir

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def wait_ready(self, proc: subprocess.Popen, data_dir: Path, name: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.fail(f"node {name} exited with {proc.returncode}:\n{self.log(name)}")
            if (data_dir / "node.json").exists() and (data_dir / "control.sock").exists():
                return
            time.sleep(0.05)
        self.fail(f"node {name} not ready within {timeout} s:\n{self.log(name)}")

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def crust(self, data_dir: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "crust.node.cli", "--data-dir", str(data_dir), *args],
                              capture_output=True, text=True, env=self.env, timeout=timeout, cwd=str(self.root))

    def ok(self, data_dir: Path, *args: str) -> str:
        result = self.crust(data_dir, *args)
        self.assertEqual(result.returncode, 0, f"crust {' '.join(args)}: {result.stderr}")
        return result.stdout

    def test_two_nodes(self) -> None:
        proc_a, a = self.start_node("a", node_options=("--log-json", str(self.root / "a.json"),
                                                      "--metrics", "tcp:0:interface=127.0.0.1"))
        proc_b, b = self.start_node("b", "--logger=crust.node.tap.jsonLogObserver")
        self.wait_ready(proc_a, a, "a")
        self.wait_ready(proc_b, b, "b")

        info_a = json.loads(self.ok(a, "--json", "info"))
        info_b = json.loads(self.ok(b, "--json", "info"))
        self.assertEqual(info_a["network_name"], "cli-test")
        for info in (info_a, info_b):  # the network rule: loopback only
            self.assertTrue(info["connection_info"]["addrs"])
            self.assertTrue(all(addr.startswith(("tcp:127.0.0.1:", "udp:127.0.0.1:"))
                            for addr in info["connection_info"]["addrs"]))
        self.assertIn(f"peer id:          {info_a['peer_id']}", self.ok(a, "info"))
        self.assertEqual(info_a["relay"]["serving"], True)  # the ready node relays
        self.assertEqual((info_a["relay"]["circuits"], info_a["relay"]["bytes_relayed"]), (0, 0))
        self.assertIn("relaying:         yes: 0 circuit(s) now, 0 in all, 0 bytes relayed", self.ok(a, "info"))

        # B's connection info: one JSON line, the same as info shows
        text_b = self.ok(b, "connection-info")
        self.assertEqual(text_b.count("\n"), 1)
        self.assertEqual(json.loads(text_b), info_b["connection_info"])

        # B watches for messages
        watch = subprocess.Popen(
            [sys.executable, "-m", "crust.node.cli", "--data-dir", str(b), "watch", "--json", "--count", "2",
             "--events", "new_message", "--timeout", "25"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, cwd=str(self.root))
        self.addCleanup(self.stop, watch)
        ready, _, _ = select.select([watch.stderr], [], [], 20)
        self.assertTrue(ready, "crust watch did not start")
        self.assertIn(b"watching new_message", watch.stderr.readline())

        # A connects to B with the pasted info
        connected = self.crust(a, "connect", text_b.strip(), "--timeout", "15")
        self.assertEqual((connected.returncode, connected.stdout.strip()), (0, info_b["peer_id"]), connected.stderr)

        peers_a = json.loads(self.ok(a, "--json", "peers"))["peers"]
        self.assertEqual([p["peer_id"] for p in peers_a], [info_b["peer_id"]])
        self.assertIn(info_a["peer_id"], self.ok(b, "peers"))

        sent = self.ok(a, "send", info_b["peer_id"], "hello from a", "--priority", "2")
        self.assertIn("queued 12 bytes", sent)

        # A's metrics (--metrics): the connection and the message show
        self.assertRegex(info_a["metrics"], r"^http://127\.0\.0\.1:\d+/metrics$")
        self.assertIn(f"metrics:          {info_a['metrics']}", self.ok(a, "info"))
        self.assertIsNone(info_b["metrics"])
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to 127.0.0.1
        with no_proxy.open(info_a["metrics"], timeout=10) as response:
            scraped = response.read().decode("utf-8")
        self.assertIn("crust_peers 1.0", scraped.splitlines())
        self.assertIn('crust_messages_sent_total{priority="2"} 1.0', scraped.splitlines())
        self.assertIn('crust_message_bytes_sent_total{priority="2"} 12.0', scraped.splitlines())
        self.assertIn("signed", self.ok(a, "send", info_b["peer_id"], "signed by a", "--signed"))
        out, err = watch.communicate(timeout=25)
        self.assertEqual(watch.returncode, 0, err)
        event, signed = [json.loads(line) for line in out.decode().splitlines()[:2]]
        self.assertEqual((event["event"], event["peer_id"], event["text"]),
                         ("new_message", info_a["peer_id"], "hello from a"))
        self.assertNotIn("proof", event)
        # the signed one carries its proof: anyone checks it with A's peer id (the event line itself will do)
        self.assertEqual((signed["event"], signed["text"]), ("new_message", "signed by a"))
        (self.root / "signed.json").write_text(json.dumps(signed))
        verified = self.crust(a, "verify", str(self.root / "signed.json"), "--sender", info_a["peer_id"],
                              "--recipient", info_b["peer_id"], "--network", "cli-test")
        self.assertEqual(verified.returncode, 0, verified.stderr)
        self.assertIn(f"good signature by {info_a['peer_id']}", verified.stdout)
        signed["proof"]["payload"] = "c2lnbmVkIGJ5IGI="  # "signed by b"
        (self.root / "signed.json").write_text(json.dumps(signed))
        self.assertEqual(self.crust(a, "verify", str(self.root / "signed.json")).returncode, 1)

        self.assertIn("disconnected", self.ok(a, "disconnect", info_b["peer_id"]))
        deadline = time.monotonic() + 10
        while json.loads(self.ok(a, "--json", "peers"))["peers"] and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(json.loads(self.ok(a, "--json", "peers"))["peers"], [])
        failed = self.crust(a, "send", info_b["peer_id"], "anyone?")
        self.assertEqual(failed.returncode, 1)
        self.assertIn("not connected", failed.stderr)

        # the logs: B's stdout is JSON lines, A wrote a JSON file besides its text log
        events_b = [json.loads(line) for line in self.log("b").splitlines() if line.startswith("{")]
        ready_b = [e for e in events_b if e.get("node_event") == "ready"]
        self.assertEqual([e["peer_id"] for e in ready_b], [info_b["peer_id"]])
        self.assertIn(info_a["peer_id"], self.log("a"))  # the text log names the node
        events_a = [json.loads(line) for line in (self.root / "a.json").read_text().splitlines()]
        self.assertIn(info_a["peer_id"], [e.get("peer_id") for e in events_a])

        # stopping (twistd ends itself with the signal it got), the socket is gone, and the CLI says so
        self.stop(proc_a)
        self.assertIn(proc_a.returncode, (0, -signal.SIGTERM), self.log("a"))
        self.assertIn("Server Shut Down", self.log("a"))
        self.assertFalse((a / "control.sock").exists())
        gone = self.crust(a, "info")
        self.assertEqual(gone.returncode, 3)
        self.assertIn("is the node running?", gone.stderr)

    def test_second_node_on_a_data_dir_is_refused(self) -> None:
        proc, d = self.start_node("a")
        self.wait_ready(proc, d, "a")
        second = subprocess.run(
            TWISTD + ["-n", "--pidfile=", "crust", "node", "--data-dir", str(d), "--listen-host", "127.0.0.1"],
            capture_output=True, text=True, env=self.env, timeout=30, cwd=str(self.root))
        self.assertNotEqual(second.returncode, 0)
        self.assertIn("another node is running with this data dir", second.stderr)
        self.assertNotIn("Traceback", second.stderr)
        self.assertEqual(proc.poll(), None)  # the first one is unharmed
        self.assertIn("peer id:", self.ok(d, "info"))
