"""
Lab: two nodes behind the same NAT, connecting by peer id through a public seed.

The hole-punching matrix puts every node behind a NAT of its own.  Here the
two share one, in the ways home and carrier networks share them:

- one home NAT, an ordinary LAN: they reach each other at their LAN
  addresses (host candidates), directly;
- one home NAT whose LAN isolates its clients (Wi-Fi "client isolation":
  the bridge ports are isolated), with hairpinning: they reach each other
  through the NAT's public address, directly;
- the same without hairpinning: no direct path exists, so they connect
  relayed through the seed;
- two home NATs behind one carrier NAT (CGN), with and without hairpinning
  at the carrier NAT: directly through the carrier NAT's public address, or
  relayed.

Root only, like the rest of the lab (tests/lab/natlab).
"""

import json
import sys

from tests.lab.natlab import LabTestCase
from tests.lab.natlab.agents import Agent

DEADLINE = 120


def reaches(a, b):
    """Whether host C{a} gets any answer from C{b}'s LAN address: a TCP connect to a closed port is refused."""
    code = ("import socket\n"
            "try:\n    socket.create_connection(({!r}, 9), timeout=1)\n"
            "except ConnectionRefusedError:\n    raise SystemExit(0)\n"
            "except OSError:\n    raise SystemExit(1)\n").format(b.addresses[0])
    return a.run([sys.executable, "-c", code], check=False, timeout=10).returncode == 0


class SharedNatTests(LabTestCase):
    timeout = 180

    def test_two_nodes_behind_one_nat(self):
        lab = self.make_lab()
        seed_host = lab.public_host("seed")
        seed = Agent(seed_host, "node", "--deadline", DEADLINE, "--accept-bootstrap", "--no-port-mapping",
                     "--serve-rendezvous", "--serve-relay", label="seed")
        self.addCleanup(seed.stop)
        info = json.loads(seed.event("ready", timeout=15)["info"])
        contacts = [x for a in info["addrs"] if seed_host.ip in a for x in ("--contact", "{}@{}".format(info["id"], a))]

        def isolate(nat):
            """Client isolation on the NAT's LAN: its hosts reach the router, not each other."""
            ports = nat.run(["ip", "-o", "link", "show", "master", "lan"]).stdout.splitlines()
            for line in ports:
                nat.run(["bridge", "link", "set", "dev", line.split(":")[1].strip().split("@")[0],
                         "isolated", "on"])

        plain = lab.nat("home-plain", "port-restricted")
        isolated_hp = lab.nat("home-iso-hp", "port-restricted", hairpin=True)
        isolated = lab.nat("home-iso", "port-restricted")
        cgn_hp = lab.nat("cgn-hp", "port-restricted", carrier=True, hairpin=True)
        cgn = lab.nat("cgn", "port-restricted", carrier=True)
        pairs = {  # name -> (host A, host B, public address they share, relayed expected)
            "one NAT, plain LAN": (plain.host("p1"), plain.host("p2"), plain.public_ip, False),
            "one NAT, isolated clients, hairpin": (isolated_hp.host("h1"), isolated_hp.host("h2"),
                                                   isolated_hp.public_ip, False),
            "one NAT, isolated clients, no hairpin": (isolated.host("i1"), isolated.host("i2"),
                                                      isolated.public_ip, True),
            "one carrier NAT, hairpin": (lab.nat("cg1", "port-restricted", behind=cgn_hp).host("c1"),
                                         lab.nat("cg2", "port-restricted", behind=cgn_hp).host("c2"),
                                         cgn_hp.public_ip, False),
            "one carrier NAT, no hairpin": (lab.nat("cn1", "port-restricted", behind=cgn).host("n1"),
                                            lab.nat("cn2", "port-restricted", behind=cgn).host("n2"),
                                            cgn.public_ip, True),
        }
        for nat in (isolated_hp, isolated):
            isolate(nat)
        for name, (a, b, _, _) in pairs.items():
            if "carrier" not in name:
                self.assertEqual(reaches(a, b), "isolated" not in name,
                                 "{}: A {} B's LAN address".format(name, "reaches" if reaches(a, b) else "misses"))

        agents = {}
        for name, (a, b, _, _) in pairs.items():
            for host in (a, b):
                agent = Agent(host, "node", "--deadline", DEADLINE, "--no-port-mapping", "--connect-timeout", 20,
                              *contacts, label=host.name)
                self.addCleanup(agent.stop)
                agents[host.name] = agent
        ready = {name: agent.event("ready", timeout=20) for name, agent in agents.items()}
        for name, agent in agents.items():
            result = agent.command(("bootstrapped", "bootstrap_error"), timeout=30, cmd="bootstrap")
            self.assertEqual(result["event"], "bootstrapped", "{} did not bootstrap: {}".format(name, result))

        problems = []
        for name, (a, b, public_ip, relayed) in pairs.items():
            result = agents[a.name].command(("connected", "connect_error"), timeout=40, cmd="connect",
                                            peer=ready[b.name]["peer_id"])
            if result["event"] != "connected":
                problems.append("{}: not connected: {}".format(name, result.get("error")))
                continue
            path = result.get("path") or {}
            address = result.get("address") or ""
            print("{}: {} {} in {} s".format(name, path.get("kind"), address, path.get("elapsed")))
            if relayed:
                if path.get("kind") != "relayed":
                    problems.append("{}: expected relayed (no direct path exists), got {}".format(name, path))
            elif path.get("kind") == "relayed":
                problems.append("{}: relayed, though a direct path exists".format(name))
            elif "isolated" in name or "carrier" in name:
                if public_ip not in address:
                    problems.append("{}: expected the shared public address {}, got {}".format(
                        name, public_ip, address))
            elif b.addresses[0] not in address:
                problems.append("{}: expected B's LAN address {}, got {}".format(name, b.addresses[0], address))
            sent = agents[a.name].command(("sent", "send_error"), cmd="send", peer=ready[b.name]["peer_id"],
                                          data="over " + name, priority=0)
            self.assertEqual(sent["event"], "sent", sent)
            message = agents[b.name].event("new_message", timeout=10)
            self.assertEqual(message["data"], "over " + name)
        self.assertEqual(problems, [], "\n".join(problems))
