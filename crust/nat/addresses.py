"""
L{OurAddresses}: every address peers may reach this node at, how each was
learned, and what the node knows of its NAT.

Four kinds of candidate (L{crust.candidates.CandidateKind}) are kept:

  - B{host}: the listeners' own addresses (every interface's, when bound to
    all), loopback last;
  - B{mapped}: external addresses the router granted by port mapping (PCP,
    NAT-PMP, UPnP IGD);
  - B{srflx} (server-reflexive): our addresses as other machines see them,
    learned from peers' address echoes (HELLO over TCP, the encrypted UDP
    echo) and from STUN (and TURN);
  - B{relay}: the relayed addresses of our TURN allocations
    (L{crust.nat.turn}), offered after the server-reflexive ones and never
    claimed as listeners in HELLO.

The connection info we hand out, the listeners we claim in HELLO and what
LAN discovery answers all come from here.  Tables are bounded: a peer cannot
grow them by telling us many addresses.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from twisted.logger import Logger

from crust.address import Address
from crust.candidates import Candidate, CandidateKind, NatInfo

MAX_ADVERTISED = 16  # listeners in HELLO
MAX_CANDIDATES = 64  # addresses in connection info (its parser's limit)
MAX_REFLEXIVE = 8  # server-reflexive addresses kept per transport (the newest)


class OurAddresses:
    """
    @param transports: returns the transports we accept connections on
        (C{"tcp"}, C{"udp"}).
    @ivar listen: the host addresses of our listeners.
    @ivar mapped: the addresses port mapping granted, with the method.
    @ivar relay: the relayed addresses of our TURN allocations, with their source (C{"turn"}).
    @ivar nat: what we know of our NAT (L{NatInfo}).
    """

    log = Logger()

    def __init__(self, transports: Callable[[], Iterable[str]]) -> None:
        self._transports = transports
        self.listen: list[Address] = []
        self.mapped: dict[Address, str] = {}
        self.relay: dict[Address, str] = {}
        self._reflexive: dict[Address, str] = {}  # insertion order: oldest first
        self.nat = NatInfo()
        self._cache: Optional[tuple[Any, list[Candidate]]] = None

    # -- what we learn -------------------------------------------------------------

    def mapping_changed(self, what: str, mapping: Any) -> None:
        """A port mapper observer: a mapping was C{"added"} (or renewed) or C{"removed"}."""
        external = mapping.external
        if what == "added" and external not in self.mapped:
            self.log.info("port mapping: {internal} is reachable at {external} via {method}",
                          internal=mapping.internal_port, external=str(external), method=mapping.method)
            self.mapped[external] = mapping.method
        elif what == "removed":
            self.mapped.pop(external, None)

    def add_reflexive(self, address: Address, source: str) -> bool:
        """We are seen at C{address} (learned by C{source}); True if it is new."""
        if address in self.listen or address in self.mapped or address in self.relay:
            return False  # (a peer that reached us through our TURN relay sees the relayed address)
        known = address in self._reflexive
        self._reflexive.pop(address, None)
        self._reflexive[address] = source  # the newest last
        same = [a for a in self._reflexive if a.transport == address.transport]
        for old in same[:-MAX_REFLEXIVE]:
            del self._reflexive[old]
        if not known:
            self.log.info("we are seen at {address} ({source})", address=str(address), source=source)
        return not known

    def set_relay(self, address: Address, source: str = "turn") -> None:
        """A TURN server relays C{address} to us (see L{crust.nat.turn})."""
        if address not in self.relay:
            self.log.info("we are reachable at {address} through TURN", address=str(address))
        self.relay[address] = source
        self._reflexive.pop(address, None)

    def remove_relay(self, address: Address) -> None:
        """The TURN allocation of C{address} is gone."""
        self.relay.pop(address, None)

    def forget_reflexive(self, transport: Optional[str] = None) -> None:
        """Forget server-reflexive addresses (of one transport): the network changed."""
        for address in list(self._reflexive):
            if transport is None or address.transport == transport:
                del self._reflexive[address]

    def reflexive(self, transport: Optional[str] = None) -> list[Address]:
        return [a for a in self._reflexive if transport is None or a.transport == transport]

    def clear(self) -> None:
        """The node stopped: nothing of this is true any more."""
        self.listen = []
        self.mapped.clear()
        self.relay.clear()
        self._reflexive.clear()
        self.nat = NatInfo()

    # -- what we tell -----------------------------------------------------------------

    def candidates(self, forced_tcp_port: Optional[int] = None) -> list[Candidate]:
        """
        Every candidate, best first: mapped, then server-reflexive, then
        relayed (TURN), then host addresses (loopback last), of the
        transports we accept on.

        @param forced_tcp_port: also offer each external host at this TCP
            port (C{force_acceptor_port_in_ext_ep}: a manual port forward).
        """
        transports = frozenset(self._transports())
        key = (tuple(self.mapped.items()), tuple(self._reflexive.items()), tuple(self.relay.items()),
               tuple(self.listen), forced_tcp_port, transports)
        if self._cache is not None and self._cache[0] == key:
            return list(self._cache[1])
        found: list[Candidate] = [Candidate(a, CandidateKind.MAPPED, method)
                                  for a, method in self.mapped.items() if a.transport in transports]
        found += [Candidate(a, CandidateKind.SRFLX, source)
                  for a, source in reversed(self._reflexive.items()) if a.transport in transports]
        if forced_tcp_port:
            external_hosts = dict.fromkeys(c.address.host for c in found)
            found += [Candidate(Address("tcp", host, forced_tcp_port), CandidateKind.MAPPED, "configured")
                      for host in external_hosts]
        found += [Candidate(a, CandidateKind.RELAY, source) for a, source in self.relay.items()
                  if a.transport in transports]
        found += [Candidate(a, CandidateKind.HOST, "local") for a in sorted(self.listen, key=lambda a: a.is_loopback)]
        seen: set[Address] = set()
        result = []
        for candidate in found:
            if candidate.address not in seen:
                seen.add(candidate.address)
                result.append(candidate)
        result = result[:MAX_CANDIDATES]
        self._cache = (key, result)
        return list(result)

    def addresses(self, forced_tcp_port: Optional[int] = None) -> list[Address]:
        """The addresses of L{candidates}, in their order."""
        return [c.address for c in self.candidates(forced_tcp_port)]

    def listeners(self, forced_tcp_port: Optional[int] = None) -> list[Address]:
        """What we claim as our listeners in HELLO: not loopback unless that is all there is, not TURN relays."""
        addresses = [c.address for c in self.candidates(forced_tcp_port) if c.kind is not CandidateKind.RELAY]
        return ([a for a in addresses if not a.is_loopback] or addresses)[:MAX_ADVERTISED]
