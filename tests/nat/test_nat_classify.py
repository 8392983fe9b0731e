"""
Tests for L{crust.nat.classify}: the pure classification, the driver against
simulated NATs (in memory, on a L{Clock}), and a loopback run against a real
coturn on 127.0.0.1/127.0.0.2.
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from crust.nat import stun
from crust.address import Address
from crust.nat.classify import (
    ECHO,
    ERROR,
    FILTER_CHANGE_IP_PORT,
    FILTER_CHANGE_PORT,
    HAIRPIN,
    MAPPING,
    OK,
    TIMEOUT,
    FilteringBehaviour as Filtering,
    IAddressEchoSource,
    MappingBehaviour as Mapping,
    NatReport,
    Observation,
    Probe,
    StunEchoSource,
    classify,
    classify_nat,
    filtering_behaviour,
    mapping_behaviour,
)
from crust.nat.stun_client import StunClient, StunProtocol, StunTimeout


def udp(host, port):
    return Address("udp", host, port)


# --- pure logic ----------------------------------------------------------------


class MappingBehaviourTests(SynchronousTestCase):
    P1, P2, A1, A2 = udp("192.0.2.1", 3478), udp("192.0.2.1", 3479), udp("192.0.2.2", 3478), udp("192.0.2.2", 3479)
    M1, M2, M3 = udp("203.0.113.1", 5000), udp("203.0.113.1", 5001), udp("203.0.113.1", 5002)

    def test_rfc5780_endpoint_independent(self):
        obs = [Observation(self.P1, self.M1), Observation(self.A1, self.M1), Observation(self.A2, self.M1)]
        self.assertEqual(mapping_behaviour(obs), Mapping.ENDPOINT_INDEPENDENT)

    def test_rfc5780_address_dependent(self):
        obs = [Observation(self.P1, self.M1), Observation(self.A1, self.M2), Observation(self.A2, self.M2)]
        self.assertEqual(mapping_behaviour(obs), Mapping.ADDRESS_DEPENDENT)

    def test_rfc5780_address_and_port_dependent(self):
        obs = [Observation(self.P1, self.M1), Observation(self.A1, self.M2), Observation(self.A2, self.M3)]
        self.assertEqual(mapping_behaviour(obs), Mapping.ADDRESS_AND_PORT_DEPENDENT)

    def test_two_servers(self):
        self.assertEqual(
            mapping_behaviour([Observation(self.P1, self.M1), Observation(self.A1, self.M1)]),
            Mapping.ENDPOINT_INDEPENDENT,
        )
        self.assertEqual(
            mapping_behaviour([Observation(self.P1, self.M1), Observation(self.A1, self.M2)]),
            Mapping.ENDPOINT_DEPENDENT,
        )

    def test_port_dependence_on_one_ip(self):
        self.assertEqual(
            mapping_behaviour([Observation(self.P1, self.M1), Observation(self.P2, self.M2)]),
            Mapping.ADDRESS_AND_PORT_DEPENDENT,
        )

    def test_not_enough(self):
        self.assertEqual(mapping_behaviour([]), Mapping.UNKNOWN)
        self.assertEqual(mapping_behaviour([Observation(self.P1, self.M1)]), Mapping.UNKNOWN)
        self.assertEqual(mapping_behaviour([Observation(self.P1, self.M1)] * 3), Mapping.UNKNOWN)
        # same IP, same mapping: endpoint-independent or address-dependent, cannot tell
        self.assertEqual(
            mapping_behaviour([Observation(self.P1, self.M1), Observation(self.P2, self.M1)]), Mapping.UNKNOWN
        )


class FilteringBehaviourTests(SynchronousTestCase):
    def test_table(self):
        table = [
            (True, None, Filtering.ENDPOINT_INDEPENDENT),
            (True, True, Filtering.ENDPOINT_INDEPENDENT),
            (False, True, Filtering.ADDRESS_DEPENDENT),
            (False, False, Filtering.ADDRESS_AND_PORT_DEPENDENT),
            (None, False, Filtering.ADDRESS_AND_PORT_DEPENDENT),
            (False, None, Filtering.UNKNOWN),
            (None, True, Filtering.UNKNOWN),
            (None, None, Filtering.UNKNOWN),
        ]
        for both, port, expected in table:
            self.assertEqual(filtering_behaviour(both, port), expected, (both, port))


PRIMARY = udp("192.0.2.1", 3478)
ALT = udp("192.0.2.2", 3479)
LOCAL_HOSTS = {"10.0.0.2"}


def ok_probe(test, destination, mapped, source=None, **kw):
    return Probe(test, destination, OK, mapped=mapped, source=source or destination, **kw)


class ClassifyTests(SynchronousTestCase):
    def test_no_nat(self):
        local = udp("10.0.0.2", 5000)
        report = classify([ok_probe(MAPPING, PRIMARY, local)], 5000, LOCAL_HOSTS)
        self.assertEqual((report.behind_nat, report.mapping), (False, Mapping.ENDPOINT_INDEPENDENT))
        self.assertTrue(report.port_preservation)
        self.assertIn("no NAT", " ".join(report.notes))

    def test_local_hosts_unknown(self):
        report = classify([ok_probe(MAPPING, PRIMARY, udp("10.0.0.2", 5000))], 5000, None)
        self.assertIsNone(report.behind_nat)

    def test_udp_blocked(self):
        probes = [Probe(MAPPING, PRIMARY, TIMEOUT), Probe(MAPPING, ALT, TIMEOUT)]
        report = classify(probes, 5000, LOCAL_HOSTS)
        self.assertTrue(report.udp_blocked)
        self.assertEqual((report.mapping, report.filtering), (Mapping.UNKNOWN, Filtering.UNKNOWN))
        self.assertEqual(report.nat_type, "udp blocked")
        self.assertIsNone(report.port_preservation)

    def test_filtering_from_probes(self):
        mapped = udp("203.0.113.1", 5000)
        probes = [
            ok_probe(MAPPING, PRIMARY, mapped),
            Probe(FILTER_CHANGE_IP_PORT, PRIMARY, TIMEOUT, change_ip=True, change_port=True),
            ok_probe(FILTER_CHANGE_PORT, PRIMARY, mapped, source=udp("192.0.2.1", 3479), change_port=True),
        ]
        report = classify(probes, 5000, LOCAL_HOSTS)
        self.assertEqual(report.filtering, Filtering.ADDRESS_DEPENDENT)
        self.assertTrue(report.behind_nat)

    def test_change_request_ignored_by_server(self):
        """An answer from the address we sent to proves nothing about filtering."""
        mapped = udp("203.0.113.1", 5000)
        probes = [
            ok_probe(MAPPING, PRIMARY, mapped),
            ok_probe(FILTER_CHANGE_IP_PORT, PRIMARY, mapped, source=PRIMARY, change_ip=True, change_port=True),
            ok_probe(FILTER_CHANGE_PORT, PRIMARY, mapped, source=PRIMARY, change_port=True),
        ]
        report = classify(probes, 5000, LOCAL_HOSTS)
        self.assertEqual(report.filtering, Filtering.UNKNOWN)
        self.assertIn("ignored CHANGE-REQUEST", " ".join(report.notes))

    def test_silent_other_ip_distrusted(self):
        """When the server's other IP answers nothing, a lost change-IP response proves nothing."""
        mapped = udp("203.0.113.1", 5000)
        probes = [
            ok_probe(MAPPING, PRIMARY, mapped, other_address=ALT),
            Probe(FILTER_CHANGE_IP_PORT, PRIMARY, TIMEOUT, change_ip=True, change_port=True),
            ok_probe(FILTER_CHANGE_PORT, PRIMARY, mapped, source=udp("192.0.2.1", 3479), change_port=True),
            Probe(MAPPING, udp(ALT.host, PRIMARY.port), TIMEOUT),
            Probe(MAPPING, ALT, TIMEOUT),
        ]
        report = classify(probes, 5000, LOCAL_HOSTS)
        self.assertEqual(report.filtering, Filtering.UNKNOWN)
        self.assertIn("other IP never answered", " ".join(report.notes))
        # the same probes with the other IP answering: address-dependent filtering
        answered = probes[:3] + [ok_probe(MAPPING, ALT, mapped)]
        self.assertEqual(classify(answered, 5000, LOCAL_HOSTS).filtering, Filtering.ADDRESS_DEPENDENT)

    def test_filtering_error_is_not_a_timeout(self):
        mapped = udp("203.0.113.1", 5000)
        probes = [
            ok_probe(MAPPING, PRIMARY, mapped),
            Probe(FILTER_CHANGE_IP_PORT, PRIMARY, ERROR, error="420 Unknown Attribute"),
            Probe(FILTER_CHANGE_PORT, PRIMARY, ERROR, error="420 Unknown Attribute"),
        ]
        report = classify(probes, 5000, LOCAL_HOSTS)
        self.assertEqual(report.filtering, Filtering.UNKNOWN)
        self.assertIn("420", " ".join(report.notes))

    def test_hairpin(self):
        mapped = udp("203.0.113.1", 5000)
        base = [ok_probe(MAPPING, PRIMARY, mapped)]
        self.assertIsNone(classify(base, 5000, LOCAL_HOSTS).hairpinning)
        self.assertTrue(classify(base + [Probe(HAIRPIN, mapped, OK)], 5000, LOCAL_HOSTS).hairpinning)
        self.assertFalse(classify(base + [Probe(HAIRPIN, mapped, TIMEOUT)], 5000, LOCAL_HOSTS).hairpinning)
        self.assertIsNone(classify(base + [Probe(HAIRPIN, mapped, ERROR)], 5000, LOCAL_HOSTS).hairpinning)

    def test_unstable_mapping_noted(self):
        probes = [ok_probe(MAPPING, PRIMARY, udp("203.0.113.1", 5000)),
                  ok_probe(MAPPING, PRIMARY, udp("203.0.113.1", 6000))]
        self.assertIn("different mapped addresses over time", " ".join(classify(probes, 5000, LOCAL_HOSTS).notes))

    def test_nat_type_names(self):
        def report(mapping, filtering, behind=True):
            return NatReport(False, behind, mapping, filtering, True, None, 5000)

        self.assertEqual(report(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT).nat_type, "full cone")
        self.assertEqual(report(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT).nat_type, "restricted cone")
        self.assertEqual(
            report(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT).nat_type, "port-restricted cone"
        )
        self.assertEqual(report(Mapping.ADDRESS_DEPENDENT, Filtering.UNKNOWN).nat_type, "symmetric")
        self.assertEqual(report(Mapping.ENDPOINT_DEPENDENT, Filtering.UNKNOWN).nat_type, "symmetric")
        self.assertEqual(
            report(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT, behind=False).nat_type, "open internet"
        )
        self.assertEqual(report(Mapping.UNKNOWN, Filtering.UNKNOWN).nat_type, "unknown")

    def test_json_roundtrip(self):
        mapped = udp("203.0.113.1", 5000)
        probes = [
            ok_probe(MAPPING, PRIMARY, mapped, rtt=0.01, transmissions=1, started=0.0, duration=0.01,
                     other_address=ALT),
            Probe(FILTER_CHANGE_IP_PORT, PRIMARY, TIMEOUT, started=0.01, duration=5.5, error="timeout"),
            Probe(HAIRPIN, mapped, OK, started=6.0, duration=0.02),
        ]
        report = classify(probes, 5000, LOCAL_HOSTS, duration=6.02)
        text = report.to_json()
        data = json.loads(text)
        self.assertEqual(data["mapping"], "unknown")
        self.assertEqual(data["probes"][0]["mapped"], "udp:203.0.113.1:5000")
        self.assertEqual(data["probes"][1]["duration"], 5.5)
        self.assertEqual(NatReport.from_dict(data), report)


# --- the driver against simulated NATs -----------------------------------------------


class SimNetwork:
    """Delivers datagrams between simulated hosts after a fixed latency."""

    def __init__(self, clock, latency=0.005):
        self.clock = clock
        self.latency = latency
        self.hosts = {}

    def attach(self, ip, handler):
        self.hosts[ip] = handler

    def send(self, src, dst, data):
        handler = self.hosts.get(dst[0])
        if handler is not None:
            self.clock.callLater(self.latency, handler, data, src, dst)


class SimStunServer:
    """An RFC 5780 STUN server on two IPs and two ports."""

    def __init__(self, net, primary_ip, alt_ip, ports=(3478, 3479), rfc5780=True, honour_change=True):
        self.net = net
        self.ips = (primary_ip, alt_ip)
        self.ports = ports
        self.rfc5780 = rfc5780
        self.honour_change = honour_change
        self.requests = []
        for ip in self.ips:
            net.attach(ip, self.receive)

    @property
    def primary(self):
        return udp(self.ips[0], self.ports[0])

    def _other(self, value, pair):
        return pair[1] if value == pair[0] else pair[0]

    def receive(self, data, src, dst):
        if dst[1] not in self.ports:
            return
        request = stun.decode(data)
        self.requests.append((dst, request))
        change = request.get(stun.CHANGE_REQUEST)
        if change is not None and not self.rfc5780:
            error = stun.make_binding_error(request, 420, "Unknown Attribute",
                                            unknown_attributes=(stun.CHANGE_REQUEST,))
            self.net.send(dst, src, stun.encode(error))
            return
        ip, port = dst
        if change is not None and self.honour_change:
            if change.change_ip:
                ip = self._other(ip, self.ips)
            if change.change_port:
                port = self._other(port, self.ports)
        extra = {}
        if self.rfc5780:
            extra = dict(
                response_origin=udp(ip, port),
                other_address=udp(self._other(dst[0], self.ips), self._other(dst[1], self.ports)),
            )
        response = stun.make_binding_success(request, udp(*src), **extra)
        self.net.send((ip, port), src, stun.encode(response, fingerprint=True))


class SimNat:
    """A NAT with RFC 4787 mapping and filtering behaviour, in front of one client socket."""

    def __init__(self, net, public_ip, internal, inside, mapping, filtering, hairpin=False, preserve_port=True):
        self.net = net
        self.public_ip = public_ip
        self.internal = internal
        self.inside = inside  # inside(data, src): deliver to the client
        self.mapping = mapping
        self.filtering = filtering
        self.hairpin = hairpin
        self.preserve_port = preserve_port
        self.ports = {}
        self.used = set()
        self.permissions = set()
        self.next_port = 40000
        net.attach(public_ip, self.inbound)

    def outbound(self, data, dst):
        key = {
            Mapping.ENDPOINT_INDEPENDENT: (),
            Mapping.ADDRESS_DEPENDENT: (dst[0],),
            Mapping.ADDRESS_AND_PORT_DEPENDENT: tuple(dst),
        }[self.mapping]
        port = self.ports.get(key)
        if port is None:
            if self.preserve_port and self.internal[1] not in self.used:
                port = self.internal[1]
            else:
                port, self.next_port = self.next_port, self.next_port + 1
            self.ports[key] = port
            self.used.add(port)
        self.permissions.add((port, dst[0], dst[1]))
        if dst[0] == self.public_ip and not self.hairpin:
            return
        self.net.send((self.public_ip, port), tuple(dst), data)

    def inbound(self, data, src, dst):
        port = dst[1]
        if port not in self.used:
            return
        if self.filtering == Filtering.ADDRESS_DEPENDENT:
            allowed = any(p == port and ip == src[0] for p, ip, _ in self.permissions)
        elif self.filtering == Filtering.ADDRESS_AND_PORT_DEPENDENT:
            allowed = (port, src[0], src[1]) in self.permissions
        else:
            allowed = True
        if allowed:
            self.inside(data, src)


@implementer(IAddressEchoSource)
class FixedEcho:
    """A stand-in for a crust peer that echoes an address after a delay (or fails)."""

    def __init__(self, clock, destination, answer=None, error=None):
        self.clock = clock
        self.destination = destination
        self.answer = answer
        self.error = error
        self.sockets = []

    def echo(self, local_socket):
        self.sockets.append(local_socket)

        def reply():
            if self.error is not None:
                raise self.error
            return self.answer

        return deferLater(self.clock, 0.05, reply)


LOCAL = ("10.0.0.2", 5000)
PUBLIC_IP = "203.0.113.1"


class DriverTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.net = SimNetwork(self.clock)
        self.server = SimStunServer(self.net, "192.0.2.1", "192.0.2.2")

    def behind_nat(self, mapping, filtering, **kw):
        holder = []
        nat = SimNat(
            self.net, PUBLIC_IP, LOCAL, lambda data, src: holder[0].datagram_received(data, src),
            mapping, filtering, **kw
        )
        client = StunClient(lambda data, addr: nat.outbound(data, addr), self.clock)
        holder.append(client)
        return client

    def drive(self, client, servers=None, **kw):
        kw.setdefault("local_hosts", {LOCAL[0]})
        d = classify_nat(self.clock, client, servers or [self.server.primary], LOCAL[1], **kw)
        for _ in range(10000):
            calls = self.clock.getDelayedCalls()
            if not calls:
                break
            self.clock.advance(max(0.0, min(c.getTime() for c in calls) - self.clock.seconds()))
        return self.successResultOf(d)

    def test_every_rfc4787_combination(self):
        for mapping in (Mapping.ENDPOINT_INDEPENDENT, Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT):
            for filtering in (
                Filtering.ENDPOINT_INDEPENDENT,
                Filtering.ADDRESS_DEPENDENT,
                Filtering.ADDRESS_AND_PORT_DEPENDENT,
            ):
                self.setUp()
                report = self.drive(self.behind_nat(mapping, filtering))
                self.assertEqual((report.mapping, report.filtering), (mapping, filtering), report.to_json())
                self.assertTrue(report.behind_nat)
                self.assertFalse(report.udp_blocked)
                self.assertTrue(report.port_preservation)
                self.assertFalse(report.hairpinning)
                self.assertEqual(report.external_addresses[0], udp(PUBLIC_IP, 5000))
                self.assertLess(report.duration, 20)

    def test_probe_records(self):
        report = self.drive(self.behind_nat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT))
        tests = [(p.test, p.outcome) for p in report.probes]
        self.assertEqual(tests[0], (MAPPING, OK))
        self.assertEqual(sorted(tests[1:3]), [(FILTER_CHANGE_IP_PORT, TIMEOUT), (FILTER_CHANGE_PORT, TIMEOUT)])
        self.assertEqual(sorted(tests[3:5]), [(MAPPING, OK), (MAPPING, OK)])
        self.assertEqual(tests[-1], (HAIRPIN, TIMEOUT))
        first = report.probes[0]
        self.assertEqual((first.rtt, first.transmissions, first.started), (0.01, 1, 0.0))
        self.assertEqual(first.other_address, udp("192.0.2.2", 3479))
        filter_probe = report.probes[1]
        self.assertEqual(filter_probe.duration, 5.5)  # rc=4, rm=4, rto=0.5
        self.assertEqual(filter_probe.transmissions, 4)
        starts = [p.started for p in report.probes]
        self.assertEqual(starts, sorted(starts))
        # nothing reached the server's other address before the filtering tests ended
        first_alt = min(i for i, (dst, _) in enumerate(self.server.requests) if dst[0] == "192.0.2.2")
        changes = [i for i, (_, r) in enumerate(self.server.requests) if r.get(stun.CHANGE_REQUEST)]
        self.assertGreater(first_alt, max(changes))

    def test_port_not_preserved(self):
        report = self.drive(
            self.behind_nat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT, preserve_port=False)
        )
        self.assertFalse(report.port_preservation)
        self.assertEqual(report.external_addresses, (udp(PUBLIC_IP, 40000),))

    def test_hairpinning(self):
        report = self.drive(self.behind_nat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT, hairpin=True))
        self.assertTrue(report.hairpinning)
        self.assertEqual(report.nat_type, "full cone")

    def test_hairpin_skipped(self):
        report = self.drive(self.behind_nat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT),
                            hairpin=False)
        self.assertIsNone(report.hairpinning)
        self.assertNotIn(HAIRPIN, [p.test for p in report.probes])

    def test_no_nat(self):
        public = ("198.51.100.20", 5000)
        client = StunClient(lambda data, addr: self.net.send(public, addr, data), self.clock)
        self.net.attach(public[0], lambda data, src, dst: client.datagram_received(data, src))
        report = self.drive(client, local_hosts={public[0]})
        self.assertFalse(report.behind_nat)
        self.assertEqual((report.mapping, report.filtering),
                         (Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT))
        self.assertEqual(report.nat_type, "open internet")
        self.assertTrue(report.hairpinning)

    def test_udp_blocked(self):
        client = StunClient(lambda data, addr: None, self.clock)
        second = udp("192.0.2.50", 3478)
        report = self.drive(client, servers=[self.server.primary, second])
        self.assertTrue(report.udp_blocked)
        self.assertEqual([(p.test, p.outcome) for p in report.probes], [(MAPPING, TIMEOUT), (MAPPING, TIMEOUT)])
        self.assertEqual(report.duration, 11.0)

    def test_first_server_dead(self):
        dead = udp("192.0.2.99", 3478)
        report = self.drive(
            self.behind_nat(Mapping.ADDRESS_DEPENDENT, Filtering.ADDRESS_DEPENDENT), servers=[dead, self.server.primary]
        )
        self.assertEqual(report.probes[0].outcome, TIMEOUT)
        self.assertEqual((report.mapping, report.filtering), (Mapping.ADDRESS_DEPENDENT, Filtering.ADDRESS_DEPENDENT))

    def test_plain_stun_servers_compare_mappings(self):
        """Without RFC 5780, two servers on different IPs still reveal the mapping (not the filtering)."""
        self.net = SimNetwork(self.clock)
        a = SimStunServer(self.net, "192.0.2.1", "192.0.2.2", rfc5780=False)
        b = SimStunServer(self.net, "198.51.100.1", "198.51.100.2", rfc5780=False)
        for mapping, expected in [
            (Mapping.ENDPOINT_INDEPENDENT, Mapping.ENDPOINT_INDEPENDENT),
            (Mapping.ADDRESS_AND_PORT_DEPENDENT, Mapping.ENDPOINT_DEPENDENT),
        ]:
            self.clock = Clock()
            self.net.clock = self.clock
            report = self.drive(self.behind_nat(mapping, Filtering.ADDRESS_DEPENDENT), servers=[a.primary, b.primary])
            self.assertEqual(report.mapping, expected)
            self.assertEqual(report.filtering, Filtering.UNKNOWN)
            self.assertIn("no server offered RFC 5780", " ".join(report.notes))

    def test_server_ignoring_change_request(self):
        self.net = SimNetwork(self.clock)
        self.server = SimStunServer(self.net, "192.0.2.1", "192.0.2.2", honour_change=False)
        report = self.drive(self.behind_nat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT))
        self.assertEqual(report.filtering, Filtering.UNKNOWN)
        self.assertEqual(report.mapping, Mapping.ENDPOINT_INDEPENDENT)
        self.assertIn("ignored CHANGE-REQUEST", " ".join(report.notes))

    def test_echo_sources(self):
        """Echo sources add observations; a failing one is recorded, not fatal."""
        peer = udp("198.51.100.77", 4242)
        good = FixedEcho(self.clock, peer, answer=udp(PUBLIC_IP, 5000))
        bad = FixedEcho(self.clock, udp("198.51.100.78", 4242), error=RuntimeError("peer went away"))
        client = self.behind_nat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT)
        report = self.drive(client, echo_sources=[good, bad])
        echoes = [p for p in report.probes if p.test == ECHO]
        self.assertEqual([(p.destination, p.outcome) for p in echoes], [(peer, OK), (bad.destination, ERROR)])
        self.assertIn("peer went away", echoes[1].error)
        self.assertEqual(good.sockets, [client])
        self.assertEqual(report.mapping, Mapping.ENDPOINT_INDEPENDENT)

    def test_echo_source_reveals_dependence(self):
        """A peer that saw another mapped address makes the mapping endpoint-dependent."""
        self.net = SimNetwork(self.clock)
        plain = SimStunServer(self.net, "192.0.2.1", "192.0.2.2", rfc5780=False)
        peer = FixedEcho(self.clock, udp("198.51.100.77", 4242), answer=udp(PUBLIC_IP, 40123))
        report = self.drive(
            self.behind_nat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT),
            servers=[plain.primary],
            echo_sources=[peer],
        )
        self.assertEqual(report.mapping, Mapping.ENDPOINT_DEPENDENT)

    def test_stun_echo_source(self):
        source = StunEchoSource(self.server.primary)
        self.assertTrue(verifyObject(IAddressEchoSource, source))
        client = self.behind_nat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT)
        d = source.echo(client)
        self.clock.advance(0.005)  # to the server
        self.clock.advance(0.005)  # and back
        self.assertEqual(self.successResultOf(d), udp(PUBLIC_IP, 5000))


# --- coturn on loopback ----------------------------------------------------------------


def _free_port_pair(hosts):
    """A port p such that p and p+1 are free for UDP on every host (checked by binding; racy but brief)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        sockets = []
        try:
            for host in hosts:
                for p in (port, port + 1):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sockets.append(s)
                    s.bind((host, p))
            return port
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no free UDP port pair on {hosts}")


class CoturnLoopbackTests(TestCase):
    """
    A real coturn (turnserver) listening on 127.0.0.1 and 127.0.0.2 only,
    STUN only, with an alternate port, so RFC 5780 tests work.  On loopback
    there is no NAT: endpoint-independent mapping and filtering.
    """

    timeout = 60

    def setUp(self):
        self.turnserver = shutil.which("turnserver")
        if self.turnserver is None:
            raise SkipTest("turnserver (coturn) is not installed: apt-get install coturn to run these tests")
        self.tmp = tempfile.mkdtemp(prefix="crust-coturn-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        port = _free_port_pair(["127.0.0.1", "127.0.0.2"])
        self.primary = udp("127.0.0.1", port)
        self.alt_port = port + 1
        config = os.path.join(self.tmp, "turnserver.conf")
        with open(config, "w") as f:
            f.write(
                "\n".join(
                    [
                        "listening-ip=127.0.0.1",
                        "listening-ip=127.0.0.2",
                        "relay-ip=127.0.0.1",
                        f"listening-port={port}",
                        f"alt-listening-port={self.alt_port}",
                        "stun-only",
                        "no-cli",
                        "no-tls",
                        "no-dtls",
                        "no-tcp",
                        "fingerprint",
                        f"log-file={os.path.join(self.tmp, 'turnserver.log')}",
                        "simple-log",
                        "no-stdout-log",
                        f"pidfile={os.path.join(self.tmp, 'turnserver.pid')}",
                        f"userdb={os.path.join(self.tmp, 'turndb')}",
                        "",
                    ]
                )
            )
        self.log_path = os.path.join(self.tmp, "turnserver.log")
        self.process = subprocess.Popen(
            [self.turnserver, "-c", config],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(self._stop_turnserver)
        self.protocol = StunProtocol(reactor, rto=0.1, rc=4, rm=4)
        listening = reactor.listenUDP(0, self.protocol, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.local = self.protocol.local_address()
        return self._wait_ready()

    def _stop_turnserver(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def _log_tail(self):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-15:])
        except OSError:
            return "(no log)"

    async def _wait_ready(self):
        """Poll with Binding requests for up to 10 s until coturn answers."""
        for _ in range(20):
            if self.process.poll() is not None:
                self.fail(f"turnserver exited with {self.process.returncode}:\n{self._log_tail()}")
            try:
                await self.protocol.binding_request(self.primary, rto=0.1, rc=3, rm=2)
                return
            except StunTimeout:
                pass
        self.fail(f"turnserver did not answer on {self.primary} within 10 s:\n{self._log_tail()}")

    async def test_binding(self):
        result = await self.protocol.binding_request(self.primary)
        self.assertEqual(result.mapped_address, self.local)
        self.assertEqual(result.source, self.primary)
        self.assertEqual(result.response_origin, self.primary)
        self.assertEqual(result.other_address, udp("127.0.0.2", self.alt_port))
        self.assertIn("Coturn", result.software or "")

    async def test_change_request(self):
        both = await self.protocol.binding_request(self.primary, change_ip=True, change_port=True)
        self.assertEqual(both.source, udp("127.0.0.2", self.alt_port))
        self.assertEqual(both.mapped_address, self.local)
        port_only = await self.protocol.binding_request(self.primary, change_port=True)
        self.assertEqual(port_only.source, udp("127.0.0.1", self.alt_port))

    async def test_classification(self):
        report = await classify_nat(
            reactor, self.protocol.client, [self.primary], self.local.port, rto=0.1, hairpin_timeout=1.0
        )
        self.assertFalse(report.udp_blocked, report.to_json())
        self.assertFalse(report.behind_nat, report.to_json())
        self.assertEqual(report.mapping, Mapping.ENDPOINT_INDEPENDENT)
        self.assertEqual(report.filtering, Filtering.ENDPOINT_INDEPENDENT, report.to_json())
        self.assertTrue(report.port_preservation)
        self.assertTrue(report.hairpinning)
        self.assertEqual(report.external_addresses, (self.local,))
        self.assertEqual(report.nat_type, "open internet")
        by_test = {}
        for p in report.probes:
            by_test.setdefault(p.test, []).append(p)
        self.assertEqual(len(by_test[MAPPING]), 3)  # test I, other IP, other IP and port
        self.assertEqual({p.destination for p in by_test[MAPPING]},
                         {self.primary, udp("127.0.0.2", self.primary.port), udp("127.0.0.2", self.alt_port)})
        self.assertTrue(all(p.ok for p in report.probes), report.to_json())
        self.assertLess(report.duration, 10)
        json.loads(report.to_json())
