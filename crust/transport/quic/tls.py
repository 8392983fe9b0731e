"""
QUIC's TLS 1.3 bound to crust identities (aioquic).

Both sides present the node's self-signed Ed25519 certificate
(L{crust.transport.tls.make_certificate}); TLS's CertificateVerify proves possession of
the key, so the certificate's key I{is} the peer's L{PeerId} (doc/protocol.md
section 2).  aioquic does not verify the certificate against a CA
(C{verify_mode=CERT_NONE}); it does check the CertificateVerify signature
against the certificate's key in both directions.  We read the peer's
certificate once the handshake completes and apply crust's rules
(L{check_peer_certificate}).

aioquic's server only asks for a client certificate when the private flag
C{tls.Context._request_client_certificate} is set; L{CrustQuicConnection} sets
it.  Importing this module registers crust's congestion controller,
C{crust-bbr} (L{crust.transport.quic.congestion}), with aioquic.  L{check_aioquic}
fails loudly if an aioquic release drops or renames anything crust relies on
(see doc/quic.md, "aioquic internals").
"""

from __future__ import annotations

import ssl
from typing import Any, Optional

from aioquic import tls as aioquic_tls
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crust.transport.quic import congestion as quic_congestion  # registers "crust-bbr" with aioquic
from crust.errors import CrustError
from crust.identity import Identity, PeerId
from crust.transport.tls import make_certificate, peer_id_from_certificate

ALPN = "crust/1"
CID_LENGTH = 8  # bytes in every connection id we issue (the dispatcher routes on it)
#: Bidirectional streams (crust's byte streams) the peer may have open at once.
MAX_BIDI_STREAMS = 1024

# Transport error codes for identity refusals: CRYPTO_ERROR + TLS alert (RFC 9001 section 4.8)
BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + 42
CERTIFICATE_REQUIRED = QuicErrorCode.CRYPTO_ERROR + 116
NO_APPLICATION_PROTOCOL = QuicErrorCode.CRYPTO_ERROR + 120


class AioquicIncompatible(CrustError):
    """The installed aioquic lacks something crust's QUIC transport relies on."""


class CrustQuicConnection(QuicConnection):
    """
    A C{QuicConnection} whose server side requests (mutual TLS) the client's
    certificate, which tells as soon as it starts closing, and which paces
    with L{crust.transport.quic.congestion.CrustPacer} when its congestion controller
    is crust's (C{crust-bbr}, the default of L{make_configuration}).

    @ivar close_event: the C{ConnectionTerminated} describing the close
        (error code, reason) from the moment the closing or draining period
        begins; aioquic only reports it when that period ends.
    @ivar closed_by_peer: whether the peer sent the CONNECTION_CLOSE.
    """

    close_event: Optional[ConnectionTerminated] = None
    closed_by_peer = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # crust-bbr paces at its own rate, not aioquic's congestion_window / smoothed_rtt
        quic_congestion.install_pacer(self._loss)
        #: bytes the application took from each of its bidirectional streams (crust's byte
        #: streams): their receive window moves with it, not with what arrived
        self.stream_consumed: dict[int, int] = {}
        self.stream_window = self._configuration.max_stream_data
        limit = self._local_max_streams_bidi
        limit.value = limit.sent = MAX_BIDI_STREAMS

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        """
        aioquic doubles a stream's receive window whenever half of it
        arrived, whether the application read it or not; for application
        streams (bidirectional: crust's byte streams) the window is what the
        application consumed plus C{stream_window}, so a reader that stops
        reading stops its sender.  The lanes (unidirectional) keep aioquic's rule.
        """
        if stream.stream_id & 2:
            super()._write_stream_limits(builder, space, stream)
            return
        consumed = self.stream_consumed.get(stream.stream_id)
        if consumed is not None:
            window = self.stream_window
            target = consumed + window
            if target - stream.max_stream_data_local >= window // 4:
                stream.max_stream_data_local = target
        if stream.max_stream_data_local and stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(QuicFrameType.MAX_STREAM_DATA, capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                                      handler=self._on_max_stream_data_delivery, handler_args=(stream,))
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        # One key exchange group, X25519: by default aioquic's client makes a
        # key share for each of P-256, P-384, X25519 and X448 in every
        # ClientHello (three key generations, about 0.35 ms, thrown away) and
        # the server picks P-256.  Every crust node offers and accepts X25519.
        self.tls._supported_groups = [aioquic_tls.Group.X25519]
        if not self._is_client:
            self.tls._request_client_certificate = True

    def _close_begin(self, is_initiator: bool, now: float) -> None:
        super()._close_begin(is_initiator=is_initiator, now=now)
        self.close_event = self._close_event
        self.closed_by_peer = not is_initiator


def check_aioquic() -> None:
    """
    Make sure the installed aioquic still has what crust uses beyond its
    public API: the client-certificate request flag, the peer certificate
    attributes, the connection's stream table, its state (the dispatcher
    sees an Initial decrypt by it) and C{_initialize}.

    @raise AioquicIncompatible: naming what is missing.
    """
    missing = []
    context = aioquic_tls.Context(is_client=False)
    for name in ("_request_client_certificate", "_peer_certificate", "_peer_certificate_chain", "_supported_groups"):
        if not hasattr(context, name):
            missing.append(f"aioquic.tls.Context.{name}")
    for name in ("_initialize", "_close_begin", "_write_stream_limits", "_on_max_stream_data_delivery",
                 "get_peer_address"):  # the last is public, new in 1.7
        if not callable(getattr(QuicConnection, name, None)):
            missing.append(f"aioquic.quic.connection.QuicConnection.{name}")
    probe = QuicConnection(configuration=QuicConfiguration(is_client=True))
    from aioquic.quic.connection import QuicConnectionState

    for name, kind in (("_streams", dict), ("_close_event", type(None)), ("_is_client", bool),
                       ("_state", QuicConnectionState), ("_configuration", QuicConfiguration)):
        if not isinstance(getattr(probe, name, ...), kind):
            missing.append(f"aioquic.quic.connection.QuicConnection.{name}")
    if not all(hasattr(getattr(probe, "_local_max_streams_bidi", None), name) for name in ("value", "sent")):
        missing.append("aioquic.quic.connection.QuicConnection._local_max_streams_bidi")
    from aioquic.quic.stream import QuicStream

    probe_stream = QuicStream(stream_id=0, max_stream_data_local=1)
    for name in ("max_stream_data_local", "max_stream_data_local_sent"):
        if not hasattr(probe_stream, name):
            missing.append(f"aioquic.quic.stream.QuicStream.{name}")
    # crust-bbr's pacer replaces the recovery's (quic_congestion.install_pacer)
    from aioquic.quic.recovery import QuicPacketPacer, QuicPacketRecovery

    loss = getattr(probe, "_loss", None)
    if not isinstance(loss, QuicPacketRecovery):
        missing.append("aioquic.quic.connection.QuicConnection._loss")
    else:
        for name, expected in (("_cc", object), ("_pacer", QuicPacketPacer)):
            if not isinstance(getattr(loss, name, None), expected):
                missing.append(f"aioquic.quic.recovery.QuicPacketRecovery.{name}")
        for name in ("bucket_max", "bucket_time", "packet_time", "update_bucket"):
            if not hasattr(getattr(loss, "_pacer", None), name):
                missing.append(f"aioquic.quic.recovery.QuicPacketPacer.{name}")
    from aioquic.quic.packet_builder import QuicSentPacket

    if hasattr(QuicSentPacket, "__slots__"):  # crust-bbr stores its delivery-rate state on each packet
        missing.append("aioquic.quic.packet_builder.QuicSentPacket.__dict__")
    from aioquic.quic.stream import QuicStreamSender

    sender = QuicStreamSender(stream_id=2, writable=True)
    for name in ("highest_offset", "is_finished"):
        if not hasattr(sender, name):
            missing.append(f"aioquic.quic.stream.QuicStreamSender.{name}")
    if missing:
        import aioquic

        raise AioquicIncompatible(
            f"aioquic {aioquic.__version__} lacks {', '.join(missing)}: crust's QUIC identity binding "
            "needs them (see doc/quic.md); install the pinned aioquic version"
        )


def make_configuration(
    identity: Identity,
    *,
    is_client: bool,
    certificate: Optional[x509.Certificate] = None,
    idle_timeout: float = 130.0,
    max_datagram_size: int = 1200,
    max_data: int = 1 << 20,
    max_stream_data: int = 1 << 20,
    congestion_control: str = quic_congestion.NAME,
) -> QuicConfiguration:
    """
    A QUIC configuration presenting C{identity}: ALPN C{crust/1}, no CA
    verification (we check the key ourselves), no SNI, no session tickets.
    Pass C{certificate} to reuse one made by L{make_certificate}.
    """
    return QuicConfiguration(
        alpn_protocols=[ALPN],
        is_client=is_client,
        certificate=certificate if certificate is not None else make_certificate(identity),
        private_key=Ed25519PrivateKey.from_private_bytes(identity.seed),
        verify_mode=ssl.CERT_NONE,
        connection_id_length=CID_LENGTH,
        idle_timeout=idle_timeout,
        max_datagram_size=max_datagram_size,
        max_data=max_data,
        max_stream_data=max_stream_data,
        congestion_control_algorithm=congestion_control,
    )


def check_peer_certificate(
    quic: QuicConnection, alpn: Optional[str], expected: Optional[PeerId]
) -> tuple[Optional[PeerId], Optional[tuple[int, str, str]]]:
    """
    Apply crust's identity rules to a connection whose handshake completed.

    @return: C{(peer_id, None)} when the peer is acceptable, else
        C{(peer_id or None, (quic_error_code, reason_code, detail))}.
    """
    if alpn != ALPN:
        return None, (NO_APPLICATION_PROTOCOL, "bad-alpn", f"the peer negotiated ALPN {alpn!r}, not {ALPN!r}")
    tls = quic.tls
    cert = tls._peer_certificate
    if cert is None:
        who = "client" if not quic.configuration.is_client else "server"
        return None, (CERTIFICATE_REQUIRED, "no-certificate",
                      f"the {who} presented no certificate (crust requires mutual TLS)")
    if tls._peer_certificate_chain:
        return None, (BAD_CERTIFICATE, "bad-certificate",
                      "the peer presented a certificate chain, not a crust identity")
    peer_id = peer_id_from_certificate(cert)
    if peer_id is None:
        return None, (BAD_CERTIFICATE, "bad-certificate", "the peer's certificate key is not Ed25519")
    if expected is not None and peer_id != expected:
        return peer_id, (BAD_CERTIFICATE, "wrong-peer", f"expected {expected}, the peer is {peer_id}")
    return peer_id, None


__all__ = [
    "ALPN",
    "AioquicIncompatible",
    "BAD_CERTIFICATE",
    "CERTIFICATE_REQUIRED",
    "CID_LENGTH",
    "CrustQuicConnection",
    "check_aioquic",
    "check_peer_certificate",
    "make_configuration",
]
