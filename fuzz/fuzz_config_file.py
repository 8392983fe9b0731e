"""atheris target: the node's configuration file (crust.node.config_file)."""

from _target import instrumented, main

with instrumented():
    from crust.errors import ConfigError
    from crust.node.config_file import parse_config


def test_one(data: bytes) -> None:
    try:
        parse_config(data, "fuzz.json")
    except ConfigError:  # ConfigFileError is one
        pass


if __name__ == "__main__":
    main(test_one)
