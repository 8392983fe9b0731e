"""
Hostile JSON for the tests of every reader of JSON from outside: fixed
payloads that used to escape error handling (deep nesting, huge numbers,
NaN, repeated keys) and Hypothesis strategies that mix them into an
otherwise valid document, mutate one, or are random bytes.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from hypothesis import strategies as st

#: Values (JSON text) that no reader may choke on.
HOSTILE_VALUES: tuple[bytes, ...] = (
    b"[" * 100000,
    b"{" * 100000,
    b'{"a":' * 50000,
    b"[" * 3000 + b"]" * 3000,
    b'{"a":' * 900 + b"1" + b"}" * 900,
    b"[]," * 20000 + b"[]",
    b"9" * 5000,
    b"-" + b"1" * 4301,
    b"1" * 100000,
    b"1" + b"0" * 5000 + b".5",
    b"1e999",
    b"-1e999",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b'"\\ud800"',
    b'"' + b"\\\\" * 5000 + b'"',
    b'"[[[[{{{{"',
)

#: Whole documents that no reader may choke on.
HOSTILE_DOCUMENTS: tuple[bytes, ...] = HOSTILE_VALUES + (
    b"",
    b"\xff\xfe",
    b'{"a":1,"a":2}',
    b'{"a":1,\n"a":{"b":2,"b":3}}',
    b"{" + b'"k":1,' * 5000 + b'"k":2}',
    b'"' + b"\\" * 10000,
    b"[" * 50000 + b"]" * 50000,
    b"{}" * 20000,
)

_PUNCTUATION = [b"[", b"]", b"{", b"}", b'"', b",", b":", b"\\", b"0", b"9", b"-", b"e", b".", b"\xff", b"NaN",
                b"[" * 2000]


def _insert(base: dict[str, Any], key: str, value: bytes) -> bytes:
    """C{base} as JSON with C{key} holding the raw JSON text C{value} (last, so it may repeat a key)."""
    head = json.dumps(base).encode()[:-1]
    return head + (b", " if base else b"") + json.dumps(key).encode() + b": " + value + b"}"


def _mutate(text: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for where, cut, piece in edits:
        at = where % (len(text) + 1)
        text = text[:at] + piece + text[at + cut:]
    return text


def hostile_json(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """
    JSON documents shaped like C{base} (a valid one): with a hostile value
    under one of its keys or a new one, with a key repeated, mutated at a
    few places, or random bytes.
    """
    keys = st.sampled_from(sorted(base) + ["extra"]) if base else st.just("extra")
    text = json.dumps(base).encode()
    return st.one_of(
        st.builds(lambda key, value: _insert(base, key, value), keys, st.sampled_from(HOSTILE_VALUES)),
        st.builds(lambda key, value: _insert(base, key, json.dumps(value).encode()), keys,
                  st.none() | st.booleans() | st.integers() | st.text(max_size=20)),
        st.builds(lambda edits: _mutate(text, edits),
                  st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 3), st.sampled_from(_PUNCTUATION)),
                           min_size=1, max_size=4)),
        st.sampled_from(HOSTILE_DOCUMENTS),
        st.binary(max_size=300),
    )


#: The most seconds a reader may take over one hostile document (generous: the machine may be busy).
TIME_BOUND = 2.0


def only_refused(testcase: Any, call: Callable[[], Any], *errors: type[BaseException]) -> Any:
    """
    Run C{call()}: it returns (what it returned is returned) or raises one
    of C{errors} (then None), within L{TIME_BOUND}; anything else it raises
    fails the test.
    """
    start = time.perf_counter()
    try:
        result = call()
    except errors:
        result = None
    testcase.assertLess(time.perf_counter() - start, TIME_BOUND)
    return result
