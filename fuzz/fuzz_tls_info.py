"""atheris target: a peer's certificate (DER): its key as a peer id, its node-info extension (crust.transport.tls)."""

from _target import instrumented, main

with instrumented():
    from crust.identity import PeerId
    from crust.transport.tls import cert_info, peer_id_from_certificate
    from crust.wire import CertInfo

from cryptography import x509


def test_one(data: bytes) -> None:
    try:
        cert = x509.load_der_x509_certificate(data)
    except ValueError:
        return  # not a certificate: OpenSSL refuses it before crust sees it
    peer = peer_id_from_certificate(cert)
    if peer is not None and not isinstance(peer, PeerId):
        raise AssertionError(peer)
    info = cert_info(cert)
    if info is not None and not isinstance(info, CertInfo):
        raise AssertionError(info)


if __name__ == "__main__":
    main(test_one)
