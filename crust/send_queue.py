"""
Per-peer outgoing queues by priority, with the original Crust's drop rule.

Pure logic: the caller passes the current time.  Lower priority numbers are
more urgent and are sent first.  Priorities 0 and 1 are never dropped.  Before
messages are taken for sending, the queues are walked in priority order; the
first queue of priority >= 2 whose oldest message has waited longer than
C{drop_after} is dropped, together with every less urgent queue.

Each queue holds I{runs}: consecutive frames of one priority, up to
L{RUN_BYTES} together, kept in one list and written with one transport write.
A run's time is its first frame's: the drop rule only looks at a queue's
oldest message, and drops whole queues, so that is all it needs.  (After a
run was partly sent, what is left of it keeps the first frame's time: it may
be dropped up to that run's fill time early, never late.)
"""

from __future__ import annotations

from bisect import insort
from collections import deque
from dataclasses import dataclass
from typing import Optional

NEVER_DROPPED_BELOW = 2
MAX_PRIORITY = 255
RUN_BYTES = 64 * 1024
_HEADER = 5  # a queued frame is its payload plus this header (crust.wire.HEADER_SIZE)


@dataclass(frozen=True)
class Dropped:
    """A report of one dropped queue."""

    priority: int
    count: int
    size: int


class _Run:
    __slots__ = ("time", "frames", "start", "nbytes")

    def __init__(self, time: float, frame: bytes) -> None:
        self.time = time
        self.frames = [frame]
        self.start = 0  # frames before this index were taken
        self.nbytes = len(frame)  # bytes of the frames not yet taken

    def remaining(self) -> int:
        return len(self.frames) - self.start


class SendQueues:
    """
    FIFO queues keyed by priority.  C{size} counts queued payload bytes,
    C{count} queued frames.  Every queued frame is a header plus its payload.
    """

    __slots__ = ("_queues", "_priorities", "size", "count", "drop_after")

    def __init__(self, drop_after: float) -> None:
        self._queues: dict[int, deque[_Run]] = {}
        self._priorities: list[int] = []  # sorted keys of non-empty queues
        self.size = 0
        self.count = 0
        self.drop_after = drop_after

    def __bool__(self) -> bool:
        return self.count > 0

    def push(self, priority: int, frame: bytes, payload_size: int, now: float) -> None:
        q = self._queues.get(priority)
        if q:
            run = q[-1]
            if run.nbytes + len(frame) <= RUN_BYTES:
                run.frames.append(frame)
                run.nbytes += len(frame)
                self.size += payload_size
                self.count += 1
                return
        elif q is None:
            q = self._queues[priority] = deque()
        if not q:
            insort(self._priorities, priority)
        q.append(_Run(now, frame))
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
            if not dropping and q[0].time < cutoff:
                dropping = True
            if dropping:
                dropped.append(self._remove(priority))
        return dropped

    def _remove(self, priority: int) -> Dropped:
        q = self._queues[priority]
        count = sum(run.remaining() for run in q)
        size = sum(run.nbytes for run in q) - _HEADER * count
        q.clear()
        self._priorities.remove(priority)
        self.size -= size
        self.count -= count
        return Dropped(priority, count, size)

    def pop(self) -> Optional[tuple[bytes, int]]:
        """The most urgent frame and its payload size, or None."""
        if not self._priorities:
            return None
        frame = self.take(0)
        return frame, len(frame) - _HEADER

    def take(self, limit: int) -> bytes:
        """
        The most urgent frames, in order, joined: at least one frame, then
        more while the total stays within C{limit} bytes.  Empty if none.
        """
        taken: list[bytes] = []
        total = 0
        count = 0
        priorities = self._priorities
        queues = self._queues
        while priorities:
            q = queues[priorities[0]]
            while q:
                run = q[0]
                if run.start == 0 and total + run.nbytes <= limit:
                    # the common case: a whole run
                    taken.extend(run.frames)
                    total += run.nbytes
                    count += len(run.frames)
                    q.popleft()
                    continue
                frames = run.frames
                i = run.start
                while i < len(frames) and (not taken or total + len(frames[i]) <= limit):
                    frame = frames[i]
                    taken.append(frame)
                    total += len(frame)
                    run.nbytes -= len(frame)
                    count += 1
                    i += 1
                run.start = i
                if i == len(frames):
                    q.popleft()
                    continue
                break  # the limit is reached
            else:
                del priorities[0]
                continue
            break
        self.size -= total - _HEADER * count
        self.count -= count
        return taken[0] if len(taken) == 1 else b"".join(taken)

    def clear(self) -> list[Dropped]:
        """Empty everything (the connection ended); report what was lost."""
        return [self._remove(p) for p in list(self._priorities)]

    def sizes_by_priority(self) -> dict[int, int]:
        return {p: sum(run.nbytes - _HEADER * run.remaining() for run in self._queues[p])
                for p in self._priorities}
