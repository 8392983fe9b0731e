"""
What one hole-punching attempt knows: L{PunchPlan}, and the targets the
punch strategies hand to a connect attempt (L{PunchTarget}).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

from crust.connection_info import PubConnectionInfo
from crust.identity import PeerId

ATTEMPT_SIZE = 8


@dataclass(frozen=True)
class PunchPlan:
    """
    @ivar peer_id: the peer to punch to.
    @ivar attempt: the attempt id (8 bytes) both sides key their checks with.
    @ivar info: the peer's connection info (its candidates and NAT).
    @ivar start_at: when both sides start (clock seconds, ours).
    @ivar via: the rendezvous that coordinated it, or None when both sides
        pasted each other's info (a blind punch: no agreed moment, a longer
        window instead).
    """

    peer_id: PeerId
    attempt: bytes
    info: PubConnectionInfo
    start_at: float
    via: Optional[PeerId] = None

    @property
    def coordinated(self) -> bool:
        return self.via is not None


def blind_attempt(a: PeerId, b: PeerId) -> bytes:
    """The attempt id two peers use without a rendezvous: the same on both sides, different for every pair."""
    low, high = sorted((a.raw, b.raw))
    return hashlib.blake2b(low + high, digest_size=ATTEMPT_SIZE, person=b"crust-blind").digest()


@dataclass(frozen=True)
class PunchTarget:
    """One punch strategy's target in a connect attempt: the plan, named by the strategy for reasons."""

    strategy: str
    plan: PunchPlan

    def __str__(self) -> str:
        return self.strategy
