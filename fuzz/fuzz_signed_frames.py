"""atheris target: SIGNED and SIGNED_BATCH frames (crust.session.signed_frames); the first byte picks which."""

from _target import instrumented, main, selected

with instrumented():
    from crust.session.signed_frames import SignedFrameError, decode_batch, decode_single


def test_one(data: bytes) -> None:
    decode, body = selected(data, (decode_single, decode_batch))
    try:
        decode(body)
    except SignedFrameError:
        pass


if __name__ == "__main__":
    main(test_one)
