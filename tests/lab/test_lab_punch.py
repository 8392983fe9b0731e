"""Hole punching and relays (issues 12 and 13) in the NAT lab: every pair of NAT kinds.

The lab: one public seed node (``--accept-bootstrap --serve-rendezvous
--serve-relay``, reachability test on: what the ready node does by default)
and, for each NAT kind below, two hosts each behind a NAT of its own (a
same-kind pair is two different NATs): ``public`` (no NAT), ``full-cone``,
``restricted-cone``, ``port-restricted``, ``symmetric`` (random ports),
``udp-blocked``, ``double-nat`` (a port-restricted home NAT behind its own
port-restricted carrier NAT). Every host runs the lab's node agent
(``tests/lab/natlab/agents/node.py``) with the seed as its only contact and
no port mapping (the routers have none). First the lab itself is checked:
every host's NAT gives the mapping and filtering of its kind (``probe.py
nat-test`` against two reflectors, as ``tests/lab/test_natlab.py`` does).
Then each node bootstraps off the seed with the library's default role; the
seed cannot reach NATed nodes back, so they join as clients. Should a node's
bootstrap fail all the same, the harness asks once more as a client (what
the ready node did before the library learned it) and the bootstrap table
shows it, so that the matrix can still run.

The matrix: for every unordered pair of kinds and each kind with its twin
(28 pairs), in two modes, run one after the other:

- ``in-band``: A connects to B by peer id (``Service.connect(PeerId)``,
  through the common peer, the seed);
- ``paste``: both sides connect with each other's fresh connection info at
  the same moment (``Service.connect(our_info, their_info)``).

Each connect records the path kind and strategy (``peer_details(peer)["path"]``,
on both sides), the transport, the seconds from the command to the result,
and the reasons of a failure. Once connected, a message goes each way. A
pair that must be direct but connected through the relay (a punch slower
than the relay's 2 s start delay: birthday probing) must move to a direct
path (``path_changed``) within 25 s of the command (the punch's 15 s
window, then, should that punch miss, one more try by the background
re-punch): the seconds from the command to that are recorded too. Then both
sides disconnect and the next pair starts once both have seen the
connection gone. The matrix is printed for each mode (rows: A's
kind; columns: B's kind) with the median and worst time, and written to
``_trial_temp/lab-punch-matrix.json``.

Two link conditions, one test each: 20 ms RTT (10 ms each way at the
internet router) with the timing bounds, and 100 ms RTT with 1 % loss.
A third test runs real ``twistd -n crust node`` processes behind a
port-restricted and a symmetric NAT and drives them with the ``crust``
command.

What is asserted (issue 12's requirements):

- the lab and the harness (they hold without hole punching): the topology
  comes up, each NAT kind behaves as it should, every node bootstraps within
  10 s of being ready, pairs with a public side connect in the ``paste``
  mode, every failure comes with a reason, and a pair's connection is gone
  after both sides disconnect;
- hole punching (marked ``[issue 12]`` in failure messages; they need the
  library's hole punching): every pair where at least one side has an
  endpoint-independent mapping ends up on a direct path kind on both sides
  (not relayed; ``incoming``, the peer's own dial winning, counts as
  direct): at once, or after starting relayed, within 25 s of the connect;
  ``udp-blocked`` pairs (other than with symmetric) connect over TCP; at
  20 ms RTT the median time to connect is under 2 s and the worst under
  15 s; at 100 ms RTT and 1 % loss the same pairs connect, worst under 15 s.
  A missing library API (one-argument ``connect``, ``path`` in
  ``peer_details``, ``crust connect PEER_ID``) is named as such;
- relays (marked ``[issue 13]``): every pair connects, zero failures;
  ``symmetric x symmetric`` and ``udp-blocked x symmetric``, where nothing
  direct works, connect relayed through the seed (path ``relayed`` via the
  seed's peer id, strategy ``relay``, on both sides) and stay relayed; in
  every pair a message goes each way.

Root only (network namespaces, nftables, ``/dev/net/tun``); skipped
elsewhere with the reason. See doc/natlab.md, "Hole punching matrix".
"""

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from tests.lab.natlab import LabTestCase, ProcessError
from tests.lab.natlab.agents import Agent

#: The NAT kinds of the matrix, in the table's order.
KINDS = ("public", "full-cone", "restricted-cone", "port-restricted", "double-nat", "symmetric", "udp-blocked")
SHORT = {"public": "pub", "full-cone": "full", "restricted-cone": "rest", "port-restricted": "port",
         "double-nat": "dbl", "symmetric": "sym", "udp-blocked": "noudp"}

EI = "endpoint-independent"
AD = "address-dependent"
APD = "address-and-port-dependent"
#: kind -> (mapping, filtering) that probe.py nat-test must find (doc/natlab.md).
BEHAVIOUR = {
    "public": (EI, EI),
    "full-cone": (EI, EI),
    "restricted-cone": (EI, AD),
    "port-restricted": (EI, APD),
    "double-nat": (EI, APD),
    "symmetric": (APD, APD),
    "udp-blocked": ("blocked", "blocked"),
}

#: Pairs that only a relay connects (both mappings endpoint-dependent, or no UDP against random ports).
RELAYED = {frozenset(["symmetric"]), frozenset(["udp-blocked", "symmetric"])}
#: Path kinds that count as direct: not relayed. ``incoming``: the peer's own dial
#: reached us (in the paste mode one side's dial wins; the other side sees it so).
DIRECT = ("direct", "mapped", "punched-tcp", "punched-udp", "incoming")
PATH_SHORT = {"direct": "dir", "mapped": "map", "punched-tcp": "ptcp", "punched-udp": "pudp",
              "incoming": "in", "relayed": "RELAY"}

NETWORK = "crust-punch-lab"
CONNECT_TIMEOUT = 18.0   # the nodes' connect_timeout: over the 15 s birthday window
BOOTSTRAP_BOUND = 10.0   # seconds from a node's ready to bootstrapped
MEDIAN_BOUND = 2.0
MAX_BOUND = 15.0
DIRECT_BOUND = 25.0      # seconds from connect to a direct path, for a pair that started relayed: the
                         # punch's 15 s window and, should it miss (birthday probing may), one more try
AGENT_DEADLINE = 1800
MATRIX_FILE = "lab-punch-matrix.json"
ISSUE = "[issue 12] "    # the prefix of every assertion that needs the library's hole punching
RELAY_ISSUE = "[issue 13] "  # ... and of those that need its relays


def pairs():
    """The 28 pairs ``(a_kind, b_kind)``: each unordered pair once, and each kind with its twin."""
    return [(a, b) for i, a in enumerate(KINDS) for b in KINDS[i:]]


def category(a, b):
    """``"relayed"`` (only a relay connects them), ``"tcp"`` (must be direct over TCP) or ``"direct"``."""
    if frozenset([a, b]) in RELAYED:
        return "relayed"
    if "udp-blocked" in (a, b):
        return "tcp"
    return "direct"


def text_of(result):
    """A result's failure text: its reasons, else its error."""
    if result is None:
        return "no result"
    return "; ".join(result.get("reasons") or []) or result.get("error") or result.get("event", "")


def brief(result, each=160):
    """A failure's text for the printout: every reason, each cut to *each* characters."""
    if result is None:
        return "no result"
    reasons = result.get("reasons") or [result.get("error") or result.get("event", "")]
    return "; ".join(r if len(r) <= each else r[:each - 3] + "..." for r in reasons)


def short_reason(result):
    if result is None:
        return "no result"
    if result.get("api_missing"):
        return "no API"
    low = text_of(result).lower()
    for word, short in (("symmetric", "symmetric"), ("relay", "needs relay"), ("no common peer", "no rdv peer"),
                        ("timed out", "timeout"), ("timeout", "timeout"), ("refused", "refused"),
                        ("unreachable", "unreachable"), ("deadline", "agent died")):
        if word in low:
            return short
    return result.get("error_type") or "error"


class Node:
    """One matrix node: its kind, host, agent and what it reported."""

    def __init__(self, kind, host, agent, public_ip):
        self.kind = kind
        self.host = host
        self.agent = agent
        self.public_ip = public_ip
        self.ready = None
        self.bootstrap = None      # the first bootstrap's event (the library's default role)
        self.fallback = None       # the client bootstrap after a refusal, if any

    @property
    def name(self):
        return self.host.name

    @property
    def peer_id(self):
        return self.ready["peer_id"]

    @property
    def bootstrapped(self):
        final = self.fallback or self.bootstrap
        return final is not None and final["event"] == "bootstrapped"

    @property
    def bootstrap_after_ready(self):
        final = self.fallback or self.bootstrap
        return round(final["t"] - self.ready["t"], 3) if final else None


class PunchLab:
    """The matrix lab: seed, two hosts per kind, agents, bootstrap."""

    def __init__(self, case, impairment=None):
        self.case = case
        self.lab = lab = case.make_lab()
        self.seed_host = lab.public_host("seed")
        self.hosts = {}   # kind -> [(host, public ip)]
        for kind in KINDS:
            for i in (1, 2):
                name = "{}{}".format(SHORT[kind], i)
                if kind == "public":
                    host = lab.public_host(name)
                    self.hosts.setdefault(kind, []).append((host, host.ip))
                    continue
                nat = lab.nat("nat-" + name, "carrier-grade" if kind == "double-nat" else kind)
                self.hosts.setdefault(kind, []).append((nat.host(name), nat.public_ip))
        self.behaviour = self.check_behaviour()
        self.impairment = impairment
        if impairment:
            lab.impair(**impairment)
        self.seed = None
        self.nodes = {}   # kind -> [Node, Node]

    # -- the lab itself ------------------------------------------------------------

    def check_behaviour(self):
        """Every host's NAT has the mapping and filtering of its kind (probe.py nat-test)."""
        reflectors = self.lab.start_reflectors()
        jobs = [(kind, host, ip) for kind, hosts in self.hosts.items() for host, ip in hosts]

        def test(job):
            kind, host, ip = job
            if kind == "udp-blocked":
                result = reflectors.nat_test(host, tries=2, wait=0.2)
                result["tcp"] = host.probe("tcp-connect", "--server", reflectors.primary)
            else:
                result = reflectors.nat_test(host)
            return result

        with ThreadPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(test, jobs))
        found = {}
        problems = []
        for (kind, host, ip), result in zip(jobs, results):
            found[host.name] = (kind, result["mapping"], result["filtering"])
            if (result["mapping"], result["filtering"]) != BEHAVIOUR[kind]:
                problems.append("{} ({}): mapping {}, filtering {}; expected {}".format(
                    host.name, kind, result["mapping"], result["filtering"], BEHAVIOUR[kind]))
            if kind == "udp-blocked":
                seen = result["tcp"].get("seen", "")
                if not seen.startswith(ip + ":"):
                    problems.append("{}: TCP through udp-blocked seen as {!r}, expected {}".format(
                        host.name, seen, ip))
            else:
                ips = {m.rsplit(":", 1)[0] for m in result["mapped"].values() if m}
                if ips != {ip}:
                    problems.append("{} ({}): seen from {}, expected {}".format(host.name, kind, ips, ip))
        self.case.assertEqual(problems, [], "the lab's NATs misbehave:\n" + "\n".join(problems))
        return found

    # -- nodes ---------------------------------------------------------------------

    def agent(self, host, *options, label):
        agent = Agent(host, "node", "--network", NETWORK, "--no-port-mapping", "--connect-timeout",
                      CONNECT_TIMEOUT, "--deadline", AGENT_DEADLINE, *options, label=label)
        self.case.addCleanup(agent.stop)
        return agent

    def start(self):
        """Start the seed, then every node; bootstrap each as soon as it is ready."""
        self.seed = self.agent(self.seed_host, "--accept-bootstrap", "--serve-rendezvous", "--serve-relay",
                               label="seed")
        seed_ready = self.seed.event("ready", timeout=30)
        self.seed_id = seed_ready["peer_id"]
        info = json.loads(seed_ready["info"])
        contacts = ["{}@{}".format(info["id"], a) for a in info["addrs"]
                    if a.split(":")[1] == self.seed_host.ip]
        self.case.assertTrue(contacts, "the seed has no address on {}: {}".format(self.seed_host.ip, info))
        options = [arg for c in contacts for arg in ("--contact", c)]
        for kind in KINDS:
            self.nodes[kind] = [Node(kind, host, self.agent(host, *options, label=host.name), ip)
                                for host, ip in self.hosts[kind]]
        everyone = [n for kind in KINDS for n in self.nodes[kind]]
        marks = {}
        for node in everyone:   # in start order; each bootstraps as soon as it is ready
            node.ready = node.agent.event("ready", timeout=60)
            marks[node.name] = node.agent.send(cmd="bootstrap")
        timeout = BOOTSTRAP_BOUND + 20
        for node in everyone:
            node.bootstrap = node.agent.event(("bootstrapped", "bootstrap_error"), timeout, marks[node.name])
        refused = [n for n in everyone if n.bootstrap["event"] != "bootstrapped"]
        marks = {n.name: n.agent.send(cmd="bootstrap", role="client") for n in refused}
        for node in refused:
            node.fallback = node.agent.event(("bootstrapped", "bootstrap_error"), timeout, marks[node.name])
        return everyone

    def describe(self):
        """Who is where: one line per host (the lab's own map is in its logdir's processes)."""
        lines = ["seed    public           {} (logs: {})".format(self.seed_host.ip, self.lab.logdir)]
        for kind in KINDS:
            for host, ip in self.hosts[kind]:
                where = "" if host.nat is None else "behind {}{}".format(
                    host.nat.name, " behind {}".format(host.nat.behind.name) if host.nat.behind else "")
                lines.append("{:<7} {:<16} {:<12} seen as {:<14} {}".format(host.name, kind, host.ip, ip, where))
        if self.lab.impairment is not None:
            lines.append("internet router: " + self.lab.impairment.describe().split(" on links")[0])
        return "\n".join(lines)

    def bootstrap_table(self):
        header = ("node", "kind", "as node (default)", "s", "as client", "s", "ready->bootstrapped s")
        rows = []
        for kind in KINDS:
            for n in self.nodes[kind]:
                first = n.bootstrap
                rows.append((n.name, kind,
                             "ok" if first["event"] == "bootstrapped" else "FAIL " + (
                                 "reachability" if "reachability" in text_of(first) else short_reason(first)),
                             "{:.2f}".format(first.get("seconds", 0)),
                             ("-" if n.fallback is None else
                              "ok" if n.fallback["event"] == "bootstrapped" else "FAIL " + short_reason(n.fallback)),
                             "-" if n.fallback is None else "{:.2f}".format(n.fallback.get("seconds", 0)),
                             "{:.2f}".format(n.bootstrap_after_ready)))
        return format_rows(header, rows)

    # -- one connect -----------------------------------------------------------------

    def in_band(self, a, b):
        """A connects to B by peer id; returns (A's result, None)."""
        result = a.agent.command(("connected", "connect_error"), CONNECT_TIMEOUT + 15, cmd="connect",
                                 peer=b.peer_id)
        return result, None

    def paste(self, a, b):
        """Both connect with each other's fresh info, commands sent back to back."""
        info_a = a.agent.command("info", 15, cmd="info")["info"]
        info_b = b.agent.command("info", 15, cmd="info")["info"]
        mark_a = a.agent.send(cmd="connect", info=info_b)
        mark_b = b.agent.send(cmd="connect", info=info_a)
        expect = ("connected", "connect_error")
        result_a = a.agent.event(expect, CONNECT_TIMEOUT + 15, mark_a)
        result_b = b.agent.event(expect, CONNECT_TIMEOUT + 15, mark_b)
        return result_a, result_b

    def part(self, a, b):
        """Both sides disconnect; wait until both have no connection to the other left."""
        marks = [(a, a.agent.send(cmd="disconnect", peer=b.peer_id)),
                 (b, b.agent.send(cmd="disconnect", peer=a.peer_id))]
        for node, mark in marks:
            node.agent.event("disconnected", 10, mark)
        marks = [(a, a.agent.send(cmd="wait_gone", peer=b.peer_id, timeout=15)),
                 (b, b.agent.send(cmd="wait_gone", peer=a.peer_id, timeout=15))]
        for node, mark in marks:
            gone = node.agent.event("gone", 20, mark)
            self.case.assertTrue(gone["gone"], "{} still connected to its peer 15 s after disconnect: {}".format(
                node.name, gone))

    def after(self, mode, a, b, ra, rb, marks):
        """A connected pair: a message each way, both sides' paths, and a move to a direct path if one is due.

        *marks*: each side's output mark from before the connect command. Returns the fields to add to the
        pair's record.
        """
        out = {}
        text = "{} {} x {}".format(mode, a.kind, b.kind)
        got = {}
        for sender, receiver, data in ((a, b, "ping " + text), (b, a, "pong " + text)):
            mark = receiver.agent.mark
            sender.agent.command(("sent", "send_error"), cmd="send", peer=receiver.peer_id, data=data)
            try:
                message = receiver.agent.event("new_message", 10, mark)
            except ProcessError:
                message = None
            got[sender is a and "a_to_b" or "b_to_a"] = message is not None and message.get("data") == data
        out["messages"] = got
        kind = ((ra or {}).get("path") or {}).get("kind")
        out["upgraded"] = None
        if category(a.kind, b.kind) != "relayed" and kind == "relayed":
            # a punch slower than the relay's delay: the connection must move to the direct path it opens
            start = ra["t"] - ra["seconds"]   # A's clock at the connect command
            try:
                event = a.agent.event("path_changed", max(1.0, start + DIRECT_BOUND + 2 - ra["t"]), marks[0])
            except ProcessError:
                event = None
            if event is not None:
                out["upgraded"] = round(event["t"] - start, 3)
        for side, node, other in (("a", a, b), ("b", b, a)):
            details = node.agent.command("path", 10, cmd="path", peer=other.peer_id)["details"]
            out[side + "_final_path"] = (details or {}).get("path")
            out[side + "_final_transport"] = (details or {}).get("transport")
        return out

    def run_matrix(self, mode):
        """Run every pair in *mode*; returns a list of result dicts."""
        connect = {"in-band": self.in_band, "paste": self.paste}[mode]
        results = []
        for a_kind, b_kind in pairs():
            a, b = self.nodes[a_kind][0], self.nodes[b_kind][1]
            started = time.monotonic()
            marks = (a.agent.mark, b.agent.mark)
            try:
                ra, rb = connect(a, b)
            except ProcessError as e:   # no answer at all: recorded like a failure
                ra, rb = {"event": "no_answer", "error": str(e)[:500], "error_type": "ProcessError"}, None
            record = entry(mode, a, b, ra, rb, time.monotonic() - started)
            if record["ok"]:
                record.update(self.after(mode, a, b, ra, rb, marks))
            results.append(record)
            self.part(a, b)
        return results


def entry(mode, a, b, ra, rb, wall):
    """One pair's record: A's result decides, and in ``paste`` mode B's too."""
    ok = ra.get("event") == "connected" and (rb is None or rb.get("event") == "connected")
    failed = None
    if ra.get("event") != "connected":
        failed = ra
    elif rb is not None and rb.get("event") != "connected":
        failed = rb
    seconds = [r["seconds"] for r in (ra, rb) if r is not None and "seconds" in r]
    return {
        "mode": mode, "a": a.kind, "b": b.kind, "a_host": a.name, "b_host": b.name,
        "category": category(a.kind, b.kind), "ok": ok,
        "seconds": max(seconds) if seconds else None, "wall": round(wall, 3),
        "path": ra.get("path") if ok else None,
        "b_path": rb.get("path") if ok and rb is not None else None,
        "transport": ra.get("transport") if ok else None,
        "address": ra.get("address") if ok else None,
        "failed_side": None if failed is None else ("a" if failed is ra else "b"),
        "error": None if failed is None else failed.get("error"),
        "error_type": None if failed is None else failed.get("error_type"),
        "reasons": None if failed is None else failed.get("reasons"),
        "api_missing": (ra.get("api_missing") or (rb or {}).get("api_missing")),
        "a_result": ra, "b_result": rb,
        "messages": None, "upgraded": None, "a_final_path": None, "b_final_path": None,
        "a_final_transport": None, "b_final_transport": None,
    }


def short_path(path):
    path = path or {}
    return PATH_SHORT.get(path.get("kind"), path.get("kind") or "?")


def cell(r):
    if r is None:
        return ""
    if r["ok"]:
        text = "{}/{} {:.2f}s".format(short_path(r["path"]), r["transport"] or "?", r["seconds"])
        if r["upgraded"] is not None:
            text += ">{}/{} {:.2f}s".format(short_path(r["a_final_path"]), r["a_final_transport"] or "?",
                                            r["upgraded"])
        return text
    side = "" if r["failed_side"] in (None, "a") else "(B)"
    return "FAIL{} {}".format(side, short_reason({k: r[k] for k in ("error", "reasons", "api_missing",
                                                                     "error_type")}))


def format_rows(header, rows):
    widths = [max(len(str(h)), *(len(str(row[i])) for row in rows)) for i, h in enumerate(header)]
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(out)


def matrix_table(results):
    by_pair = {(r["a"], r["b"]): r for r in results}
    rows = [[a] + [cell(by_pair.get((a, b))) for b in KINDS] for a in KINDS]
    return format_rows(["A \\ B"] + list(KINDS), rows)


def timing(results):
    times = [r["seconds"] for r in results if r["ok"] and r["seconds"] is not None]
    if not times:
        return None, None, 0
    return statistics.median(times), max(times), len(times)


def summary(results):
    median, worst, count = timing(results)
    relayed = [r for r in results if r["category"] == "relayed"]
    upgraded = [r["upgraded"] for r in results if r["upgraded"] is not None]
    lines = ["connected {}/{} pairs ({}/{} of them relayed, where only a relay can); time to connect: {}".format(
        count, len(results), sum(r["ok"] for r in relayed), len(relayed),
        "median {:.2f} s, max {:.2f} s".format(median, worst) if count else "none")]
    direct_times = [r["seconds"] for r in results if r["ok"] and r["category"] != "relayed" and r["upgraded"] is None]
    relay_times = [r["seconds"] for r in relayed if r["ok"]]
    for what, times in (("direct at once", direct_times), ("relayed", relay_times)):
        if times:
            lines.append("  {}: {} pairs, median {:.2f} s, max {:.2f} s".format(
                what, len(times), statistics.median(times), max(times)))
    if upgraded:
        lines.append("  started relayed, then direct: {} pairs, direct after {} s".format(
            len(upgraded), ", ".join("{:.2f}".format(u) for u in upgraded)))
    unsent = ["{} x {}".format(r["a"], r["b"]) for r in results if r["ok"] and not all((r["messages"] or {}).values())]
    if unsent:
        lines.append("  a message did not arrive: " + ", ".join(unsent))
    failures = {}
    for r in results:
        if not r["ok"]:
            text = ("B side: " if r["failed_side"] == "b" else "") + brief(r)
            failures.setdefault(text, []).append("{} x {}".format(r["a"], r["b"]))
    for text, names in failures.items():
        lines.append("  {}: {}".format("all {} failures".format(len(names)) if len(names) == len(results) - count
                                       and len(names) > 3 else ", ".join(names), text))
    return "\n".join(lines)


def path_table(results):
    """One line per pair: each side's path (kind, strategy, via) at connect and at the end, times."""
    header = ("mode", "A", "B", "A at connect", "A at the end", "B at the end", "transport", "connect s", "direct s")

    def describe(path):
        if not path:
            return "?"
        text = "{} ({})".format(path.get("kind"), path.get("strategy") or "-")
        return text + (" via " + path["via"][:8] if path.get("via") else "")

    rows = [(r["mode"], r["a"], r["b"], describe(r["path"]) if r["ok"] else "FAIL",
             describe(r["a_final_path"]) if r["ok"] else "-", describe(r["b_final_path"]) if r["ok"] else "-",
             r["a_final_transport"] or "-", "{:.2f}".format(r["seconds"]) if r["ok"] else "-",
             "{:.2f}".format(r["upgraded"]) if r["upgraded"] is not None else "-") for r in results]
    return format_rows(header, rows)


LEGEND = ("cell: A's path kind/transport and seconds from connect to connected (paste: the later side); "
          "then, for a pair that started relayed, '>' the path it moved to and seconds from connect to the move; "
          "dir=direct map=mapped ptcp=punched-tcp pudp=punched-udp in=incoming (B's dial won) RELAY=relayed "
          "?=no path reported; FAIL(B)=B's side failed")


def punching_problems(results, median_bound=None, max_bound=MAX_BOUND, relay_id=None):
    """What the results break of issues 12 and 13 (the library's part), each line with its issue."""
    problems = []
    missing = sorted({r["api_missing"] for r in results if r["api_missing"]})
    for api in missing:
        problems.append(ISSUE + "library API missing: " + api)
    connected = [r for r in results if r["ok"]]
    no_paths = bool(connected) and all(r["path"] is None for r in connected)
    if no_paths:
        problems.append(ISSUE + "library API missing: Service.peer_details(peer)['path'] "
                        "(no connection reported a path)")
    for r in results:
        pair = "{} {} x {}".format(r["mode"], r["a"], r["b"])
        if r["api_missing"]:
            continue
        relayed = r["category"] == "relayed"
        issue = RELAY_ISSUE if relayed else ISSUE
        if not r["ok"]:
            problems.append(issue + "{}: must connect, failed: {}".format(pair, brief(r)))
            continue
        if r["seconds"] is not None and r["seconds"] < 0.02:
            problems.append(ISSUE + "{}: connected at once ({:.3f} s): a connection of the pair's previous run "
                            "came back after both disconnected".format(pair, r["seconds"]))
        if not all((r["messages"] or {}).values()):
            problems.append(RELAY_ISSUE + "{}: a message did not arrive ({})".format(pair, r["messages"]))
        finals = (("A", r["a_final_path"]), ("B", r["b_final_path"]))
        if no_paths:
            continue
        if relayed:
            for side, path in finals:
                path = path or {}
                if path.get("kind") != "relayed" or path.get("strategy") != "relay" or (
                        relay_id is not None and path.get("via") != relay_id):
                    problems.append(RELAY_ISSUE + "{}: {}'s path should be relayed by the relay strategy via the "
                                    "seed {}, is {}".format(pair, side, relay_id, path or None))
            continue
        for side, path in finals:
            kind = (path or {}).get("kind")
            if path is None:
                problems.append(ISSUE + "{}: {}'s connection reports no path".format(pair, side))
            elif kind not in DIRECT:
                problems.append(ISSUE + "{}: {}'s path kind {!r} is not direct{}".format(
                    pair, side, kind, " (it connected relayed and did not move to a direct path within {} s)".format(
                        DIRECT_BOUND) if r["upgraded"] is None else ""))
        if r["upgraded"] is not None and r["upgraded"] >= DIRECT_BOUND:
            problems.append(ISSUE + "{}: direct only {:.2f} s after connect, bound {} s".format(
                pair, r["upgraded"], DIRECT_BOUND))
        if r["category"] == "tcp" and r["a_final_transport"] != "tcp":
            problems.append(ISSUE + "{}: a udp-blocked pair must connect over TCP, got {}".format(
                pair, r["a_final_transport"]))
    median, worst, count = timing(results)
    if count and median_bound is not None and median >= median_bound:
        problems.append(ISSUE + "median time to connect {:.2f} s, bound {} s".format(median, median_bound))
    if count and worst >= max_bound:
        slow = max((r for r in connected), key=lambda r: r["seconds"])
        problems.append(ISSUE + "worst time to connect {:.2f} s ({} x {}, {}), bound {} s".format(
            worst, slow["a"], slow["b"], slow["mode"], max_bound))
    return problems


def save(name, record):
    path = os.path.abspath(MATRIX_FILE)
    data = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                data = json.load(f)
        except ValueError:
            data = {}
    data[name] = record
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)


class PunchMatrixTests(LabTestCase):
    """The 28-pair matrix, in-band and paste, under two link conditions."""

    lab_tun = True
    timeout = 1800   # trial's limit; the matrix bounds each step itself

    def run_all(self, name, title, impairment, median_bound):
        started = time.monotonic()
        lab = PunchLab(self, impairment)
        built = time.monotonic() - started
        everyone = lab.start()
        up = time.monotonic() - started
        print("\n== hole punching matrix, {} ==\n{}".format(title, lab.describe()))
        print("\nbootstrap (seed {}, reachability test on):\n{}".format(lab.seed_host.ip, lab.bootstrap_table()))
        # The harness: every node is bootstrapped in time, one way or the other.
        late = ["{} ({}): {}".format(n.name, n.kind, text_of(n.fallback or n.bootstrap))
                for n in everyone if not n.bootstrapped or n.bootstrap_after_ready >= BOOTSTRAP_BOUND]
        self.assertEqual(late, [], "nodes not bootstrapped within {} s of ready".format(BOOTSTRAP_BOUND))

        record = {"title": title, "impairment": impairment, "behaviour": lab.behaviour,
                  "bootstrap": {n.name: {"kind": n.kind, "first": n.bootstrap, "fallback": n.fallback,
                                         "after_ready": n.bootstrap_after_ready} for n in everyone},
                  "modes": {}}
        all_results = []
        for mode in ("in-band", "paste"):
            mode_start = time.monotonic()
            results = lab.run_matrix(mode)
            all_results += results
            record["modes"][mode] = {"results": results, "seconds": round(time.monotonic() - mode_start, 1)}
            median, worst, count = timing(results)
            print("\n-- {}, mode {} ({:.0f} s) --\n{}\n{}\n{}\n\n{}".format(
                title, mode, time.monotonic() - mode_start, matrix_table(results), LEGEND, summary(results),
                path_table(results)))
        stats = lab.lab.unimpair()
        record["impairment_stats"] = stats
        record["seconds"] = {"build": round(built, 1), "up": round(up, 1),
                             "total": round(time.monotonic() - started, 1)}
        save(name, record)
        print("\nlab built in {:.1f} s, nodes bootstrapped at {:.1f} s, total {:.1f} s; impairment counters {}".format(
            built, up, time.monotonic() - started, stats))

        # The harness (holds today too): pairs with a public side connect when both paste
        # each other's info, and every failure says why.
        paste = [r for r in all_results if r["mode"] == "paste"]
        public = ["{} x {}: {}".format(r["a"], r["b"], brief(r)) for r in paste
                  if "public" in (r["a"], r["b"]) and not r["ok"]]
        self.assertEqual(public, [], "pairs with a public side must connect by pasted info")
        silent = [(r["mode"], r["a"], r["b"]) for r in all_results if not r["ok"] and not text_of(r).strip()]
        self.assertEqual(silent, [], "failures without a reason")
        if impairment and impairment.get("loss_pct"):
            self.assertGreater(stats["dropped"], 0, stats)

        # Hole punching (issue 12) and relays (issue 13): need the library.
        problems = punching_problems(all_results, median_bound, relay_id=lab.seed_id)
        if problems:
            self.fail("hole punching and relay requirements not met ({}):\n".format(title) + "\n".join(problems))

    def test_matrix_20ms(self):
        """Every pair of NAT kinds with 20 ms RTT links: connect, path kind, time."""
        self.run_all("rtt20", "20 ms RTT", dict(delay_ms=10, seed=1), MEDIAN_BOUND)

    def test_matrix_100ms_1pct_loss(self):
        """The same pairs connect with 100 ms RTT and 1 % loss (worst case 15 s)."""
        self.run_all("rtt100-loss1", "100 ms RTT, 1 % loss", dict(delay_ms=50, loss_pct=1, seed=1), None)


TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]
CLI = [sys.executable, "-m", "crust.node.cli"]


class ReadyNodes(LabTestCase):
    """Ready nodes (twistd crust node) in the lab, driven by the crust command: what the tests below share."""

    timeout = 180

    def setUp(self):
        super().setUp()
        self.root = tempfile.mkdtemp(prefix="crust-punch-cli-")
        self.addCleanup(shutil.rmtree, self.root, True)

    def node(self, host, name, config=None):
        data_dir = os.path.join(self.root, name)
        os.makedirs(data_dir, mode=0o700)
        if config is not None:
            with open(os.path.join(data_dir, "config.json"), "w") as f:
                json.dump(config, f)
        proc = host.spawn(TWISTD + ["-n", "--pidfile=", "crust", "node", "--data-dir", data_dir,
                                    "--no-port-mapping"], name="node-" + name)
        self.addCleanup(proc.stop)
        return proc, data_dir

    def crust(self, host, data_dir, *args, timeout=40):
        return host.run(CLI + ["--data-dir", data_dir] + [str(a) for a in args], timeout=timeout, check=False)

    def info(self, host, data_dir):
        result = self.crust(host, data_dir, "--json", "info", timeout=15)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def wait_bootstrapped(self, nodes, bound):
        """Poll ``crust --json info`` of every node until bootstrapped or *bound* s after its start.

        *nodes*: name -> (host, proc, data_dir, start). Returns name -> (info, seconds or None).
        """
        found = {}
        while len(found) < len(nodes):
            for name, (host, proc, data_dir, start) in nodes.items():
                if name in found:
                    continue
                if not proc.running():
                    self.fail("{} exited:\n{}".format(proc.name, proc.output[-3000:]))
                info = self.info(host, data_dir)
                elapsed = time.monotonic() - start
                if info is not None and info.get("bootstrapped_to"):
                    found[name] = (info, elapsed)
                elif elapsed > bound:
                    found[name] = (info, None)
            time.sleep(0.1)
        return found


class PunchNodeCliTests(ReadyNodes):
    """Two ready nodes behind a port-restricted and a symmetric NAT, by the crust command."""

    def test_connect_by_peer_id_and_send(self):
        lab = self.make_lab()
        seed_host = lab.public_host("seed")
        ann_host = lab.nat("nat-ann", "port-restricted").host("ann")
        bob_host = lab.nat("nat-bob", "symmetric").host("bob")

        seed, seed_dir = self.node(seed_host, "seed")   # default config: accepts bootstrap requests
        seed.wait_for_line(r"connection info \(give it", timeout=30)
        seed_info = self.info(seed_host, seed_dir)
        self.assertIsNotNone(seed_info, seed.output[-2000:])
        addresses = [a for a in seed_info["connection_info"]["addrs"] if a.startswith("tcp:" + seed_host.ip + ":")]
        self.assertTrue(addresses, seed_info)
        config = {"hard_coded_contacts": [{"peer_id": seed_info["peer_id"], "address": a} for a in addresses],
                  "enable_port_mapping": False}

        nodes = {}
        for name, host in (("ann", ann_host), ("bob", bob_host)):
            start = time.monotonic()
            proc, data_dir = self.node(host, name, config)
            nodes[name] = (host, proc, data_dir, start)
        for name, (host, proc, data_dir, start) in nodes.items():
            proc.wait_for_line(r"connection info \(give it", timeout=30)
        problems = []
        infos = {}
        for name, (info, seconds) in self.wait_bootstrapped(nodes, BOOTSTRAP_BOUND).items():
            host, proc, data_dir, start = nodes[name]
            print("\n{} ({}): bootstrapped {}, role {!r}, role_reason {!r}".format(
                name, host.nat.kind, "after {:.1f} s".format(seconds) if seconds is not None else "NOT within 10 s",
                (info or {}).get("role"), (info or {}).get("role_reason")))
            self.assertIsNotNone(info, "crust info failed on {}".format(name))
            infos[name] = info
            if seconds is None:
                refusals = [line for line in proc.lines if "bootstrap failed" in line]
                problems.append("{}{} behind a {} NAT did not bootstrap within {} s of start (the ready node "
                                "should join as a client when the seed's reachability test fails): {}".format(
                                    ISSUE, name, host.nat.kind, BOOTSTRAP_BOUND,
                                    refusals[-1].split("bootstrap failed: ", 1)[-1][:300] if refusals
                                    else "no refusal logged"))
                # so that the rest can still be checked: as a client, the way the ready node would
                client = self.crust(host, data_dir, "bootstrap", "--role", "client", timeout=30)
                self.assertEqual(client.returncode, 0, "{} cannot bootstrap even as a client: {}".format(
                    name, client.stderr))
                infos[name] = self.info(host, data_dir)
            else:
                self.assertEqual(info["bootstrapped_to"]["peer_id"], seed_info["peer_id"])
            if "role_reason" not in info:
                problems.append(ISSUE + "library API missing: 'role_reason' in crust info --json ({})".format(name))

        ann_dir, bob_dir = nodes["ann"][2], nodes["bob"][2]
        ann_id, bob_id = infos["ann"]["peer_id"], infos["bob"]["peer_id"]
        watch = bob_host.spawn(CLI + ["--data-dir", bob_dir, "--json", "watch", "--count", "1", "--events",
                                      "new_message", "--timeout", "60"], name="watch")
        self.addCleanup(watch.stop)
        watch.wait_for_line(r"watching new_message", timeout=15)

        start = time.monotonic()
        connected = self.crust(ann_host, ann_dir, "connect", bob_id, timeout=45)
        seconds = time.monotonic() - start
        print("crust connect {} (ann -> bob, port-restricted -> symmetric): exit {} after {:.2f} s\n{}{}".format(
            bob_id, connected.returncode, seconds, connected.stdout, connected.stderr))
        if connected.returncode == 2:
            problems.append(ISSUE + "crust connect PEER_ID is a usage error (exit 2): the command or the node "
                            "does not take a peer id: {}".format(connected.stderr.strip()[:300]))
        elif (connected.returncode, connected.stdout.strip()) != (0, bob_id):
            problems.append(ISSUE + "crust connect PEER_ID (port-restricted -> symmetric) failed, exit {}: {}".format(
                connected.returncode, connected.stderr[-1500:]))
        if problems:
            self.fail("\n".join(problems))
        peers = json.loads(self.crust(ann_host, ann_dir, "--json", "peers").stdout)["peers"]
        print("ann's peers: {}".format(json.dumps(peers)))

        sent = self.crust(ann_host, ann_dir, "send", bob_id, "hello through two NATs")
        self.assertEqual(sent.returncode, 0, sent.stderr)
        try:
            line = watch.wait_for_line(r'"event": ?"new_message"', timeout=15).string
        except Exception:
            print("bob's peers: {}".format(self.crust(bob_host, bob_dir, "--json", "peers").stdout))
            for name in ("ann", "bob"):
                print("--- {}'s log:\n{}".format(name, nodes[name][1].output[-6000:]))
            raise
        event = json.loads(line)
        self.assertEqual((event["peer_id"], event["text"]), (ann_id, "hello through two NATs"))
        self.assertEqual(watch.wait(15), 0, watch.output)


class SeedRestartTests(ReadyNodes):
    """Ready nodes behind NATs started before their seed, then through a restart of the seed."""

    def start_seed(self, host, data_dir):
        proc = host.spawn(TWISTD + ["-n", "--pidfile=", "crust", "node", "--data-dir", data_dir,
                                    "--no-port-mapping"], name="node-seed")
        self.addCleanup(proc.stop)
        proc.wait_for_line(r"connection info \(give it", timeout=30)
        return proc

    def wait_peers(self, nodes, want, bound):
        """Seconds until every node's ``crust info`` shows *want* (a predicate of the info); fail after *bound*."""
        start = time.monotonic()
        pending = dict(nodes)
        while pending:
            for name, (host, data_dir) in list(pending.items()):
                info = self.info(host, data_dir)
                if info is not None and want(info):
                    del pending[name]
            if time.monotonic() - start > bound:
                for name in pending:
                    print("--- {}'s log:\n{}".format(name, self.procs[name].output[-5000:]))
                self.fail("not within {} s: {}".format(bound, {name: self.info(host, data_dir)
                                                            for name, (host, data_dir) in pending.items()}))
            time.sleep(0.1)
        return time.monotonic() - start

    def test_nodes_wait_for_their_seed_and_come_back_after_its_restart(self):
        lab = self.make_lab()
        seed_host = lab.public_host("seed")
        ann_host = lab.nat("nat-ann", "port-restricted").host("ann")
        bob_host = lab.nat("nat-bob", "symmetric").host("bob")
        seed_dir = os.path.join(self.root, "seed")
        os.makedirs(seed_dir, mode=0o700)
        with open(os.path.join(seed_dir, "config.json"), "w") as f:
            json.dump({"listen_port": 5483, "udp_listen_port": 5483, "enable_port_mapping": False}, f)

        # the seed's identity and address, then the seed goes away before anyone starts
        seed = self.start_seed(seed_host, seed_dir)
        seed_info = self.info(seed_host, seed_dir)
        seed.stop()
        config = {"hard_coded_contacts": [{"peer_id": seed_info["peer_id"], "address": "tcp:{}:5483".format(
            seed_host.ip)}], "enable_port_mapping": False}
        nodes, self.procs = {}, {}
        for name, host in (("ann", ann_host), ("bob", bob_host)):
            proc, data_dir = self.node(host, name, config)
            proc.wait_for_line(r"connection info \(give it", timeout=30)
            nodes[name] = (host, data_dir)
            self.procs[name] = proc
        seconds = self.wait_peers(nodes, lambda info: (info.get("rebootstrap") or {}).get("failures", 0) >= 1, 20)
        print("\nno seed: both nodes failed a bootstrap within {:.1f} s and wait to try again".format(seconds))

        seed = self.start_seed(seed_host, seed_dir)
        up = self.wait_peers(nodes, lambda info: info.get("peers", 0) >= 1 and info.get("bootstrapped_to"), 20)
        print("seed up: both bootstrapped {:.1f} s later".format(up))

        seed.stop()  # a restart: the nodes lose their only peer
        self.wait_peers(nodes, lambda info: info.get("peers") == 0, 15)
        seed = self.start_seed(seed_host, seed_dir)
        again = self.wait_peers(nodes, lambda info: info.get("peers", 0) >= 1
                                and (info.get("rebootstrap") or {}).get("state") == "held", 20)
        print("seed restarted: both back {:.1f} s later".format(again))

        # and the seed serves as their rendezvous again: connect by peer id through it
        bob_id = self.info(bob_host, nodes["bob"][1])["peer_id"]
        connected = self.crust(ann_host, nodes["ann"][1], "connect", bob_id, timeout=45)
        self.assertEqual((connected.returncode, connected.stdout.strip()), (0, bob_id), connected.stderr[-1500:])
        print("ann -> bob by peer id after the restart: {}".format(connected.stdout.strip()))
