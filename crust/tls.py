"""
TLS 1.3 bound to Ed25519 identities.

Each node presents a certificate self-signed with its identity key; TLS's
CertificateVerify proves it holds that key, so the certificate's public key
I{is} the peer's L{PeerId}.  No certificate authority is involved.  TLS 1.3
key exchange is ephemeral (ECDHE), so past traffic stays secret if an identity
key leaks later.  Session tickets are off: every connection proves its key.

The verify callback asks the connection's protocol (Twisted attaches its TLS
protocol to the C{SSL.Connection} as app data) whether the presented key is acceptable, so a
connector that expects a given key aborts the handshake on any other key.
"""

from __future__ import annotations

import datetime
from typing import Optional, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

from crust.identity import Identity, PeerId

_VERIFY_MODE = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


class TLSPeer(Protocol):
    """What the verify callback asks of the protocol a TLS connection carries."""

    def tls_verify_peer(self, peer_id: Optional[PeerId], problem: str) -> bool: ...


def make_certificate(identity: Identity) -> x509.Certificate:
    """A self-signed certificate for C{identity}'s key (long validity: dates are not checked)."""
    key = Ed25519PrivateKey.from_private_bytes(identity.seed)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(identity.peer_id))])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone.utc))
        .sign(key, None)
    )


def peer_id_from_certificate(cert: x509.Certificate) -> Optional[PeerId]:
    """The L{PeerId} a certificate proves, or None if its key is not Ed25519."""
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        return None
    return PeerId(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _verify_callback(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    peer = conn.get_app_data().wrappedProtocol  # Twisted attaches its TLS protocol
    if depth != 0:
        # crust certificates are self-signed leaves; a chain is not ours
        return peer.tls_verify_peer(None, "the peer presented a certificate chain, not a crust identity")
    peer_id = peer_id_from_certificate(cert.to_cryptography())
    if peer_id is None:
        return peer.tls_verify_peer(None, "the peer's certificate key is not Ed25519")
    return peer.tls_verify_peer(peer_id, "")


def make_context(identity: Identity) -> SSL.Context:
    """One context serves both directions of a node's connections."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    key = Ed25519PrivateKey.from_private_bytes(identity.seed)
    ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    ctx.use_certificate(crypto.X509.from_cryptography(make_certificate(identity)))
    ctx.check_privatekey()
    ctx.set_verify(_VERIFY_MODE, _verify_callback)
    return ctx


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class ConnectionCreator:
    """Makes the C{SSL.Connection} for each TLS connection of a node."""

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def _connection(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    clientConnectionForTLS = _connection
    serverConnectionForTLS = _connection
