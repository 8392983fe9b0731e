"""atheris target: the bounded JSON reader every wire and file format uses (crust._util.jsonread)."""

from _target import instrumented, main

with instrumented():
    from crust._util.jsonread import JsonRefused, read_json_object


def test_one(data: bytes) -> None:
    try:
        read_json_object(data, max_size=16384, max_depth=8, max_containers=256)
    except JsonRefused:
        pass


if __name__ == "__main__":
    main(test_one)
