"""
L{Service}: a crust node's public API, as a Twisted C{IService}::

    service = Service(Identity.load_or_create("key"), Config(network_name="demo"))
    service.add_observer(my_observer)
    service.setServiceParent(application)          # or service.startService()
    info = await service.prepare_connection_info()
    print(info.public.to_json())                    # hand this to the other side
    peer_id = await service.connect(info, their_info)
    service.send(peer_id, b"hello", priority=1)

Operations return Deferreds; unsolicited events reach the observers
(L{crust.interfaces.ICrustObserver}).

The service is a facade: it owns the node's lifetime, its listeners and its
configuration, and wires the parts that do the work: the peer table
(L{crust.peering.table}), the admission policy (L{crust.peering.admission}), the dialer and
its dial strategies (L{crust.peering.dialer}), the connect attempts
(L{crust.peering.connector}), bootstrapping both ways (L{crust.bootstrap.bootstrapper},
L{crust.bootstrap.responder}) and the observers (L{crust.observer}).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Optional, Union

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger

from crust._util.reactor import maybe_global_reactor
from crust.address import Address
from crust.peering.admission import Admission
from crust.bootstrap.cache import BootstrapCache
from crust.bootstrap.responder import BootstrapResponder
from crust.bootstrap.lan import LanDiscovery
from crust.bootstrap.bootstrapper import Bootstrapper, CacheValidator
from crust.config import Config
from crust.session.connection import PeerConnection
from crust.connection_info import PrivConnectionInfo, PubConnectionInfo, info_for
from crust.peering.connector import Connector
from crust.peering.listeners import Listeners
from crust.peering.udp import UdpSide
from crust.peering.dialer import Dialer, DirectStrategy, ProbeResult
from crust.errors import (
    ConnectToSelf,
    CrustError,
    MessageTooLarge,
    PeerNotConnected,
    ServiceNotRunning,
)
from crust.identity import Identity, PeerId
from crust.metrics import ServiceMetrics
from crust.nat.addresses import OurAddresses
from crust.nat.reflexive import ReflexiveDiscovery
from crust.observer import Observers
from crust.punch.wiring import install as install_punching
from crust.relay.wiring import install as install_relaying
from crust.session.signing import install as install_signing
from crust.streams.wiring import install as install_streams
from crust.peering.table import PeerTable
from crust.roles import Role
from crust.transport.tcp import TcpTransport
from crust.transport.tls import ConnectionCreator, make_context
from crust.wire import CertInfo, CloseReason, Hello, network_hash

__all__ = ["ProbeResult", "Service"]


class Service(MultiService):
    """
    A crust node: listens, connects, and carries messages to peers.

    @param identity: this node's key pair (its L{PeerId} is C{identity.peer_id}).
    @param config: settings (L{Config}); defaults suit most uses.
    @param reactor: the reactor (and clock) to use; the global one by default.
    @param role: C{"node"} (reachable, may serve others) or C{"client"}.
    @param data_dir: where state is kept (the bootstrap cache); without it
        the cache lives in memory only.
    """

    log = Logger()

    def __init__(self, identity: Identity, config: Optional[Config] = None, reactor: Any = None,
                 role: str = "node", data_dir: Optional[str] = None) -> None:
        MultiService.__init__(self)
        reactor = maybe_global_reactor(reactor)
        self.identity = identity
        self.peer_id = identity.peer_id
        self.config = config or Config()
        self.reactor = reactor
        self.clock = reactor
        self.role = role
        self.network = network_hash(self.config.network_name)
        self.accepting_transports: set[str] = {"tcp"} if self.config.enable_tcp else set()
        self.cert_info = CertInfo(network=self.network, role=role)  # in our certificates (doc/protocol.md)
        self._creator = ConnectionCreator(make_context(identity, self.cert_info))
        self.observers = Observers()
        self.admission = Admission(lambda: self.config)
        self.peers = PeerTable(self.admission, self.observers, lambda conn: self._hello_for(conn), reactor)
        self.dialer = Dialer(self.peers, self.clock, self.peer_id, self.network, lambda: self.config,
                             self.admission.may_dial)
        self.tcp = TcpTransport(reactor, lambda: self._creator, lambda: self.config.connect_timeout,
                                lambda: self.config.enable_tcp)
        self.tcp.set_admission(self.peers.inbound_refusal)
        self.dialer.add_transport(self.tcp)
        self.dialer.register(DirectStrategy(self.dialer, "tcp", "tcp", local_addresses=lambda: self.addresses.listen))
        self.addresses = OurAddresses(lambda: self.accepting_transports)
        self.data_dir = data_dir
        self.bootstrap_cache: Optional[BootstrapCache] = None
        if data_dir is not None or self.config.bootstrap_cache.file is not None:
            self.bootstrap_cache = BootstrapCache.from_config(self.config, data_dir or ".", self.clock)
            self.bootstrap_cache.setServiceParent(self)
        self.bootstrapper = Bootstrapper(
            peer_id=self.peer_id, clock=self.clock, config=lambda: self.config, dialer=self.dialer,
            table=self.peers, emit=self.observers.emit, cache=self.bootstrap_cache, ready=self.start_listening,
            discovery=lambda: self.discovery_requester, transports=lambda: self.accepting_transports)
        self.bootstrap_responder = BootstrapResponder(
            self.peers, self.dialer, self.admission, self.clock, lambda: self.config,
            lambda: self.running_for_peers, self.observers.emit)
        CacheValidator(self).setServiceParent(self)
        self.port_mapper: Any = None
        self.udp: Optional[UdpSide] = None
        self.udp_endpoint: Any = None
        self.udp_stack: Any = None  # the endpoint with its STUN client, STUN responder and echo
        self.echo_socket: Any = None
        self.quic: Any = None
        self.turn: Any = None  # the TURN relays (crust.nat.turn_wiring), with TURN servers configured
        if self.config.enable_udp:
            self.udp = UdpSide(reactor=reactor, identity=identity, config=lambda: self.config,
                               cert_info=self.cert_info, dialer=self.dialer, table=self.peers,
                               addresses=self.addresses, accepted=lambda driver: self.listeners.quic_accepted(driver))
            udp = self.udp
            self.udp_stack, self.udp_endpoint, self.echo_socket = udp.stack, udp.endpoint, udp.echo_socket
            self.turn, self.quic = udp.turn, udp.quic
            self.accepting_transports.add("udp")
        self.listeners = Listeners(
            peer_id=self.peer_id, config=lambda: self.config, dialer=self.dialer, tcp=self.tcp,
            udp_endpoint=self.udp_endpoint, quic=self.quic, echo_socket=self.echo_socket,
            addresses=self.addresses, emit=self.observers.emit, clock=self.clock,
            running=lambda: self.running_for_peers, listening=self._listening)
        self.reflexive = ReflexiveDiscovery(
            self.clock, self.addresses, self.udp_stack.echo if self.udp_stack is not None else None,
            (lambda address, peer: self.dialer.probe(address, peer, from_listener=True)) if self.config.enable_tcp
            else None, self.listeners.local_ports)
        self.peers.listen(self.reflexive)
        self.punch = install_punching(
            identity=identity, network=self.network, reactor=reactor, config=lambda: self.config, table=self.peers,
            dialer=self.dialer, addresses=self.addresses, tcp=self.tcp if self.config.enable_tcp else None,
            udp_endpoint=self.udp_endpoint, quic_for_socket=self.udp.quic_for_socket if self.udp else None,
            our_info=self._public_info)
        self.relay = install_relaying(
            local_id=self.peer_id, reactor=reactor, config=lambda: self.config, table=self.peers, dialer=self.dialer,
            rendezvous=self.punch.rendezvous, creator=lambda: self._creator, emit=self.observers.emit, tcp=self.tcp,
            parent=self)
        self.streams = install_streams(local_id=self.peer_id, clock=self.clock, table=self.peers)
        # told of promotions last: the cache and the connection's path are up to date when connect() fires
        self.connector = Connector(self.dialer, self.peers, self.clock, lambda: self.config, self.observers.emit)
        self.signing = install_signing(identity=identity, network=self.config.network_name or "", clock=self.clock,
                                       config=lambda: self.config, table=self.peers, events=self.observers)
        self.lan = LanDiscovery(peer_id=self.peer_id, config=lambda: self.config, reactor=reactor,
                                our_info=lambda: (self.peer_id, self.candidate_addresses()), parent=self)
        self._inflight: set[Deferred] = set()  # bootstraps and discovery rounds, cancelled on stop
        self.metrics = ServiceMetrics(self)  # Prometheus figures, in a registry of this service's own (doc/metrics.md)
        # what send() reads, bound once (the hot path): the same dicts and lists, never rebound
        self._sent_counts, self._sent_bytes = self.metrics.sent_messages, self.metrics.sent_bytes
        self._active, self._signed_batches = self.peers.active, self.signing.batches

    @property
    def running_for_peers(self) -> bool:
        """Whether the node runs: accepts connections and requests."""
        return self.peers.accepting

    @running_for_peers.setter
    def running_for_peers(self, value: bool) -> None:
        self.peers.accepting = value

    # -- observers ---------------------------------------------------------------

    def add_observer(self, observer: Any) -> None:
        """Register an L{ICrustObserver} (any object with the event methods)."""
        self.observers.add(observer)

    def remove_observer(self, observer: Any) -> None:
        self.observers.remove(observer)

    def _emit(self, event: str, *args: Any) -> None:
        self.observers.emit(event, *args)

    # -- IService ---------------------------------------------------------------------

    def startService(self) -> None:
        MultiService.startService(self)
        self.running_for_peers = True
        self.start_listening().addErrback(lambda f: None)  # reported as listener_failed

    def stopService(self) -> Deferred:
        self.running_for_peers = False
        for d in list(self._inflight):
            d.cancel()
        self.connector.stop("the service is stopping")
        self.listeners.stop()
        self.reflexive.stop()
        self.punch.stop()
        self.signing.flush_all()  # open signed batches go out before CLOSE
        for conn in list(self.peers.connections):
            conn.close(CloseReason.SHUTDOWN, "the node is stopping")
        d = self.peers.wait_all_closed()  # each sent CLOSE, then closed (aborted if it stalls)

        def close_udp(_: Any) -> Deferred:
            if self.quic is not None:
                self.quic.close_all("the node is stopping")  # attempts still in their handshake
            if self.udp_endpoint is None:
                return succeed(None)
            # a turn for the QUIC close packets to leave before the socket closes; TURN allocations go back
            return deferLater(self.reactor, 0, lambda: None).addCallback(
                lambda _: self.turn.stop() if self.turn else None).addCallback(lambda _: self.udp_endpoint.stop())

        d.addCallback(close_udp)
        d.addCallback(lambda _: deferLater(self.reactor, 0, lambda: None))  # let cancelled sockets close
        d.addCallback(lambda _: MultiService.stopService(self))
        d.addCallback(self._forget_port_mapper)
        return d

    def _forget_port_mapper(self, result: Any) -> Any:
        if self.port_mapper is not None:
            self.port_mapper.disownServiceParent()
            self.port_mapper = None
        self.addresses.clear()
        return result

    # -- listening ----------------------------------------------------------------------

    def start_listening(self) -> Deferred:
        """
        Start the listeners (once); fires with our listening addresses.
        The ports are random unless configured.
        """
        return self.listeners.start()

    def _listening(self, tcp_port: Optional[int], udp_port: Optional[int]) -> None:
        self._start_port_mapping(tcp_port, udp_port)
        if self.turn is not None:
            self.turn.start()

    def _start_port_mapping(self, tcp_port: Optional[int] = None, udp_port: Optional[int] = None) -> None:
        """Ask the router (PCP, NAT-PMP, UPnP IGD) to forward our ports; not for loopback listeners."""
        if not self.config.enable_port_mapping or self.port_mapper is not None:
            return
        if ipaddress.ip_address(self.config.listen_host).is_loopback:
            return
        from crust.nat.portmap.mapper import PortMapper

        self.port_mapper = PortMapper(tcp_port=tcp_port, udp_port=udp_port, reactor=self.reactor)
        self.port_mapper.add_observer(self.addresses.mapping_changed)
        self.port_mapper.setServiceParent(self)

    # -- connection info -------------------------------------------------------------------

    @property
    def listen_addresses(self) -> list[Address]:
        """Our listeners' own addresses (every interface's when bound to all)."""
        return self.addresses.listen

    @listen_addresses.setter
    def listen_addresses(self, addresses: list[Address]) -> None:
        self.addresses.listen = list(addresses)

    @property
    def external_addresses(self) -> list[Address]:
        """The addresses others see us at: port mappings, then what peers and STUN saw."""
        return list(self.addresses.mapped) + self.addresses.reflexive()

    def candidate_addresses(self) -> list[Address]:
        """Every address a peer may reach us at: external ones, then local, loopback last."""
        return self.addresses.addresses(self._forced_tcp_port())

    def _forced_tcp_port(self) -> Optional[int]:
        config = self.config
        return config.listen_port if config.force_acceptor_port_in_ext_ep and config.listen_port else None

    def _public_info(self) -> PubConnectionInfo:
        self.listeners.refresh()  # the host may have moved to another network since we began listening
        candidates = self.addresses.candidates(self._forced_tcp_port())
        return PubConnectionInfo(self.peer_id, tuple(c.address for c in candidates), candidates=tuple(candidates),
                                 nat=self.addresses.nat)

    def prepare_connection_info(self) -> Deferred:
        """Fires with our L{PrivConnectionInfo}; share C{.public.to_json()}."""

        def build(_):
            return PrivConnectionInfo(self._public_info())

        d = self.start_listening()
        if self.turn is not None:  # with the relayed addresses, unless allocating takes long
            d.addCallback(lambda _: self.turn.settled(3.0, self.clock))
        return d.addCallback(build)

    # -- connecting ---------------------------------------------------------------------------

    def connect(self, target: Union[PeerId, PubConnectionInfo, PrivConnectionInfo, str, bytes, None],
                their_info: Union[PubConnectionInfo, str, bytes, None] = None) -> Deferred:
        """
        Connect to a peer: C{connect(peer_id)} through a peer we are both
        connected to (hole punching), or C{connect(info)} with its connection
        info (a L{PubConnectionInfo}, its JSON text, or a peer id's text).
        The older form C{connect(our_info, their_info)} means C{connect(their_info)}.

        Every way the dialer's strategies know is tried at once or after its
        delay: direct TCP, direct QUIC a moment later, and through a common
        peer (or, with no common peer, when both users paste each other's
        info at about the same time) TCP and UDP hole punching; the first to
        complete the secure handshake wins.  Fires with the L{PeerId}; fails
        with L{crust.errors.ConnectFailed} (listing every strategy's and
        address's reason), L{ConnectToSelf} or L{ServiceNotRunning}.
        """
        if their_info is not None:
            target = their_info
        try:
            their_info = info_for(target)
        except CrustError as e:
            return fail(e)
        peer_id = their_info.peer_id
        if peer_id == self.peer_id:
            return fail(ConnectToSelf("refusing to connect to ourselves"))
        if not self.running_for_peers:
            return fail(ServiceNotRunning("the service is not running"))
        active = self.peers.active.get(peer_id)
        if active is not None and not active.closing:
            return succeed(peer_id)
        if active is not None:
            # closing (a disconnect just now): connect once it is gone, not to the connection that goes
            info = their_info
            return self.peers.when_closed(active).addCallback(lambda _: self.connect(info))
        if self.turn is not None:
            self.turn.note_peer(their_info)  # let its addresses in through our TURN relays
        return self.connector.connect(their_info)

    def probe(self, address: Address, expected_peer: Optional[PeerId] = None,
              bind: Optional[tuple[str, int]] = None) -> Deferred:
        """
        Open a connection to C{address} only to run the handshake: fires with
        a L{ProbeResult} (the peer's id and our address as it sees us).  Used
        for external address discovery, reachability tests and liveness checks.
        """
        return self.dialer.probe(address, expected_peer, bind)

    def netcheck(self, extra_peers: Iterable[Any] = (), options: Any = None) -> Deferred:
        """
        Learn what we can about our network: local and external addresses per
        protocol, the NAT's mapping and filtering, port mapping, hairpinning;
        fires with a L{crust.nat.netcheck.NetcheckReport} (never fails for network
        reasons: what did not answer is in the report).  Echo sources: the
        configured STUN servers, the hard-coded contacts, a few cached peers.
        """
        from crust.nat.netcheck import run_netcheck

        peers = list(self.config.hard_coded_contacts) + self.bootstrap_cached_peers()[:4] + list(extra_peers)
        udp = self.udp_stack
        return self.start_listening().addCallback(lambda _: run_netcheck(
            self, self.udp_endpoint, self.config.stun_servers, peers, self.port_mapper, self.clock, options,
            stun_client=udp.stun_client if udp is not None else None, echo=udp.echo if udp is not None else None,
            turn=self.turn.status if self.turn is not None else None))

    # -- messages ---------------------------------------------------------------------------

    def send(self, peer_id: PeerId, data: bytes, priority: int, signed: Union[bool, str] = False) -> None:
        """
        Queue C{data} for C{peer_id}.  Lower C{priority} numbers go first;
        0 and 1 are never dropped.  Raises L{PeerNotConnected},
        L{MessageTooLarge}, L{crust.errors.SendQueueFull} or
        L{crust.errors.InvalidPriority} at once, queueing nothing.
        C{signed=True} signs it, C{signed="batch"} signs it with the others of
        its priority sent within C{Config.signed_batch_window} (one
        signature): the peer gets a proof anyone can check (doc/signed.md).
        """
        conn = self._active.get(peer_id)
        if conn is None or conn.closing:
            raise PeerNotConnected(f"not connected to {peer_id}")
        try:
            if not (signed or self._signed_batches):
                conn.send_message(data, priority)
            elif signed:
                self.signing.send(conn, peer_id, data, priority, signed)
            else:
                self.signing.flush(peer_id, priority)  # a signed batch of this priority goes first: order is kept
                conn.send_message(data, priority)
        except MessageTooLarge as e:
            self._emit("message_too_large", peer_id, e.size, e.limit)
            raise
        self._sent_counts[priority] += 1
        self._sent_bytes[priority] += len(data)

    def when_writable(self, peer_id: PeerId) -> Deferred:
        """Fires once the peer's queue is at most half full (at once if it is)."""
        return self.peers.wait_writable(peer_id)

    def queued_bytes(self, peer_id: PeerId) -> int:
        conn = self.peers.active.get(peer_id)
        return conn.queued_bytes + self.signing.pending(peer_id) if conn is not None else 0

    def listen_streams(self, service: str, factory: Any) -> Any:
        """Accept byte streams peers open to C{service} (L{crust.streams}); returns an C{IListeningPort}."""
        return self.streams.listen(service, factory)

    def open_stream(self, peer: Any, service: str, factory: Any) -> Deferred:
        """Connect to C{peer} (see L{connect}), open a byte stream to its C{service}; fires with the protocol."""
        return self.connect(peer).addCallback(lambda peer_id: self.streams.open(peer_id, service, factory))

    def disconnect(self, peer_id: PeerId) -> bool:
        """
        Close the connection to C{peer_id}; True if there was one.  C{lost_peer}
        follows.  Connections to the peer still being made end too (a punch's
        that completes afterwards does not connect it again).
        """
        return self.peers.disconnect(peer_id, pending=True)

    # -- bootstrap ---------------------------------------------------------------------------

    def bootstrap(self, blacklist: Iterable[Any] = (), role: Union[Role, str, None] = None) -> Deferred:
        """
        Find the network: try LAN discovery replies, cached peers and the
        hard-coded contacts (minus C{blacklist}: addresses or their text),
        concurrently with a cap, within C{bootstrap_timeout}.  Fires with the
        L{PeerId} of the first peer that grants the request; fails with
        L{crust.bootstrap.plan.BootstrapFailed} listing every reason.
        C{role}: L{Role.NODE} claims to be reachable (the acceptor tests it),
        L{Role.CLIENT} only consumes; None (the default) claims to be a node
        and, when no peer can reach us back, joins as a client
        (C{bootstrapper.held_role} and C{bootstrapper.role_reason} say which
        and why).
        """
        if not self.running_for_peers:
            return fail(ServiceNotRunning("the service is not running"))
        role = Role.from_text(role) if isinstance(role, str) else role
        return self._track(self.bootstrapper.bootstrap(blacklist, role))

    def _track(self, d: Deferred) -> Deferred:
        """Remember C{d} until it fires, so stopping the service cancels it."""
        self._inflight.add(d)

        def forget(result: Any) -> Any:
            self._inflight.discard(d)
            return result

        return d.addBoth(forget)

    def set_accept_bootstrap(self, accept: bool) -> None:
        """Grant other peers' bootstrap requests (off by default in the library)."""
        self.config = self.config.replace(accept_bootstrap=bool(accept))

    def set_ext_reachability_test(self, enabled: bool) -> None:
        """Test a C{node} requester's reachability before granting (on by default)."""
        self.config = self.config.replace(external_reachability_test=bool(enabled))

    @property
    def bootstrapped_to(self) -> Optional[tuple[PeerId, Address]]:
        """The peer and address of our last successful bootstrap, if any."""
        return self.bootstrapper.bootstrapped_to

    def bootstrap_cached_peers(self) -> list[tuple[PeerId, Address]]:
        """The bootstrap cache, most recently used first."""
        return self.bootstrap_cache.peers() if self.bootstrap_cache is not None else []

    def is_peer_hard_coded(self, peer_id: PeerId) -> bool:
        return any(c.peer_id == peer_id for c in self.config.hard_coded_contacts)

    # -- LAN discovery ------------------------------------------------------------------------

    def start_service_discovery(self, listen: bool = False, destinations: Any = None,
                                interfaces: Iterable[str] = ("0.0.0.0",)) -> None:
        """
        Enable LAN discovery: bootstraps ask the LAN first, and (with
        C{listen}) we answer other nodes' requests on
        C{service_discovery_listener_port}.  C{destinations} overrides where
        requests go (default: every interface's broadcast address).
        """
        self.lan.start(listen, destinations, interfaces)

    def set_service_discovery_listen(self, listen: bool) -> None:
        """Answer (or stop answering) LAN discovery requests."""
        self.lan.set_listen(listen)

    @property
    def discovery_requester(self) -> Any:
        """The LAN discovery requester, once discovery started."""
        return self.lan.requester

    def has_peers_on_lan(self) -> Deferred:
        """Fires True if any node of our network answers LAN discovery within 1 s."""
        if not self.running_for_peers:
            return succeed(False)
        return self._track(self.lan.has_peers_on_lan())

    # -- configuration -----------------------------------------------------------------------

    def apply_config(self, config: Config) -> None:
        """
        Take a new configuration while running: whitelists, contacts, cache
        and bootstrap settings apply at once, and connections the new
        whitelists no longer allow are closed.  Listening ports and the
        network name apply at the next start.
        """
        old = self.config
        for name in ("network_name", "listen_port", "listen_host", "udp_listen_port"):
            if getattr(old, name) != getattr(config, name):
                self.log.warn("config: {field} changes take effect when the node restarts", field=name)
        config = config.replace(network_name=old.network_name, listen_port=old.listen_port,
                                listen_host=old.listen_host, udp_listen_port=old.udp_listen_port)
        self.config = config
        if self.bootstrap_cache is not None:
            self.bootstrap_cache.reconfigure(config)
        for peer_id, conn in list(self.peers.active.items()):
            if not self.admission.ip_allowed(conn, self.admission.peer_role(conn)):
                self.log.info("config: {peer} at {address} is no longer whitelisted; closing",
                              peer=str(peer_id), address=str(conn.peer_address))
                conn.close(CloseReason.NOT_WHITELISTED, "no longer whitelisted")

    # -- queries ---------------------------------------------------------------------------

    def is_connected(self, peer_id: PeerId) -> bool:
        conn = self.peers.active.get(peer_id)
        return conn is not None and not conn.closing

    def connected_peers(self) -> list[PeerId]:
        return [p for p, conn in self.peers.active.items() if not conn.closing]

    def peer_address(self, peer_id: PeerId) -> Optional[Address]:
        conn = self.peers.active.get(peer_id)
        return conn.peer_address if conn is not None else None

    def peer_role(self, peer_id: PeerId) -> Optional[str]:
        return self.peers.role_of(peer_id)

    def peer_details(self, peer_id: PeerId) -> Optional[dict[str, Any]]:
        """What is known of the connection to C{peer_id}, as JSON-ready values (None if not connected)."""
        return self.peers.details(peer_id)

    # -- what we tell peers ----------------------------------------------------------------------

    def _hello_for(self, conn: PeerConnection) -> Hello:
        return Hello(network=self.network, intent=conn.handshake.intent, role=conn.purpose.role or self.role,
                     observed=conn.peer_address, listeners=tuple(self.addresses.listeners(self._forced_tcp_port())),
                     echo_alt=self.listeners.echo_port(), handover=True, signed=True)
