"""crust's port mapping against miniupnpd in the NAT lab, and a connection through it.

For each of PCP, NAT-PMP and UPnP IGD separately, a ``PortMapper`` using only
that method (agent ``portmap.py`` in a LAN host) maps a TCP and a UDP port;
the test checks the mapping in miniupnpd's own listing (``upnpc -l``) and in
the router's nftables, sees the renewal at half the lease reach the router
(the listed lease goes back up), and sees both mappings disappear on
``stopService()``.

Leases are 8 s so the renewal comes after ~4 s. miniupnpd honours that for
NAT-PMP and UPnP; for PCP it raises any lifetime below its ``min_lifetime``
(default 120 s: the PCP test checks that crust takes the 120 s granted), so
the PCP test then restarts the lab's miniupnpd with ``min_lifetime=4`` (a
real renewal, not a simulated one). Each method's figures are printed and
written to ``lab-portmap-METHOD.json`` in trial's directory.

End to end: a crust ``Service`` behind the NAT (port mapping on, as by
default) publishes its connection info with the mapped address; a node on
the simulated internet connects using only that address, over crust's TLS
channel, and a message goes each way. Root only; skipped elsewhere.
"""

import json

from tests.lab.natlab import LabTestCase
from tests.lab.natlab.agents import Agent
from tests.lab.natlab.servers import UPNP_HTTP_PORT, _wait_listening
from tests.lab.natlab.skip import SERVER_TOOLS

LEASE = 8
TCP_PORT = 4000
UDP_PORT = 4001


def restart_miniupnpd(lab, nat, **options):
    """Restart *nat*'s miniupnpd with extra config lines ``name=value``.

    The lab has no option for miniupnpd settings; this appends them to the
    config file the lab wrote and starts the daemon again the same way.
    """
    upnp = nat.upnp
    argv = upnp.proc.argv[upnp.proc.argv.index("miniupnpd"):]  # without "ip netns exec NS"
    upnp.proc.stop()
    with open(upnp.conf_path, "a") as f:
        for name, value in options.items():
            f.write("{}={}\n".format(name, value))
    upnp.proc = lab.spawn(nat, argv, name="miniupnpd-restarted")
    _wait_listening(nat, [(nat.lan_ip, UPNP_HTTP_PORT)], "t", timeout=20, proc=upnp.proc)


class PortMappingTests(LabTestCase):
    """Map, renew and delete with each method on its own."""

    lab_tools = SERVER_TOOLS

    def setUp(self):
        super().setUp()
        self.lab = self.make_lab()
        self.home = self.lab.nat("home", "port-restricted", upnp=True)
        self.alice = self.home.host("alice")

    def mapper(self, method):
        """Start the portmap agent with *method* only; return it after its first round."""
        self.assertTrue(self.home.upnp.forwarding, self.home.upnp.proc.output)
        agent = Agent(self.alice, "portmap", "--method", method, "--gateway", self.home.gateway_ip,
                      "--ssdp", "{}:1900".format(self.home.gateway_ip),
                      "--tcp-port", TCP_PORT, "--udp-port", UDP_PORT, "--lifetime", LEASE,
                      "--min-renew-delay", 1, "--deadline", 40, label="portmap-" + method)
        self.addCleanup(agent.stop)
        agent.event("round", timeout=15)
        return agent

    def listed(self):
        """miniupnpd's mappings by ``upnpc -l``: {(proto, internal port): entry}."""
        return {(m["proto"], m["internal_port"]): m for m in self.home.upnp_list(self.alice)}

    def dnats(self):
        """The router's DNAT rules: {(proto, internal port): entry}."""
        return {(m["proto"], m["internal_port"]): m for m in self.home.port_mappings()}

    def check_map_renew_delete(self, method):
        agent = self.mapper(method)
        public_ip = self.home.public_ip
        wanted = [("tcp", TCP_PORT), ("udp", UDP_PORT)]

        # -- granted, as asked, for both ports
        granted = {(e["transport"], e["port"]): e for e in agent.events("granted")}
        self.assertEqual(sorted(granted), wanted, agent.proc.output)
        round_ = agent.events("round")[0]
        self.assertEqual(sorted((m["transport"], m["internal_port"], m["method"])
                                for m in round_["mappings"]),
                         [(t, p, method) for t, p in wanted], round_)
        external_ports = {}
        for key, grant in granted.items():
            transport, ip, port = grant["external"].split(":")
            self.assertEqual((transport, ip), (key[0], public_ip), grant)
            self.assertEqual(grant["granted_lifetime"], LEASE, grant)
            self.assertFalse(grant["renewal"], grant)
            external_ports[key] = int(port)

        # -- visible on the router: miniupnpd's listing and the nftables DNATs
        listed, dnats = self.listed(), self.dnats()
        for key in wanted:
            self.assertIn(key, listed, listed)
            self.assertEqual((listed[key]["internal_ip"], listed[key]["external_port"]),
                             (self.alice.ip, external_ports[key]), listed[key])
            self.assertIn(key, dnats, dnats)
            self.assertEqual((dnats[key]["internal_ip"], dnats[key]["external_port"]),
                             (self.alice.ip, external_ports[key]), dnats[key])

        # -- renewed at half the lease, and the router extended the lease
        first = {key: granted[key]["t"] for key in wanted}
        renewed = {}
        for transport, port in wanted:
            mark = 0
            while True:
                event, mark = agent.next_event("granted", timeout=LEASE, start=mark)
                if event["renewal"] and event["transport"] == transport:
                    renewed[(transport, port)] = event
                    break
        listed_after = self.listed()
        for key, event in renewed.items():
            delay = event["t"] - first[key]
            self.assertTrue(LEASE / 2 - 0.5 <= delay <= LEASE / 2 + 1.5,
                            "{} renewed after {:.2f} s, not at half the {} s lease".format(
                                key, delay, LEASE))
            self.assertEqual(event["external"], granted[key]["external"], event)
            self.assertEqual(event["granted_lifetime"], LEASE, event)
            # Without the renewal the remaining lease would be <= LEASE/2 by now.
            self.assertIn(key, listed_after, listed_after)
            self.assertGreaterEqual(listed_after[key]["lease"], LEASE - 2, listed_after[key])

        # -- deleted on stopService()
        agent.command("stopped", cmd="stop")
        unmapped = {(e["transport"], e["port"]) for e in agent.events("unmapped")}
        self.assertEqual(sorted(unmapped), wanted, agent.proc.output)
        self.assertEqual(agent.events("unmap_failed"), [])
        self.assertEqual(agent.proc.wait(5), 0, agent.proc.output)
        self.assertEqual(self.home.upnp_list(self.alice), [])
        self.assertEqual(self.home.port_mappings(), [])
        self.report(method, granted, renewed, listed_after, agent)

    def report(self, method, granted, renewed, listed_after, agent):
        """Print what happened, and write it to ``lab-portmap-METHOD.json`` (trial's cwd)."""
        stopped = agent.events("unmapped")
        rows = []
        for key in sorted(granted):
            rows.append({
                "mapping": "{} {}".format(*key), "external": granted[key]["external"],
                "asked": LEASE, "granted": granted[key]["granted_lifetime"],
                "renewed_after": round(renewed[key]["t"] - granted[key]["t"], 2),
                "lease_listed_after_renewal": listed_after[key]["lease"],
                "deleted_after_stop": round(max(e["t"] for e in stopped
                                                if (e["transport"], e["port"]) == key)
                                            - agent.events("unmap")[0]["t"], 3),
            })
        with open("lab-portmap-{}.json".format(method), "w") as f:
            json.dump(rows, f, indent=2)
        print()
        for row in rows:
            print("{}: {mapping} -> {external}, lease asked {asked} s, granted {granted} s, renewed "
                  "after {renewed_after} s (router lease then {lease_listed_after_renewal} s), "
                  "deleted {deleted_after_stop} s after stop began".format(method, **row))

    def test_pcp(self):
        # Stock miniupnpd grants PCP leases of at least min_lifetime (120 s):
        # the mapper takes the lease granted, not the one asked for.
        agent = self.mapper("pcp")
        mappings = agent.events("round")[0]["mappings"]
        self.assertEqual(sorted((m["transport"], m["lifetime"]) for m in mappings),
                         [("tcp", 120), ("udp", 120)], mappings)
        agent.command("stopped", cmd="stop")
        self.assertEqual(self.home.port_mappings(), [])
        # Then with short leases allowed, the whole cycle.
        restart_miniupnpd(self.lab, self.home, min_lifetime=4)
        self.check_map_renew_delete("pcp")

    def test_natpmp(self):
        self.check_map_renew_delete("natpmp")

    def test_upnp_igd(self):
        self.check_map_renew_delete("upnp")


class EndToEndTests(LabTestCase):
    """A node behind the NAT is reached through its mapped address only."""

    lab_tools = SERVER_TOOLS

    def node(self, host, *options, label="node"):
        agent = Agent(host, "node", "--deadline", 40, *options, label=label)
        self.addCleanup(agent.stop)
        return agent

    def test_connect_through_the_mapping(self):
        lab = self.make_lab()
        home = lab.nat("home", "port-restricted", upnp=True)
        alice_host, carol_host = home.host("alice"), home.host("carol")
        bob_host = lab.public_host("bob")
        self.assertTrue(home.upnp.forwarding, home.upnp.proc.output)

        alice = self.node(alice_host, "--wait-mapping", 10, label="alice")
        bob = self.node(bob_host, "--no-port-mapping", "--connect-timeout", 2, label="bob")
        ready = alice.event("ready", timeout=15)
        bob.event("ready", timeout=15)

        # alice's info carries the mapped address, first; keep only that one.
        info = json.loads(ready["info"])
        # Its TCP port is mapped (the service maps its UDP socket's port too).
        tcp = [m for m in ready["mappings"] if m["transport"] == "tcp"]
        self.assertEqual(len(tcp), 1, ready)
        mapping = tcp[0]
        self.assertEqual(mapping["method"], "pcp", ready)  # the first method that works
        mapped = mapping["external"]
        listen_port = int(ready["listen"][0].rsplit(":", 1)[1])
        self.assertEqual(mapped, "tcp:{}:{}".format(home.public_ip, listen_port), ready)
        self.assertEqual(info["addrs"][0], mapped, info)
        self.assertIn(("tcp", listen_port, alice_host.ip),
                      [(m["proto"], m["external_port"], m["internal_ip"])
                       for m in home.port_mappings()])
        info["addrs"] = [mapped]

        connected = bob.command("connected", timeout=10, cmd="connect", info=json.dumps(info))
        self.assertEqual((connected["peer"], connected["address"]), (info["id"], mapped), connected)
        alice_side = alice.event("connect_success", timeout=5)
        self.assertEqual(alice_side["args"], [json.loads(bob.events("ready")[0]["info"])["id"]])
        # alice sees bob's own address arriving on her listening port (DNAT only).
        peers = alice.command("peers", cmd="peers")["peers"]
        self.assertEqual(len(peers), 1, peers)
        self.assertEqual(peers[0]["address"].split(":")[1], bob_host.ip, peers)
        self.assertEqual(peers[0]["local_address"], "tcp:{}:{}".format(alice_host.ip, listen_port),
                         peers)
        self.assertEqual(peers[0]["transport"], "tcp")

        # A message each way over the secure channel.
        bob.command("sent", cmd="send", peer=info["id"], data="hello from the internet")
        got = alice.event("new_message", timeout=5)
        self.assertEqual(got["data"], "hello from the internet")
        bob_id = json.loads(bob.events("ready")[0]["info"])["id"]
        self.assertEqual(got["peer"], bob_id)
        mark = bob.mark
        alice.command("sent", cmd="send", peer=bob_id, data="hello from behind the NAT")
        got = bob.event("new_message", timeout=5, start=mark)
        self.assertEqual((got["peer"], got["data"]), (info["id"], "hello from behind the NAT"))

        # Control: carol, the same but without port mapping, is not reachable
        # at the NAT's address on her port (the NAT drops unsolicited SYNs).
        carol = self.node(carol_host, "--no-port-mapping", label="carol")
        carol_ready = carol.event("ready", timeout=15)
        carol_info = json.loads(carol_ready["info"])
        carol_port = int(carol_ready["listen"][0].rsplit(":", 1)[1])
        carol_info["addrs"] = ["tcp:{}:{}".format(home.public_ip, carol_port)]
        failed = bob.command("connect_error", timeout=10, cmd="connect",
                             info=json.dumps(carol_info))
        self.assertIn("ConnectFailed", failed["error"])

        # Stopping alice's service deletes her mapping on the router.
        alice.command("stopped", timeout=10, cmd="stop")
        self.assertEqual(home.port_mappings(), [])
        self.assertEqual(home.upnp_list(alice_host), [])
