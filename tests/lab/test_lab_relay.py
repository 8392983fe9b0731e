"""Relayed connections (issue 13) in the NAT lab: the move to a direct path, and a circuit's byte limit.

Each test builds a small lab: a public seed node (``--accept-bootstrap
--serve-rendezvous --serve-relay``, as the ready node) and two nodes behind
NATs of their own, both bootstrapped to the seed, links with 20 ms RTT.
The matrix of every pair of NAT kinds, relayed pairs included, is
``tests/lab/test_lab_punch.py``; TURN is ``tests/lab/test_lab_turn.py``.

- ``RelayUpgradeTests``: two port-restricted NATs, whose direct path is
  blocked at the internet router (``lab.block``: everything between the two
  NATs' public addresses is dropped; each still reaches the seed). A
  connects to B by peer id: relayed through the seed. Both stream numbered
  messages at priorities 0 to 3 (200 a second each way); the block is
  lifted; the connection must move to a direct path (``path_changed`` on
  both sides) within one retry interval of the background re-punch (the
  nodes try every 1 s, then 2 s: ``--upgrade-interval 1
  --upgrade-interval-max 2``) plus the punch itself, and every priority 0
  and 1 message must arrive exactly once, in order, each way. Then the
  block comes back: the direct path dies (heartbeats every 1 s, dead after
  3 s of silence) and the connection moves back onto the relayed circuit,
  which waited as a standby; what arrives must still be in order without
  duplicates, and messages sent after the move must arrive. What was lost
  in flight on the dead path is counted and printed: crust has no
  retransmission across paths, so priority 0/1 messages written to the
  direct connection in its last seconds are lost.
- ``RelayLimitTests``: two symmetric NATs (only a relay joins them), the
  seed's circuits limited to 256 KiB each way (``--relay-limit
  bytes_per_circuit=262144``). A sends 300 KB to B: the circuit ends with
  ``byte-limit`` at both ends (``relay_circuit_closed`` with that reason at
  A and B, and the connection's ``lost_peer`` reason names it), the seed
  counts one circuit closed by a limit, both stay connected to the seed, and
  a new connect gets a new circuit.

Root only (network namespaces, nftables, ``/dev/net/tun`` for the delay);
see doc/natlab.md, "Relays".
"""

import json
import time

from tests.lab.natlab import LabTestCase, ProcessError
from tests.lab.natlab.agents import Agent

NETWORK = "crust-relay-lab"
UPGRADE_INTERVAL = 1.0      # the nodes' first background re-punch, then doubling ...
UPGRADE_INTERVAL_MAX = 2.0  # ... up to this
HEARTBEAT = 1.0
INACTIVITY = 3.0
STREAM_INTERVAL = 0.005     # one message every 5 ms each way, priorities 0..3 in turn
PUNCH_BOUND = 3.0           # seconds a punch takes once the path is open (the checks' backoff is 1 s at most)
LIMIT = 256 * 1024


class RelayLab:
    """A seed that relays and two NATed nodes bootstrapped to it."""

    def __init__(self, case, kinds, seed_options=(), node_options=()):
        self.case = case
        self.lab = lab = case.make_lab()
        self.seed_host = lab.public_host("seed")
        self.nats = [lab.nat("nat-" + name, kind) for name, kind in zip(("a", "b"), kinds)]
        self.hosts = [nat.host(name) for nat, name in zip(self.nats, ("alice", "bob"))]
        lab.impair(delay_ms=10, seed=1)
        self.seed = self.agent(self.seed_host, "seed", "--accept-bootstrap", "--serve-rendezvous", "--serve-relay",
                               *seed_options)
        ready = self.seed.event("ready", timeout=30)
        self.seed_id = ready["peer_id"]
        info = json.loads(ready["info"])
        contacts = ["{}@{}".format(info["id"], a) for a in info["addrs"] if a.split(":")[1] == self.seed_host.ip]
        options = [arg for c in contacts for arg in ("--contact", c)] + list(node_options)
        self.a, self.b = (self.agent(host, host.name, *options) for host in self.hosts)
        self.ids = {}
        for node in (self.a, self.b):
            self.ids[node] = node.event("ready", timeout=30)["peer_id"]
        for node in (self.a, self.b):
            result = node.command(("bootstrapped", "bootstrap_error"), 30, cmd="bootstrap")
            if result["event"] != "bootstrapped":
                result = node.command(("bootstrapped", "bootstrap_error"), 30, cmd="bootstrap", role="client")
            case.assertEqual(result["event"], "bootstrapped", result)

    def agent(self, host, label, *options):
        agent = Agent(host, "node", "--network", NETWORK, "--no-port-mapping", "--connect-timeout", 18,
                      "--deadline", 300, *options, label=label)
        self.case.addCleanup(agent.stop)
        return agent

    def block(self):
        self.lab.block(self.nats[0].public_ip, self.nats[1].public_ip)

    def connect(self):
        """A connects to B by peer id; returns A's ``connected`` event once B has the connection too."""
        mark = self.b.mark
        result = self.a.command(("connected", "connect_error"), 35, cmd="connect", peer=self.ids[self.b])
        self.case.assertEqual(result["event"], "connected", result)
        self.b.event("connect_success", 10, mark)
        return result

    def path(self, node):
        other = self.b if node is self.a else self.a
        return (node.command("path", cmd="path", peer=self.ids[other])["details"] or {}).get("path")

    def clock(self, node):
        """The agent's own clock now (its events' ``t``), read through a round trip."""
        return node.command("path", cmd="path", peer=self.ids[node])["t"]


def events_named(agent, name, start):
    return [json.loads(line) for line in agent.proc.lines[start:] if line.startswith('{"event": "%s"' % name)]


class RelayUpgradeTests(LabTestCase):
    lab_tun = True
    timeout = 240

    def stream(self, lab, tag):
        for node, other in ((lab.a, lab.b), (lab.b, lab.a)):
            node.command("streaming", cmd="stream", peer=lab.ids[other], tag=tag, interval=STREAM_INTERVAL)

    def stop_and_collect(self, lab, tag):
        """Stop both streams, wait until what was sent has arrived (or 10 s); returns {direction: (sent, got)}."""
        sent = {}
        for node, name in ((lab.a, "a_to_b"), (lab.b, "b_to_a")):
            stopped = node.command("stream_stopped", cmd="stream_stop")
            self.assertEqual(stopped["tag"], tag)
            sent[name] = {int(p): n for p, n in stopped["sent"].items()}
        deadline = time.monotonic() + 10
        while True:
            got = {}
            for receiver, name in ((lab.b, "a_to_b"), (lab.a, "b_to_a")):
                report = receiver.command("stream_report", cmd="stream_report")["received"].get(tag, {})
                got[name] = {int(p): numbers for p, numbers in report.items()}
            complete = all(len(got[d].get(p, [])) >= n for d in sent for p, n in sent[d].items())
            if complete or time.monotonic() > deadline:
                return {d: (sent[d], got[d]) for d in sent}
            time.sleep(0.2)

    def test_relayed_then_direct_then_back(self):
        lab = RelayLab(self, ("port-restricted", "port-restricted"), node_options=(
            "--upgrade-interval", UPGRADE_INTERVAL, "--upgrade-interval-max", UPGRADE_INTERVAL_MAX,
            "--heartbeat", HEARTBEAT, "--inactivity", INACTIVITY))
        a, b = lab.a, lab.b
        lab.block()
        connected = lab.connect()
        path = connected["path"]
        self.assertEqual((path["kind"], path["strategy"], path["via"]), ("relayed", "relay", lab.seed_id), connected)
        self.assertEqual(lab.path(b)["kind"], "relayed")

        # relayed, streaming, while the upgrader's punches fail
        self.stream(lab, "up")
        time.sleep(3.0)
        self.assertEqual(lab.path(a)["kind"], "relayed")
        marks = (a.mark, b.mark)
        lifted_at = {a: lab.clock(a), b: lab.clock(b)}
        dropped = lab.lab.unblock()
        self.assertGreater(dropped, 0, "the block dropped nothing: the direct tries never ran")
        bound = UPGRADE_INTERVAL_MAX + PUNCH_BOUND
        moved = {}
        for node, mark in zip((a, b), marks):
            try:
                event = node.event("path_changed", bound + 5, mark)
            except ProcessError:
                self.fail("no path_changed on {} within {} s of lifting the block; path {}".format(
                    node.label, bound + 5, lab.path(node)))
            moved[node] = event["t"] - lifted_at[node]
        direct = {node: lab.path(node) for node in (a, b)}
        for node, path in direct.items():
            self.assertIn(path["kind"], ("punched-udp", "punched-tcp", "direct", "incoming"), (node, path))
        time.sleep(2.0)   # streaming on the direct path
        up = self.stop_and_collect(lab, "up")

        # the direct path dies: back onto the circuit, which waited as a standby
        self.stream(lab, "down")
        time.sleep(1.0)
        marks = (a.mark, b.mark)
        blocked_at = {a: lab.clock(a), b: lab.clock(b)}
        lab.block()
        back = {}
        for node, mark in zip((a, b), marks):
            try:
                event = node.event("path_changed", INACTIVITY + 10, mark)
            except ProcessError:
                self.fail("no path_changed on {} within {} s of the block; path {}".format(
                    node.label, INACTIVITY + 10, lab.path(node)))
            back[node] = event["t"] - blocked_at[node]
        relayed_again = {node: lab.path(node) for node in (a, b)}
        time.sleep(2.0)   # streaming on the relay again
        down = self.stop_and_collect(lab, "down")
        lost_peer = events_named(a, "lost_peer", 0) + events_named(b, "lost_peer", 0)
        closed = events_named(a, "relay_circuit_closed", 0) + events_named(b, "relay_circuit_closed", 0)

        def check(result):
            """Per direction and priority: sent, received, lost, duplicated, out of order, exact (once, in order)."""
            out = {}
            for direction, (sent, got) in result.items():
                for priority, count in sorted(sent.items()):
                    numbers = got.get(priority, [])
                    out[(direction, priority)] = {
                        "sent": count, "received": len(numbers), "lost": len(set(range(count)) - set(numbers)),
                        "duplicated": len(numbers) - len(set(numbers)),
                        "out_of_order": sum(1 for x, y in zip(numbers, numbers[1:]) if y <= x),
                        "exact": numbers == list(range(count)),
                        "last_lost": max(set(range(count)) - set(numbers), default=None)}
            return out

        up_check, down_check = check(up), check(down)
        print("\nrelayed (via the seed) -> direct -> relayed, port-restricted x port-restricted, 20 ms RTT:")
        print("  connected relayed in {:.2f} s; block lifted after 3 s of streaming: direct after {:.2f} s (A), "
              "{:.2f} s (B), paths A {}, B {}".format(connected["seconds"], moved[a], moved[b], direct[a],
                                                      direct[b]))
        print("  block again: back on the relay after {:.2f} s (A), {:.2f} s (B), paths A {}, B {}".format(
            back[a], back[b], relayed_again[a], relayed_again[b]))
        for label, result in (("up (relayed -> direct)", up_check), ("down (direct -> relayed)", down_check)):
            print("  stream {}:".format(label))
            for (direction, priority), c in sorted(result.items()):
                print("    {} p{}: sent {sent}, received {received}, lost {lost}, duplicated {duplicated}, "
                      "out of order {out_of_order}".format(direction, priority, **c))
        dropped = events_named(a, "message_dropped", 0) + events_named(b, "message_dropped", 0)
        print("  lost_peer events: {}; relay_circuit_closed events: {}; message_dropped events: {}".format(
            len(lost_peer), len(closed), [e["args"][1:] for e in dropped]))

        # the move to direct: within one retry interval (and the punch), nothing lost, repeated or reordered
        for node in (a, b):
            self.assertLess(moved[node], bound, "direct only {:.2f} s after the block was lifted".format(moved[node]))
        for (direction, priority), c in up_check.items():
            if priority <= 1:
                self.assertTrue(c["exact"], "priority {} {} across the move to direct: {}".format(
                    priority, direction, c))
            self.assertEqual((c["duplicated"], c["out_of_order"]), (0, 0), (direction, priority, c))
            self.assertGreater(c["sent"], 100, c)
        # the move back: relayed again, the same connection, what arrives is in order and not repeated,
        # and what was sent after the move arrives
        for node in (a, b):
            self.assertEqual(relayed_again[node]["kind"], "relayed", relayed_again[node])
            self.assertLess(back[node], INACTIVITY + 5)
        self.assertEqual(lost_peer, [])
        self.assertEqual(closed, [])
        for (direction, priority), c in down_check.items():
            self.assertEqual((c["duplicated"], c["out_of_order"]), (0, 0), (direction, priority, c))
            if priority <= 1:
                self.assertLess(c["last_lost"] if c["last_lost"] is not None else -1, c["sent"] - 50,
                                "messages sent after the move back were lost: {}".format(c))


class RelayLimitTests(LabTestCase):
    lab_tun = True
    timeout = 120

    def test_byte_limit_ends_the_circuit_at_both_ends(self):
        lab = RelayLab(self, ("symmetric", "symmetric"),
                       seed_options=("--relay-limit", "bytes_per_circuit={}".format(LIMIT)))
        a, b = lab.a, lab.b
        connected = lab.connect()
        self.assertEqual(connected["path"]["kind"], "relayed", connected)
        marks = (a.mark, b.mark)
        started = time.monotonic()
        a.command("sent", cmd="send_blob", peer=lab.ids[b], size=300_000, seed=1)
        ends = {}
        for node, other, mark in ((a, b, marks[0]), (b, a, marks[1])):
            closed = node.event("relay_circuit_closed", 20, mark)
            lost = node.event("lost_peer", 20, mark)
            ends[node] = (closed, lost, time.monotonic() - started)
            self.assertEqual(closed["args"], [lab.ids[other], lab.seed_id, "byte-limit"], closed)
            self.assertEqual(lost["args"][0], lab.ids[other])
            self.assertIn("byte-limit", lost["args"][1])
        self.assertEqual(events_named(b, "new_message", marks[1]), [])   # the 300 KB never arrived (cut short)
        stats = lab.seed.command("relay", cmd="relay")["stats"]
        self.assertEqual((stats["circuits"], stats["limit_closed"]), (0, 1), stats)
        for node in (a, b):
            peers = [p["peer_id"] for p in node.command("peers", cmd="peers")["peers"]]
            self.assertEqual(peers, [lab.seed_id], "{} should still be connected to the seed".format(node.label))
        again = lab.connect()
        self.assertEqual(again["path"]["kind"], "relayed", again)
        print("\nbyte limit of {} bytes per circuit: 300 KB sent A -> B; circuit closed (byte-limit) at A after "
              "{:.2f} s, at B after {:.2f} s; A's lost_peer: {!r}; seed: {}; a new connect relayed in {:.2f} s".format(
                  LIMIT, ends[a][2], ends[b][2], ends[a][1]["args"][1], stats, again["seconds"]))
