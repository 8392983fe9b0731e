"""
NAT behaviour discovery: RFC 4787 mapping and filtering classes, port
preservation, hairpinning, measured with the tests of RFC 5780.

Pure part: L{classify} turns a list of L{Probe} results into a L{NatReport}
(with L{mapping_behaviour} and L{filtering_behaviour} doing the reasoning).
Driver: L{classify_nat} runs the probes through a L{StunClient} on the socket
being classified.  Other sources of "this is how you look from here" (crust
peers echoing our address) plug in as L{IAddressEchoSource}.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Iterable, Optional, Sequence

import ifaddr
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from zope.interface import Attribute as InterfaceAttribute
from zope.interface import Interface, implementer

from crust.address import Address
from crust.nat.stun_client import BindingResult, StunClient, StunError, StunTimeout

log = Logger()


class MappingBehaviour(str, enum.Enum):
    """RFC 4787 section 4.1 mapping behaviour."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    # The mapping changes with the destination address; whether it also
    # changes with the port alone was not measured.
    ENDPOINT_DEPENDENT = "endpoint-dependent"
    UNKNOWN = "unknown"


class FilteringBehaviour(str, enum.Enum):
    """RFC 4787 section 5 filtering behaviour."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNKNOWN = "unknown"


# Probe.test values
MAPPING = "mapping"  # a Binding request; its mapped address is an observation
ECHO = "echo"  # an IAddressEchoSource; its answer is an observation
FILTER_CHANGE_IP_PORT = "filter-change-ip-port"  # RFC 5780 4.4 test II
FILTER_CHANGE_PORT = "filter-change-port"  # RFC 5780 4.4 test III
HAIRPIN = "hairpin"  # a request to our own mapped address

# Probe.outcome values
OK = "ok"
TIMEOUT = "timeout"
ERROR = "error"


@dataclass(frozen=True)
class Probe:
    """
    One probe and what came of it.  C{started} is seconds since the
    classification began, C{duration} how long the probe took.
    """

    test: str
    destination: Address
    outcome: str
    started: float = 0.0
    duration: float = 0.0
    change_ip: bool = False
    change_port: bool = False
    mapped: Optional[Address] = None
    source: Optional[Address] = None
    response_origin: Optional[Address] = None
    other_address: Optional[Address] = None
    rtt: Optional[float] = None
    transmissions: int = 0
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for name in Probe.__dataclass_fields__:
            value = getattr(self, name)
            d[name] = str(value) if isinstance(value, Address) else value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Probe":
        kw = dict(d)
        for name in ("destination", "mapped", "source", "response_origin", "other_address"):
            if kw.get(name) is not None:
                kw[name] = Address.parse(kw[name])
        return cls(**kw)


@dataclass(frozen=True)
class Observation:
    """Traffic to C{destination} appeared to come from C{mapped}."""

    destination: Address
    mapped: Address


@dataclass(frozen=True)
class NatReport:
    """What the probes say about the NAT(s) between this socket and the internet."""

    udp_blocked: bool
    behind_nat: Optional[bool]
    mapping: MappingBehaviour
    filtering: FilteringBehaviour
    port_preservation: Optional[bool]
    hairpinning: Optional[bool]
    local_port: int
    external_addresses: tuple[Address, ...] = ()
    probes: tuple[Probe, ...] = ()
    notes: tuple[str, ...] = ()
    duration: float = 0.0

    @property
    def nat_type(self) -> str:
        """The RFC 3489 name, for people: "full cone", "symmetric", ..."""
        if self.udp_blocked:
            return "udp blocked"
        if self.behind_nat is False and self.filtering == FilteringBehaviour.ENDPOINT_INDEPENDENT:
            return "open internet"
        if self.mapping in (
            MappingBehaviour.ADDRESS_DEPENDENT,
            MappingBehaviour.ADDRESS_AND_PORT_DEPENDENT,
            MappingBehaviour.ENDPOINT_DEPENDENT,
        ):
            return "symmetric"
        if self.mapping == MappingBehaviour.ENDPOINT_INDEPENDENT:
            return {
                FilteringBehaviour.ENDPOINT_INDEPENDENT: "full cone",
                FilteringBehaviour.ADDRESS_DEPENDENT: "restricted cone",
                FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT: "port-restricted cone",
            }.get(self.filtering, "cone (filtering unknown)")
        return "unknown"

    def to_dict(self) -> dict[str, Any]:
        return {
            "nat_type": self.nat_type,
            "udp_blocked": self.udp_blocked,
            "behind_nat": self.behind_nat,
            "mapping": self.mapping.value,
            "filtering": self.filtering.value,
            "port_preservation": self.port_preservation,
            "hairpinning": self.hairpinning,
            "local_port": self.local_port,
            "external_addresses": [str(a) for a in self.external_addresses],
            "probes": [p.to_dict() for p in self.probes],
            "notes": list(self.notes),
            "duration": self.duration,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NatReport":
        return cls(
            udp_blocked=d["udp_blocked"],
            behind_nat=d["behind_nat"],
            mapping=MappingBehaviour(d["mapping"]),
            filtering=FilteringBehaviour(d["filtering"]),
            port_preservation=d["port_preservation"],
            hairpinning=d["hairpinning"],
            local_port=d["local_port"],
            external_addresses=tuple(Address.parse(a) for a in d["external_addresses"]),
            probes=tuple(Probe.from_dict(p) for p in d["probes"]),
            notes=tuple(d["notes"]),
            duration=d["duration"],
        )


# --- pure classification ----------------------------------------------------


def mapping_behaviour(observations: Iterable[Observation]) -> MappingBehaviour:
    """
    The mapping class implied by what several destinations saw.

    Two destinations on different IPs that saw the same mapped address show
    endpoint-independent mapping; different mapped addresses for two ports
    of one IP show address-and-port dependence; different addresses across
    IPs but the same across ports of one IP show address dependence.  Any
    observed dependence wins over agreement elsewhere.
    """
    distinct = list(dict.fromkeys(observations))
    address_dependent = port_dependent = same_ip_agree = other_ip_agree = False
    for a, b in combinations(distinct, 2):
        if a.destination == b.destination:
            continue
        agree = a.mapped == b.mapped
        if a.destination.host == b.destination.host:
            if agree:
                same_ip_agree = True
            else:
                port_dependent = True
        elif agree:
            other_ip_agree = True
        else:
            address_dependent = True
    if port_dependent:
        return MappingBehaviour.ADDRESS_AND_PORT_DEPENDENT
    if address_dependent:
        return MappingBehaviour.ADDRESS_DEPENDENT if same_ip_agree else MappingBehaviour.ENDPOINT_DEPENDENT
    if other_ip_agree:
        return MappingBehaviour.ENDPOINT_INDEPENDENT
    return MappingBehaviour.UNKNOWN


def filtering_behaviour(change_ip_and_port: Optional[bool], change_port: Optional[bool]) -> FilteringBehaviour:
    """
    RFC 5780 section 4.4: did a response sent from the other IP and port
    (test II), and one from the other port of the same IP (test III), get
    through?  C{None} means not measured.
    """
    if change_ip_and_port is True:
        return FilteringBehaviour.ENDPOINT_INDEPENDENT
    if change_port is False:
        return FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT
    if change_ip_and_port is False and change_port is True:
        return FilteringBehaviour.ADDRESS_DEPENDENT
    return FilteringBehaviour.UNKNOWN


def classify(
    probes: Sequence[Probe],
    local_port: int,
    local_hosts: Optional[Iterable[str]] = None,
    duration: float = 0.0,
) -> NatReport:
    """
    Build the report from probe results.

    @param local_port: the port of the socket the probes were sent from.
    @param local_hosts: the host's own IP addresses; C{None} when unknown
        (then C{behind_nat} is C{None} too).
    """
    probes = tuple(probes)
    notes: list[str] = []
    observations = [
        Observation(p.destination, p.mapped)
        for p in probes
        if p.ok and p.test in (MAPPING, ECHO) and p.mapped is not None
    ]
    external = tuple(dict.fromkeys(o.mapped for o in observations))
    answered = any(p.ok for p in probes if p.test != HAIRPIN)
    udp_blocked = bool(probes) and not answered

    behind_nat: Optional[bool] = None
    if observations and local_hosts is not None:
        hosts = set(local_hosts)
        behind_nat = not any(o.mapped.host in hosts and o.mapped.port == local_port for o in observations)

    if behind_nat is False:
        mapping = MappingBehaviour.ENDPOINT_INDEPENDENT
        notes.append("mapped address is a local address: no NAT")
    else:
        mapping = mapping_behaviour(observations)
        if mapping == MappingBehaviour.UNKNOWN and observations:
            notes.append("mapping not determined: needs answers from at least two destination IPs")
    for destination in dict.fromkeys(o.destination for o in observations):
        if len({o.mapped for o in observations if o.destination == destination}) > 1:
            notes.append(f"{destination} saw different mapped addresses over time")

    change_both = _filter_result(probes, FILTER_CHANGE_IP_PORT, notes)
    if change_both is False and _other_ip_silent(probes):
        # A server that cannot send from its other IP looks like a filtering NAT.
        notes.append("the server's other IP never answered: its change-IP test is not trusted")
        change_both = None
    change_port = _filter_result(probes, FILTER_CHANGE_PORT, notes)
    filtering = filtering_behaviour(change_both, change_port)
    if filtering == FilteringBehaviour.UNKNOWN and not udp_blocked:
        if not any(p.test in (FILTER_CHANGE_IP_PORT, FILTER_CHANGE_PORT) for p in probes):
            notes.append("filtering not tested: no server offered RFC 5780 (OTHER-ADDRESS)")

    port_preservation = observations[0].mapped.port == local_port if observations else None

    hairpin = [p for p in probes if p.test == HAIRPIN]
    hairpinning = None
    if hairpin:
        hairpinning = any(p.ok for p in hairpin)
        if not any(p.outcome in (OK, TIMEOUT) for p in hairpin):
            hairpinning = None
    if udp_blocked:
        notes.append("no answer from any server: UDP blocked (or every server down)")
    return NatReport(
        udp_blocked=udp_blocked,
        behind_nat=behind_nat,
        mapping=mapping if not udp_blocked else MappingBehaviour.UNKNOWN,
        filtering=filtering,
        port_preservation=port_preservation,
        hairpinning=hairpinning,
        local_port=local_port,
        external_addresses=external,
        probes=probes,
        notes=tuple(notes),
        duration=duration,
    )


def _other_ip_silent(probes: Sequence[Probe]) -> bool:
    """True when mapping probes went to a server's OTHER-ADDRESS IP and none was answered."""
    other_hosts = {p.other_address.host for p in probes if p.ok and p.other_address is not None}
    to_other = [p for p in probes if p.test == MAPPING and p.destination.host in other_hosts]
    return bool(to_other) and not any(p.ok for p in to_other)


def _filter_result(probes: Sequence[Probe], test: str, notes: list[str]) -> Optional[bool]:
    """True/False when a filtering test got through or timed out; None when not measured."""
    results = []
    for p in probes:
        if p.test != test:
            continue
        if p.outcome == TIMEOUT:
            results.append(False)
        elif p.outcome == OK and p.source is not None:
            if test == FILTER_CHANGE_IP_PORT:
                honoured = p.source.host != p.destination.host and p.source.port != p.destination.port
            else:
                honoured = p.source.host == p.destination.host and p.source.port != p.destination.port
            if honoured:
                results.append(True)
            else:
                notes.append(f"{p.destination} ignored CHANGE-REQUEST (answered from {p.source}): {test} not measured")
        elif p.outcome == ERROR:
            notes.append(f"{test} to {p.destination} failed: {p.error}")
    if True in results:
        return True
    if False in results:
        return False
    return None


# --- pluggable echo sources -------------------------------------------------


class IAddressEchoSource(Interface):
    """Something that tells us the address our traffic appears to come from."""

    destination = InterfaceAttribute("The L{Address} the echo request goes to.")

    def echo(local_socket):
        """
        Ask for our address as seen by C{destination}, for traffic sent from
        C{local_socket} (the L{StunClient} of the socket being classified).

        @return: a Deferred firing with an L{Address}.
        """


@implementer(IAddressEchoSource)
class StunEchoSource:
    """A STUN server as an echo source."""

    def __init__(self, destination: Address) -> None:
        self.destination = destination

    def echo(self, local_socket: StunClient) -> "Deferred[Address]":
        return local_socket.binding_request(self.destination).addCallback(lambda r: r.mapped_address)


# --- driver -----------------------------------------------------------------


def classify_nat(
    reactor: Any,
    stun_client: StunClient,
    servers: Sequence[Address],
    local_port: int,
    *,
    local_hosts: Optional[Iterable[str]] = None,
    echo_sources: Iterable[Any] = (),
    hairpin: bool = True,
    hairpin_timeout: float = 2.0,
    rto: Optional[float] = None,
    rc: int = 4,
    rm: float = 4,
    filter_socket: Optional[bool] = None,
) -> "Deferred[NatReport]":
    """
    Classify the NAT in front of the socket C{stun_client} sends through.

      1. Test I: a Binding request to each server in turn until one answers
         (the primary).  None answers: UDP blocked.
      2. If the primary returned OTHER-ADDRESS on another IP, the filtering
         tests of RFC 5780 section 4.4: requests asking the primary to answer
         from its other IP and port, and from its other port (in parallel).
         They go from a fresh socket of their own (C{filter_socket}; default:
         when the reactor can open one), which has sent to nothing else, so
         no filter toward the other address is open.  And the answers a
         filtering NAT drops never touch the classified socket's mapping: on
         Linux a dropped inbound packet leaves a conntrack entry that makes
         the NAT give that socket a new port toward the other address, which
         would read as an address-dependent mapping.
      3. Mapping: requests to the primary's other IP (primary port and other
         port), the remaining servers and the echo sources, in parallel; the
         mapped addresses are compared (L{mapping_behaviour}).
      4. Hairpinning (when C{hairpin}): a request to our own mapped address.

    @param local_port: the port of the socket being classified.
    @param local_hosts: this host's IP addresses; C{None}: read from the
        network interfaces (C{ifaddr}).
    @param echo_sources: L{IAddressEchoSource} providers.
    @param rto: per-probe schedule; C{None} uses the client's RTO.  Probes
        that time out are expected results here, so the default C{rc=4},
        C{rm=4} bounds each at 5.5 s with a 0.5 s RTO.
    """
    if local_hosts is None:
        local_hosts = interface_addresses()
    return ensureDeferred(
        _Classifier(
            reactor,
            stun_client,
            list(servers),
            local_port,
            set(local_hosts),
            list(echo_sources),
            hairpin,
            hairpin_timeout,
            dict(rto=rto, rc=rc, rm=rm),
            hasattr(reactor, "listenUDP") if filter_socket is None else filter_socket,
        ).run()
    )


def interface_addresses() -> set[str]:
    """The IP addresses of this host's interfaces."""
    hosts = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            host = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            hosts.add(host.split("%", 1)[0])
    return hosts


class _Classifier:
    def __init__(
        self,
        reactor: Any,
        client: StunClient,
        servers: list[Address],
        local_port: int,
        local_hosts: set[str],
        echo_sources: list[Any],
        hairpin: bool,
        hairpin_timeout: float,
        schedule: dict[str, Any],
        filter_socket: bool = False,
    ) -> None:
        self.reactor = reactor
        self.client = client
        self.filter_socket = filter_socket
        self.servers = servers
        self.local_port = local_port
        self.local_hosts = local_hosts
        self.echo_sources = echo_sources
        self.hairpin = hairpin
        self.hairpin_timeout = hairpin_timeout
        self.schedule = {k: v for k, v in schedule.items() if v is not None}
        self.probes: list[Probe] = []
        self.start = 0.0

    async def run(self) -> NatReport:
        self.start = self.reactor.seconds()
        log.info(
            "classifying NAT for local port {port} with {n} STUN servers", port=self.local_port, n=len(self.servers)
        )
        primary: Optional[Probe] = None
        remaining: list[Address] = []
        for i, server in enumerate(self.servers):
            probe = await self._binding(MAPPING, server)
            if probe.ok:
                primary, remaining = probe, self.servers[i + 1 :]
                break

        alt = primary.other_address if primary is not None else None
        if primary is not None and alt is not None and alt.family_is_v6 != primary.destination.family_is_v6:
            alt = None
        if primary is not None and alt is not None and alt.host != primary.destination.host:
            client, port = self.client, None
            if self.filter_socket:
                from crust.nat.stun_client import StunProtocol

                proto = StunProtocol(self.reactor)
                try:
                    port = self.reactor.listenUDP(0, proto)
                    client = proto.client
                except Exception as e:  # no fresh socket: test from the classified one
                    log.warn("NAT classification: no fresh socket for the filtering tests: {error}", error=str(e))
            try:
                await gatherResults(
                    [
                        Deferred.fromCoroutine(
                            self._binding(FILTER_CHANGE_IP_PORT, primary.destination, True, True, client)),
                        Deferred.fromCoroutine(
                            self._binding(FILTER_CHANGE_PORT, primary.destination, False, True, client)),
                    ]
                )
            finally:
                if port is not None:
                    await maybeDeferred(port.stopListening)

        phase3 = []
        if primary is not None and alt is not None:
            if alt.host != primary.destination.host:
                phase3.append(self._binding(MAPPING, Address("udp", alt.host, primary.destination.port)))
            if alt != primary.destination:
                phase3.append(self._binding(MAPPING, alt))
        phase3 += [self._binding(MAPPING, server) for server in remaining]
        phase3 += [self._echo(source) for source in self.echo_sources]
        if phase3:
            await gatherResults([Deferred.fromCoroutine(c) for c in phase3])

        if self.hairpin and primary is not None and primary.mapped is not None:
            await self._hairpin(primary.mapped)

        report = classify(self.probes, self.local_port, self.local_hosts, self.reactor.seconds() - self.start)
        log.info(
            "NAT classification: {nat_type}; mapping {mapping}, filtering {filtering}, "
            "hairpinning {hairpinning}, external {external}",
            nat_type=report.nat_type,
            mapping=report.mapping.value,
            filtering=report.filtering.value,
            hairpinning=report.hairpinning,
            external=[str(a) for a in report.external_addresses],
        )
        return report

    async def _binding(
        self, test: str, destination: Address, change_ip: bool = False, change_port: bool = False,
        client: Optional[StunClient] = None,
    ) -> Probe:
        t0 = self.reactor.seconds()
        base = dict(
            test=test, destination=destination, change_ip=change_ip, change_port=change_port, started=t0 - self.start
        )
        try:
            result: BindingResult = await (client or self.client).binding_request(
                destination, change_ip, change_port, **self.schedule
            )
        except StunTimeout as e:
            probe = Probe(outcome=TIMEOUT, duration=self.reactor.seconds() - t0, transmissions=e.transmissions,
                          error=str(e), **base)
        except StunError as e:
            probe = Probe(outcome=ERROR, duration=self.reactor.seconds() - t0, error=str(e), **base)
        else:
            probe = Probe(
                outcome=OK,
                duration=self.reactor.seconds() - t0,
                mapped=result.mapped_address,
                source=result.source,
                response_origin=result.response_origin,
                other_address=result.other_address,
                rtt=result.rtt,
                transmissions=result.transmissions,
                **base,
            )
        log.debug("NAT probe {test} to {destination}: {outcome}",
                  test=test, destination=str(destination), outcome=probe.outcome)
        self.probes.append(probe)
        return probe

    async def _echo(self, source: Any) -> Probe:
        t0 = self.reactor.seconds()
        destination = source.destination
        try:
            mapped = await source.echo(self.client)
            if not isinstance(mapped, Address):
                raise TypeError(f"echo source returned {type(mapped).__name__}, not an Address")
        except CancelledError:
            raise
        except StunTimeout as e:
            probe = Probe(ECHO, destination, TIMEOUT, t0 - self.start, self.reactor.seconds() - t0, error=str(e))
        except Exception as e:
            probe = Probe(ECHO, destination, ERROR, t0 - self.start, self.reactor.seconds() - t0,
                          error=f"{type(e).__name__}: {e}")
        else:
            probe = Probe(ECHO, destination, OK, t0 - self.start, self.reactor.seconds() - t0, mapped=mapped)
        self.probes.append(probe)
        return probe

    async def _hairpin(self, mapped: Address) -> Probe:
        t0 = self.reactor.seconds()
        try:
            arrived = await self.client.hairpin_probe(mapped, self.hairpin_timeout)
        except StunError as e:
            probe = Probe(HAIRPIN, mapped, ERROR, t0 - self.start, self.reactor.seconds() - t0, error=str(e))
        else:
            probe = Probe(HAIRPIN, mapped, OK if arrived else TIMEOUT, t0 - self.start, self.reactor.seconds() - t0)
        self.probes.append(probe)
        return probe
