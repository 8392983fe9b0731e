"""atheris target: address and peer id text (crust.address, crust.identity), as peers and users write them."""

from _target import instrumented, main

with instrumented():
    from crust.address import Address
    from crust.identity import PeerId


def test_one(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        address = Address.parse(text)
    except ValueError:
        pass
    else:
        if Address.parse(str(address)) != address:
            raise AssertionError(f"{text!r} reads as {address}, which reads back differently")
    try:
        PeerId.from_text(text)
    except ValueError:
        pass


if __name__ == "__main__":
    main(test_one)
