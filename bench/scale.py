#!/usr/bin/env python
"""
Scale run: one crust node holding many connections at once.

    python bench/scale.py                       # 10,000 connections
    python bench/scale.py --connections 50      # seconds (the smoke test)
    python bench/scale.py --json                # the figures as JSON on stdout
    python bench/scale.py --tracemalloc         # also say where the node's Python memory goes (slower)

The node under test is the ready node (C{bench/_node.py}, as in the soak) on
127.0.0.1, port mapping and LAN discovery off.  Holder processes
(C{--holders}) each make their share of the peers beforehand, one
L{crust.Service} per identity (each listening on an address of its holder,
127.0.0.2, 127.0.0.3, ...: every peer listens, as crust peers do), then, on
the runner's word, all connect to the node, at most C{--in-flight}
connections in their handshake at once in all (the node takes at most 16
handshakes from one address at a time, and all come from 127.0.0.1).  Each
raises its descriptor limit (C{RLIMIT_NOFILE}) as needed, and so do the node
and the runner.

Figures: connections held; the node's memory per connection (its RSS once
all are held, less its RSS before the first, divided by the connections),
with how much of it is C malloc (OpenSSL's state and buffers) and how much
Python's allocator; the connection rate while ramping; the node's CPU while
it holds them all and nothing is sent (heartbeats only) over
C{--idle-seconds}; that every connection still carries a message both ways
afterwards; and the node's descriptors once the holders are gone.  Traffic
goes to 127.0.0.x (loopback) only.  See doc/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import emit, machine_description  # noqa: E402
from _procs import BenchError, Proc, cpu_seconds, load_average, raise_nofile, reason_key, snapshot  # noqa: E402

NETWORK = "crust-soak"  # as bench/_node.py
TARGET_KIB = 30
PING = b"ping-from-holder"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=10000, help="connections to hold")
    p.add_argument("--holders", type=int, default=4, help="holder processes")
    p.add_argument("--in-flight", type=int, default=12, help="connections in their handshake at once, in all")
    p.add_argument("--idle-seconds", type=float, default=30.0, help="how long the node's idle CPU is measured")
    p.add_argument("--no-udp", action="store_true", help="the node without its UDP socket (TCP only)")
    p.add_argument("--tracemalloc", action="store_true",
                   help="trace the node's Python allocations: where the memory per connection goes")
    p.add_argument("--keep", action="store_true", help="keep the node's data directory (its log) and say where")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="show the workers' other output")
    p.add_argument("--role", choices=("runner", "holder"), default="runner", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.2", help=argparse.SUPPRESS)
    p.add_argument("--info", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- a holder process -------------------------------------------------------------------


def holder_main(args: argparse.Namespace) -> int:
    raise_nofile(2 * args.count + 1024)
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred, gatherResults
    from twisted.internet.task import deferLater
    from twisted.logger import globalLogBeginner
    from twisted.protocols.basic import LineReceiver

    from crust import Config, CrustObserver, Identity, PubConnectionInfo, Service

    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    node_info = PubConnectionInfo.from_json(args.info)
    config = Config(network_name=NETWORK, listen_host=args.host, enable_udp=False, enable_port_mapping=False,
                    enable_service_discovery=False)
    totals: collections.Counter = collections.Counter()
    failures: collections.Counter = collections.Counter()
    services: list[Any] = []
    peers: dict[int, Any] = {}
    echoes: dict[int, Deferred] = {}

    class Watcher(CrustObserver):
        def __init__(self, index: int) -> None:
            self.index = index

        def lost_peer(self, peer_id, reason):
            if self.index in peers:
                totals["lost"] += 1
                if len(failures) < 20:
                    failures[reason_key(f"lost: {reason}")] += 1

        def new_message(self, peer_id, data):
            d = echoes.pop(self.index, None)
            if d is not None and data == PING:
                d.callback(None)

    async def prepare() -> None:
        for i in range(args.count):
            service = Service(Identity.generate(), config, reactor=reactor)
            service.add_observer(Watcher(i))
            service.startService()
            services.append(service)
            if i % 100 == 99:
                await deferLater(reactor, 0, lambda: None)  # let the listeners start
        await gatherResults([s.start_listening() for s in services])
        emit(event="prepared", count=len(services))

    async def connect(i: int) -> None:
        for attempt in range(20):
            try:
                peers[i] = await services[i].connect(node_info).addTimeout(60, reactor)
            except Exception as e:
                totals["connect_failures"] += 1
                if len(failures) < 20 or reason_key(f"connect: {e}") in failures:
                    failures[reason_key(f"connect: {e}")] += 1
                await deferLater(reactor, 0.05 * (attempt + 1), lambda: None)
                continue
            totals["held"] += 1
            return

    async def ramp(in_flight: int) -> None:
        limit = DeferredSemaphore(max(1, in_flight))
        started = time.monotonic()
        await gatherResults([limit.run(lambda i=i: ensureDeferred(connect(i))) for i in range(len(services))])
        emit(event="held", held=len(peers), seconds=time.monotonic() - started, totals=dict(totals))

    async def ping() -> None:
        """A message both ways on every connection (the node echoes it)."""
        waits = []
        for i, peer in peers.items():
            d = echoes[i] = Deferred()
            try:
                services[i].send(peer, PING, 0)
            except Exception as e:
                failures[reason_key(f"ping: {e}")] += 1
                echoes.pop(i, None)
                continue
            waits.append(d.addTimeout(60, reactor).addCallbacks(lambda _: 1, lambda _: 0))
        answered = await gatherResults(waits)
        emit(event="pinged", answered=sum(answered), of=len(peers))

    def progress() -> None:
        emit(event="progress", totals=dict(totals))
        reactor.callLater(1.0, progress)

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            words = line.decode().split()
            if words[:1] == ["go"]:
                reactor.callLater(1.0, progress)
                ensureDeferred(ramp(int(words[1]))).addErrback(fail)
            elif words[:1] == ["ping"]:
                ensureDeferred(ping()).addErrback(fail)
            elif words[:1] == ["status"]:
                emit(event="status", totals=dict(totals), failures=dict(failures.most_common(20)))

        def connectionLost(self, reason):
            os._exit(0)  # the runner is done: the connections go with the process

    def fail(failure):
        emit(event="error", reason=failure.getErrorMessage(), traceback=failure.getTraceback())

    stdio.StandardIO(Commands(), reactor=reactor)
    ensureDeferred(prepare()).addErrback(fail)
    reactor.run()
    return 0


# -- the runner ----------------------------------------------------------------------


class Scale:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.data_dir = tempfile.mkdtemp(prefix="crust-scale-")
        self.node: Proc | None = None
        self.holders: list[Proc] = []

    def log(self, text: str) -> None:
        if not self.opts.json or self.opts.verbose:
            sys.stderr.write(f"[scale {time.strftime('%H:%M:%S')}] {text}\n")
            sys.stderr.flush()

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            for proc in self.holders:
                proc.stop()
            if self.node is not None:
                self.node.stop(grace=60)
            if self.opts.keep:
                self.log(f"the node's data directory (node.log): {self.data_dir}")
            else:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def _run(self) -> dict[str, Any]:
        opts = self.opts
        n = opts.connections
        load_before = load_average()
        started = datetime.datetime.now(datetime.timezone.utc)
        nofile = max(65536, 2 * n + 4096)
        raise_nofile(nofile)
        node_args = [os.path.join(HERE, "_node.py"), "--data-dir", self.data_dir, "--nofile", str(nofile)]
        if opts.no_udp:
            node_args.append("--no-udp")
        if opts.tracemalloc:
            node_args.append("--tracemalloc")
        self.node = node = Proc("node", node_args, verbose=opts.verbose)
        ready = node.wait("ready", 60)
        info = ready["info"]

        holders = max(1, min(opts.holders, n, 250))
        shares = [n // holders + (1 if h < n % holders else 0) for h in range(holders)]
        for h, share in enumerate(shares):
            args = [os.path.abspath(__file__), "--role", "holder", "--count", str(share), "--info", info,
                    "--host", f"127.0.0.{2 + h}"]
            self.holders.append(Proc(f"holder{h}", args, verbose=opts.verbose))
        t_prepare = time.monotonic()
        for proc in self.holders:
            proc.wait("prepared", 120 + share * 0.1)
        self.log(f"{n} peers made in {holders} holder processes ({time.monotonic() - t_prepare:.1f} s)")

        time.sleep(1.0)
        node.ask("collect", "collected")
        before = {**snapshot(node.pid), **_memory(node.ask("stats", "stats"))}
        node.ask("mark", "marked")
        self.log(f"before: RSS {before['rss_kib']} KiB, {before['fds']} fds")

        in_flight = max(1, opts.in_flight // holders)
        t0 = time.monotonic()
        for proc in self.holders:
            proc.command(f"go {in_flight}")
        samples = []
        held_events: dict[int, dict[str, Any]] = {}
        progress: dict[int, dict[str, int]] = {}
        deadline = t0 + max(120.0, n * 0.1)
        while len(held_events) < holders:
            if time.monotonic() > deadline:
                raise BenchError(f"not every holder held its connections within {deadline - t0:.0f} s: "
                                 f"{sum(p.get('held', 0) for p in progress.values())} of {n}")
            for h, proc in enumerate(self.holders):
                if h in held_events:
                    continue
                while True:
                    try:
                        event = proc.events.get_nowait()
                    except Exception:
                        break
                    if event is None or event.get("event") == "error":
                        reason = event.get("reason") if event else "exited"
                        raise BenchError(f"{proc.label}: {reason}{proc.tail()}")
                    if event.get("event") == "progress":
                        progress[h] = event["totals"]
                    elif event.get("event") == "held":
                        held_events[h] = event
                        progress[h] = event["totals"]
                        break
            held_now = sum(p.get("held", 0) for p in progress.values())
            samples.append({"t": round(time.monotonic() - t0, 1), "held": held_now, **snapshot(node.pid)})
            time.sleep(1.0)
        ramp_s = max(e["seconds"] for e in held_events.values())
        held = sum(e["held"] for e in held_events.values())
        connect_failures = sum(e["totals"].get("connect_failures", 0) for e in held_events.values())
        self.log(f"{held} connections held after {ramp_s:.1f} s ({held / ramp_s:.0f}/s)")

        time.sleep(2.0)
        stats = node.ask("stats", "stats", timeout=120)
        after = {**snapshot(node.pid), **_memory(stats)}
        node_held = stats["active_now"]
        self.log(f"held: RSS {after['rss_kib']} KiB, {after['fds']} fds, the node has {node_held} connections")

        cpu0, t_idle = cpu_seconds(node.pid), time.monotonic()
        time.sleep(opts.idle_seconds)
        idle_cpu = (cpu_seconds(node.pid) - cpu0) / (time.monotonic() - t_idle) * 100
        idle_rss = snapshot(node.pid)["rss_kib"]
        self.log(f"idle: the node used {idle_cpu:.1f} % of a core over {opts.idle_seconds:g} s")

        still = node.ask("stats", "stats", timeout=120)["active_now"]
        answered = of = 0
        lost = 0
        failures: collections.Counter = collections.Counter()
        for proc in self.holders:
            proc.command("ping")
        for proc in self.holders:
            result = proc.wait("pinged", 120)
            answered += result["answered"]
            of += result["of"]
        for proc in self.holders:
            status = proc.ask("status", "status")
            lost += status["totals"].get("lost", 0)
            failures.update(status["failures"])
        self.log(f"{answered} of {of} connections echoed a message; {lost} lost while held")

        # the holders go (their connections reset); the node must let every descriptor go
        for proc in self.holders:
            proc.stop()
        t_gone = time.monotonic()
        while time.monotonic() - t_gone < 120:
            if node.ask("stats", "stats", timeout=120)["connections_now"] == 0:
                break
            time.sleep(0.5)
        teardown_s = time.monotonic() - t_gone
        time.sleep(1.0)
        quiet = snapshot(node.pid)

        per_conn = (after["rss_kib"] - before["rss_kib"]) / held if held else float("nan")
        summary: dict[str, Any] = {
            "settings": {"connections": n, "holders": holders, "in_flight": in_flight * holders,
                         "idle_seconds": opts.idle_seconds, "udp": not opts.no_udp, "tracemalloc": opts.tracemalloc},
            "started": started.isoformat(timespec="seconds"),
            "crust": ready["crust"],
            "machine": machine_description(),
            "load_before": round(load_before, 2), "load_after": round(load_average(), 2),
            "connections_held": held, "node_held": node_held, "still_held_after_idle": still,
            "connect_failures": connect_failures, "lost_while_held": lost,
            "echoed": {"answered": answered, "of": of},
            "ramp_s": round(ramp_s, 2), "conn_per_s": round(held / ramp_s, 1) if ramp_s else 0.0,
            "kib_per_connection": round(per_conn, 2),
            "malloc_kib_per_connection": round(stats["malloc_since_mark"] / 1024 / held, 2) if held else None,
            "python_blocks_per_connection": round(stats["blocks_since_mark"] / held, 1) if held else None,
            "idle_cpu_percent": round(idle_cpu, 2),
            "before": before, "held": after, "idle_rss_kib": idle_rss,
            "after_holders_gone": {**quiet, "teardown_s": round(teardown_s, 1)},
            "fds_per_connection": round((after["fds"] - before["fds"]) / held, 3) if held else None,
            "samples": samples,
            "failures": dict(failures.most_common(20)),
            "target_kib_per_connection": TARGET_KIB,
        }
        if opts.tracemalloc and "traced_since_mark" in stats:
            summary["traced_kib_per_connection"] = round(stats["traced_since_mark"] / 1024 / held, 2)
            summary["traced_top"] = [{**t, "bytes_per_connection": round(t["bytes"] / held, 1)}
                                     for t in stats["traced_top"]]
        return summary


def _memory(stats: dict[str, Any]) -> dict[str, Any]:
    return {"malloc_kib": stats["malloc_bytes"] // 1024, "python_blocks": stats["allocated_blocks"],
            "connections_now": stats["connections_now"]}


def render(s: dict[str, Any]) -> str:
    b, h = s["before"], s["held"]
    lines = [
        f"crust scale run, {s['started']} ({s['machine']['cores']} cores, load {s['load_before']} -> "
        f"{s['load_after']}), {s['settings']['connections']:,} connections from {s['settings']['holders']} "
        f"holder processes",
        "",
        f"connections held       {s['connections_held']:,} (the node counts {s['node_held']:,}; "
        f"{s['still_held_after_idle']:,} after the idle time; {s['lost_while_held']} lost)",
        f"ramp                   {s['ramp_s']:.1f} s, {s['conn_per_s']:,.0f} connections/s "
        f"({s['connect_failures']} connect attempts refused or failed, retried)",
        f"node RSS               {b['rss_kib']:,} KiB before, {h['rss_kib']:,} KiB holding them, "
        f"{s['idle_rss_kib']:,} KiB after the idle time",
        f"memory per connection  {s['kib_per_connection']:.1f} KiB (target < {TARGET_KIB}: "
        f"{'ok' if s['kib_per_connection'] < TARGET_KIB else 'MISSED'}); C malloc "
        f"{s['malloc_kib_per_connection']:.1f} KiB, Python {s['python_blocks_per_connection']:.0f} blocks",
        f"descriptors            {b['fds']} before, {h['fds']} holding ({s['fds_per_connection']:.2f} per connection), "
        f"{s['after_holders_gone']['fds']} once the holders are gone ({s['after_holders_gone']['teardown_s']:.1f} s)",
        f"idle (heartbeats) CPU  {s['idle_cpu_percent']:.1f} % of a core over {s['settings']['idle_seconds']:g} s",
        f"echo on every one      {s['echoed']['answered']:,} of {s['echoed']['of']:,}",
    ]
    if "traced_top" in s:
        lines += ["", f"Python allocations per connection (tracemalloc): {s['traced_kib_per_connection']:.1f} KiB",
                  "| where | bytes per connection | objects per connection |", "| --- | ---: | ---: |"]
        held = max(1, s["connections_held"])
        for t in s["traced_top"][:15]:
            lines.append(f"| {t['where']} | {t['bytes_per_connection']:,.0f} | {t['count'] / held:.1f} |")
    if s["failures"]:
        lines.append("failures: " + "; ".join(f"{k} x{v}" for k, v in s["failures"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.role == "holder":
        return holder_main(opts)
    try:
        summary = Scale(opts).run()
    except BenchError as e:
        sys.stderr.write(f"scale: {e}\n")
        return 1
    if opts.json:
        print(json.dumps(summary, indent=1))
    else:
        print(render(summary))
    ok = summary["connections_held"] == opts.connections and summary["echoed"]["answered"] == opts.connections
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
