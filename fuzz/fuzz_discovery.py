"""atheris target: LAN discovery requests and replies (crust.bootstrap.discovery); the first byte picks which."""

from _target import instrumented, main, selected

with instrumented():
    from crust.bootstrap.discovery import DiscoveryError, decode_reply, decode_request

from nacl.public import PrivateKey

KEY = PrivateKey(b"k" * 32)  # the corpus's replies are sealed to it
REQUEST_ID = b"r" * 8


def test_one(data: bytes) -> None:
    which, datagram = selected(data, ("request", "reply"))
    try:
        if which == "request":
            decode_request(datagram)
        else:
            decode_reply(datagram, KEY, REQUEST_ID)
    except DiscoveryError:
        pass


if __name__ == "__main__":
    main(test_one)
