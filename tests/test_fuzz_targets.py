"""
The atheris targets in C{fuzz/} (doc/hacking.md, "Fuzzing") stay runnable:
each has its seed corpus, and its C{test_one} takes every input of it, and
damaged copies of each, without a finding.  atheris itself is not needed:
the long runs are C{tox -e fuzz}'s.
"""

from __future__ import annotations

import importlib
import random
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.mutate import apply_edits

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
TARGETS = sorted(p.stem[len("fuzz_"):] for p in FUZZ.glob("fuzz_*.py"))
DAMAGED = 20  # damaged copies of each corpus input


def _target(name: str):
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    return importlib.import_module(f"fuzz_{name}")


def _damaged(data: bytes, rng: random.Random) -> bytes:
    edits = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["flip", "put", "insert", "delete", "truncate", "repeat"])
        arg = rng.randint(1, 255)
        edits.append((kind, rng.randrange(len(data) + 1), bytes([arg]) if kind in ("put", "insert") else arg))
    return apply_edits(data, edits)


class FuzzTargetTests(SynchronousTestCase):
    def test_every_target_has_a_corpus(self):
        self.assertGreaterEqual(len(TARGETS), 20)
        corpora = sorted(p.name for p in (FUZZ / "corpus").iterdir() if p.is_dir())
        self.assertEqual(corpora, TARGETS)
        for name in TARGETS:
            self.assertTrue(list((FUZZ / "corpus" / name).iterdir()), name)

    def test_targets_take_their_corpus(self):
        rng = random.Random(14)
        for name in TARGETS:
            test_one = _target(name).test_one
            started = time.perf_counter()
            for path in sorted((FUZZ / "corpus" / name).iterdir()):
                data = path.read_bytes()
                test_one(data)
                for _ in range(DAMAGED):
                    damaged = _damaged(data, rng)
                    try:
                        test_one(damaged)
                    except Exception as e:
                        raise AssertionError(f"fuzz_{name} found {damaged!r}") from e
            self.assertLess(time.perf_counter() - started, 20, name)
        self.assertEqual(self.flushLoggedErrors(), [])
