"""atheris target: the frame decoder (crust.session.framing), a stream cut into chunks."""

from _target import chunked, instrumented, main

with instrumented():
    from crust.errors import ProtocolViolation
    from crust.session.framing import FrameDecoder
    from crust.wire import HEADER_SIZE

LIMIT = 4096


def test_one(data: bytes) -> None:
    decoder = FrameDecoder(LIMIT, lambda payload: None, lambda ftype, payload: None)
    for chunk in chunked(data):
        try:
            decoder.feed(chunk)
        except ProtocolViolation:
            return
        if decoder.buffered >= HEADER_SIZE + LIMIT:
            raise AssertionError(f"{decoder.buffered} bytes buffered, more than one frame")


if __name__ == "__main__":
    main(test_one)
