#!/usr/bin/env python
"""
The node under test of the soak and scale benchmarks, in a process of its own.

It is the ready node (L{crust.node.node.Node}: a data directory, its key and
config file, the control socket, the bootstrap cache, the config watcher,
the log), as C{twistd -n crust node} runs it, on 127.0.0.1 with port mapping
and LAN discovery off, plus one observer for the benchmark: every message
is echoed to its sender at priority 0 (a message starting C{BYE!} makes the
node disconnect the sender instead), and the sequence numbers of each
sender's messages are checked as they arrive.

Started by C{bench/soak.py} and C{bench/scale.py}.  It prints C{BENCH
{"event": "ready", "info": ...}} once it listens, then answers commands, one
line each on its stdin:

  - C{stats}: message and connection counters, live connections, Python's
    allocated blocks and objects, C malloc in use;
  - C{tables}: the size of every dict, set and list held by the node's
    objects (its peer table, connector, handovers, caches, rate limiters...),
    and the count of live objects by type: what must not grow with churn;
  - C{mark}: remember malloc and (with C{--tracemalloc}) Python allocations
    now; C{stats} then reports what was allocated since, by source line.

It exits when its stdin closes.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import os
import sys
import threading
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit  # noqa: E402

NETWORK = "crust-soak"
HEADER = 16  # a message: 8 bytes of the cycle's tag, its number (4 bytes), how many in the cycle (4 bytes)
BYE = b"BYE!"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the node's data directory (made if missing)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (loopback)")
    p.add_argument("--nofile", type=int, default=0, help="raise the descriptor limit to this")
    p.add_argument("--no-udp", action="store_true", help="TCP only (no QUIC, STUN or echo socket)")
    p.add_argument("--tracemalloc", action="store_true", help="trace Python allocations (slow; for `mark`)")
    p.add_argument("--log-level", default="info", help="the node's log level in <data dir>/node.log")
    return p.parse_args(argv)


# -- memory figures -------------------------------------------------------------------


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def _mallinfo() -> Any:
    try:
        libc = ctypes.CDLL(None)
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    return fn


_MALLINFO = _mallinfo()


def malloc_in_use() -> int:
    """Bytes C malloc has handed out and not had back (OpenSSL's buffers, large Python objects); -1 if unknown."""
    if _MALLINFO is None:
        return -1
    info = _MALLINFO()
    return int(info.uordblks + info.hblkhd)


def table_sizes(root: Any, prefix: str, max_depth: int = 5) -> dict[str, int]:
    """
    The length of every dict, set, list and deque that C{root}'s crust
    objects hold, by attribute path (C{node.service.peers.hellos}), walking
    attributes that are crust objects (not the items of containers: one
    connection's insides are not tables of the node).
    """
    sizes: dict[str, int] = {}
    seen: set[int] = set()
    kinds = (dict, set, list, collections.deque, collections.OrderedDict)

    def walk(obj: Any, path: str, depth: int) -> None:
        if id(obj) in seen or depth > max_depth:
            return
        seen.add(id(obj))
        attrs = getattr(obj, "__dict__", None)
        if attrs is None:
            return
        for name, value in list(attrs.items()):
            where = f"{path}.{name}"
            if isinstance(value, kinds):
                if id(value) not in seen:
                    seen.add(id(value))
                    sizes[where] = len(value)
            elif type(value).__module__.startswith("crust.") and not isinstance(value, type):
                walk(value, where, depth + 1)

    walk(root, prefix, 0)
    return sizes


def type_counts(top: int = 40) -> dict[str, int]:
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    return dict(counts.most_common(top))


def garbage_types(top: int = 40) -> dict[str, int]:
    """A diagnosis: collect, and count the cyclic garbage found by type (what is freed only by the collector)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        counts = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return dict(counts.most_common(top))


def _describe(obj: Any) -> str:
    kind = type(obj).__qualname__
    if isinstance(obj, dict):
        return f"dict({len(obj)} keys: {', '.join(map(str, list(obj)[:4]))})"
    if isinstance(obj, (list, set, tuple)):
        return f"{kind}({len(obj)})"
    if type(obj).__name__ == "frame":
        return f"frame {obj.f_code.co_filename}:{obj.f_lineno}"
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{kind} {obj.__qualname__}"
    return kind


def holders(type_name: str, samples: int = 3, depth: int = 6) -> list[list[str]]:
    """
    A diagnosis: for a few live objects of type C{type_name}, a chain of what
    refers to it, up to C{depth} steps (the first referrer that is not the
    chain itself each time).
    """
    gc.collect()
    found = [o for o in gc.get_objects() if type(o).__qualname__ == type_name][-samples:]
    chains = []
    for obj in found:
        chain = [_describe(obj)]
        walked = [obj]
        for _ in range(depth):
            mine = {id(found), id(chain), id(walked)}
            refs = [r for r in gc.get_referrers(walked[-1])
                    if id(r) not in mine and type(r).__name__ != "frame" and not any(r is w for w in walked)]
            if not refs:
                chain.append("(no more referrers)")
                break
            walked.append(refs[0])
            chain.append(_describe(refs[0]) + (f" (+{len(refs) - 1} more)" if len(refs) > 1 else ""))
            del refs
        chains.append(chain)
        del walked
    return chains


# -- the node ------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.nofile:
        from _procs import raise_nofile

        raise_nofile(args.nofile)
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(1)

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor, stdio
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )
    from twisted.protocols.basic import LineReceiver

    from crust import CrustObserver
    from crust.errors import CrustError
    from crust.node.node import Node

    os.makedirs(args.data_dir, mode=0o700, exist_ok=True)
    # as twistd does: the log goes somewhere (else Twisted keeps the first events in memory)
    log_file = open(os.path.join(args.data_dir, "node.log"), "a", encoding="utf-8")
    level = LogLevel.levelWithName(args.log_level)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(log_file), [LogLevelFilterPredicate(level)])],
        redirectStandardIO=False)

    overrides: dict[str, Any] = {
        "listen_host": args.host, "network_name": NETWORK,
        "enable_port_mapping": False, "enable_service_discovery": False,  # the network rule: loopback only
    }
    if args.no_udp:
        overrides["enable_udp"] = False
    node = Node(args.data_dir, overrides=overrides, control=os.path.join(args.data_dir, "control.sock"),
                reactor=reactor)
    node.prepare()
    service = node.service
    assert service is not None

    counters = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    expected: dict[Any, int] = {}  # per sender: the next message number (forgotten when it goes)

    class Echo(CrustObserver):
        def connect_success(self, peer_id):
            counters["connections"] += 1

        def lost_peer(self, peer_id, reason):
            counters["lost_peers"] += 1
            expected.pop(peer_id, None)
            key = reason.split(":")[0][:60]
            if key in reasons or len(reasons) < 32:
                reasons[key] += 1

        def connect_failure(self, peer_id, reason):
            counters["connect_failures"] += 1

        def message_dropped(self, peer_id, priority, count, size, reason):
            counters["dropped"] += count

        def new_message(self, peer_id, data):
            counters["received"] += 1
            if data.startswith(BYE):
                counters["byes"] += 1
                service.disconnect(peer_id)
                return
            if len(data) >= HEADER:
                number = int.from_bytes(data[8:12], "big")
                if number != expected.get(peer_id, 0):
                    counters["out_of_order"] += 1
                expected[peer_id] = number + 1
            try:
                service.send(peer_id, data, 0)
            except CrustError:
                counters["echo_failures"] += 1
            else:
                counters["echoed"] += 1

    service.add_observer(Echo())
    marks: dict[str, Any] = {}

    def stats() -> dict[str, Any]:
        peers = service.peers
        out: dict[str, Any] = {
            "counters": dict(counters), "lost_reasons": dict(reasons),
            "connections_now": len(peers.connections), "active_now": len(peers.active),
            "allocated_blocks": sys.getallocatedblocks(), "gc_objects": len(gc.get_objects()),
            "malloc_bytes": malloc_in_use(), "gc_counts": gc.get_count(),
            "gc_collected": sum(generation["collected"] for generation in gc.get_stats()),
        }
        if "malloc" in marks:
            out["malloc_since_mark"] = out["malloc_bytes"] - marks["malloc"]
            out["blocks_since_mark"] = out["allocated_blocks"] - marks["blocks"]
        if args.tracemalloc and "trace" in marks:
            import tracemalloc

            now = tracemalloc.take_snapshot()
            diff = now.compare_to(marks["trace"], "lineno")
            out["traced_since_mark"] = sum(d.size_diff for d in diff)
            out["traced_top"] = [
                {"where": f"{d.traceback[0].filename.split('site-packages/')[-1]}:{d.traceback[0].lineno}",
                 "bytes": d.size_diff, "count": d.count_diff} for d in diff[:25]]
        return out

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            command = line.decode().strip()
            try:
                if command == "stats":
                    emit(event="stats", **stats())
                elif command == "tables":
                    emit(event="tables", tables=table_sizes(node, "node"), types=type_counts())
                elif command == "mark":
                    marks["malloc"] = malloc_in_use()
                    marks["blocks"] = sys.getallocatedblocks()
                    if args.tracemalloc:
                        import tracemalloc

                        marks["trace"] = tracemalloc.take_snapshot()
                    emit(event="marked")
                elif command == "collect":
                    emit(event="collected", freed=gc.collect())
                elif command == "gc-off":  # a diagnosis: let cyclic garbage pile up, for `garbage`
                    gc.disable()
                    emit(event="gc-off")
                elif command == "garbage":
                    emit(event="garbage", types=garbage_types())
                elif command.startswith("holders "):
                    emit(event="holders", chains=holders(command.split()[1]))
                else:
                    emit(event="unknown", command=command)
            except Exception as e:  # a benchmark's own mistake: say so, keep the node up
                import traceback

                emit(event="error", reason=f"command {command!r}: {e!r}", traceback=traceback.format_exc())

        def connectionLost(self, reason):
            # the runner went away (or is done): stop as twistd would, then exit
            d = node.stopService()
            d.addBoth(lambda _: reactor.stop())
            watchdog = threading.Timer(30, lambda: os._exit(72))
            watchdog.daemon = True
            watchdog.start()

    def ready(info):
        import crust

        emit(event="ready", pid=os.getpid(), info=info.to_json(), data_dir=args.data_dir,
             crust=os.path.dirname(crust.__file__))
        stdio.StandardIO(Commands(), reactor=reactor)

    def failed(failure):
        emit(event="error", reason=f"node: {failure.getErrorMessage()}", traceback=failure.getTraceback())
        reactor.stop()

    def start():
        node.startService()
        node.connection_info().addCallbacks(ready, failed)

    reactor.callWhenRunning(start)
    reactor.run()
    log_file.close()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
