"""
L{Listeners}: the node's listening sockets, started once per run.

TCP listens on the configured host and port (random unless configured);
the UDP socket carries STUN, the address echo and QUIC.  Each accepted
connection is built by the dialer's factory for accepted connections; what
the listeners' addresses are goes to L{crust.nat.addresses.OurAddresses};
observers hear of each listener that starts or fails.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust._util.local_addresses import addresses_for_listener
from crust._util.waiters import OneShot
from crust.address import Address
from crust.config import Config
from crust.errors import CrustError
from crust.identity import PeerId
from crust.nat.addresses import OurAddresses
from crust.peering.dialer import Dialer
from crust.transport.tcp import TcpTransport


class Listeners:
    """
    @param udp_endpoint: the node's UDP socket (not yet bound), or None.
    @param quic: the QUIC dispatcher on that socket, or None.
    @param echo_socket: an answering-only UDP socket (L{crust.nat.udp_stack.EchoSocket}),
        bound while the node accepts bootstrap requests.
    @param running: returns whether the node accepts connections.
    @param listening: called with (TCP port, UDP port) once listening (port mapping starts there).
    @param clock: paces L{refresh}.
    @ivar ports: the listening TCP ports.
    """

    log = Logger()
    #: the least time between two looks at the host's interfaces (L{refresh})
    refresh_interval = 2.0

    def __init__(self, *, peer_id: PeerId, config: Callable[[], Config], dialer: Dialer, tcp: TcpTransport,
                 udp_endpoint: Any, quic: Any, addresses: OurAddresses, emit: Callable[..., None],
                 echo_socket: Any = None,
                 running: Callable[[], bool], listening: Callable[[Optional[int], Optional[int]], None],
                 clock: Any = None) -> None:
        self._peer_id = peer_id
        self._config = config
        self._dialer = dialer
        self._tcp = tcp
        self._udp = udp_endpoint
        self._quic = quic
        self._echo_socket = echo_socket
        self._addresses = addresses
        self._emit = emit
        self._running = running
        self._listening = listening
        self._started: Optional[OneShot] = None
        self.ports: list[Any] = []
        self._clock = clock
        self._next_refresh = float("-inf")

    def start(self) -> Deferred:
        """Start listening (once per run); fires with our listening addresses."""
        if self._started is None:
            self._started = OneShot()
            d = self._listen_tcp()
            d.addCallback(lambda _: self._listen_udp())
            d.addCallback(self._done)
            d.addBoth(self._started.fire)
        return self._started.wait()

    def refresh(self) -> bool:
        """
        Look at the host's interfaces again (at most every L{refresh_interval}
        seconds, and only for listeners bound to every interface): the host
        may have moved to another network, or a VPN come up, since we began
        listening.  Returns whether our listening addresses changed.
        """
        if self._clock is not None:
            now = self._clock.seconds()
            if now < self._next_refresh:
                return False
            self._next_refresh = now + self.refresh_interval
        current = self._addresses.listen
        host = self._config().listen_host
        if not current or not ipaddress.ip_address(host).is_unspecified:
            return False
        ports: dict[str, int] = {}
        for address in current:
            ports.setdefault(address.transport, address.port)
        hosts = addresses_for_listener(host)
        fresh = [Address(transport, h, port) for transport, port in ports.items() for h in hosts]
        if set(fresh) == set(current):
            return False
        gone = sorted({a.host for a in current} - set(hosts))
        self.log.info("this host's addresses changed: now {addresses}{gone}", addresses=" ".join(hosts),
                      gone=f" ({' '.join(gone)} gone)" if gone else "")
        self._addresses.listen = fresh
        return True

    def local_ports(self) -> tuple[Optional[int], Optional[int]]:
        """Our (TCP listening port, UDP port), each None when not listening."""
        tcp = self._tcp.listener_binding()
        udp = self._udp.local_address() if self._udp is not None and self._udp.listening else None
        return (tcp[1] if tcp else None), (udp.port if udp is not None else None)

    def echo_port(self) -> Optional[int]:
        """The port of our answering-only UDP socket, while it is bound."""
        socket = self._echo_socket
        if socket is None or not socket.endpoint.listening:
            return None
        return socket.endpoint.local_address().port

    def stop(self) -> None:
        if self._echo_socket is not None and self._echo_socket.endpoint.listening:
            self._echo_socket.endpoint.stop()
        for port in self.ports:
            port.stopListening()
        self.ports = []
        self._started = None
        self._tcp.listening_port = None
        self._addresses.listen = []

    def quic_accepted(self, driver: Any) -> None:
        """A peer opened a QUIC connection to us: run crust's handshake on it."""
        if not self._running():
            driver.close_now("the node is not accepting connections")
            return
        factory = self._dialer.factory(initiator=False, transport_name="udp")
        driver.attach(factory.buildProtocol(driver.peer_address()))

    def _done(self, _: Any) -> list[Address]:
        if self._clock is not None:
            self._next_refresh = self._clock.seconds() + self.refresh_interval
        addresses = list(self._addresses.listen)
        tcp = [a for a in addresses if a.transport == "tcp"]
        udp_port = None
        if self._udp is not None and self._udp.listening:
            udp_port = self._udp.local_address().port
        self._listening(tcp[0].port if tcp else None, udp_port)
        return addresses

    def _listen_udp(self) -> Deferred:
        if self._udp is None:
            return succeed(None)
        config = self._config()
        try:
            address = self._udp.listen()
        except CannotListenError as e:
            reason = f"cannot listen on udp {config.listen_host}:{config.udp_listen_port or 0}: {e.socketError}"
            self.log.error("{reason}", reason=reason)
            self._emit("listener_failed", "udp", reason)
            return fail(CrustError(reason))
        self.log.debug("udp socket on {address}", address=str(address))
        if self._echo_socket is not None and config.accept_bootstrap and not self._echo_socket.endpoint.listening:
            try:
                alt = self._echo_socket.endpoint.listen()
            except CannotListenError as e:
                self.log.warn("no second UDP echo socket: {error}", error=str(e.socketError))
            else:
                self.log.debug("address echo also answers on {address}", address=str(alt))
        if self._quic is not None:
            self._quic.closed = False  # (again, after a restart)
            self._addresses.listen += self._udp.local_addresses()
            self._emit("listener_started", address)
        return succeed(address)

    def _listen_tcp(self) -> Deferred:
        config = self._config()
        if not config.enable_tcp:
            return succeed([])
        host = config.listen_host
        port = config.listen_port or 0

        def listening(listening_port: Any) -> None:
            self.ports.append(listening_port)
            bound = listening_port.getHost().port
            self._addresses.listen = [Address("tcp", h, bound) for h in addresses_for_listener(host)]
            self.log.debug(
                "listening on tcp port {port} as {peer_id}; addresses: {addresses}",
                port=bound, peer_id=str(self._peer_id), addresses=" ".join(map(str, self._addresses.listen)),
            )
            self._emit("listener_started", Address("tcp", host, bound))

        def failed(failure: Failure) -> Failure:
            reason = str(failure.value)
            self.log.error("could not listen on tcp {host}:{port}: {reason}", host=host, port=port, reason=reason)
            self._emit("listener_failed", "tcp", reason)
            return failure

        factory = self._dialer.factory(initiator=False, transport_name="tcp")
        return self._tcp.listen(host, port, factory).addCallbacks(listening, failed)
