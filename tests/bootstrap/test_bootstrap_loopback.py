"""Bootstrap between real services on 127.0.0.1."""

import statistics

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from crust.address import Address
from crust.bootstrap.plan import BootstrapFailed
from crust.config import HardCodedContact
from crust.roles import Role

from tests.util import make_service, sleep, wait_for


def contact(service):
    return HardCodedContact(service.peer_id, service.listen_addresses[0])


class Deaf(protocol.Protocol):
    """Accepts and never says anything."""


def deaf_listener(testcase):
    factory = protocol.ServerFactory.forProtocol(Deaf)
    factory.accepted = 0
    original = factory.buildProtocol

    def build(addr):
        factory.accepted += 1
        return original(addr)

    factory.buildProtocol = build
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return Address("tcp", "127.0.0.1", port.getHost().port), factory


class BootstrapTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def seed(self, **config):
        config.setdefault("accept_bootstrap", True)
        seed = make_service(self, **config)
        yield seed.start_listening()
        return seed

    @defer.inlineCallbacks
    def test_two_nodes_bootstrap_and_exchange_messages_with_roles(self):
        seed = yield self.seed()
        for role in (Role.CLIENT, Role.NODE):
            node = make_service(self, hard_coded_contacts=(contact(seed),))
            peer = yield node.bootstrap(role=role)
            self.assertEqual(peer, seed.peer_id)
            self.assertEqual(node.events.named("bootstrap_connect"), [(seed.peer_id, seed.listen_addresses[0])])
            yield wait_for(lambda: (node.peer_id, role) in seed.events.named("bootstrap_accept"))
            self.assertEqual(seed.peer_role(node.peer_id), str(role))
            self.assertEqual(node.peer_role(seed.peer_id), "node")
            self.assertEqual(node.events.named("connect_success"), [])  # bootstrap has its own events
            node.send(seed.peer_id, b"hello seed", 1)
            seed.send(node.peer_id, b"hello " + str(role).encode(), 1)
            yield wait_for(lambda: node.events.named("new_message"))
            self.assertEqual(node.events.named("new_message"), [(seed.peer_id, b"hello " + str(role).encode())])
            self.assertEqual(node.bootstrapped_to, (seed.peer_id, seed.listen_addresses[0]))

    @defer.inlineCallbacks
    def test_one_deaf_contact_among_several(self):
        seed = yield self.seed()
        deaf, factory = deaf_listener(self)
        node = make_service(self, hard_coded_contacts=(
            HardCodedContact(seed.peer_id, deaf), contact(seed)), bootstrap_timeout=5)
        start = reactor.seconds()
        peer = yield node.bootstrap(role=Role.CLIENT)
        self.assertEqual(peer, seed.peer_id)
        self.assertLess(reactor.seconds() - start, 3)

    @defer.inlineCallbacks
    def test_blacklisted_listener_sees_no_attempt(self):
        seed = yield self.seed()
        watched, factory = deaf_listener(self)
        node = make_service(self, hard_coded_contacts=(
            HardCodedContact(seed.peer_id, watched), contact(seed)))
        peer = yield node.bootstrap(blacklist=[watched], role=Role.CLIENT)
        self.assertEqual(peer, seed.peer_id)
        yield sleep(0.3)
        self.assertEqual(factory.accepted, 0)
        # only the blacklisted contact: fails at once, still no attempt
        lone = make_service(self, hard_coded_contacts=(HardCodedContact(seed.peer_id, watched),))
        e = yield self.assertFailure(lone.bootstrap(blacklist=[str(watched)]), BootstrapFailed)
        self.assertFalse(e.timed_out)
        self.assertEqual(factory.accepted, 0)

    @defer.inlineCallbacks
    def test_only_invalid_contacts_time_out(self):
        deaf1, _ = deaf_listener(self)
        deaf2, _ = deaf_listener(self)
        other = make_service(self)
        node = make_service(self, bootstrap_timeout=1.0, handshake_timeout=30, hard_coded_contacts=(
            HardCodedContact(other.peer_id, deaf1), HardCodedContact(other.peer_id, deaf2)))
        start = reactor.seconds()
        e = yield self.assertFailure(node.bootstrap(), BootstrapFailed)
        elapsed = reactor.seconds() - start
        self.assertTrue(e.timed_out)
        self.assertTrue(0.9 <= elapsed < 3, elapsed)
        self.assertEqual(len(node.events.named("bootstrap_failed")), 1)

    @defer.inlineCallbacks
    def test_no_candidates_fails_at_once(self):
        node = make_service(self)
        start = reactor.seconds()
        e = yield self.assertFailure(node.bootstrap(), BootstrapFailed)
        self.assertLess(reactor.seconds() - start, 0.5)
        self.assertFalse(e.timed_out)

    @defer.inlineCallbacks
    def test_deny_reasons_reach_the_requester(self):
        closed = yield self.seed(accept_bootstrap=False)
        node = make_service(self, hard_coded_contacts=(contact(closed),))
        e = yield self.assertFailure(node.bootstrap(), BootstrapFailed)
        self.assertIn("bootstrap-denied", str(e))
        self.assertIn("does not accept bootstrap", str(e))

        picky = yield self.seed(whitelisted_client_ips=("10.9.9.9",))
        node = make_service(self, hard_coded_contacts=(contact(picky),))
        e = yield self.assertFailure(node.bootstrap(role=Role.CLIENT), BootstrapFailed)
        self.assertIn("not-whitelisted", str(e))

        elsewhere = yield self.seed(network_name="other")
        node = make_service(self, hard_coded_contacts=(contact(elsewhere),))
        e = yield self.assertFailure(node.bootstrap(role=Role.CLIENT), BootstrapFailed)
        self.assertIn("network-mismatch", str(e))

    @defer.inlineCallbacks
    def test_unreachable_node_is_denied(self):
        seed = yield self.seed()
        node = make_service(self, hard_coded_contacts=(contact(seed),))
        yield node.start_listening()
        claimed = list(node.listen_addresses)
        for port in node.listeners.ports:
            yield port.stopListening()
        yield node.udp_endpoint.stop()
        node.listen_addresses = claimed  # it still claims the listeners it closed
        e = yield self.assertFailure(node.bootstrap(role=Role.NODE), BootstrapFailed)
        self.assertTrue(e.external_reachability)
        self.assertIn("failed-external-reachability", str(e))
        # as a client it is welcome
        peer = yield node.bootstrap(role=Role.CLIENT)
        self.assertEqual(peer, seed.peer_id)

    @defer.inlineCallbacks
    def test_unreachable_node_joins_as_a_client_by_default(self):
        seed = yield self.seed()
        node = make_service(self, hard_coded_contacts=(contact(seed),))
        yield node.start_listening()
        claimed = list(node.listen_addresses)
        for port in node.listeners.ports:
            yield port.stopListening()
        yield node.udp_endpoint.stop()
        node.listen_addresses = claimed  # it still claims the listeners it closed
        peer = yield node.bootstrap()
        self.assertEqual(peer, seed.peer_id)
        self.assertEqual(node.bootstrapper.held_role, Role.CLIENT)
        self.assertIn("joined as a client", node.bootstrapper.role_reason)
        self.assertIn("failed-external-reachability", node.bootstrapper.role_reason)
        self.assertTrue(node.is_connected(seed.peer_id))  # it keeps the connection
        self.assertEqual(len(node.events.named("bootstrap_connect")), 1)
        self.assertEqual(node.events.named("bootstrap_failed"), [])
        yield wait_for(lambda: seed.events.named("bootstrap_accept"))
        self.assertEqual(seed.events.named("bootstrap_accept"), [(node.peer_id, Role.CLIENT)])

    @defer.inlineCallbacks
    def test_reachable_node_holds_the_node_role(self):
        seed = yield self.seed()
        node = make_service(self, hard_coded_contacts=(contact(seed),))
        yield node.bootstrap()
        self.assertEqual(node.bootstrapper.held_role, Role.NODE)
        self.assertIn("as a node", node.bootstrapper.role_reason)

    @defer.inlineCallbacks
    def test_reachability_test_can_be_turned_off(self):
        seed = yield self.seed(external_reachability_test=False)
        node = make_service(self, hard_coded_contacts=(contact(seed),))
        yield node.start_listening()
        for port in node.listeners.ports:
            yield port.stopListening()
        peer = yield node.bootstrap(role=Role.NODE)
        self.assertEqual(peer, seed.peer_id)

    @defer.inlineCallbacks
    def test_directly_connected_peers_are_cached_but_not_contacts(self):
        import json
        import os

        seed = yield self.seed()
        other = make_service(self)
        data = self.mktemp()
        os.makedirs(data)
        node = make_service(self, data_dir=data, hard_coded_contacts=(contact(seed),))
        yield node.bootstrap(role=Role.CLIENT)
        info = yield node.prepare_connection_info()
        oinfo = yield other.prepare_connection_info()
        yield node.connect(info, oinfo.public)
        [(cached_peer, cached_address)] = node.bootstrap_cached_peers()
        self.assertEqual(cached_peer, other.peer_id)
        self.assertIn(cached_address, other.listen_addresses)  # the TCP or QUIC address that won
        yield node.stopService()  # flushes the cache file
        with open(node.bootstrap_cache.path) as f:
            text = f.read()
        self.assertIn(str(other.peer_id), text)
        self.assertNotIn(str(seed.peer_id), text)
        json.loads(text)

    @defer.inlineCallbacks
    def test_whitelist_change_closes_connections_no_longer_allowed(self):
        seed = yield self.seed()
        node = make_service(self, hard_coded_contacts=(contact(seed),))
        yield node.bootstrap(role=Role.CLIENT)
        yield wait_for(lambda: node.peer_id in seed.peers.active)
        seed.apply_config(seed.config.replace(whitelisted_client_ips=("10.1.2.3",)))
        yield wait_for(lambda: node.events.named("lost_peer"))
        self.assertIn("not-whitelisted", node.events.named("lost_peer")[0][1])
        self.assertEqual(seed.connected_peers(), [])


class TenNodeNetworkTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_ten_nodes_bootstrap_off_one_seed_then_mesh(self):
        seed = make_service(self, accept_bootstrap=True)
        yield seed.start_listening()
        nodes = [make_service(self, hard_coded_contacts=(contact(seed),)) for _ in range(9)]
        durations = []
        for n in nodes:
            start = reactor.seconds()
            peer = yield n.bootstrap(role=Role.NODE)
            durations.append(reactor.seconds() - start)
            self.assertEqual(peer, seed.peer_id)
        everyone = [seed] + nodes
        infos = yield defer.gatherResults([s.prepare_connection_info() for s in everyone])
        connects = []
        for i, s in enumerate(everyone):
            for j, t in enumerate(everyone):
                if i < j:
                    connects.append(s.connect(infos[i], infos[j].public))
        yield defer.gatherResults(connects)
        for s in everyone:
            yield wait_for(lambda s=s: len(s.connected_peers()) == 9)
        for s in everyone:
            for t in everyone:
                if s is not t:
                    for k in range(20):
                        s.send(t.peer_id, b"%s %d" % (s.peer_id.raw[:4].hex().encode(), k), 1)
        for t in everyone:
            yield wait_for(lambda t=t: len(t.events.named("new_message")) == 9 * 20)
            by_sender = {}
            for pid, data in t.events.named("new_message"):
                by_sender.setdefault(pid, []).append(data)
            self.assertEqual(len(by_sender), 9)
            for pid, msgs in by_sender.items():
                self.assertEqual(msgs, [b"%s %d" % (pid.raw[:4].hex().encode(), k) for k in range(20)])
        median = statistics.median(durations)
        print(f"\n10-node bootstrap: median {median * 1000:.1f} ms, max {max(durations) * 1000:.1f} ms")
