#!/usr/bin/env python
"""
Churn soak: one crust node under a steady churn of fresh peers, for minutes.

    python bench/soak.py                    # 2 minutes of warm-up, then 10 minutes measured
    python bench/soak.py --minutes 0.1      # a few seconds (the smoke test)
    python bench/soak.py --json             # the figures as JSON on stdout

The node under test is the ready node (C{bench/_node.py}: L{crust.node.node.Node}
as C{twistd crust node} runs it, on 127.0.0.1, port mapping and LAN discovery
off) in a process of its own, echoing every message to its sender.  Client
processes (C{--workers}) run C{--concurrency} lanes between them; each lane,
over and over: a fresh identity (a new L{crust.Service}), connect to the
node (two times in three with its connection info, the third by
bootstrapping off it as a node: the node first checks that it can reach
the client's listener with a connection of its own), send 1 to
C{--max-messages} numbered priority-0 messages (16 bytes to 4 KiB, now and
then 256 KiB), wait until every one has come back (checked
byte for byte, each exactly once), then part in one of four ways in turn:
the client disconnects, the client asks the node to disconnect it, the client
aborts its connection (no CLOSE), or the client's service stops.  A message
that has not come back C{--echo-timeout} seconds after it was sent is lost.

The node's memory (RSS) and open descriptors are read from C{/proc} at the
start (listening, no peer yet), at the end of the warm-up, in the middle and
at the end of the measured time, and once the clients have gone and the node
holds no connection ("quiet"); and every C{--sample} seconds in between.
The node also reports the size of every table it holds (peer table,
connector, handovers, caches, rate limiters...) at those points, so a table
that grows with the churn is named.  Traffic goes to 127.0.0.1 only.

Pass: 0 messages lost, the node's descriptors back to their start count once
quiet, and RSS growth from the end of the warm-up to the end under 2 MiB.
See doc/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import emit, machine_description  # noqa: E402
from _procs import BenchError, Proc, load_average, raise_nofile, reason_key, snapshot  # noqa: E402

NETWORK = "crust-soak"  # as bench/_node.py
BYE = b"BYE!"
HEADER = 16
MODES = ("client-disconnect", "node-disconnect", "abort", "service-stop")  # how a connection ends, in turn
JOINS = ("connect", "connect", "bootstrap")  # how it is made, in turn (3 and 4: every pairing comes up)
GROWTH_TARGET_KIB = 2048
NOFILE = 65536


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="measured minutes, after the warm-up")
    p.add_argument("--warmup-minutes", type=float, default=None,
                   help="minutes of churn before the measured time [default: a fifth of --minutes, at most 3]")
    p.add_argument("--concurrency", type=int, default=8, help="lanes (concurrent peers) in all")
    p.add_argument("--workers", type=int, default=2, help="client processes")
    p.add_argument("--max-messages", type=int, default=40, help="messages per connection: 1 to this")
    p.add_argument("--large", type=float, default=0.1,
                   help="the share of connections that also send one 256 KiB message")
    p.add_argument("--transport", choices=("tcp", "quic"), default="tcp", help="how the clients connect")
    p.add_argument("--echo-timeout", type=float, default=60.0, help="seconds before an unechoed message is lost")
    p.add_argument("--sample", type=float, default=None, help="seconds between samples [default: about 30 samples]")
    p.add_argument("--seed", type=int, default=1, help="the clients' random choices")
    p.add_argument("--keep", action="store_true", help="keep the node's data directory (its log) and say where")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="show the workers' other output")
    p.add_argument("--role", choices=("runner", "client"), default="runner", help=argparse.SUPPRESS)
    p.add_argument("--lanes", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--info", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- a client process ------------------------------------------------------------------


def client_main(args: argparse.Namespace) -> int:
    raise_nofile(NOFILE)
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.logger import globalLogBeginner
    from twisted.protocols.basic import LineReceiver

    from crust import Config, CrustObserver, Identity, PubConnectionInfo, Role, Service
    from crust.config import HardCodedContact

    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)  # the clients' logs: not kept
    node_info = PubConnectionInfo.from_json(args.info)
    seeds = tuple(HardCodedContact(node_info.peer_id, a) for a in node_info.addresses if a.transport == "tcp")
    config = Config(network_name=NETWORK, listen_host="127.0.0.1", enable_tcp=args.transport == "tcp",
                    enable_udp=args.transport == "quic", enable_port_mapping=False,
                    enable_service_discovery=False, hard_coded_contacts=seeds if args.transport == "tcp" else ())
    rng = random.Random(args.seed)
    filler = bytes(range(256)) * (256 * 1024 // 256 + 1)
    totals: collections.Counter = collections.Counter()
    failures: collections.Counter = collections.Counter()
    state = {"stopping": False}

    def message(tag: bytes, number: int, count: int, size: int) -> bytes:
        return tag + number.to_bytes(4, "big") + count.to_bytes(4, "big") + filler[number % 251:][:size - HEADER]

    class Watcher(CrustObserver):
        """One lane's view of one cycle: the echoes, and the connection's end."""

        def __init__(self) -> None:
            self.tag = b""
            self.sizes: list[int] = []
            self.back: set[int] = set()
            self.all_back: Deferred = Deferred()
            self.gone: Deferred = Deferred()

        def new_message(self, peer_id, data):
            if len(data) < HEADER or not data.startswith(self.tag):
                totals["unexpected"] += 1
                return
            number = int.from_bytes(data[8:12], "big")
            if number >= len(self.sizes) or data != message(self.tag, number, len(self.sizes), self.sizes[number]):
                totals["corrupt"] += 1
                return
            if number in self.back:
                totals["duplicates"] += 1
                return
            self.back.add(number)
            if len(self.back) == len(self.sizes) and not self.all_back.called:
                self.all_back.callback(None)

        def lost_peer(self, peer_id, reason):
            if not self.all_back.called:
                totals["lost_early"] += 1
                failures[reason_key(f"lost before the echoes: {reason}")] += 1
                self.all_back.callback(None)
            if not self.gone.called:
                self.gone.callback(reason)

    def sizes_for(count: int) -> list[int]:
        sizes = [rng.choice((HEADER, 64, 100, 512, 1400, 4096)) for _ in range(count)]
        if rng.random() < args.large:
            sizes[rng.randrange(count)] = 256 * 1024
        return sizes

    async def cycle(index: int) -> None:
        service = Service(Identity.generate(), config, reactor=reactor)
        watcher = Watcher()
        service.add_observer(watcher)
        service.startService()
        try:
            joining = JOINS[index % len(JOINS)] if args.transport == "tcp" else "connect"
            totals[joining] += 1
            try:
                if joining == "bootstrap":  # as a node: the node tests that it can reach our listener first
                    peer = await service.bootstrap(role=Role.NODE).addTimeout(60, reactor)
                else:
                    peer = await service.connect(node_info).addTimeout(60, reactor)
            except Exception as e:
                totals["connect_failures"] += 1
                failures[reason_key(f"connect: {e}")] += 1
                return
            totals["connections"] += 1
            count = rng.randint(1, args.max_messages)
            watcher.tag = os.urandom(8)
            watcher.sizes = sizes_for(count)
            for number, size in enumerate(watcher.sizes):
                service.send(peer, message(watcher.tag, number, count, size), 0)
            totals["sent"] += count
            try:
                await watcher.all_back.addTimeout(args.echo_timeout, reactor)
            except Exception:
                failures["echoes timed out"] += 1
            totals["received"] += len(watcher.back)
            totals["lost"] += count - len(watcher.back)
            mode = MODES[index % len(MODES)]
            totals[mode] += 1
            if watcher.gone.called:
                return
            if mode == "client-disconnect":
                service.disconnect(peer)
            elif mode == "node-disconnect":
                service.send(peer, BYE + watcher.tag, 0)
            elif mode == "abort":
                conn = service.peers.active.get(peer)
                if conn is not None and conn.transport is not None:
                    conn.transport.abortConnection()
            if mode != "service-stop":
                try:
                    await watcher.gone.addTimeout(30, reactor)
                except Exception:
                    failures[f"{mode}: the connection did not end within 30 s"] += 1
        finally:
            await service.stopService()

    async def lane(number: int) -> None:
        index = number  # lanes start at different parting modes
        while not state["stopping"]:
            try:
                await cycle(index)
            except Exception as e:  # the benchmark's own mistake: count it and go on
                failures[reason_key(f"cycle: {e!r}")] += 1
                totals["cycle_errors"] += 1
            index += 1
            totals["cycles"] += 1

    def progress() -> None:
        emit(event="progress", totals=dict(totals))
        if not state["stopping"]:
            reactor.callLater(2.0, progress)

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            if line.strip() == b"stop":
                state["stopping"] = True

        def connectionLost(self, reason):
            os._exit(70)  # the runner went away

    lanes = [ensureDeferred(lane(i)) for i in range(args.lanes)]

    def finished(_):
        emit(event="result", totals=dict(totals), failures=dict(failures.most_common(20)))
        reactor.stop()

    from twisted.internet.defer import gatherResults

    gatherResults(lanes, consumeErrors=True).addBoth(finished)
    stdio.StandardIO(Commands(), reactor=reactor)
    reactor.callLater(2.0, progress)
    emit(event="started", lanes=args.lanes)
    reactor.run()
    sys.stdout.flush()
    os._exit(0)


# -- the runner ----------------------------------------------------------------------


class Soak:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        minutes = opts.minutes
        # C malloc's heap takes about three minutes of churn to reach its working set (doc/benchmarks.md)
        warmup = opts.warmup_minutes if opts.warmup_minutes is not None else min(3.0, minutes / 5)
        self.warmup_s = warmup * 60
        self.measured_s = minutes * 60
        total = self.warmup_s + self.measured_s
        self.sample_s = opts.sample if opts.sample else max(0.5, min(20.0, total / 30))
        self.data_dir = tempfile.mkdtemp(prefix="crust-soak-")
        self.node: Proc | None = None
        self.clients: list[Proc] = []
        self.progress: dict[int, dict[str, int]] = {}
        self.samples: list[dict[str, Any]] = []
        self.checkpoints: dict[str, dict[str, Any]] = {}

    def log(self, text: str) -> None:
        if not self.opts.json or self.opts.verbose:
            sys.stderr.write(f"[soak {time.strftime('%H:%M:%S')}] {text}\n")
            sys.stderr.flush()

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            for proc in self.clients:
                proc.stop()
            if self.node is not None:
                self.node.stop()
            if self.opts.keep:
                self.log(f"the node's data directory (node.log): {self.data_dir}")
            else:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def _node_stats(self) -> dict[str, Any]:
        assert self.node is not None
        return self.node.ask("stats", "stats")

    def _checkpoint(self, name: str, t: float) -> dict[str, Any]:
        assert self.node is not None
        point = {"t": round(t, 1), **snapshot(self.node.pid)}
        stats = self._node_stats()
        tables = self.node.ask("tables", "tables")
        point.update(connections_now=stats["connections_now"], allocated_blocks=stats["allocated_blocks"],
                     gc_objects=stats["gc_objects"], malloc_bytes=stats["malloc_bytes"],
                     clients=self._totals().get("connections", 0), tables=tables["tables"], types=tables["types"])
        self.checkpoints[name] = point
        self.log(f"{name}: RSS {point['rss_kib']} KiB, {point['fds']} fds, "
                 f"{point['connections_now']} connections now, {point['clients']} made")
        return point

    def _drain(self) -> None:
        for i, proc in enumerate(self.clients):
            while True:
                try:
                    event = proc.events.get_nowait()
                except Exception:
                    break
                if event is None:
                    raise BenchError(f"{proc.label}: exited early{proc.tail()}")
                if event.get("event") == "error":
                    raise BenchError(f"{proc.label}: {event.get('reason')}{proc.tail()}")
                if event.get("event") in ("progress", "result"):
                    self.progress[i] = event["totals"]
                    if event.get("event") == "result":
                        proc.events.put(event)  # for the final wait
                        break

    def _totals(self) -> collections.Counter:
        total: collections.Counter = collections.Counter()
        for t in self.progress.values():
            total.update(t)
        return total

    def _run(self) -> dict[str, Any]:
        opts = self.opts
        load_before = load_average()
        started = datetime.datetime.now(datetime.timezone.utc)
        node_args = [os.path.join(HERE, "_node.py"), "--data-dir", self.data_dir, "--nofile", str(NOFILE)]
        self.node = Proc("node", node_args, verbose=opts.verbose)
        ready = self.node.wait("ready", 60)
        info = ready["info"]
        self.crust = ready["crust"]
        time.sleep(1.0)
        self.node.ask("collect", "collected")  # a clean baseline
        self._checkpoint("start", 0.0)

        workers = max(1, min(opts.workers, opts.concurrency))
        for w in range(workers):
            lanes = opts.concurrency // workers + (1 if w < opts.concurrency % workers else 0)
            args = [os.path.abspath(__file__), "--role", "client", "--lanes", str(lanes), "--info", info,
                    "--transport", opts.transport, "--max-messages", str(opts.max_messages),
                    "--echo-timeout", str(opts.echo_timeout), "--seed", str(opts.seed * 1000 + w),
                    "--large", str(opts.large)]
            self.clients.append(Proc(f"client{w}", args, verbose=opts.verbose))
        for proc in self.clients:
            proc.wait("started", 60)
        t0 = time.monotonic()
        self.log(f"{opts.concurrency} lanes in {workers} client processes; warm-up {self.warmup_s:g} s, "
                 f"then {self.measured_s:g} s measured")

        marks = [("warmup", self.warmup_s), ("middle", self.warmup_s + self.measured_s / 2),
                 ("end", self.warmup_s + self.measured_s)]
        next_sample = 0.0
        while marks:
            now = time.monotonic() - t0
            if now >= marks[0][1]:
                name, _ = marks.pop(0)
                self._drain()
                self._checkpoint(name, now)
                continue
            if now >= next_sample:
                self._drain()
                stats = self._node_stats()
                sample = {"t": round(now, 1), **snapshot(self.node.pid),
                          "clients": self._totals().get("connections", 0),
                          "connections_now": stats["connections_now"], "malloc_bytes": stats["malloc_bytes"],
                          "allocated_blocks": stats["allocated_blocks"]}
                self.samples.append(sample)
                next_sample = now + self.sample_s
            time.sleep(max(0.0, min(next_sample, marks[0][1]) - (time.monotonic() - t0)))
        loaded_s = time.monotonic() - t0

        for proc in self.clients:
            proc.command("stop")
        results = []
        for i, proc in enumerate(self.clients):
            result = proc.wait("result", opts.echo_timeout + 120)
            self.progress[i] = result["totals"]
            results.append(result)
        for proc in self.clients:
            proc.stop()
        drained_s = time.monotonic() - t0

        # quiet: every client gone; wait for the node to hold no connection
        deadline = time.monotonic() + 60
        while self._node_stats()["connections_now"] and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.0)
        node_stats = self._node_stats()
        self._checkpoint("quiet", time.monotonic() - t0)
        # what is left once cyclic garbage is collected: live objects, not garbage waiting for the collector
        self.node.ask("collect", "collected")
        self._checkpoint("collected", time.monotonic() - t0)
        return self._summary(results, node_stats, loaded_s, drained_s, started, load_before)

    def _summary(self, results, node_stats, loaded_s, drained_s, started, load_before) -> dict[str, Any]:
        totals = self._totals()
        failures: collections.Counter = collections.Counter()
        for r in results:
            failures.update(r.get("failures", {}))
        cp = self.checkpoints
        counters = node_stats["counters"]
        # the node's side: what it received and echoed must match what the clients sent (byes aside)
        node_messages = counters.get("received", 0) - counters.get("byes", 0)
        growth = cp["end"]["rss_kib"] - cp["warmup"]["rss_kib"]
        after = [s for s in self.samples if s["t"] >= self.warmup_s] + [cp["end"]]
        slope = _slope([(s["t"] / 60, s["rss_kib"]) for s in after])
        made_after_warmup = cp["end"]["clients"] - cp["warmup"]["clients"]
        tables = _grown_tables(cp)
        lost = totals.get("lost", 0)
        fds_flat = cp["quiet"]["fds"] == cp["start"]["fds"]
        return {
            "settings": {"minutes": self.opts.minutes, "warmup_s": self.warmup_s, "concurrency": self.opts.concurrency,
                         "workers": len(self.clients), "max_messages": self.opts.max_messages,
                         "transport": self.opts.transport, "echo_timeout": self.opts.echo_timeout,
                         "large": self.opts.large},
            "started": started.isoformat(timespec="seconds"),
            "crust": self.crust,
            "machine": machine_description(),
            "load_before": round(load_before, 2), "load_after": round(load_average(), 2),
            "loaded_s": round(loaded_s, 1), "drained_s": round(drained_s, 1),
            "connections": totals.get("connections", 0),
            "connect_failures": totals.get("connect_failures", 0),
            "joins": {m: totals.get(m, 0) for m in set(JOINS)},
            "partings": {m: totals.get(m, 0) for m in MODES},
            "conn_per_s": round(totals.get("connections", 0) / loaded_s, 1) if loaded_s else 0.0,
            "conn_per_s_after_warmup": round(made_after_warmup / self.measured_s, 1) if self.measured_s else 0.0,
            "messages": {"sent": totals.get("sent", 0), "received": totals.get("received", 0), "lost": lost,
                         "duplicates": totals.get("duplicates", 0), "corrupt": totals.get("corrupt", 0),
                         "unexpected": totals.get("unexpected", 0), "lost_early": totals.get("lost_early", 0),
                         "node_received": node_messages, "node_echoed": counters.get("echoed", 0),
                         "node_echo_failures": counters.get("echo_failures", 0),
                         "node_out_of_order": counters.get("out_of_order", 0),
                         "node_dropped": counters.get("dropped", 0)},
            "lost": lost,
            "node": {"connections": counters.get("connections", 0), "lost_peers": counters.get("lost_peers", 0),
                     "lost_reasons": node_stats["lost_reasons"]},
            "failures": dict(failures.most_common(20)),
            "checkpoints": {name: {k: v for k, v in point.items() if k not in ("tables", "types")}
                            for name, point in cp.items()},
            "fds": {name: point["fds"] for name, point in cp.items()},
            "rss_kib": {name: point["rss_kib"] for name, point in cp.items()},
            "rss_growth_kib": growth,
            "rss_peak_after_warmup_kib": max(p["rss_kib"] for p in after) - cp["warmup"]["rss_kib"],
            "rss_slope_kib_per_min": round(slope, 1),
            "fds_flat": fds_flat,
            "tables_grown": tables,
            "types_grown": _grown_types(cp),
            "samples": self.samples,
            "verdict": {"no_loss": lost == 0 and totals.get("connections", 0) > 0, "fds_flat": fds_flat,
                        "rss_growth_under_2_mib": growth < GROWTH_TARGET_KIB},
        }


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def _grown_tables(cp: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Tables larger once quiet than at the start, or that grew during the measured time."""
    out = {}
    names = set()
    for point in cp.values():
        names.update(point["tables"])
    for name in sorted(names):
        sizes = {point_name: point["tables"].get(name, 0) for point_name, point in cp.items()}
        if sizes["quiet"] > sizes["start"] or sizes["end"] > sizes["warmup"] + max(8, sizes["warmup"] // 10):
            out[name] = sizes
    return out


def _grown_types(cp: dict[str, dict[str, Any]], top: int = 10) -> dict[str, dict[str, int]]:
    """The object types with the most more live objects once quiet (and collected) than at the start."""
    start, quiet = cp["start"]["types"], cp["collected"]["types"]
    grown = sorted(((quiet.get(t, 0) - start.get(t, 0), t) for t in quiet), reverse=True)
    return {t: {"start": start.get(t, 0), "warmup": cp["warmup"]["types"].get(t, 0), "collected": quiet[t]}
            for d, t in grown[:top] if d > 0}


def render(s: dict[str, Any]) -> str:
    cp = s["checkpoints"]
    m = s["messages"]
    lines = [
        f"crust churn soak, {s['started']} ({s['machine']['cores']} cores, load {s['load_before']} -> "
        f"{s['load_after']}), {s['settings']['concurrency']} lanes, {s['settings']['transport']}, "
        f"warm-up {s['settings']['warmup_s']:g} s + {s['settings']['minutes']:g} min",
        "",
        f"connections  {s['connections']:,} ({s['conn_per_s']:.1f}/s; {s['conn_per_s_after_warmup']:.1f}/s after "
        f"warm-up), connect failures {s['connect_failures']}",
        f"messages     sent {m['sent']:,}, echoed back {m['received']:,}, LOST {m['lost']}, duplicates "
        f"{m['duplicates']}, corrupt {m['corrupt']}; the node received {m['node_received']:,}, echoed "
        f"{m['node_echoed']:,}, out of order {m['node_out_of_order']}",
        "",
        "| point | t (s) | RSS (KiB) | fds | connections now | made so far | Python blocks | malloc (KiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, p in cp.items():
        lines.append(f"| {name} | {p['t']:.0f} | {p['rss_kib']:,} | {p['fds']} | {p['connections_now']} | "
                     f"{p['clients']:,} | {p['allocated_blocks']:,} | {p['malloc_bytes'] // 1024:,} |")
    v = s["verdict"]
    lines += [
        "",
        f"RSS growth, warm-up -> end: {s['rss_growth_kib']:+,} KiB (target < {GROWTH_TARGET_KIB} KiB: "
        f"{'ok' if v['rss_growth_under_2_mib'] else 'MISSED'}); highest sample {s['rss_peak_after_warmup_kib']:+,} KiB "
        f"over the warm-up's; trend {s['rss_slope_kib_per_min']:+.1f} KiB/min",
        f"fds: start {cp['start']['fds']}, quiet {cp['quiet']['fds']} ({'flat' if v['fds_flat'] else 'LEAK'})",
        f"lost: {m['lost']} ({'ok' if v['no_loss'] else 'FAILED'})",
    ]
    if s["tables_grown"]:
        lines.append("tables that grew: " + "; ".join(f"{k} {v}" for k, v in s["tables_grown"].items()))
    if s["failures"]:
        lines.append("failures: " + "; ".join(f"{k} x{v}" for k, v in s["failures"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.role == "client":
        return client_main(opts)
    raise_nofile(NOFILE)
    try:
        summary = Soak(opts).run()
    except BenchError as e:
        sys.stderr.write(f"soak: {e}\n")
        return 1
    if opts.json:
        print(json.dumps(summary, indent=1))
    else:
        print(render(summary))
    return 0 if all(summary["verdict"].values()) else 2


if __name__ == "__main__":
    sys.exit(main())
