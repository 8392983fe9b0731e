"""Tests for L{crust.relay.tokens}: the relay's splice tokens, on a L{Clock}."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.relay.tokens import TOKEN_LIFETIME, SpliceTokens


class Counting:
    """A random source that counts: distinct tokens, in a known order (and a repeat on demand)."""

    def __init__(self) -> None:
        self.n = 0
        self.repeat = 0

    def __call__(self, size: int) -> bytes:
        if self.repeat:
            self.repeat -= 1
            return (self.n).to_bytes(size, "big")
        self.n += 1
        return (self.n).to_bytes(size, "big")


class TokenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.random = Counting()
        self.tokens = SpliceTokens(self.clock, cap=4, random=self.random)

    def test_a_token_is_good_once(self) -> None:
        token = self.tokens.issue("circuit 1")
        assert token is not None
        self.assertEqual(len(token), 32)
        self.assertEqual(self.tokens.take(token), ("circuit 1", ""))
        self.assertEqual(self.tokens.take(token), (None, "an unknown or used splice token"))
        self.assertEqual(self.tokens.take(b"\0" * 32)[0], None)
        self.assertEqual(self.tokens.counters["taken"], 1)
        self.assertEqual(self.tokens.counters["unknown"], 2)
        self.assertEqual(len(self.tokens), 0)

    def test_tokens_expire(self) -> None:
        token = self.tokens.issue("c")
        assert token is not None
        self.clock.advance(TOKEN_LIFETIME)
        other = self.tokens.issue("d")
        assert other is not None
        self.clock.advance(0.001)
        self.assertEqual(self.tokens.take(token), (None, "an expired splice token"))
        self.assertEqual(self.tokens.take(other), ("d", ""))  # issued later: still good
        self.assertEqual(self.tokens.counters["expired"], 1)

    def test_the_table_is_capped(self) -> None:
        issued = [self.tokens.issue(i) for i in range(4)]
        self.assertNotIn(None, issued)
        self.assertIsNone(self.tokens.issue("fifth"))
        self.assertEqual(self.tokens.counters["full"], 1)
        self.assertEqual(len(self.tokens), 4)
        # expired ones make room
        self.clock.advance(TOKEN_LIFETIME + 1)
        fresh = self.tokens.issue("fifth")
        self.assertIsNotNone(fresh)
        self.assertEqual(len(self.tokens), 1)

    def test_revoked_tokens_are_not_good(self) -> None:
        token = self.tokens.issue("c")
        self.tokens.revoke(token)
        self.tokens.revoke(token)
        self.tokens.revoke(None)
        self.assertEqual(self.tokens.take(token)[0], None)  # type: ignore[arg-type]

    def test_a_repeated_random_value_is_not_issued_twice(self) -> None:
        first = self.tokens.issue("a")
        self.random.repeat = 1  # the next draw repeats the last token
        second = self.tokens.issue("b")
        self.assertNotEqual(first, second)
        self.assertEqual(self.tokens.take(first), ("a", ""))  # type: ignore[arg-type]
        self.assertEqual(self.tokens.take(second), ("b", ""))  # type: ignore[arg-type]

    def test_bad_settings(self) -> None:
        self.assertRaises(ValueError, SpliceTokens, self.clock, lifetime=0)
        self.assertRaises(ValueError, SpliceTokens, self.clock, cap=0)
        self.assertRaises(ValueError, SpliceTokens(self.clock, random=lambda n: b"short").issue, "x")
