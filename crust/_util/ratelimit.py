"""
L{RateLimiter}: token buckets for answering the network (the STUN responder,
the UDP echo, LAN discovery).

Anything a remote party can make us do (answer, decrypt, sign) goes through
one of these: a bucket per key (a source IP), in a table of bounded size,
and one bucket for everything together.  Pure logic: the time comes from an
injected clock (anything with C{seconds()}, a reactor or a
C{twisted.internet.task.Clock}).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable

class RateLimiter:
    """
    Token buckets: one per key (normally a source IP), in a table of at
    most C{max_keys} entries (the least recently seen is forgotten), and one
    for everything together.  Every bucket starts full.

    @param clock: anything with C{seconds()}.
    @param per_key: C{(rate per second, burst)} of each key's bucket.
    @param total: C{(rate per second, burst)} of the bucket shared by all keys.
    @param max_keys: the most keys remembered at once.
    """

    def __init__(self, clock: Any, per_key: tuple[float, float] = (10.0, 20.0),
                 total: tuple[float, float] = (200.0, 400.0), max_keys: int = 4096) -> None:
        for rate, burst in (per_key, total):
            if not rate > 0 or not burst >= 1:
                raise ValueError(
                    f"a rate limit needs a positive rate and a burst of at least 1, not {rate!r}, {burst!r}"
                )
        if max_keys < 1:
            raise ValueError(f"a rate limiter needs room for at least one key, not {max_keys!r}")
        self._clock = clock
        self.per_key = per_key
        self.total = total
        self.max_keys = max_keys
        self._keys: OrderedDict[Hashable, list[float]] = OrderedDict()
        self._total = [float(total[1]), clock.seconds()]

    @staticmethod
    def _refill(bucket: list[float], limit: tuple[float, float], now: float) -> None:
        rate, burst = limit
        bucket[0] = min(float(burst), bucket[0] + max(0.0, now - bucket[1]) * rate)
        bucket[1] = now

    def allow(self, key: Hashable) -> bool:
        """
        Take one token from C{key}'s bucket and one from the total.  When
        either is empty, take nothing and return False: a flood from one key
        does not drain the total, and a flood in total does not drain the
        keys.
        """
        now = self._clock.seconds()
        bucket = self._keys.get(key)
        if bucket is None:
            bucket = self._keys[key] = [float(self.per_key[1]), now]
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        self._refill(bucket, self.per_key, now)
        self._refill(self._total, self.total, now)
        if bucket[0] < 1 or self._total[0] < 1:
            return False
        bucket[0] -= 1
        self._total[0] -= 1
        return True

    def _buckets(self, key: Hashable) -> list[float]:
        now = self._clock.seconds()
        bucket = self._keys.get(key)
        if bucket is None:
            bucket = self._keys[key] = [float(self.per_key[1]), now]
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        self._refill(bucket, self.per_key, now)
        self._refill(self._total, self.total, now)
        return bucket

    def would_allow(self, key: Hashable) -> bool:
        """Whether L{allow} would now; takes nothing."""
        return self._buckets(key)[0] >= 1 and self._total[0] >= 1

    def charge(self, key: Hashable) -> None:
        """
        Take one token from C{key}'s bucket and one from the total, as far
        as there are any (for limits on what went wrong, counted after the
        fact: see L{would_allow}).
        """
        bucket = self._buckets(key)
        bucket[0] = max(0.0, bucket[0] - 1)
        self._total[0] = max(0.0, self._total[0] - 1)

    def __len__(self) -> int:
        """The number of keys remembered (at most C{max_keys})."""
        return len(self._keys)


__all__ = ["RateLimiter"]
