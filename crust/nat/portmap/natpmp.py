"""
NAT-PMP (RFC 6886): codec and Twisted client.

The codec is pure: L{encode_external_address_request},
L{encode_map_request} and L{decode_response}.  L{NATPMPClient} sends
requests to the gateway's UDP port 5351 from an ephemeral port, one at a
time, retransmitting on the RFC's schedule (250 ms, doubling) but with fewer
tries by default, so that a node falls back to the next protocol within
seconds.  L{DatagramRequestClient} is the shared request/retransmit machinery
(used by L{crust.nat.portmap.pcp} too).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from crust._util.reactor import maybe_global_reactor
from crust.nat.portmap.gateway import GatewayTimeout, MalformedResponse, MappingRefused, NoService, PortMappingError

SERVER_PORT = 5351
VERSION = 0

OP_EXTERNAL_ADDRESS = 0
OP_MAP_UDP = 1
OP_MAP_TCP = 2
OPCODES = {"udp": OP_MAP_UDP, "tcp": OP_MAP_TCP}

RESULT_CODES = {
    0: "SUCCESS",
    1: "UNSUPPORTED_VERSION",
    2: "NOT_AUTHORIZED",
    3: "NETWORK_FAILURE",
    4: "OUT_OF_RESOURCES",
    5: "UNSUPPORTED_OPCODE",
}

DEFAULT_LIFETIME = 7200
DEFAULT_INITIAL_TIMEOUT = 0.25
DEFAULT_MAX_TRIES = 4  # 0.25 + 0.5 + 1 + 2 = 3.75 s (the RFC's 9 tries take 127.75 s)

_HEADER = struct.Struct("!BBHI")  # version, opcode, result, epoch
_EXTERNAL = struct.Struct("!BBHI4s")
_MAP_REQUEST = struct.Struct("!BBHHHI")
_MAP_RESPONSE = struct.Struct("!BBHIHHI")


@dataclass(frozen=True)
class ExternalAddressResponse:
    epoch: int
    external_ip: str


@dataclass(frozen=True)
class MapResponse:
    transport: str  # "tcp" or "udp"
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


@dataclass(frozen=True)
class ErrorResponse:
    """A response with a non-zero result code (whose other fields are undefined)."""

    opcode: int
    result: int
    epoch: int

    @property
    def reason(self) -> str:
        return RESULT_CODES.get(self.result, f"unknown result {self.result}")


def encode_external_address_request() -> bytes:
    return bytes((VERSION, OP_EXTERNAL_ADDRESS))


def encode_map_request(transport: str, internal_port: int, external_port: int = 0,
                       lifetime: int = DEFAULT_LIFETIME) -> bytes:
    """
    A request to map C{transport} (C{"tcp"}/C{"udp"}) C{internal_port}; a
    C{lifetime} of 0 deletes the mapping (with C{external_port} 0).
    """
    if transport not in OPCODES:
        raise ValueError(f"unknown transport {transport!r}")
    if not 0 < internal_port < 65536 or not 0 <= external_port < 65536:
        raise ValueError(f"port out of range: {internal_port}, {external_port}")
    if not 0 <= lifetime < 2**32:
        raise ValueError(f"lifetime out of range: {lifetime}")
    return _MAP_REQUEST.pack(VERSION, OPCODES[transport], 0, internal_port, external_port, lifetime)


def decode_response(data: bytes) -> ExternalAddressResponse | MapResponse | ErrorResponse:
    """
    Decode a response from a NAT-PMP server.

    Success responses must have exactly their size; error responses (which
    some servers truncate after the epoch) at least 8 bytes and at most the
    size of the success response.

    @raise MalformedResponse: naming what is wrong.
    """
    if len(data) < 4:
        raise MalformedResponse(f"{len(data)} bytes is too short for a NAT-PMP response")
    version, opcode = data[0], data[1]
    if version != VERSION:
        raise MalformedResponse(f"version {version}, expected {VERSION}")
    if opcode not in (128 + OP_EXTERNAL_ADDRESS, 128 + OP_MAP_UDP, 128 + OP_MAP_TCP):
        raise MalformedResponse(f"opcode {opcode} is not a NAT-PMP response")
    full = _EXTERNAL.size if opcode == 128 + OP_EXTERNAL_ADDRESS else _MAP_RESPONSE.size
    result = int.from_bytes(data[2:4], "big")
    if result != 0:
        if not _HEADER.size <= len(data) <= full:
            raise MalformedResponse(f"error response of {len(data)} bytes (expected {_HEADER.size}..{full})")
        _, _, _, epoch = _HEADER.unpack_from(data)
        return ErrorResponse(opcode - 128, result, epoch)
    if len(data) != full:
        raise MalformedResponse(f"response of {len(data)} bytes, expected {full}")
    if opcode == 128 + OP_EXTERNAL_ADDRESS:
        _, _, _, epoch, raw = _EXTERNAL.unpack(data)
        return ExternalAddressResponse(epoch, str(ipaddress.IPv4Address(raw)))
    _, _, _, epoch, internal, external, lifetime = _MAP_RESPONSE.unpack(data)
    return MapResponse("udp" if opcode == 128 + OP_MAP_UDP else "tcp", epoch, internal, external, lifetime)


def epoch_indicates_restart(prev_epoch: int, prev_time: float, epoch: int, now: float) -> bool:
    """
    RFC 6886 section 3.6: the gateway lost its state (rebooted) if its epoch is
    more than 2 s below the previous one plus 7/8 of the time elapsed here.
    """
    return epoch < prev_epoch + (now - prev_time) * 7 / 8 - 2


class _Pending:
    def __init__(self, payload: bytes, decode: Callable[[bytes], Any], deferred: Deferred) -> None:
        self.payload = payload
        self.decode = decode
        self.deferred = deferred
        self.timer: Any = None
        self.tries = 0


class DatagramRequestClient(DatagramProtocol):
    """
    Request/response over UDP with one gateway: one request outstanding at a
    time, retransmitted after C{initial_timeout} seconds, doubling, up to
    C{max_tries} sends.  Datagrams from anyone but C{(gateway, port)}, with no
    request outstanding, malformed, or answering another request, are
    dropped, logged and counted in C{rejected} by reason (C{"wrong source"},
    C{"unsolicited"}, C{"malformed"}, C{"mismatch"}).

    Call L{start} (or give a transport with C{makeConnection}) before
    requests; L{stop} releases the port.

    @ivar epoch_resets: how many times the server's epoch showed it restarted.
    """

    log = Logger()
    protocol_name = "UDP"

    def __init__(self, gateway: str, *, reactor: Optional[IReactorTime] = None, port: int = SERVER_PORT,
                 initial_timeout: float = DEFAULT_INITIAL_TIMEOUT, max_tries: int = DEFAULT_MAX_TRIES,
                 interface: Optional[str] = None) -> None:
        reactor = maybe_global_reactor(reactor)
        host = gateway.partition("%")[0]
        ipaddress.ip_address(host)  # ValueError if not an IP literal
        if initial_timeout <= 0 or max_tries < 1:
            raise ValueError("initial_timeout must be > 0 and max_tries >= 1")
        self.gateway = gateway
        self.port = port
        self.initial_timeout = initial_timeout
        self.max_tries = max_tries
        self._reactor = reactor
        self._interface = interface if interface is not None else ("::" if ":" in host else "0.0.0.0")
        self._lock = DeferredLock()
        self._pending: Optional[_Pending] = None
        self._listening: Any = None
        self._stopped = False
        self._last_epoch: Optional[tuple[int, float]] = None
        self.rejected: Counter[str] = Counter()
        self.epoch_resets = 0
        self.sent = 0

    # lifetime

    def start(self) -> None:
        """
        Bind an ephemeral UDP port and connect it to the gateway (idempotent).
        A connected socket lets the kernel pick (and report) our source
        address, filters other senders, and turns ICMP port unreachable into
        L{connectionRefused}.
        """
        self._stopped = False
        if self.transport is not None:
            return
        listening = self._reactor.listenUDP(0, self, interface=self._interface)  # type: ignore[attr-defined]
        self._listening = listening
        try:
            listening.connect(self.gateway, self.port)
        except Exception as e:  # e.g. no route: requests will fail on write, and time out
            self.log.info("{proto}: could not connect to {gateway}: {error}",
                          proto=self.protocol_name, gateway=self.gateway, error=e)

    def stop(self) -> Deferred:
        """Fail the outstanding and queued requests, and release the port."""
        self._stopped = True
        if self._pending is not None:
            self._finish(self._pending, failure=CancelledError("client stopped"))
        listening, self._listening = self._listening, None
        if listening is not None:
            return maybeDeferred(listening.stopListening)
        return succeed(None)

    def stopProtocol(self) -> None:
        # The reactor closes a connected UDP port on a socket error (epoll
        # reports ICMP port unreachable as an error): the gateway does not
        # serve this protocol.  A later start() binds a new port.
        self._listening = None
        if not self._stopped:
            self.log.info("{proto}: socket towards {gateway}:{port} closed (ICMP port unreachable?)",
                          proto=self.protocol_name, gateway=self.gateway, port=self.port)
            if self._pending is not None:
                self._finish(self._pending, failure=NoService(
                    f"{self.gateway}:{self.port}: socket error (port unreachable?): no {self.protocol_name} server"))

    def local_host(self) -> Optional[str]:
        """Our address as the gateway sees it (valid once started and connected)."""
        if self.transport is None:
            return None
        return self.transport.getHost().host

    # requests

    def _request(self, payload: bytes, decode: Callable[[bytes], Any]) -> Deferred:
        """
        Send C{payload} until C{decode(datagram)} returns a value (fires with
        it), or tries run out (L{GatewayTimeout}).  C{decode} raises
        L{MalformedResponse} for datagrams that are not the answer.
        """

        def run() -> Deferred:
            if self._stopped:
                raise CancelledError(f"{self.protocol_name} client stopped")
            if self.transport is None:
                raise PortMappingError(f"{self.protocol_name} client is not started")

            def cancel(_: Deferred) -> None:
                self._finish(pending, failure=CancelledError())

            pending = _Pending(payload, decode, Deferred(cancel))
            self._pending = pending
            self._send(pending)
            return pending.deferred

        return self._lock.run(run)

    def _send(self, pending: _Pending) -> None:
        if self.transport is None:
            self._finish(pending, failure=CancelledError(f"{self.protocol_name} client stopped"))
            return
        pending.tries += 1
        timeout = self.initial_timeout * 2 ** (pending.tries - 1)
        pending.timer = self._reactor.callLater(timeout, self._timed_out, pending)
        self.sent += 1
        try:
            self.transport.write(pending.payload, (self.gateway, self.port))
        except Exception as e:  # unroutable, or the port is closing: like a lost datagram
            self.log.info("{proto}: sending to {gateway} failed: {error}",
                          proto=self.protocol_name, gateway=self.gateway, error=e)

    def _timed_out(self, pending: _Pending) -> None:
        pending.timer = None
        if pending.tries < self.max_tries:
            self._send(pending)
        else:
            self._finish(pending, failure=GatewayTimeout(
                f"no {self.protocol_name} response from {self.gateway}:{self.port} after {pending.tries} tries"))

    def _finish(self, pending: _Pending, result: Any = None, failure: Optional[BaseException] = None) -> None:
        if self._pending is pending:
            self._pending = None
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.timer = None
        if pending.deferred.called:
            return
        if failure is not None:
            pending.deferred.errback(failure)
        else:
            pending.deferred.callback(result)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        source = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else repr(addr)
        if not (isinstance(addr, tuple) and len(addr) >= 2 and _same_host(addr[0], self.gateway)
                and addr[1] == self.port):
            self._reject("wrong source", source, f"not the gateway {self.gateway}:{self.port}")
            return
        pending = self._pending
        if pending is None:
            self._reject("unsolicited", source, "no request outstanding")
            return
        try:
            result = pending.decode(datagram)
        except AnswerError as answer:
            self._finish(pending, failure=answer.error)
            return
        except MalformedResponse as e:
            self._reject("mismatch" if isinstance(e, ResponseMismatch) else "malformed", source, str(e))
            return
        except Exception:
            self.log.failure("{proto}: error decoding a datagram from {source}",
                             proto=self.protocol_name, source=source)
            self.rejected["malformed"] += 1
            return
        self._finish(pending, result)

    def connectionRefused(self) -> None:
        pending = self._pending
        if pending is not None:
            self._finish(pending, failure=NoService(
                f"{self.gateway}:{self.port} is unreachable (ICMP port unreachable): no {self.protocol_name} server"))

    def _reject(self, reason: str, source: str, detail: str) -> None:
        self.rejected[reason] += 1
        count = self.rejected[reason]
        if count & (count - 1) == 0:  # 1, 2, 4, 8...: bounded logging under a flood
            self.log.warn("{proto}: dropped a datagram from {source}: {reason}: {detail} ({count} so far)",
                          proto=self.protocol_name, source=source, reason=reason, detail=detail, count=count)

    def note_epoch(self, epoch: int) -> bool:
        """Record the server's epoch; C{True} (and count it) if it shows a restart."""
        now = self._reactor.seconds()
        restarted = self._last_epoch is not None and self._epoch_restart(*self._last_epoch, epoch, now)
        self._last_epoch = (epoch, now)
        if restarted:
            self.epoch_resets += 1
            self.log.info("{proto}: gateway {gateway} restarted (epoch {epoch}): its mappings are lost",
                          proto=self.protocol_name, gateway=self.gateway, epoch=epoch)
        return restarted

    def _epoch_restart(self, prev_epoch: int, prev_time: float, epoch: int, now: float) -> bool:
        return epoch_indicates_restart(prev_epoch, prev_time, epoch, now)


class ResponseMismatch(MalformedResponse):
    """A well-formed response, but not to our request (opcode, port, nonce)."""


class AnswerError(Exception):
    """Raised by a decoder: the datagram is the answer, and the request fails with C{error}."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.partition("%")[0]) == ipaddress.ip_address(b.partition("%")[0])
    except ValueError:
        return False


class NATPMPClient(DatagramRequestClient):
    """A NAT-PMP client of one gateway."""

    protocol_name = "NAT-PMP"

    def get_external_address(self) -> Deferred:
        """Fires with an L{ExternalAddressResponse}, or fails (L{MappingRefused}, L{NoService})."""

        def decode(data: bytes) -> ExternalAddressResponse:
            response = self._accept(data, OP_EXTERNAL_ADDRESS)
            assert isinstance(response, ExternalAddressResponse)
            return response

        return self._request(encode_external_address_request(), decode)

    def map_port(self, transport: str, internal_port: int, external_port: int = 0,
                 lifetime: int = DEFAULT_LIFETIME) -> Deferred:
        """
        Map C{transport} C{internal_port}, suggesting C{external_port} (0: any).
        Fires with the granted L{MapResponse}; a grant of lifetime 0 or port 0
        to a request for a mapping counts as a refusal.
        """
        payload = encode_map_request(transport, internal_port, external_port, lifetime)

        def decode(data: bytes) -> MapResponse:
            response = self._accept(data, OPCODES[transport], internal_port)
            assert isinstance(response, MapResponse)
            return response

        def check(response: MapResponse) -> MapResponse:
            if lifetime and (response.lifetime == 0 or response.external_port == 0):
                raise MappingRefused("NAT-PMP", 0, "granted no mapping (lifetime or port 0)")
            return response

        return self._request(payload, decode).addCallback(check)

    def unmap_port(self, transport: str, internal_port: int) -> Deferred:
        """Delete our mapping of C{transport} C{internal_port}; fires with the L{MapResponse}."""
        return self.map_port(transport, internal_port, 0, 0)

    def _accept(self, data: bytes, opcode: int, internal_port: Optional[int] = None
                ) -> ExternalAddressResponse | MapResponse:
        """Decode the answer to a request of C{opcode}; note its epoch; raise for errors."""
        response = decode_response(data)
        if isinstance(response, ErrorResponse):
            got = response.opcode
        elif isinstance(response, ExternalAddressResponse):
            got = OP_EXTERNAL_ADDRESS
        else:
            got = OPCODES[response.transport]
        if got != opcode:
            raise ResponseMismatch(f"response to opcode {got}, expected {opcode}")
        if isinstance(response, MapResponse) and response.internal_port != internal_port:
            raise ResponseMismatch(f"response for internal port {response.internal_port}, expected {internal_port}")
        self.note_epoch(response.epoch)
        if isinstance(response, ErrorResponse):
            if response.result in (1, 5):
                raise AnswerError(NoService(f"NAT-PMP gateway {self.gateway}: {response.reason}"))
            raise AnswerError(MappingRefused("NAT-PMP", response.result, response.reason))
        return response
