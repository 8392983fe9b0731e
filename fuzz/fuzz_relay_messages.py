"""atheris target: relay circuit frames (crust.relay.messages); the first byte picks the frame type."""

from _target import instrumented, main, selected

with instrumented():
    from crust.errors import ProtocolViolation
    from crust.relay import messages
    from crust.relay.messages import RelayFrame


def test_one(data: bytes) -> None:
    ftype, payload = selected(data, tuple(RelayFrame))
    try:
        if ftype == RelayFrame.DATA:
            messages.decode_data(payload)
        elif ftype == RelayFrame.CREDIT:
            messages.decode_credit(payload)
        else:
            messages.decode_frame(int(ftype), payload)
    except ProtocolViolation:
        pass


if __name__ == "__main__":
    main(test_one)
