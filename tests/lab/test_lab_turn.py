"""TURN relay candidates (issue 13) in the NAT lab, against coturn.

Two nodes, each behind a symmetric NAT of its own (random ports, address-
and-port-dependent filtering: the pair hole punching cannot connect), with
no crust peer in common and no STUN server: only a TURN server (coturn on a
public host, long-term credentials) that both are configured with. Each
allocates a relayed address and offers it as a ``relay`` candidate; the two
exchange their connection info out of band (both paste, the commands sent
back to back) and connect. Then:

- the connection is relayed through TURN, on at least one side (path
  ``relayed``, via ``turn:<server>`` on the allocating side);
- 1 MB goes each way intact (SHA-256 compared), and small messages keep
  flowing while the allocation, the permissions and the channel are
  refreshed (coturn is set to short lifetimes: allocations of 20 s, nonces
  stale after 15 s, permissions and channels of 12 s; the clients refresh
  permissions and channels every 8 s, the allocation at half its lifetime,
  10 s: coturn then grants its default 600 s, whatever the request says);
- coturn's log shows the refreshes of both allocations, the permissions
  and the channel bindings, and at stop a deallocation (``lifetime=0``) of
  each node's allocation.

Times (allocation, connect, transfer) are printed. Root only; see
doc/natlab.md and doc/relay.md ("TURN").
"""

import hashlib
import json
import random
import re
import time

from tests.lab.natlab import LabTestCase
from tests.lab.natlab.agents import Agent

LIFETIME = 20  # coturn's max-allocate-lifetime; the clients ask for it
REFRESH_EVERY = 8  # the clients' permission and channel refresh (coturn: 12 s lifetimes)
BLOB = 1 << 20


def blob_sha256(size, seed):
    """What the node agent's ``send_blob`` sends."""
    rng = random.Random(seed)
    return hashlib.sha256(bytes(rng.getrandbits(8) for _ in range(size))).hexdigest()


class TurnLabTests(LabTestCase):
    lab_tools = ("turnserver",)

    def node(self, host, turn, label):
        agent = Agent(host, "node", "--deadline", 150, "--no-port-mapping", "--connect-timeout", 15,
                      "--turn", turn.url, "--turn-lifetime", LIFETIME,
                      "--turn-option", f"permission_refresh={REFRESH_EVERY}",
                      "--turn-option", f"channel_refresh={REFRESH_EVERY}", label=label)
        self.addCleanup(agent.stop)
        return agent

    def test_symmetric_pair_connects_through_turn(self):
        lab = self.make_lab()
        turn = lab.start_turn(lifetime=LIFETIME, nonce_lifetime=15, permission_lifetime=12, channel_lifetime=12)
        alice_host = lab.nat("nat1", "symmetric").host("alice")
        bob_host = lab.nat("nat2", "symmetric").host("bob")
        server = "{}:{}".format(*turn.address)
        started = time.monotonic()
        alice, bob = self.node(alice_host, turn, "alice"), self.node(bob_host, turn, "bob")
        ready = {"alice": alice.event("ready", timeout=20), "bob": bob.event("ready", timeout=20)}
        ready_after = time.monotonic() - started
        infos = {}
        for name, event in ready.items():
            (status,) = event["turn"]
            self.assertEqual(status["state"], "allocated", event)
            self.assertEqual(status["lifetime"], LIFETIME)
            self.assertTrue(status["relayed"].startswith(f"udp:{turn.address[0]}:"), status)
            info = json.loads(event["info"])
            relay = [c for c in info["cands"] if c[1] == "relay"]
            self.assertEqual([c[0] for c in relay], [status["relayed"]], info)
            # the NAT's public address, learned from the TURN server (XOR-MAPPED-ADDRESS)
            nat = alice_host.nat if name == "alice" else bob_host.nat
            self.assertIn(nat.public_ip, status["mapped"])
            infos[name] = event["info"]

        # both paste the other's info, at the same moment
        t0 = time.monotonic()
        a_mark = alice.send(cmd="connect", info=infos["bob"])
        b_mark = bob.send(cmd="connect", info=infos["alice"])
        a_result = alice.event(("connected", "connect_error"), timeout=25, start=a_mark)
        b_result = bob.event(("connected", "connect_error"), timeout=25, start=b_mark)
        connect_seconds = time.monotonic() - t0
        self.assertEqual(a_result["event"], "connected", a_result)
        self.assertEqual(b_result["event"], "connected", b_result)
        paths = {"alice": a_result["path"], "bob": b_result["path"]}
        self.assertEqual({a_result["transport"], b_result["transport"]}, {"udp"}, paths)
        relayed = [name for name, path in paths.items() if path and path["kind"] == "relayed"]
        self.assertTrue(relayed, f"no side reads relayed: {paths}")
        self.assertTrue(any(path.get("via") == f"turn:{server}" for path in paths.values() if path),
                        f"the allocating side should name the server: {paths}")
        peers = {"alice": a_result["peer"], "bob": b_result["peer"]}

        # 1 MB each way
        t1 = time.monotonic()
        a_got, b_got = alice.mark, bob.mark
        sent_a = alice.command("sent", timeout=20, cmd="send_blob", peer=peers["alice"], size=BLOB, seed=1)
        sent_b = bob.command("sent", timeout=20, cmd="send_blob", peer=peers["bob"], size=BLOB, seed=2)
        at_bob = bob.event("new_message", timeout=30, start=b_got)
        at_alice = alice.event("new_message", timeout=30, start=a_got)
        transfer_seconds = time.monotonic() - t1
        self.assertEqual((at_bob["size"], at_bob["sha256"]), (BLOB, sent_a["sha256"]))
        self.assertEqual((at_alice["size"], at_alice["sha256"]), (BLOB, sent_b["sha256"]))
        self.assertEqual(sent_a["sha256"], blob_sha256(BLOB, 1))

        # messages keep flowing across refreshes of the allocation, permissions and channel
        t2 = time.monotonic()
        for i in range(6):
            time.sleep(LIFETIME / 4)
            a_mark, b_mark = alice.mark, bob.mark
            alice.command("sent", cmd="send", peer=peers["alice"], data=f"ping {i}")
            bob.command("sent", cmd="send", peer=peers["bob"], data=f"pong {i}")
            self.assertEqual(bob.event("new_message", timeout=10, start=b_mark)["data"], f"ping {i}")
            self.assertEqual(alice.event("new_message", timeout=10, start=a_mark)["data"], f"pong {i}")
        kept_seconds = time.monotonic() - t2
        turn_a = alice.command("turn", cmd="turn")
        turn_b = bob.command("turn", cmd="turn")
        for name, report in (("alice", turn_a), ("bob", turn_b)):
            (status,), (counters,) = report["status"], report["counters"]
            self.assertEqual(status["state"], "allocated", report)
            self.assertGreaterEqual(status["refreshes"], 1, report)  # at 10 s (coturn then grants 600 s)
            self.assertGreaterEqual(counters["stale_nonces"], 1, report)
        allocating = [name for name, path in paths.items() if path and path.get("via") == f"turn:{server}"]
        relaying = turn_a if allocating[0] == "alice" else turn_b
        (counters,) = relaying["counters"]
        self.assertGreaterEqual(counters["permissions"], 3, relaying)  # asked, then refreshed every 8 s
        self.assertGreaterEqual(counters["channel_binds"], 2, relaying)
        self.assertGreater(counters["sent_channel_data"], 100, relaying)
        self.assertGreater(counters["channel_data_in"], 100, relaying)
        log = turn.log()
        refreshes = re.findall(rf"session (\d+): refreshed, realm=<{turn.realm}>, username=<{turn.username}>, "
                               rf"lifetime=[1-9]", log)
        self.assertEqual(len(set(refreshes)), 2, log[-3000:])  # both allocations
        self.assertGreaterEqual(log.count("CHANNEL_BIND processed, success"), 2)
        self.assertGreaterEqual(log.count("CREATE_PERMISSION processed, success"), 3)

        # deallocated at stop
        self.assertNotIn("lifetime=0", log)
        alice.command("stopped", timeout=15, cmd="stop")
        bob.command("stopped", timeout=15, cmd="stop")
        deadline = time.monotonic() + 5
        while turn.log().count("lifetime=0") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(turn.log().count(f"username=<{turn.username}>, lifetime=0"), 2, turn.log()[-3000:])

        print(f"\nTURN through coturn, symmetric x symmetric NATs: nodes ready (allocated) {ready_after:.2f} s "
              f"after start; connected in {connect_seconds:.2f} s (alice {a_result['seconds']:.2f} s, "
              f"bob {b_result['seconds']:.2f} s); 1 MB each way in {transfer_seconds:.2f} s; "
              f"{kept_seconds:.0f} s of pings across refreshes; paths: alice {paths['alice']}, bob {paths['bob']}")
