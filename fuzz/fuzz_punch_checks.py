"""atheris target: hole-punching CHECK and ACK datagrams (crust.punch.checks)."""

from _target import instrumented, main

with instrumented():
    from crust.punch import checks

KEY = b"k" * 32


def test_one(data: bytes) -> None:
    try:
        message = checks.decode(data)
    except checks.CheckError:
        return
    checks.verify(KEY, message)


if __name__ == "__main__":
    main(test_one)
