"""atheris target: the node's state file, node.json (crust.node.datadir): a state, or None."""

from _target import instrumented, main

with instrumented():
    from crust.node.datadir import read_state_bytes


def test_one(data: bytes) -> None:
    state = read_state_bytes(data)
    if state is not None and not isinstance(state, dict):
        raise AssertionError(state)


if __name__ == "__main__":
    main(test_one)
