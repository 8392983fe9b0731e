"""
L{UdpEndpoint}: the node's one UDP socket, shared by STUN, crust's UDP
address echo, hole-punching probes and QUIC.

The endpoint is only the socket, a first-byte demultiplexer and the send
path.  Every incoming datagram goes to a handler by its first byte (the map,
and why crust's own messages use 4..15, is in L{crust.transport.udp_messages})::

    0..3     the STUN chain (L{UdpEndpoint.add_stun_handler})
    4..15    crust message handlers by type (L{UdpEndpoint.set_crust_handler})
    16..255  the registry (L{UdpEndpoint.register}), QUIC first

Before the first byte, one source address may claim what it sends
(L{UdpEndpoint.register_source}): a TURN server's ChannelData starts with
64..79, which QUIC short headers use too, so everything from the TURN
server's address goes to the TURN client first.

What lives on the socket registers itself there: the STUN client and the
STUN responder (L{crust.nat.stun_responder}), the UDP echo (L{crust.nat.echo}),
QUIC (L{crust.transport.quic.dispatcher}).  L{crust.nat.udp_stack.build_udp_stack} wires the first
three.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any, Callable, NoReturn, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from crust.address import Address
from crust.errors import CrustError
from crust._util.local_addresses import addresses_for_listener
from crust._util.ratelimit import RateLimiter
from crust.transport.udp_messages import CRUST_LAST, STUN_LAST, check_message_type, is_stun

Classifier = Callable[[bytes], bool]
Handler = Callable[[bytes, "tuple[str, int]"], Any]
StunHandler = Callable[[bytes, "tuple[str, int]"], bool]
SourceHandler = Callable[[bytes, "tuple[str, int]"], bool]


class UdpSendError(CrustError):
    """A datagram could not be sent; C{reason} is a short code (C{EHOSTUNREACH}...)."""

    def __init__(self, addr: Any, reason: str, detail: str) -> None:
        super().__init__(f"cannot send to {addr!r}: {detail}")
        self.addr = addr
        self.reason = reason


def _reason(e: BaseException) -> str:
    code = getattr(e, "errno", None)
    if isinstance(code, int) and code in errno.errorcode:
        return errno.errorcode[code]
    return type(e).__name__


# Linux: like SO_RCVBUF/SO_SNDBUF, but past the sysctl cap (CAP_NET_ADMIN); not in Python's socket module
_LINUX = sys.platform.startswith("linux")
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if _LINUX else None)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32 if _LINUX else None)


def _set_buffer(sock: Any, option: int, force: Optional[int], size: int) -> Optional[int]:
    """
    Ask for C{size} bytes of kernel buffer (C{SO_RCVBUF}/C{SO_SNDBUF}); with
    CAP_NET_ADMIN the C{*FORCE} variant bypasses the sysctl cap.  Returns
    the usable size the kernel granted (Linux reports twice that), or None.
    """
    for opt in (force, option):
        if opt is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            continue  # EPERM for *FORCE without the capability
        break
    try:
        got = sock.getsockopt(socket.SOL_SOCKET, option)
    except OSError:
        return None
    return got // 2 if _LINUX else got


class UdpEndpoint(DatagramProtocol):
    """
    One UDP socket with a first-byte demultiplexer (see the module doc).

    @param reactor: for C{listenUDP} and the clock; the global reactor by default.
    @param host: the interface to bind (C{0.0.0.0} by default).
    @param port: the port; 0 (default) picks a random one.
    @param max_packet_size: the largest datagram read.
    @param socket_buffer: SO_RCVBUF and SO_SNDBUF of the socket (the kernel
        caps them at net.core.rmem_max / wmem_max); 0 leaves the system's.

    @ivar clock: the reactor, as the clock of whatever registers here.
    @ivar counters: what came in and went out, by kind: C{received},
        C{received_bytes}, C{sent}, C{sent_bytes}, C{send_failures},
        C{empty}; C{stun} (first byte 0..3), C{stun_consumed} (a STUN
        handler took it), C{stun_dropped} (not STUN, or no handler took it);
        C{crust} (first byte 4..15), C{crust_unknown_type} (no handler for
        the type); C{registry} (a registered handler took it), C{unknown}
        (none did); C{source_consumed} (a handler of the datagram's source
        address took it, L{register_source}); C{handler_errors} (a handler
        or classifier raised).
    @ivar send_errors: failed sends, by reason (C{EHOSTUNREACH}, ...).
    """

    log = Logger()
    noisy = False

    def __init__(self, reactor: Any = None, *, host: str = "0.0.0.0", port: int = 0,
                 max_packet_size: int = 65535, socket_buffer: int = 4 << 20) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.clock = reactor
        self.host = host
        self.port = port
        self.max_packet_size = max_packet_size
        self.socket_buffer = socket_buffer
        self._stun_handlers: list[tuple[StunHandler, str]] = []
        self._close_callbacks: list[Callable[[], Any]] = []
        self._crust_handlers: dict[int, Handler] = {}
        self._registry: list[tuple[Classifier, Handler, str]] = []
        self._bounds: dict[Any, Optional[int]] = {}
        self._fast_first = 256  # datagrams whose first byte is at least this go to _fast_handler
        self._fast_handler: Handler = _no_handler
        self._sources: dict[Any, tuple[SourceHandler, str]] = {}  # by source address, before the first byte
        self._listening_port: Any = None
        self._checked_addr: Any = None  # the last address Twisted's write() accepted (see send)
        self._sendto: Any = None
        self.counters = dict.fromkeys(
            ("received", "received_bytes", "sent", "sent_bytes", "send_failures", "empty",
             "stun", "stun_consumed", "stun_dropped", "crust", "crust_unknown_type", "registry", "unknown",
             "source_consumed", "handler_errors"),
            0,
        )
        self.send_errors: dict[str, int] = {}
        # lines about what came in (unknown types, not STUN, failed handlers): at a bounded rate
        self._logs = RateLimiter(reactor, per_key=(0.2, 3.0), total=(1.0, 10.0), max_keys=8)

    # -- the socket --------------------------------------------------------------

    def listen(self) -> Address:
        """
        Bind the socket (once); returns our bound address.

        @raise twisted.internet.error.CannotListenError: the port is taken.
        """
        if self._listening_port is None:
            self._listening_port = self.reactor.listenUDP(
                self.port, self, interface=self.host, maxPacketSize=self.max_packet_size
            )
            self.log.debug("UDP endpoint listening on {address}", address=str(self.local_address()))
        bound = self.local_address()
        assert bound is not None  # listening: the port made us its protocol
        return bound

    def stop(self) -> Deferred:
        """Close the socket (see L{call_when_closed})."""
        port, self._listening_port = self._listening_port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)

    @property
    def listening(self) -> bool:
        return self.transport is not None

    def local_address(self) -> Optional[Address]:
        """The bound address (C{udp:0.0.0.0:P} when bound to every interface), or None when closed."""
        if self.transport is None:
            return None
        host = self.transport.getHost()
        return Address("udp", host.host, host.port)

    def local_addresses(self) -> list[Address]:
        """The addresses the socket can be reached at: every interface's when bound to 0.0.0.0."""
        bound = self.local_address()
        if bound is None:
            return []
        return [Address("udp", h, bound.port) for h in addresses_for_listener(bound.host)]

    def startProtocol(self) -> None:
        bound = self.local_address()
        if bound is not None:
            self.port = bound.port  # a restart binds the same port
        sock = getattr(self.transport, "socket", None)
        if sock is not None and self.socket_buffer:
            # QUIC keeps a congestion window of datagrams in flight (megabytes on a
            # fast path): the default buffers (about 208 KiB: some 90 datagrams of
            # 1200 bytes) overflow, and every drop halves the window
            for option, force, name, sysctl in (
                    (socket.SO_RCVBUF, _SO_RCVBUFFORCE, "receive", "net.core.rmem_max"),
                    (socket.SO_SNDBUF, _SO_SNDBUFFORCE, "send", "net.core.wmem_max")):
                got = _set_buffer(sock, option, force, self.socket_buffer)
                if got is not None and got < self.socket_buffer:
                    # the kernel silently caps the request at the sysctl (212992 bytes on stock
                    # kernels): say so, QUIC then drops datagrams and halves its window
                    self.log.info(
                        "UDP {name} buffer is {got} bytes, not the {asked} asked: raise {sysctl} "
                        "for better QUIC throughput",
                        name=name, got=got, asked=self.socket_buffer, sysctl=sysctl)

    def stopProtocol(self) -> None:
        self._checked_addr = self._sendto = None
        for callback in list(self._close_callbacks):
            try:
                callback()
            except Exception:
                self.log.failure("UDP endpoint close callback {callback!r} failed", callback=callback)

    def call_when_closed(self, callback: Callable[[], Any]) -> Callable[[], None]:
        """
        Call C{callback()} whenever the socket closes (C{stop}, or the
        reactor shutting down): the place to fail requests in flight.
        Returns a function that removes it.
        """
        self._close_callbacks.append(callback)

        def remove() -> None:
            if callback in self._close_callbacks:
                self._close_callbacks.remove(callback)

        return remove

    # -- sending ---------------------------------------------------------------------

    def send(self, datagram: bytes, addr: "tuple[str, int]") -> bool:
        """Send one datagram; False (logged and counted, never raised) if it could not go."""
        if addr is self._checked_addr:
            # the address (this very tuple) went through Twisted's checks on this
            # socket already: straight to sendto, without udp.Port.write's three
            # isIPAddress calls per datagram (QUIC sends thousands to one address)
            try:
                self._sendto(datagram, addr)
            except OSError:
                pass  # EINTR, EAGAIN, EMSGSIZE...: the full path below retries or reports it
            else:
                counters = self.counters
                counters["sent"] += 1
                counters["sent_bytes"] += len(datagram)
                return True
        try:
            self.send_or_raise(datagram, addr)
        except UdpSendError:
            return False
        sock = getattr(self.transport, "socket", None)
        if type(addr) is tuple and sock is not None:
            self._checked_addr = addr
            self._sendto = sock.sendto
        return True

    def send_or_raise(self, datagram: bytes, addr: "tuple[str, int]") -> None:
        """
        Send one datagram, raising L{UdpSendError} (after counting and
        logging it) when it cannot go: the sender of a
        L{crust.nat.stun_client.StunClient}, which fails a request at once when
        its first datagram cannot be sent.
        """
        transport = self.transport
        if transport is None:
            self._send_failed(addr, "ENOTCONN", "the UDP endpoint is not open")
        try:
            transport.write(datagram, (*addr,))  # a tuple, as sendto wants, whatever sequence we were given
        except Exception as e:  # OSError, MessageLengthError, InvalidAddressError...
            self._send_failed(addr, _reason(e), str(e) or _reason(e))
        self.counters["sent"] += 1
        self.counters["sent_bytes"] += len(datagram)

    def _send_failed(self, addr: Any, reason: str, detail: str) -> NoReturn:
        self.counters["send_failures"] += 1
        self.send_errors[reason] = self.send_errors.get(reason, 0) + 1
        self.log.info("UDP send to {addr} failed: {reason}", addr=_text(addr), reason=detail)
        raise UdpSendError(addr, reason, detail)

    # -- handlers ----------------------------------------------------------------------

    def add_stun_handler(self, handler: StunHandler, name: str = "") -> Callable[[], None]:
        """
        Offer STUN datagrams (first byte 0..3, and C{stun.is_stun}) to
        C{handler(data, addr)}, which returns True when it took the datagram.
        Handlers are asked in registration order until one takes it: the
        STUN client first (answers to its own requests), then the responder
        (Binding requests).  What no handler takes is counted as
        C{stun_dropped}.  Returns a function that unregisters it.
        """
        entry = (handler, name or getattr(handler, "__qualname__", repr(handler)))
        self._stun_handlers.append(entry)

        def unregister() -> None:
            if entry in self._stun_handlers:
                self._stun_handlers.remove(entry)

        return unregister

    def routes_stun_to(self, handler: StunHandler) -> bool:
        """Whether C{handler} is in this endpoint's STUN chain (is a STUN client on this socket?)."""
        return any(registered == handler for registered, _ in self._stun_handlers)

    def set_crust_handler(self, message_type: int, handler: Optional[Handler]) -> None:
        """
        Route crust messages of C{message_type} (4..15, claimed in
        L{crust.transport.udp_messages.MESSAGE_TYPES}) to C{handler(data, addr)}; None
        removes it.
        """
        check_message_type(message_type)
        if handler is None:
            self._crust_handlers.pop(message_type, None)
        else:
            self._crust_handlers[message_type] = handler

    def register(self, classifier: Classifier, handler: Handler, name: str = "",
                 first_byte_at_least: Optional[int] = None) -> Callable[[], None]:
        """
        Offer datagrams whose first byte is 16 or more to C{handler(data,
        addr)} when C{classifier(data)} is true (first match wins, in
        registration order).  Returns a function that unregisters it.

        C{first_byte_at_least}: the classifier claims exactly the datagrams
        whose first byte is at least this (QUIC: 64); while this entry is the
        first of the registry, such datagrams go straight to C{handler}
        without calling the classifier (the per-datagram path of QUIC).
        """
        entry = (classifier, handler, name or getattr(handler, "__qualname__", repr(handler)))
        self._registry.append(entry)
        self._bounds[entry] = first_byte_at_least
        self._update_fast()

        def unregister() -> None:
            if entry in self._registry:
                self._registry.remove(entry)
                self._bounds.pop(entry, None)
                self._update_fast()

        return unregister

    def register_source(self, addr: "tuple[str, int]", handler: SourceHandler, name: str = "") -> Callable[[], None]:
        """
        Offer every datagram from the source address C{addr} (C{(ip, port)})
        to C{handler(data, addr)} before the first-byte map; it returns
        True when it took the datagram, False to let the map route it as
        usual.  A TURN client registers its server's address: its
        ChannelData (first byte 64..79) would otherwise go to QUIC.  Other
        sources cost one dict lookup a datagram while any is registered,
        nothing otherwise.  One handler per address.  Returns a function
        that unregisters it.

        @raise ValueError: C{addr} has a handler already, or is not an IP and port.
        """
        parsed = Address.from_sockaddr("udp", addr)
        if parsed is None:
            raise ValueError(f"not an IP address and port: {addr!r}")
        keys: list[tuple[Any, ...]] = [(parsed.host, parsed.port)]
        if parsed.family_is_v6:
            keys.append((parsed.host, parsed.port, 0, 0))  # how an IPv6 socket reports its sources
        if any(key in self._sources for key in keys):
            raise ValueError(f"datagrams from {parsed.host_port()} already have a handler")
        entry = (handler, name or getattr(handler, "__qualname__", repr(handler)))
        for key in keys:
            self._sources[key] = entry

        def unregister() -> None:
            for key in keys:
                if self._sources.get(key) is entry:
                    del self._sources[key]

        return unregister

    def _update_fast(self) -> None:
        bound = self._bounds.get(self._registry[0]) if self._registry else None
        if bound is None:
            self._fast_first, self._fast_handler = 256, _no_handler  # no first byte reaches 256
        else:
            self._fast_first, self._fast_handler = max(bound, CRUST_LAST + 1), self._registry[0][1]

    # -- receiving ----------------------------------------------------------------------

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        counters = self.counters
        counters["received"] += 1
        counters["received_bytes"] += len(data)
        if not data:
            counters["empty"] += 1
            return
        first = data[0]
        if self._sources:  # a TURN server's datagrams (see register_source)
            source = self._sources.get(addr)
            if source is not None and self._source_received(source, data, addr):
                return
        if first >= self._fast_first:  # QUIC, by its first byte (see register)
            counters["registry"] += 1
            try:
                self._fast_handler(data, addr)
            except Exception:
                counters["handler_errors"] += 1
                self.log.failure("UDP handler {handler!r} failed on a datagram from {addr}",
                                 handler=self._fast_handler, addr=_text(addr))
            return
        if first <= STUN_LAST:
            self._stun_received(data, addr)
        elif first <= CRUST_LAST:
            counters["crust"] += 1
            handler = self._crust_handlers.get(first)
            if handler is None:
                counters["crust_unknown_type"] += 1
                if self._logs.allow("type"):
                    self.log.debug("dropping crust UDP message of unknown type {type} from {addr}",
                                   type=first, addr=_text(addr))
            else:
                self._call(handler, data, addr)
        else:
            for classifier, handler, name in self._registry:
                try:
                    claimed = classifier(data)
                except Exception:
                    counters["handler_errors"] += 1
                    self.log.failure("UDP classifier {name} failed", name=name)
                    continue
                if claimed:
                    counters["registry"] += 1
                    self._call(handler, data, addr)
                    return
            counters["unknown"] += 1
            if self._logs.allow("unknown"):
                self.log.debug("dropping unrecognised UDP datagram ({size} bytes, first byte {first}) from {addr}",
                               size=len(data), first=first, addr=_text(addr))

    def _call(self, handler: Handler, data: bytes, addr: Any) -> None:
        try:
            handler(data, addr)
        except Exception:
            self.counters["handler_errors"] += 1
            self.log.failure("UDP handler {handler!r} failed on a datagram from {addr}",
                             handler=handler, addr=_text(addr))

    def _source_received(self, source: "tuple[SourceHandler, str]", data: bytes, addr: Any) -> bool:
        handler, name = source
        try:
            taken = handler(data, addr)
        except Exception:
            self.counters["handler_errors"] += 1
            self.log.failure("UDP handler {name} of datagrams from {addr} failed", name=name, addr=_text(addr))
            return True
        if taken:
            self.counters["source_consumed"] += 1
        return bool(taken)

    def _stun_received(self, data: bytes, addr: Any) -> None:
        counters = self.counters
        counters["stun"] += 1
        if not is_stun(data):
            counters["stun_dropped"] += 1
            if self._logs.allow("stun"):
                self.log.debug("dropping datagram from {addr}: first byte {first} says STUN but it is not",
                               addr=_text(addr), first=data[0])
            return
        for handler, name in self._stun_handlers:
            try:
                taken = handler(data, addr)
            except Exception:
                counters["handler_errors"] += 1
                self.log.failure("STUN handler {name} failed on a datagram from {addr}", name=name, addr=_text(addr))
                return
            if taken:
                counters["stun_consumed"] += 1
                return
        counters["stun_dropped"] += 1

    # -- diagnostics ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """
        A snapshot of the socket's counters (the STUN client's, responder's
        and echo's are theirs: see L{crust.nat.udp_stack.UdpStack.stats}).
        """
        return {
            "local_address": _text(self.local_address()),
            "endpoint": dict(self.counters),
            "send_errors": dict(self.send_errors),
        }


class UdpEndpointService(Service):
    """
    Runs a L{UdpEndpoint} as part of a service tree: binds it on start
    (unless it is bound already: call C{endpoint.listen()} first to see a
    taken port at once) and closes it on stop.
    """

    name = "udp-endpoint"

    def __init__(self, endpoint: UdpEndpoint) -> None:
        self.endpoint = endpoint

    def startService(self) -> None:
        Service.startService(self)
        self.endpoint.listen()

    def stopService(self) -> Deferred:
        Service.stopService(self)
        return self.endpoint.stop()


def _no_handler(data: bytes, addr: Any) -> None:
    """The fast handler when there is none: never called (no first byte reaches 256)."""


def _text(addr: Any) -> str:
    if addr is None:
        return "-"
    if isinstance(addr, Address):
        return str(addr)
    try:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    except (TypeError, IndexError):
        return repr(addr)


__all__ = [
    "UdpEndpoint",
    "UdpEndpointService",
    "UdpSendError",
]
