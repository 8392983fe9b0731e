"""atheris target: STUN messages (crust.nat.stun), over UDP or TCP as the first byte says."""

from _target import instrumented, main, selected

with instrumented():
    from crust.nat import stun
    from crust.transport.udp_messages import is_stun


def test_one(data: bytes) -> None:
    transport, datagram = selected(data, ("udp", "tcp"))
    is_stun(datagram)
    try:
        message = stun.decode(datagram, transport)
    except stun.StunParseError:
        return
    for attribute in message.attributes:
        stun.attribute_name(attribute.type)


if __name__ == "__main__":
    main(test_one)
