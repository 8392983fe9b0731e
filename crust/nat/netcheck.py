"""
netcheck: what a node can learn about its network in a few seconds.

L{run_netcheck} gathers, in parallel and each probe bounded in time:
  - local addresses: the TCP listener's, the UDP endpoint's, every interface;
  - external TCP addresses: a C{probe} (secure TCP handshake, intent
    C{probe}) to each TCP peer, reading the C{observed} address it echoes;
  - external UDP addresses and the NAT's mapping and filtering behaviour,
    port preservation and hairpinning: L{crust.nat.classify.classify_nat}
    on the node's UDP endpoint, with STUN servers and crust peers (the
    secure UDP echo, L{crust.nat.echo}) as echo sources;
  - what the port mapper's protocols (PCP, NAT-PMP, UPnP) answered and
    granted, from its recorded probes;
and returns a L{NetcheckReport}: C{to_dict()}/C{to_json()} for C{crust
netcheck --json}, C{format_text()} for people.  Worst-case duration:
L{NetcheckOptions.worst_case} (about 10 s with the defaults); a hard
deadline (15 s) cancels whatever is still running.  See C{doc/netcheck.md}.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from crust._util.reactor import maybe_global_reactor
from crust.address import Address
from crust.identity import PeerId
from crust.nat.classify import (
    ECHO,
    FILTER_CHANGE_IP_PORT,
    FILTER_CHANGE_PORT,
    HAIRPIN,
    MAPPING,
    NatReport,
    classify_nat,
)

log = Logger()

REPORT_VERSION = 1
OK, TIMEOUT, ERROR = "ok", "timeout", "error"
_UDP_KINDS = {
    MAPPING: "stun",
    ECHO: "udp-echo",
    FILTER_CHANGE_IP_PORT: "stun-filter-change-ip-port",
    FILTER_CHANGE_PORT: "stun-filter-change-port",
    HAIRPIN: "hairpin",
}


@dataclass(frozen=True)
class NetcheckOptions:
    """
    Limits of one netcheck.  A STUN probe gives up after
    C{stun_rto * (2**(stun_rc - 1) - 1 + stun_rm)} seconds (1.75 s by
    default: sends at 0, 0.25 and 0.75 s, then a 1 s wait).
    """

    tcp_timeout: float = 3.0
    max_tcp_peers: int = 4
    max_stun_servers: int = 3
    max_echo_peers: int = 4
    stun_rto: float = 0.25
    stun_rc: int = 3
    stun_rm: float = 4.0
    echo_timeout: float = 1.75
    echo_tries: int = 3
    echo_rto: float = 0.25
    hairpin: bool = True
    hairpin_timeout: float = 1.0
    deadline: float = 15.0

    @property
    def stun_probe_bound(self) -> float:
        return self.stun_rto * (2 ** (self.stun_rc - 1) - 1 + self.stun_rm)

    def worst_case(self, stun_servers: Optional[int] = None) -> float:
        """
        The longest a netcheck can take (before the hard C{deadline}): TCP
        probes run beside the UDP classification, which tries the STUN
        servers in turn, then runs the filtering tests, then the mapping
        tests and echoes in parallel, then the hairpin test.
        """
        n = self.max_stun_servers if stun_servers is None else min(stun_servers, self.max_stun_servers)
        probe = self.stun_probe_bound
        udp = n * probe + (probe + max(probe, self.echo_timeout) + self.hairpin_timeout if n else self.echo_timeout)
        return min(self.deadline, max(self.tcp_timeout, udp))


@dataclass(frozen=True)
class NetcheckProbe:
    """
    One probe: C{kind} is C{tcp-probe}, C{stun}, C{stun-filter-*},
    C{udp-echo} or C{hairpin}; C{observed} our address as the target saw it;
    C{started} seconds after the netcheck began; C{duration} seconds.
    """

    protocol: str
    kind: str
    target: str
    outcome: str
    started: float
    duration: float
    peer_id: Optional[str] = None
    observed: Optional[str] = None
    rtt: Optional[float] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in NetcheckProbe.__dataclass_fields__}


@dataclass(frozen=True)
class NetcheckReport:
    """What L{run_netcheck} found; C{nat} is None when UDP was not classified."""

    peer_id: Optional[str]
    started_at: float
    duration: float
    worst_case: float
    deadline_hit: bool
    local: dict[str, tuple[Address, ...]]
    interfaces: tuple[dict[str, Any], ...]
    external: dict[str, tuple[Address, ...]]
    tcp_behind_nat: Optional[bool]
    nat: Optional[NatReport]
    port_mapping: Optional[dict[str, Any]]
    probes: tuple[NetcheckProbe, ...] = ()
    notes: tuple[str, ...] = ()
    turn: tuple[dict[str, Any], ...] = ()  # each TURN server's allocation (crust.nat.turn.TurnClient.status)

    @property
    def hairpinning(self) -> Optional[bool]:
        return self.nat.hairpinning if self.nat is not None else None

    def to_dict(self) -> dict[str, Any]:
        nat = None
        if self.nat is not None:
            nat = self.nat.to_dict()
            del nat["probes"]  # they are in "probes", with the TCP ones
        return {
            "version": REPORT_VERSION,
            "peer_id": self.peer_id,
            "started_at": self.started_at,
            "duration": self.duration,
            "worst_case": self.worst_case,
            "deadline_hit": self.deadline_hit,
            "local": {
                "tcp": [str(a) for a in self.local.get("tcp", ())],
                "udp": [str(a) for a in self.local.get("udp", ())],
                "interfaces": [dict(i) for i in self.interfaces],
            },
            "external": {
                "tcp": [str(a) for a in self.external.get("tcp", ())],
                "udp": [str(a) for a in self.external.get("udp", ())],
            },
            "tcp": {"behind_nat": self.tcp_behind_nat},
            "nat": nat,
            "hairpinning": {"udp": self.hairpinning},
            "port_mapping": self.port_mapping if self.port_mapping is not None else {"checked": False},
            "probes": [p.to_dict() for p in self.probes],
            "turn": [dict(t) for t in self.turn],
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def format_text(self) -> str:
        return format_report(self.to_dict())


def format_report(d: dict[str, Any]) -> str:
    """The human-readable form of a report's C{to_dict()} (so a JSON copy renders the same)."""
    lines: list[str] = []
    add = lines.append
    add(f"crust netcheck: {d['duration']:.2f} s" + (" (deadline reached: incomplete)" if d.get("deadline_hit") else ""))
    if d.get("peer_id"):
        add(f"  peer id      {d['peer_id']}")
    add("")
    add("Local addresses")
    for proto in ("tcp", "udp"):
        addresses = d["local"].get(proto) or []
        add(f"  {proto}          {', '.join(_host_port(a) for a in addresses) if addresses else '-'}")
    interfaces = d["local"].get("interfaces") or []
    if interfaces:
        add("  interfaces   " + ", ".join(f"{i['name']} {i['ip']}/{i['prefix']}" for i in interfaces))
    add("")
    add("External addresses")
    for proto in ("tcp", "udp"):
        addresses = d["external"].get(proto) or []
        add(f"  {proto}          {', '.join(_host_port(a) for a in addresses) if addresses else 'unknown'}")
    add(f"  behind NAT   tcp {_yes_no(d['tcp']['behind_nat'])}, udp {_yes_no((d.get('nat') or {}).get('behind_nat'))}")
    add("")
    nat = d.get("nat")
    add("NAT (udp)")
    if nat is None:
        add("  not classified")
    else:
        add(f"  type         {nat['nat_type']}")
        add(f"  mapping      {nat['mapping']}")
        add(f"  filtering    {nat['filtering']}")
        add(f"  port kept    {_yes_no(nat['port_preservation'])}")
        add(f"  hairpinning  {_yes_no(nat['hairpinning'])}")
    add("")
    add("Port mapping")
    pm = d.get("port_mapping") or {}
    if not pm.get("checked"):
        add("  not checked")
    else:
        for m in pm.get("methods", []):
            if m["granted"]:
                what = f"granted {_host_port(m['granted'])} for {m['lifetime']} s"
            elif m["answered"]:
                what = f"answered, refused: {m['error']}"
            else:
                what = f"no answer: {m['error']}" if m["error"] else "no answer"
            add(f"  {m['method']:<8} {what} ({m['elapsed']:.2f} s)")
        if not pm.get("methods"):
            add("  no method tried yet")
        for m in pm.get("mappings", []):
            add(f"  mapped       {m['transport']} port {m['internal_port']} -> {_host_port(m['external'])} "
                f"by {m['method']}")
    if d.get("turn"):
        add("")
        add("TURN")
        for t in d["turn"]:
            add(f"  server       {_host_port(t['server'])}: {_turn_text(t)}")
    add("")
    add("Probes")
    for p in d.get("probes", []):
        detail = f"sees us as {_host_port(p['observed'])}" if p.get("observed") else (p.get("error") or "")
        add(f"  {p['protocol']} {p['kind']:<27} {p['target']:<28} {p['outcome']:<8} "
            f"{p['duration']:6.3f} s  {detail}".rstrip())
    if not d.get("probes"):
        add("  none")
    if d.get("notes"):
        add("")
        add("Notes")
        for note in d["notes"]:
            add(f"  - {note}")
    return "\n".join(lines) + "\n"


def _turn_text(t: dict[str, Any]) -> str:
    if not t.get("relayed"):
        return f"{t.get('state')}, no allocation" + (f": {t['error']}" if t.get("error") else "")
    permissions = len(t.get("permissions") or ())
    return (f"relayed {_host_port(t['relayed'])} for {t.get('lifetime')} s (expires in {t.get('expires_in')} s, "
            f"{t.get('refreshes', 0)} refreshes), {permissions} permission(s), {t.get('channels', 0)} channel(s)")


def _host_port(text: str) -> str:
    return text.split(":", 1)[1] if text.startswith(("tcp:", "udp:")) else text


def _yes_no(value: Optional[bool]) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


# --- running it -----------------------------------------------------------------------


def run_netcheck(service_like: Any, udp_endpoint: Any, stun_servers: Iterable[Any] = (),
                 echo_peers: Iterable[Any] = (), port_mapper: Any = None, clock: Any = None,
                 options: Optional[NetcheckOptions] = None, *, stun_client: Any = None,
                 echo: Any = None, turn: Optional[Callable[[], Iterable[dict[str, Any]]]] = None) -> Deferred:
    """
    Check the node's network; fires with a L{NetcheckReport} (never fails
    for network reasons: what failed is in the report).

    @param service_like: a L{crust.service.Service} (or anything with
        C{probe(address, expected_peer)}, C{listen_addresses} and
        C{peer_id}), or None to skip TCP.
    @param udp_endpoint: the node's L{crust.transport.udp.UdpEndpoint}
        (listening), or None to skip UDP.
    @param stun_client: the L{crust.nat.stun_client.StunClient} on
        C{udp_endpoint}, for the NAT classification; without it UDP is
        skipped.
    @param echo: the L{crust.nat.echo.UdpEcho} on C{udp_endpoint}, to ask
        the C{udp:} echo peers; without it they are not asked.
    @param stun_servers: C{udp:} L{Address}es (or their text).
    @param echo_peers: C{(PeerId, Address)} pairs, or objects with
        C{peer_id} and C{address} (C{HardCodedContact}): C{tcp:} addresses
        are probed over TCP, C{udp:} ones asked for the UDP echo.
    @param port_mapper: a L{crust.nat.portmap.mapper.PortMapper} whose recorded
        probes are reported, or None.
    @param clock: the C{IReactorTime}; the endpoint's (or the service's) by default.
    @param turn: returns the node's TURN allocations, reported as they are
        at the end (L{crust.nat.turn_wiring.TurnRelays.status}); nothing is sent for them.
    """
    options = options or NetcheckOptions()
    if clock is None:
        clock = getattr(udp_endpoint, "clock", None) or getattr(service_like, "clock", None)
    clock = maybe_global_reactor(clock)
    return Deferred.fromCoroutine(
        _Netcheck(service_like, udp_endpoint, stun_client, echo, _addresses(stun_servers), _peers(echo_peers),
                  port_mapper, clock, options, turn).run()
    )


def _addresses(items: Iterable[Any]) -> list[Address]:
    out = []
    for item in items:
        out.append(item if isinstance(item, Address) else Address.parse(str(item), "udp"))
    return list(dict.fromkeys(out))


def _peers(items: Iterable[Any]) -> list[tuple[PeerId, Address]]:
    out = []
    for item in items:
        peer_id, address = (item.peer_id, item.address) if hasattr(item, "peer_id") else item
        if not isinstance(peer_id, PeerId):
            peer_id = PeerId.from_text(str(peer_id))
        if not isinstance(address, Address):
            address = Address.parse(str(address))
        out.append((peer_id, address))
    return list(dict.fromkeys(out))


class _Netcheck:
    def __init__(self, service: Any, endpoint: Any, stun_client: Any, echo: Any, stun_servers: list[Address],
                 peers: list[tuple[PeerId, Address]], port_mapper: Any, clock: Any,
                 options: NetcheckOptions, turn: Optional[Callable[[], Iterable[dict[str, Any]]]] = None) -> None:
        self.turn = turn
        self.service = service
        self.endpoint = endpoint
        self.stun_client = stun_client
        self.echo = echo
        self.stun_servers = stun_servers
        self.peers = peers
        self.port_mapper = port_mapper
        self.clock = clock
        self.options = options
        self.notes: list[str] = []
        self.tcp_probes: list[NetcheckProbe] = []
        self.start = 0.0
        self.deadline_hit = False
        self._echo_peer_ids: dict[str, str] = {}
        self.our_id: Optional[PeerId] = getattr(service, "peer_id", None) if service is not None else None
        if self.our_id is None and echo is not None and echo.identity is not None:
            self.our_id = echo.identity.peer_id

    async def run(self) -> NetcheckReport:
        options = self.options
        self.start = self.clock.seconds()
        tasks: list[Deferred] = []
        peers = [(p, a) for p, a in self.peers if p != self.our_id]
        if len(peers) < len(self.peers):
            self.notes.append("our own peer id is among the echo peers: skipped")
        tcp_peers = [(p, a) for p, a in peers if a.transport == "tcp"]
        udp_peers = [(p, a) for p, a in peers if a.transport == "udp"]
        if udp_peers and self.echo is None and self.endpoint is not None:
            self.notes.append("UDP echo: no echo given: udp: peers not asked")
            udp_peers = []
        for kind, peers, limit in (("TCP", tcp_peers, options.max_tcp_peers),
                                   ("UDP echo", udp_peers, options.max_echo_peers)):
            if len(peers) > limit:
                self.notes.append(f"{kind}: probing {limit} of {len(peers)} peers")
        servers = self.stun_servers[: options.max_stun_servers]
        if len(self.stun_servers) > len(servers):
            self.notes.append(f"UDP: using {len(servers)} of {len(self.stun_servers)} STUN servers")

        if self.service is None:
            self.notes.append("TCP: no service given: not probed")
        elif not tcp_peers:
            self.notes.append("TCP: no peer with a tcp: address to probe: external TCP address unknown")
        else:
            for peer_id, address in tcp_peers[: options.max_tcp_peers]:
                tasks.append(self._tcp_probe(peer_id, address))

        nat_task: Optional[Deferred] = None
        udp_start = self.start
        if self.endpoint is None:
            self.notes.append("UDP: no endpoint given: not probed")
        elif self.endpoint.local_address() is None:
            self.notes.append("UDP: the endpoint is not open: not probed")
        elif self.stun_client is None:
            self.notes.append("UDP: no STUN client given: not probed")
        elif not servers and not udp_peers:
            self.notes.append("UDP: no STUN server or udp: echo peer: external UDP address and NAT type unknown")
        else:
            nat_task = self._classify(servers, udp_peers[: options.max_echo_peers])
            tasks.append(nat_task)

        worst = options.worst_case(len(servers)) if nat_task is not None else min(options.tcp_timeout, options.deadline)
        timer = self.clock.callLater(options.deadline, self._deadline, tasks)
        results = await DeferredList(tasks, consumeErrors=True)
        if timer.active():
            timer.cancel()

        nat: Optional[NatReport] = None
        if nat_task is not None:
            ok, value = results[-1]
            if ok:
                nat = value
            elif value.check(CancelledError):
                self.notes.append(f"UDP: NAT classification did not finish within {options.deadline:g} s")
            else:
                self.notes.append(f"UDP: NAT classification failed: {value.getErrorMessage()}")
                log.failure("netcheck: NAT classification failed", value)
        return self._report(nat, udp_start, worst)

    def _deadline(self, tasks: list[Deferred]) -> None:
        self.deadline_hit = True
        log.warn("netcheck: {deadline} s deadline reached; cancelling what is left", deadline=self.options.deadline)
        for task in tasks:
            if not task.called:
                task.cancel()

    # -- TCP ----------------------------------------------------------------------

    def _tcp_probe(self, peer_id: PeerId, address: Address) -> Deferred:
        t0 = self.clock.seconds()
        d = maybeDeferred(self.service.probe, address, peer_id)
        d.addTimeout(self.options.tcp_timeout, self.clock)

        def record(outcome: str, observed: Optional[Address] = None, rtt: Optional[float] = None,
                   error: Optional[str] = None) -> None:
            self.tcp_probes.append(NetcheckProbe(
                "tcp", "tcp-probe", str(address), outcome, t0 - self.start, self.clock.seconds() - t0,
                peer_id=str(peer_id), observed=str(observed) if observed is not None else None, rtt=rtt, error=error,
            ))

        def ok(result: Any) -> None:
            record(OK, result.observed, result.rtt)

        def failed(failure: Any) -> None:
            from twisted.internet.defer import TimeoutError

            if failure.check(TimeoutError):
                record(TIMEOUT, error=f"no answer within {self.options.tcp_timeout:g} s")
            elif failure.check(CancelledError):
                record(TIMEOUT, error="cancelled at the netcheck deadline")
            else:
                record(ERROR, error=failure.getErrorMessage())

        return d.addCallbacks(ok, failed)

    # -- UDP ------------------------------------------------------------------------

    def _classify(self, servers: list[Address], udp_peers: list[tuple[PeerId, Address]]) -> Deferred:
        from crust.nat.echo import UdpEchoSource

        options = self.options
        endpoint = self.endpoint
        sources = [UdpEchoSource(self.echo, peer_id, address, timeout=options.echo_timeout,
                                 tries=options.echo_tries, rto=options.echo_rto)
                   for peer_id, address in udp_peers]
        self._echo_peer_ids = {str(s.destination): str(s.peer_id) for s in sources}
        bound = endpoint.local_address()
        local_hosts = None if ipaddress.ip_address(bound.host).is_unspecified else [bound.host]
        return classify_nat(
            self.clock, self.stun_client, servers, bound.port, local_hosts=local_hosts,
            echo_sources=sources, hairpin=options.hairpin, hairpin_timeout=options.hairpin_timeout,
            rto=options.stun_rto, rc=options.stun_rc, rm=options.stun_rm,
        )

    # -- the report -------------------------------------------------------------------

    def _report(self, nat: Optional[NatReport], udp_start: float, worst: float) -> NetcheckReport:
        probes = sorted(self.tcp_probes, key=lambda p: p.started)
        if nat is not None:
            peer_ids = self._echo_peer_ids
            offset = udp_start - self.start
            for p in nat.probes:
                probes.append(NetcheckProbe(
                    "udp", _UDP_KINDS.get(p.test, p.test), str(p.destination), p.outcome, offset + p.started,
                    p.duration, peer_id=peer_ids.get(str(p.destination)) if p.test == ECHO else None,
                    observed=str(p.mapped) if p.mapped is not None else None, rtt=p.rtt, error=p.error,
                ))
            self.notes.extend(f"UDP: {note}" for note in nat.notes)

        interfaces = self._interfaces()
        local_tcp = tuple(a for a in (getattr(self.service, "listen_addresses", ()) or ())
                          if a.transport == "tcp") if self.service is not None else ()
        local_udp = tuple(self.endpoint.local_addresses()) if self.endpoint is not None else ()
        external_tcp = tuple(dict.fromkeys(Address.parse(p.observed) for p in self.tcp_probes if p.ok and p.observed))
        tcp_behind_nat = None
        if external_tcp:
            local_ips = {i["ip"] for i in interfaces} | {a.host for a in local_tcp}
            tcp_behind_nat = not any(a.host in local_ips for a in external_tcp)
            if len({a.host for a in external_tcp}) > 1:
                self.notes.append("TCP: peers saw us at different IPs: "
                                  + ", ".join(sorted({a.host for a in external_tcp})))
        if self.deadline_hit:
            self.notes.append(f"the {self.options.deadline:g} s deadline was reached: the report is incomplete")
        port_mapping = self._port_mapping()
        if port_mapping is None:
            self.notes.append("port mapping: no port mapper: not checked")
        report = NetcheckReport(
            peer_id=str(self.our_id) if self.our_id is not None else None,
            started_at=self.start,
            duration=self.clock.seconds() - self.start,
            worst_case=worst,
            deadline_hit=self.deadline_hit,
            local={"tcp": local_tcp, "udp": local_udp},
            interfaces=tuple(interfaces),
            external={"tcp": external_tcp, "udp": tuple(nat.external_addresses) if nat is not None else ()},
            tcp_behind_nat=tcp_behind_nat,
            nat=nat,
            port_mapping=port_mapping,
            probes=tuple(probes),
            notes=tuple(self.notes),
            turn=tuple(self.turn()) if self.turn is not None else (),
        )
        log.info("netcheck done in {duration:.2f} s: external tcp {tcp}, udp {udp}; NAT {nat_type}",
                 duration=report.duration, tcp=[str(a) for a in external_tcp],
                 udp=[str(a) for a in report.external["udp"]], nat_type=nat.nat_type if nat is not None else "unknown")
        return report

    def _interfaces(self) -> list[dict[str, Any]]:
        from crust._util.local_addresses import interface_addresses

        try:
            found = interface_addresses()
        except Exception as e:  # ifaddr reads the OS; never let that sink the report
            self.notes.append(f"cannot list network interfaces: {e}")
            return []
        return [{"name": i.interface, "ip": i.ip, "prefix": i.prefix} for i in found if not i.is_link_local]

    def _port_mapping(self) -> Optional[dict[str, Any]]:
        mapper = self.port_mapper
        if mapper is None:
            return None
        from crust.nat.portmap.mapper import METHOD_ORDER

        recorded = dict(getattr(mapper, "probes", {}) or {})
        names = [n for n in METHOD_ORDER if n in recorded] + [n for n in recorded if n not in METHOD_ORDER]
        methods = []
        for name in names:
            r = recorded[name]
            methods.append({
                "method": r.method, "transport": r.transport or None, "internal_port": r.internal_port or None,
                "answered": r.answered, "granted": str(r.granted) if r.granted is not None else None,
                "lifetime": r.lifetime, "error": r.error, "elapsed": r.elapsed,
                "age": max(0.0, self.clock.seconds() - r.at),
            })
        mappings = [{"transport": m.transport, "internal_port": m.internal_port, "external": str(m.external),
                     "method": m.method, "lifetime": m.lifetime}
                    for m in dict(getattr(mapper, "mappings", {}) or {}).values()]
        if not methods:
            self.notes.append("port mapping: the port mapper has not tried any method yet")
        return {"checked": True, "methods": methods, "mappings": mappings,
                "answered": [m["method"] for m in methods if m["answered"]]}


__all__ = ["NetcheckOptions", "NetcheckProbe", "NetcheckReport", "format_report", "run_netcheck"]
