"""atheris target: connection info text (crust.connection_info, with crust.candidates inside)."""

from _target import instrumented, main

with instrumented():
    from crust.connection_info import PubConnectionInfo
    from crust.errors import InvalidConnectionInfo


def test_one(data: bytes) -> None:
    try:
        info = PubConnectionInfo.from_json(data)
    except InvalidConnectionInfo:
        return
    if PubConnectionInfo.from_json(info.to_json()) != info:
        raise AssertionError("connection info read does not write back the same")


if __name__ == "__main__":
    main(test_one)
