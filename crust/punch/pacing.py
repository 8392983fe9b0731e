"""
Pacing and budgets for hole-punching checks (pure: no I/O, no reactor).

L{CheckSchedule} says what to send and when; the caller sends.  It paces
like ICE: one send every C{interval} seconds across all targets, the target
that has waited longest first (earlier targets first on a tie, so the first
round goes in the given order).  Each target is re-sent with a backoff: the
gaps between two sends to it are 0.1, 0.2, 0.4, 0.8 s, then 1.0 s, until the
window closes (or after C{retries} re-sends).  L{CheckSchedule.confirm}
stops the re-sends to a target but leaves exactly three more sends to it,
at least 50 ms apart: the other side's first checks may have been dropped
before our NAT opened, and these keep its way in open while it catches up.

If the caller comes late (a busy reactor, a suspended laptop), at most
C{max_burst} sends are due at once; the missed slots are dropped, never
caught up in full.  Between two calls of L{CheckSchedule.due} that returned
something, at times M{a < b}, the sends of the calls in M{(a, b]} number at
most M{(b - a) / interval}: the pacing never goes faster than one send per
interval on average, whatever the calls' times.

L{SendBudget} caps what one attempt may send toward addresses not yet
confirmed (packets and bytes), and shares a node-wide token bucket,
L{SendRate}, with the other attempts.

Times are plain floats (seconds, from any monotonic clock); the schedule
learns the time only from the C{now} arguments.  A C{now} smaller than one
seen before is taken as the one seen before.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

DEFAULT_INTERVAL = 0.025
DEFAULT_WINDOW = 10.0
BACKOFF = (0.1, 0.2, 0.4, 0.8)
MAX_BACKOFF = 1.0
MAX_BURST = 4
CONFIRM_EXTRA = 3
CONFIRM_SPACING = 0.05
MAX_TARGETS = 4096

ATTEMPT_MAX_PACKETS = 2000
ATTEMPT_MAX_BYTES = 200_000
NODE_RATE = 400.0
NODE_BURST = 800

# Slack for float arithmetic when comparing a time with a deadline.
_EPSILON = 1e-9

T = TypeVar("T", bound=Hashable)


class CheckSchedule(Generic[T]):
    """
    When to send checks to a set of targets.

    Each call of L{due} returns the targets to send to now, at most one send
    per target per call.  A heap of (time the target may next be sent,
    position, generation) makes L{due}, L{next_at} and L{confirm}
    M{O(log n)} per send.

    @ivar targets: the targets, deduplicated, in the given order.
    @ivar start: when the first send is due.
    @ivar end: when the window closes (M{start + window}); nothing is due
        at or after it.
    @ivar interval: the pacing: at most one send per C{interval} seconds.
    """

    def __init__(
        self,
        targets: Iterable[T],
        *,
        start: float,
        interval: float = DEFAULT_INTERVAL,
        retries: int | None = None,
        window: float = DEFAULT_WINDOW,
        max_burst: int = MAX_BURST,
        backoff: tuple[float, ...] = BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        confirm_extra: int = CONFIRM_EXTRA,
        confirm_spacing: float = CONFIRM_SPACING,
    ) -> None:
        """
        @param targets: what to send to, any hashable values (addresses,
            socket ids, pairs...); duplicates are dropped.
        @param start: when the first send is due.
        @param interval: seconds between two sends, across all targets.
        @param retries: re-sends per target after its first send, or
            C{None} for re-sends until the window closes.  Sends after a
            L{confirm} do not count.
        @param window: seconds from C{start} after which nothing is sent.
        @param max_burst: the most sends one L{due} call returns.
        @param backoff: the gaps between the first sends to one target.
        @param max_backoff: the gap between later sends to one target.
        @param confirm_extra: sends to a target after its L{confirm}.
        @param confirm_spacing: the gap between those sends.
        @raise ValueError: a parameter out of range, or more than
            L{MAX_TARGETS} targets.
        """
        if not interval > 0 or not window >= 0 or max_burst < 1 or confirm_extra < 0:
            raise ValueError("interval must be > 0, window >= 0, max_burst >= 1, confirm_extra >= 0")
        if retries is not None and retries < 0:
            raise ValueError("retries must be >= 0 or None")
        if any(not gap > 0 for gap in backoff) or not max_backoff > 0 or not confirm_spacing > 0:
            raise ValueError("backoff gaps and confirm_spacing must be > 0")
        unique: dict[T, int] = {}
        for target in targets:
            if target not in unique:
                if len(unique) >= MAX_TARGETS:
                    raise ValueError(f"more than {MAX_TARGETS} targets")
                unique[target] = len(unique)
        self.targets: tuple[T, ...] = tuple(unique)
        self._index = unique
        self.start = start
        self.end = start + window
        self.interval = interval
        self.retries = retries
        self.max_burst = max_burst
        self._backoff = tuple(backoff)
        self._max_backoff = max_backoff
        self._confirm_extra = confirm_extra
        self._confirm_spacing = confirm_spacing

        count = len(self.targets)
        self._sends = [0] * count
        # None: not confirmed; else how many sends after the confirm are left.
        self._extras: list[int | None] = [None] * count
        self._generation = [0] * count
        self._heap: list[tuple[float, int, int]] = [(start, i, 0) for i in range(count)]
        # The heap is sorted already: same time, increasing position.
        self._next_slot = start
        self._now = -math.inf
        self._finished = 0  # targets confirmed whose extra sends all went
        self._stopped = False
        self._closed = False

    # -- queries -------------------------------------------------------------

    @property
    def done(self) -> bool:
        """
        C{True} once nothing more will be sent: L{stop} was called, the
        window closed (as seen by the last C{now} given), or every target
        is confirmed and its extra sends went.
        """
        return self._stopped or self._closed or self._finished == len(self.targets)

    def sent(self, target: T) -> int:
        """How many times C{target} was returned by L{due}.  @raise KeyError: not a target."""
        return self._sends[self._index[target]]

    def is_confirmed(self, target: T) -> bool:
        """Whether C{target} was confirmed.  @raise KeyError: not a target."""
        return self._extras[self._index[target]] is not None

    def next_at(self, now: float) -> float | None:
        """
        When L{due} will next return something (not before C{now}).

        @return: a time M{>= now}, or C{None} if nothing is scheduled: the
            schedule is done, every target ran out of retries, or the next
            send would fall at or after L{end}.  A L{confirm} can schedule
            a send again: ask again after one.
        """
        now = self._observe(now)
        if self.done:
            return None
        top = self._peek()
        if top is None:
            return None
        when = max(top, self._next_slot, now)
        return when if when < self.end else None

    # -- inputs --------------------------------------------------------------

    def due(self, now: float) -> list[T]:
        """
        The targets to send a check to now, in order; each at most once.

        @return: at most C{max_burst} targets, and (across calls) at most
            one per C{interval} on average.
        """
        now = self._observe(now)
        if self.done or now + _EPSILON < self._next_slot:
            return []
        slots = min(self.max_burst, 1 + math.floor((now - self._next_slot) / self.interval + _EPSILON))
        out: list[T] = []
        while len(out) < slots:
            top = self._peek()
            if top is None or top > now + _EPSILON:
                break
            _, i, _ = heapq.heappop(self._heap)
            out.append(self.targets[i])
            self._sent(i, now)
        if out:
            self._next_slot = now + self.interval
        return out

    def confirm(self, target: T, now: float | None = None) -> bool:
        """
        C{target} answered: stop re-sending to it, after C{confirm_extra}
        more sends at least C{confirm_spacing} apart (the first one may go
        at the next slot).

        @param now: the time of the confirmation; by default the last time
            given to L{due} or L{next_at}.
        @return: C{True} if C{target} is one of ours and was not confirmed.
        """
        i = self._index.get(target)
        if i is None or self._extras[i] is not None or self._stopped:
            return False
        if now is not None:
            self._observe(now)
        self._extras[i] = self._confirm_extra
        self._generation[i] += 1
        if self._confirm_extra == 0:
            self._finished += 1
        else:
            heapq.heappush(self._heap, (max(self._now, self.start), i, self._generation[i]))
        return True

    def stop(self) -> None:
        """Send nothing more (the attempt succeeded or was given up)."""
        self._stopped = True
        self._heap.clear()

    # -- internals -----------------------------------------------------------

    def _observe(self, now: float) -> float:
        self._now = max(self._now, now)
        if self._now >= self.end:
            self._closed = True
        return self._now

    def _peek(self) -> float | None:
        """The time of the first live heap entry, dropping stale ones."""
        heap = self._heap
        while heap:
            when, i, generation = heap[0]
            if generation == self._generation[i]:
                return when
            heapq.heappop(heap)
        return None

    def _sent(self, i: int, now: float) -> None:
        """Target C{i} was just returned by L{due}: schedule its next send."""
        sends = self._sends[i]  # before this one
        self._sends[i] = sends + 1
        extras = self._extras[i]
        if extras is not None:
            self._extras[i] = extras - 1
            if extras == 1:
                self._finished += 1
                return
            gap = self._confirm_spacing
        else:
            if self.retries is not None and sends >= self.retries:
                return
            gap = self._backoff[sends] if sends < len(self._backoff) else self._max_backoff
        heapq.heappush(self._heap, (now + gap, i, self._generation[i]))


class SendRate:
    """
    A node-wide token bucket in packets: C{rate} packets per second, up to
    C{burst} at once.  One per node, shared by its L{SendBudget}s.
    """

    def __init__(self, *, rate: float = NODE_RATE, burst: int = NODE_BURST) -> None:
        """@raise ValueError: C{rate} or C{burst} not positive."""
        if not rate > 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def tokens(self, now: float) -> float:
        """The packets that may go now."""
        self._refill(now)
        return self._tokens

    def take(self, now: float, packets: int = 1) -> bool:
        """Take C{packets} tokens if there are that many; C{False} (and take none) if not."""
        self._refill(now)
        if self._tokens + _EPSILON < packets:
            return False
        self._tokens = max(0.0, self._tokens - packets)
        return True

    def _refill(self, now: float) -> None:
        if self._last is None or now <= self._last:
            if self._last is None:
                self._last = now
            return
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now


class SendBudget:
    """
    What one punch attempt may send toward addresses not yet confirmed:
    at most C{max_packets} packets and C{max_bytes} bytes in all, and only
    while the node-wide L{SendRate} has tokens.  Ask L{allow} before each
    such send; a refused send is not counted.

    @ivar packets: packets allowed so far.
    @ivar bytes: bytes allowed so far.
    @ivar refused: sends refused so far (for one log line at the end).
    """

    def __init__(
        self,
        rate: SendRate | None = None,
        *,
        max_packets: int = ATTEMPT_MAX_PACKETS,
        max_bytes: int = ATTEMPT_MAX_BYTES,
    ) -> None:
        """
        @param rate: the node's shared bucket; by default one of this
            budget's own (a node should pass its shared one).
        @raise ValueError: a cap below 0.
        """
        if max_packets < 0 or max_bytes < 0:
            raise ValueError("caps must be >= 0")
        self.rate = rate if rate is not None else SendRate()
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.packets = 0
        self.bytes = 0
        self.refused = 0

    @property
    def exhausted(self) -> bool:
        """C{True} when this attempt's packet or byte cap is reached."""
        return self.packets >= self.max_packets or self.bytes >= self.max_bytes

    def allow(self, now: float, size: int) -> bool:
        """
        May a packet of C{size} bytes go now?  If so it is counted.

        @raise ValueError: C{size} below 0.
        """
        if size < 0:
            raise ValueError("size must be >= 0")
        if (self.packets + 1 > self.max_packets or self.bytes + size > self.max_bytes
                or not self.rate.take(now)):
            self.refused += 1
            return False
        self.packets += 1
        self.bytes += size
        return True
