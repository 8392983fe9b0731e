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

A higher layer may also claim accepted connections by their first bytes,
before any TLS (L{TcpTransport.register_preamble}: the relay takes the
plain connections the ends of a circuit open to it, doc/relay.md).  While a
claim is active, an accepted connection's TLS server starts with its first
byte instead of at once: a TLS ClientHello (0x16) goes on to TLS in the same
turn; a registered preamble's first byte makes the connection wait for the
preamble (at most L{PREAMBLE_TIMEOUT} seconds), which is then handed to the
claim, which returns the protocol to run on the connection or why it is
refused.  Connections waiting for their first bytes are capped
(L{MAX_FIRST_BYTES}, L{MAX_FIRST_BYTES_PER_HOST}) as handshakes are.
L{TcpTransport.connect_plain} makes such a plain connection (no TLS).
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Optional, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet import tcp
from twisted.internet.tcp import makeBinding
from twisted.logger import ILogObserver, Logger
from zope.interface import implementer
from twisted.protocols.tls import TLSMemoryBIOFactory

from crust._util.ratelimit import RateLimiter
from crust.address import Address
from crust.identity import PeerId
from crust.transport.tls import ConnectionCreator

MAX_SYN_WAIT = 10.0  # seconds a connect() waits for the peer's SYN-ACK
ACCEPT_PAUSE = 1.0  # seconds the listener stops accepting when out of file descriptors
PREAMBLE_TIMEOUT = 5.0  # seconds an accepted connection may take to send its first bytes, when they are looked at
MAX_FIRST_BYTES = 256  # accepted connections waiting for their first bytes, from all hosts together
MAX_FIRST_BYTES_PER_HOST = 16  # from one host
TLS_HANDSHAKE = 0x16  # the first byte of a TLS connection: a handshake record (the ClientHello)

#: C{hook(addr) -> factory or None}: a factory claims an accepted connection, which we then run as TLS client.
AcceptHook = Callable[[Any], Optional[Factory]]
#: C{claim(preamble, addr) -> protocol or reason}: the protocol to run on a connection that began with a
#: registered preamble's first byte, or why it is refused (the connection is then closed).
PreambleClaim = Callable[[bytes, Any], "Protocol | str"]


class _Preamble:
    """A registered preamble: its magic (its first byte tells it), its size, its claim, whether it is active."""

    def __init__(self, magic: bytes, size: int, claim: PreambleClaim, active: Callable[[], bool]) -> None:
        self.magic = magic
        self.size = size
        self.claim = claim
        self.active = active


class _AcceptRoles(Factory):
    """
    The listener's factory: TLS server by default, TLS client for connections
    the accept hook claims; none at all (the socket closes at once) for a
    connection the admission check refuses.
    """

    noisy = False

    def __init__(self, transport: "TcpTransport", factory: Factory) -> None:
        self._transport = transport
        self._server = TLSMemoryBIOFactory(transport.creator(), False, factory, clock=transport.reactor)

    def buildProtocol(self, addr: Any) -> Any:
        admission = self._transport.admission
        if admission is not None:
            refusal = admission(addr)
            if refusal is not None:
                self._transport.refused(addr, refusal)
                return None
        hook = self._transport.accept_hook
        claimed = hook(addr) if hook is not None else None
        if claimed is not None:
            client = TLSMemoryBIOFactory(self._transport.creator(), True, claimed, clock=self._transport.reactor)
            return client.buildProtocol(addr)
        if self._transport.sniffing():
            refusal = self._transport.first_bytes_refusal(addr)
            if refusal is not None:
                self._transport.refused(addr, refusal)
                return None
            return _FirstBytes(self._transport, self._server, addr)
        return self._server.buildProtocol(addr)


class _FirstBytes(Protocol):
    """
    An accepted connection until its first bytes tell what it is: TLS (the
    server protocol is built and takes over in the same turn) or a registered
    preamble (once it is whole, the claim's protocol takes over).
    """

    def __init__(self, owner: "TcpTransport", server: Any, addr: Any) -> None:
        self._owner = owner
        self._server = server
        self._addr = addr
        self._host = getattr(addr, "host", None)
        self._buffer = b""
        self._preamble: Optional[_Preamble] = None
        self._timer: Any = None
        self._done = False

    def connectionMade(self) -> None:
        self._owner.first_bytes_started(self, self._host)
        self._timer = self._owner.reactor.callLater(PREAMBLE_TIMEOUT, self._timed_out)

    def abort(self) -> None:
        """Close it now (the listener stopped)."""
        self._finish()
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._owner.first_bytes_ended(self, self._host)
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse(f"nothing recognisable within {PREAMBLE_TIMEOUT:g} s")

    def _refuse(self, reason: str) -> None:
        self._finish()
        self._owner.refused(self._addr, reason)
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _hand_over(self, protocol: Any, data: bytes) -> None:
        self._finish()
        transport: Any = self.transport
        transport.protocol = protocol  # (what Twisted's TCP connection calls from now on)
        protocol.makeConnection(transport)
        if data and getattr(transport, "connected", True) and not getattr(transport, "disconnecting", False):
            protocol.dataReceived(data)

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        if self._preamble is None:
            preamble = self._owner.preamble_for(data[0])
            if preamble is None:  # TLS (or nothing we know: TLS says so)
                protocol = self._server.buildProtocol(self._addr)
                if protocol is None:
                    self._refuse("refused by its factory")
                    return
                self._hand_over(protocol, data)
                return
            self._preamble = preamble
        preamble = self._preamble
        self._buffer += data
        head = self._buffer[:len(preamble.magic)]
        if head != preamble.magic[:len(head)]:
            self._refuse("neither TLS nor a preamble this node knows")
            return
        if len(self._buffer) < preamble.size:
            return
        first, rest = self._buffer[:preamble.size], self._buffer[preamble.size:]
        self._buffer = b""
        try:
            claimed = preamble.claim(first, self._addr)
        except Exception:
            self._owner.log.failure("a preamble claim failed")
            claimed = "its claim failed"
        if isinstance(claimed, str):
            self._refuse(claimed)
            return
        self._hand_over(claimed, rest)

    def connectionLost(self, reason: Any = None) -> None:
        self._finish()


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
    log = Logger()

    def __init__(self, reactor: Any, creator: Callable[[], ConnectionCreator],
                 timeout: Callable[[], float], available: Callable[[], bool] = lambda: True) -> None:
        self.reactor = reactor
        self.creator = creator
        self._timeout = timeout
        self._available = available
        self.listening_port: Any = None
        self.accept_hook: Optional[AcceptHook] = None
        self.admission: Optional[Callable[[Any], Optional[str]]] = None
        self.counters = {"refused": 0, "accept_pauses": 0}
        self._refusal_log = RateLimiter(reactor, (0.2, 3.0), (1.0, 10.0))
        self._preambles: dict[int, _Preamble] = {}  # by first byte
        self._first_bytes: dict[Any, int] = {}  # accepted connections waiting for their first bytes, by host
        self._waiting: set[_FirstBytes] = set()

    def available(self) -> bool:
        return self._available()

    def set_accept_hook(self, hook: Optional[AcceptHook]) -> None:
        """Let C{hook} claim accepted connections (the hole puncher does, for its peers' addresses)."""
        self.accept_hook = hook

    # -- preambles: accepted connections claimed by their first bytes -------------------

    def register_preamble(self, magic: bytes, size: int, claim: PreambleClaim,
                          active: Callable[[], bool] = lambda: True) -> Callable[[], None]:
        """
        Let C{claim} take accepted connections that begin with C{magic}: it
        gets their first C{size} bytes (the magic included) while C{active()}.
        Returns what unregisters it.

        @raise ValueError: the magic's first byte is TLS's, or claimed already.
        """
        if not magic or size < len(magic):
            raise ValueError("a preamble has a magic of at least one byte, within its size")
        first = magic[0]
        if first == TLS_HANDSHAKE:
            raise ValueError("a preamble may not begin as TLS does (0x16)")
        if first in self._preambles:
            raise ValueError(f"a preamble beginning with {first:#04x} is registered already")
        entry = _Preamble(magic, size, claim, active)
        self._preambles[first] = entry

        def unregister() -> None:
            if self._preambles.get(first) is entry:
                del self._preambles[first]

        return unregister

    def sniffing(self) -> bool:
        """Whether accepted connections are looked at before TLS (some preamble is registered and active)."""
        return any(p.active() for p in self._preambles.values()) if self._preambles else False

    def preamble_for(self, first: int) -> Optional[_Preamble]:
        entry = self._preambles.get(first)
        return entry if entry is not None and entry.active() else None

    def first_bytes_refusal(self, addr: Any) -> Optional[str]:
        """Why a connection just accepted may not wait for its first bytes (the caps), or None."""
        if len(self._waiting) >= MAX_FIRST_BYTES:
            return f"{len(self._waiting)} connections already waiting for their first bytes"
        host = getattr(addr, "host", None)
        if self._first_bytes.get(host, 0) >= MAX_FIRST_BYTES_PER_HOST:
            return f"{MAX_FIRST_BYTES_PER_HOST} connections from {host} already waiting for their first bytes"
        return None

    def first_bytes_started(self, waiting: "_FirstBytes", host: Any) -> None:
        self._waiting.add(waiting)
        self._first_bytes[host] = self._first_bytes.get(host, 0) + 1

    def first_bytes_ended(self, waiting: "_FirstBytes", host: Any) -> None:
        self._waiting.discard(waiting)
        left = self._first_bytes.get(host, 0) - 1
        if left > 0:
            self._first_bytes[host] = left
        else:
            self._first_bytes.pop(host, None)

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
        return _handed_over(self._endpoint(address, timeout, binding).connect(tls))

    def connect_plain(self, address: Address, factory: Factory, timeout: Optional[float] = None) -> Deferred:
        """
        A plain TCP connection to C{address}, no TLS: fires with the protocol
        C{factory} built (for a preamble, L{register_preamble}, before TLS).
        """
        return self._endpoint(address, timeout, None).connect(factory)

    def _endpoint(self, address: Address, timeout: Optional[float], binding: Any) -> Any:
        endpoint_type = TCP6ClientEndpoint if address.family_is_v6 else TCP4ClientEndpoint
        # a SYN unanswered after its retransmissions (1 + 2 + 4 s) will not be answered: no point waiting longer
        seconds = min(self._timeout(), MAX_SYN_WAIT) if timeout is None else timeout
        return endpoint_type(self.reactor, address.host, address.port,
                             timeout=max(1, int(seconds)), bindAddress=binding)

    def set_admission(self, check: Optional[Callable[[Any], Optional[str]]]) -> None:
        """C{check(addr)}: why a connection just accepted from C{addr} must be closed at once, or None."""
        self.admission = check

    def refused(self, addr: Any, reason: str) -> None:
        self.counters["refused"] += 1
        if self._refusal_log.allow(getattr(addr, "host", "?")):
            self.log.info("closing a TCP connection from {host} at once: {reason}",
                          host=getattr(addr, "host", "?"), reason=reason)

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
        listening = _PausingPort(binding, _AcceptRoles(self, factory), backlog, host, self.reactor, self)
        try:
            listening.startListening()
        except CannotListenError as e:
            return fail(e)
        self.listening_port = listening
        return succeed(listening)


class _PausingPort(tcp.Port):
    """
    A listening port that, out of file descriptors (EMFILE/ENFILE: every
    descriptor in use), stops accepting for L{ACCEPT_PAUSE} seconds at a
    time until it can accept again, saying so once for the whole shortage,
    instead of spinning on a socket it cannot accept from and logging every
    try (Twisted's own port logs each one).
    """

    def __init__(self, port: Any, factory: Any, backlog: int, interface: str, reactor: Any,
                 owner: "TcpTransport") -> None:
        super().__init__(port, factory, backlog, interface, reactor)
        self._owner = owner
        self._out_of_fds = False
        self._said = False  # the shortage was logged
        self._paused: Any = None
        self._clock = reactor
        self._logger = Logger(namespace="crust.transport.tcp.accept", observer=_AcceptEvents(self))

    def accept_event(self, event: dict) -> None:
        # the accept loop's own events ("EMFILE encountered", "Could not accept ..."): we only note them
        text = str(event.get("log_format", "")) + str(event.get("acceptError", ""))
        if "EMFILE" in text or "ENFILE" in text or "ENOBUFS" in text or "ENOMEM" in text:
            self._out_of_fds = True

    def doRead(self) -> None:
        self._out_of_fds = False
        super().doRead()
        if not self._out_of_fds:
            self._said = False  # descriptors again: a later shortage is news
        elif self._paused is None and self.connected:
            self._owner.counters["accept_pauses"] += 1
            if not self._said:  # once for as long as the shortage lasts
                self._said = True
                self._owner.log.warn("out of file descriptors: not accepting TCP connections, trying again "
                                     "every {pause:g} s", pause=ACCEPT_PAUSE)
            self.stopReading()
            self._paused = self._clock.callLater(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self.connected:
            self.startReading()

    def stopListening(self, connDone: Any = None) -> Any:
        if self._paused is not None and self._paused.active():
            self._paused.cancel()
        self._paused = None
        for waiting in list(self._owner._waiting):  # accepted, still without their first bytes
            waiting.abort()
        return super().stopListening() if connDone is None else super().stopListening(connDone)


@implementer(ILogObserver)
class _AcceptEvents:
    """The accept loop's log events, noted by its port (see L{_PausingPort.accept_event})."""

    def __init__(self, port: _PausingPort) -> None:
        self._port = port

    def __call__(self, event: dict) -> None:
        self._port.accept_event(event)


def _handed_over(connecting: Deferred) -> Deferred:
    """
    The protocol inside the TLS protocol C{connecting} fires with, in a
    Deferred of its own (cancelling it cancels C{connecting}).  The
    endpoint's Deferred is left holding nothing: Twisted's connector and
    its client transport refer to each other, and through the endpoint's
    factory to that Deferred, until the cyclic collector runs, and the
    connection must not wait with them.
    """
    result: Deferred = Deferred(lambda _: connecting.cancel())

    def connected(tls_protocol: Any) -> None:
        if not result.called:
            result.callback(tls_protocol.wrappedProtocol)

    def failed(failure: Any) -> None:
        if not result.called:
            result.errback(failure)

    connecting.addCallbacks(connected, failed)
    return result


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
