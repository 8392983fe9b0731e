"""Learning our server-reflexive addresses and NAT mapping from peers' echoes, on a Clock."""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.candidates import CandidateKind, MappingKind, PortAllocation
from crust.identity import PeerId
from crust.nat.addresses import OurAddresses
from crust.nat.reflexive import ReflexiveDiscovery, describe
from crust.wire import Hello

PEER = PeerId(b"\x05" * 32)
OTHER = PeerId(b"\x06" * 32)
SEED_UDP = Address("udp", "198.51.100.10", 5000)
SEED_TCP = Address("tcp", "198.51.100.10", 4000)
LOCAL_UDP, LOCAL_TCP = 40000, 41000


class FakeEcho:
    def __init__(self, answers):
        self.answers = answers  # destination -> observed address (or an exception)
        self.asked = []

    def echo(self, destination, peer_id):
        self.asked.append((destination, peer_id))
        answer = self.answers.get(destination)
        if answer is None:
            return Deferred()
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


class Result:
    def __init__(self, observed):
        self.observed = observed


class Conn:
    def __init__(self, hello):
        self.handshake = type("H", (), {"peer_hello": hello})()


class ReflexiveTests(SynchronousTestCase):
    def make(self, udp_answers, tcp_answer=None):
        self.clock = Clock()
        self.addresses = OurAddresses(lambda: {"tcp", "udp"})
        self.addresses.listen = [Address("tcp", "10.0.0.2", LOCAL_TCP), Address("udp", "10.0.0.2", LOCAL_UDP)]
        self.echo = FakeEcho(udp_answers)
        self.probes = []

        def probe(address, peer):
            self.probes.append((address, peer))
            return succeed(Result(tcp_answer)) if tcp_answer is not None else Deferred()

        self.changed = []
        self.discovery = ReflexiveDiscovery(self.clock, self.addresses, self.echo, probe,
                                            lambda: (LOCAL_TCP, LOCAL_UDP), lambda: self.changed.append(1))

    def hello(self, echo_alt=5001, udp=SEED_UDP, tcp=SEED_TCP):
        return Hello(network="n", listeners=(tcp, udp), echo_alt=echo_alt)

    def test_one_mapping_for_both_ports_is_endpoint_independent(self):
        seen = Address("udp", "203.0.113.10", LOCAL_UDP)
        self.make({SEED_UDP: seen, Address("udp", SEED_UDP.host, 5001): seen},
                  tcp_answer=Address("tcp", "203.0.113.10", LOCAL_TCP))
        self.discovery.peer_promoted(Conn(self.hello()), PEER)
        self.assertEqual(self.addresses.nat.udp.mapping, MappingKind.EIM)
        self.assertEqual(self.addresses.nat.udp.ports, PortAllocation.PRESERVED)
        self.assertFalse(self.addresses.nat.udp.public)
        self.assertEqual(self.probes, [(SEED_TCP, PEER)])  # from our listening port (the service wires that)
        kinds = {(c.address, c.kind) for c in self.addresses.candidates()}
        self.assertIn((seen, CandidateKind.SRFLX), kinds)
        self.assertIn((Address("tcp", "203.0.113.10", LOCAL_TCP), CandidateKind.SRFLX), kinds)
        self.assertTrue(self.changed)
        self.assertIn("udp eim", describe(self.addresses.nat))

    def test_a_mapping_per_destination_is_symmetric(self):
        self.make({SEED_UDP: Address("udp", "203.0.113.10", 31337),
                   Address("udp", SEED_UDP.host, 5001): Address("udp", "203.0.113.10", 52011)})
        self.discovery.peer_promoted(Conn(self.hello()), PEER)
        self.assertEqual(self.addresses.nat.udp.mapping, MappingKind.EDM)
        self.assertEqual(self.addresses.nat.udp.ports, PortAllocation.RANDOM)

    def test_small_steps_are_sequential(self):
        self.make({SEED_UDP: Address("udp", "203.0.113.10", 31337),
                   Address("udp", SEED_UDP.host, 5001): Address("udp", "203.0.113.10", 31338)})
        self.discovery.peer_promoted(Conn(self.hello()), PEER)
        self.assertEqual(self.addresses.nat.udp.ports, PortAllocation.SEQUENTIAL)
        self.assertEqual(self.addresses.nat.udp.delta, 1)

    def test_seen_at_our_own_address_is_no_nat(self):
        own = Address("udp", "10.0.0.2", LOCAL_UDP)
        self.make({SEED_UDP: own, Address("udp", SEED_UDP.host, 5001): own})
        self.discovery.peer_promoted(Conn(self.hello()), PEER)
        self.assertTrue(self.addresses.nat.udp.public)

    def test_one_destination_says_nothing_of_the_mapping(self):
        self.make({SEED_UDP: Address("udp", "203.0.113.10", LOCAL_UDP)})
        self.discovery.peer_promoted(Conn(self.hello(echo_alt=None)), PEER)
        self.assertEqual(self.addresses.nat.udp.mapping, MappingKind.UNKNOWN)
        self.assertEqual(self.addresses.nat.udp.ports, PortAllocation.PRESERVED)

    def test_private_and_loopback_peers_are_not_asked(self):
        self.make({})
        hello = Hello(network="n", listeners=(Address("udp", "10.1.1.1", 5), Address("tcp", "127.0.0.1", 6)))
        self.discovery.peer_promoted(Conn(hello), PEER)
        self.assertEqual(self.echo.asked, [])
        self.assertEqual(self.probes, [])

    def test_a_peer_is_asked_once_per_refresh_and_few_peers_at_all(self):
        self.make({})
        self.discovery.peer_promoted(Conn(self.hello()), PEER)
        self.discovery.peer_promoted(Conn(self.hello()), PEER)
        self.assertEqual(len(self.echo.asked), 2)  # main and alternate port, once
        for i in range(10):
            self.discovery.peer_promoted(Conn(self.hello()), PeerId(bytes([i + 10]) * 32))
        self.assertEqual(len(self.probes), 3)  # MAX_SOURCES peers
        self.clock.advance(121)
        self.discovery.peer_promoted(Conn(self.hello()), PEER)
        self.assertEqual(len(self.probes), 4)

    def test_failures_leave_what_we_knew(self):
        self.make({SEED_UDP: ConnectionRefusedError("no"), Address("udp", SEED_UDP.host, 5001): TimeoutError()})
        self.discovery.peer_promoted(Conn(self.hello()), PEER)
        self.assertEqual(self.addresses.reflexive(), [])
        self.assertEqual(self.addresses.nat.udp.mapping, MappingKind.UNKNOWN)


class OurAddressesTests(SynchronousTestCase):
    def test_order_and_kinds(self):
        book = OurAddresses(lambda: {"tcp", "udp"})
        book.listen = [Address("tcp", "127.0.0.1", 1), Address("tcp", "10.0.0.2", 1)]
        book.add_reflexive(Address("udp", "203.0.113.1", 9), "echo")
        mapping = type("M", (), {"external": Address("tcp", "203.0.113.1", 7), "internal_port": 1, "method": "pcp"})()
        book.mapping_changed("added", mapping)
        kinds = [(str(c.address), c.kind.value, c.source) for c in book.candidates()]
        self.assertEqual(kinds, [("tcp:203.0.113.1:7", "mapped", "pcp"), ("udp:203.0.113.1:9", "srflx", "echo"),
                                 ("tcp:10.0.0.2:1", "host", "local"), ("tcp:127.0.0.1:1", "host", "local")])
        self.assertEqual(book.listeners(), [Address.parse(k[0]) for k in kinds[:3]])
        book.mapping_changed("removed", mapping)
        self.assertNotIn(Address("tcp", "203.0.113.1", 7), book.addresses())

    def test_reflexive_addresses_are_bounded(self):
        book = OurAddresses(lambda: {"udp"})
        for port in range(1, 100):
            book.add_reflexive(Address("udp", "203.0.113.1", port), "echo")
        self.assertEqual(len(book.reflexive("udp")), 8)
        self.assertEqual(book.reflexive("udp")[-1].port, 99)  # the newest kept

    def test_transports_we_do_not_accept_on_are_left_out(self):
        book = OurAddresses(lambda: {"tcp"})
        book.add_reflexive(Address("udp", "203.0.113.1", 9), "echo")
        self.assertEqual(book.candidates(), [])
