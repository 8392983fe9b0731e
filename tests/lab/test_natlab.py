"""Verification of the NAT lab itself (tests/lab/natlab): real namespaces, root only.

Each test builds its own small lab (~0.1-0.3 s) and tears it down in a
cleanup, so a failure never leaks namespaces or processes.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from twisted.trial import unittest

from tests.lab.natlab import LabTestCase, ProcessError, missing_requirements, netns
from tests.lab.natlab.probe import stun_parse, stun_request
from tests.lab.natlab.skip import SERVER_TOOLS
from tests.lab.natlab.topology import PREFIX_RE, PROBE, parse_dnat_rules, parse_upnpc_list


class BehaviourMixin:
    """Builds reflectors + one NAT with one host, and classifies it."""

    def nat_with_host(self, kind, **options):
        lab = self.make_lab()
        reflectors = lab.start_reflectors()
        nat = lab.nat("home", kind, **options)
        return lab, reflectors, nat, nat.host("alice")

    def assertBehaviour(self, result, mapping, filtering):
        self.assertEqual((result["mapping"], result["filtering"]), (mapping, filtering),
                         json.dumps(result, indent=1))


class NatBehaviourTests(BehaviourMixin, LabTestCase):
    """Each kind gives the RFC 4787 mapping and filtering it claims."""

    def test_public_host(self):
        lab = self.make_lab()
        reflectors = lab.start_reflectors()
        host = lab.public_host("open")
        result = reflectors.nat_test(host)
        self.assertBehaviour(result, "endpoint-independent", "endpoint-independent")
        self.assertEqual(set(result["mapped"].values()), {result["local"].replace(
            "0.0.0.0", host.ip)})

    def test_full_cone(self):
        lab, reflectors, nat, alice = self.nat_with_host("full-cone")
        result = reflectors.nat_test(alice)
        self.assertBehaviour(result, "endpoint-independent", "endpoint-independent")
        self.assertEqual({m.split(":")[0] for m in result["mapped"].values()}, {nat.public_ip})
        # A host that never heard of alice reaches her through the mapping.
        proc = alice.reflect(udp=["0.0.0.0:6000"], contact=[reflectors.primary])
        mapped = proc.wait_for_line(r"^mapped \S+ (\S+)", timeout=5).group(1)
        stranger = lab.public_host("stranger")
        self.assertEqual(stranger.probe("ask", "--server", mapped)["seen"].split(":")[0],
                         stranger.ip)
        # TCP too: a connection out from a listening port opens it to anyone.
        self.assertEqual(self.open_tcp_mapping(alice, reflectors, stranger), "ok")

    def open_tcp_mapping(self, alice, reflectors, stranger, port=6001):
        """Connect out from alice's listening *port*, then let stranger connect in.

        Returns "ok" or the stranger's error.
        """
        alice.reflect(tcp=["0.0.0.0:{}".format(port)], name="tcp-listener")
        out = alice.probe("tcp-connect", "--bind", "0.0.0.0:{}".format(port),
                          "--server", reflectors.primary)
        inbound = stranger.probe("tcp-connect", "--server", out["seen"], "--timeout", "0.7")
        return "ok" if inbound.get("seen", "").startswith(stranger.ip + ":") else inbound

    def test_restricted_cone(self):
        lab, reflectors, _, alice = self.nat_with_host("restricted-cone")
        result = reflectors.nat_test(alice)
        self.assertBehaviour(result, "endpoint-independent", "address-dependent")
        # TCP: a stranger is filtered, the contacted address from any port is not.
        stranger = lab.public_host("stranger")
        self.assertIn("timed out", self.open_tcp_mapping(alice, reflectors, stranger)["error"])
        self.assertEqual(self.open_tcp_mapping(alice, reflectors, reflectors.hosts[0], 6002),
                         "ok")

    def test_port_restricted_cone(self):
        lab, reflectors, nat, alice = self.nat_with_host("port-restricted")
        result = reflectors.nat_test(alice)
        self.assertBehaviour(result, "endpoint-independent", "address-and-port-dependent")
        stranger = lab.public_host("stranger")
        self.assertIn("timed out", self.open_tcp_mapping(alice, reflectors, stranger)["error"])
        # Port preservation: the external port is the local one.
        local_port = result["local"].split(":")[1]
        self.assertEqual(result["mapped"][reflectors.primary],
                         "{}:{}".format(nat.public_ip, local_port))

    def test_symmetric(self):
        _, reflectors, _, alice = self.nat_with_host("symmetric")
        result = reflectors.nat_test(alice)
        self.assertBehaviour(result, "address-and-port-dependent", "address-and-port-dependent")
        self.assertEqual(len(set(result["mapped"].values())), 4, result["mapped"])

    def test_udp_blocked_passes_tcp(self):
        _, reflectors, nat, alice = self.nat_with_host("udp-blocked")
        result = reflectors.nat_test(alice, tries=2, wait=0.2)
        self.assertBehaviour(result, "blocked", "blocked")
        tcp = alice.probe("tcp-connect", "--server", reflectors.primary)
        self.assertEqual(tcp["seen"].split(":")[0], nat.public_ip, tcp)

    def test_carrier_grade_maps_twice(self):
        lab = self.make_lab()
        reflectors = lab.start_reflectors()
        home = lab.nat("home", "carrier-grade")
        cgn = home.behind
        self.assertTrue(home.wan_ip.startswith("100.64."), home.wan_ip)
        self.assertTrue(cgn.lan_net.startswith("100.64."), cgn.lan_net)
        alice = home.host("alice")
        # First translation: seen on the carrier's LAN as the home NAT's WAN address.
        isp = cgn.host("isp-box")
        isp.reflect(udp=["{}:7000".format(isp.ip)])
        inner = alice.probe("ask", "--server", "{}:7000".format(isp.ip))
        self.assertEqual(inner["seen"].split(":")[0], home.wan_ip)
        # Second translation: seen on the internet as the carrier's address.
        result = reflectors.nat_test(alice)
        self.assertBehaviour(result, "endpoint-independent", "address-and-port-dependent")
        self.assertEqual({m.split(":")[0] for m in result["mapped"].values()}, {cgn.public_ip})
        self.assertEqual(home.public_ip, cgn.wan_ip)

    def test_unsolicited_inbound_dropped_silently(self):
        lab, reflectors, nat, _ = self.nat_with_host("port-restricted")
        outsider = reflectors.hosts[0]
        start = time.monotonic()
        tcp = outsider.probe("tcp-connect", "--server", "{}:22".format(nat.wan_ip),
                             "--timeout", "0.7")
        # No RST (that would be "refused" at once): the SYN is just dropped.
        self.assertIn("timed out", tcp["error"])
        self.assertGreaterEqual(time.monotonic() - start, 0.7)

    def test_hairpinning_optional(self):
        lab = self.make_lab()
        reflectors = lab.start_reflectors()
        for name, hairpin in (("hp", True), ("nohp", False)):
            nat = lab.nat(name, "port-restricted", hairpin=hairpin)
            alice, bob = nat.host(name + "-alice"), nat.host(name + "-bob")
            proc = bob.reflect(udp=["{}:7000".format(bob.ip)], contact=[reflectors.primary])
            mapped = proc.wait_for_line(r"^mapped \S+ (\S+)", timeout=5).group(1)
            reply = alice.probe("ask", "--server", mapped, "--tries", 2, "--wait", 0.2)
            if hairpin:
                # bob sees alice as the NAT's public address, not her LAN one.
                self.assertEqual(reply.get("seen", "").split(":")[0], nat.public_ip, reply)
            else:
                self.assertIn("error", reply)
            # The LAN addresses always work.
            direct = alice.probe("ask", "--server", "{}:7000".format(bob.ip))
            self.assertEqual(direct["seen"].split(":")[0], alice.ip)


class ServerTests(LabTestCase):
    """coturn and miniupnpd run inside the lab and answer."""

    lab_tools = SERVER_TOOLS

    def test_stun_binding_and_change_request(self):
        lab = self.make_lab()
        stun = lab.start_stun()
        server = "{}:{}".format(*stun.address)
        public = lab.public_host("open")
        plain = public.probe("stun", "--server", server)
        self.assertEqual(plain["xor_mapped"], plain["local"].replace("0.0.0.0", public.ip))
        self.assertEqual(plain["other_address"], "{}:{}".format(*stun.alt_address))
        both = public.probe("stun", "--server", server, "--change-ip", "--change-port")
        self.assertEqual(both["response_origin"], "{}:{}".format(*stun.alt_address))
        port = public.probe("stun", "--server", server, "--change-port")
        self.assertEqual(port["response_origin"], "{}:{}".format(*stun.alt_port_address))
        nat = lab.nat("home", "symmetric")
        behind = nat.host("alice").probe("stun", "--server", server)
        self.assertEqual(behind["xor_mapped"].split(":")[0], nat.public_ip)

    def test_miniupnpd_maps_ports(self):
        lab = self.make_lab()
        nat = lab.nat("home", "port-restricted", upnp=True)
        self.assertTrue(nat.upnp.forwarding, nat.upnp.proc.output)
        alice = nat.host("alice")
        outsider = lab.public_host("outsider")
        alice.reflect(udp=["0.0.0.0:8000"], tcp=["0.0.0.0:8000"])
        self.assertEqual(nat.upnp_list(alice), [])
        target = "{}:8000".format(nat.public_ip)
        # Before any mapping the outsider cannot get in.
        self.assertIn("error", outsider.probe("ask", "--server", target, "--tries", 1))
        for proto in ("UDP", "TCP"):
            out = nat.upnpc(alice, "-a", alice.ip, 8000, 8000, proto)
            self.assertIn("is redirected to internal {}:8000".format(alice.ip), out)
        listed = nat.upnp_list(alice)
        self.assertEqual(sorted((m["proto"], m["external_port"], m["internal_ip"]) for m in listed),
                         [("tcp", 8000, alice.ip), ("udp", 8000, alice.ip)])
        self.assertEqual(sorted((m["proto"], m["external_port"]) for m in nat.port_mappings()),
                         [("tcp", 8000), ("udp", 8000)])
        self.assertEqual(outsider.probe("ask", "--server", target)["seen"].split(":")[0],
                         outsider.ip)
        self.assertEqual(outsider.probe("tcp-connect", "--server", target)["seen"].split(":")[0],
                         outsider.ip)
        # NAT-PMP on the same daemon.
        out = nat.natpmpc(alice)
        self.assertIn("Public IP address : {}".format(nat.public_ip), out)
        out = nat.natpmpc(alice, "-a", 8100, 8000, "udp", 60)
        self.assertIn("Mapped public port 8100 protocol UDP to local port 8000", out)
        self.assertIn(("udp", 8100, 8000),
                      [(m["proto"], m["external_port"], m["internal_port"])
                       for m in nat.port_mappings()])
        # SSDP discovery works too (no -u). upnpc calls the IGD "not
        # connected?" because its address is in a documentation range.
        discovered = alice.run(["upnpc", "-l"], timeout=15, check=False).stdout
        self.assertIn("desc: {}".format(nat.upnp_url), discovered)
        self.assertIn("IGD : http://{}:".format(nat.lan_ip), discovered)

    def test_miniupnpd_behind_carrier_nat_refuses(self):
        # Slow (~9 s): miniupnpd waits out its STUN retries before giving up.
        lab = self.make_lab()
        home = lab.nat("home", "carrier-grade", upnp=True)
        alice = home.host("alice")
        self.assertIs(home.upnp.forwarding, False)
        out = home.upnpc(alice, "-a", alice.ip, 8000, 8000, "UDP")
        self.assertNotIn("is redirected", out)
        self.assertEqual(home.port_mappings(), [])


class ImpairmentTests(LabTestCase):
    """The user-space forwarder adds delay, loss, duplicates and reordering."""

    lab_tun = True

    def setUp(self):
        super().setUp()
        self.lab = self.make_lab()
        self.reflectors = self.lab.start_reflectors()
        self.alice = self.lab.nat("home", "port-restricted").host("alice")

    def rtt(self, count=20, interval=0.01, drain=0.5):
        return self.alice.probe("rtt", "--server", self.reflectors.primary, "--count", count,
                                "--interval", interval, "--drain", drain)

    def test_delay(self):
        base = statistics.median(self.rtt(drain=0.2)["rtt_ms"])
        self.assertLess(base, 10)
        self.lab.impair(delay_ms=25, jitter_ms=2, seed=1)
        result = self.rtt(count=30)
        self.assertEqual(result["received"], 30)
        # Each direction passes the forwarder once: RTT = 2 x 25 ms (+- jitter).
        self.assertGreaterEqual(min(result["rtt_ms"]), 45)
        self.assertLess(statistics.median(result["rtt_ms"]), 65)
        stats = self.lab.unimpair()
        self.assertGreaterEqual(stats["sent"], 60)
        self.assertLess(statistics.median(self.rtt(drain=0.2)["rtt_ms"]), 10)
        # Only the links asked for.
        self.lab.impair(delay_ms=25, links=[self.reflectors.hosts[1]])
        self.assertLess(statistics.median(self.rtt(drain=0.2)["rtt_ms"]), 10)
        slow = self.alice.probe("rtt", "--server", self.reflectors.alt_ip, "--count", 10,
                                "--drain", 0.3)
        self.assertGreaterEqual(min(slow["rtt_ms"]), 45)

    def test_loss(self):
        self.lab.impair(loss_pct=20, seed=7)
        result = self.rtt(count=400, interval=0.002, drain=0.3)
        # Two passes per round trip: 0.8 * 0.8 = 64 % expected.
        ratio = result["received"] / result["sent"]
        self.assertTrue(0.5 < ratio < 0.78, ratio)
        stats = self.lab.unimpair()
        self.assertTrue(0.12 < stats["dropped"] / stats["received"] < 0.28, stats)

    def test_duplicate_and_reorder(self):
        self.lab.impair(duplicate_pct=50, reorder_pct=30, reorder_gap_ms=20, seed=3)
        result = self.rtt(count=100, interval=0.002, drain=0.3)
        self.assertEqual(result["received"], 100)
        self.assertGreater(result["duplicates"], 20)
        self.assertNotEqual(result["order"], sorted(result["order"]))
        stats = self.lab.unimpair()
        self.assertGreater(stats["reordered"], 0)
        self.assertGreater(stats["duplicated"], 0)

    def test_throughput(self):
        self.lab.impair(delay_ms=5, seed=1)
        sinkhost = self.reflectors.hosts[1]
        sink = sinkhost.spawn([sys.executable, PROBE, "sink", "--udp",
                               "{}:9000".format(sinkhost.ip), "--idle", "0.5"], name="sink")
        sink.wait_for_line("^ready$")
        sent = self.alice.probe("flood", "--server", "{}:9000".format(sinkhost.ip),
                                "--seconds", 1, "--rate", 4000)
        sink.wait(10)
        received = json.loads(sink.lines[-1])["received"]
        # Thousands of packets/s pass (it manages ~60k/s unloaded, see doc/natlab.md).
        self.assertGreater(sent["sent"], 3500)
        self.assertGreater(received, 0.9 * sent["sent"], (sent, received))


def root_state():
    """The root namespace's addresses, routes, rules and nftables."""
    out = []
    for argv in (["ip", "-j", "addr"], ["ip", "-j", "route", "show", "table", "all"],
                 ["ip", "-j", "rule"], ["nft", "list", "ruleset"]):
        out.append(subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout)
    for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
        path = "/proc/sys/" + key
        out.append(open(path).read() if os.path.exists(path) else "")
    return out


class LifecycleTests(LabTestCase):
    """Teardown, isolation between labs, processes, the command line."""

    lab_tools = SERVER_TOOLS
    lab_tun = True

    def test_teardown_leaves_nothing(self):
        before = root_state()
        lab = self.make_lab()
        lab.nat("home", "full-cone", upnp=True, hairpin=True).host("alice")
        sleeper = lab.spawn("alice", ["sleep", "60"])
        lab.impair(delay_ms=1)
        prefix, logdir = lab.prefix, lab.logdir
        self.assertEqual(len([n for n in netns.ns_list() if n.startswith(prefix)]), 4)
        start = time.monotonic()
        lab.teardown()
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual([n for n in netns.ns_list() if n.startswith(prefix)], [])
        self.assertIsNotNone(sleeper.returncode)
        self.assertIsNotNone(lab.stun.proc.returncode)
        self.assertFalse(os.path.exists(logdir))
        self.assertEqual(root_state(), before)
        lab.teardown()  # idempotent

    def test_context_manager_tears_down_on_error(self):
        with self.assertRaises(ZeroDivisionError):
            from tests.lab.natlab import Lab
            with Lab() as lab:
                lab.public_host("a")
                prefix = lab.prefix
                1 / 0
        self.assertEqual([n for n in netns.ns_list() if n.startswith(prefix)], [])

    def test_parallel_labs_do_not_collide(self):
        labs = [self.make_lab(), self.make_lab()]
        self.assertNotEqual(labs[0].prefix, labs[1].prefix)
        self.assertTrue(PREFIX_RE.match(labs[0].prefix))
        for lab in labs:
            a, b = lab.public_host("a"), lab.public_host("b")
            b.reflect(udp=["{}:7000".format(b.ip)])
            self.assertEqual(a.probe("ask", "--server", "{}:7000".format(b.ip))["seen"]
                             .split(":")[0], a.ip)

    def test_spawn_and_run_are_bounded(self):
        lab = self.make_lab()
        host = lab.public_host("a")
        proc = host.spawn(["sh", "-c", "echo hello $NATLAB_X; sleep 30"], env={"NATLAB_X": "x"})
        self.assertEqual(proc.wait_for_line(r"hello (\w+)", timeout=5).group(1), "x")
        start = time.monotonic()
        self.assertRaises(ProcessError, proc.wait_for_line, "never", timeout=0.2)
        proc.stop()
        self.assertFalse(proc.running())
        self.assertRaises(subprocess.TimeoutExpired, host.run, ["sleep", "5"], timeout=0.2)
        self.assertLess(time.monotonic() - start, 4)
        self.assertEqual(host.run(["cat"], input="in").stdout, "in")

    def test_cli_shell_command(self):
        out = subprocess.run(
            [sys.executable, "-m", "tests.lab.natlab", "shell", "--nat", "symmetric", "--stun",
             "--command", "echo gw=$NATLAB_GATEWAY; ip -br addr show eth0"],
            capture_output=True, text=True, timeout=60,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("enter: ip netns exec nl", out.stdout)
        self.assertIn("gw=10.1.0.1", out.stdout)
        self.assertIn("10.1.0.2/24", out.stdout)


class HelperTests(unittest.TestCase):
    """Pure helpers: run everywhere, no lab needed."""

    def test_missing_tool_is_named(self):
        missing = missing_requirements(tools=["no-such-natlab-tool"])
        self.assertTrue(any("no-such-natlab-tool" in m for m in missing), missing)

    def test_stun_roundtrip_codec(self):
        import struct
        txid, request = stun_request(change_ip=True)
        self.assertEqual(request[:2], b"\x00\x01")
        self.assertEqual(request[-4:], struct.pack("!I", 4))
        port, ip = 40000 ^ 0x2112, bytes(a ^ b for a, b in zip(bytes([203, 0, 113, 10]),
                                                              struct.pack("!I", 0x2112A442)))
        attr = struct.pack("!HHBBH", 0x0020, 8, 0, 1, port) + ip
        response = struct.pack("!HHI", 0x0101, len(attr), 0x2112A442) + txid + attr
        self.assertEqual(stun_parse(response, txid), {"xor_mapped": "203.0.113.10:40000"})
        self.assertIsNone(stun_parse(response, b"x" * 12))

    def test_parse_mapping_listings(self):
        text = (" 0 UDP  8002->10.1.0.2:9002  'NAT-PMP 8002 udp' '' 60\n"
                " 1 TCP  9001->10.1.0.2:8001  'libminiupnpc' '' 604800\n")
        self.assertEqual([(m["proto"], m["external_port"], m["internal_port"])
                          for m in parse_upnpc_list(text)], [("udp", 8002, 9002),
                                                               ("tcp", 9001, 8001)])
        rule = {"rule": {"expr": [
            {"match": {"left": {"payload": {"base": "nh", "offset": 72, "len": 8}}, "right": 17}},
            {"match": {"left": {"payload": {"protocol": "th", "field": "dport"}}, "right": 8000}},
            {"dnat": {"family": "ip", "addr": "10.1.0.2", "port": 8001}}]}}
        self.assertEqual(parse_dnat_rules({"nftables": [rule]}), [
            {"proto": "udp", "external_port": 8000, "internal_ip": "10.1.0.2",
             "internal_port": 8001}])
