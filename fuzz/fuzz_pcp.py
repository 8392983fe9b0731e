"""atheris target: PCP MAP responses (crust.nat.portmap.pcp)."""

from _target import instrumented, main

with instrumented():
    from crust.nat.portmap.gateway import MalformedResponse
    from crust.nat.portmap.pcp import decode_map_response, is_natpmp_unsupported_version


def test_one(data: bytes) -> None:
    is_natpmp_unsupported_version(data)
    try:
        decode_map_response(data)
    except MalformedResponse:
        pass


if __name__ == "__main__":
    main(test_one)
