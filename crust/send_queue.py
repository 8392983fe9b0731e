"""
Per-peer outgoing queues by priority, with the original Crust's drop rule.

Pure logic: the caller passes the current time.  Lower priority numbers are
more urgent and are sent first.  Priorities 0 and 1 are never dropped.  Before
messages are taken for sending, the queues are walked in priority order; the
first queue of priority >= 2 whose oldest message has waited longer than
C{drop_after} is dropped, together with every less urgent queue.
"""

from __future__ import annotations

from bisect import insort
from collections import deque
from dataclasses import dataclass
from typing import Optional

NEVER_DROPPED_BELOW = 2
MAX_PRIORITY = 255


@dataclass(frozen=True)
class Dropped:
    """A report of one dropped queue."""

    priority: int
    count: int
    size: int


class SendQueues:
    """FIFO queues keyed by priority; C{size} counts queued payload bytes."""

    __slots__ = ("_queues", "_priorities", "size", "count", "drop_after")

    def __init__(self, drop_after: float) -> None:
        self._queues: dict[int, deque[tuple[float, bytes, int]]] = {}
        self._priorities: list[int] = []  # sorted keys of non-empty queues
        self.size = 0
        self.count = 0
        self.drop_after = drop_after

    def __bool__(self) -> bool:
        return self.count > 0

    def push(self, priority: int, frame: bytes, payload_size: int, now: float) -> None:
        q = self._queues.get(priority)
        if q is None:
            q = self._queues[priority] = deque()
        if not q:
            insort(self._priorities, priority)
        q.append((now, frame, payload_size))
        self.size += payload_size
        self.count += 1

    def expire(self, now: float) -> list[Dropped]:
        """Drop stale queues per the rule above; return what was dropped."""
        dropped: list[Dropped] = []
        cutoff = now - self.drop_after
        dropping = False
        for priority in list(self._priorities):
            if priority < NEVER_DROPPED_BELOW:
                continue
            q = self._queues[priority]
            if not dropping and q[0][0] < cutoff:
                dropping = True
            if dropping:
                size = sum(entry[2] for entry in q)
                dropped.append(Dropped(priority, len(q), size))
                self.size -= size
                self.count -= len(q)
                q.clear()
                self._priorities.remove(priority)
        return dropped

    def pop(self) -> Optional[tuple[bytes, int]]:
        """The most urgent frame and its payload size, or None."""
        if not self._priorities:
            return None
        priority = self._priorities[0]
        q = self._queues[priority]
        _, frame, payload_size = q.popleft()
        if not q:
            del self._priorities[0]
        self.size -= payload_size
        self.count -= 1
        return frame, payload_size

    def take(self, limit: int) -> bytes:
        """
        The most urgent frames, in order, joined: at least one frame, then
        more while the total stays within C{limit} bytes.  Empty if none.
        """
        taken: list[bytes] = []
        total = 0
        size = 0
        priorities = self._priorities
        while priorities:
            q = self._queues[priorities[0]]
            while q:
                frame = q[0][1]
                if taken and total + len(frame) > limit:
                    break
                _, frame, payload_size = q.popleft()
                taken.append(frame)
                total += len(frame)
                size += payload_size
            else:
                del priorities[0]
                continue
            break
        self.size -= size
        self.count -= len(taken)
        return taken[0] if len(taken) == 1 else b"".join(taken)

    def clear(self) -> list[Dropped]:
        """Empty everything (the connection ended); report what was lost."""
        lost = [
            Dropped(p, len(self._queues[p]), sum(e[2] for e in self._queues[p]))
            for p in self._priorities
        ]
        for p in self._priorities:
            self._queues[p].clear()
        self._priorities = []
        self.size = 0
        self.count = 0
        return lost

    def sizes_by_priority(self) -> dict[int, int]:
        return {p: sum(e[2] for e in self._queues[p]) for p in self._priorities}
