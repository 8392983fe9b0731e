"""
Tests for L{crust._util.jsonread}: the one bounded reader of JSON from
outside.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust._util.jsonread import MAX_NUMBER_LENGTH, JsonRefused, nesting_problem, read_json_object
from tests import examples
from tests.hostile_json import HOSTILE_DOCUMENTS, hostile_json, only_refused


def read(data: Any, **limits: int) -> dict[str, Any]:
    kw = dict(max_size=1 << 20, max_depth=8, max_containers=256)
    kw.update(limits)
    return read_json_object(data, **kw)


def refused(testcase: SynchronousTestCase, data: Any, **limits: int) -> JsonRefused:
    return testcase.assertRaises(JsonRefused, read, data, **limits)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


class ReadTests(SynchronousTestCase):
    def test_reads_objects(self) -> None:
        body = {"a": [1, 2.5, -3e10, None, True, "x[{\\\"", {"b": {}}], "c": "\u00e9"}
        self.assertEqual(read(json.dumps(body).encode()), body)
        self.assertEqual(read(json.dumps(body)), body)
        self.assertEqual(read(bytearray(b'{"a": 1}')), {"a": 1})
        self.assertEqual(read(memoryview(b'{"a": 1}')), {"a": 1})

    def test_size_is_checked_first(self) -> None:
        e = refused(self, b"{" + b" " * 100 + b"}", max_size=50)
        self.assertEqual(e.reason, "102 bytes is over 50")
        self.assertIn("characters", refused(self, "{" + " " * 100 + "}", max_size=50).reason)

    def test_not_utf8(self) -> None:
        self.assertIn("not UTF-8", refused(self, b'{"a": "\xff"}').reason)

    def test_not_bytes(self) -> None:
        self.assertIn("not bytes or text", refused(self, 5).reason)

    def test_not_an_object(self) -> None:
        for text, kind in (("[]", "an array"), ('"x"', "a string"), ("1", "a number"), ("2.5", "a number"),
                           ("true", "true or false"), ("null", "null")):
            self.assertEqual(refused(self, text).reason, f"not a JSON object but {kind}")

    def test_syntax_error_names_line_and_column(self) -> None:
        e = refused(self, '{\n  "a": 1,\n  "b": tru\n}')
        self.assertIn("not JSON", e.reason)
        self.assertIn("line 3, column 8", e.reason)
        self.assertEqual((e.line, e.column), (3, 8))

    def test_deep_nesting(self) -> None:
        """Nesting deeper than the limit is refused before parsing; at the limit it reads."""
        self.assertEqual(read('{"a":' * 7 + "[]" + "}" * 7), json.loads('{"a":' * 7 + "[]" + "}" * 7))
        self.assertEqual(refused(self, '{"a":' * 8 + "[]" + "}" * 8).reason, "JSON nested deeper than 8")
        self.assertIn("arrays and objects", refused(self, "[" * 100000).reason)
        self.assertIn("arrays and objects", refused(self, '{"a":' * 50000).reason)
        e = refused(self, '{"a":' * 50000, max_containers=10**6)
        self.assertIn("not JSON", e.reason)  # unbalanced: never parsed
        self.assertEqual(refused(self, "[" * 5000 + "]" * 5000, max_containers=10**6).reason,
                         "JSON nested deeper than 8")

    def test_brackets_in_strings_do_not_count(self) -> None:
        text = json.dumps({"a": "[[[[{{{{" * 100, "b": '\\"[[[' * 50})
        self.assertEqual(read(text, max_depth=1, max_containers=1), json.loads(text))

    def test_many_containers(self) -> None:
        self.assertEqual(refused(self, '{"a": [' + "[]," * 300 + "[]]}").reason,
                         "more than 256 JSON arrays and objects")

    def test_huge_numbers(self) -> None:
        """A number over the length limit is refused before it is converted, with a clear reason."""
        for number in ("9" * 5000, "-" + "1" * 4301, "1" * 100000, "1" + "0" * 5000 + ".5", "1e" + "9" * 200):
            e = refused(self, '{"version": ' + number + "}")
            self.assertEqual(e.reason, f"number too long (over {MAX_NUMBER_LENGTH} characters)")
        self.assertEqual(read('{"a": ' + "9" * MAX_NUMBER_LENGTH + "}")["a"], int("9" * MAX_NUMBER_LENGTH))
        self.assertIn("number too long", refused(self, '{"a": 12345}', max_number_length=4).reason)

    def test_numbers_out_of_range(self) -> None:
        for number in ("1e999", "-1e999", "1.5e400"):
            self.assertEqual(refused(self, '{"id": ' + number + "}").reason, f"number out of range: {number}")

    def test_nan_and_infinity(self) -> None:
        for name in ("NaN", "Infinity", "-Infinity"):
            e = refused(self, '{"s": "NaN Infinity",\n "a": ' + name + "}")
            self.assertEqual(e.reason, f"{name} is not a JSON number (line 2, column 7)")
            self.assertEqual((e.line, e.column), (2, 7))

    def test_repeated_keys(self) -> None:
        e = refused(self, '{"a": 1, "b": {"c": 1,\n "c": 2}}')
        self.assertEqual(e.key, "c")
        self.assertEqual((e.line, e.column), (2, 2))
        self.assertIn("repeated", e.reason)
        e = refused(self, '{"\\u0061": 1, "a": 2}')  # spelt otherwise: no position, still refused
        self.assertEqual(e.key, "a")

    def test_hostile_documents(self) -> None:
        """Every hostile document reads or is refused with a JsonRefused, quickly."""
        for data in HOSTILE_DOCUMENTS:
            for limits in ({}, {"max_depth": 64, "max_containers": 10**6}):
                only_refused(self, lambda: read(data, **limits), JsonRefused)

    @examples(500)
    @given(st.binary(max_size=400))
    def test_random_bytes(self, data: bytes) -> None:
        only_refused(self, lambda: read(data), JsonRefused)

    @examples(500)
    @given(hostile_json({"a": [1, {"b": "c"}], "d": 2.5, "e": None}))
    def test_hostile(self, data: bytes) -> None:
        only_refused(self, lambda: read(data), JsonRefused)

    @examples(300)
    @given(st.dictionaries(st.text(max_size=6), json_values, max_size=5))
    def test_valid_json_reads_back(self, body: dict[str, Any]) -> None:
        """What Python writes (within the limits) reads back equal."""
        text = json.dumps(body)
        try:
            value = read(text, max_depth=64, max_containers=10**6)
        except JsonRefused as e:
            self.assertIn("number too long", e.reason)  # st.integers() may draw huge ones
            return
        self.assertEqual(value, body)

    @examples(500)
    @given(st.recursive(st.none() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=12),
                        lambda children: st.lists(children, max_size=3)
                        | st.dictionaries(st.text(alphabet='[]{}"\\a', max_size=4), children, max_size=3),
                        max_leaves=30),
           st.integers(1, 8))
    def test_nesting_scan(self, value: Any, limit: int) -> None:
        """The bracket scan agrees with the real nesting depth, whatever the strings hold."""
        def depth(v: Any) -> int:
            if isinstance(v, list):
                return 1 + max((depth(c) for c in v), default=0)
            if isinstance(v, dict):
                return 1 + max((depth(c) for c in v.values()), default=0)
            return 0

        problem = nesting_problem(json.dumps(value), limit, 10**6)
        self.assertEqual(problem is None, depth(value) <= limit, problem)
