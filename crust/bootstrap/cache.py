"""
The bootstrap cache: peers we reached directly, kept across restarts.

Entries are ordered most recently used first and bounded by C{max_size}; the
least recently used one (or the one that failed most) is evicted only when a
new peer arrives and the cache is full.  A peer that fails a liveness probe
or a bootstrap attempt is never dropped for that alone (the original's issue
#1138): its failure count goes up, which moves it back in the order in which
stale entries are re-validated, and makes it the first to go when room is
needed.  Entries not seen for C{timeout} seconds are I{stale}: they are
re-validated (probed, or tried by a bootstrap) before being trusted again.

The cache file is JSON (format in doc/bootstrap.md), replaced atomically
(temporary file, fsync, rename, fsync of the directory).  Changes are
coalesced into one write per C{flush_delay} seconds, and flushed on stop.  A
corrupt file is moved aside as C{<file>.corrupt-<UTC time>} with a warning,
and the node starts with an empty cache.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from twisted.application import service
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from crust._util.jsonread import JsonRefused, read_json_object
from crust._util.reactor import maybe_global_reactor
from crust.address import Address
from crust.config import Config
from crust.identity import PeerId

CACHE_FILE_NAME = "bootstrap_cache.json"
CACHE_FORMAT_VERSION = 1
MAX_CACHE_FILE_BYTES = 16 * 1024 * 1024
#: How deep the cache file's JSON may nest (the top object is depth 1; an entry is depth 3).
MAX_CACHE_DEPTH = 8
#: How many arrays and objects the cache file's JSON may hold (one object per entry).
MAX_CACHE_CONTAINERS = 1 << 20

log = Logger()


@dataclass(frozen=True)
class CacheEntry:
    """
    One cached peer.

    @ivar last_seen: when we last had evidence it was up (a connection or a
        liveness probe), in seconds since the epoch.
    @ivar last_success: when a connection to it last succeeded, or C{None}.
    @ivar failures: failed probes or attempts since it was last seen.
    """

    peer_id: PeerId
    address: Address
    last_seen: float
    last_success: Optional[float] = None
    failures: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "peer_id": str(self.peer_id),
            "address": str(self.address),
            "last_seen": self.last_seen,
            "last_success": self.last_success,
            "failures": self.failures,
        }

    @classmethod
    def from_json(cls, body: Any) -> "CacheEntry":
        """@raise ValueError: naming what is wrong."""
        if not isinstance(body, dict):
            raise ValueError("an entry is not an object")
        peer_id = PeerId.from_text(body.get("peer_id"))
        address = Address.parse(body.get("address"))
        last_seen = _number(body.get("last_seen"), "last_seen")
        last_success = body.get("last_success")
        if last_success is not None:
            last_success = _number(last_success, "last_success")
        failures = body.get("failures", 0)
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
            raise ValueError(f"bad failures count {failures!r}")
        return cls(peer_id, address, last_seen, last_success, failures)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"bad {name} {value!r}")
    return float(value)


@dataclass(frozen=True)
class CacheCandidates:
    """
    What L{BootstrapCache.candidates} returns.

    @ivar fresh: entries seen within the timeout, most recently used first:
        usable as they are.
    @ivar stale: expired entries that need a liveness probe (or a bootstrap
        attempt, which is one) before being trusted; fewest failures first,
        then most recently used first.
    """

    fresh: list[CacheEntry]
    stale: list[CacheEntry]


class CorruptCacheFile(ValueError):
    """The cache file's content is not a valid cache."""


class BootstrapCache(service.Service):
    """
    The bootstrap cache (see the module docstring).

    As an C{IService} it loads the file on start and flushes it on stop; the
    methods also work without starting it (call L{load} and L{flush}).

    @param path: the JSON file.
    @param exclude_peer_ids: peers never cached (the hard-coded contacts).
    @param exclude_addresses: addresses never cached (ditto).
    @param clock: an C{IReactorTime}; its C{seconds()} is the time stamped
        on entries (the reactor's is wall-clock time), its C{callLater}
        schedules coalesced writes.
    """

    def __init__(self, path: Union[str, os.PathLike[str]], max_size: int = 200, timeout: float = 120.0,
                 exclude_peer_ids: Iterable[PeerId] = (), exclude_addresses: Iterable[Address] = (),
                 clock: Any = None, flush_delay: float = 5.0) -> None:
        clock = maybe_global_reactor(clock)
        if max_size < 0:
            raise ValueError("max_size must not be negative")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.path = Path(path)
        self.max_size = max_size
        self.timeout = float(timeout)
        self.flush_delay = flush_delay
        self._clock = clock
        self._entries: "OrderedDict[PeerId, CacheEntry]" = OrderedDict()  # most recently used first
        self._excluded_ids = frozenset(exclude_peer_ids)
        self._excluded_addresses = frozenset(exclude_addresses)
        self._dirty = False
        self._pending: Optional[IDelayedCall] = None
        self.writes = 0  # files written (for tests and stats)

    @classmethod
    def from_config(cls, config: Config, data_dir: Union[str, os.PathLike[str]], clock: Any = None,
                    flush_delay: float = 5.0) -> "BootstrapCache":
        """A cache as configured, excluding the hard-coded contacts."""
        return cls(
            cache_path(config, data_dir),
            max_size=config.bootstrap_cache.max_size,
            timeout=config.bootstrap_cache.timeout,
            exclude_peer_ids=[c.peer_id for c in config.hard_coded_contacts],
            exclude_addresses=[c.address for c in config.hard_coded_contacts],
            clock=clock,
            flush_delay=flush_delay,
        )

    # -- IService ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.load()

    def stopService(self) -> Any:
        self.flush()
        return super().stopService()

    # -- reading ----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._entries

    def get(self, peer_id: PeerId) -> Optional[CacheEntry]:
        return self._entries.get(peer_id)

    def entries(self) -> list[CacheEntry]:
        """Every entry, most recently used first."""
        return list(self._entries.values())

    def peers(self) -> list[tuple[PeerId, Address]]:
        """C{(peer_id, address)} of every entry, most recently used first."""
        return [(e.peer_id, e.address) for e in self._entries.values()]

    def is_stale(self, entry: CacheEntry) -> bool:
        """Has C{entry} not been seen for C{timeout} seconds?"""
        return self._now() - entry.last_seen >= self.timeout

    def candidates(self) -> CacheCandidates:
        """The fresh entries, and the stale ones that need re-validation."""
        fresh: list[CacheEntry] = []
        stale: list[CacheEntry] = []
        for entry in self._entries.values():
            (stale if self.is_stale(entry) else fresh).append(entry)
        stale.sort(key=lambda e: e.failures)  # stable: MRU order within a failure count
        return CacheCandidates(fresh, stale)

    def is_excluded(self, peer_id: PeerId, address: Optional[Address] = None) -> bool:
        """Is this a hard-coded contact (never cached)?"""
        return peer_id in self._excluded_ids or (address is not None and address in self._excluded_addresses)

    # -- changing ---------------------------------------------------------

    def put(self, peer_id: PeerId, address: Address) -> bool:
        """
        We connected directly to C{peer_id} at C{address}: (re)insert it at
        the front, seen and succeeded now, its failures forgotten.

        @return: False if not cached (a hard-coded contact, or C{max_size} 0).
        """
        if self.max_size == 0 or self.is_excluded(peer_id, address):
            return False
        now = self._now()
        for other in [e.peer_id for e in self._entries.values() if e.address == address and e.peer_id != peer_id]:
            del self._entries[other]  # the address now belongs to someone else
        if peer_id not in self._entries:
            self._make_room(1)
        self._entries[peer_id] = CacheEntry(peer_id, address, now, now, 0)
        self._entries.move_to_end(peer_id, last=False)
        self._changed()
        return True

    def record_alive(self, peer_id: PeerId) -> bool:
        """
        A liveness probe of C{peer_id} succeeded: it is seen now, its
        failures are forgotten and it moves to the front.

        @return: False if it is not in the cache.
        """
        entry = self._entries.get(peer_id)
        if entry is None:
            return False
        self._entries[peer_id] = replace(entry, last_seen=self._now(), failures=0)
        self._entries.move_to_end(peer_id, last=False)
        self._changed()
        return True

    def record_failure(self, peer_id: PeerId) -> bool:
        """
        A probe of, or an attempt on, C{peer_id} failed.  It stays cached
        (and in place) with one more failure; it is evicted first when room
        is needed.

        @return: False if it is not in the cache.
        """
        entry = self._entries.get(peer_id)
        if entry is None:
            return False
        self._entries[peer_id] = replace(entry, failures=entry.failures + 1)
        self._changed()
        return True

    def remove(self, peer_id: PeerId) -> bool:
        if self._entries.pop(peer_id, None) is None:
            return False
        self._changed()
        return True

    def set_excluded(self, peer_ids: Iterable[PeerId], addresses: Iterable[Address]) -> None:
        """Replace the excluded (hard-coded) peers; cached ones among them are dropped."""
        self._excluded_ids = frozenset(peer_ids)
        self._excluded_addresses = frozenset(addresses)
        for entry in list(self._entries.values()):
            if self.is_excluded(entry.peer_id, entry.address):
                del self._entries[entry.peer_id]
                self._changed()

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config: size, timeout and the hard-coded contacts."""
        self.timeout = float(config.bootstrap_cache.timeout)
        self.max_size = config.bootstrap_cache.max_size
        self.set_excluded([c.peer_id for c in config.hard_coded_contacts],
                          [c.address for c in config.hard_coded_contacts])
        if len(self._entries) > self.max_size:
            self._make_room(0)
            self._changed()

    def _make_room(self, needed: int) -> None:
        while self._entries and len(self._entries) + needed > self.max_size:
            victim = self._victim()
            log.debug("bootstrap cache full: evicting {peer} ({failures} failures)",
                      peer=victim.peer_id.short(), failures=victim.failures)
            del self._entries[victim.peer_id]

    def _victim(self) -> CacheEntry:
        """The most-failed entry (least recently used among equals), else the least recently used."""
        victim = None
        for entry in reversed(self._entries.values()):
            if victim is None or entry.failures > victim.failures:
                victim = entry
        assert victim is not None
        return victim

    def _now(self) -> float:
        return float(self._clock.seconds())

    # -- persistence ------------------------------------------------------

    def _changed(self) -> None:
        self._dirty = True
        if self._pending is None or not self._pending.active():
            self._pending = self._clock.callLater(self.flush_delay, self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._pending = None
        self.flush()

    def flush(self) -> bool:
        """
        Write the cache now if it changed since the last write.

        @return: False if writing failed (logged; retried on the next change).
        """
        if self._pending is not None:
            if self._pending.active():
                self._pending.cancel()
            self._pending = None
        if not self._dirty:
            return True
        body = {
            "crust_bootstrap_cache": CACHE_FORMAT_VERSION,
            "peers": [e.to_json() for e in self._entries.values()],
        }
        data = (json.dumps(body, indent=1) + "\n").encode("utf-8")
        try:
            atomic_write(self.path, data)
        except OSError as e:
            log.error("cannot write bootstrap cache {path}: {error}", path=str(self.path), error=str(e))
            return False
        self._dirty = False
        self.writes += 1
        return True

    def load(self) -> None:
        """
        Replace the entries with the file's (missing file: empty).  A corrupt
        file is moved aside; entries over C{max_size} or hard-coded are dropped.
        """
        self._entries.clear()
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_CACHE_FILE_BYTES + 1)
        except FileNotFoundError:
            log.info("no bootstrap cache at {path} yet; starting empty", path=str(self.path))
            return
        except OSError as e:
            log.error("cannot read bootstrap cache {path}: {error}; starting empty",
                      path=str(self.path), error=str(e))
            return
        try:
            entries = parse_cache(data)
        except CorruptCacheFile as e:
            aside = self._move_aside()
            log.warn("bootstrap cache {path} is corrupt ({error}); moved it to {aside} and starting empty",
                     path=str(self.path), error=str(e), aside=str(aside) if aside else "(could not move it)")
            return
        dropped = 0
        for entry in entries:
            if (entry.peer_id in self._entries or self.is_excluded(entry.peer_id, entry.address)
                    or len(self._entries) >= self.max_size):
                dropped += 1
                continue
            self._entries[entry.peer_id] = entry
        if dropped:
            self._changed()
        log.info("loaded {count} peers from bootstrap cache {path}", count=len(self._entries), path=str(self.path))

    def _move_aside(self) -> Optional[Path]:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._now()))
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            os.replace(self.path, aside)
        except OSError as e:
            log.error("cannot move corrupt bootstrap cache {path} aside: {error}",
                      path=str(self.path), error=str(e))
            return None
        return aside


def parse_cache(data: bytes) -> list[CacheEntry]:
    """
    Decode cache file content, most recently used first.

    @raise CorruptCacheFile: naming what is wrong.
    """
    if len(data) > MAX_CACHE_FILE_BYTES:
        raise CorruptCacheFile(f"over {MAX_CACHE_FILE_BYTES} bytes")
    try:
        body = read_json_object(data, max_size=MAX_CACHE_FILE_BYTES, max_depth=MAX_CACHE_DEPTH,
                                max_containers=MAX_CACHE_CONTAINERS)
    except JsonRefused as e:
        raise CorruptCacheFile(e.reason) from None
    version = body.get("crust_bootstrap_cache")
    if version != CACHE_FORMAT_VERSION:
        raise CorruptCacheFile(f"unsupported format version {version!r}")
    peers = body.get("peers")
    if not isinstance(peers, list):
        raise CorruptCacheFile('"peers" is not a list')
    entries = []
    for i, item in enumerate(peers):
        try:
            entries.append(CacheEntry.from_json(item))
        except ValueError as e:
            raise CorruptCacheFile(f"peers[{i}]: {e}") from None
    return entries


def cache_path(config: Config, data_dir: Union[str, os.PathLike[str]]) -> Path:
    """The configured cache file; a relative one is relative to C{data_dir}."""
    name = config.bootstrap_cache.file or CACHE_FILE_NAME
    return Path(data_dir) / Path(name).expanduser()


def atomic_write(path: Union[str, os.PathLike[str]], data: bytes, mode: int = 0o600) -> None:
    """
    Replace C{path} with C{data} so that a crash leaves either the old or
    the new content: write a temporary file in the same directory, fsync it,
    rename it over C{path}, fsync the directory.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(p.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
