"""
L{Dialer}: how a node makes connections, as two registries.

  - B{Transports}, keyed by the transport of an address (C{tcp}, C{udp}):
    each makes one connection to one address and runs a
    L{crust.session.connection.PeerConnection} on it (L{crust.transport.tcp.TcpTransport},
    L{crust.transport.quic.dispatcher.QuicDispatcher}).  Probes, bootstrap requests and
    reachability tests dial single addresses through them.
  - B{Dial strategies}, keyed by name, each with its own start delay: what a
    connect attempt tries (L{DialStrategy}).  Direct TCP and direct QUIC
    register here (L{DirectStrategy}); so do hole punching and relays, as
    peers of the others.  L{Dialer.plan} turns a peer's connection info into
    the legs of a L{crust.peering.attempt.ConnectAttempt}.

Every connection is made by a L{ConnectionFactory} that hands it its
L{crust.session.purpose.Purpose}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Optional, Protocol, Sequence

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from crust.address import Address
from crust.candidates import CandidateKind
from crust.config import Config
from crust.peering.attempt import ConnectAttempt, Leg
from crust.session.connection import PeerConnection
from crust.connection_info import PubConnectionInfo
from crust.errors import ConnectFailed, CrustError
from crust.identity import PeerId
from crust.session.purpose import ACCEPTED, Purpose
from crust.wire import Hello, Intent

if TYPE_CHECKING:
    from crust.peering.table import PeerTable


class Transport(Protocol):
    """Makes one connection to one address (registered with L{Dialer.add_transport})."""

    name: str  # the transport of the addresses it dials: "tcp", "udp"

    def available(self) -> bool: ...

    def dial(self, address: Address, factory: "ConnectionFactory", expected: Optional[PeerId],
             bind: Optional[tuple[str, int]] = None, *, from_listener: bool = False) -> Deferred:
        """
        Connect, run C{factory}'s protocol; fires with the L{PeerConnection}
        (handshake running).  C{from_listener}: leave from the address we
        listen on (what peers see of our listener).
        """


class DialStrategy(Protocol):
    """One way of reaching a peer in a connect attempt (registered with L{Dialer.register})."""

    name: str
    path_kind: str  # what its connections are (L{crust.session.connection.PathInfo.kind})

    def delay(self, hints: Mapping[str, Any]) -> float:
        """Seconds after the attempt's first leg (or, for legs added later, from then) before this one starts."""

    def targets(self, info: PubConnectionInfo, hints: Mapping[str, Any]) -> Sequence[Hashable]:
        """
        What this strategy would try for C{info}'s peer; nothing if it does
        not apply.  C{hints} carry what other strategies learned (a punch
        plan from the rendezvous: C{hints["punch"]}).
        """

    def dial(self, target: Any, attempt: ConnectAttempt) -> Deferred:
        """Try one target; fires with the L{PeerConnection} it made."""


class ConnectionFactory(Factory):
    """Builds L{PeerConnection}s for one purpose, in one direction."""

    noisy = False

    def __init__(self, table: "PeerTable", clock: Any, local_id: PeerId, network: str,
                 config: Callable[[], Config], *, purpose: Purpose = ACCEPTED, initiator: bool,
                 intent: Intent = Intent.CONNECT, expected_peer: Optional[PeerId] = None,
                 transport_name: str = "tcp") -> None:
        self.table = table
        self.clock = clock
        self.local_id = local_id
        self.network = network
        self.config = config
        self.purpose = purpose
        self.initiator = initiator
        self.intent = intent
        self.expected_peer = expected_peer
        self.transport_name = transport_name

    def buildProtocol(self, addr: Any) -> PeerConnection:
        config = self.config()
        conn = PeerConnection(
            self.table,
            self.clock,
            local_id=self.local_id,
            network=self.network,
            intent=self.intent,
            expected_peer=self.expected_peer,
            initiator=self.initiator,
            max_message_size=config.max_message_size,
            max_queued_bytes=config.max_queued_bytes,
            drop_after=config.drop_after,
            heartbeat_interval=config.heartbeat_interval,
            inactivity_timeout=config.inactivity_timeout,
            handshake_timeout=config.handshake_timeout,
            transport_name=self.transport_name,
            purpose=self.purpose,
        )
        self.table.connection_made(conn, None if self.initiator else addr)
        return conn


@dataclass(frozen=True)
class ProbeResult:
    """What a probe of an address learned."""

    peer_id: PeerId
    observed: Optional[Address]  # our address as the probed peer saw it
    rtt: float
    peer_hello: Hello


class Probe(Purpose):
    """
    A connection opened only to run the handshake: C{result} fires with a
    L{ProbeResult} (the peer's id and our address as it sees us), or fails
    with L{ConnectFailed}.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self.result: Deferred = Deferred()
        self._started_at = clock.seconds()

    def attached(self, conn: PeerConnection) -> None:
        self._started_at = self._clock.seconds()  # the round trip counts from the connection, not the dial

    def probed(self, conn: PeerConnection, peer_id: PeerId, hello: Hello) -> None:
        if not self.result.called:
            rtt = self._clock.seconds() - self._started_at
            self.result.callback(ProbeResult(peer_id, hello.observed, rtt, hello))

    def lost(self, conn: PeerConnection, reason: str) -> None:
        self.failed(Failure(ConnectFailed(conn.peer_id, [f"{conn.peer_address}: {reason}"], "probe failed")))

    def failed(self, failure: Failure) -> None:
        """The probe ended without its answer."""
        if not self.result.called:
            self.result.errback(failure)


class Dialer:
    """
    The transports and dial strategies of one node (see the module docstring).

    @param may_dial_address: the admission policy's check of an address
        (its whitelist).
    """

    def __init__(self, table: "PeerTable", clock: Any, local_id: PeerId, network: str,
                 config: Callable[[], Config], may_dial_address: Callable[[Address], bool]) -> None:
        self.table = table
        self.clock = clock
        self.local_id = local_id
        self.network = network
        self.config = config
        self._may_dial_address = may_dial_address
        self._transports: dict[str, Transport] = {}
        self._strategies: dict[str, DialStrategy] = {}

    # -- registries ------------------------------------------------------------

    def add_transport(self, transport: Transport) -> None:
        if transport.name in self._transports:
            raise ValueError(f"a {transport.name} transport is registered already")
        self._transports[transport.name] = transport

    def transport(self, name: str) -> Optional[Transport]:
        return self._transports.get(name)

    def register(self, strategy: DialStrategy) -> Callable[[], None]:
        """Add a dial strategy; returns a function that removes it."""
        if strategy.name in self._strategies:
            raise ValueError(f"a dial strategy named {strategy.name!r} is registered already")
        self._strategies[strategy.name] = strategy

        def unregister() -> None:
            if self._strategies.get(strategy.name) is strategy:
                del self._strategies[strategy.name]

        return unregister

    def unregister(self, name: str) -> bool:
        """Remove the dial strategy named C{name}; False if there is none."""
        return self._strategies.pop(name, None) is not None

    @property
    def strategies(self) -> list[DialStrategy]:
        """The registered strategies."""
        return list(self._strategies.values())

    # -- planning ---------------------------------------------------------------

    def may_dial(self, address: Address) -> bool:
        """Whether a transport of ours can dial C{address} and the whitelist lets us."""
        transport = self._transports.get(address.transport)
        return transport is not None and transport.available() and self._may_dial_address(address)

    def plan(self, info: PubConnectionInfo, hints: Optional[Mapping[str, Any]] = None) -> list[Leg]:
        """The legs of a connect attempt to C{info}'s peer, one per strategy that applies, earliest first."""
        hints = hints or {}
        legs = []
        for strategy in self.strategies:
            targets = tuple(strategy.targets(info, hints))
            if targets:
                kinds = getattr(strategy, "kinds", None)
                legs.append(Leg(strategy.name, strategy.delay(hints), targets, strategy.dial, strategy.path_kind,
                                kinds(info, targets) if kinds is not None else {}))
        return sorted(legs, key=lambda leg: leg.delay)

    # -- making connections ---------------------------------------------------------

    def factory(self, purpose: Purpose = ACCEPTED, *, initiator: bool, intent: Intent = Intent.CONNECT,
                expected: Optional[PeerId] = None, transport_name: str = "tcp") -> ConnectionFactory:
        """A factory of connections for C{purpose} (accepted ones: C{initiator=False})."""
        return ConnectionFactory(self.table, self.clock, self.local_id, self.network, self.config,
                                 purpose=purpose, initiator=initiator, intent=intent,
                                 expected_peer=expected, transport_name=transport_name)

    def dial(self, address: Address, purpose: Purpose, *, expected: Optional[PeerId],
             intent: Intent = Intent.CONNECT, bind: Optional[tuple[str, int]] = None,
             from_listener: bool = False) -> Deferred:
        """Connect to one address for C{purpose}; fires with the L{PeerConnection}."""
        transport = self._transports.get(address.transport)
        if transport is None or not transport.available():
            return fail(CrustError(f"{address}: this node has no {address.transport} transport"))
        factory = self.factory(purpose, initiator=True, intent=intent, expected=expected,
                               transport_name=address.transport)
        if from_listener:
            return transport.dial(address, factory, expected, bind, from_listener=True)
        return transport.dial(address, factory, expected, bind)

    def probe(self, address: Address, expected_peer: Optional[PeerId] = None,
              bind: Optional[tuple[str, int]] = None, from_listener: bool = False) -> Deferred:
        """
        Open a connection to C{address} only to run the handshake: fires with
        a L{ProbeResult}.  Used for external address discovery, reachability
        tests and liveness checks.
        """
        probe = Probe(self.clock)
        self.dial(address, probe, expected=expected_peer, intent=Intent.PROBE, bind=bind,
                  from_listener=from_listener).addErrback(probe.failed)
        return probe.result


class DirectStrategy:
    """
    Dial every address of one transport in the peer's connection info.

    @param delay: returns this strategy's start delay (read at each attempt:
        the configuration may change).
    """

    path_kind = "direct"

    def __init__(self, dialer: Dialer, name: str, transport: str, delay: Callable[[], float] = lambda: 0.0,
                 local_addresses: Callable[[], Sequence[Address]] = lambda: ()) -> None:
        self._dialer = dialer
        self.name = name
        self.transport = transport
        self._delay = delay
        self._local_addresses = local_addresses

    def delay(self, hints: Mapping[str, Any]) -> float:
        return self._delay()

    def targets(self, info: PubConnectionInfo, hints: Mapping[str, Any]) -> list[Address]:
        dialer = self._dialer
        found = [a for a in info.addresses if a.transport == self.transport and dialer.may_dial(a)]
        if any(a.is_loopback for a in found) and not self._same_machine(info):
            found = [a for a in found if not a.is_loopback]  # its loopback is ours: not worth dialling
        return found

    def _same_machine(self, info: PubConnectionInfo) -> bool:
        """Whether the peer may be on this machine: we are on loopback only, or it names one of our addresses."""
        ours = {a.host for a in self._local_addresses() if not a.is_loopback}
        return not ours or any(a.host in ours for a in info.addresses if not a.is_loopback)

    def kinds(self, info: PubConnectionInfo, targets: Sequence[Hashable]) -> dict[Hashable, str]:
        """Connections to the peer's port-mapped addresses are C{mapped}, to its TURN relay C{relayed}."""
        kind = {CandidateKind.MAPPED: "mapped", CandidateKind.RELAY: "relayed"}
        named = {c.address: kind[c.kind] for c in info.candidates if c.kind in kind}
        return {t: named[t] for t in targets if t in named}

    def dial(self, target: Address, attempt: ConnectAttempt) -> Deferred:
        return self._dialer.dial(target, attempt, expected=attempt.peer_id)
