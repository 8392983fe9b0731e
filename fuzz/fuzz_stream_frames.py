"""
atheris target: byte streams' frames and QUIC stream headers
(crust.streams.frames); the first byte picks the frame type, or a QUIC
header (the opener's, the acceptor's answer).
"""

from _target import instrumented, main, selected

with instrumented():
    from crust.streams import frames
    from crust.streams.frames import StreamFrame, StreamFrameError

CHOICES = tuple(StreamFrame) + ("quic open", "quic answer")
DECODERS = {StreamFrame.OPEN: frames.decode_open, StreamFrame.ACCEPT: frames.decode_accept,
            StreamFrame.DATA: frames.decode_data, StreamFrame.CREDIT: frames.decode_credit,
            StreamFrame.FIN: frames.decode_fin, StreamFrame.RESET: frames.decode_reset}


def test_one(data: bytes) -> None:
    choice, payload = selected(data, CHOICES)
    try:
        if choice == "quic open":
            parsed = frames.parse_quic_open(payload)
        elif choice == "quic answer":
            parsed = frames.parse_quic_answer(payload)
        else:
            DECODERS[choice](payload)
            return
    except StreamFrameError:
        return
    if parsed is not None and parsed[1] > len(payload):
        raise AssertionError(f"a header of {parsed[1]} bytes in {len(payload)}")


if __name__ == "__main__":
    main(test_one)
