"""Tests for crust.punch.pacing: the check schedule and the send budgets (no clock: times are passed in)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from crust.punch.pacing import (
    MAX_TARGETS,
    CheckSchedule,
    SendBudget,
    SendRate,
)

from tests import examples

EPS = 1e-6


def run(schedule: CheckSchedule, until: float, step: float = 0.001, start: float = 0.0) -> list[tuple[float, object]]:
    """Call due() every C{step} seconds from C{start} to C{until}; the (time, target) sends."""
    out: list[tuple[float, object]] = []
    for k in range(round((until - start) / step) + 1):
        now = start + k * step
        out.extend((now, target) for target in schedule.due(now))
    return out


class ScheduleTests(unittest.TestCase):
    def test_interval_respected(self) -> None:
        schedule = CheckSchedule(range(20), start=0.0)
        sends = run(schedule, 2.0)
        times = [t for t, _ in sends]
        self.assertEqual(times[0], 0.0)
        self.assertTrue(all(b - a >= 0.025 - EPS for a, b in itertools.pairwise(times)))
        # Twenty targets, each wanting a send at least every 0.1..1 s: the pacing is the bottleneck at first.
        self.assertEqual([round(t, 3) for t in times[:5]], [0.0, 0.025, 0.05, 0.075, 0.1])

    def test_round_robin_earlier_targets_first(self) -> None:
        schedule = CheckSchedule("abcde", start=0.0)
        sends = run(schedule, 0.3)
        self.assertEqual("".join(str(target) for _, target in sends[:5]), "abcde")
        # At 0.125 "a" has waited since 0.1 (its first backoff); "b" since 0.125: a, then b...
        self.assertEqual([(round(t, 3), target) for t, target in sends[5:8]],
                         [(0.125, "a"), (0.15, "b"), (0.175, "c")])

    def test_longest_waiting_first(self) -> None:
        # Ten targets: the untried ones (waiting since the start) go before re-sends.
        schedule = CheckSchedule(range(10), start=0.0)
        sends = run(schedule, 0.25)
        self.assertEqual([target for _, target in sends[:10]], list(range(10)))

    def test_backoff(self) -> None:
        schedule = CheckSchedule(["x"], start=1.0, window=6.0)
        sends = run(schedule, 7.5, start=1.0)
        self.assertEqual([round(t - 1.0, 3) for t, _ in sends], [0.0, 0.1, 0.3, 0.7, 1.5, 2.5, 3.5, 4.5, 5.5])
        self.assertEqual(schedule.sent("x"), 9)

    def test_custom_backoff(self) -> None:
        schedule = CheckSchedule(["x"], start=0.0, backoff=(0.5,), max_backoff=2.0, window=5.0)
        self.assertEqual([round(t, 3) for t, _ in run(schedule, 5.0)], [0.0, 0.5, 2.5, 4.5])

    def test_retries(self) -> None:
        schedule = CheckSchedule(["x", "y"], start=0.0, retries=2)
        sends = run(schedule, 3.0)
        self.assertEqual(schedule.sent("x"), 3)
        self.assertEqual(schedule.sent("y"), 3)
        self.assertEqual(len(sends), 6)
        self.assertIsNone(schedule.next_at(3.0))
        self.assertFalse(schedule.done)  # still waiting for answers until the window closes

    def test_retries_zero_sends_once(self) -> None:
        schedule = CheckSchedule(range(100), start=0.0, interval=0.005, retries=0)
        sends = run(schedule, 2.0)
        self.assertEqual(sorted(target for _, target in sends), list(range(100)))
        self.assertAlmostEqual(sends[-1][0], 99 * 0.005)

    def test_confirm_exactly_three_more(self) -> None:
        schedule = CheckSchedule(["a", "b"], start=0.0)
        run(schedule, 0.5)
        before = schedule.sent("a")
        self.assertTrue(schedule.confirm("a"))
        self.assertTrue(schedule.is_confirmed("a"))
        self.assertFalse(schedule.is_confirmed("b"))
        sends = run(schedule, 9.9, start=0.501)
        times = [t for t, target in sends if target == "a"]
        self.assertEqual(len(times), 3)
        self.assertEqual(schedule.sent("a"), before + 3)
        self.assertTrue(all(b - a >= 0.05 - EPS for a, b in itertools.pairwise(times)))
        self.assertLess(times[0], 0.53)  # the first one goes at the next slot
        self.assertGreater(schedule.sent("b"), 10)  # "b" goes on
        self.assertFalse(schedule.done)

    def test_confirm_after_retries_ran_out(self) -> None:
        schedule = CheckSchedule(["a"], start=0.0, retries=0)
        self.assertEqual(schedule.due(0.0), ["a"])
        self.assertIsNone(schedule.next_at(1.0))
        schedule.confirm("a")
        self.assertEqual(schedule.next_at(1.0), 1.0)
        self.assertEqual([t for t, _ in run(schedule, 2.0, start=1.0)], [1.0, 1.05, 1.1])
        self.assertTrue(schedule.done)

    def test_confirm_at_time(self) -> None:
        schedule = CheckSchedule(["a"], start=0.0)
        schedule.due(0.0)
        schedule.confirm("a", now=0.04)
        self.assertEqual(schedule.next_at(0.0), 0.04)

    def test_confirm_unknown_or_twice(self) -> None:
        schedule = CheckSchedule(["a"], start=0.0)
        self.assertFalse(schedule.confirm("zzz"))
        self.assertTrue(schedule.confirm("a"))
        self.assertFalse(schedule.confirm("a"))
        self.assertEqual(len(run(schedule, 1.0)), 3)

    def test_done_when_all_confirmed_and_extras_went(self) -> None:
        schedule = CheckSchedule(["a", "b"], start=0.0)
        schedule.due(0.0)
        schedule.confirm("a")
        schedule.confirm("b")
        self.assertFalse(schedule.done)
        run(schedule, 1.0, start=0.001)
        self.assertTrue(schedule.done)
        self.assertEqual((schedule.sent("a"), schedule.sent("b")), (4, 3))
        self.assertIsNone(schedule.next_at(1.0))

    def test_confirm_extra_zero(self) -> None:
        schedule = CheckSchedule(["a"], start=0.0, confirm_extra=0)
        schedule.confirm("a")
        self.assertTrue(schedule.done)
        self.assertEqual(schedule.due(0.0), [])

    def test_window_closes(self) -> None:
        schedule = CheckSchedule(["a", "b"], start=10.0, window=2.0)
        self.assertEqual(schedule.end, 12.0)
        sends = run(schedule, 14.0, start=9.0)
        self.assertTrue(sends)
        self.assertTrue(all(10.0 <= t < 12.0 for t, _ in sends))
        self.assertTrue(schedule.done)
        self.assertIsNone(schedule.next_at(14.0))

    def test_window_closes_extras_too(self) -> None:
        schedule = CheckSchedule(["a"], start=0.0, window=1.0)
        schedule.due(0.0)
        schedule.confirm("a", now=0.95)
        self.assertEqual(schedule.due(0.95), ["a"])
        self.assertIsNone(schedule.next_at(0.96))  # the next one would be at 1.0: the window is closed then
        self.assertEqual(schedule.due(1.0), [])
        self.assertTrue(schedule.done)

    def test_nothing_before_start(self) -> None:
        schedule = CheckSchedule(["a"], start=5.0)
        self.assertEqual(schedule.due(4.99), [])
        self.assertEqual(schedule.next_at(1.0), 5.0)
        self.assertEqual(schedule.due(5.0), ["a"])

    def test_burst_cap_on_clock_jump(self) -> None:
        schedule = CheckSchedule(range(10), start=0.0)
        self.assertEqual(schedule.due(0.0), [0])
        self.assertEqual(schedule.due(5.0), [1, 2, 3, 4])
        self.assertEqual(schedule.due(5.0), [])
        self.assertEqual(schedule.due(5.01), [])
        self.assertEqual(schedule.next_at(5.01), 5.025)
        self.assertEqual(schedule.due(5.025), [5])

    def test_small_lateness_catches_up_a_few(self) -> None:
        schedule = CheckSchedule(range(10), start=0.0)
        schedule.due(0.0)
        # 0.06 s late: the slots at 0.025 and 0.05 were missed; they and the one at 0.075 go now.
        self.assertEqual(schedule.due(0.075), [1, 2, 3])

    def test_custom_burst(self) -> None:
        schedule = CheckSchedule(range(10), start=0.0, max_burst=2)
        self.assertEqual(schedule.due(5.0), [0, 1])

    def test_stop(self) -> None:
        schedule = CheckSchedule(["a"], start=0.0)
        schedule.due(0.0)
        schedule.stop()
        self.assertTrue(schedule.done)
        self.assertEqual(schedule.due(1.0), [])
        self.assertIsNone(schedule.next_at(1.0))
        self.assertFalse(schedule.confirm("a"))

    def test_time_going_back_is_ignored(self) -> None:
        schedule = CheckSchedule(["a"], start=0.0)
        self.assertEqual(schedule.due(0.0), ["a"])
        self.assertEqual(schedule.due(0.2), ["a"])
        self.assertEqual(schedule.due(0.1), [])  # taken as 0.2: the next send is at 0.4
        self.assertEqual(schedule.next_at(0.0), 0.4)

    def test_next_at_drives_the_same_sends(self) -> None:
        fine = CheckSchedule(range(7), start=0.0, window=4.0)
        by_fine = [(round(t, 6), target) for t, target in run(fine, 4.0)]
        jumpy = CheckSchedule(range(7), start=0.0, window=4.0)
        by_next: list[tuple[float, object]] = []
        now = 0.0
        while (when := jumpy.next_at(now)) is not None:
            now = when
            due = jumpy.due(now)
            self.assertEqual(len(due), 1)
            by_next.extend((round(now, 6), target) for target in due)
        self.assertEqual(by_next, by_fine)

    def test_targets_deduplicated_and_hashable(self) -> None:
        schedule = CheckSchedule([("udp", 1), ("udp", 2), ("udp", 1)], start=0.0)
        self.assertEqual(schedule.targets, (("udp", 1), ("udp", 2)))
        self.assertEqual(schedule.due(0.0), [("udp", 1)])

    def test_no_targets_is_done(self) -> None:
        schedule: CheckSchedule[str] = CheckSchedule([], start=0.0)
        self.assertTrue(schedule.done)
        self.assertEqual(schedule.due(0.0), [])
        self.assertIsNone(schedule.next_at(0.0))

    def test_target_cap(self) -> None:
        CheckSchedule(range(MAX_TARGETS), start=0.0)
        self.assertRaises(ValueError, CheckSchedule, range(MAX_TARGETS + 1), start=0.0)

    def test_bad_parameters(self) -> None:
        for kwargs in ({"interval": 0}, {"window": -1}, {"max_burst": 0}, {"retries": -1}, {"backoff": (0.1, 0)},
                       {"confirm_extra": -1}, {"confirm_spacing": 0}, {"max_backoff": 0}):
            self.assertRaises(ValueError, CheckSchedule, ["a"], start=0.0, **kwargs)

    def test_unknown_target_queries(self) -> None:
        schedule = CheckSchedule(["a"], start=0.0)
        self.assertRaises(KeyError, schedule.sent, "b")
        self.assertRaises(KeyError, schedule.is_confirmed, "b")


# A step of the schedule property test: advance the time, or confirm target i.
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("t"), st.one_of(st.floats(0, 0.06), st.floats(0, 3.0))),
        st.tuples(st.just("c"), st.integers(0, 11)),
    ),
    max_size=120,
)


class ScheduleProperties(unittest.TestCase):
    @examples(300)
    @given(
        n=st.integers(1, 12),
        interval=st.sampled_from([0.005, 0.025, 0.1]),
        retries=st.one_of(st.none(), st.integers(0, 3)),
        window=st.floats(0.2, 30.0),
        burst=st.integers(1, 5),
        ops=_ops,
    )
    def test_random_use_keeps_the_promises(self, n, interval, retries, window, burst, ops) -> None:
        schedule = CheckSchedule(range(n), start=0.0, interval=interval, retries=retries, window=window,
                                 max_burst=burst)
        calls: list[tuple[float, int]] = []  # (now, sends) of each call that sent something
        sends: dict[int, list[float]] = {i: [] for i in range(n)}
        confirmed_after: dict[int, int] = {}  # target -> its sends before its confirm
        now = 0.0

        def call(at: float) -> None:
            due = schedule.due(at)
            self.assertLessEqual(len(due), burst)
            self.assertEqual(len(set(due)), len(due))
            if due:
                self.assertLess(at, schedule.end)
                calls.append((at, len(due)))
            for target in due:
                sends[target].append(at)

        for op, value in ops:
            if op == "t":
                now += value
                call(now)
            elif value < n and schedule.confirm(value):
                confirmed_after[value] = len(sends[value])
        # Drain: confirm everything, then follow next_at.
        for i in range(n):
            if schedule.confirm(i):
                confirmed_after[i] = len(sends[i])
        for _ in range(4 * n + 10):
            when = schedule.next_at(now)
            if when is None:
                break
            self.assertGreaterEqual(when, now)
            now = when
            call(now)
        else:
            self.fail("the drain did not end")

        # Rate: between two sending calls at a < b, at most (b - a) / interval sends in (a, b].
        for j in range(len(calls)):
            total = 0
            for k in range(j + 1, len(calls)):
                total += calls[k][1]
                self.assertLessEqual(total, (calls[k][0] - calls[j][0]) / interval + EPS)
        for i in range(n):
            before = confirmed_after.get(i, len(sends[i]))
            regular, extras = sends[i][:before], sends[i][before:]
            self.assertLessEqual(len(extras), 3)
            if retries is not None:
                self.assertLessEqual(len(regular), 1 + retries)
            gaps = [0.1, 0.2, 0.4, 0.8] + [1.0] * len(regular)
            for k, (a, b) in enumerate(itertools.pairwise(regular)):
                self.assertGreaterEqual(b - a, gaps[k] - EPS)
            for a, b in itertools.pairwise(extras):
                self.assertGreaterEqual(b - a, 0.05 - EPS)
        if all(len(sends[i]) - confirmed_after[i] == 3 for i in range(n)):
            self.assertTrue(schedule.done)
        else:
            # Only the window stops the extra sends short.
            self.assertEqual(schedule.due(schedule.end), [])
            self.assertTrue(schedule.done)


class BudgetTests(unittest.TestCase):
    def test_packet_cap_per_attempt(self) -> None:
        budget = SendBudget(max_packets=5)
        self.assertEqual([budget.allow(float(k), 33) for k in range(7)], [True] * 5 + [False] * 2)
        self.assertEqual((budget.packets, budget.bytes, budget.refused), (5, 165, 2))
        self.assertTrue(budget.exhausted)

    def test_byte_cap_per_attempt(self) -> None:
        budget = SendBudget(max_bytes=100)
        self.assertEqual([budget.allow(0.0, 33) for _ in range(4)], [True, True, True, False])
        self.assertFalse(budget.exhausted)
        self.assertTrue(budget.allow(0.0, 1))  # exactly the cap
        self.assertTrue(budget.exhausted)
        self.assertFalse(budget.allow(0.0, 1))
        self.assertTrue(budget.allow(0.0, 0))  # an empty packet fits under the byte cap

    def test_defaults(self) -> None:
        budget = SendBudget(SendRate())
        self.assertEqual((budget.max_packets, budget.max_bytes), (2000, 200_000))
        self.assertEqual((budget.rate.rate, budget.rate.burst), (400.0, 800))

    def test_node_rate_burst_then_refill(self) -> None:
        rate = SendRate(rate=400, burst=800)
        budget = SendBudget(rate, max_packets=10_000, max_bytes=10**9)
        self.assertEqual(sum(budget.allow(0.0, 33) for _ in range(1000)), 800)
        self.assertFalse(budget.allow(0.0, 33))
        self.assertEqual(sum(budget.allow(0.5, 33) for _ in range(1000)), 200)
        self.assertEqual(sum(budget.allow(100.0, 33) for _ in range(1000)), 800)  # never more than the burst

    def test_node_rate_shared_across_attempts(self) -> None:
        rate = SendRate(rate=10, burst=20)
        first, second = SendBudget(rate), SendBudget(rate)
        self.assertEqual(sum(first.allow(0.0, 33) for _ in range(15)), 15)
        self.assertEqual(sum(second.allow(0.0, 33) for _ in range(15)), 5)
        self.assertEqual(second.refused, 10)
        self.assertEqual(second.packets, 5)  # refused sends are not counted

    def test_refused_by_attempt_takes_no_node_token(self) -> None:
        rate = SendRate(rate=1, burst=3)
        capped = SendBudget(rate, max_packets=1)
        capped.allow(0.0, 10)
        self.assertFalse(capped.allow(0.0, 10))
        self.assertEqual(rate.tokens(0.0), 2.0)

    def test_time_going_back_refills_nothing(self) -> None:
        rate = SendRate(rate=10, burst=2)
        self.assertTrue(rate.take(5.0, 2))
        self.assertFalse(rate.take(1.0))
        self.assertEqual(rate.tokens(5.0), 0.0)
        self.assertTrue(rate.take(5.1))

    def test_bad_values(self) -> None:
        self.assertRaises(ValueError, SendBudget(max_packets=1).allow, 0.0, -1)
        self.assertRaises(ValueError, SendBudget, max_packets=-1)
        self.assertRaises(ValueError, SendRate, rate=0)
        self.assertRaises(ValueError, SendRate, burst=0)

    @examples(200)
    @given(
        steps=st.lists(st.tuples(st.floats(0, 0.5), st.integers(0, 1500), st.integers(0, 1)), max_size=300),
        max_packets=st.integers(0, 200),
        max_bytes=st.integers(0, 50_000),
        rate=st.floats(1, 500),
        burst=st.integers(1, 100),
    )
    def test_random_use_never_exceeds_the_caps(self, steps, max_packets, max_bytes, rate, burst) -> None:
        node = SendRate(rate=rate, burst=burst)
        budgets = [SendBudget(node, max_packets=max_packets, max_bytes=max_bytes) for _ in range(2)]
        allowed: list[float] = []
        now = 0.0
        for dt, size, which in steps:
            now += dt
            if budgets[which].allow(now, size):
                allowed.append(now)
        for budget in budgets:
            self.assertLessEqual(budget.packets, max_packets)
            self.assertLessEqual(budget.bytes, max_bytes)
        # Node-wide: in any time span [a, b], at most burst + rate * (b - a) packets.
        for j in range(len(allowed)):
            for k in range(j, len(allowed)):
                self.assertLessEqual(k - j + 1, burst + rate * (allowed[k] - allowed[j]) + EPS)
