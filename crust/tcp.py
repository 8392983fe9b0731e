"""
L{TcpTransport}: crust connections over TCP, each inside Twisted's TLS layer.

It dials and listens for any protocol factory: the TLS 1.3 handshake (the
node's certificate, the peer's checked by the connection's verify callback,
L{crust.tls}) runs in a C{TLSMemoryBIOFactory} wrapped around it, and the
protocol the caller gets is the one its factory built.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    TCP6ServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

from crust.address import Address
from crust.identity import PeerId
from crust.tls import ConnectionCreator


class TcpTransport:
    """
    @param reactor: for TCP and the clock.
    @param creator: returns the TLS connection creator to use (read at each
        dial and listen).
    @param timeout: returns the connect timeout in seconds.
    @param available: returns whether TCP is enabled.
    """

    name = "tcp"

    def __init__(self, reactor: Any, creator: Callable[[], ConnectionCreator],
                 timeout: Callable[[], float], available: Callable[[], bool] = lambda: True) -> None:
        self.reactor = reactor
        self._creator = creator
        self._timeout = timeout
        self._available = available

    def available(self) -> bool:
        return self._available()

    def dial(self, address: Address, factory: Factory, expected: Optional[PeerId] = None,
             bind: Optional[tuple[str, int]] = None) -> Deferred:
        """Connect to C{address}; fires with the protocol C{factory} built (its TLS handshake running)."""
        tls = TLSMemoryBIOFactory(self._creator(), True, factory, clock=self.reactor)
        endpoint_type = TCP6ClientEndpoint if address.family_is_v6 else TCP4ClientEndpoint
        endpoint = endpoint_type(self.reactor, address.host, address.port,
                                 timeout=max(1, int(self._timeout())), bindAddress=bind)
        return endpoint.connect(tls).addCallback(lambda tls_protocol: tls_protocol.wrappedProtocol)

    def listen(self, host: str, port: int, factory: Factory, backlog: int = 128) -> Deferred:
        """Listen on C{host}:C{port} (0: a random port); fires with the listening port."""
        tls = TLSMemoryBIOFactory(self._creator(), False, factory, clock=self.reactor)
        if ":" in host:
            endpoint: Any = TCP6ServerEndpoint(self.reactor, port, backlog=backlog, interface=host)
        else:
            endpoint = TCP4ServerEndpoint(self.reactor, port, backlog=backlog, interface=host)
        return endpoint.listen(tls)
