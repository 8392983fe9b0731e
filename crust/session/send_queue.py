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
_HEADER = 5  # bytes of a frame header (crust.wire.HEADER_SIZE)


@dataclass(frozen=True)
class Dropped:
    """A report of one dropped queue."""

    priority: int
    count: int
    size: int


class _Run:
    """
    Consecutive frames of one priority, whole (C{split} false), or one large
    message as its header and its payload, not yet joined (C{split} true).
    """

    __slots__ = ("time", "frames", "start", "nbytes", "split")

    def __init__(self, time: float, frames: list[bytes], nbytes: int, split: bool) -> None:
        self.time = time
        self.frames = frames
        self.start = 0  # frames before this index were taken (a split run is taken whole)
        self.nbytes = nbytes  # bytes of the frames not yet taken
        self.split = split

    def remaining(self) -> int:
        return 1 if self.split else len(self.frames) - self.start


class SendQueues:
    """
    FIFO queues keyed by priority.  C{size} counts queued bytes beyond the
    frames' headers (a message's payload), C{count} queued frames.  A payload
    that fills a run by itself (L{RUN_BYTES}) is queued unjoined from its
    header, in a run of its own: the two are joined when taken, right before the transport write, so
    it is copied once, when it is about to be sent, not held as a second copy
    while it waits.
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

    @property
    def most_urgent(self) -> Optional[int]:
        """The priority of the most urgent queued frame, or None when nothing is queued."""
        return self._priorities[0] if self._priorities else None

    def push(self, priority: int, header: bytes, payload: bytes, now: float) -> None:
        """Queue one frame: its C{header} and C{payload} (or a whole frame and C{b""})."""
        q = self._queues.get(priority)
        if len(payload) < RUN_BYTES:
            frame = header + payload
            n = len(frame)
            if q:
                run = q[-1]
                if run.nbytes + n <= RUN_BYTES:  # (never true of a split run: it is larger)
                    run.frames.append(frame)
                    run.nbytes += n
                    self.size += n - _HEADER
                    self.count += 1
                    return
            run = _Run(now, [frame], n, False)
        else:
            n = len(header) + len(payload)
            run = _Run(now, [header, payload], n, True)
        if q is None:
            q = self._queues[priority] = deque()
        if not q:
            insort(self._priorities, priority)
        q.append(run)
        self.size += n - _HEADER
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
        """The most urgent message's frame and its payload size, or None."""
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
                if run.start == 0 and (total + run.nbytes <= limit or (run.split and not taken)):
                    # the common case: a whole run (a split one is one frame: at least that)
                    taken.extend(run.frames)
                    total += run.nbytes
                    count += 1 if run.split else len(run.frames)
                    q.popleft()
                    continue
                if run.split:
                    break  # the limit is reached
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

    def take_frames_of(self, ftype: int) -> list[tuple[int, bytes, bytes]]:
        """
        Take the queued frames of type C{ftype} (a frame's fifth byte) out,
        most urgent first and in order within a priority, each as
        C{(priority, header, payload)} (a small frame whole, as its header,
        with an empty payload).  Frames of other types stay queued, in order.
        """
        found: list[tuple[int, bytes, bytes]] = []
        rest: list[tuple[int, bytes, bytes, float]] = []
        for priority in self._priorities:
            for run in self._queues[priority]:
                pieces = [tuple(run.frames)] if run.split else [(f, b"") for f in run.frames[run.start:]]
                for header, payload in pieces:
                    if header[4] == ftype:
                        found.append((priority, header, payload))
                    else:
                        rest.append((priority, header, payload, run.time))
            self._queues[priority].clear()
        self._priorities.clear()
        self.size = self.count = 0
        for priority, header, payload, time in rest:
            self.push(priority, header, payload, time)
        return found

    def clear(self) -> list[Dropped]:
        """Empty everything (the connection ended); report what was lost."""
        return [self._remove(p) for p in list(self._priorities)]

    def sizes_by_priority(self) -> dict[int, int]:
        return {p: sum(run.nbytes - _HEADER * run.remaining() for run in self._queues[p])
                for p in self._priorities}
