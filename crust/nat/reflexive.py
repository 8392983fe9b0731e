"""
L{ReflexiveDiscovery}: learning, from the peers we connect to, the addresses
we are seen at (server-reflexive candidates) and how our NAT maps them.

When a connection to a peer with a public listener becomes active, and we
have not asked enough peers lately, we ask it:

  - over UDP, with the encrypted address echo (L{crust.nat.echo}), from our
    one UDP socket to its UDP listener, and to its second echo port if it
    offers one (HELLO C{echo_alt});
  - over TCP, with a probe connection that leaves I{from our listening port}
    (the peer's HELLO tells us where it came from), so the answer is the
    mapping of the port peers must reach.

The answers go to L{OurAddresses} as C{srflx} candidates.  With answers from
two or more destinations for one socket, the mapping behaviour follows
(RFC 4787): one external address for all of them is endpoint-independent
mapping (EIM), several is endpoint-dependent (EDM, "symmetric"); for EDM, the
port steps between consecutive mappings tell sequential allocation from
random.  An observed address equal to our own is no NAT at all.  Filtering
cannot be learned this way (it needs a server that answers from another
address); it stays unknown unless STUN classification says it.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust.address import Address, is_global
from crust.candidates import MappingKind, NatBehaviour, NatInfo, PortAllocation
from crust.identity import PeerId
from crust.nat.addresses import OurAddresses

REFRESH = 120.0  # seconds before the same peer is asked again
MAX_SOURCES = 3  # peers asked per refresh period
MAX_OBSERVATIONS = 8  # kept per transport (the newest)
SEQUENTIAL_STEP = 16  # EDM mappings whose ports step by at most this much are sequential

#: C{probe(address, peer_id)}: a probe connection from our listening port; fires with a result whose
#: C{observed} is our address as the peer saw it.
TcpProbe = Callable[[Address, PeerId], Deferred]


class ReflexiveDiscovery:
    """
    @param echo: our UDP socket's L{crust.nat.echo.UdpEcho} (None without UDP).
    @param probe: a TCP probe from our listening port (None without TCP).
    @param local: returns our (TCP listening port, UDP port) for telling
        port preservation; None where there is none.
    @param changed: called after what we know changed.
    """

    log = Logger()

    def __init__(self, clock: Any, addresses: OurAddresses, echo: Any, probe: Optional[TcpProbe],
                 local: Callable[[], tuple[Optional[int], Optional[int]]],
                 changed: Callable[[], None] = lambda: None) -> None:
        self._clock = clock
        self._addresses = addresses
        self._echo = echo
        self._probe = probe
        self._local = local
        self._changed = changed
        self._asked: dict[PeerId, float] = {}
        # per transport: (destination, observed, when), newest last
        self._observations: dict[str, list[tuple[Address, Address, float]]] = {"udp": [], "tcp": []}
        self._running: set[Deferred] = set()

    # -- PeerListener ---------------------------------------------------------------

    def peer_promoted(self, conn: Any, peer_id: PeerId) -> None:
        hello = conn.handshake.peer_hello
        if hello is None:
            return
        udp = [a for a in hello.listeners if a.transport == "udp" and is_global(a.host)]
        tcp = [a for a in hello.listeners if a.transport == "tcp" and is_global(a.host)]
        if udp or tcp:
            self.ask(peer_id, udp[:1], tcp[:1], hello.echo_alt)

    def connection_ended(self, conn: Any, reason: str) -> None:
        pass

    # -- asking -------------------------------------------------------------------------

    def ask(self, peer_id: PeerId, udp: list[Address], tcp: list[Address], echo_alt: Optional[int] = None,
            force: bool = False) -> Optional[Deferred]:
        """Ask C{peer_id} how it sees us (unless asked lately, or enough peers were); fires when done."""
        now = self._clock.seconds()
        for peer, when in list(self._asked.items()):
            if now - when >= REFRESH:
                del self._asked[peer]
        if not force and (peer_id in self._asked or len(self._asked) >= MAX_SOURCES):
            return None
        self._asked[peer_id] = now
        asks = []
        if self._echo is not None:
            destinations = list(udp)
            if udp and echo_alt is not None and echo_alt != udp[0].port:
                destinations.append(Address("udp", udp[0].host, echo_alt))
            for destination in destinations:
                d = self._echo.echo(destination, peer_id)
                d.addCallback(self._observed, destination, "echo")
                asks.append(d)
        if self._probe is not None:
            for destination in tcp:
                d = self._probe(destination, peer_id)
                d.addCallback(self._probed, destination)
                asks.append(d)
        if not asks:
            return None
        done = DeferredList(asks, consumeErrors=True)
        self._running.add(done)
        done.addCallback(self._finished, peer_id, done)
        return done

    def stop(self) -> None:
        for d in list(self._running):
            d.cancel()
        self._asked.clear()
        for kept in self._observations.values():
            kept.clear()

    def _probed(self, result: Any, destination: Address) -> None:
        if result.observed is not None:
            self._observed(result.observed, destination, "hello")

    def _observed(self, observed: Address, destination: Address, source: str) -> None:
        if observed.transport != destination.transport:
            return
        kept = self._observations[observed.transport]
        kept[:] = [o for o in kept if o[0] != destination][-(MAX_OBSERVATIONS - 1):]
        kept.append((destination, observed, self._clock.seconds()))
        new = self._addresses.add_reflexive(observed, source)
        before = self._addresses.nat
        self._addresses.nat = self.classify()
        if self._addresses.nat != before:
            self.log.info("our NAT: {nat}", nat=describe(self._addresses.nat))
        if new or self._addresses.nat != before:
            self._changed()

    def _finished(self, results: list[tuple[bool, Any]], peer_id: PeerId, done: Deferred) -> None:
        self._running.discard(done)
        for ok, value in results:
            if not ok and isinstance(value, Failure):
                self.log.debug("address echo from {peer} failed: {reason}", peer=str(peer_id), reason=str(value.value))

    # -- what it means ----------------------------------------------------------------------

    def classify(self) -> NatInfo:
        """What the observations so far say of our NAT, per transport (see the module docstring)."""
        tcp_port, udp_port = self._local()
        nat = self._addresses.nat
        return NatInfo(udp=self._behaviour("udp", udp_port, nat.udp), tcp=self._behaviour("tcp", tcp_port, nat.tcp))

    def _behaviour(self, transport: str, local_port: Optional[int], known: NatBehaviour) -> NatBehaviour:
        kept = self._observations[transport]
        if not kept:
            return known
        observed = [o for _, o, _ in kept]
        local_hosts = {a.host for a in self._addresses.listen if a.transport == transport}
        if any(o.host in local_hosts and o.port == local_port for o in observed):
            return replace(known, mapping=MappingKind.EIM, ports=PortAllocation.PRESERVED, public=True)
        distinct = list(dict.fromkeys(observed))
        ports = PortAllocation.PRESERVED if observed[-1].port == local_port else PortAllocation.UNKNOWN
        if len({(o[0].host, o[0].port) for o in kept}) < 2:
            # one destination: no word on the mapping, only on the port
            return replace(known, ports=ports if ports is PortAllocation.PRESERVED else known.ports, public=False)
        if len(distinct) == 1:
            return replace(known, mapping=MappingKind.EIM, ports=ports, delta=None, public=False)
        steps = [b.port - a.port for a, b in zip(distinct, distinct[1:])]
        if all(0 < abs(step) <= SEQUENTIAL_STEP for step in steps):
            return replace(known, mapping=MappingKind.EDM, ports=PortAllocation.SEQUENTIAL,
                           delta=int(statistics.median(steps)), public=False)
        return replace(known, mapping=MappingKind.EDM, ports=PortAllocation.RANDOM, delta=None, public=False)


def describe(nat: NatInfo) -> str:
    """One line for logs: C{udp eim/unknown preserved; tcp unknown}."""
    parts = []
    for name, b in (("udp", nat.udp), ("tcp", nat.tcp)):
        if b.public:
            parts.append(f"{name} no NAT")
            continue
        text = f"{name} {b.mapping.value}/{b.filtering.value} ports {b.ports.value}"
        if b.delta is not None:
            text += f" (step {b.delta})"
        parts.append(text)
    return "; ".join(parts)
