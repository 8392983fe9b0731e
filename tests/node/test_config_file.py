"""Tests for crust.node.config_file: the JSON config file, its reloading, whitelists."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from pathlib import Path

from hypothesis import given
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from crust.address import Address
from crust.config import BootstrapCacheConfig, Config, HardCodedContact
from crust.node.config_file import (
    CONFIG_FILE_NAME,
    ConfigFileError,
    ConfigWatcher,
    _FIELDS,
    config_path,
    config_to_json,
    ip_allowed,
    load_config,
    load_or_create_config,
    parse_config,
    peer_ip_allowed,
)
from crust.errors import ConfigError
from crust.identity import Identity
from crust.roles import Role
from tests import examples
from tests.hostile_json import HOSTILE_DOCUMENTS, hostile_json, only_refused


def peer(n: int):
    return Identity.from_seed(bytes([n]) * 32).peer_id


class LogCapture:
    def __init__(self, case: unittest.TestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def at(self, level: str) -> list[dict]:
        return [e for e in self.events if e.get("log_level") is not None and e["log_level"].name == level]


class DefaultFileTests(unittest.TestCase):
    def test_missing_file_is_created_with_defaults(self) -> None:
        d = Path(self.mktemp())
        config = load_or_create_config(d)
        self.assertEqual(config, Config())
        path = d / CONFIG_FILE_NAME
        self.assertEqual(config_path(d), path)
        text = path.read_text()
        self.assertIn('\n  "listen_port": null,\n', text)  # pretty-printed
        body = json.loads(text)
        self.assertEqual(body["service_discovery_port"], 5484)
        self.assertEqual(body["service_discovery_listener_port"], 5484)
        self.assertEqual(body["bootstrap_cache"], {"file": None, "max_size": 200, "timeout": 120.0})
        self.assertIsNone(body["whitelisted_node_ips"])
        self.assertEqual(parse_config(text), Config())
        self.assertEqual([p.name for p in d.iterdir()], [CONFIG_FILE_NAME])  # no temporary left over

    def test_every_config_field_is_in_the_file(self) -> None:
        self.assertEqual(set(_FIELDS), {f.name for f in dataclasses.fields(Config)})

    def test_no_create(self) -> None:
        path = Path(self.mktemp())
        e = self.assertRaises(ConfigFileError, load_config, path, create=False)
        self.assertIn("does not exist", str(e))
        self.assertFalse(path.exists())

    def test_round_trip(self) -> None:
        config = Config(
            network_name="testnet",
            listen_port=5483,
            hard_coded_contacts=(HardCodedContact(peer(1), Address.parse("tcp:203.0.113.5:5483")),
                                 HardCodedContact(peer(2), Address.parse("udp:[2001:db8::1]:5483"))),
            bootstrap_cache=BootstrapCacheConfig(file="cache.json", max_size=10, timeout=30.0),
            whitelisted_node_ips=("10.0.0.0/8", "192.0.2.7"),
            whitelisted_client_ips=(),
            stun_servers=(Address.parse("udp:198.51.100.1:3478"),),
        )
        self.assertEqual(parse_config(config_to_json(config)), config)

    def test_empty_object_and_comments(self) -> None:
        self.assertEqual(parse_config("{}"), Config())
        self.assertEqual(parse_config('{"_comment": "seed nodes below", "listen_port": 4000}').listen_port, 4000)

    def test_missing_fields_take_the_given_defaults(self) -> None:
        defaults = Config(accept_bootstrap=True, serve_relay=True)
        config = parse_config('{"listen_port": 4000, "serve_relay": false}', defaults=defaults)
        self.assertEqual((config.listen_port, config.accept_bootstrap, config.serve_relay), (4000, True, False))
        path = Path(self.mktemp())
        path.write_text('{"listen_port": 4000}')
        self.assertTrue(load_config(path, defaults=defaults).accept_bootstrap)
        self.assertFalse(load_config(path).accept_bootstrap)  # the library's own

    def test_listener_port_null_follows_discovery_port(self) -> None:
        c = parse_config('{"service_discovery_port": 6000, "service_discovery_listener_port": null}')
        self.assertEqual((c.service_discovery_port, c.service_discovery_listener_port), (6000, 6000))
        c = parse_config('{"service_discovery_port": 6000, "service_discovery_listener_port": 6001}')
        self.assertEqual(c.service_discovery_listener_port, 6001)

    def test_whitelist_entries_are_canonical(self) -> None:
        c = parse_config('{"whitelisted_node_ips": ["::ffff:10.0.0.1", " 192.168.0.0/16", "2001:DB8::/32"]}')
        self.assertEqual(c.whitelisted_node_ips, ("10.0.0.1", "192.168.0.0/16", "2001:db8::/32"))

    def test_utf8_bom_accepted(self) -> None:
        self.assertEqual(parse_config('\ufeff{"network_name": "n"}'.encode("utf-8")).network_name, "n")

    def test_relays(self) -> None:
        config = parse_config('{"accept_relayed": false, "relay_limits": {"window": 262144}}')
        self.assertEqual((config.accept_relayed, config.relay_limits.window), (False, 262144))
        self.assertEqual(config.relay_limits.circuits_total, 64)

    def test_upgrade_intervals(self) -> None:
        config = parse_config('{"upgrade_interval": 1, "upgrade_interval_max": 2.5}')
        self.assertEqual((config.upgrade_interval, config.upgrade_interval_max), (1.0, 2.5))
        self.assertEqual((Config().upgrade_interval, Config().upgrade_interval_max), (5.0, 300.0))

    def test_integral_numbers_for_durations(self) -> None:
        self.assertEqual(parse_config('{"heartbeat_interval": 5}').heartbeat_interval, 5.0)


GOOD_ID = str(peer(1))

# (document, expected field path, text the message must contain (the value))
INVALID = [
    ('{"quic_dial_delay": -0.1}', "quic_dial_delay", "-0.1"),
    ('{"quic_dial_delay": "soon"}', "quic_dial_delay", '"soon"'),
    ('{"listen_port": "80"}', "listen_port", '"80"'),
    ('{"listen_port": 0}', "listen_port", "0"),
    ('{"listen_port": 70000}', "listen_port", "70000"),
    ('{"service_discovery_port": -1}', "service_discovery_port", "-1"),
    ('{"service_discovery_listener_port": 1.5}', "service_discovery_listener_port", "1.5"),
    ('{"enable_tcp": "yes"}', "enable_tcp", '"yes"'),
    ('{"max_message_size": true}', "max_message_size", "true"),
    ('{"heartbeat_interval": 0}', "heartbeat_interval", "0"),
    ('{"connect_timeout": -3}', "connect_timeout", "-3"),
    ('{"bootstrap_concurrency": 0}', "bootstrap_concurrency", "0"),
    ('{"network_name": ""}', "network_name", '""'),
    ('{"network_name": 5}', "network_name", "5"),
    ('{"listen_host": "localhost"}', "listen_host", '"localhost"'),
    ('{"listen_prot": 5}', "listen_prot", "listen_port"),
    ('{"hard_coded_contacts": {}}', "hard_coded_contacts", "{}"),
    ('{"hard_coded_contacts": [{"peer_id": "%s", "address": "tcp:1.2.3.4:1"}, '
     '{"peer_id": "%s", "address": "tcp:1.2.3.4:2"}, '
     '{"peer_id": "%s", "address": "tcp:1.2.3:80"}]}' % (GOOD_ID, GOOD_ID, GOOD_ID),
     "hard_coded_contacts[2].address", '"tcp:1.2.3:80"'),
    ('{"hard_coded_contacts": [{"peer_id": "not-a-peer", "address": "tcp:1.2.3.4:1"}]}',
     "hard_coded_contacts[0].peer_id", '"not-a-peer"'),
    ('{"hard_coded_contacts": [{"peer_id": "%s"}]}' % GOOD_ID, "hard_coded_contacts[0].address", "required"),
    ('{"hard_coded_contacts": [{"peer_id": "%s", "address": "1.2.3.4:5"}]}' % GOOD_ID,
     "hard_coded_contacts[0].address", '"1.2.3.4:5"'),
    ('{"hard_coded_contacts": [{"peer_id": "%s", "address": "tcp:1.2.3.4:5", "addr": 1}]}' % GOOD_ID,
     "hard_coded_contacts[0].addr", "unknown field"),
    ('{"bootstrap_cache": {"max_size": -1}}', "bootstrap_cache.max_size", "-1"),
    ('{"bootstrap_cache": {"timeout": 0}}', "bootstrap_cache.timeout", "0"),
    ('{"bootstrap_cache": {"file_name": "x"}}', "bootstrap_cache.file_name", "did you mean 'file'"),
    ('{"bootstrap_cache": []}', "bootstrap_cache", "[]"),
    ('{"whitelisted_node_ips": ["10.0.0.1", "10.0.0.300"]}', "whitelisted_node_ips[1]", '"10.0.0.300"'),
    ('{"whitelisted_client_ips": ["10.0.0.1/8"]}', "whitelisted_client_ips[0]", "10.0.0.0/8"),
    ('{"whitelisted_client_ips": "10.0.0.1"}', "whitelisted_client_ips", '"10.0.0.1"'),
    ('{"stun_servers": ["udp:198.51.100.1"]}', "stun_servers[0]", '"udp:198.51.100.1"'),
    ('{"max_message_size": 4096, "max_queued_bytes": 1024}', "max_queued_bytes", "1024"),
    ('{"heartbeat_interval": 30, "inactivity_timeout": 30}', "inactivity_timeout", "30"),
    ('{"relay_limits": {"window": 1000}}', "relay_limits.window", "1000"),
    ('{"accept_relayed": 1}', "accept_relayed", "1"),
    ('{"upgrade_interval": 0}', "upgrade_interval", "0"),
    ('{"upgrade_interval": 10, "upgrade_interval_max": 5}', "upgrade_interval_max", "5"),
]


class ValidationTests(unittest.TestCase):
    def test_each_error_names_field_and_value(self) -> None:
        for doc, field, value_text in INVALID:
            with self.subTest(doc=doc):
                e = self.assertRaises(ConfigFileError, parse_config, doc, "my.json")
                self.assertIsInstance(e, ConfigError)
                self.assertEqual(e.field, field, str(e))
                self.assertIn(f"my.json: {field}: ", str(e))
                self.assertIn(value_text, str(e))

    def test_bootstrap_retry_max_zero_or_more_seconds(self) -> None:
        self.assertEqual(parse_config('{"bootstrap_retry_max": 0}', "my.json").bootstrap_retry_max, 0.0)
        for bad in ("-1", "true", '"60"', "700000"):
            e = self.assertRaises(ConfigFileError, parse_config, '{"bootstrap_retry_max": %s}' % bad, "my.json")
            self.assertEqual(e.field, "bootstrap_retry_max")
        self.assertRaises(ValueError, Config, bootstrap_retry_max=-1.0)
        self.assertRaises(ValueError, Config, bootstrap_retry_max=float("inf"))

    def test_quic_dial_delay_may_be_zero_not_over_the_connect_timeout(self) -> None:
        self.assertEqual(parse_config('{"quic_dial_delay": 0}', "my.json").quic_dial_delay, 0.0)
        self.assertRaises(ConfigError, parse_config, '{"quic_dial_delay": 40, "connect_timeout": 30}', "my.json")

    def test_bad_json_names_line_and_column(self) -> None:
        doc = '{\n  "listen_port": 4000,\n  "enable_tcp": tru\n}'
        e = self.assertRaises(ConfigFileError, parse_config, doc, "c.json")
        self.assertIn("line 3, column 17", str(e))
        self.assertIsNone(e.field)

    def test_trailing_comma(self) -> None:
        e = self.assertRaises(ConfigFileError, parse_config, '{"listen_port": 4000,\n}')
        self.assertIn("line 2, column 1", str(e))

    def test_nan_is_not_json(self) -> None:
        e = self.assertRaises(ConfigFileError, parse_config, '{\n "drop_after": NaN}')
        self.assertIn("NaN", str(e))
        self.assertIn("line 2, column 16", str(e))

    def test_duplicate_key(self) -> None:
        e = self.assertRaises(ConfigFileError, parse_config, '{"listen_port": 1, "listen_port": 2}')
        self.assertEqual(e.field, "listen_port")
        self.assertIn("twice", str(e))

    def test_deep_nesting_is_named(self) -> None:
        """It used to be caught as 'nested too deeply' only after the parser had recursed."""
        for doc in ("[" * 100000, '{"_c":' * 50000, '{"_c": ' + "[" * 20 + "]" * 20 + "}"):
            e = self.assertRaises(ConfigFileError, parse_config, doc, "c.json")
            self.assertIsNone(e.field)
            self.assertTrue("nested deeper" in str(e) or "arrays and objects" in str(e), str(e))

    def test_huge_number_is_named(self) -> None:
        e = self.assertRaises(ConfigFileError, parse_config, '{"listen_port": ' + "9" * 5000 + "}", "c.json")
        self.assertIn("number too long", str(e))
        e = self.assertRaises(ConfigFileError, parse_config, '{"drop_after": 1e999}', "c.json")
        self.assertIn("out of range", str(e))

    def test_hostile_documents(self) -> None:
        for doc in HOSTILE_DOCUMENTS:
            only_refused(self, lambda: parse_config(doc), ConfigFileError)

    @examples(200)
    @given(hostile_json({"listen_port": 4000, "enable_tcp": True, "stun_servers": ["udp:1.2.3.4:3478"],
                         "relay_limits": {"max_sessions": 4}, "bootstrap_retry_max": 60.0, "_comment": ["x"]}))
    def test_hostile(self, doc: bytes) -> None:
        only_refused(self, lambda: parse_config(doc), ConfigFileError)

    def test_top_level_not_object(self) -> None:
        e = self.assertRaises(ConfigFileError, parse_config, "[1, 2]")
        self.assertIn("JSON object", str(e))

    def test_not_utf8(self) -> None:
        e = self.assertRaises(ConfigFileError, parse_config, b'{"network_name": "\xff"}')
        self.assertIn("UTF-8", str(e))

    def test_invalid_file_is_never_overwritten(self) -> None:
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        original = '{"listen_port": "eighty"}'
        path.write_text(original)
        e = self.assertRaises(ConfigFileError, load_config, path)
        self.assertIn(str(path), str(e))
        self.assertEqual(path.read_text(), original)
        self.assertEqual(os.listdir(path.parent), [path.name])

    def test_oversize_file(self) -> None:
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"_pad": "' + "x" * (1024 * 1024) + '"}')
        e = self.assertRaises(ConfigFileError, load_config, path)
        self.assertIn("over", str(e))


class WatcherTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write({"listen_port": 4000})
        self.clock = Clock()
        self.seen: list[Config] = []
        self.watcher = ConfigWatcher(self.path, self.seen.append, current=load_config(self.path),
                                     interval=2.0, clock=self.clock)
        self.watcher.startService()
        self.addCleanup(self.watcher.stopService)
        self.log = LogCapture(self)

    def write(self, body, bump: int = 1) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        old = self.path.stat().st_mtime_ns if self.path.exists() else 0
        self.path.write_text(text)
        # make the change visible even on file systems with coarse mtimes
        os.utime(self.path, ns=(old + bump * 10**9, old + bump * 10**9))

    def test_change_is_applied_on_next_poll(self) -> None:
        self.write({"listen_port": 4001})
        self.clock.advance(1.9)
        self.assertEqual(self.seen, [])
        self.clock.advance(0.1)
        self.assertEqual([c.listen_port for c in self.seen], [4001])
        self.assertEqual(self.watcher.current.listen_port, 4001)
        self.clock.advance(10)
        self.assertEqual(len(self.seen), 1)  # no repeat without a change

    def test_reload_takes_the_same_defaults(self) -> None:
        defaults = Config(serve_rendezvous=True)
        watcher = ConfigWatcher(self.path, self.seen.append, current=load_config(self.path, defaults=defaults),
                                interval=2.0, clock=self.clock, defaults=defaults)
        watcher.startService()
        self.addCleanup(watcher.stopService)
        self.write({"listen_port": 4001})
        self.clock.advance(2)
        mine = [c for c in self.seen if c.serve_rendezvous]
        self.assertEqual([c.listen_port for c in mine], [4001])

    def test_invalid_edit_keeps_old_config_and_logs_once(self) -> None:
        self.write('{"listen_port": 4000, "bootstrap_cache": {"max_size": -5}}')
        self.clock.advance(2)
        self.clock.advance(2)
        self.clock.advance(2)
        self.assertEqual(self.seen, [])
        self.assertEqual(self.watcher.current.listen_port, 4000)
        errors = self.log.at("error")
        self.assertEqual(len(errors), 1)
        self.assertIn("bootstrap_cache.max_size", errors[0]["error"])
        self.assertIn("-5", errors[0]["error"])
        self.assertIn("keeping the current configuration", errors[0]["log_format"])
        # fixing the file applies it
        self.write({"listen_port": 4002}, bump=2)
        self.clock.advance(2)
        self.assertEqual([c.listen_port for c in self.seen], [4002])

    def test_bad_json_edit_keeps_old_config(self) -> None:
        self.write('{"listen_port": 4005')
        self.clock.advance(2)
        self.assertEqual(self.seen, [])
        self.assertIn("line 1", self.log.at("error")[0]["error"])

    def test_reload_rereads_even_if_mtime_and_size_unchanged(self) -> None:
        st = self.path.stat()
        self.path.write_text(json.dumps({"listen_port": 4009}))  # same length as 4000
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.clock.advance(4)
        self.assertEqual(self.seen, [])  # the poll cannot see it
        config = self.watcher.reload()
        self.assertEqual(config.listen_port, 4009)
        self.assertEqual([c.listen_port for c in self.seen], [4009])

    def test_reload_of_invalid_file_logs_each_time(self) -> None:
        self.write('{"listen_port": "x"}')
        self.assertEqual(self.watcher.reload().listen_port, 4000)
        self.assertEqual(self.watcher.reload().listen_port, 4000)
        self.assertEqual(len(self.log.at("error")), 2)
        self.assertEqual(self.seen, [])

    def test_same_config_different_text_is_not_reported(self) -> None:
        self.write('{\n    "listen_port": 4000\n}\n')
        self.clock.advance(2)
        self.assertEqual(self.seen, [])

    def test_deleted_file_keeps_config(self) -> None:
        self.path.unlink()
        self.clock.advance(2)
        self.clock.advance(2)
        self.assertEqual(self.seen, [])
        self.assertEqual(len(self.log.at("warn")), 1)
        self.write({"listen_port": 4003})
        self.clock.advance(2)
        self.assertEqual([c.listen_port for c in self.seen], [4003])

    def test_callback_error_is_logged_not_raised(self) -> None:
        def boom(config):
            raise RuntimeError("boom")
        self.watcher.callback = boom
        self.write({"listen_port": 4004})
        self.clock.advance(2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.watcher.current.listen_port, 4004)

    def test_stop_stops_polling(self) -> None:
        self.watcher.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_initial_load_without_current(self) -> None:
        seen = []
        w = ConfigWatcher(self.path, seen.append, clock=self.clock)
        w.startService()
        self.addCleanup(w.stopService)
        self.assertEqual(w.current.listen_port, 4000)
        self.assertEqual(seen, [])


class WhitelistTests(unittest.TestCase):
    def test_none_allows_everyone(self) -> None:
        self.assertTrue(ip_allowed("203.0.113.9", None))
        self.assertTrue(ip_allowed("garbage", None))

    def test_empty_allows_nobody(self) -> None:
        self.assertFalse(ip_allowed("10.0.0.1", []))

    def test_ips_and_networks(self) -> None:
        wl = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
        self.assertTrue(ip_allowed("10.200.3.4", wl))
        self.assertTrue(ip_allowed("192.0.2.7", wl))
        self.assertFalse(ip_allowed("192.0.2.8", wl))
        self.assertTrue(ip_allowed("2001:db8:5::1", wl))
        self.assertFalse(ip_allowed("2001:db9::1", wl))
        self.assertFalse(ip_allowed("not an ip", wl))

    def test_ipv4_mapped_ipv6(self) -> None:
        self.assertTrue(ip_allowed("::ffff:10.1.2.3", ["10.0.0.0/8"]))
        self.assertTrue(ip_allowed(ipaddress.ip_address("::ffff:192.0.2.7"), ["192.0.2.7"]))
        self.assertTrue(ip_allowed("10.1.2.3", ["::ffff:10.0.0.0/104"]))
        self.assertFalse(ip_allowed("::ffff:11.1.2.3", ["10.0.0.0/8"]))

    def test_scoped_and_object_entries(self) -> None:
        self.assertTrue(ip_allowed("fe80::1%eth0", ["fe80::/10"]))
        self.assertTrue(ip_allowed("[2001:db8::1]", [ipaddress.ip_network("2001:db8::/64")]))
        self.assertTrue(ip_allowed("10.0.0.1", [ipaddress.ip_address("10.0.0.1")]))

    def test_per_role(self) -> None:
        config = Config(whitelisted_node_ips=("10.0.0.0/8",), whitelisted_client_ips=None)
        self.assertFalse(peer_ip_allowed(config, Role.NODE, "192.0.2.1"))
        self.assertTrue(peer_ip_allowed(config, Role.CLIENT, "192.0.2.1"))
        self.assertTrue(peer_ip_allowed(config, Role.NODE, "10.9.9.9"))


class RoleTests(unittest.TestCase):
    def test_text_forms(self) -> None:
        self.assertEqual(str(Role.NODE), "node")
        self.assertEqual(str(Role.CLIENT), "client")
        self.assertIs(Role.from_text(" Client "), Role.CLIENT)
        self.assertRaises(ValueError, Role.from_text, "server")
