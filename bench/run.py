#!/usr/bin/env python
"""
crust benchmarks, one command: crust over TCP against plain Twisted TLS 1.3,
crust over QUIC against aioquic's own asyncio client and server, crust
relayed through a third node against crust over TCP directly, signed
100-byte messages (each signed, and in batches) against unsigned ones, and a
crust byte stream against crust's messages over TCP, same run.

    python bench/run.py                 # full run (~3.5 minutes), tables on stdout
    python bench/run.py --quick         # smoke run (~25 s): short, 1 repetition
    python bench/run.py --json          # the same figures as JSON on stdout
    python bench/run.py --profile DIR   # also cProfile every worker into DIR

Every measurement runs a server worker and a client worker (bench/worker.py;
bench/aioquic_worker.py for the aioquic baseline) in two separate processes,
talking over 127.0.0.1 only; the relayed case runs a third, the relay.  For each repetition and test the
implementations of a section run back to back (crust and its TLS baseline;
crust over QUIC and aioquic), so a baseline is measured under the same
machine load as crust.  Figures are the median of the repetitions.  See
doc/benchmarks.md.

To benchmark another copy of crust, put it first on PYTHONPATH, or use
--alt; the workers report which crust they imported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _common import (  # noqa: E402
    BULK_SIZE,
    QUIC_BASELINE,
    RATE_SIZE,
    fmt,
    machine_description,
    make_tls_identity,
    median,
    parse_line,
    percentile,
    ratio,
)

IMPLS = ("crust", "tls", "quic", "aioquic", "relay", "signed", "batched", "stream", "relay-frames")
DEFAULT_IMPLS = IMPLS[:-1]  # relay-frames on request: the relayed case without splicing, for comparison
TESTS = ("bulk", "rate", "setup")
NAMES = {"crust": "crust", "tls": "TLS baseline", "quic": "crust/QUIC", "aioquic": "aioquic",
         "relay": "crust relayed", "signed": "crust signed", "batched": "crust batched", "stream": "crust stream",
         "relay-frames": "relayed, frames"}

# what each implementation is: the worker kind, its section, and the tests it runs
KINDS = {
    "crust": ("crust", "tcp"),
    "tls": ("tls", "tcp"),
    "quic": ("quic", "quic"),
    "aioquic": ("aioquic", "quic"),
    "relay": ("relay", "relay"),
    "signed": ("crust", "signed"),
    "batched": ("crust", "signed"),
    "stream": ("stream", "streams"),
    "relay-frames": ("relay", "relay"),
}
# a raw QUIC stream has no messages to count; signing costs per message: the signed cases measure the
# 100-byte rate; a byte stream, bulk
IMPL_TESTS = {"aioquic": ("bulk", "setup"), "signed": ("rate",), "batched": ("rate",), "stream": ("bulk",)}
# crust over TCP sending with Service.send(..., signed=...): each message signed, or in batches
SIGNING = {"signed": "message", "batched": "batch"}
# their Config.max_queued_bytes: the sender stops 1 MiB over half of it, and the end marker waits behind
# that backlog, which a receiver checking signatures drains at its own pace
SIGNING_MAX_QUEUED = 2 * 1024 * 1024

# a section: crust on one transport ("subject") against its baseline
SECTIONS = {
    "tcp": {"subject": "crust", "baseline": "tls",
            "title": "crust over TCP vs plain Twisted TLS 1.3 (Int32StringReceiver)"},
    # the baseline is the tcp section's crust, measured just before in the same repetition
    "relay": {"subject": "relay", "baseline": "crust",
              "title": "crust relayed through a third node (a circuit spliced onto TCP connections to it, TLS "
                       "end to end) vs crust over TCP directly"},
    "quic": {"subject": "quic", "baseline": "aioquic",
             "title": "crust over QUIC vs aioquic's own asyncio client and server (one stream)"},
    # the baseline is the tcp section's crust (unsigned), measured just before in the same repetition
    "signed": {"subject": "signed", "baseline": "crust", "base_short": "unsigned",
               "title": "signed messages over TCP (Ed25519: each message signed, or in batches) vs unsigned"},
    # the baseline is the tcp section's crust (messages), measured just before in the same repetition
    "streams": {"subject": "stream", "baseline": "crust", "base_short": "messages",
                "title": "crust byte stream over TCP (one stream, 64 KiB writes) vs crust messages over TCP"},
}

# targets for subject/baseline per section; "min": the ratio must be at least this, "max": at most
TARGETS = {
    "bulk_mib_s": ("min", 0.85),
    "rate_msg_s": ("min", 0.60),
    "setup_median_ms": ("max", 1.50),
}
QUIC_TARGETS = {
    "bulk_mib_s": ("min", 0.90),
}
RELAY_TARGETS = {
    "bulk_mib_s": ("min", 0.50),
}
STREAM_TARGETS = {
    "bulk_mib_s": ("min", 0.85),
}
SECTION_TARGETS: dict[str, dict[str, tuple[str, float]]] = {
    "tcp": TARGETS, "quic": QUIC_TARGETS, "relay": RELAY_TARGETS, "signed": {}, "streams": STREAM_TARGETS}

# measured on this kind of machine with the same shape of test (Twisted TLS 1.3
# + Int32StringReceiver), quoted for comparison only
REFERENCE = {"bulk_mib_s": 1024.0, "rate_msg_s": 1.62e6, "setup_median_ms": 1.45}

MIB = 1024 * 1024


class BenchError(Exception):
    pass


class Worker:
    """One bench/worker.py process; collects its BENCH lines in a queue."""

    def __init__(self, label: str, args: list[str], env: dict[str, str], verbose: bool,
                 script: str = "worker.py") -> None:
        self.label = label
        self.stderr = tempfile.TemporaryFile(mode="w+b")
        self.events: "queue.Queue[Optional[dict[str, Any]]]" = queue.Queue()
        self.verbose = verbose
        self.stopped = False
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, script), *args],
            stdin=subprocess.PIPE,  # the worker exits when this closes
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            cwd=ROOT,
            text=True,
            start_new_session=True,  # a ^C on the terminal reaches only the runner
        )
        self._reader = threading.Thread(target=self._read, name=f"read-{label}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = parse_line(line)
            if event is not None:
                self.events.put(event)
            elif self.verbose:
                sys.stderr.write(f"[{self.label}] {line}")
        self.events.put(None)  # end of output

    def wait(self, name: str, deadline: float) -> dict[str, Any]:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.label}: no {name!r} within the time limit{self._tail()}")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                self.proc.wait(5)
                raise BenchError(f"{self.label}: exited ({self.proc.returncode}) before {name!r}{self._tail()}")
            if event.get("event") == "error":
                tb = event.get("traceback") or ""
                raise BenchError(f"{self.label}: {event.get('reason')}\n{tb}{self._tail()}")
            if event.get("event") == name:
                return event

    def _tail(self) -> str:
        try:
            self.stderr.seek(0)
            text = self.stderr.read().decode("utf-8", "replace").strip()
        except Exception:
            return ""
        return f"\n--- {self.label} stderr ---\n{text[-3000:]}" if text else ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (a profiled worker then writes its profile), SIGKILL if it lingers."""
        if self.stopped:
            return
        self.stopped = True
        proc = self.proc
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass
        self._reader.join(5)
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except Exception:
                pass
        self.stderr.close()


class Runner:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.certdir = tempfile.mkdtemp(prefix="crust-bench-")
        make_tls_identity(self.certdir, "server")
        make_tls_identity(self.certdir, "client")
        env = dict(os.environ)
        path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(path + [ROOT])  # a PYTHONPATH copy of crust goes first
        self.env = env
        self.workers: list[Worker] = []
        self.crust_location: dict[str, str] = {}
        self.quic_options: dict[str, dict[str, Any]] = {}  # what each crust-over-QUIC server reported

    def close(self) -> None:
        for w in self.workers:
            w.stop(grace=2)
        self.workers = []
        shutil.rmtree(self.certdir, ignore_errors=True)

    def _worker(self, label: str, args: list[str], env: Optional[dict[str, str]] = None,
                script: str = "worker.py") -> Worker:
        w = Worker(label, args, env or self.env, self.opts.verbose, script)
        self.workers.append(w)
        return w

    def _env_for(self, path: str) -> dict[str, str]:
        if not path:
            return self.env
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(path), env["PYTHONPATH"]])
        return env

    def measure(self, impl: str, test: str, rep: int) -> dict[str, Any]:
        o = self.opts
        size = BULK_SIZE if test == "bulk" else RATE_SIZE
        spec = o.specs[impl]
        kind = spec["kind"]
        env = self._env_for(spec["path"])
        max_queued = spec["max_queued"] or o.max_queued
        priority = o.quic_priority if kind == "quic" else 1
        frames = ["--relay-frames"] if impl == "relay-frames" else []
        common = [
            *frames, "--impl", kind, "--test", test, "--size", str(size),
            "--duration", str(o.duration), "--warmup", str(o.warmup),
            "--connections", str(o.connections), "--certdir", self.certdir,
            "--max-queued", str(max_queued), "--priority", str(priority),
        ]
        if impl in SIGNING:
            common += ["--signed", SIGNING[impl]]
        script = "worker.py"
        if kind == "aioquic":
            script = "aioquic_worker.py"
            q = QUIC_BASELINE
            common += ["--datagram", str(q["max_datagram_size"]), "--max-data", str(q["max_data"]),
                       "--max-stream-data", str(q["max_stream_data"]), "--cc", q["congestion_control"],
                       "--high-water", str(q["high_water"]), "--low-water", str(q["low_water"]),
                       "--socket-buffer", str(o.aioquic_socket_buffer)]
        # a QUIC handshake costs more CPU than a TLS one: a larger allowance per connection
        budget = 30 + o.warmup + o.duration * 3 + o.connections * (0.15 if spec["section"] == "quic" else 0.05)
        common += ["--timeout", str(budget + 30)]

        def prof(role: str) -> list[str]:
            if not o.profile:
                return []
            return ["--profile", os.path.join(o.profile, f"{impl}-{test}-{role}-{rep}.prof")]

        deadline = time.monotonic() + budget
        relay = None
        if kind == "relay":  # the relay first; the server and the client connect to it
            relay = self._worker(f"{impl}/{test}/relay", ["--role", "relay", *common, *prof("relay")], env, script)
            common += ["--relay-info", relay.wait("listening", deadline)["info"]]
        server = self._worker(f"{impl}/{test}/server", ["--role", "server", *common, *prof("server")], env, script)
        client = None
        try:
            listening = server.wait("listening", deadline)
            if kind in ("crust", "quic", "relay", "stream"):
                self.crust_location.setdefault(impl, listening.get("crust", ""))
            if "quic_options" in listening:
                self.quic_options.setdefault(impl, listening["quic_options"])
            client = self._worker(f"{impl}/{test}/client", [
                "--role", "client", *common, *prof("client"),
                "--port", str(listening["port"]), "--info", listening.get("info", ""),
            ], env, script)
            if test == "setup":
                result = client.wait("result", deadline)
                times_ms = [t * 1000 for t in result["times"]]
                server_cpu = relay_cpu = 0.0
                for w in (server, relay):
                    if w is None:
                        continue
                    w.stop()  # it reports its CPU time as it exits
                    try:
                        cpu = w.wait("exit", time.monotonic() + 5)["cpu_since_listening"]
                    except BenchError:
                        cpu = math.nan
                    if w is server:
                        server_cpu = cpu
                    else:
                        relay_cpu = cpu
                return {
                    **({"cpu_relay_s": relay_cpu} if relay is not None else {}),
                    "cpu_ms_per_connection": (result["cpu"] + server_cpu + relay_cpu) * 1000 / len(times_ms),
                    "client_cpu_s": result["cpu"],
                    "server_cpu_s": server_cpu,
                    "connections": len(times_ms),
                    "median_ms": median(times_ms),
                    "p99_ms": percentile(times_ms, 99),
                    "mean_ms": sum(times_ms) / len(times_ms),
                    "min_ms": min(times_ms),
                }
            received = server.wait("result", deadline)
            sent = client.wait("result", deadline)
            seconds = received["seconds"]
            nbytes = received["bytes"]
            mib = nbytes / MIB
            cpu = received["cpu"] + sent["cpu"]
            extra: dict[str, Any] = {}
            if relay is not None:  # the relay's CPU counts too: it is part of the path
                relay.stop()  # it reports its CPU time as it exits
                try:
                    extra["cpu_relay_s"] = relay.wait("exit", time.monotonic() + 5)["cpu_since_listening"]
                    cpu += extra["cpu_relay_s"]
                except BenchError:
                    extra["cpu_relay_s"] = math.nan
            rq, sq = received.get("quic"), sent.get("quic")
            if rq and sq:  # QUIC: datagrams the receiver never got (socket buffer overflows on loopback)
                lost = sq["datagrams_sent"] - rq["datagrams_received"]
                extra = {"quic_receiver": rq, "quic_sender": sq,
                         "lost_percent": 100 * lost / sq["datagrams_sent"] if sq["datagrams_sent"] else math.nan}
            return {
                **extra,
                "message_size": size,
                "seconds": seconds,
                "messages": received["messages"],
                "bytes": nbytes,
                "mib_s": mib / seconds if seconds > 0 else math.nan,
                "msg_s": received["messages"] / seconds if seconds > 0 else math.nan,
                "cpu_receiver_s": received["cpu"],
                "cpu_sender_s": sent["cpu"],
                "cpu_ms_per_mib": cpu * 1000 / mib if mib else math.nan,
                "cpu_us_per_message": cpu * 1e6 / received["messages"] if received["messages"] else math.nan,
                "minflt_receiver": received.get("minflt"),
                "minflt_sender": sent.get("minflt"),
            }
        finally:
            for w in (client, server, relay):
                if w is not None:
                    w.stop()
                    self.workers.remove(w)

    def run(self) -> dict[str, Any]:
        o = self.opts
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            t: {i: [] for i in o.impls if t in _tests_of(i)} for t in o.tests}
        started = time.monotonic()
        self.load_before = _loadavg()
        for rep in range(o.runs):
            for test in o.tests:
                for section in SECTIONS:
                    # a section's implementations back to back; rotate which goes first, against drift
                    impls = [i for i in o.impls if o.specs[i]["section"] == section and i in runs[test]]
                    if not impls:
                        continue
                    k = rep % len(impls)
                    for impl in impls[k:] + impls[:k]:
                        t0 = time.monotonic()
                        result = self.measure(impl, test, rep)
                        runs[test][impl].append(result)
                        if not o.json:
                            sys.stderr.write(f"  run {rep + 1}/{o.runs} {test:5} {impl:8} {_brief(test, result)}"
                                             f"  ({time.monotonic() - t0:.1f} s)\n")
        return self.summarise(runs, time.monotonic() - started)

    def summarise(self, runs, elapsed: float) -> dict[str, Any]:
        o = self.opts
        figures: dict[str, dict[str, float]] = {}
        keys = {
            "bulk": {"bulk_mib_s": "mib_s", "bulk_cpu_ms_per_mib": "cpu_ms_per_mib",
                     "bulk_lost_percent": "lost_percent"},
            "rate": {"rate_msg_s": "msg_s", "rate_mib_s": "mib_s", "rate_cpu_ms_per_mib": "cpu_ms_per_mib",
                     "rate_cpu_us_per_msg": "cpu_us_per_message", "rate_lost_percent": "lost_percent"},
            "setup": {"setup_median_ms": "median_ms", "setup_p99_ms": "p99_ms",
                      "setup_cpu_ms": "cpu_ms_per_connection"},
        }
        for test in o.tests:
            for impl, results in runs[test].items():
                for figure, key in keys[test].items():
                    values = [r[key] for r in results if key in r]
                    if values:
                        figures.setdefault(figure, {})[impl] = median(values)

        def ratios_against(impl: str, base: str) -> dict[str, float]:
            return {figure: ratio(by_impl[impl], by_impl[base])
                    for figure, by_impl in figures.items() if impl in by_impl and base in by_impl}

        sections: dict[str, Any] = {}
        for name, sec in SECTIONS.items():
            members = [i for i in o.impls if o.specs[i]["section"] == name]
            if not members:
                continue
            subject, baseline = sec["subject"], sec["baseline"]
            if baseline not in members and baseline in o.impls:
                members = [baseline] + members  # measured in its own section, in the same repetitions
            got: dict[str, float] = {}
            verdicts: dict[str, Optional[bool]] = {}
            alt_ratios: dict[str, dict[str, float]] = {}
            if baseline in members:
                for impl in members:
                    if impl == baseline:
                        continue
                    if impl == subject:
                        got = ratios_against(impl, baseline)
                    else:
                        alt_ratios[impl] = ratios_against(impl, baseline)
                for figure, (kind, target) in SECTION_TARGETS[name].items():
                    r = got.get(figure)
                    if r is None or math.isnan(r):
                        continue
                    verdicts[figure] = r >= target if kind == "min" else r <= target
            sections[name] = {
                "title": sec["title"], "subject": subject, "baseline": baseline, "impls": members,
                "base_short": sec.get("base_short"),
                "ratios": got,
                "alternatives": alt_ratios,
                "targets": {k: {"kind": v[0], "ratio": v[1], "met": verdicts.get(k)}
                            for k, v in SECTION_TARGETS[name].items()},
            }
        # crust over QUIC against crust over TCP (and alternatives likewise)
        if "quic" in sections and "crust" in o.impls:
            sections["quic"]["vs_tcp"] = {i: ratios_against(i, "crust") for i in sections["quic"]["impls"]
                                          if o.specs[i]["kind"] == "quic"}
        # the UDP receive buffers each QUIC implementation ran with (drops, hence throughput, depend on them)
        rcvbuf = {impl: sorted({r["quic_receiver"]["so_rcvbuf"] for r in results
                                if r.get("quic_receiver", {}).get("so_rcvbuf")})
                  for impl, results in runs.get("bulk", {}).items()}
        rcvbuf = {impl: v for impl, v in rcvbuf.items() if v}
        tcp = sections.get("tcp", {})
        quic_mismatch = {impl: {k: (v, QUIC_BASELINE[k]) for k, v in got.items()
                                if k in QUIC_BASELINE and QUIC_BASELINE[k] != v}
                         for impl, got in self.quic_options.items()}
        return {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_description(),
            "crust": self.crust_location,
            "impls": list(o.impls),
            "settings": {
                "runs": o.runs, "duration_s": o.duration, "warmup_s": o.warmup,
                "connections": o.connections, "bulk_size": BULK_SIZE, "rate_size": RATE_SIZE,
                "crust_max_queued_bytes": o.max_queued or "default", "quick": o.quick,
                "quic_priority": o.quic_priority, "quic_baseline": QUIC_BASELINE,
                "crust_quic_options": self.quic_options,
                "quic_settings_differ": {k: v for k, v in quic_mismatch.items() if v},
                "quic_so_rcvbuf": rcvbuf, "aioquic_socket_buffer": o.aioquic_socket_buffer,
                "profiled": bool(o.profile), "elapsed_s": round(elapsed, 1),
                # other work on the machine skews every figure: the load average around the run
                "loadavg_before": self.load_before, "loadavg_after": _loadavg(),
            },
            "figures": figures,
            # crust over TCP / TLS baseline (kept at the top level, as before the QUIC section)
            "ratios": tcp.get("ratios", {}),
            "alternatives": {name: {"path": spec["path"], "max_queued_bytes": spec["max_queued"],
                                    "transport": "quic" if spec["kind"] == "quic" else "tcp",
                                    "ratios": sections.get(spec["section"], {}).get("alternatives", {}).get(name, {})}
                             for name, spec in o.specs.items() if spec.get("alt")},
            "targets": tcp.get("targets", {k: {"kind": v[0], "ratio": v[1], "met": None} for k, v in TARGETS.items()}),
            "sections": sections,
            "reference_baseline": REFERENCE,
            "runs": runs,
        }


def _tests_of(impl: str) -> tuple[str, ...]:
    return IMPL_TESTS.get(impl, TESTS)


def _loadavg() -> Optional[float]:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _brief(test: str, r: dict[str, Any]) -> str:
    if test == "setup":
        return f"median {r['median_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  ({r['connections']} connections)"
    lost = f"  {r['lost_percent']:.2f}% datagrams lost" if "lost_percent" in r else ""
    if test == "bulk":
        return f"{r['mib_s']:8.1f} MiB/s  {r['cpu_ms_per_mib']:.2f} ms CPU/MiB{lost}"
    return f"{r['msg_s']:10,.0f} msg/s  {r['cpu_ms_per_mib']:.2f} ms CPU/MiB{lost}"


ROWS = [
    # figure, label, digits, higher is better
    ("bulk_mib_s", "bulk, 64 KiB messages (MiB/s)", 1, True),
    ("bulk_cpu_ms_per_mib", "  CPU, both processes (ms per MiB)", 2, False),
    ("bulk_lost_percent", "  UDP datagrams lost (%)", 2, False),
    ("rate_msg_s", "100-byte messages (msg/s)", 0, True),
    ("rate_cpu_ms_per_mib", "  CPU, both processes (ms per MiB)", 2, False),
    ("rate_cpu_us_per_msg", "  CPU, both processes (us per message)", 2, False),
    ("rate_lost_percent", "  UDP datagrams lost (%)", 2, False),
    ("setup_median_ms", "setup + 1 round trip, median (ms)", 2, False),
    ("setup_p99_ms", "setup + 1 round trip, p99 (ms)", 2, False),
    ("setup_cpu_ms", "  CPU, both processes (ms per connection)", 2, False),
]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [row[c].rjust(widths[c]) for c in range(1, len(row))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _section_lines(summary: dict[str, Any], name: str) -> list[str]:
    sec = summary["sections"][name]
    impls = sec["impls"]
    subject, baseline = sec["subject"], sec["baseline"]
    short = {"crust": "crust", "quic": "QUIC", "relay": "relayed", "signed": "signed", "stream": "stream"}[subject]
    base_short = sec.get("base_short") or {"tls": "baseline", "aioquic": "aioquic", "crust": "direct"}[baseline]
    alts = [i for i in impls if i not in (subject, baseline)]
    head = ["measurement"] + [NAMES.get(i, i) for i in impls]
    pair = subject in impls and baseline in impls
    if pair:
        head += [f"{short}/{base_short}", "target"]
    if baseline in impls:
        head += [f"{a}/{base_short}" for a in alts]
    vs_tcp = sec.get("vs_tcp")
    if vs_tcp:
        head += ["QUIC/TCP" if i == "quic" else f"{i}/crust-TCP" for i in vs_tcp]
    table = [head]
    for figure, label, digits, _ in ROWS:
        values = summary["figures"].get(figure)
        if values is None or not any(i in values for i in impls) or (subject in impls and subject not in values):
            continue
        row = [label] + [fmt(values.get(i), digits) for i in impls]
        if figure.endswith("_lost_percent"):  # a diagnostic: no ratios
            table.append(row + [""] * (len(head) - len(row)))
            continue
        if pair:
            r = sec["ratios"].get(figure)
            row.append(fmt(r, 2) + "x" if r is not None else "-")
            target = sec["targets"].get(figure)
            if target is not None and target["met"] is not None:
                sign = ">=" if target["kind"] == "min" else "<="
                row.append(f"{sign} {target['ratio']:.2f}x {'ok' if target['met'] else 'MISSED'}")
            else:
                row.append("")
        if baseline in impls:
            for a in alts:
                r = sec["alternatives"].get(a, {}).get(figure)
                row.append(fmt(r, 2) + "x" if r is not None else "-")
        if vs_tcp:
            for i, got in vs_tcp.items():
                r = got.get(figure)
                row.append(fmt(r, 2) + "x" if r is not None else "-")
        table.append(row)
    return [sec["title"] + ":"] + _table(table)


def render(summary: dict[str, Any]) -> str:
    m = summary["machine"]
    s = summary["settings"]
    lines = [
        f"crust benchmarks, {summary['date']}",
        f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, Twisted {m['twisted']}, "
        f"pyOpenSSL {m['OpenSSL']}, {m.get('openssl', '')}" + (f", aioquic {m['aioquic']}" if m.get("aioquic") else ""),
        "crust: " + ("; ".join(f"{k}: {v}" for k, v in summary["crust"].items()) or "-"),
        f"{s['runs']} run(s) each, median shown; streams {s['duration_s']:g} s after {s['warmup_s']:g} s warm-up; "
        f"setup over {s['connections']} connections"
        + ("; PROFILED: figures are not comparable" if s["profiled"] else ""),
        f"load average (1 min) before/after: {s.get('loadavg_before')}/{s.get('loadavg_after')} "
        f"on {m['cores']} cores (other work skews the figures); {s['elapsed_s']:g} s",
    ]
    for name in SECTIONS:
        if name in summary["sections"]:
            lines += [""] + _section_lines(summary, name)
            if name == "signed":
                lines.append("signed: every message signed (Ed25519, PyNaCl) and checked by the receiver; batched: "
                             "one signature per batch (Config.signed_batch_max 64, signed_batch_window 5 ms); "
                             "crust over TCP, priority 1")
            if name == "streams":
                lines.append("stream: one crust byte stream, written in 64 KiB chunks while it takes them (a push "
                             "producer), half-closed at the end; messages: the crust row above")
            if name == "relay":
                lines.append("relayed: one node to another through a third (no rate or byte limit; its limits on "
                             "new circuits lifted for the setup test); its CPU counts the relay's process too")
            if name == "quic":
                q = s["quic_baseline"]
                lines.append(f"QUIC: datagrams of {q['max_datagram_size']} bytes, {q['congestion_control']}, "
                             f"initial windows {q['max_data'] // 1024} KiB, "
                             f"crust messages at priority {s['quic_priority']}"
                             f"{' (the bulk lane)' if s['quic_priority'] >= 2 else ' (the urgent lane)'}; "
                             "aioquic has no message rate (a raw stream)")
                bufs = s.get("quic_so_rcvbuf", {})
                if len({tuple(v) for v in bufs.values()}) > 1:
                    lines.append("WARNING: the UDP receive buffers differ (SO_RCVBUF as the kernel reports it): "
                                 + ", ".join(f"{i} {'/'.join(str(b) for b in v)}" for i, v in bufs.items())
                                 + "; see --aioquic-socket-buffer")
                for impl, diff in s.get("quic_settings_differ", {}).items():
                    lines.append(f"WARNING: {impl}'s QUIC settings differ from the baseline's: "
                                 + ", ".join(f"{k} {a} (baseline {b})" for k, (a, b) in diff.items()))
    ref = summary["reference_baseline"]
    if "tcp" in summary["sections"]:
        lines += [
            "",
            f"reference (TLS baseline, same shape, this kind of machine): {ref['bulk_mib_s']:.0f} MB/s bulk, "
            f"{ref['rate_msg_s'] / 1e6:.2f} M msg/s, {ref['setup_median_ms']:.2f} ms setup",
        ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a fast smoke run (short streams, 1 repetition)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (progress goes nowhere)")
    p.add_argument("--runs", type=int, help="repetitions; the median is reported (default 3, quick 1)")
    p.add_argument("--duration", type=float, help="measured seconds per stream test (default 4, quick 0.5)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds first (default 0.5, quick 0.1)")
    p.add_argument("--connections", type=int, help="connections in the setup test (default 200, quick 20)")
    p.add_argument("--tests", default=",".join(TESTS), help="comma-separated subset of: " + ",".join(TESTS))
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS),
                   help="comma-separated subset of: " + ",".join(IMPLS) + " (default: all but relay-frames)")
    p.add_argument("--max-queued", type=int, default=0,
                   help="crust Config.max_queued_bytes for the stream tests (default: Config's)")
    p.add_argument("--quic-priority", type=int, default=2,
                   help="priority of crust-over-QUIC's stream test messages (default 2: the bulk lane; "
                        "0-1: the urgent lane)")
    p.add_argument("--aioquic-socket-buffer", type=int, default=0, metavar="BYTES",
                   help="SO_RCVBUF/SO_SNDBUF of the aioquic baseline's sockets (default 0: the system's, "
                        "as aioquic and crust leave them); match crust's when it sets its own")
    p.add_argument("--alt", action="append", default=[], metavar="NAME=[PATH][@MAX_QUEUED]",
                   help="also measure another crust, interleaved with the others: the package found "
                        "first on PATH (e.g. a patched copy) and/or another Config.max_queued_bytes; "
                        "repeatable; over TCP as NAME when crust or tls is in --impls, over QUIC as "
                        "NAME-quic when quic or aioquic is")
    p.add_argument("--profile", metavar="DIR", default="",
                   help="cProfile every worker; DIR/<impl>-<test>-<role>-<run>.prof and .txt summaries")
    p.add_argument("--verbose", "-v", action="store_true", help="show the workers' other output")
    o = p.parse_args(argv)
    o.runs = o.runs if o.runs is not None else (1 if o.quick else 3)
    o.duration = o.duration if o.duration is not None else (0.5 if o.quick else 4.0)
    o.warmup = o.warmup if o.warmup is not None else (0.1 if o.quick else 0.5)
    o.connections = o.connections if o.connections is not None else (20 if o.quick else 200)
    o.tests = tuple(t for t in o.tests.split(",") if t)
    o.impls = tuple(i for i in o.impls.split(",") if i)
    bad = [t for t in o.tests if t not in TESTS] + [i for i in o.impls if i not in IMPLS]
    if bad or not o.tests or not o.impls:
        p.error(f"unknown or empty --tests/--impls: {bad}")
    o.specs = {i: {"kind": KINDS[i][0], "section": KINDS[i][1], "path": "",
                   "max_queued": SIGNING_MAX_QUEUED if i in SIGNING else 0} for i in o.impls}
    sections = {o.specs[i]["section"] for i in o.impls}
    alt_names: set[str] = set()
    for spec in o.alt:
        name, sep, rest = spec.partition("=")
        path, _, queued = rest.partition("@")
        if not sep or not name or name in IMPLS or name in alt_names or "/" in name:
            p.error(f"bad --alt {spec!r}: NAME=[PATH][@MAX_QUEUED], NAME not a built-in impl and unique")
        if path and not os.path.isdir(os.path.join(path, "crust")):
            p.error(f"--alt {spec!r}: no crust package in {path}")
        alt_names.add(name)
        for section, kind, impl in (("tcp", "crust", name), ("quic", "quic", f"{name}-quic")):
            if section in sections:
                o.specs[impl] = {"kind": kind, "section": section, "path": path,
                                 "max_queued": int(queued) if queued else 0, "alt": True}
                o.impls += (impl,)
    if o.runs < 1 or o.duration <= 0 or o.warmup < 0 or o.connections < 1:
        p.error("--runs, --duration and --connections must be positive, --warmup not negative")
    if o.profile:
        os.makedirs(o.profile, exist_ok=True)
        o.profile = os.path.abspath(o.profile)
    return o


def main(argv=None) -> int:
    opts = parse_args(argv)
    runner = Runner(opts)
    try:
        summary = runner.run()
    except BenchError as e:
        sys.stderr.write(f"bench failed: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    finally:
        runner.close()
    if opts.json:
        json.dump(summary, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(render(summary))
        if opts.profile:
            print(f"\nprofiles: {opts.profile}/*.prof (summaries: *.prof.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
