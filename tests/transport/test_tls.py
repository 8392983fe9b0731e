"""Certificates bound to identities, and the node facts they carry."""

import json

from cryptography import x509
from hypothesis import given
from OpenSSL import SSL
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.identity import Identity
from crust.transport.tls import (
    CERT_INFO_OID,
    _der_octets,
    _der_octets_content,
    cert_info,
    make_certificate,
    make_context,
    peer_id_from_certificate,
)
from crust.errors import ProtocolViolation
from crust.wire import CertInfo, network_hash
from tests import examples
from tests.hostile_json import HOSTILE_DOCUMENTS, hostile_json, only_refused


class CertificateTests(SynchronousTestCase):
    def test_certificate_proves_the_peer_id_and_carries_the_info(self):
        identity = Identity.generate()
        info = CertInfo(network=network_hash("demo"), role="client")
        cert = make_certificate(identity, info)
        self.assertEqual(peer_id_from_certificate(cert), identity.peer_id)
        self.assertEqual(cert_info(cert), info)
        ext = cert.extensions.get_extension_for_oid(CERT_INFO_OID)
        self.assertFalse(ext.critical)  # other TLS stacks may ignore it

    def test_without_info(self):
        self.assertIsNone(cert_info(make_certificate(Identity.generate())))

    def test_garbage_info_is_ignored(self):
        """An unreadable extension only means no early claim: the HELLO decides."""
        identity = Identity.generate()
        for payload in (b"\x04\x03abc", b"\x05\x00", _der_octets(b'{"proto": "crust"}'), _der_octets(b"\xff" * 300)):
            cert = self._with_extension(identity, payload)
            self.assertIsNone(cert_info(cert), payload)

    def test_hostile_info_is_no_info(self):
        """Deeply nested, huge-number or NaN info is no info (it used to raise a RecursionError)."""
        identity = Identity.generate()
        info = {"proto": "crust", "version": 1, "min_version": 1, "network": network_hash(None), "role": "node"}
        payloads = [_der_octets(p) for p in HOSTILE_DOCUMENTS if len(p) < 60000]
        payloads.append(_der_octets(json.dumps(info).encode()[:-1] + b', "x": ' + b"[" * 900 + b"]" * 900 + b"}"))
        for payload in payloads:
            cert = self._with_extension(identity, payload)
            self.assertIsNone(only_refused(self, lambda: cert_info(cert)), payload[:20])
        self.assertIsNotNone(cert_info(self._with_extension(identity, _der_octets(json.dumps(info).encode()))))

    @examples(50)
    @given(hostile_json({"proto": "crust", "version": 1, "min_version": 1, "network": "ab", "role": "node"}),
           st.booleans())
    def test_hostile_info_never_raises(self, payload, wrap):
        cert = self._with_extension(self.identity, _der_octets(payload) if wrap else payload)
        only_refused(self, lambda: cert_info(cert))

    identity = Identity.generate()

    def _with_extension(self, identity, payload):
        cert = make_certificate(identity)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
                   .public_key(cert.public_key()).serial_number(1)
                   .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
                   .add_extension(x509.UnrecognizedExtension(CERT_INFO_OID, payload), critical=False))
        return builder.sign(Ed25519PrivateKey.from_private_bytes(identity.seed), None)

    def test_key_of_an_unknown_type_proves_no_peer(self):
        """
        A certificate whose key is of a type cryptography does not know (OpenSSL
        takes it into the handshake) proves no peer id, and the TLS verify
        callback refuses it with a reason: it used to raise UnsupportedAlgorithm
        out of the callback, an unhandled error that closed the connection
        without a word.
        """
        from cryptography.hazmat.primitives.serialization import Encoding
        from OpenSSL import crypto

        from crust.transport.tls import _verify_callback

        der = make_certificate(self.identity).public_bytes(Encoding.DER)
        ed25519 = bytes.fromhex("06032b6570")  # OID 1.3.101.112
        # the signature's algorithm (twice: signed, and outside) and, second, the key's
        self.assertEqual(der.count(ed25519), 3)
        at = der.index(ed25519, der.index(ed25519) + 1)
        der = der[:at] + bytes.fromhex("06032b6d70") + der[at + 5:]  # the key's: 1.3.109.112, unknown
        cert = x509.load_der_x509_certificate(der)
        self.assertIsNone(peer_id_from_certificate(cert))
        self.assertIsNone(cert_info(cert))

        refused = []

        class Peer:
            tls_verdict = None

            def tls_verify_peer(self, peer_id, problem, info=None):
                refused.append((peer_id, problem))
                return False

        class Connection:
            def get_app_data(self):
                return type("TLSProtocol", (), {"wrappedProtocol": Peer()})()

        openssl_cert = crypto.load_certificate(crypto.FILETYPE_ASN1, der)
        self.assertFalse(_verify_callback(Connection(), openssl_cert, 0, 0, 1))
        self.assertEqual(refused, [(None, "the peer's certificate key is not Ed25519")])

    def test_certificate_cryptography_cannot_read_is_refused(self):
        """
        OpenSSL takes a certificate of X.509 version 121, cryptography does not:
        the verify callback refuses it with a reason (it raised InvalidVersion
        out of the callback).
        """
        from cryptography.hazmat.primitives.serialization import Encoding
        from OpenSSL import crypto

        from crust.transport.tls import _verify_callback

        der = make_certificate(self.identity).public_bytes(Encoding.DER)
        version = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (v3)
        self.assertIn(version, der[:20])
        der = der.replace(version, bytes.fromhex("a003020179"), 1)  # version 121
        refused = []

        class Peer:
            tls_verdict = None

            def tls_verify_peer(self, peer_id, problem, info=None):
                refused.append((peer_id, problem))
                return False

        class Connection:
            def get_app_data(self):
                return type("TLSProtocol", (), {"wrappedProtocol": Peer()})()

        openssl_cert = crypto.load_certificate(crypto.FILETYPE_ASN1, der)
        self.assertFalse(_verify_callback(Connection(), openssl_cert, 0, 0, 1))
        self.assertEqual(refused, [(None, "the peer's certificate is not a valid X.509 certificate")])

    def test_der_octets_round_trip(self):
        for n in (0, 1, 127, 128, 255, 256, 5000):
            payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
            self.assertEqual(_der_octets_content(_der_octets(payload)), payload)
        for bad in (b"", b"\x04", b"\x04\x05abc", b"\x04\x83\x00\x00\x01x", b"\x0c\x01a"):
            self.assertRaises(ProtocolViolation, _der_octets_content, bad)


class ContextTests(SynchronousTestCase):
    def _pair(self):
        server = SSL.Connection(make_context(Identity.generate()), None)
        client = SSL.Connection(make_context(Identity.generate()), None)
        for conn in (server, client):
            conn.set_verify(SSL.VERIFY_PEER, lambda *args: True)  # these tests are not about peer ids
        server.set_accept_state()
        client.set_connect_state()
        for _ in range(4):
            for a, b in ((client, server), (server, client)):
                try:
                    a.do_handshake()
                except SSL.WantReadError:
                    pass
                try:
                    b.bio_write(a.bio_read(1 << 20))
                except SSL.WantReadError:
                    pass
        return server, client

    def test_idle_connections_give_their_record_buffers_back(self):
        """
        Each connection's two record buffers (about 34 KiB) are released
        while it is idle: a node holding 10,000 connections keeps 330 MiB
        less.
        """
        self.assertTrue(make_context(Identity.generate()).set_mode(0) & SSL.MODE_RELEASE_BUFFERS)

    def test_connections_work_across_idle_times(self):
        """Buffers given back are taken again: data still flows both ways, record after record."""
        server, client = self._pair()
        for size in (1, 16384, 70000, 5):
            for a, b in ((client, server), (server, client)):
                a.sendall(b"m" * size)
                b.bio_write(a.bio_read(1 << 20))
                got = b""
                while True:
                    try:
                        got += b.recv(1 << 17)
                    except SSL.WantReadError:
                        break
                self.assertEqual(got, b"m" * size)
