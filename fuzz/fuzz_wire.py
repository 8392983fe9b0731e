"""atheris target: HELLO, certificate info, REJECT and CLOSE payloads (crust.wire); the first byte picks which."""

from _target import instrumented, main, selected

with instrumented():
    from crust.errors import ProtocolViolation
    from crust.wire import CertInfo, Hello, decode_reason

DECODERS = (Hello.decode, CertInfo.decode, lambda p: decode_reason(p, "REJECT"), lambda p: decode_reason(p, "CLOSE"))


def test_one(data: bytes) -> None:
    decode, payload = selected(data, DECODERS)
    try:
        decode(payload)
    except ProtocolViolation:
        pass


if __name__ == "__main__":
    main(test_one)
