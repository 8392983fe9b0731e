"""
L{install}: hole punching wired into a node: the two punchers on the node's
TCP listener and UDP socket, the rendezvous on its peer table, and the
three dial strategies on its dialer.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred

from crust.address import Address
from crust.config import Config
from crust.connection_info import PubConnectionInfo
from crust.identity import Identity, PeerId
from crust.nat.addresses import OurAddresses
from crust.peering.dialer import Dialer
from crust.peering.table import PeerTable
from crust.punch.manager import PunchManager
from crust.punch.strategies import RendezvousStrategy, TcpPunchStrategy, UdpPunchStrategy
from crust.punch.tcp import WINDOW, TcpPuncher
from crust.punch.udp import UdpPuncher
from crust.punch.upgrade import Upgrader
from crust.session.purpose import Purpose
from crust.transport.tcp import TcpTransport


def install(*, identity: Identity, network: str, reactor: Any, config: Callable[[], Config], table: PeerTable,
            dialer: Dialer, addresses: OurAddresses, tcp: Optional[TcpTransport], udp_endpoint: Any,
            quic_for_socket: Optional[Callable[[Any], Any]], our_info: Callable[[], PubConnectionInfo]
            ) -> PunchManager:
    """
    Wire hole punching into a node and return its manager.

    @param quic_for_socket: returns a QUIC dispatcher sending from a given
        extra UDP socket (birthday probing), or None without QUIC.
    """
    tcp_puncher = None
    if tcp is not None:
        def tcp_dial(address: Address, purpose: Purpose, peer: PeerId, tls_client: bool) -> Deferred:
            factory = dialer.factory(purpose, initiator=tls_client, expected=peer, transport_name="tcp")
            return tcp.dial(address, factory, peer, from_listener=True, tls_client=tls_client, timeout=WINDOW)

        def claim(purpose: Purpose, peer: PeerId) -> Any:
            return dialer.factory(purpose, initiator=True, expected=peer, transport_name="tcp")

        tcp_puncher = TcpPuncher(reactor, identity.peer_id, tcp_dial, claim, lambda: list(addresses.listen),
                                 lambda: addresses.nat)
        tcp.set_accept_hook(tcp_puncher.accept_hook)

    udp_puncher = None
    if udp_endpoint is not None and quic_for_socket is not None:
        def quic_dial(address: Address, purpose: Purpose, peer: PeerId, socket: Any) -> Deferred:
            if socket is None:
                return dialer.dial(address, purpose, expected=peer)
            dispatcher = quic_for_socket(socket)
            factory = dialer.factory(purpose, initiator=True, expected=peer, transport_name="udp")
            return dispatcher.dial(address, factory, peer)

        def open_socket() -> Any:
            from crust.transport.udp import UdpEndpoint

            socket = UdpEndpoint(reactor, host=config().listen_host, port=0, socket_buffer=0)
            socket.listen()
            return socket

        udp_puncher = UdpPuncher(udp_endpoint, identity, reactor, quic_dial, lambda: addresses.nat.udp,
                                 open_socket=open_socket)

    manager = PunchManager(identity=identity, network=network, clock=reactor, table=table,
                           serving=lambda: config().serve_rendezvous, our_info=our_info,
                           udp=udp_puncher, tcp=tcp_puncher)
    manager.upgrader = Upgrader(manager, table, reactor,  # relayed connections try for a direct path
                                lambda: (config().upgrade_interval, config().upgrade_interval_max))
    dialer.register(RendezvousStrategy(manager, dialer))
    if tcp_puncher is not None:
        dialer.register(TcpPunchStrategy(manager))
    if udp_puncher is not None:
        dialer.register(UdpPunchStrategy(manager))
    return manager
