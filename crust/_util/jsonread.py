"""
L{read_json_object}: the one reader of JSON that crust did not write itself
(frames and certificates of peers, connection info, control requests and
responses, the node's files), and L{JsonRefused}, its error.

Python's own parser recurses once per array or object, converts digits to
an C{int} in time quadratic in their number (and refuses more than 4300 of
them with a bare C{ValueError}), and accepts C{NaN}, C{Infinity} and a
key twice.  This reader refuses, each with a clear reason:

  - input over its size cap, before reading any of it;
  - input that is not UTF-8;
  - nesting deeper (or more arrays and objects) than the caller's shape
    needs, found by a linear scan of the brackets outside strings before
    parsing: no input makes the parser recurse deeply;
  - numbers longer than L{MAX_NUMBER_LENGTH} characters, before converting
    them, and numbers out of a float's range (C{1e999});
  - C{NaN}, C{Infinity} and C{-Infinity}, which are not JSON;
  - a key repeated in one object;
  - anything but an object at the top.

So it costs time linear in the input (with a small constant), and never
raises anything but L{JsonRefused}.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn, Optional, Union

__all__ = ["MAX_NUMBER_LENGTH", "JsonRefused", "nesting_problem", "read_json_object"]

#: The longest number read, in characters (sign, point and exponent included).
MAX_NUMBER_LENGTH = 100


class JsonRefused(ValueError):
    """
    JSON refused by L{read_json_object}.

    @ivar reason: what is wrong, a short phrase (also the exception's text).
    @ivar line: the line (from 1) where the problem is, when known.
    @ivar column: the column (from 1) where the problem is, when known.
    @ivar key: the key a repeated-key refusal is about, else None.
    """

    def __init__(self, reason: str, line: Optional[int] = None, column: Optional[int] = None,
                 key: Optional[str] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line
        self.column = column
        self.key = key


# always matches, linear even when unterminated: a string, or its start up to the end of the text
_STRING = re.compile(r'"(?:[^"\\]+|\\[\s\S]?)*(?:"|\Z)')
_BRACKET = re.compile(r"[\[\]{}]")
_CONSTANT_OR_STRING = re.compile(r'"(?:[^"\\]+|\\[\s\S]?)*(?:"|\Z)|(NaN|-?Infinity)')


def nesting_problem(text: str, max_depth: int, max_containers: int) -> Optional[str]:
    """
    Why JSON C{text} nests too much (deeper than C{max_depth}, or more than
    C{max_containers} arrays and objects), or None.  Brackets inside strings
    do not count.  Linear in the length of C{text}; the loop in Python runs
    at most C{2 * max_containers} times.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return None
    bare = _STRING.sub('""', text)
    containers = bare.count("[") + bare.count("{")
    if containers <= max_depth:
        return None
    if containers > max_containers:
        return f"more than {max_containers} JSON arrays and objects"
    if bare.count("]") + bare.count("}") != containers:
        return "not JSON: unbalanced brackets"
    depth = 0
    for m in _BRACKET.finditer(bare):
        if m.group() in "[{":
            depth += 1
            if depth > max_depth:
                return f"JSON nested deeper than {max_depth}"
        else:
            depth -= 1
    return None


def _line_column(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


class _Constant(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


class _Number(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _refuse_constant(name: str) -> NoReturn:
    raise _Constant(name)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Repeated(key)
            seen.add(key)
    return result


_DECODERS: dict[int, json.JSONDecoder] = {}


def _decoder(max_number_length: int) -> json.JSONDecoder:
    decoder = _DECODERS.get(max_number_length)
    if decoder is not None:
        return decoder

    too_long = f"number too long (over {max_number_length} characters)"

    def parse_int(text: str) -> int:
        if len(text) > max_number_length:
            raise _Number(too_long)
        return int(text)

    def parse_float(text: str) -> float:
        if len(text) > max_number_length:
            raise _Number(too_long)
        value = float(text)
        if not math.isfinite(value):
            raise _Number(f"number out of range: {text}")
        return value

    decoder = json.JSONDecoder(parse_int=parse_int, parse_float=parse_float, parse_constant=_refuse_constant,
                               object_pairs_hook=_unique_keys)
    if len(_DECODERS) < 16:
        _DECODERS[max_number_length] = decoder
    return decoder


_KINDS = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}


def _constant_position(text: str, name: str) -> Optional[int]:
    for m in _CONSTANT_OR_STRING.finditer(text):
        if m.group(1) == name:
            return m.start()
    return None


def _repeat_position(text: str, key: str) -> Optional[int]:
    quoted = json.dumps(key, ensure_ascii=False)
    first = text.find(quoted)
    if first < 0:
        return None
    second = text.find(quoted, first + len(quoted))
    return second if second >= 0 else None


def read_json_object(data: Union[bytes, bytearray, memoryview, str], *, max_size: int, max_depth: int,
                     max_containers: int, max_number_length: int = MAX_NUMBER_LENGTH) -> dict[str, Any]:
    """
    The JSON object in C{data}.

    @param data: UTF-8 bytes, or text already decoded.
    @param max_size: the most bytes (characters, for text) read.
    @param max_depth: how deep arrays and objects may nest (the top object
        is depth 1).
    @param max_containers: the most arrays and objects (the top object
        included).
    @param max_number_length: the longest number, in characters.
    @raise JsonRefused: with the reason (and, when known, the line and
        column); never anything else.
    """
    if isinstance(data, str):
        if len(data) > max_size:
            raise JsonRefused(f"{len(data)} characters is over {max_size}")
        text = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) > max_size:
            raise JsonRefused(f"{len(data)} bytes is over {max_size}")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonRefused(f"not UTF-8 (bad byte at offset {e.start})") from None
    else:
        raise JsonRefused(f"not bytes or text but {type(data).__name__}")
    problem = nesting_problem(text, max_depth, max_containers)
    if problem is not None:
        raise JsonRefused(problem)
    try:
        value = _decoder(max_number_length).decode(text)
    except json.JSONDecodeError as e:
        raise JsonRefused(f"not JSON: {e.msg} at line {e.lineno}, column {e.colno}", e.lineno, e.colno) from None
    except _Constant as e:
        where = _constant_position(text, e.name)
        if where is None:
            raise JsonRefused(f"{e.name} is not a JSON number") from None
        line, column = _line_column(text, where)
        raise JsonRefused(f"{e.name} is not a JSON number (line {line}, column {column})", line, column) from None
    except _Repeated as e:
        shown = e.key if len(e.key) <= 40 else e.key[:37] + "..."
        where = _repeat_position(text, e.key)
        if where is None:
            raise JsonRefused(f"the key {shown!r} is repeated in one object", key=e.key) from None
        line, column = _line_column(text, where)
        raise JsonRefused(f"the key {shown!r} is repeated in one object (line {line}, column {column})",
                          line, column, e.key) from None
    except _Number as e:
        raise JsonRefused(e.reason) from None
    except (ValueError, RecursionError) as e:  # none expected after the checks above
        raise JsonRefused(f"not JSON: {type(e).__name__}") from None
    if not isinstance(value, dict):
        raise JsonRefused(f"not a JSON object but {_KINDS.get(type(value), 'a number')}")
    return value
