"""
L{SpliceTokens}: the splice tokens a relay gave out and not yet seen back
(pure logic: the time comes from an injected clock, the randomness from an
injected source).

A token is 32 random bytes, made by the relay (a remote party never picks a
key of this table), good for one use, for L{TOKEN_LIFETIME} seconds at
most; the table holds at most C{cap} of them.  What a token stands for (the
circuit and which of its ends) is the caller's business: any object.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from crust.relay.preamble import TOKEN_SIZE

TOKEN_LIFETIME = 10.0  # seconds a token may wait to be presented
MAX_TOKENS = 256  # tokens outstanding at once (two per circuit at most: 128 circuits)


class SpliceTokens:
    """
    @param clock: anything with C{seconds()}.
    @param lifetime: seconds a token is good for.
    @param cap: the most tokens outstanding at once.
    @param random: C{random(n)} returns C{n} random bytes.
    @ivar counters: C{issued}, C{taken}, C{expired} (presented too late),
        C{unknown} (never issued, used already, or revoked), C{full}
        (none issued: the table was full).
    """

    def __init__(self, clock: Any, lifetime: float = TOKEN_LIFETIME, cap: int = MAX_TOKENS,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        if lifetime <= 0 or cap < 1:
            raise ValueError("a token table needs a positive lifetime and room for a token")
        self._clock = clock
        self.lifetime = lifetime
        self.cap = cap
        self._random = random
        self._tokens: dict[bytes, tuple[Any, float]] = {}  # token -> (what it stands for, when it expires)
        self.counters = dict.fromkeys(("issued", "taken", "expired", "unknown", "full"), 0)

    def __len__(self) -> int:
        return len(self._tokens)

    def issue(self, owner: Any) -> Optional[bytes]:
        """A fresh token standing for C{owner}, or None when the table is full (of tokens not yet expired)."""
        now = self._clock.seconds()
        if len(self._tokens) >= self.cap:
            self._sweep(now)
            if len(self._tokens) >= self.cap:
                self.counters["full"] += 1
                return None
        while True:
            token = self._random(TOKEN_SIZE)
            if len(token) != TOKEN_SIZE:
                raise ValueError(f"the random source gave {len(token)} bytes, not {TOKEN_SIZE}")
            if token not in self._tokens:
                break
        self._tokens[token] = (owner, now + self.lifetime)
        self.counters["issued"] += 1
        return token

    def take(self, token: bytes) -> tuple[Any, str]:
        """
        What C{token} stands for, and the token is used up: C{(owner, "")};
        or C{(None, why)} when it is not good (unknown, used, revoked, expired).
        """
        entry = self._tokens.pop(token, None)
        if entry is None:
            self.counters["unknown"] += 1
            return None, "an unknown or used splice token"
        owner, expires = entry
        if self._clock.seconds() > expires:
            self.counters["expired"] += 1
            return None, "an expired splice token"
        self.counters["taken"] += 1
        return owner, ""

    def revoke(self, token: Optional[bytes]) -> None:
        """Forget C{token} (if still outstanding): it will not be good any more."""
        if token is not None:
            self._tokens.pop(token, None)

    def _sweep(self, now: float) -> None:
        for token, (_, expires) in list(self._tokens.items()):
            if now > expires:
                del self._tokens[token]
