"""atheris target: TURN ChannelData and Data indications (crust.nat.turn_codec)."""

from _target import instrumented, main

with instrumented():
    from crust.nat import stun, turn_codec


def test_one(data: bytes) -> None:
    if turn_codec.is_channel_data(data):
        try:
            turn_codec.decode_channel_data(data)
        except turn_codec.TurnParseError:
            pass
        return
    try:
        message = stun.decode(data)
        turn_codec.parse_data_indication(message)
    except stun.StunParseError:  # TurnParseError is one
        pass


if __name__ == "__main__":
    main(test_one)
