"""
Tests for L{crust.node.tap} and the twistd drop-in: option parsing, makeService,
the JSON log observer, plugin discovery (in this process and through a
C{twistd} subprocess), and clean failures of a C{twistd crust node} run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.logger import ILogObserver, LogLevel
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from crust.node import tap
from crust.node.datadir import DataDir
from crust.node.node import Node

REPO = Path(__file__).resolve().parent.parent.parent
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


def temp_dir(case) -> Path:
    path = tempfile.mkdtemp(prefix="crust-tap-")
    case.addCleanup(shutil.rmtree, path, True)
    return Path(path)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra)
    return env


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        old = os.environ.get("CRUST_DATA_DIR")
        os.environ["CRUST_DATA_DIR"] = "/srv/default-crust"

        def restore() -> None:
            if old is None:
                os.environ.pop("CRUST_DATA_DIR", None)
            else:
                os.environ["CRUST_DATA_DIR"] = old

        self.addCleanup(restore)

    def test_defaults(self) -> None:
        options = parse("node")
        self.assertEqual(options.subCommand, "node")
        sub = options.subOptions
        self.assertEqual(sub["data-dir"], "/srv/default-crust")
        for name in ("listen-port", "listen-host", "network", "config", "control", "log-json", "metrics"):
            self.assertIsNone(sub[name], name)
        self.assertEqual(sub["control-path"], "default")
        self.assertEqual(sub.overrides(), {})

    def test_values(self) -> None:
        sub = parse("node", "--data-dir", "/tmp/n1", "--listen-port", "5483", "--listen-host", "127.0.0.1",
                    "--network", "lab", "--config", "/etc/crust.json", "--control", "unix:/run/c.sock",
                    "--log-json", "/var/log/crust.json").subOptions
        self.assertEqual(sub["data-dir"], "/tmp/n1")
        self.assertEqual(sub["listen-port"], 5483)
        self.assertEqual(sub["config"], "/etc/crust.json")
        self.assertEqual(sub["control-path"], "/run/c.sock")
        self.assertEqual(sub["log-json"], "/var/log/crust.json")
        self.assertEqual(sub.overrides(), {"listen_port": 5483, "listen_host": "127.0.0.1", "network_name": "lab"})

    def test_short_options_and_normalising(self) -> None:
        sub = parse("node", "-d", "rel/dir", "-p", "0", "--listen-host", "[::1]", "-n", "x").subOptions
        self.assertEqual(sub["data-dir"], os.path.abspath("rel/dir"))
        self.assertEqual(sub.overrides(), {"listen_port": None, "listen_host": "::1", "network_name": "x"})

    def test_control_none(self) -> None:
        self.assertIsNone(parse("node", "--control", "none").subOptions["control-path"])

    def test_bad_values(self) -> None:
        bad = [
            ["node", "--listen-port", "70000"],
            ["node", "--listen-port", "-1"],
            ["node", "--listen-port", "http"],
            ["node", "--listen-host", "example.com"],
            ["node", "--listen-host", "300.1.1.1"],
            ["node", "--network", ""],
            ["node", "--network", "x" * 256],
            ["node", "--control", "tcp:9999"],
            ["node", "--control", "unix:"],
            ["node", "--frobnicate"],
            ["node", "extra-argument"],
            ["launch"],
            [],
        ]
        for args in bad:
            self.assertRaises(usage.UsageError, parse, *args)

    def test_messages_name_the_problem(self) -> None:
        e = self.assertRaises(usage.UsageError, parse, "node", "--listen-host", "example.com")
        self.assertIn("--listen-host must be an IP address", str(e))
        e = self.assertRaises(usage.UsageError, parse, "node", "--control", "tcp:9999")
        self.assertIn("UNIX socket", str(e))
        e = self.assertRaises(usage.UsageError, parse)
        self.assertIn("subcommand", str(e))

    def test_help_mentions_the_options(self) -> None:
        text = str(tap.NodeOptions())
        for option in ("--data-dir", "--listen-port", "--listen-host", "--network", "--config", "--control",
                       "--log-json", "--metrics"):
            self.assertIn(option, text)


class JSONLogTests(SynchronousTestCase):
    def test_json_lines_on_stdout(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = tap.jsonLogObserver()
        self.assertTrue(ILogObserver.providedBy(observer))
        observer({"log_format": "ready: {peer_id}", "peer_id": "abc", "log_level": LogLevel.info,
                  "log_namespace": "crust.node.node.Node", "log_time": 1.5})
        [line] = out.getvalue().splitlines()
        event = json.loads(line)  # no RS prefix: plain JSON lines
        self.assertEqual((event["peer_id"], event["log_format"], event["log_level"]["name"]),
                         ("abc", "ready: {peer_id}", "info"))


class MakeServiceTests(TestCase):
    def setUp(self) -> None:
        self.root = temp_dir(self)

    def make(self, *args: str):
        options = parse("node", "--data-dir", str(self.root / "n"), "--listen-host", "127.0.0.1", *args)
        return tap.makeService(options, reactor=reactor)

    def test_builds_a_prepared_node(self) -> None:
        node = self.make("--network", "lab")
        self.addCleanup(node.stopService)
        self.assertIsInstance(node, Node)
        self.assertTrue(node.prepared)
        self.assertEqual(node.config.network_name, "lab")
        self.assertEqual(node.config.listen_host, "127.0.0.1")
        self.assertTrue(DataDir(self.root / "n").identity_path.exists())
        self.assertTrue(os.path.exists(node.control_path))
        self.assertIs(node.getServiceNamed("control"), node.control)

    def test_metrics_endpoint(self) -> None:
        node = self.make("--metrics", "tcp:0:interface=127.0.0.1")
        self.addCleanup(node.stopService)
        self.assertEqual(node.metrics_endpoint, "tcp:0:interface=127.0.0.1")
        self.assertTrue(node.metrics_url.startswith("http://127.0.0.1:"))
        e = self.assertRaises(SystemExit, tap.makeService,
                              parse("node", "--data-dir", str(self.root / "m"), "--listen-host", "127.0.0.1",
                                    "--metrics", "nonsense"), reactor)
        self.assertIn("invalid metrics endpoint 'nonsense'", e.code)

    def test_problems_exit_with_one_line(self) -> None:
        node = self.make()
        self.addCleanup(node.stopService)
        e = self.assertRaises(SystemExit, self.make)
        self.assertIsInstance(e.code, str)
        self.assertTrue(e.code.startswith("crust node: error: another node is running"), e.code)
        self.assertNotIn("\n", e.code)

    def test_corrupt_key_exits(self) -> None:
        d = self.root / "n"
        d.mkdir(mode=0o700)
        (d / "identity.key").write_text("not a key")
        os.chmod(d / "identity.key", 0o600)
        e = self.assertRaises(SystemExit, self.make)
        self.assertIn("identity", e.code)

    def test_json_log_file(self) -> None:
        from twisted.logger import Logger, globalLogPublisher

        path = self.root / "log.json"
        node = self.make("--log-json", str(path))
        self.addCleanup(node.stopService)
        observer = node.json_log_observer
        self.addCleanup(observer.file.close)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        Logger(namespace="crust.test").info("hello {who}", who="json")
        events = [json.loads(line) for line in path.read_text().splitlines()]
        self.assertIn("json", [e.get("who") for e in events])


class PluginTests(SynchronousTestCase):
    def test_drop_in_layout(self) -> None:
        plugins = REPO / "twisted" / "plugins"
        self.assertFalse((plugins / "__init__.py").exists(), "twisted/plugins must not be a package")
        source = (plugins / "crust_plugin.py").read_text()
        self.assertNotIn("import crust", source)  # lazy: twistd imports every drop-in
        self.assertIn('"crust.node.tap"', source)

    def test_found_by_getPlugins(self) -> None:
        [maker] = [p for p in getPlugins(IServiceMaker) if p.tapname == "crust"]
        self.assertIs(maker.options, tap.Options)
        self.assertIs(maker.makeService, tap.makeService)

    def run_twistd(self, *args: str, env=None, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(TWISTD + list(args), capture_output=True, text=True, timeout=timeout,
                              env=env or subprocess_env(), cwd=str(temp_dir(self)))

    def test_twistd_help_lists_crust(self) -> None:
        result = self.run_twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"(?m)^\s+crust\s")
        node_help = self.run_twistd("crust", "node", "--help")
        self.assertEqual(node_help.returncode, 0, node_help.stderr)
        self.assertIn("--data-dir", node_help.stdout)

    def test_corrupt_dropin_cache_is_harmless(self) -> None:
        # a copy of the drop-in next to a garbage dropin.cache, as a stale install could leave it
        root = temp_dir(self)
        plugins = root / "twisted" / "plugins"
        plugins.mkdir(parents=True)
        shutil.copy(REPO / "twisted" / "plugins" / "crust_plugin.py", plugins / "crust_plugin.py")
        (plugins / "dropin.cache").write_bytes(b"\x80\x04garbage, not a pickle")
        env = subprocess_env()
        env["PYTHONPATH"] = os.pathsep.join([str(root), str(REPO)])
        result = self.run_twistd("--help", env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"(?m)^\s+crust\s")

    def test_bad_start_is_one_clear_line(self) -> None:
        d = temp_dir(self) / "n"
        d.mkdir(mode=0o700)
        (d / "identity.key").write_text("garbage\n")
        os.chmod(d / "identity.key", 0o600)
        result = self.run_twistd("-n", "--pidfile=", "crust", "node", "--data-dir", str(d),
                                 "--listen-host", "127.0.0.1")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("crust node: error: cannot use the identity key", result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_bad_option_is_a_usage_error(self) -> None:
        result = self.run_twistd("-n", "--pidfile=", "crust", "node", "--listen-port", "99999")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("port out of range", result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)


class TransportOptionTests(SynchronousTestCase):
    def parse(self, *argv):
        from crust.node.tap import Options

        options = Options()
        options.parseOptions(["node", "--data-dir", self.mktemp(), *argv])
        return options.subOptions

    def test_transport_flags_become_config_overrides(self):
        sub = self.parse("--no-udp", "--no-port-mapping", "--no-discovery", "--listen-port", "4444")
        self.assertEqual(sub.overrides(), {"listen_port": 4444, "enable_udp": False,
                                           "enable_port_mapping": False, "enable_service_discovery": False})
        self.assertEqual(self.parse("--no-tcp", "--udp-port", "5555").overrides(),
                         {"udp_listen_port": 5555, "enable_tcp": False})

    def test_no_transport_at_all_is_refused(self):
        from twisted.python.usage import UsageError

        self.assertRaises(UsageError, self.parse, "--no-tcp", "--no-udp")


class QuietLogTests(TestCase):
    """The ready node's log says what a person needs, without Twisted's per-port chatter."""

    def lines(self, verbose, events):
        import io

        from twisted.logger import LogLevel

        from crust.node import tap

        out = io.StringIO()
        original = tap._real_stdout
        tap._real_stdout = lambda: out
        try:
            observer = tap.quietLogObserver(verbose=verbose)
        finally:
            tap._real_stdout = original
        for namespace, level, text in events:
            observer({"log_namespace": namespace, "log_level": getattr(LogLevel, level), "log_format": text,
                      "log_time": 0.0, "log_system": "-"})
        return out.getvalue()

    EVENTS = [
        ("log_legacy", "info", "_AcceptRoles starting on 4242"),
        ("log_legacy", "info", "(UDP Port 4243 Closed)"),
        ("log_legacy", "info", "(TCP Port 4242 Closed)"),
        ("twisted.scripts._twistd_unix.UnixAppLogger", "info", "reactor class: twisted.internet.epollreactor.X."),
        ("crust.node.node.Node", "info", "crust node ready: peer id abc"),
        ("crust.node.config_file", "debug", "config file unchanged"),
        ("crust.peering.table.PeerTable", "warn", "dropped 3 message(s)"),
    ]

    def test_default_keeps_what_matters(self):
        text = self.lines(False, self.EVENTS)
        self.assertIn("crust node ready", text)
        self.assertIn("dropped 3 message(s)", text)
        for noise in ("starting on 4242", "Port 4243 Closed", "Port 4242 Closed", "reactor class", "unchanged"):
            self.assertNotIn(noise, text)

    def test_verbose_keeps_everything(self):
        text = self.lines(True, self.EVENTS)
        for line in ("starting on 4242", "Port 4243 Closed", "config file unchanged", "crust node ready"):
            self.assertIn(line, text)
