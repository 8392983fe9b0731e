"""
L{UdpSide}: a node's UDP side, wired.  One socket carries QUIC, the STUN
client and responder, the secure echo and, with TURN servers configured,
the TURN clients; a second, answering-only socket answers echoes while the
node accepts bootstrap requests (HELLO C{echo_alt}).  QUIC is a transport
of the dialer, with its direct strategy a moment after TCP's.

Extra sockets made for birthday probing get a QUIC dispatcher of their own
(L{UdpSide.quic_for_socket}).
"""

from __future__ import annotations

from typing import Any, Callable

from crust.config import Config
from crust.identity import Identity
from crust.nat.addresses import OurAddresses
from crust.nat.turn_wiring import install as install_turn
from crust.nat.udp_stack import build_echo_socket, build_udp_stack
from crust.peering.dialer import Dialer, DirectStrategy
from crust.transport.quic.dispatcher import QUIC_FIRST_BYTE, QuicDispatcher, QuicOptions, is_quic
from crust.wire import CertInfo


class UdpSide:
    """
    The UDP sockets of a node and what lives on them.

    @ivar stack: the L{crust.nat.udp_stack.UdpStack} (socket, STUN client and responder, echo).
    @ivar endpoint: its socket, the L{crust.transport.udp.UdpEndpoint}.
    @ivar echo_socket: the answering-only second socket.
    @ivar turn: the L{crust.nat.turn_wiring.TurnRelays}, or None without TURN servers.
    @ivar quic: the L{QuicDispatcher} on the socket (a transport of the dialer).

    @param config: the node's current configuration (read at start, and for the QUIC dial delay).
    @param accepted: called with each QUIC connection a peer opened to us.
    """

    def __init__(self, *, reactor: Any, identity: Identity, config: Callable[[], Config], cert_info: CertInfo,
                 dialer: Dialer, table: Any, addresses: OurAddresses,
                 accepted: Callable[[Any], Any]) -> None:
        self._identity = identity
        self._reactor = reactor
        self._cert_info = cert_info
        self._accepted = accepted
        self._extra: dict[Any, QuicDispatcher] = {}  # extra sockets (birthday probing) -> their QUIC dispatcher
        now = config()
        self.stack = build_udp_stack(reactor, host=now.listen_host, port=now.udp_listen_port or 0,
                                     identity=identity)
        self.endpoint = self.stack.endpoint
        self.echo_socket = build_echo_socket(reactor, host=now.listen_host, identity=identity)
        self.turn = install_turn(config=now, endpoint=self.endpoint, clock=reactor, addresses=addresses,
                                 table=table, deliver=lambda data, addr: self.quic.datagram_received(data, addr))
        send = self.turn.wrap_send(self.endpoint.send) if self.turn is not None else self.endpoint.send
        self.quic = QuicDispatcher(
            identity, send, clock=reactor, accepted=accepted, host=self._host,
            options=QuicOptions(idle_timeout=now.inactivity_timeout + 10), cert_info=cert_info)
        self.endpoint.register(is_quic, self.quic.datagram_received, "quic", first_byte_at_least=QUIC_FIRST_BYTE)
        dialer.add_transport(self.quic)
        dialer.register(DirectStrategy(dialer, "quic", "udp", lambda: config().quic_dial_delay,
                                       local_addresses=lambda: addresses.listen))

    def _host(self) -> Any:
        transport = self.endpoint.transport
        assert transport is not None, "the QUIC dispatcher is asked for the address only while listening"
        return transport.getHost()

    def quic_for_socket(self, socket: Any) -> QuicDispatcher:
        """
        The QUIC dispatcher on an extra UDP socket (birthday probing), made
        on first use; the socket closes with its last connection.  One per
        socket: two dials on one socket share it (a second dispatcher would
        never see a datagram, and would close the socket when its dial failed).
        """
        dispatcher = self._extra.get(socket)
        if dispatcher is not None and not dispatcher.closed:
            return dispatcher
        dispatcher = QuicDispatcher(self._identity, socket.send, clock=self._reactor, accepted=self._accepted,
                                    host=lambda: socket.transport.getHost(), options=self.quic.options,
                                    cert_info=self._cert_info)
        unregister = socket.register(is_quic, dispatcher.datagram_received, "quic",
                                     first_byte_at_least=QUIC_FIRST_BYTE)
        self._extra[socket] = dispatcher

        def empty() -> None:
            if self._extra.get(socket) is dispatcher:
                del self._extra[socket]
            unregister()
            socket.stop()

        dispatcher.on_empty = empty
        return dispatcher


__all__ = ["UdpSide"]
