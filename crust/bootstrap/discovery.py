"""
LAN service discovery: find crust nodes of our network on the local links.

A requester sends a small UDP request to every IPv4 interface's broadcast
address and to the IPv6 all-nodes group C{ff02::1} on every interface, at
C{service_discovery_port}.  Each responder that has discovery enabled and
shares the network name answers by unicast, with its peer id and listening
addresses sealed (PyNaCl C{SealedBox}) to a Curve25519 key named in the
request.  The wire format is in doc/bootstrap.md.

Amplification is bounded: requests are padded to at least
L{MIN_REQUEST_SIZE} bytes and smaller ones are not answered, a reply is never
larger than the request it answers, requests from privileged source ports
are ignored, and replies are rate-limited per source IP and globally.
Malformed, oversize, foreign or unsolicited datagrams are ignored and counted
in the C{stats} counters of the protocols.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
from collections import Counter, OrderedDict
from errno import EAGAIN, ECONNREFUSED, EINTR, EWOULDBLOCK
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence, Union

import ifaddr
from nacl.bindings import crypto_box_SEALBYTES
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from twisted.application import service
from twisted.internet import defer, error, udp
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from crust._util.reactor import maybe_global_reactor
from crust.address import Address
from crust.identity import PEER_ID_BYTES, PeerId
from crust._util.ratelimit import RateLimiter

MAGIC = b"CrSD"
VERSION = 1
KIND_REQUEST = 1
KIND_REPLY = 2
HEADER = struct.Struct("!4sBB")  # magic, version, kind
REQUEST_BODY = struct.Struct("!16s8s32s")  # network hash, request id, requester's Curve25519 key
MIN_REQUEST_SIZE = 256
DEFAULT_REQUEST_SIZE = 512
MAX_DATAGRAM = 1200
SEAL_OVERHEAD = crypto_box_SEALBYTES  # 48: an ephemeral public key and a MAC
REPLY_FIXED = 8 + PEER_ID_BYTES + 1  # request id, peer id, address count
DEFAULT_PORT = 5484
ALL_NODES_V6 = "ff02::1"

log = Logger()

Destination = tuple  # (host, port); host may carry an IPv6 scope: "ff02::1%3"


class DiscoveryError(ValueError):
    """A datagram is not acceptable; C{reason} is a short code used in stats."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DiscoveryRequest(NamedTuple):
    network_hash: bytes
    request_id: bytes
    public_key: bytes
    size: int


class DiscoveredPeer(NamedTuple):
    """A discovery reply: unpacks as C{(peer_id, addresses)}."""

    peer_id: PeerId
    addresses: list[Address]


# -- codec (pure) ------------------------------------------------------------

def lan_network_key(name: Optional[str]) -> bytes:
    """
    The 16-byte hash naming a network in discovery requests (C{None}: the
    unnamed network).  Not the HELLO's L{crust.wire.network_hash}.
    """
    data = b"" if name is None else b"\x01" + name.encode("utf-8")
    return hashlib.blake2b(data, digest_size=16, person=b"crust-sd-net-v1").digest()


def encode_request(public_key: Union[PublicKey, bytes], net_hash: bytes, request_id: bytes,
                   size: int = DEFAULT_REQUEST_SIZE) -> bytes:
    """A request padded with zeros to C{size} bytes (L{MIN_REQUEST_SIZE}..L{MAX_DATAGRAM})."""
    key = bytes(public_key)
    if len(key) != 32 or len(net_hash) != 16 or len(request_id) != 8:
        raise ValueError("bad key, network hash or request id length")
    if not MIN_REQUEST_SIZE <= size <= MAX_DATAGRAM:
        raise ValueError(f"request size must be {MIN_REQUEST_SIZE}..{MAX_DATAGRAM}")
    body = HEADER.pack(MAGIC, VERSION, KIND_REQUEST) + REQUEST_BODY.pack(net_hash, request_id, key)
    return body + bytes(size - len(body))


def _check_header(data: bytes, kind: int) -> None:
    if len(data) > MAX_DATAGRAM:
        raise DiscoveryError("oversize", f"{len(data)} bytes")
    if len(data) < HEADER.size:
        raise DiscoveryError("truncated", f"{len(data)} bytes")
    magic, version, got_kind = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DiscoveryError("bad_magic")
    if version != VERSION:
        raise DiscoveryError("bad_version", str(version))
    if got_kind != kind:
        raise DiscoveryError("bad_kind", str(got_kind))


def decode_request(data: bytes) -> DiscoveryRequest:
    """@raise DiscoveryError: the datagram is not a request we may answer."""
    _check_header(data, KIND_REQUEST)
    if len(data) < MIN_REQUEST_SIZE:
        raise DiscoveryError("undersize", f"{len(data)} bytes, requests are padded to {MIN_REQUEST_SIZE}")
    net, request_id, key = REQUEST_BODY.unpack_from(data, HEADER.size)
    return DiscoveryRequest(net, request_id, key, len(data))


def _pack_address(a: Address) -> bytes:
    ip = ipaddress.ip_address(a.host.split("%", 1)[0])
    flags = (1 if a.transport == "udp" else 0) | (2 if ip.version == 6 else 0)
    return bytes([flags]) + ip.packed + struct.pack("!H", a.port)


def encode_reply(request: DiscoveryRequest, peer_id: PeerId, addresses: Iterable[Address],
                 max_size: Optional[int] = None) -> bytes:
    """
    The reply to C{request}, sealed to its key, at most C{max_size} (default:
    the request's size) bytes: addresses that do not fit are left out.

    @raise DiscoveryError: C{"bad_key"} if the request's key is unusable.
    """
    limit = min(request.size if max_size is None else max_size, MAX_DATAGRAM)
    room = limit - HEADER.size - SEAL_OVERHEAD - REPLY_FIXED
    packed: list[bytes] = []
    for a in dict.fromkeys(addresses):
        item = _pack_address(a)
        if len(item) > room or len(packed) == 255:
            continue
        packed.append(item)
        room -= len(item)
    plain = request.request_id + peer_id.raw + bytes([len(packed)]) + b"".join(packed)
    try:
        sealed = SealedBox(PublicKey(request.public_key)).encrypt(plain)
    except (CryptoError, ValueError, TypeError) as e:
        raise DiscoveryError("bad_key", str(e)) from None
    return HEADER.pack(MAGIC, VERSION, KIND_REPLY) + bytes(sealed)


def decode_reply(data: bytes, private_key: PrivateKey, request_id: bytes) -> DiscoveredPeer:
    """@raise DiscoveryError: not a reply to our request C{request_id}."""
    _check_header(data, KIND_REPLY)
    try:
        plain = SealedBox(private_key).decrypt(bytes(data[HEADER.size:]))
    except CryptoError:
        raise DiscoveryError("undecryptable") from None
    if len(plain) < REPLY_FIXED:
        raise DiscoveryError("bad_payload", "truncated")
    if plain[:8] != request_id:
        raise DiscoveryError("stale", "a reply to another request")
    peer_id = PeerId(plain[8:8 + PEER_ID_BYTES])
    count = plain[REPLY_FIXED - 1]
    offset = REPLY_FIXED
    addresses: list[Address] = []
    for _ in range(count):
        if offset >= len(plain):
            raise DiscoveryError("bad_payload", "truncated address list")
        flags = plain[offset]
        if flags & ~3:
            raise DiscoveryError("bad_payload", f"unknown address flags {flags:#x}")
        ip_len = 16 if flags & 2 else 4
        end = offset + 1 + ip_len + 2
        if end > len(plain):
            raise DiscoveryError("bad_payload", "truncated address")
        ip = ipaddress.ip_address(plain[offset + 1:offset + 1 + ip_len])
        (port,) = struct.unpack_from("!H", plain, offset + 1 + ip_len)
        try:
            addresses.append(Address("udp" if flags & 1 else "tcp", str(ip), port))
        except ValueError as e:
            raise DiscoveryError("bad_payload", str(e)) from None
        offset = end
    if offset != len(plain):
        raise DiscoveryError("bad_payload", "trailing bytes")
    return DiscoveredPeer(peer_id, addresses)


# -- sockets -------------------------------------------------------------------

_READ_IGNORE = getattr(udp, "_sockErrReadIgnore", (EAGAIN, EINTR, EWOULDBLOCK))
_READ_REFUSE = getattr(udp, "_sockErrReadRefuse", (ECONNREFUSED,))


class DiscoveryPort(udp.Port):
    """
    A UDP port for discovery: IPv6 sockets are IPv6-only (so C{"0.0.0.0"}
    and C{"::"} can both be bound), IPv4 ones may broadcast, and IPv6 scope
    ids are kept in the host (C{"fe80::1%3"}; Twisted drops them) so that a
    link-local requester can be answered.
    """

    def __init__(self, port: int, proto: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192,
                 reactor: Any = None, broadcast: bool = False) -> None:
        super().__init__(port, proto, interface, maxPacketSize, reactor)
        self.broadcast = broadcast

    def createInternetSocket(self) -> socket.socket:
        skt = super().createInternetSocket()
        if self.addressFamily == socket.AF_INET6:
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        elif self.broadcast:
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        return skt

    def doRead(self) -> None:
        read = 0
        while read < self.maxThroughput:
            try:
                data, addr = self.socket.recvfrom(self.maxPacketSize)
            except OSError as e:
                if e.args[0] in _READ_IGNORE or e.args[0] in _READ_REFUSE:
                    return
                raise
            read += len(data)
            if self.addressFamily == socket.AF_INET6:
                host, port, _flow, scope = addr
                if scope and "%" not in host:
                    host = f"{host}%{scope}"
                addr = (host, port)
            try:
                self.protocol.datagramReceived(data, addr)
            except BaseException:
                log.failure("discovery datagram handler failed")


def listen_discovery(protocol: DatagramProtocol, port: int, interface: str = "0.0.0.0", reactor: Any = None,
                     broadcast: bool = False) -> DiscoveryPort:
    """
    Listen for datagrams of C{protocol} on C{interface}:C{port}.

    @raise twisted.internet.error.CannotListenError: on failure.
    """
    reactor = maybe_global_reactor(reactor)
    p = DiscoveryPort(port, protocol, interface, reactor=reactor, broadcast=broadcast)
    p.startListening()
    return p


def _send(transport: Any, data: bytes, dest: Destination, stats: Counter) -> bool:
    try:
        transport.write(data, dest)
        return True
    except (OSError, error.MessageLengthError, error.InvalidAddressError) as e:
        stats["send_failed"] += 1
        log.debug("discovery datagram to {dest} not sent: {error}", dest=_dest_text(dest), error=str(e))
        return False


def _dest_text(dest: Destination) -> str:
    host, port = dest[0], dest[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _plain_host(host: str) -> str:
    return host.split("%", 1)[0]


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(_plain_host(host))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


# -- responder -----------------------------------------------------------------

OurInfo = Callable[[], "tuple[PeerId, Sequence[Address]]"]


class DiscoveryResponder(DatagramProtocol):
    """
    Answers discovery requests of our network while C{enabled}.

    @param our_info: returns our current C{(PeerId, [Address])}.
    @param clock: an C{IReactorTime} for the rate limiter.
    @param limiter: a L{RateLimiter} keyed by source IP; by default 2 a
        second (burst 5) per IP and 20 a second (burst 40) in all.
    @ivar stats: counts of C{"received"}, C{"replied"}, and of every reason a
        datagram was ignored (C{"oversize"}, C{"bad_magic"},
        C{"wrong_network"}, C{"rate_limited"}, ...).
    """

    def __init__(self, our_info: OurInfo, network_name: Optional[str] = None, enabled: bool = True,
                 clock: Any = None, limiter: Optional[RateLimiter] = None) -> None:
        clock = maybe_global_reactor(clock)
        self.our_info = our_info
        self.network_hash = lan_network_key(network_name)
        self.enabled = enabled
        self.clock = clock
        self.limiter = limiter if limiter is not None else RateLimiter(clock, (2.0, 5.0), (20.0, 40.0))
        self.stats: Counter = Counter()

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.stats["received"] += 1
        host, port = addr[0], addr[1]
        try:
            request = decode_request(data)
        except DiscoveryError as e:
            self._ignore(e.reason, host, port, str(e))
            return
        if request.network_hash != self.network_hash:
            self._ignore("wrong_network", host, port)
            return
        if not self.enabled:
            self._ignore("disabled", host, port)
            return
        if port < 1024:
            self._ignore("privileged_source_port", host, port)
            return
        if not self.limiter.allow(_plain_host(host)):
            self._ignore("rate_limited", host, port)
            return
        try:
            peer_id, addresses = self.our_info()
        except Exception:
            log.failure("discovery: cannot get our peer id and addresses")
            self.stats["no_info"] += 1
            return
        if not _is_loopback(host):
            addresses = [a for a in addresses if not _is_loopback(a.host)]
        if not addresses:
            self._ignore("no_addresses", host, port)
            return
        try:
            reply = encode_reply(request, peer_id, addresses)
        except DiscoveryError as e:
            self._ignore(e.reason, host, port, str(e))
            return
        if _send(self.transport, reply, (host, port), self.stats):
            self.stats["replied"] += 1
            log.debug("discovery: answered {requester}", requester=_dest_text((host, port)))

    def _ignore(self, reason: str, host: str, port: int, detail: str = "") -> None:
        self.stats[reason] += 1
        self.stats["ignored"] += 1
        log.debug("discovery: ignored a datagram from {source}: {reason}",
                  source=_dest_text((host, port)), reason=detail or reason)


class DiscoveryResponderService(service.Service):
    """
    Runs a L{DiscoveryResponder} on C{port} of each of C{interfaces} (default:
    all IPv4 and all IPv6 addresses).  An interface that cannot be bound is
    logged and skipped (as in the original, discovery failing is not fatal).
    """

    def __init__(self, responder: DiscoveryResponder, port: int = DEFAULT_PORT,
                 interfaces: Sequence[str] = ("0.0.0.0", "::"), reactor: Any = None) -> None:
        self.responder = responder
        self.port = port
        self.interfaces = tuple(interfaces)
        self.reactor = reactor
        self.ports: list[DiscoveryPort] = []

    def startService(self) -> None:
        super().startService()
        for interface in self.interfaces:
            try:
                self.ports.append(listen_discovery(self.responder, self.port, interface, self.reactor))
            except error.CannotListenError as e:
                log.warn("LAN discovery cannot listen on {interface} port {port}: {error}",
                         interface=interface, port=self.port, error=str(e.socketError))

    def stopService(self) -> Any:
        super().stopService()
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])


# -- requester -----------------------------------------------------------------

def default_destinations(port: int = DEFAULT_PORT, include_loopback: bool = False, ipv6: bool = True,
                         adapters: Optional[Iterable[Any]] = None) -> list[Destination]:
    """
    Where to send requests: each IPv4 interface's broadcast address (from its
    address and prefix; /31 and /32 have none), and C{ff02::1} scoped to each
    interface with IPv6.  Loopback only when C{include_loopback} (then by
    unicast to 127.0.0.1 and ::1).

    @param adapters: C{ifaddr} adapters (default: C{ifaddr.get_adapters()}).
    """
    if adapters is None:
        try:
            adapters = ifaddr.get_adapters()
        except Exception:
            log.failure("cannot list network interfaces")
            adapters = []
    out: dict[Destination, None] = {}
    for adapter in adapters:
        v6_scope = None
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                try:
                    net = ipaddress.ip_network(f"{ip.ip}/{ip.network_prefix}", strict=False)
                except ValueError:
                    continue
                if net.network_address.is_loopback or ipaddress.ip_address(ip.ip).is_loopback:
                    if include_loopback:
                        out[("127.0.0.1", port)] = None
                elif net.prefixlen <= 30:
                    out[(str(net.broadcast_address), port)] = None
            elif ipv6:
                host, _flow, scope = ip.ip
                try:
                    addr = ipaddress.ip_address(host.split("%", 1)[0])
                except ValueError:
                    continue
                if addr.is_loopback:
                    if include_loopback:
                        out[("::1", port)] = None
                    continue
                v6_scope = getattr(adapter, "index", None) or scope or v6_scope
        if v6_scope:
            out[(f"{ALL_NODES_V6}%{v6_scope}", port)] = None
    return list(out)


class _Round(DatagramProtocol):
    """The socket side of one discovery round."""

    def __init__(self, on_datagram: Callable[[bytes, Any], None]) -> None:
        self.on_datagram = on_datagram

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, addr)


class _DiscoveryRound:
    """
    One round of L{DiscoveryRequester.discover}: L{start} sends the request
    and arms the window's timer, L{datagram} takes each reply, L{complete}
    ends the round with the peers found, L{cancel} (the result's canceller)
    ends it without them.  Each ending closes the round's sockets.

    @ivar result: fires with the list of L{DiscoveredPeer}s.
    """

    def __init__(self, requester: "DiscoveryRequester", limit: Optional[int]) -> None:
        self.requester = requester
        self.limit = limit
        self.key = PrivateKey.generate()
        self.request_id = os.urandom(8)
        self.found: "OrderedDict[PeerId, list[Address]]" = OrderedDict()
        self.ports: list[Any] = []
        self.done = False
        self.timer: Any = None
        self.result: defer.Deferred = defer.Deferred(self.cancel)

    def start(self, window: float) -> defer.Deferred:
        """Send one request to every destination and collect replies for C{window} seconds."""
        requester = self.requester
        request = encode_request(self.key.public_key, requester.network_hash, self.request_id,
                                 requester.request_size)
        destinations = requester._destinations()
        protocols: dict[bool, _Round] = {}
        for dest in destinations:
            v6 = ":" in dest[0]
            if v6 not in protocols:
                proto = protocols[v6] = _Round(self.datagram)
                try:
                    self.ports.append(requester._listen(proto, v6))
                except error.CannotListenError as e:
                    log.warn("discovery: cannot open an {family} socket: {error}",
                             family="IPv6" if v6 else "IPv4", error=str(e.socketError))
                    continue
            proto = protocols[v6]
            if proto.transport is not None and _send(proto.transport, request, dest, requester.stats):
                requester.stats["sent"] += 1
        if not destinations:
            log.info("discovery: no interface to send a request on")
        self.timer = requester.clock.callLater(window, self.complete)
        return self.result

    def datagram(self, data: bytes, addr: Any) -> None:
        """A datagram arrived on one of the round's sockets."""
        if self.done:
            return
        stats = self.requester.stats
        host = addr[0]
        try:
            peer = decode_reply(data, self.key, self.request_id)
        except DiscoveryError as e:
            stats[e.reason] += 1
            stats["ignored"] += 1
            log.debug("discovery: ignored a datagram from {source}: {reason}",
                      source=_dest_text(addr), reason=str(e))
            return
        if peer.peer_id in self.requester.exclude_peer_ids:
            stats["own"] += 1
            return
        stats["replies"] += 1
        addresses = self.found.setdefault(peer.peer_id, [])
        for a in _usable_addresses(peer.addresses, host):
            if a not in addresses:
                addresses.append(a)
        log.debug("discovery: {peer} answered from {source}", peer=peer.peer_id.short(),
                  source=_dest_text(addr))
        if self.limit is not None and len(self.found) >= self.limit:
            self.complete()

    def complete(self) -> None:
        """End the round: L{result} fires with the peers found, once the sockets are closed."""
        if self.done:
            return
        peers = [DiscoveredPeer(p, a) for p, a in self.found.items()]
        self._finish().addCallback(lambda _: self.result.callback(peers))

    def cancel(self, d: defer.Deferred) -> None:
        """The canceller of L{result}: end the round without an answer."""
        if not self.done:
            self._finish()

    def _finish(self) -> defer.Deferred:
        self.done = True
        timer = self.timer
        if timer is not None and timer.active():
            timer.cancel()
        stopping = [defer.maybeDeferred(p.stopListening) for p in self.ports]
        self.ports.clear()
        return defer.DeferredList(stopping, consumeErrors=True)


class DiscoveryRequester:
    """
    Asks the LAN for peers of our network.

    @param port: the responders' port (C{service_discovery_port}).
    @param destinations: where requests go: a list of C{(host, port)}, a
        callable returning one, or C{None} for L{default_destinations}.
        Tests pass C{[("127.0.0.1", port)]}.
    @param exclude_peer_ids: replies naming these (ourselves) are dropped.
    @param bind_v4: the local address of the IPv4 request socket.
    @param bind_v6: the local address of the IPv6 request socket.
    @ivar stats: counts of C{"sent"}, C{"replies"}, and of ignored datagrams by reason.
    """

    def __init__(self, port: int = DEFAULT_PORT, network_name: Optional[str] = None, window: float = 1.0,
                 destinations: Union[None, Sequence[Destination], Callable[[], Sequence[Destination]]] = None,
                 include_loopback: bool = False, exclude_peer_ids: Iterable[PeerId] = (),
                 request_size: int = DEFAULT_REQUEST_SIZE, reactor: Any = None, clock: Any = None,
                 bind_v4: str = "0.0.0.0", bind_v6: str = "::") -> None:
        reactor = maybe_global_reactor(reactor)
        if not MIN_REQUEST_SIZE <= request_size <= MAX_DATAGRAM:
            raise ValueError(f"request_size must be {MIN_REQUEST_SIZE}..{MAX_DATAGRAM}")
        self.port = port
        self.network_hash = lan_network_key(network_name)
        self.window = window
        self.destinations = destinations
        self.include_loopback = include_loopback
        self.exclude_peer_ids = frozenset(exclude_peer_ids)
        self.request_size = request_size
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.bind_v4 = bind_v4
        self.bind_v6 = bind_v6
        self.stats: Counter = Counter()

    def _destinations(self) -> list[Destination]:
        d = self.destinations
        if d is None:
            return default_destinations(self.port, self.include_loopback)
        return list(d() if callable(d) else d)

    def _listen(self, protocol: DatagramProtocol, v6: bool) -> Any:
        """Open a request socket (tests may override this)."""
        if v6:
            return listen_discovery(protocol, 0, self.bind_v6, self.reactor)
        return listen_discovery(protocol, 0, self.bind_v4, self.reactor, broadcast=True)

    def discover(self, window: Optional[float] = None, limit: Optional[int] = None) -> defer.Deferred:
        """
        Send one request to every destination and collect replies for
        C{window} seconds (or until C{limit} distinct peers answered).

        @return: a Deferred firing with a list of L{DiscoveredPeer} (unpacking
            as C{(PeerId, [Address])}) in the order they first answered, one
            per peer, addresses merged.  Cancelling it stops the round.
        """
        window = self.window if window is None else window
        return _DiscoveryRound(self, limit).start(window)

    def has_peers_on_lan(self, window: Optional[float] = None) -> defer.Deferred:
        """A Deferred firing True as soon as a peer answers, False after the window."""
        return self.discover(window, limit=1).addCallback(bool)


def _usable_addresses(addresses: Iterable[Address], source: str) -> list[Address]:
    """Replace unspecified hosts by the reply's source; drop loopback ones from a remote responder."""
    out = []
    source_plain = _plain_host(source)
    source_v6 = ":" in source_plain
    remote = not _is_loopback(source)
    scope = source.split("%", 1)[1] if "%" in source else None
    for a in addresses:
        ip = a.ip
        if ip.is_unspecified:
            if a.family_is_v6 != source_v6:
                continue
            a = Address(a.transport, source, a.port)
        elif remote and ip.is_loopback:
            continue
        elif ip.is_link_local and a.family_is_v6 and scope and "%" not in a.host:
            a = Address(a.transport, f"{a.host}%{scope}", a.port)  # reachable through the reply's interface
        out.append(a)
    return out


def has_peers_on_lan(requester: DiscoveryRequester, window: Optional[float] = None) -> defer.Deferred:
    """Does any peer of our network answer on the LAN? (A Deferred of bool.)"""
    return requester.has_peers_on_lan(window)
