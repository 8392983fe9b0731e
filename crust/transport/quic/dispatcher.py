"""
crust over QUIC: L{QuicDispatcher} runs every QUIC connection of one UDP
socket, in both directions.

The socket's owner hands it each datagram (L{QuicDispatcher.datagram_received}
returns False for what is not QUIC, so the socket can share with STUN and
crust's own UDP messages, RFC 7983/9443: QUIC's first byte is 64 or more).
Datagrams are routed by destination connection id, never by address, so a
peer whose address changes (NAT rebinding, migration) keeps its connection;
aioquic validates the new path and every reply goes where aioquic says.

Identity is bound as on TCP (doc/protocol.md section 2, and
L{crust.transport.quic.tls}): mutual TLS 1.3 with the nodes' Ed25519 certificates, ALPN
C{crust/1}; the connecting side names the peer it expects.  The connection
itself is a L{crust.transport.quic.driver.QuicDriver} with two lanes (urgent and bulk
streams) that look like Twisted transports.

Typical wiring on the node's L{crust.transport.udp.UdpEndpoint}::

    dispatcher = QuicDispatcher(identity, endpoint.send, clock=reactor,
                                accepted=on_accepted, host=endpoint.transport.getHost)
    endpoint.register(is_quic, dispatcher.datagram_received, "quic")
    d = dispatcher.connect(("198.51.100.4", 4242), expected_peer=peer_id)
    d.addCallback(lambda driver: driver.attach(protocol))
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from aioquic.buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import QuicConnectionState
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust._util.ratelimit import RateLimiter
from crust._util.reactor import maybe_global_reactor
from crust.errors import CrustError, HandshakeRefused
from crust.identity import Identity, PeerId
from crust.transport.quic.driver import (
    ABORTED,
    CLOSED,
    PROTOCOL_ERROR,
    QuicConnectionDone,
    QuicConnectionLost,
    QuicDriver,
    QuicLane,
    QuicOptions,
    _text,
)
from crust.transport.quic.admission import RETRY, InboundAdmission, Refusal
from crust.transport.quic.tls import ALPN, CID_LENGTH, CrustQuicConnection, check_aioquic, make_configuration
from crust.transport.tls import make_certificate
from crust.transport.udp_messages import QUIC_FIRST
from crust.wire import CertInfo

QUIC_FIRST_BYTE = QUIC_FIRST  # RFC 9443: 64..127 short header, 128..255 long header

_MAX_CID = 20  # RFC 9000 section 17.2


class TooManyConnections(CrustError):
    """The dispatcher already holds its maximum number of QUIC connections."""


def is_quic(data: bytes) -> bool:
    """Whether a datagram belongs to QUIC by its first byte (a classifier for the UDP endpoint)."""
    return len(data) > 0 and data[0] >= QUIC_FIRST_BYTE


class QuicDispatcher:
    """
    Every QUIC connection on one UDP socket.

    @param identity: the node's L{Identity}; its certificate is made once.
    @param send_datagram: C{send_datagram(data, addr)} puts one datagram on
        the socket (C{UdpEndpoint.send}); a False result is counted.
    @param clock: an C{IReactorTime}; the global reactor by default.
    @param accepted: called with each incoming L{QuicDriver} once its
        handshake and the client's identity check succeeded; attach a
        protocol there.  Without it, incoming connections are not accepted.
    @param host: returns our address (C{IPv4Address("UDP", ...)}) for the
        lanes' C{getHost}.
    @param options: L{QuicOptions}.
    @param cert_info: the node's L{CertInfo}, carried in its certificate.

    @ivar drivers: the connections, by nothing in particular.
    @ivar counters: datagrams by fate: C{datagrams} (QUIC ones),
        C{malformed}, C{unknown_cid}, C{initial_too_small}, C{refused_full}
        (the inbound share of the connections is taken), C{refused_pending}
        (too many handshakes pending, from all or from one validated IP),
        C{refused_not_accepting}, C{version_negotiation}, C{retries}
        (Retry packets sent), C{invalid_token} (an Initial's token is not
        one of our Retry tokens, or has expired, or names another address),
        C{undecryptable} (an Initial that opened nothing: it does not
        decrypt); connections: C{connects}, C{accepted},
        C{handshake_failures}.
    @ivar admission: the L{InboundAdmission} deciding on new Initials.

    Initials from addresses not yet validated open a connection only while
    that is cheap, and get a Retry otherwise (L{crust.transport.quic.admission});
    an Initial that does not decrypt is dropped before a connection holds
    anything for it; inbound connections never take the last
    C{options.max_connections - options.max_inbound} slots, which stay for
    our own connects.
    """

    log = Logger()

    def __init__(self, identity: Identity, send_datagram: Callable[[bytes, Any], Any], *,
                 clock: Optional[IReactorTime] = None,
                 accepted: Optional[Callable[[QuicDriver], Any]] = None,
                 host: Optional[Callable[[], Any]] = None,
                 options: Optional[QuicOptions] = None, cert_info: Optional[CertInfo] = None) -> None:
        check_aioquic()
        clock = maybe_global_reactor(clock)
        self.identity = identity
        self.clock = clock
        self.options = options if options is not None else QuicOptions()
        self._send = send_datagram
        self._accepted = accepted
        self._host = host
        certificate = make_certificate(identity, cert_info)
        settings = self.options.configuration_options()
        self._client_configuration = make_configuration(identity, is_client=True, certificate=certificate, **settings)
        self._server_configuration = make_configuration(identity, is_client=False, certificate=certificate, **settings)
        self._supported_versions = tuple(self._server_configuration.supported_versions)
        self._by_cid: dict[bytes, QuicDriver] = {}
        self._cids: dict[QuicDriver, set[bytes]] = {}
        self._inbound: set[QuicDriver] = set()  # connections peers opened to us
        self.admission = InboundAdmission(clock, self.options)
        self._retry = QuicRetryTokenHandler()  # a key of this dispatcher's own: its tokens are good here only
        # one line per kind of failed incoming handshake, a few a minute at most
        self._early_log = RateLimiter(clock, per_key=(0.1, 3.0), total=(1.0, 10.0), max_keys=32)
        self.counters = dict.fromkeys(
            ("datagrams", "malformed", "unknown_cid", "initial_too_small", "refused_full", "refused_pending",
             "refused_not_accepting", "version_negotiation", "retries", "invalid_token", "undecryptable",
             "connects", "accepted", "handshake_failures", "closed"),
            0,
        )
        self.on_empty: Optional[Callable[[], None]] = None  # called when the last connection ends
        self.closed = False  # close_all() was called: no new connections

    @property
    def drivers(self) -> list[QuicDriver]:
        return list(self._cids)

    # -- datagrams in ------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> bool:
        """Route one datagram; False if it is not QUIC (first byte below 64)."""
        if not data:
            return False
        first = data[0]
        if first < QUIC_FIRST_BYTE:
            return False
        self.counters["datagrams"] += 1
        if len(addr) != 2:
            addr = (addr[0], addr[1])
        if first & 0x80:  # long header: version (4), dcid length (1), dcid
            size = data[5] if len(data) > 5 else _MAX_CID + 1
            if size > _MAX_CID or len(data) < 6 + size:
                self.counters["malformed"] += 1
                return True
            dcid = data[6 : 6 + size]
        else:
            dcid = data[1 : 1 + CID_LENGTH]
            if len(dcid) < CID_LENGTH:
                self.counters["malformed"] += 1
                return True
        driver = self._by_cid.get(dcid)
        if driver is not None:
            driver.datagram_received(data, addr)
        elif first & 0x80:
            self._unknown_long_header(data, addr)
        else:
            self.counters["unknown_cid"] += 1
        return True

    def _unknown_long_header(self, data: bytes, addr: Any) -> None:
        counters = self.counters
        if self.closed:
            counters["closed"] += 1
            return
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except ValueError:
            counters["malformed"] += 1
            return
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
            counters["unknown_cid"] += 1
            return
        if len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            counters["initial_too_small" if header.packet_type == QuicPacketType.INITIAL else "unknown_cid"] += 1
            return
        if header.version not in self._supported_versions:
            # at least 1200 bytes came in, so the (smaller) answer amplifies nothing
            counters["version_negotiation"] += 1
            self._send(encode_quic_version_negotiation(
                source_cid=header.destination_cid, destination_cid=header.source_cid,
                supported_versions=list(self._supported_versions)), addr)
            return
        if header.packet_type != QuicPacketType.INITIAL:
            counters["unknown_cid"] += 1
            return
        if self._accepted is None:
            counters["refused_not_accepting"] += 1
            return
        host = addr[0]
        now = self.clock.seconds()
        original_cid, retry_cid = header.destination_cid, None
        validated = bool(header.token)
        if validated:
            try:
                original_cid = self._retry.validate_token(address=addr, destination_cid=header.destination_cid,
                                                          token=header.token, now=now)
            except ValueError as e:  # not our token, expired, another address (RFC 9000 section 8.1.3: discard)
                counters["invalid_token"] += 1
                self._early_failure(addr, "invalid-token", f"its Initial carries an invalid token ({e})")
                return
            retry_cid = header.destination_cid
        decision = self.admission.decide(host, validated=validated, inbound=len(self._inbound))
        if decision is RETRY:
            self._send_retry(header, addr, now)
            return
        if isinstance(decision, Refusal):
            counters[f"refused_{decision.kind}"] += 1
            self._early_failure(addr, f"refused-{decision.kind}", decision.reason)
            return
        quic = CrustQuicConnection(configuration=self._server_configuration,
                                   original_destination_connection_id=original_cid,
                                   retry_source_connection_id=retry_cid)
        quic.receive_datagram(data, addr, now)
        if quic._state is QuicConnectionState.FIRSTFLIGHT:
            # nothing in it decrypted (random bytes behind an Initial's header): no connection, no slot
            counters["undecryptable"] += 1
            if not validated:
                self.admission.failed(host)
            self._early_failure(addr, "undecryptable", "its Initial does not decrypt")
            return
        driver = self._add(quic)
        self._inbound.add(driver)
        self.admission.add(driver, host, validated)
        self._register(driver, header.destination_cid)
        driver.ready.addCallbacks(self._accept, self._handshake_failed, errbackArgs=(driver,))
        driver.first_datagram_received(len(data), now)

    def _send_retry(self, header: QuicHeader, addr: Any, now: float) -> None:
        """Answer an Initial with a Retry: a token bound to its address and connection ids (stateless)."""
        version = header.version
        assert version is not None  # a long header of a version we speak
        source_cid = os.urandom(CID_LENGTH)
        try:
            token = self._retry.create_token(address=addr, original_destination_connection_id=header.destination_cid,
                                             retry_source_connection_id=source_cid, now=now)
        except ValueError:  # an address the token cannot hold
            self.counters["malformed"] += 1
            return
        self.counters["retries"] += 1
        # smaller than the Initial (at least 1200 bytes) that asked: no amplification
        self._send(encode_quic_retry(version=version, source_cid=source_cid,
                                     destination_cid=header.source_cid,
                                     original_destination_cid=header.destination_cid, retry_token=token), addr)

    def _early_failure(self, addr: Any, kind: str, reason: str) -> None:
        """An incoming handshake failed before it had a peer: one line, at a bounded rate for each kind."""
        if self._early_log.allow(kind):
            self.log.info("incoming QUIC handshake from {addr} failed: {reason}", addr=_text(addr), reason=reason,
                          kind=kind)

    # -- connections ----------------------------------------------------------------------

    def connect(self, addr: Any, expected_peer: Optional[PeerId] = None) -> Deferred:
        """
        Open a QUIC connection to C{addr} (C{(host, port)}).  Fires with the
        L{QuicDriver} once the handshake completed and the server proved
        C{expected_peer}'s key (any key when None: the caller checks
        C{driver.peer_id}); fails with L{crust.errors.HandshakeRefused}
        (C{wrong-peer}...), L{QuicConnectionLost} (timeout, the peer
        closed) or L{TooManyConnections}.  Cancelling it aborts the attempt.
        """
        return self._connect(CrustQuicConnection(configuration=self._client_configuration), addr, expected_peer)

    # the transport of the addresses this dials (a transport of L{crust.peering.dialer.Dialer})
    name = "udp"

    def available(self) -> bool:
        return True

    def dial(self, address: Any, factory: Any, expected: Optional[PeerId] = None, bind: Any = None,
             from_listener: bool = True) -> Deferred:
        """
        Connect to C{address} (an L{crust.address.Address}) and attach the
        protocol C{factory} builds; fires with that protocol.  (C{bind} and
        C{from_listener} change nothing: every QUIC connection leaves from the
        node's one socket, the one it listens on.)
        """
        return self.connect(address.sockaddr(), expected).addCallback(
            lambda driver: driver.attach(factory.buildProtocol(address)))

    def _connect(self, quic: CrustQuicConnection, addr: Any, expected_peer: Optional[PeerId]) -> Deferred:
        if len(self._cids) >= self.options.max_connections:
            return fail(TooManyConnections(f"already {len(self._cids)} QUIC connections"))
        addr = (addr[0], addr[1])
        self.counters["connects"] += 1
        driver = self._add(quic, expected_peer)
        quic.connect(addr, now=self.clock.seconds())
        driver.start()
        return driver.ready

    def _add(self, quic: CrustQuicConnection, expected_peer: Optional[PeerId] = None) -> QuicDriver:
        driver = QuicDriver(quic, self.clock, self._send, self.options, owner=self,
                            expected_peer=expected_peer, host=self._host)
        self._cids[driver] = set()
        self._register(driver, quic.host_cid)
        return driver

    def _accept(self, driver: QuicDriver) -> None:
        self.admission.settle(driver)
        accepted = self._accepted
        assert accepted is not None  # a server connection is made only when there is someone to accept it
        self.counters["accepted"] += 1
        try:
            accepted(driver)
        except Exception:
            self.log.failure("accepting the QUIC connection from {peer} failed", peer=str(driver.peer_id))
            driver.abort_connection("internal error")

    def _handshake_failed(self, failure: Failure, driver: QuicDriver) -> None:
        self.admission.handshake_failed(driver)
        self.counters["handshake_failures"] += 1
        value = failure.value
        if isinstance(value, HandshakeRefused):
            kind = value.reason
        elif isinstance(value, QuicConnectionLost) and value.reason.startswith("timeout"):
            kind = "timeout"
        elif getattr(value, "by_peer", False):
            kind = "closed-by-peer"
        else:
            kind = "failed"
        self._early_failure(driver.quic.get_peer_address(), kind, str(value))

    def close_all(self, reason: str = "shutting down") -> None:
        """
        Abort every connection, send the closes now and forget them (the
        socket is going away); accept no new connection after this.
        """
        self.closed = True
        for driver in list(self._cids):
            driver.close_now(reason)

    # -- DriverOwner -------------------------------------------------------------------------

    def _register(self, driver: QuicDriver, cid: bytes) -> None:
        other = self._by_cid.get(cid)
        if other is not None and other is not driver:
            self.log.warn("QUIC connection id {cid} is in use; not routing it to {driver}",
                          cid=cid.hex(), driver=repr(driver))
            return
        self._by_cid[cid] = driver
        self._cids[driver].add(cid)

    def cid_issued(self, driver: QuicDriver, cid: bytes) -> None:
        if driver in self._cids:
            self._register(driver, cid)

    def cid_retired(self, driver: QuicDriver, cid: bytes) -> None:
        if self._by_cid.get(cid) is driver:
            del self._by_cid[cid]
            self._cids[driver].discard(cid)

    def driver_terminated(self, driver: QuicDriver) -> None:
        self._inbound.discard(driver)
        self.admission.settle(driver)
        for cid in self._cids.pop(driver, ()):
            if self._by_cid.get(cid) is driver:
                del self._by_cid[cid]
        if not self._cids and self.on_empty is not None:
            self.on_empty()

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self._cids), "inbound": len(self._inbound), "connection_ids": len(self._by_cid),
                "pending_inbound": self.admission.pending, **self.counters, **self.admission.counters}


__all__ = [
    "ABORTED",
    "ALPN",
    "CLOSED",
    "PROTOCOL_ERROR",
    "QUIC_FIRST_BYTE",
    "QuicConnectionDone",
    "QuicConnectionLost",
    "QuicDispatcher",
    "QuicDriver",
    "QuicLane",
    "QuicOptions",
    "TooManyConnections",
    "is_quic",
]
