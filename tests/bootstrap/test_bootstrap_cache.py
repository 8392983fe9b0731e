"""Tests for crust.bootstrap.cache: ordering, eviction, persistence, corruption."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from hypothesis import given
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from crust.bootstrap import cache as bootstrap_cache
from crust.address import Address
from crust.bootstrap.cache import BootstrapCache, CacheEntry, cache_path, parse_cache, CorruptCacheFile
from crust.config import BootstrapCacheConfig, Config, HardCodedContact
from crust.identity import Identity
from tests import examples
from tests.hostile_json import HOSTILE_DOCUMENTS, hostile_json, only_refused

T0 = 1_700_000_000.0


def peer(n: int):
    return Identity.from_seed(bytes([n]) * 32).peer_id


def addr(n: int) -> Address:
    return Address("tcp", f"192.0.2.{n}", 5483)


class CacheTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)
        self.path = self.dir / "bootstrap_cache.json"
        self.clock = Clock()
        self.clock.advance(T0)
        self.log: list[dict] = []
        globalLogPublisher.addObserver(self.log.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log.append)

    def cache(self, **kw) -> BootstrapCache:
        kw.setdefault("clock", self.clock)
        kw.setdefault("max_size", 5)
        kw.setdefault("timeout", 120.0)
        kw.setdefault("flush_delay", 5.0)
        c = BootstrapCache(self.path, **kw)
        c.load()
        return c


class OrderingTests(CacheTestCase):
    def test_put_moves_to_front(self) -> None:
        c = self.cache()
        for n in (1, 2, 3):
            self.assertTrue(c.put(peer(n), addr(n)))
        self.assertEqual([p for p, _ in c.peers()], [peer(3), peer(2), peer(1)])
        c.put(peer(1), addr(1))
        self.assertEqual([p for p, _ in c.peers()], [peer(1), peer(3), peer(2)])
        self.assertEqual(len(c), 3)

    def test_put_updates_address_and_times(self) -> None:
        c = self.cache()
        c.put(peer(1), addr(1))
        self.clock.advance(7)
        c.put(peer(1), addr(9))
        e = c.get(peer(1))
        self.assertEqual((e.address, e.last_seen, e.last_success), (addr(9), T0 + 7, T0 + 7))
        self.assertEqual(len(c), 1)

    def test_address_taken_over_by_another_peer(self) -> None:
        c = self.cache()
        c.put(peer(1), addr(1))
        c.put(peer(2), addr(1))
        self.assertEqual(c.peers(), [(peer(2), addr(1))])

    def test_evicts_lru_only_when_full(self) -> None:
        c = self.cache(max_size=3)
        for n in (1, 2, 3):
            c.put(peer(n), addr(n))
        c.put(peer(1), addr(1))  # 2 is now least recently used
        self.assertEqual(len(c), 3)
        c.put(peer(4), addr(4))
        self.assertEqual([p for p, _ in c.peers()], [peer(4), peer(1), peer(3)])

    def test_failed_peer_stays_while_there_is_room(self) -> None:
        # the original's issue #1138: a briefly-down peer must not be evicted
        c = self.cache(max_size=5)
        for n in (1, 2, 3):
            c.put(peer(n), addr(n))
        for _ in range(10):
            self.assertTrue(c.record_failure(peer(2)))
        self.assertIn(peer(2), c)
        self.assertEqual(c.get(peer(2)).failures, 10)
        self.assertEqual([p for p, _ in c.peers()], [peer(3), peer(2), peer(1)])  # order unchanged
        self.assertFalse(c.record_failure(peer(9)))

    def test_most_failed_is_evicted_first_when_full(self) -> None:
        c = self.cache(max_size=3)
        for n in (1, 2, 3):
            c.put(peer(n), addr(n))
        c.record_failure(peer(3))  # most recently used, but failing
        c.put(peer(4), addr(4))
        self.assertEqual(set(p for p, _ in c.peers()), {peer(1), peer(2), peer(4)})

    def test_record_alive_moves_to_front_and_forgets_failures(self) -> None:
        c = self.cache()
        c.put(peer(1), addr(1))
        c.put(peer(2), addr(2))
        c.record_failure(peer(1))
        self.clock.advance(200)
        self.assertTrue(c.record_alive(peer(1)))
        e = c.get(peer(1))
        self.assertEqual((e.failures, e.last_seen, e.last_success), (0, T0 + 200, T0))
        self.assertEqual(c.peers()[0][0], peer(1))
        self.assertFalse(c.record_alive(peer(7)))

    def test_hard_coded_contacts_are_not_cached(self) -> None:
        c = self.cache(exclude_peer_ids=[peer(1)], exclude_addresses=[addr(2)])
        self.assertFalse(c.put(peer(1), addr(1)))
        self.assertFalse(c.put(peer(3), addr(2)))
        self.assertTrue(c.put(peer(4), addr(4)))
        self.assertEqual(c.peers(), [(peer(4), addr(4))])

    def test_set_excluded_drops_cached(self) -> None:
        c = self.cache()
        c.put(peer(1), addr(1))
        c.put(peer(2), addr(2))
        c.set_excluded([peer(1)], [])
        self.assertEqual(c.peers(), [(peer(2), addr(2))])

    def test_remove(self) -> None:
        c = self.cache()
        c.put(peer(1), addr(1))
        self.assertTrue(c.remove(peer(1)))
        self.assertFalse(c.remove(peer(1)))
        self.assertEqual(len(c), 0)

    def test_zero_size_disables(self) -> None:
        c = self.cache(max_size=0)
        self.assertFalse(c.put(peer(1), addr(1)))
        self.clock.advance(10)
        self.assertFalse(self.path.exists())


class ExpiryTests(CacheTestCase):
    def test_candidates_split_fresh_and_stale(self) -> None:
        c = self.cache(timeout=120.0)
        c.put(peer(1), addr(1))
        c.put(peer(2), addr(2))
        self.clock.advance(100)
        c.put(peer(3), addr(3))
        c.put(peer(4), addr(4))
        self.clock.advance(30)  # 1 and 2 are 130 s old, 3 and 4 30 s
        c.record_failure(peer(2))
        got = c.candidates()
        self.assertEqual([e.peer_id for e in got.fresh], [peer(4), peer(3)])
        # stale: fewest failures first, then most recently used
        self.assertEqual([e.peer_id for e in got.stale], [peer(1), peer(2)])
        self.assertTrue(c.is_stale(c.get(peer(1))))
        self.assertFalse(c.is_stale(c.get(peer(3))))

    def test_revalidated_peer_is_fresh(self) -> None:
        c = self.cache(timeout=120.0)
        c.put(peer(1), addr(1))
        self.clock.advance(500)
        self.assertEqual(len(c.candidates().stale), 1)
        c.record_alive(peer(1))
        self.assertEqual([e.peer_id for e in c.candidates().fresh], [peer(1)])

    def test_stale_entries_are_not_evicted_by_time(self) -> None:
        c = self.cache()
        c.put(peer(1), addr(1))
        self.clock.advance(10**6)
        self.assertIn(peer(1), c)


class PersistenceTests(CacheTestCase):
    def test_round_trip(self) -> None:
        c = self.cache()
        for n in (1, 2, 3):
            c.put(peer(n), addr(n))
            self.clock.advance(1)
        c.record_failure(peer(1))
        self.assertTrue(c.flush())
        d = self.cache()
        self.assertEqual(d.entries(), c.entries())
        self.assertEqual([p for p, _ in d.peers()], [peer(3), peer(2), peer(1)])
        self.assertEqual(d.get(peer(1)).failures, 1)
        body = json.loads(self.path.read_text())
        self.assertEqual(body["crust_bootstrap_cache"], 1)
        self.assertEqual(body["peers"][0]["peer_id"], str(peer(3)))
        self.assertEqual(body["peers"][0]["address"], "tcp:192.0.2.3:5483")

    def test_writes_are_coalesced(self) -> None:
        c = self.cache(flush_delay=5.0)
        for n in range(1, 50):
            c.put(peer(n % 5 + 1), addr(n % 5 + 1))
            c.record_failure(peer(n % 5 + 1))
        self.assertEqual(c.writes, 0)
        self.assertFalse(self.path.exists())
        self.clock.advance(5)
        self.assertEqual(c.writes, 1)
        self.assertTrue(self.path.exists())
        self.clock.advance(60)
        self.assertEqual(c.writes, 1)  # nothing changed since
        c.put(peer(1), addr(1))
        self.clock.advance(5)
        self.assertEqual(c.writes, 2)

    def test_flush_on_stop(self) -> None:
        c = BootstrapCache(self.path, clock=self.clock, flush_delay=60)
        c.startService()
        c.put(peer(1), addr(1))
        self.assertFalse(self.path.exists())
        c.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(parse_cache(self.path.read_bytes())[0].peer_id, peer(1))

    def test_start_loads(self) -> None:
        c0 = self.cache()
        c0.put(peer(2), addr(2))
        c0.flush()
        c = BootstrapCache(self.path, clock=self.clock)
        c.startService()
        self.assertEqual(c.peers(), [(peer(2), addr(2))])
        c.stopService()

    def test_atomic_write_leaves_no_temporary_and_is_private(self) -> None:
        c = self.cache()
        c.put(peer(1), addr(1))
        c.flush()
        self.assertEqual(os.listdir(self.dir), [self.path.name])
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_failed_write_keeps_old_file(self) -> None:
        c = self.cache()
        c.put(peer(1), addr(1))
        c.flush()
        before = self.path.read_bytes()
        c.put(peer(2), addr(2))

        def fail(src, dst):
            raise OSError(28, "No space left on device")
        patch = self.patch(bootstrap_cache.os, "replace", fail)
        self.assertFalse(c.flush())
        self.assertEqual(self.path.read_bytes(), before)
        self.assertEqual(os.listdir(self.dir), [self.path.name])  # temporary removed
        self.assertTrue(any(e.get("log_level") and e["log_level"].name == "error" for e in self.log))
        patch.restore()
        self.assertTrue(c.flush())  # still dirty: retried
        self.assertEqual(len(parse_cache(self.path.read_bytes())), 2)

    def test_missing_file_is_empty_and_not_created(self) -> None:
        c = self.cache()
        self.assertEqual(len(c), 0)
        self.clock.advance(100)
        self.assertFalse(self.path.exists())

    def test_load_drops_excess_duplicates_and_hard_coded(self) -> None:
        entries = [CacheEntry(peer(n), addr(n), T0).to_json() for n in (1, 2, 3, 1, 4, 5, 6, 7)]
        self.path.write_text(json.dumps({"crust_bootstrap_cache": 1, "peers": entries}))
        c = self.cache(max_size=4, exclude_peer_ids=[peer(2)])
        self.assertEqual([p for p, _ in c.peers()], [peer(1), peer(3), peer(4), peer(5)])
        self.clock.advance(5)
        self.assertEqual(len(parse_cache(self.path.read_bytes())), 4)  # rewritten without them

    def test_reconfigure(self) -> None:
        c = self.cache(max_size=5)
        for n in range(1, 6):
            c.put(peer(n), addr(n))
        config = Config(bootstrap_cache=BootstrapCacheConfig(max_size=2, timeout=10.0),
                        hard_coded_contacts=(HardCodedContact(peer(5), addr(5)),))
        c.reconfigure(config)
        self.assertEqual([p for p, _ in c.peers()], [peer(4), peer(3)])
        self.assertEqual(c.timeout, 10.0)

    def test_from_config_paths(self) -> None:
        config = Config(hard_coded_contacts=(HardCodedContact(peer(1), addr(1)),))
        c = BootstrapCache.from_config(config, self.dir, clock=self.clock)
        self.assertEqual(c.path, self.dir / "bootstrap_cache.json")
        self.assertFalse(c.put(peer(1), addr(1)))
        self.assertEqual(c.max_size, 200)
        rel = Config(bootstrap_cache=BootstrapCacheConfig(file="sub/cache.json"))
        self.assertEqual(cache_path(rel, self.dir), self.dir / "sub" / "cache.json")
        absolute = Config(bootstrap_cache=BootstrapCacheConfig(file="/var/lib/x.json"))
        self.assertEqual(cache_path(absolute, self.dir), Path("/var/lib/x.json"))


class CorruptionTests(CacheTestCase):
    def check_moved_aside(self, content: bytes) -> None:
        self.path.write_bytes(content)
        c = self.cache()
        self.assertEqual(len(c), 0)
        self.assertFalse(self.path.exists())
        aside = self.dir / f"{self.path.name}.corrupt-20231114T221320Z"
        self.assertEqual(aside.read_bytes(), content)
        warnings = [e for e in self.log if e.get("log_level") and e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertIn("corrupt", warnings[0]["log_format"])
        self.assertEqual(warnings[0]["aside"], str(aside))
        # the node carries on with a fresh cache file
        c.put(peer(1), addr(1))
        c.flush()
        self.assertEqual(self.cache().peers(), [(peer(1), addr(1))])

    def test_garbage(self) -> None:
        self.check_moved_aside(b"\x00\xffnot json at all")

    def test_truncated_json(self) -> None:
        self.check_moved_aside(b'{"crust_bootstrap_cache": 1, "peers": [{"peer_id": "ab')

    def test_wrong_structure(self) -> None:
        self.check_moved_aside(b"[1, 2, 3]")

    def test_unknown_version(self) -> None:
        self.check_moved_aside(b'{"crust_bootstrap_cache": 99, "peers": []}')

    def test_bad_entry(self) -> None:
        body = {"crust_bootstrap_cache": 1,
                "peers": [CacheEntry(peer(1), addr(1), T0).to_json(),
                          {"peer_id": str(peer(2)), "address": "tcp:nowhere", "last_seen": T0}]}
        self.check_moved_aside(json.dumps(body).encode())

    def test_second_corruption_same_second_gets_its_own_name(self) -> None:
        aside = self.dir / f"{self.path.name}.corrupt-20231114T221320Z"
        aside.write_bytes(b"older")
        self.path.write_bytes(b"garbage")
        self.cache()
        self.assertEqual(aside.read_bytes(), b"older")
        self.assertEqual((self.dir / f"{aside.name}-1").read_bytes(), b"garbage")

    def test_parse_cache_reports_reason(self) -> None:
        e = self.assertRaises(CorruptCacheFile, parse_cache, b'{"crust_bootstrap_cache": 1, "peers": [5]}')
        self.assertIn("peers[0]", str(e))

    def test_deeply_nested_file_is_moved_aside(self) -> None:
        """It used to raise a RecursionError out of the parser."""
        self.check_moved_aside(b'{"crust_bootstrap_cache": 1, "peers": ' + b"[" * 100000 + b"]" * 100000 + b"}")

    def test_hostile_documents(self) -> None:
        for doc in HOSTILE_DOCUMENTS:
            only_refused(self, lambda: parse_cache(doc), CorruptCacheFile)
        e = self.assertRaises(CorruptCacheFile, parse_cache, b'{"crust_bootstrap_cache": ' + b"1" * 5000 + b"}")
        self.assertIn("number too long", str(e))

    @examples(200)
    @given(hostile_json({"crust_bootstrap_cache": 1,
                         "peers": [{"peer_id": "a" * 52, "address": "tcp:1.2.3.4:5", "last_seen": 1.5}]}))
    def test_hostile(self, doc: bytes) -> None:
        only_refused(self, lambda: parse_cache(doc), CorruptCacheFile)
