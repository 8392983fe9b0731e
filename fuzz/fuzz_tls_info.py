"""
atheris target: a peer's certificate (DER) as the TLS layer meets it
(crust.transport.tls): OpenSSL reads it, then crust's verify callback
decides on it (its key as a peer id, its node-info extension) and must
answer with a verdict, never raise.
"""

from _target import instrumented, main

with instrumented():
    from crust.identity import PeerId
    from crust.transport.tls import _verify_callback, cert_info, readable_certificate
    from crust.wire import CertInfo

import warnings

from OpenSSL import crypto

warnings.simplefilter("ignore")  # cryptography's deprecation warnings about odd certificates, once per run


class Peer:
    tls_verdict = None

    def tls_verify_peer(self, peer_id, problem, info=None):
        if (peer_id is None) == (not problem):
            raise AssertionError(f"a verdict of {peer_id} with the problem {problem!r}")
        if peer_id is not None and not isinstance(peer_id, PeerId):
            raise AssertionError(peer_id)
        if info is not None and not isinstance(info, CertInfo):
            raise AssertionError(info)
        return peer_id is not None


class TLSProtocol:
    wrappedProtocol = Peer()


class Connection:
    def get_app_data(self):
        return TLSProtocol


def test_one(data: bytes) -> None:
    try:
        cert = crypto.load_certificate(crypto.FILETYPE_ASN1, data)
    except crypto.Error:
        return  # OpenSSL refuses it: the handshake fails before crust sees it
    verdict = _verify_callback(Connection(), cert, 0, 0, 1)
    if not isinstance(verdict, bool):
        raise AssertionError(verdict)
    readable = readable_certificate(cert)
    if readable is not None:
        cert_info(readable)


if __name__ == "__main__":
    main(test_one)
