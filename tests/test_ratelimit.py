"""Tests for L{crust._util.ratelimit}: the token buckets, on a L{Clock}."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust._util.ratelimit import RateLimiter

from tests import examples


class RateLimiterTests(SynchronousTestCase):
    def test_buckets_refill_and_cap(self):
        clock = Clock()
        limiter = RateLimiter(clock, (2.0, 3.0), (100.0, 100.0))
        self.assertEqual([limiter.allow("a") for _ in range(4)], [True, True, True, False])
        clock.advance(0.5)
        self.assertEqual([limiter.allow("a") for _ in range(2)], [True, False])
        clock.advance(100)
        self.assertEqual(sum(limiter.allow("a") for _ in range(10)), 3)  # never above the burst

    def test_table_is_bounded(self):
        limiter = RateLimiter(Clock(), (1.0, 1.0), (1000.0, 1000.0), max_keys=3)
        for key in "abcd":
            self.assertTrue(limiter.allow(key))
        self.assertEqual(len(limiter), 3)
        self.assertTrue(limiter.allow("a"))  # forgotten, so a fresh bucket
        self.assertFalse(limiter.allow("d"))

    def test_recently_seen_keys_are_kept(self):
        limiter = RateLimiter(Clock(), (1.0, 1.0), (1000.0, 1000.0), max_keys=2)
        self.assertTrue(limiter.allow("a"))
        self.assertTrue(limiter.allow("b"))
        self.assertFalse(limiter.allow("a"))  # "a" is now the most recently seen
        self.assertTrue(limiter.allow("c"))  # so "b" is forgotten
        self.assertFalse(limiter.allow("a"))
        self.assertTrue(limiter.allow("b"))

    def test_bad_limits(self):
        self.assertRaises(ValueError, RateLimiter, Clock(), (0.0, 1.0))
        self.assertRaises(ValueError, RateLimiter, Clock(), (1.0, 0.5))
        self.assertRaises(ValueError, RateLimiter, Clock(), (1.0, 1.0), (-1.0, 10.0))
        self.assertRaises(ValueError, RateLimiter, Clock(), max_keys=0)

    def test_total_limit(self):
        clock = Clock()
        limiter = RateLimiter(clock, (10.0, 20.0), (5.0, 8.0))
        self.assertEqual(sum(limiter.allow(f"10.0.0.{i}") for i in range(20)), 8)
        clock.advance(1.0)
        self.assertEqual(sum(limiter.allow(f"10.0.1.{i}") for i in range(20)), 5)

    def test_a_refusal_takes_nothing(self):
        clock = Clock()
        limiter = RateLimiter(clock, (1.0, 2.0), (1.0, 3.0))
        # one key's flood does not drain the total...
        self.assertEqual([limiter.allow("a") for _ in range(5)], [True, True, False, False, False])
        self.assertTrue(limiter.allow("b"))
        # ...and a flood that the total refuses does not drain a key's bucket
        self.assertEqual([limiter.allow("c") for _ in range(3)], [False, False, False])
        clock.advance(1.0)
        self.assertTrue(limiter.allow("c"))

    def test_the_clock_is_injected(self):
        clock = Clock()
        clock.advance(1000)
        limiter = RateLimiter(clock, (1.0, 1.0), (1.0, 1.0))
        self.assertTrue(limiter.allow("a"))
        self.assertFalse(limiter.allow("a"))
        clock.advance(0.99)
        self.assertFalse(limiter.allow("a"))
        clock.advance(0.01)
        self.assertTrue(limiter.allow("a"))

    @examples(200)
    @given(
        rate=st.floats(0.1, 50.0), burst=st.integers(1, 20), max_keys=st.integers(1, 5),
        events=st.lists(st.tuples(st.integers(0, 7), st.floats(0.0, 2.0)), max_size=200),
    )
    def test_never_more_than_rate_and_burst_allow(self, rate, burst, max_keys, events):
        """In total, what is allowed over a span is at most burst + rate * span; the table stays bounded."""
        clock = Clock()
        limiter = RateLimiter(clock, (rate, float(burst)), (2 * rate, 2.0 * burst), max_keys=max_keys)
        allowed: list[float] = []
        for key, pause in events:
            clock.advance(pause)
            if limiter.allow(key):
                allowed.append(clock.seconds())
            self.assertLessEqual(len(limiter), max_keys)
        span = clock.seconds()
        self.assertLessEqual(len(allowed), 2 * burst + 2 * rate * span + 1e-6)
