"""atheris target: NAT-PMP responses (crust.nat.portmap.natpmp)."""

from _target import instrumented, main

with instrumented():
    from crust.nat.portmap.gateway import MalformedResponse
    from crust.nat.portmap.natpmp import decode_response


def test_one(data: bytes) -> None:
    try:
        decode_response(data)
    except MalformedResponse:
        pass


if __name__ == "__main__":
    main(test_one)
