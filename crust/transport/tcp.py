"""
L{TcpTransport}: crust connections over TCP, each inside Twisted's TLS layer.

It dials and listens for any protocol factory: the TLS 1.3 handshake (the
node's certificate, the peer's checked by the connection's verify callback,
L{crust.transport.tls}) runs in a C{TLSMemoryBIOFactory} wrapped around it, and the
protocol the caller gets is the one its factory built.

The listening socket is bound with C{SO_REUSEADDR} and C{SO_REUSEPORT}, so
connections can also leave I{from} the listening port (L{TcpTransport.dial}
with C{from_listener}): a peer then sees the same address for our outgoing
connections as for our listener, and TCP simultaneous open (hole punching)
works.  On such connections who is the TLS client is not settled by who
called C{connect()} (after a simultaneous open both did): the caller says,
and for connections the listener accepts, an accept hook
(L{TcpTransport.set_accept_hook}) may claim a connection and make us its TLS
client.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Optional, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.tcp import makeBinding
from twisted.protocols.tls import TLSMemoryBIOFactory

from crust.address import Address
from crust.identity import PeerId
from crust.transport.tls import ConnectionCreator

MAX_SYN_WAIT = 10.0  # seconds a connect() waits for the peer's SYN-ACK

#: C{hook(addr) -> factory or None}: a factory claims an accepted connection, which we then run as TLS client.
AcceptHook = Callable[[Any], Optional[Factory]]


class _AcceptRoles(Factory):
    """The listener's factory: TLS server by default, TLS client for connections the accept hook claims."""

    noisy = False

    def __init__(self, transport: "TcpTransport", factory: Factory) -> None:
        self._transport = transport
        self._server = TLSMemoryBIOFactory(transport.creator(), False, factory, clock=transport.reactor)

    def buildProtocol(self, addr: Any) -> Any:
        hook = self._transport.accept_hook
        claimed = hook(addr) if hook is not None else None
        if claimed is not None:
            client = TLSMemoryBIOFactory(self._transport.creator(), True, claimed, clock=self._transport.reactor)
            return client.buildProtocol(addr)
        return self._server.buildProtocol(addr)


class TcpTransport:
    """
    @param reactor: for TCP and the clock.
    @param creator: returns the TLS connection creator to use (read at each
        dial and listen).
    @param timeout: returns the connect timeout in seconds.
    @param available: returns whether TCP is enabled.
    @ivar listening_port: the listening port, once listening.
    @ivar accept_hook: see L{set_accept_hook}.
    """

    name = "tcp"

    def __init__(self, reactor: Any, creator: Callable[[], ConnectionCreator],
                 timeout: Callable[[], float], available: Callable[[], bool] = lambda: True) -> None:
        self.reactor = reactor
        self.creator = creator
        self._timeout = timeout
        self._available = available
        self.listening_port: Any = None
        self.accept_hook: Optional[AcceptHook] = None

    def available(self) -> bool:
        return self._available()

    def set_accept_hook(self, hook: Optional[AcceptHook]) -> None:
        """Let C{hook} claim accepted connections (the hole puncher does, for its peers' addresses)."""
        self.accept_hook = hook

    def listener_binding(self) -> Optional[tuple[str, int]]:
        """The (host, port) our listener is bound to, or None."""
        if self.listening_port is None:
            return None
        host = self.listening_port.getHost()
        return host.host, host.port

    def dial(self, address: Address, factory: Factory, expected: Optional[PeerId] = None,
             bind: Optional[tuple[str, int]] = None, *, from_listener: bool = False,
             tls_client: bool = True, timeout: Optional[float] = None) -> Deferred:
        """
        Connect to C{address}; fires with the protocol C{factory} built (its
        TLS handshake running).

        @param bind: the local (host, port) to connect from (a fresh socket).
        @param from_listener: connect from our listening port instead (it
            must be listening).
        @param tls_client: whether we are the TLS client (send the ClientHello).
        """
        binding: Union[tuple[str, int], Any, None] = bind
        if from_listener:
            local = self.listener_binding()
            if local is None:
                return fail(CannotListenError(None, 0, "not listening: no port to connect from"))
            binding = makeBinding(local[0], local[1], reuseAddress=True, reusePort=True)
        tls = TLSMemoryBIOFactory(self.creator(), tls_client, factory, clock=self.reactor)
        endpoint_type = TCP6ClientEndpoint if address.family_is_v6 else TCP4ClientEndpoint
        # a SYN unanswered after its retransmissions (1 + 2 + 4 s) will not be answered: no point waiting longer
        seconds = min(self._timeout(), MAX_SYN_WAIT) if timeout is None else timeout
        endpoint = endpoint_type(self.reactor, address.host, address.port,
                                 timeout=max(1, int(seconds)), bindAddress=binding)
        return endpoint.connect(tls).addCallback(_wrapped)

    def listen(self, host: str, port: int, factory: Factory, backlog: int = 128) -> Deferred:
        """
        Listen on C{host}:C{port} (0: a random port); fires with the
        listening port.  A given port that any other socket listens on, even
        one that allows C{SO_REUSEPORT} (another node of this user), is
        refused: sharing a port would split the connections between nodes.
        """
        if port:
            problem = _port_taken(host, port)
            if problem is not None:
                return fail(CannotListenError(host, port, problem))
        binding = makeBinding(host, port, reuseAddress=True, reusePort=True)
        try:
            self.listening_port = self.reactor.listenTCP(binding, _AcceptRoles(self, factory), backlog, host)
        except CannotListenError as e:
            return fail(e)
        return succeed(self.listening_port)


def _wrapped(tls_protocol: Any) -> Any:
    """The protocol inside Twisted's TLS protocol."""
    return tls_protocol.wrappedProtocol


def _port_taken(host: str, port: int) -> Optional[OSError]:
    """Bind a plain socket (no C{SO_REUSEPORT}) to the port: the error if that fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as e:
        return e
    finally:
        probe.close()
    return None
