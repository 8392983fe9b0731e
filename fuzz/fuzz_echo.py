"""atheris target: the UDP address echo (crust.nat.echo): header checks and the address field."""

from _target import instrumented, main

with instrumented():
    from crust.nat import echo
    from crust.transport.udp_messages import ECHO_REQUEST, ECHO_RESPONSE


def test_one(data: bytes) -> None:
    echo.check_header(data, ECHO_REQUEST, echo.REQUEST_SIZE)
    echo.check_header(data, ECHO_RESPONSE, echo.RESPONSE_SIZE)
    try:
        address = echo.decode_address(data)
    except ValueError:
        return
    if echo.decode_address(echo.encode_address(address)) != address:
        raise AssertionError(address)


if __name__ == "__main__":
    main(test_one)
