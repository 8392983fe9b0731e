"""atheris target: the bootstrap cache file (crust.bootstrap.cache)."""

from _target import instrumented, main

with instrumented():
    from crust.bootstrap.cache import CorruptCacheFile, parse_cache


def test_one(data: bytes) -> None:
    try:
        parse_cache(data)
    except CorruptCacheFile:
        pass


if __name__ == "__main__":
    main(test_one)
