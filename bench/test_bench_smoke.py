"""
A smoke test of the benchmarks (not part of the main suite, which collects
tests/ only).  Run it from the repository root:

    python -m twisted.trial bench/test_bench_smoke.py

It runs ``python bench/run.py --quick --json`` (about 20 s: one short
repetition of every measurement, crust over TCP and the TLS baseline, crust
over QUIC and the aioquic baseline, each in its own pair of processes on
127.0.0.1, crust relayed through a third process on every test, signed
messages, and a crust byte stream) and ``python bench/micro.py --quick --json``,
and checks that every figure was measured and is plausible.  It asserts no
performance target: those depend on the machine.

L{SoakAndScale} runs the churn soak (``bench/soak.py --minutes 0.1``) and the
scale run (``bench/scale.py --connections 50``) for a few seconds each, under
30 s together, and checks their JSON: every figure there, no message lost,
every connection held.  Alone:

    python -m twisted.trial bench.test_bench_smoke.SoakAndScale
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from twisted.trial import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _run(*args: str, timeout: float) -> dict:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


class QuickBench(unittest.TestCase):
    def test_run_quick(self) -> None:
        summary = _run(os.path.join(HERE, "run.py"), "--quick", "--json", timeout=120)
        figures = summary["figures"]
        for figure in ("bulk_mib_s", "bulk_cpu_ms_per_mib", "rate_msg_s", "rate_cpu_ms_per_mib",
                       "setup_median_ms", "setup_p99_ms"):
            for impl in ("crust", "tls"):
                value = figures[figure][impl]
                self.assertTrue(value > 0 and math.isfinite(value), f"{figure}/{impl} = {value}")
        # plausibility: something flowed, and a round trip is between 10 us and 1 s
        self.assertGreater(figures["bulk_mib_s"]["crust"], 1)
        self.assertGreater(figures["rate_msg_s"]["crust"], 1000)
        self.assertTrue(0.01 < figures["setup_median_ms"]["crust"] < 1000)
        for figure in ("bulk_mib_s", "rate_msg_s", "setup_median_ms"):
            self.assertTrue(math.isfinite(summary["ratios"][figure]), figure)
            self.assertIn(summary["targets"][figure]["met"], (True, False))
        # QUIC: crust on every test, aioquic on bulk and setup (a raw stream has no message rate)
        for figure in ("bulk_mib_s", "bulk_cpu_ms_per_mib", "rate_msg_s", "rate_cpu_ms_per_mib",
                       "setup_median_ms", "setup_p99_ms", "setup_cpu_ms"):
            impls = ("quic", "aioquic") if not figure.startswith("rate") else ("quic",)
            for impl in impls:
                value = figures[figure][impl]
                self.assertTrue(value > 0 and math.isfinite(value), f"{figure}/{impl} = {value}")
        self.assertNotIn("aioquic", figures["rate_msg_s"])
        quic = summary["sections"]["quic"]
        for figure in ("bulk_mib_s", "setup_median_ms"):
            self.assertTrue(math.isfinite(quic["ratios"][figure]), figure)
        self.assertIn(quic["targets"]["bulk_mib_s"]["met"], (True, False))
        self.assertTrue(math.isfinite(quic["vs_tcp"]["quic"]["bulk_mib_s"]))
        # relayed: every test, against crust over TCP directly
        for figure in ("bulk_mib_s", "bulk_cpu_ms_per_mib", "rate_msg_s", "rate_cpu_ms_per_mib",
                       "setup_median_ms", "setup_p99_ms", "setup_cpu_ms"):
            value = figures[figure]["relay"]
            self.assertTrue(value > 0 and math.isfinite(value), f"{figure}/relay = {value}")
        relay = summary["sections"]["relay"]
        self.assertEqual(relay["baseline"], "crust")
        for figure in ("bulk_mib_s", "rate_msg_s", "setup_median_ms"):
            self.assertTrue(math.isfinite(relay["ratios"][figure]), figure)
        self.assertIn(relay["targets"]["bulk_mib_s"]["met"], (True, False))
        self.assertTrue(math.isfinite(summary["runs"]["bulk"]["relay"][0]["cpu_relay_s"]))
        self.assertTrue(math.isfinite(summary["runs"]["setup"]["relay"][0]["cpu_relay_s"]))
        # signed messages: the 100-byte rate only, each signed and in batches, against unsigned crust over TCP
        for impl in ("signed", "batched"):
            value = figures["rate_msg_s"][impl]
            self.assertTrue(value > 100 and math.isfinite(value), f"rate_msg_s/{impl} = {value}")
            self.assertNotIn(impl, figures["bulk_mib_s"])
        signed = summary["sections"]["signed"]
        self.assertEqual((signed["baseline"], signed["subject"]), ("crust", "signed"))
        self.assertTrue(math.isfinite(signed["ratios"]["rate_msg_s"]))
        self.assertTrue(math.isfinite(signed["alternatives"]["batched"]["rate_msg_s"]))
        # a byte stream: bulk only, against crust's messages over TCP
        for figure in ("bulk_mib_s", "bulk_cpu_ms_per_mib"):
            value = figures[figure]["stream"]
            self.assertTrue(value > 0 and math.isfinite(value), f"{figure}/stream = {value}")
        self.assertNotIn("stream", figures["rate_msg_s"])
        streams = summary["sections"]["streams"]
        self.assertEqual(streams["baseline"], "crust")
        self.assertTrue(math.isfinite(streams["ratios"]["bulk_mib_s"]))
        self.assertIn(streams["targets"]["bulk_mib_s"]["met"], (True, False))
        # every setup iteration was its own connection
        for impl in ("crust", "tls", "quic", "aioquic", "relay"):
            self.assertEqual(summary["runs"]["setup"][impl][0]["connections"], summary["settings"]["connections"])

    def test_micro_quick(self) -> None:
        result = _run(os.path.join(HERE, "micro.py"), "--quick", "--json", timeout=120)
        for case in ("100 B", "64 KiB"):
            for name, ns in result["ns_per_message"][case].items():
                self.assertTrue(0 < ns < 1e7, f"{case} {name}: {ns} ns")
        for name, us in result["us_per_connection"].items():
            self.assertTrue(10 < us < 1e6, f"{name}: {us} us")


class SoakAndScale(unittest.TestCase):
    """The churn soak and the scale run, tiny: their figures are all there, and nothing is lost."""

    def test_soak(self) -> None:
        s = _run(os.path.join(HERE, "soak.py"), "--minutes", "0.1", "--concurrency", "4", "--json", timeout=60)
        self.assertEqual(s["lost"], 0, s["failures"])
        self.assertGreater(s["connections"], 0)
        messages = s["messages"]
        self.assertGreater(messages["sent"], 0)
        self.assertEqual(messages["received"], messages["sent"])
        self.assertEqual(messages["node_received"], messages["sent"])  # the node saw each one, once
        self.assertEqual(messages["node_out_of_order"], 0)
        for point in ("start", "warmup", "middle", "end", "quiet"):
            self.assertGreater(s["rss_kib"][point], 0, point)
            self.assertGreater(s["fds"][point], 0, point)
        self.assertEqual(s["checkpoints"]["quiet"]["connections_now"], 0)
        self.assertTrue(s["fds_flat"], s["fds"])  # the node let go of every connection's descriptor
        self.assertTrue(math.isfinite(s["rss_growth_kib"]))
        self.assertGreater(s["conn_per_s"], 0)
        self.assertGreater(s["joins"]["bootstrap"], 0)
        self.assertTrue(all(n > 0 for n in s["partings"].values()), s["partings"])
        self.assertIn("tables_grown", s)
        self.assertEqual(set(s["verdict"]), {"no_loss", "fds_flat", "rss_growth_under_2_mib"})

    def test_scale(self) -> None:
        s = _run(os.path.join(HERE, "scale.py"), "--connections", "50", "--holders", "2", "--idle-seconds", "2",
                 "--json", timeout=60)
        self.assertEqual(s["connections_held"], 50)
        self.assertEqual(s["node_held"], 50)
        self.assertEqual(s["still_held_after_idle"], 50)
        self.assertEqual(s["lost_while_held"], 0)
        self.assertEqual(s["echoed"], {"answered": 50, "of": 50})
        self.assertTrue(0 < s["kib_per_connection"] < 10_000, s["kib_per_connection"])
        self.assertGreater(s["conn_per_s"], 0)
        self.assertTrue(0 <= s["idle_cpu_percent"] <= 200)
        self.assertEqual(s["after_holders_gone"]["fds"], s["before"]["fds"])
        for field in ("malloc_kib_per_connection", "python_blocks_per_connection", "fds_per_connection"):
            self.assertTrue(math.isfinite(s[field]), field)
