"""
What every atheris target here shares (see doc/hacking.md, "Fuzzing").

A target is C{fuzz/fuzz_NAME.py}: it imports what it fuzzes inside
L{instrumented} (so that atheris sees its branches) and defines
C{test_one(data)}, which calls the parser and lets through only the
errors the parser documents; anything else it raises is a finding.  Run
one with C{python fuzz/fuzz_NAME.py fuzz/corpus/NAME} (libFuzzer's
options follow, C{-max_total_time=60}...), or all of them with
C{fuzz/run.py} (C{tox -e fuzz}).  Without atheris, C{test_one} still runs:
the test suite feeds it each file of the seed corpus.

This module imports nothing of crust's: what crust a target imports must
be imported inside L{instrumented}, or atheris does not see it.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator

try:
    import atheris
except ImportError:  # the test suite runs the targets on their corpus without it
    atheris = None


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    """Import crust's modules inside this block: atheris instruments them (without atheris, nothing)."""
    if atheris is None:
        yield
    else:
        with atheris.instrument_imports(include=["crust"]):
            yield


def main(test_one: Callable[[bytes], Any]) -> None:
    """Fuzz C{test_one} with the command line's libFuzzer arguments (corpus directories, options)."""
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris (or tox -e fuzz)")
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


def chunked(data: bytes) -> list[bytes]:
    """
    C{data[1:]} as a stream arriving in chunks of C{data[0] + 1} bytes (so
    that a target of a stream reader sees frames cut anywhere).
    """
    if not data:
        return []
    size, stream = data[0] + 1, data[1:]
    return [stream[i:i + size] for i in range(0, len(stream), size)]


def selected(data: bytes, choices: tuple[Any, ...]) -> tuple[Any, bytes]:
    """C{(choice, rest)}: the first byte of C{data} picks one of C{choices}, the rest is its input."""
    if not data:
        return choices[0], b""
    return choices[data[0] % len(choices)], data[1:]
