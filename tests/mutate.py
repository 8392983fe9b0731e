"""
Hypothesis strategies that mutate valid binary inputs, for the property
tests of parsers and state machines: an input that gets past a parser's
first checks finds more than random bytes do (see also
L{tests.hostile_json} for JSON).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

#: Bytes worth putting anywhere: the edges of integers and lengths.
INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x00\x00\x00\x00",
               b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"\x00\x00\x00\x01")

_edit = st.one_of(
    # flip the bits of one byte
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(1, 255)),
    # overwrite with an interesting value
    st.tuples(st.just("put"), st.integers(0, 1 << 16), st.sampled_from(INTERESTING)),
    # insert bytes
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)),
    # delete a run
    st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 8)),
    # cut the tail
    st.tuples(st.just("truncate"), st.integers(0, 1 << 16), st.just(0)),
    # repeat a run
    st.tuples(st.just("repeat"), st.integers(0, 1 << 16), st.integers(1, 16)),
)


def apply_edits(data: bytes, edits: list[tuple[str, int, Any]]) -> bytes:
    """C{data} with each edit applied in turn (positions wrap around the current length)."""
    out = bytearray(data)
    for kind, where, arg in edits:
        at = where % (len(out) + 1)
        if kind == "flip" and at < len(out):
            out[at] ^= arg
        elif kind == "put":
            out[at:at + len(arg)] = arg
        elif kind == "insert":
            out[at:at] = arg
        elif kind == "delete":
            del out[at:at + arg]
        elif kind == "truncate":
            del out[at:]
        elif kind == "repeat":
            out[at:at] = out[at:at + arg] * 2
    return bytes(out)


def mutated(valid: st.SearchStrategy[bytes], max_edits: int = 4) -> st.SearchStrategy[bytes]:
    """Inputs from C{valid} with one to C{max_edits} edits (bit flips, edge values, inserts, cuts)."""
    return st.builds(apply_edits, valid, st.lists(_edit, min_size=1, max_size=max_edits))


def valid_or_mutated(valid: st.SearchStrategy[bytes], max_size: int = 300) -> st.SearchStrategy[bytes]:
    """Valid inputs, mutated ones, or random bytes: what a parser of network input must survive."""
    return st.one_of(valid, mutated(valid), mutated(valid), st.binary(max_size=max_size))


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """C{data} cut at C{cuts} (positions, wrapped and sorted): how a stream may arrive."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


#: Cut positions for L{chunks}.
cuts = st.lists(st.integers(0, 1 << 20), max_size=12)
