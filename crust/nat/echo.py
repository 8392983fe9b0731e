"""
crust's UDP address echo: "which address do my datagrams come from, as you
see them?", asked of a crust peer inside a secure channel.

The requester knows the responder's L{PeerId} (an Ed25519 public key) and
converts it to an X25519 key; it sends a fresh ephemeral X25519 public key
and a NaCl box (XSalsa20-Poly1305) holding a random request id.  Only the
holder of the PeerId's secret key can open it and answer, in a box under the
same shared key, with the request id and the source address the request
came from.  So the answer is authenticated (only that peer could make it,
and only for this request), a passive observer learns nothing but sizes,
and answers are smaller than requests (no amplification).  Wire format:
C{doc/netcheck.md}.

L{UdpEcho} is both sides on one L{crust.transport.udp.UdpEndpoint}, where it
registers itself for crust message types 4 and 5 (L{crust.transport.udp_messages}): it
answers requests when it has the node's identity (rate limited per source
IP and in total), and asks with L{UdpEcho.echo} (retransmitting a few times
within a bounded time).  L{UdpEchoSource} plugs a peer into
L{crust.nat.classify.classify_nat} as an L{IAddressEchoSource}.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass
from typing import Any, Optional

from nacl.bindings import (
    crypto_box_afternm,
    crypto_box_beforenm,
    crypto_box_keypair,
    crypto_box_open_afternm,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import CryptoError
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from zope.interface import implementer

from crust.address import Address
from crust.errors import CrustError
from crust.identity import PeerId
from crust.nat.classify import IAddressEchoSource
from crust.nat.stun_client import StunTimeout
from crust._util.ratelimit import RateLimiter
from crust.transport.udp_messages import ECHO_REQUEST, ECHO_RESPONSE

VERSION = 1
MAGIC = b"cr"  # bytes 1..2 of every crust echo message
KEY_SIZE = 32
NONCE_SIZE = 24
MAC_SIZE = 16
REQUEST_ID_SIZE = 16
REQUEST_PLAINTEXT_SIZE = 48  # request id + zero padding: keeps every answer smaller than its request
RESPONSE_PLAINTEXT_SIZE = 40  # request id, family, port, 16 address bytes, zero padding
HEADER_SIZE = 4  # type, MAGIC, version
REQUEST_SIZE = HEADER_SIZE + KEY_SIZE + NONCE_SIZE + MAC_SIZE + REQUEST_PLAINTEXT_SIZE  # 124
RESPONSE_SIZE = HEADER_SIZE + NONCE_SIZE + MAC_SIZE + RESPONSE_PLAINTEXT_SIZE  # 84
_FAMILY = {4: 4, 6: 6}

DEFAULT_TIMEOUT = 2.0
DEFAULT_TRIES = 4
DEFAULT_RTO = 0.25
MAX_OUTSTANDING = 64
_RECENT = 32  # finished requests whose late duplicate answers are recognised

assert RESPONSE_SIZE < REQUEST_SIZE


class EchoError(CrustError):
    """A UDP echo request failed."""


class EchoTimeout(EchoError, StunTimeout):
    """
    No answer within the time allowed.  (Also a L{StunTimeout}, so that
    L{crust.nat.classify} records the probe as a timeout, not an error.)
    """

    def __init__(self, destination: Address, peer_id: PeerId, transmissions: int, elapsed: float) -> None:
        self.server = self.destination = destination
        self.peer_id = peer_id
        self.transmissions = transmissions
        self.elapsed = elapsed
        CrustError.__init__(
            self,
            f"crust peer {peer_id.short()} at {destination} did not answer the UDP echo: "
            f"{transmissions} requests over {elapsed:.1f} s",
        )


@dataclass(frozen=True)
class EchoResult:
    """
    One answered echo.  C{observed} is our address as the peer saw it;
    C{source} where the answer came from (normally C{destination}); C{rtt}
    counts from the first transmission, a true RTT only when
    C{transmissions} is 1.
    """

    peer_id: PeerId
    destination: Address
    observed: Address
    source: Address
    rtt: float
    transmissions: int


# --- codec (pure) -------------------------------------------------------------------


def curve_public_key(peer_id: PeerId) -> bytes:
    """The X25519 public key of a PeerId. @raise ValueError: not a valid Ed25519 point."""
    try:
        return crypto_sign_ed25519_pk_to_curve25519(peer_id.raw)
    except CryptoError:
        raise ValueError(f"{peer_id} is not a usable Ed25519 public key") from None


def curve_secret_key(identity: Any) -> bytes:
    """The X25519 secret key of an L{crust.identity.Identity}."""
    _, sk64 = crypto_sign_seed_keypair(identity.seed)
    return crypto_sign_ed25519_sk_to_curve25519(sk64)


def _header(message_type: int) -> bytes:
    return bytes((message_type,)) + MAGIC + bytes((VERSION,))


def encode_request(shared_key: bytes, ephemeral_public: bytes, request_id: bytes,
                   nonce: Optional[bytes] = None) -> bytes:
    """C{4 'c' 'r' 1 | ephemeral public key | nonce | box(request id + padding)}: 124 bytes."""
    if len(request_id) != REQUEST_ID_SIZE or len(ephemeral_public) != KEY_SIZE:
        raise ValueError("bad request id or key size")
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    plaintext = request_id.ljust(REQUEST_PLAINTEXT_SIZE, b"\x00")
    return _header(ECHO_REQUEST) + ephemeral_public + nonce + crypto_box_afternm(plaintext, nonce, shared_key)


def encode_address(address: Address) -> bytes:
    """family (4 or 6) | port (u16) | 16 address bytes (IPv4 left-aligned, zero-filled)."""
    ip = ipaddress.ip_address(address.host)
    return struct.pack("!BH", ip.version, address.port) + ip.packed.ljust(16, b"\x00")


def decode_address(data: bytes) -> Address:
    """The inverse of L{encode_address}. @raise ValueError: with the reason."""
    if len(data) < 19:
        raise ValueError("address field truncated")
    family, port = struct.unpack("!BH", data[:3])
    if family == 4:
        host = str(ipaddress.IPv4Address(data[3:7]))
    elif family == 6:
        host = str(ipaddress.IPv6Address(data[3:19]))
    else:
        raise ValueError(f"unknown address family {family}")
    return Address("udp", host, port)  # checks the port


def encode_response(shared_key: bytes, request_id: bytes, observed: Address,
                    nonce: Optional[bytes] = None) -> bytes:
    """C{5 'c' 'r' 1 | nonce | box(request id + address + padding)}: 84 bytes."""
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    plaintext = (request_id + encode_address(observed)).ljust(RESPONSE_PLAINTEXT_SIZE, b"\x00")
    return _header(ECHO_RESPONSE) + nonce + crypto_box_afternm(plaintext, nonce, shared_key)


def check_header(data: bytes, message_type: int, size: int) -> Optional[str]:
    """None when C{data} is a well-formed message of that type and size, else the counter to bump."""
    kind = "requests" if message_type == ECHO_REQUEST else "responses"
    if len(data) < size:
        return f"{kind}_truncated"
    if len(data) > size:
        return f"{kind}_oversize"
    if data[0] != message_type or data[1:3] != MAGIC:
        return f"{kind}_malformed"
    if data[3] != VERSION:
        return f"{kind}_bad_version"
    return None


def open_request(data: bytes, curve_secret: bytes) -> tuple[bytes, bytes]:
    """
    C{(shared key, request id)} of a well-formed request (see
    L{check_header}). @raise CryptoError: it was not made for this key.
    """
    ephemeral = data[HEADER_SIZE : HEADER_SIZE + KEY_SIZE]
    nonce = data[HEADER_SIZE + KEY_SIZE : HEADER_SIZE + KEY_SIZE + NONCE_SIZE]
    box = data[HEADER_SIZE + KEY_SIZE + NONCE_SIZE :]
    key = crypto_box_beforenm(ephemeral, curve_secret)  # low-order points raise too
    plaintext = crypto_box_open_afternm(box, nonce, key)
    return key, plaintext[:REQUEST_ID_SIZE]


def open_response(data: bytes, shared_key: bytes) -> tuple[bytes, Address]:
    """
    C{(request id, observed address)} of a well-formed response.
    @raise CryptoError: not under this key.  @raise ValueError: bad content.
    """
    nonce = data[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE]
    plaintext = crypto_box_open_afternm(data[HEADER_SIZE + NONCE_SIZE :], nonce, shared_key)
    return plaintext[:REQUEST_ID_SIZE], decode_address(plaintext[REQUEST_ID_SIZE:])


# --- the protocol ---------------------------------------------------------------------


class _Request:
    def __init__(self, request_id: bytes, peer_id: PeerId, destination: Address, key: bytes,
                 packet: bytes, started: float) -> None:
        self.id = request_id
        self.peer_id = peer_id
        self.destination = destination
        self.key = key
        self.packet = packet
        self.started = started
        self.transmissions = 0
        self.deferred: Deferred = Deferred(lambda d: None)
        self.timers: list[Any] = []

    def stop_timers(self) -> None:
        for call in self.timers:
            if call.active():
                call.cancel()
        self.timers = []


class UdpEcho:
    """
    Both sides of the UDP echo on one endpoint (anything with C{clock},
    C{send(data, addr) -> bool}, C{set_crust_handler(type, handler)} and
    C{call_when_closed(callback)}, such as L{crust.transport.udp.UdpEndpoint}):
    it registers its handlers for message types 4 and 5 there, and fails its
    requests in flight when the socket closes.

    @param identity: our L{crust.identity.Identity}; without it requests to
        us are dropped (counted as C{requests_ignored}).
    @param rate: C{(per source IP, total)} limits on answers, each a
        C{(rate per second, burst)} pair.
    @param max_outstanding: the most requests of ours in flight at once.

    C{counters}: C{requests_received}, C{requests_answered},
    C{requests_rate_limited}, C{requests_ignored}, C{requests_truncated},
    C{requests_oversize}, C{requests_malformed}, C{requests_bad_version},
    C{requests_undecryptable}; C{echo_started}, C{echo_sent},
    C{echo_retransmissions}, C{echo_succeeded}, C{echo_timeouts},
    C{echo_failed}; C{responses_received}, C{responses_truncated},
    C{responses_oversize}, C{responses_malformed}, C{responses_bad_version},
    C{responses_unmatched} (no request of ours opens it),
    C{responses_duplicate} (a late answer to a finished request).
    """

    log = Logger()

    def __init__(self, endpoint: Any, identity: Any = None, *,
                 rate: tuple[tuple[float, float], tuple[float, float]] = ((5.0, 10.0), (100.0, 200.0)),
                 max_outstanding: int = MAX_OUTSTANDING) -> None:
        self.endpoint = endpoint
        self.clock = endpoint.clock
        self.identity = identity
        self._curve_secret = curve_secret_key(identity) if identity is not None else None
        self._limiter = RateLimiter(self.clock, rate[0], rate[1])
        self.max_outstanding = max_outstanding
        self._pending: dict[bytes, _Request] = {}
        self._recent: list[tuple[Address, bytes]] = []
        self.counters = dict.fromkeys(
            ("requests_received", "requests_answered", "requests_rate_limited", "requests_ignored",
             "requests_truncated", "requests_oversize", "requests_malformed", "requests_bad_version",
             "requests_undecryptable", "echo_started", "echo_sent", "echo_retransmissions", "echo_succeeded",
             "echo_timeouts", "echo_failed", "responses_received", "responses_truncated", "responses_oversize",
             "responses_malformed", "responses_bad_version", "responses_unmatched", "responses_duplicate"),
            0,
        )
        endpoint.set_crust_handler(ECHO_REQUEST, self.request_received)
        endpoint.set_crust_handler(ECHO_RESPONSE, self.response_received)
        endpoint.call_when_closed(self.cancel_all)

    @property
    def responding(self) -> bool:
        return self._curve_secret is not None

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    # -- responder --------------------------------------------------------------------

    def request_received(self, data: bytes, addr: Any) -> None:
        """Answer one echo request (the endpoint calls this for first byte 4)."""
        counters = self.counters
        counters["requests_received"] += 1
        problem = check_header(data, ECHO_REQUEST, REQUEST_SIZE)
        source = Address.from_sockaddr("udp", addr)
        if problem is not None or source is None:
            problem = problem or "requests_malformed"
            counters[problem] += 1
            self.log.debug("dropping UDP echo request from {addr}: {problem}", addr=_text(addr), problem=problem)
            return
        if self._curve_secret is None:
            counters["requests_ignored"] += 1
            return
        if not self._limiter.allow(source.host):  # before the X25519 work
            counters["requests_rate_limited"] += 1
            self.log.debug("not answering UDP echo request from {addr}: rate limited", addr=str(source))
            return
        try:
            key, request_id = open_request(data, self._curve_secret)
        except CryptoError:
            counters["requests_undecryptable"] += 1
            self.log.debug("dropping UDP echo request from {addr}: not made for our key", addr=str(source))
            return
        if self.endpoint.send(encode_response(key, request_id, source), addr):
            counters["requests_answered"] += 1

    # -- requester ----------------------------------------------------------------------

    def echo(self, destination: Address, peer_id: PeerId, timeout: float = DEFAULT_TIMEOUT,
             tries: int = DEFAULT_TRIES, rto: float = DEFAULT_RTO) -> Deferred:
        """
        Ask the peer C{peer_id} at C{destination} (a C{udp:} address) how it
        sees us.  Fires with our L{Address} as it saw it; fails with
        L{EchoTimeout} after C{timeout} seconds, or L{EchoError}.
        """
        return self.query(destination, peer_id, timeout, tries, rto).addCallback(lambda r: r.observed)

    def query(self, destination: Address, peer_id: PeerId, timeout: float = DEFAULT_TIMEOUT,
              tries: int = DEFAULT_TRIES, rto: float = DEFAULT_RTO) -> Deferred:
        """
        Like L{echo}, firing with the whole L{EchoResult}.  Sends at 0,
        C{rto}, 3 C{rto}, 7 C{rto}... (C{tries} in all, only those before the
        deadline); fails at C{timeout}.  Cancelling abandons the request.
        """
        if not timeout > 0 or not rto > 0 or not isinstance(tries, int) or tries < 1:
            return fail(ValueError(f"bad echo schedule: timeout={timeout!r} tries={tries!r} rto={rto!r}"))
        if not isinstance(destination, Address) or destination.transport != "udp":
            return fail(ValueError(f"a UDP echo goes to a udp: address, not {destination}"))
        try:
            peer_key = curve_public_key(peer_id)
        except ValueError as e:
            return fail(EchoError(str(e)))
        if len(self._pending) >= self.max_outstanding:
            return fail(EchoError(f"too many UDP echo requests in flight ({len(self._pending)})"))
        ephemeral_public, ephemeral_secret = crypto_box_keypair()
        key = crypto_box_beforenm(peer_key, ephemeral_secret)
        request_id = os.urandom(REQUEST_ID_SIZE)
        request = _Request(request_id, peer_id, destination, key,
                           encode_request(key, ephemeral_public, request_id), self.clock.seconds())
        request.deferred = Deferred(lambda d: self._abandon(request))
        self._pending[request_id] = request
        self.counters["echo_started"] += 1
        self.log.debug("UDP echo request to {peer} at {destination}",
                       peer=peer_id.short(), destination=str(destination))
        if not self._transmit(request):
            self._finish(request, EchoError(f"cannot send the UDP echo request to {destination}"))
            self.counters["echo_failed"] += 1
            return request.deferred
        request.timers.append(self.clock.callLater(timeout, self._timed_out, request))
        at = rto
        for _ in range(tries - 1):
            if at >= timeout:
                break
            request.timers.append(self.clock.callLater(at, self._retransmit, request))
            at = 2 * at + rto
        return request.deferred

    def _transmit(self, request: _Request) -> bool:
        request.transmissions += 1
        if not self.endpoint.send(request.packet, request.destination.sockaddr()):
            return False
        self.counters["echo_sent"] += 1
        if request.transmissions > 1:
            self.counters["echo_retransmissions"] += 1
        return True

    def _retransmit(self, request: _Request) -> None:
        if request.id in self._pending:
            self._transmit(request)  # a failed resend is counted by the endpoint; the next may go

    def _timed_out(self, request: _Request) -> None:
        if request.id not in self._pending:
            return
        self.counters["echo_timeouts"] += 1
        elapsed = self.clock.seconds() - request.started
        self.log.info("UDP echo to {peer} at {destination}: no answer after {n} requests",
                      peer=request.peer_id.short(), destination=str(request.destination), n=request.transmissions)
        self._finish(request, EchoTimeout(request.destination, request.peer_id, request.transmissions, elapsed))

    def _abandon(self, request: _Request) -> None:
        request.stop_timers()
        self._pending.pop(request.id, None)

    def _finish(self, request: _Request, outcome: Any) -> None:
        request.stop_timers()
        self._pending.pop(request.id, None)
        self._recent.append((request.destination, request.key))
        del self._recent[:-_RECENT]
        if isinstance(outcome, Exception):
            request.deferred.errback(outcome)
        else:
            request.deferred.callback(outcome)

    def response_received(self, data: bytes, addr: Any) -> None:
        """Match an answer to one of our requests (the endpoint calls this for first byte 5)."""
        counters = self.counters
        counters["responses_received"] += 1
        problem = check_header(data, ECHO_RESPONSE, RESPONSE_SIZE)
        source = Address.from_sockaddr("udp", addr)
        if problem is not None or source is None:
            problem = problem or "responses_malformed"
            counters[problem] += 1
            self.log.debug("dropping UDP echo answer from {addr}: {problem}", addr=_text(addr), problem=problem)
            return
        # Answers normally come from where the request went; try those first.
        candidates = sorted(self._pending.values(), key=lambda r: r.destination != source)
        for request in candidates:
            try:
                request_id, observed = open_response(data, request.key)
            except CryptoError:
                continue
            except ValueError as e:
                counters["responses_malformed"] += 1
                self.log.info("bad UDP echo answer from {peer}: {reason}", peer=request.peer_id.short(), reason=str(e))
                return
            if request_id != request.id:
                counters["responses_malformed"] += 1
                return
            counters["echo_succeeded"] += 1
            rtt = self.clock.seconds() - request.started
            self.log.debug("{peer} sees our UDP traffic from {observed}",
                           peer=request.peer_id.short(), observed=str(observed))
            self._finish(request, EchoResult(request.peer_id, request.destination, observed, source, rtt,
                                             request.transmissions))
            return
        for destination, key in self._recent:
            if destination != source:
                continue
            try:
                open_response(data, key)
            except (CryptoError, ValueError):
                continue
            counters["responses_duplicate"] += 1
            return
        counters["responses_unmatched"] += 1
        self.log.debug("dropping UDP echo answer from {addr}: it answers no request of ours", addr=_text(addr))

    def cancel_all(self) -> None:
        """Abandon every request in flight (their Deferreds fail with C{CancelledError})."""
        for request in list(self._pending.values()):
            request.deferred.cancel()


@implementer(IAddressEchoSource)
class UdpEchoSource:
    """
    A crust peer as an L{IAddressEchoSource} for L{crust.nat.classify.classify_nat}.
    The echo goes through C{udp_echo}, so it must sit on the socket being
    classified: C{echo(stun_client)} fails if C{stun_client} is in the STUN
    chain of another endpoint than the echo's.
    """

    def __init__(self, udp_echo: UdpEcho, peer_id: PeerId, destination: Address, *,
                 timeout: float = DEFAULT_TIMEOUT, tries: int = DEFAULT_TRIES, rto: float = DEFAULT_RTO) -> None:
        self.udp_echo = udp_echo
        self.peer_id = peer_id
        self.destination = destination
        self.timeout = timeout
        self.tries = tries
        self.rto = rto

    def echo(self, local_socket: Any = None) -> Deferred:
        routes_stun_to = getattr(self.udp_echo.endpoint, "routes_stun_to", None)
        handler = getattr(local_socket, "datagram_received", None)
        if routes_stun_to is not None and handler is not None and not routes_stun_to(handler):
            return fail(EchoError("this echo source is on another socket than the one being classified"))
        return self.udp_echo.echo(self.destination, self.peer_id, self.timeout, self.tries, self.rto)

    def __repr__(self) -> str:
        return f"UdpEchoSource({self.peer_id.short()}, {self.destination})"


def _text(addr: Any) -> str:
    try:
        return f"{addr[0]}:{addr[1]}"
    except (TypeError, IndexError):
        return repr(addr)


__all__ = [
    "EchoError",
    "EchoResult",
    "EchoTimeout",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "UdpEcho",
    "UdpEchoSource",
    "curve_public_key",
    "curve_secret_key",
    "decode_address",
    "encode_address",
    "encode_request",
    "encode_response",
    "open_request",
    "open_response",
]
