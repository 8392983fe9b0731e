"""
``netcheck`` of a real crust node behind a real NAT: the external addresses
(TCP from a crust peer's echo, UDP from STUN and the encrypted echo), the NAT
type, port mapping, and how long it takes.
"""

import json

from tests.lab.natlab import LabTestCase
from tests.lab.natlab.agents import Agent
from tests.lab.natlab.skip import SERVER_TOOLS


class NetcheckTests(LabTestCase):
    lab_tools = SERVER_TOOLS

    def node(self, host, *options, label="node"):
        agent = Agent(host, "node", "--deadline", 60, *options, label=label)
        self.addCleanup(agent.stop)
        return agent

    def test_netcheck_behind_a_port_restricted_nat(self):
        lab = self.make_lab()
        stun = lab.start_stun()
        home = lab.nat("home", "port-restricted", upnp=True)
        seed_host = lab.public_host("seed")
        seed = self.node(seed_host, "--no-port-mapping", label="seed")
        seed_ready = seed.event("ready", timeout=15)
        seed_info = json.loads(seed_ready["info"])
        contacts = [f"{seed_info['id']}@{a}" for a in seed_info["addrs"] if seed_host.ip in a]
        stun_args = ["--stun", "udp:{}:{}".format(*stun.address), "--stun", "udp:{}:{}".format(*stun.alt_address)]
        contact_args = [arg for c in contacts for arg in ("--contact", c)]
        # alice asks the router for mappings; bob (same NAT) does not
        alice = self.node(home.host("alice"), "--wait-mapping", 10, *stun_args, *contact_args, label="alice")
        bob = self.node(home.host("bob"), "--no-port-mapping", *stun_args, *contact_args, label="bob")
        alice.event("ready", timeout=20)
        bob.event("ready", timeout=20)
        results = {}
        for name, agent in (("alice", alice), ("bob", bob)):
            result = agent.command("netcheck", timeout=30, cmd="netcheck")
            results[name] = result
            print(f"\ncrust netcheck ({name}) behind a port-restricted NAT took {result['seconds']:.2f} s\n"
                  f"{result['text']}")
        for name, result in results.items():
            report = result["report"]
            udp_port = report["probes"][1]["observed"].rsplit(":", 1)[1]
            self.assertEqual(report["external"]["udp"], [f"udp:{home.public_ip}:{udp_port}"])
            self.assertTrue(report["external"]["tcp"][0].startswith(f"tcp:{home.public_ip}:"))
            self.assertTrue(report["nat"]["behind_nat"])
            # what the NAT does (the filtering tests run from a fresh, unmapped socket)
            self.assertEqual(report["nat"]["mapping"], "endpoint-independent")
            self.assertEqual(report["nat"]["filtering"], "address-and-port-dependent")
            self.assertEqual(report["nat"]["nat_type"], "port-restricted cone")
            self.assertTrue(all(a.startswith("tcp:") for a in report["local"]["tcp"]))
            self.assertLess(result["seconds"], 15)
        # alice asked for mappings and the router granted them; bob did not ask
        self.assertEqual(results["alice"]["report"]["port_mapping"]["answered"], ["pcp"])
        self.assertEqual({m["transport"] for m in results["alice"]["report"]["port_mapping"]["mappings"]},
                         {"tcp", "udp"})
        self.assertFalse(results["bob"]["report"]["port_mapping"].get("mappings"))
