"""
Tests for L{crust.node.node} and L{crust.node.datadir}: data-directory resolution and
layout, the one-node-per-directory lock, startup errors, and nodes running
in this process on 127.0.0.1 driven through their control sockets.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

from hypothesis import given
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from crust.config import Config
from crust.connection_info import PubConnectionInfo
from crust.node.control import ControlError, ControlTimeout, connect_control
from crust.node.datadir import (
    DataDir,
    DataDirLock,
    NodeAlreadyRunning,
    default_data_dir,
    read_state_bytes,
    resolve_data_dir,
    unix_path_problem,
)
from crust.errors import ConnectFailed
from crust.identity import Identity
from crust.node.node import MIN_MAX_REQUEST, Node, StartupError, _with_timeout, max_request_for
from tests import examples
from tests.hostile_json import HOSTILE_DOCUMENTS, hostile_json, only_refused


def temp_dir(case) -> Path:
    """A short directory under /tmp (UNIX socket paths are limited to ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="crust-node-")
    case.addCleanup(shutil.rmtree, path, True)
    return Path(path)


class DataDirResolutionTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(default_data_dir({"HOME": "/home/ann"}), Path("/home/ann/.local/share/crust"))
        self.assertEqual(default_data_dir({"HOME": "/home/ann", "XDG_DATA_HOME": "/data"}), Path("/data/crust"))
        # the XDG spec: a relative XDG_DATA_HOME is ignored
        self.assertEqual(default_data_dir({"HOME": "/home/ann", "XDG_DATA_HOME": "rel"}),
                         Path("/home/ann/.local/share/crust"))
        self.assertEqual(default_data_dir({"HOME": "/h", "XDG_DATA_HOME": "/data", "CRUST_DATA_DIR": "/srv/c"}),
                         Path("/srv/c"))

    def test_explicit(self) -> None:
        self.assertEqual(resolve_data_dir("/x/y"), Path("/x/y"))
        self.assertEqual(resolve_data_dir("rel"), Path(os.path.abspath("rel")))
        self.assertEqual(resolve_data_dir("~/n"), Path(os.path.expanduser("~/n")))
        self.assertEqual(resolve_data_dir(None, {"HOME": "/h"}), Path("/h/.local/share/crust"))

    def test_layout(self) -> None:
        d = DataDir("/srv/node")
        self.assertEqual([d.identity_path, d.config_path, d.control_path, d.lock_path, d.state_path],
                         [Path("/srv/node") / n for n in
                          ("identity.key", "config.json", "control.sock", "node.lock", "node.json")])

    def test_unix_path_limit(self) -> None:
        self.assertIsNone(unix_path_problem("/tmp/x/control.sock"))
        self.assertIn("over the system limit", unix_path_problem("/" + "x" * 200) or "")


class DataDirTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = temp_dir(self)

    def test_created_private(self) -> None:
        d = DataDir(self.root / "a" / "b")
        old = os.umask(0o022)
        try:
            self.assertEqual(d.ensure(), [])
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(d.path).st_mode), 0o700)

    def test_existing_loose_directory_warns(self) -> None:
        os.chmod(self.root, 0o755)
        [warning] = DataDir(self.root).ensure()
        self.assertIn("chmod 700", warning)

    def test_not_a_directory(self) -> None:
        (self.root / "file").write_text("x")
        e = self.assertRaises(Exception, DataDir(self.root / "file").ensure)
        self.assertIn("not a directory", str(e))

    def test_lock_is_exclusive_and_released(self) -> None:
        d = DataDir(self.root)
        lock = d.lock()
        self.assertEqual(d.lock_path.read_text().strip(), str(os.getpid()))
        e = self.assertRaises(NodeAlreadyRunning, d.lock)
        self.assertIn("another node is running", str(e))
        self.assertIn(f"pid {os.getpid()}", str(e))
        lock.release()
        lock.release()
        again = DataDirLock(d.lock_path)
        again.acquire()
        self.assertTrue(again.held)
        again.release()

    def test_state_file(self) -> None:
        d = DataDir(self.root)
        self.assertIsNone(d.read_state())
        d.write_state({"pid": 5, "control": "/x"})
        self.assertEqual(d.read_state(), {"pid": 5, "control": "/x"})
        d.state_path.write_text("[1]")
        self.assertIsNone(d.read_state())
        for data in HOSTILE_DOCUMENTS:  # corrupt: no state, never an exception
            d.state_path.write_bytes(data)
            self.assertIsNone(only_refused(self, d.read_state))
        d.remove_state()
        d.remove_state()
        self.assertFalse(d.state_path.exists())


class StateBytesTests(SynchronousTestCase):
    @examples(200)
    @given(hostile_json({"pid": 5, "control": "/x", "addresses": ["tcp:1.2.3.4:5"]}))
    def test_hostile(self, data: bytes) -> None:
        state = only_refused(self, lambda: read_state_bytes(data))
        self.assertTrue(state is None or isinstance(state, dict))


class HelperTests(SynchronousTestCase):
    def test_max_request_holds_the_largest_message(self) -> None:
        self.assertEqual(max_request_for(Config(max_message_size=100)), MIN_MAX_REQUEST)
        big = Config(max_message_size=8 * 1024 * 1024, max_queued_bytes=32 * 1024 * 1024)
        self.assertGreater(max_request_for(big), 8 * 1024 * 1024 * 4 // 3)

    def test_with_timeout(self) -> None:
        clock = Clock()
        inner: Deferred = Deferred()
        out = _with_timeout(inner, 2, clock, lambda: ControlTimeout("slow"))
        clock.advance(2)
        self.failureResultOf(out, ControlTimeout)
        inner.errback(ConnectFailed(None, [], "late"))  # swallowed, not unhandled
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_with_timeout_result_in_time(self) -> None:
        clock = Clock()
        inner: Deferred = Deferred()
        out = _with_timeout(inner, 2, clock, lambda: ControlTimeout("slow"))
        inner.callback("peer")
        self.assertEqual(self.successResultOf(out), "peer")
        self.assertEqual(clock.getDelayedCalls(), [])


class StartupErrorTests(TestCase):
    """Problems found by prepare(): clear messages, nothing left held."""

    def setUp(self) -> None:
        self.root = temp_dir(self)
        self.dir = self.root / "node"

    def node(self, **kw) -> Node:
        kw.setdefault("overrides", {"listen_host": "127.0.0.1"})
        node = Node(self.dir, reactor=reactor, **kw)
        self.addCleanup(lambda: node.closed)
        return node

    def assertStartupError(self, node: Node, *fragments: str) -> StartupError:
        e = self.assertRaises(StartupError, node.prepare)
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        # the lock is free again
        DataDir(self.dir).lock().release()
        return e

    def test_corrupt_key(self) -> None:
        self.dir.mkdir(mode=0o700)
        key = self.dir / "identity.key"
        key.write_text("garbage\n")
        os.chmod(key, 0o600)
        self.assertStartupError(self.node(), "identity", "not a crust identity key file")
        self.assertEqual(key.read_text(), "garbage\n")  # never replaced

    def test_key_readable_by_others(self) -> None:
        self.dir.mkdir(mode=0o700)
        key = self.dir / "identity.key"
        key.write_text(Identity.generate().to_file_text())
        os.chmod(key, 0o644)
        self.assertStartupError(self.node(), "chmod 600")

    def test_invalid_config_names_the_field(self) -> None:
        self.dir.mkdir(mode=0o700)
        (self.dir / "config.json").write_text('{"heartbeat_interval": "soon"}')
        self.assertStartupError(self.node(), "invalid configuration", "heartbeat_interval")

    def test_named_config_file_must_exist(self) -> None:
        self.assertStartupError(self.node(config_file=self.root / "missing.json"), "does not exist")
        self.assertFalse((self.root / "missing.json").exists())

    def test_bad_override(self) -> None:
        self.assertStartupError(self.node(overrides={"listen_host": "127.0.0.1", "connect_timeout": -1}),
                                "connect_timeout")

    def test_port_in_use(self) -> None:
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        self.assertStartupError(self.node(overrides={"listen_host": "127.0.0.1", "listen_port": port}),
                                f"cannot listen on tcp 127.0.0.1:{port}")

    def test_bad_metrics_endpoint(self) -> None:
        self.assertStartupError(self.node(metrics="carrier-pigeon:9464"), "invalid metrics endpoint",
                                "carrier-pigeon:9464")

    def test_metrics_port_in_use(self) -> None:
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        self.assertStartupError(self.node(metrics=f"tcp:{port}:interface=127.0.0.1"),
                                f"cannot serve metrics on tcp:{port}:interface=127.0.0.1")

    def test_live_control_socket_elsewhere(self) -> None:
        path = str(self.root / "c.sock")
        s = socket.socket(socket.AF_UNIX)
        self.addCleanup(s.close)
        s.bind(path)
        s.listen(1)
        self.assertStartupError(self.node(control=path), "another node", path)

    def test_another_node_on_the_directory(self) -> None:
        DataDir(self.dir).ensure()
        lock = DataDir(self.dir).lock()
        self.addCleanup(lock.release)
        node = self.node()
        e = self.assertRaises(StartupError, node.prepare)
        self.assertIn("another node is running with this data dir", str(e))


class RunningNodeTests(TestCase):
    """Real nodes in this process, on 127.0.0.1."""

    timeout = 20

    def start_node(self, name: str, **kw) -> Node:
        root = temp_dir(self)
        kw.setdefault("overrides", {"listen_host": "127.0.0.1", "network_name": "test-node"})
        node = Node(root / name, reactor=reactor, **kw)
        node.startService()
        self.addCleanup(node.stopService)
        return node

    def test_layout_and_state(self) -> None:
        node = self.start_node("a")
        d = node.data_dir
        self.assertEqual(stat.S_IMODE(os.stat(d.path).st_mode), 0o700)
        self.assertEqual(Identity.load(d.identity_path).peer_id, node.peer_id)
        self.assertTrue(d.config_path.exists())
        self.assertEqual(stat.S_IMODE(os.stat(d.control_path).st_mode), 0o600)
        state = d.read_state()
        self.assertEqual((state["pid"], state["peer_id"], state["control"]),
                         (os.getpid(), str(node.peer_id), str(d.control_path)))
        self.assertEqual(node.config.listen_host, "127.0.0.1")
        self.assertEqual(node.config.network_name, "test-node")  # the override beats the file

    @inlineCallbacks
    def test_stop_cleans_up_and_restart_keeps_identity(self):
        node = self.start_node("a")
        d, peer_id = node.data_dir, node.peer_id
        yield node.stopService()
        self.assertFalse(d.control_path.exists())
        self.assertFalse(d.state_path.exists())
        again = Node(d.path, reactor=reactor, overrides={"listen_host": "127.0.0.1"})
        again.startService()
        self.addCleanup(again.stopService)
        self.assertEqual(again.peer_id, peer_id)

    def test_stale_socket_is_replaced(self) -> None:
        root = temp_dir(self)
        d = DataDir(root / "a")
        d.ensure()
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(d.control_path))
        s.close()  # a dead node's socket
        node = Node(d.path, reactor=reactor, overrides={"listen_host": "127.0.0.1"})
        node.startService()
        self.addCleanup(node.stopService)
        probe = socket.socket(socket.AF_UNIX)
        self.addCleanup(probe.close)
        probe.connect(str(d.control_path))  # a live socket now

    def test_config_file_values_are_used(self) -> None:
        root = temp_dir(self)
        (root / "a").mkdir(mode=0o700)
        (root / "a" / "config.json").write_text(json.dumps({"network_name": "from-file", "connect_timeout": 7}))
        node = Node(root / "a", reactor=reactor, overrides={"listen_host": "127.0.0.1"})
        node.startService()
        self.addCleanup(node.stopService)
        self.assertEqual((node.config.network_name, node.config.connect_timeout), ("from-file", 7.0))
        # what the file leaves out takes the ready node's defaults, not the library's
        self.assertEqual((node.config.accept_bootstrap, node.config.serve_rendezvous, node.config.serve_relay),
                         (True, True, True))

    @inlineCallbacks
    def test_describe(self):
        node = self.start_node("a")
        info = yield node.describe()
        self.assertEqual(info["peer_id"], str(node.peer_id))
        self.assertEqual(info["network_name"], "test-node")
        self.assertEqual(info["connection_info"]["id"], str(node.peer_id))
        self.assertTrue(info["listen_addresses"][0].startswith("tcp:127.0.0.1:"))
        self.assertEqual(info["connection_info"]["addrs"], info["listen_addresses"])
        self.assertEqual(info["peers"], 0)

    @inlineCallbacks
    def test_two_nodes_through_their_control_sockets(self):
        a, b = self.start_node("a"), self.start_node("b")
        ca = yield connect_control(reactor, a.control_path)
        self.addCleanup(ca.transport.loseConnection)
        cb = yield connect_control(reactor, b.control_path)
        self.addCleanup(cb.transport.loseConnection)

        arrived: Deferred = Deferred()
        cb.on_event = lambda e: arrived.callback(e) if e["event"] == "new_message" and not arrived.called else None
        yield cb.request("watch")

        b_info = (yield cb.request("connection-info"))["connection_info"]
        connected = yield ca.request("connect", info=b_info, timeout=10)
        self.assertEqual(connected["peer_id"], str(b.peer_id))
        self.assertEqual(connected["path"]["kind"], "direct")  # how the connection was made, and in how long
        self.assertEqual(connected["path"]["strategy"], connected["transport"])
        self.assertLess(connected["path"]["elapsed"], 10)
        peers = (yield ca.request("peers"))["peers"]
        self.assertEqual([p["peer_id"] for p in peers], [str(b.peer_id)])

        yield ca.request("send", peer_id=str(b.peer_id), text="hello b")
        event = yield arrived
        self.assertEqual((event["peer_id"], event["text"]), (str(a.peer_id), "hello b"))

        lost: Deferred = Deferred()
        ca.on_event = lambda e: lost.callback(e) if e["event"] == "lost_peer" and not lost.called else None
        yield ca.request("watch", events=["lost_peer"])
        yield ca.request("disconnect", peer_id=str(b.peer_id))
        event = yield lost
        self.assertEqual(event["peer_id"], str(b.peer_id))
        error = yield self.assertFailure(ca.request("send", peer_id=str(b.peer_id), text="x"), ControlError)
        self.assertEqual(error.code, "not-connected")

    @inlineCallbacks
    def test_connect_failure_is_reported(self):
        a = self.start_node("a")
        ca = yield connect_control(reactor, a.control_path)
        self.addCleanup(ca.transport.loseConnection)
        # a closed port on loopback: refused at once
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        nobody = PubConnectionInfo.from_json(json.dumps(
            {"crust": 1, "id": str(Identity.generate().peer_id), "addrs": [f"tcp:127.0.0.1:{port}"]}))
        error = yield self.assertFailure(ca.request("connect", info=nobody.to_json(), timeout=10), ControlError)
        self.assertEqual(error.code, "connect-failed")
        self.assertIn(f"127.0.0.1:{port}", error.message)
        error = yield self.assertFailure(ca.request("connect", info=(yield ca.request("connection-info"))
                                                    ["connection_info"]), ControlError)
        self.assertEqual(error.code, "connect-failed")  # ourselves

    @inlineCallbacks
    def test_metrics_served_while_running(self):
        from prometheus_client.parser import text_string_to_metric_families
        from twisted.internet.error import ConnectionRefusedError
        from twisted.web.client import Agent, readBody

        a = self.start_node("a", metrics="tcp:0:interface=127.0.0.1")
        b = self.start_node("b")
        url = a.metrics_url
        self.assertRegex(url, r"^http://127\.0\.0\.1:\d+/metrics$")
        self.assertEqual((yield a.describe())["metrics"], url)
        self.assertIsNone((yield b.describe())["metrics"])

        @inlineCallbacks
        def scrape():
            response = yield Agent(reactor).request(b"GET", url.encode("ascii"))
            body = (yield readBody(response)).decode("utf-8")
            return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                    for family in text_string_to_metric_families(body) for sample in family.samples}

        found = yield scrape()
        self.assertEqual(found[("crust_peers", ())], 0)
        self.assertGreater(found[("process_open_fds", ())], 0)  # the process's figures beside the node's

        yield a.connect((yield b.connection_info()))
        found = yield scrape()
        self.assertEqual(found[("crust_peers", ())], 1)
        self.assertEqual(found[("crust_connect_attempts_total", (("outcome", "success"), ("path", "direct")))], 1)

        yield a.stopService()
        yield self.assertFailure(Agent(reactor).request(b"GET", url.encode("ascii")), ConnectionRefusedError)

    def test_no_control_socket(self) -> None:
        node = self.start_node("a", control=None)
        self.assertIsNone(node.control)
        self.assertFalse(node.data_dir.control_path.exists())


class NodeBootstrapTests(TestCase):
    timeout = 30

    def start_node(self, name: str, root: Path, **overrides) -> Node:
        overrides.setdefault("listen_host", "127.0.0.1")
        overrides.setdefault("network_name", "test-bootstrap")
        node = Node(root / name, reactor=reactor, overrides=overrides)
        node.startService()
        self.addCleanup(node.stopService)
        return node

    @inlineCallbacks
    def test_bootstraps_at_start_off_its_contacts(self):
        from crust.config import HardCodedContact
        from tests.util import wait_for

        root = temp_dir(self)
        seed = self.start_node("seed", root)
        self.assertTrue(seed.config.accept_bootstrap)  # on in the ready node
        contact = HardCodedContact(seed.peer_id, seed.service.listen_addresses[0])
        node = self.start_node("node", root, hard_coded_contacts=(contact,))
        yield wait_for(lambda: node.service.bootstrapped_to is not None)
        peer, address = node.service.bootstrapped_to
        self.assertEqual(peer, seed.peer_id)
        self.assertIn(address, seed.service.listen_addresses)  # the contact, or the seed found on the LAN
        info = yield node.describe()
        self.assertEqual(info["bootstrapped_to"], {"peer_id": str(seed.peer_id), "address": str(address)})
        yield wait_for(lambda: node.peer_id in seed.service.connected_peers())
        # the same through the control socket
        client = yield connect_control(reactor, node.control_path)
        self.addCleanup(client.transport.loseConnection)
        result = yield client.request("bootstrap", role="client")
        self.assertEqual(result["peer_id"], str(seed.peer_id))
        cache = yield client.request("cache")
        self.assertEqual(cache, {"peers": []})  # hard-coded contacts are not cached
        with self.assertRaises(ControlError):
            yield client.request("bootstrap", role="admiral")

    @inlineCallbacks
    def test_config_file_reload_applies_whitelists(self):
        from tests.util import wait_for

        root = temp_dir(self)
        a = self.start_node("a", root)
        b = self.start_node("b", root)
        info = yield b.connection_info()
        yield a.connect(info)
        yield wait_for(lambda: a.peer_id in b.service.connected_peers())
        path = b.data_dir.config_path
        body = json.loads(path.read_text())
        body["whitelisted_node_ips"] = ["10.99.0.0/16"]
        path.write_text(json.dumps(body))
        b.reload_config()  # what SIGHUP does; the file watcher would also see it
        self.assertEqual(b.service.config.whitelisted_node_ips, ("10.99.0.0/16",))
        yield wait_for(lambda: not b.service.connected_peers() and not a.service.connected_peers())

    @inlineCallbacks
    def test_invalid_config_edit_keeps_the_old_config(self):
        root = temp_dir(self)
        a = self.start_node("a", root)
        before = a.service.config
        a.data_dir.config_path.write_text('{"listen_port": "eighty"}')
        a.reload_config()
        self.assertEqual(a.service.config, before)
        yield succeed_later()


class NodeRebootstrapTests(TestCase):
    """The ready node bootstraps again while it has no peer (L{crust.bootstrap.keeper})."""

    timeout = 60

    def start_node(self, name: str, root: Path, cleanup: bool = True, **overrides) -> Node:
        overrides.setdefault("listen_host", "127.0.0.1")
        overrides.setdefault("network_name", "test-rebootstrap")
        overrides.update(enable_service_discovery=False, enable_port_mapping=False)
        node = Node(root / name, reactor=reactor, overrides=overrides, control=None)
        node.startService()
        if cleanup:
            self.addCleanup(node.stopService)
        return node

    def seed_contact(self, seed: Node):
        from crust.config import HardCodedContact

        address = [a for a in seed.service.listen_addresses if a.transport == "tcp"][0]
        return HardCodedContact(seed.peer_id, address)

    @inlineCallbacks
    def seed_not_up(self, root: Path):
        """The contact of a seed (in C{root}/seed) that is not running: it ran once, for its identity and port."""
        seed = self.start_node("seed", root, cleanup=False)
        contact = self.seed_contact(seed)
        yield seed.stopService()
        return contact

    @inlineCallbacks
    def test_bootstraps_once_its_seed_is_up(self):
        from tests.util import wait_for

        root = temp_dir(self)
        contact = yield self.seed_not_up(root)
        node = self.start_node("node", root, hard_coded_contacts=(contact,), bootstrap_retry_max=1.0)
        yield wait_for(lambda: node.keeper.failures >= 2, timeout=20)  # refused, and refused again
        self.assertIsNone(node.service.bootstrapped_to)
        seed = self.start_node("seed", root, listen_port=contact.address.port)
        yield wait_for(lambda: node.service.bootstrapped_to is not None, timeout=20)
        self.assertEqual(node.service.bootstrapped_to[0], seed.peer_id)
        info = yield node.describe()
        self.assertEqual(info["rebootstrap"], {"state": "held", "failures": 0, "next_attempt_in": None})

    @inlineCallbacks
    def test_bootstraps_again_after_losing_its_seed(self):
        from crust.observer import RecordingObserver
        from tests.util import wait_for

        root = temp_dir(self)
        seed = self.start_node("seed", root, cleanup=False)
        contact = self.seed_contact(seed)
        node = self.start_node("node", root, hard_coded_contacts=(contact,), bootstrap_retry_max=1.0)
        events = RecordingObserver()
        node.service.add_observer(events)
        yield wait_for(lambda: seed.peer_id in node.service.connected_peers())
        yield wait_for(lambda: node.keeper.state == "held")
        yield seed.stopService()  # a seed restarting
        yield wait_for(lambda: not node.service.connected_peers())
        self.assertIn(node.keeper.state, ("waiting", "bootstrapping"))
        seed = self.start_node("seed", root, listen_port=contact.address.port)
        yield wait_for(lambda: seed.peer_id in node.service.connected_peers(), timeout=20)
        yield wait_for(lambda: node.keeper.state == "held")
        # at start, and again once the seed was back
        self.assertEqual([args[0] for args in events.named("bootstrap_connect")], [seed.peer_id] * 2)

    @inlineCallbacks
    def test_zero_retry_maximum_bootstraps_only_at_start(self):
        from tests.util import sleep, wait_for

        root = temp_dir(self)
        contact = yield self.seed_not_up(root)
        node = self.start_node("node", root, hard_coded_contacts=(contact,), bootstrap_retry_max=0.0)
        yield wait_for(lambda: node.keeper.failures == 1)
        self.start_node("seed", root, listen_port=contact.address.port)
        yield sleep(3.0)
        self.assertIsNone(node.service.bootstrapped_to)
        self.assertEqual((node.keeper.state, node.keeper.failures), ("idle", 1))


def succeed_later():
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0, lambda: None)


class NodeNetcheckTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_netcheck_through_the_control_socket(self):
        root = temp_dir(self)
        node = Node(root / "n", reactor=reactor, overrides={"listen_host": "127.0.0.1"})
        node.startService()
        self.addCleanup(node.stopService)
        client = yield connect_control(reactor, node.control_path)
        self.addCleanup(client.transport.loseConnection)
        result = yield client.request("netcheck")
        report = result["report"]
        self.assertIn("udp", json.dumps(report))
        self.assertIn(str(node.service.listen_addresses[0]), json.dumps(report))
        self.assertTrue(result["text"].strip())
