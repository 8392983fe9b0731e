"""
TLS 1.3 bound to Ed25519 identities.

Each node presents a certificate self-signed with its identity key; TLS's
CertificateVerify proves it holds that key, so the certificate's public key
I{is} the peer's L{PeerId}.  No certificate authority is involved.  TLS 1.3
key exchange is ephemeral (ECDHE), so past traffic stays secret if an identity
key leaks later.  Session tickets are off: every connection proves its key.

The certificate also carries a non-critical extension, L{CERT_INFO_OID},
with the node's L{CertInfo} (network hash, protocol versions, role): it
travels encrypted (TLS 1.3 encrypts certificates) and lets a connector learn
them one flight before the peer's HELLO (doc/protocol.md, "Certificate").

The verify callback asks the connection's protocol (Twisted attaches its TLS
protocol to the C{SSL.Connection} as app data) whether the presented key is acceptable, so a
connector that expects a given key aborts the handshake on any other key.
"""

from __future__ import annotations

import datetime
from typing import Optional, Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

from crust.errors import ProtocolViolation
from crust.identity import Identity, PeerId
from crust.wire import CertInfo

_VERIFY_MODE = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT

#: The certificate extension holding a node's L{CertInfo} (a UUID-based OID, ITU-T X.667).
CERT_INFO_OID = x509.ObjectIdentifier("2.25.159490803996530857057900582770552200913")


class TLSPeer(Protocol):
    """What the verify callback asks of the protocol a TLS connection carries."""

    tls_verdict: Optional[bool]  # its answer so far: OpenSSL may ask twice about one certificate

    def tls_verify_peer(self, peer_id: Optional[PeerId], problem: str, info: Optional[CertInfo] = None) -> bool: ...


def _der_octets(payload: bytes) -> bytes:
    """C{payload} as a DER OCTET STRING (the extension's value)."""
    n = len(payload)
    if n < 0x80:
        length = bytes([n])
    else:
        digits = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(digits)]) + digits
    return b"\x04" + length + payload


def _der_octets_content(der: bytes) -> bytes:
    """The content of a DER OCTET STRING; ProtocolViolation if it is not one."""
    if len(der) < 2 or der[0] != 0x04:
        raise ProtocolViolation("certificate info is not an OCTET STRING")
    n, at = der[1], 2
    if n & 0x80:
        width = n & 0x7F
        if not 1 <= width <= 2 or len(der) < 2 + width:
            raise ProtocolViolation("certificate info has a bad length")
        n, at = int.from_bytes(der[2:2 + width], "big"), 2 + width
    if len(der) != at + n:
        raise ProtocolViolation("certificate info has a bad length")
    return der[at:]


def make_certificate(identity: Identity, info: Optional[CertInfo] = None) -> x509.Certificate:
    """
    A self-signed certificate for C{identity}'s key (long validity: dates are
    not checked), carrying C{info} in the L{CERT_INFO_OID} extension if given.
    """
    key = Ed25519PrivateKey.from_private_bytes(identity.seed)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(identity.peer_id))])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone.utc))
    )
    if info is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(CERT_INFO_OID, _der_octets(info.encode())), critical=False
        )
    return builder.sign(key, None)


def cert_info(cert: x509.Certificate) -> Optional[CertInfo]:
    """
    The L{CertInfo} a certificate carries, or None if it has none or it does
    not parse (the HELLO exchange then decides everything, as without it).
    Never raises: the info is read by the bounded reader of
    L{CertInfo.decode}, and whatever the peer put there is only no info.
    """
    try:
        ext = cert.extensions.get_extension_for_oid(CERT_INFO_OID)
        if not isinstance(ext.value, x509.UnrecognizedExtension):  # what cryptography makes of an OID it does not know
            return None
        return CertInfo.decode(_der_octets_content(ext.value.value))
    except (x509.ExtensionNotFound, ProtocolViolation, ValueError):
        return None


def peer_id_from_certificate(cert: x509.Certificate) -> Optional[PeerId]:
    """The L{PeerId} a certificate proves, or None if its key is not Ed25519 (or of no type known here)."""
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):  # OpenSSL takes keys of any type into a handshake
        return None
    if not isinstance(key, Ed25519PublicKey):
        return None
    return PeerId(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def readable_certificate(cert: crypto.X509) -> Optional[x509.Certificate]:
    """
    A certificate OpenSSL took from a peer, as cryptography reads it; None
    if it cannot (OpenSSL takes some that cryptography refuses, such as an
    unknown X.509 version).
    """
    try:
        return cert.to_cryptography()
    except Exception:  # cryptography's InvalidVersion, ValueError...: whatever it is, it is no crust identity
        return None


def _verify_callback(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    peer = conn.get_app_data().wrappedProtocol  # Twisted attaches its TLS protocol
    verdict = getattr(peer, "tls_verdict", None)
    if verdict is not None and depth == 0:
        return verdict  # OpenSSL asks again about the same certificate (self-signed, then "ok")
    if depth != 0:
        # crust certificates are self-signed leaves; a chain is not ours
        return peer.tls_verify_peer(None, "the peer presented a certificate chain, not a crust identity")
    crypto_cert = readable_certificate(cert)
    if crypto_cert is None:
        return peer.tls_verify_peer(None, "the peer's certificate is not a valid X.509 certificate")
    peer_id = peer_id_from_certificate(crypto_cert)
    if peer_id is None:
        return peer.tls_verify_peer(None, "the peer's certificate key is not Ed25519")
    return peer.tls_verify_peer(peer_id, "", cert_info(crypto_cert))


def make_context(identity: Identity, info: Optional[CertInfo] = None) -> SSL.Context:
    """One context serves both directions of a node's connections; C{info} goes in its certificate."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # an idle connection gives its record buffers (about 34 KiB) back until it next reads or writes
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    key = Ed25519PrivateKey.from_private_bytes(identity.seed)
    ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    ctx.use_certificate(crypto.X509.from_cryptography(make_certificate(identity, info)))
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
