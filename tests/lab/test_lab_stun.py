"""crust's STUN client and NAT classification against coturn, inside the NAT lab.

Real crust code (``discover_external_address``, ``classify_nat``) runs in a
host behind each kind of NAT (agents in ``tests/lab/natlab/agents``) and talks
to the lab's coturn; the expectations come from the lab's behaviour table
(doc/natlab.md). Root only; skipped elsewhere with the reason.

The classification test runs every kind at once, in one lab, with
``classify_nat``'s default schedule, prints a summary table with the time
each took and writes it to ``_trial_temp/lab-classification.json``.
"""

import json
import os
import time

from tests.lab.natlab import LabTestCase
from tests.lab.natlab.agents import Agent, run_agent

STUN_TOOLS = ("turnserver",)
EI = "endpoint-independent"
AD = "address-dependent"
APD = "address-and-port-dependent"

#: kind -> (udp blocked, behind a NAT, mapping, filtering), as doc/natlab.md's table.
EXPECTED = {
    "public": (False, False, EI, EI),
    "full-cone": (False, True, EI, EI),
    "restricted-cone": (False, True, EI, AD),
    "port-restricted": (False, True, EI, APD),
    "symmetric": (False, True, APD, APD),
    "udp-blocked": (True, None, "unknown", "unknown"),
    "carrier-grade": (False, True, EI, APD),
}
KINDS = list(EXPECTED)

#: What the lead quotes: where the classification summary is written (trial's cwd).
CLASSIFICATION_FILE = "lab-classification.json"


def host_behind(lab, kind, name="alice"):
    """A host of *kind* ("public" or a NAT kind) and the public IP its traffic shows."""
    if kind == "public":
        host = lab.public_host(name)
        return host, host.ip
    nat = lab.nat("nat-" + name, kind)
    return nat.host(name), nat.public_ip


class StunDiscoveryTests(LabTestCase):
    """``discover_external_address`` from behind each kind of NAT."""

    lab_tools = STUN_TOOLS

    def discover(self, kind, *options):
        lab = self.make_lab()
        stun = lab.start_stun()
        host, public_ip = host_behind(lab, kind)
        events = run_agent(host, "stun_discover", "--server", "{}:{}".format(*stun.address),
                           "--deadline", 20, *options)
        result = [e for e in events if e["event"] == "result"]
        self.assertEqual(len(result), 1, events)
        return host, public_ip, result[0]

    def assertDiscovered(self, kind, local_port=None):
        options = ("--local-port", local_port) if local_port else ()
        host, public_ip, result = self.discover(kind, *options)
        self.assertTrue(result["ok"], result)
        transport, ip, port = result["mapped"].split(":")
        self.assertEqual((transport, ip), ("udp", public_ip), result)
        self.assertTrue(result["clean"], result)
        return int(port)

    def test_public_host(self):
        # No NAT: the server sees exactly our socket.
        self.assertEqual(self.assertDiscovered("public", local_port=40123), 40123)

    def test_full_cone(self):
        self.assertDiscovered("full-cone")

    def test_restricted_cone(self):
        self.assertDiscovered("restricted-cone")

    def test_port_restricted(self):
        self.assertDiscovered("port-restricted")

    def test_symmetric(self):
        self.assertDiscovered("symmetric")

    def test_carrier_grade(self):
        # The outermost (carrier) NAT's public address, not the home NAT's
        # 100.64/10 WAN address.
        lab = self.make_lab()
        stun = lab.start_stun()
        home = lab.nat("home", "carrier-grade")
        host = home.host("alice")
        self.assertNotEqual(home.wan_ip, home.public_ip)
        events = run_agent(host, "stun_discover", "--server", "{}:{}".format(*stun.address))
        self.assertEqual(events[-1]["mapped"].split(":")[1], home.behind.wan_ip, events)
        self.assertTrue(events[-1]["clean"], events)

    def test_udp_blocked_times_out_cleanly(self):
        # A short schedule: transmissions at 0, 0.2, 0.6 s, then a final
        # wait of 4 x 0.2 s: the timeout comes at 1.4 s.
        _, _, result = self.discover("udp-blocked", "--rto", 0.2, "--rc", 3, "--rm", 4)
        self.assertFalse(result["ok"], result)
        self.assertEqual(result["error_type"], "StunError", result)
        self.assertIn("did not answer: 3 requests over", result["error"])
        self.assertGreaterEqual(result["elapsed"], 1.35, result)
        self.assertLess(result["elapsed"], 3.0, result)
        # No timer and no socket left behind by the failed discovery.
        self.assertTrue(result["clean"], result)


class ClassificationTests(LabTestCase):
    """``classify_nat`` (RFC 5780 against coturn's two addresses and ports) per kind."""

    lab_tools = STUN_TOOLS

    def test_classification_of_every_kind(self):
        lab = self.make_lab()
        stun = lab.start_stun()
        server = "{}:{}".format(*stun.address)
        hosts = {}
        for i, kind in enumerate(KINDS):
            hosts[kind] = host_behind(lab, kind, name="h{}".format(i))
        started = time.monotonic()
        # All at once (separate NATs, separate sockets): the wall time is the
        # slowest kind's, ~8 s with the default schedule.
        agents = {kind: Agent(host, "classify", "--server", server, "--deadline", 40,
                              label="classify-" + kind)
                  for kind, (host, _) in hosts.items()}
        reports, problems = {}, []
        for kind, agent in agents.items():
            event = agent.event("report", timeout=40)
            reports[kind] = (event, event["report"])
        total = time.monotonic() - started

        rows = []
        for kind in KINDS:
            event, report = reports[kind]
            public_ip = hosts[kind][1]
            got = (report["udp_blocked"], report["behind_nat"], report["mapping"],
                   report["filtering"])
            externals = sorted({a.split(":")[1] for a in report["external_addresses"]})
            want_externals = [] if kind == "udp-blocked" else [public_ip]
            ok = got == EXPECTED[kind] and externals == want_externals
            if not ok:
                problems.append("{}: got {} external {}, expected {} external {}; notes {}".format(
                    kind, got, externals, EXPECTED[kind], want_externals, report["notes"]))
            rows.append({
                "kind": kind, "nat_type": event["nat_type"], "mapping": report["mapping"],
                "filtering": report["filtering"], "udp_blocked": report["udp_blocked"],
                "behind_nat": report["behind_nat"], "hairpinning": report["hairpinning"],
                "port_preservation": report["port_preservation"],
                "external": report["external_addresses"], "probes": len(report["probes"]),
                "timeouts": sum(p["outcome"] == "timeout" for p in report["probes"]),
                "seconds": round(report["duration"], 3), "wall": event["wall"],
                "matches_lab": ok,
            })
        summary = {
            "schedule": "classify_nat defaults: rto 0.5 s (client default), rc 4, rm 4, "
                        "hairpin_timeout 2 s",
            "run_in_parallel": True, "total_wall": round(total, 3), "rows": rows,
        }
        with open(CLASSIFICATION_FILE, "w") as f:
            json.dump(summary, f, indent=2)
        print("\nNAT classification by crust.nat.classify.classify_nat against coturn "
              "(written to {})".format(os.path.abspath(CLASSIFICATION_FILE)))
        print(format_table(rows))
        print("all kinds in parallel: {:.2f} s wall".format(total))
        self.assertEqual(problems, [], "\n".join(problems))


def format_table(rows):
    header = ("kind", "nat_type", "mapping", "filtering", "hairpin", "timeouts", "seconds")
    lines = [[r["kind"], r["nat_type"], r["mapping"], r["filtering"], str(r["hairpinning"]),
              "{}/{}".format(r["timeouts"], r["probes"]), "{:.2f}".format(r["seconds"])]
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)
