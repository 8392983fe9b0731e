from twisted.trial.unittest import SynchronousTestCase

from crust.session.send_queue import RUN_BYTES, Dropped, SendQueues
from crust.wire import DATA, frame


def payloads(joined):
    """Split joined frames back into their payloads."""
    out, offset = [], 0
    while offset < len(joined):
        length = int.from_bytes(joined[offset:offset + 4], "big")
        out.append(joined[offset + 5:offset + 4 + length])
        offset += 4 + length
    return out


class SendQueuesTests(SynchronousTestCase):
    def fill(self, q, items, now=0.0):
        for prio, data in items:
            q.push(prio, frame(DATA, data)[:5], data, now)

    def drain(self, q):
        out = []
        while (item := q.pop()) is not None:
            out += payloads(item[0])
        return out

    def test_lower_number_first_fifo_within(self):
        q = SendQueues(60)
        self.fill(q, [(5, b"e1"), (0, b"a1"), (5, b"e2"), (2, b"c1"), (0, b"a2")])
        self.assertEqual(q.size, 10)
        self.assertEqual(self.drain(q), [b"a1", b"a2", b"c1", b"e1", b"e2"])
        self.assertEqual((q.size, q.count), (0, 0))

    def test_stale_queue_and_all_lower_are_dropped(self):
        q = SendQueues(60)
        self.fill(q, [(0, b"zero"), (1, b"one")], now=0)
        self.fill(q, [(3, b"three")], now=0)
        self.fill(q, [(2, b"two")], now=50)
        self.fill(q, [(7, b"seven!")], now=100)
        dropped = q.expire(now=61)  # priority 3's head is 61 s old, 2's only 11 s
        self.assertEqual(dropped, [Dropped(3, 1, 5), Dropped(7, 1, 6)])
        self.assertEqual(self.drain(q), [b"zero", b"one", b"two"])

    def test_priorities_0_and_1_never_dropped(self):
        q = SendQueues(60)
        self.fill(q, [(0, b"a"), (1, b"b")], now=0)
        self.assertEqual(q.expire(now=10_000), [])
        self.assertEqual(q.count, 2)

    def test_not_stale_at_exactly_the_limit(self):
        q = SendQueues(60)
        self.fill(q, [(4, b"x")], now=0)
        self.assertEqual(q.expire(now=60), [])
        self.assertEqual(len(q.expire(now=60.01)), 1)

    def test_clear_reports_everything(self):
        q = SendQueues(60)
        self.fill(q, [(0, b"a"), (9, b"bb"), (9, b"cc")])
        self.assertEqual(q.clear(), [Dropped(0, 1, 1), Dropped(9, 2, 4)])
        self.assertFalse(q)

    def test_take_joins_in_priority_order_within_a_limit(self):
        q = SendQueues(60)
        self.fill(q, [(5, b"e" * 10), (0, b"a" * 10), (0, b"b" * 10), (2, b"c" * 10)])
        self.assertEqual(payloads(q.take(35)), [b"a" * 10, b"b" * 10])
        self.assertEqual(payloads(q.take(35)), [b"c" * 10, b"e" * 10])
        self.assertEqual((q.size, q.count), (0, 0))
        self.assertEqual(q.take(25), b"")
        self.fill(q, [(1, b"x" * 100)])
        self.assertEqual(payloads(q.take(10)), [b"x" * 100])  # at least one frame

    def test_runs_split_at_their_size_and_partial_takes(self):
        q = SendQueues(60)
        messages = [b"%05d" % i + b"z" * 995 for i in range(300)]  # 300 KB: several runs
        self.fill(q, [(3, m) for m in messages])
        self.assertEqual(q.count, 300)
        got = []
        while q:
            chunk = q.take(RUN_BYTES // 3)  # smaller than a run: partial takes
            self.assertLessEqual(len(chunk), RUN_BYTES // 3)
            got += payloads(chunk)
        self.assertEqual(got, messages)
        self.assertEqual((q.size, q.count), (0, 0))

    def test_partly_taken_run_reports_only_what_is_left(self):
        q = SendQueues(60)
        self.fill(q, [(4, b"m" * 100) for _ in range(10)], now=0)
        q.take(3 * 105)
        self.assertEqual((q.size, q.count), (700, 7))
        self.assertEqual(q.expire(now=61), [Dropped(4, 7, 700)])
        self.assertEqual((q.size, q.count), (0, 0))

    def test_control_frames_queue_whole(self):
        q = SendQueues(60)
        self.fill(q, [(0, b"data")])
        close = frame(6, b'{"reason":"disconnect"}')
        q.push(0, close, b"", 0.0)  # a whole CLOSE frame: its JSON counts as queued bytes
        self.assertEqual((q.size, q.count), (4 + len(close) - 5, 2))
        self.assertEqual(q.sizes_by_priority(), {0: 4 + len(close) - 5})
        joined = q.take(1 << 20)
        self.assertEqual(joined, frame(DATA, b"data") + frame(6, b'{"reason":"disconnect"}'))
        self.assertEqual((q.size, q.count), (0, 0))
        q.push(0, frame(5), b"", 0.0)
        self.assertEqual(q.take(0), frame(5))  # alone: the frame itself, not a copy
        self.assertEqual((q.size, q.count), (0, 0))

    def test_a_payload_is_queued_uncopied(self):
        q = SendQueues(60)
        big = b"b" * 100_000
        q.push(3, frame(DATA, big)[:5], big, 0.0)
        self.assertIs(q._queues[3][0].frames[1], big)
        self.assertEqual(payloads(q.take(1 << 20)), [big])


class TakeFramesOfTests(SynchronousTestCase):
    """What a connection that ended hands its heir: its queued DATA frames, in order, nothing else."""

    def test_data_frames_in_order_control_frames_left_behind(self):
        q = SendQueues(60)
        big = b"B" * RUN_BYTES  # a run of its own, header and payload apart
        q.push(2, frame(DATA, b"c1")[:5], b"c1", 0)
        q.push(0, frame(0x30, b"ctl"), b"", 0)  # a control frame queued whole
        q.push(0, frame(DATA, b"a1")[:5], b"a1", 0)
        q.push(2, frame(DATA, big)[:5], big, 0)
        q.push(1, frame(DATA, b"b1")[:5], b"b1", 0)
        q.push(2, frame(DATA, b"c2")[:5], b"c2", 0)
        taken = q.take_frames_of(DATA)
        self.assertEqual([(p, payloads(h + d)[0]) for p, h, d in taken],
                         [(0, b"a1"), (1, b"b1"), (2, b"c1"), (2, big), (2, b"c2")])
        self.assertEqual((q.count, q.most_urgent), (1, 0))  # the control frame stays, to be reported
        self.assertEqual(q.clear(), [Dropped(0, 1, len(frame(0x30, b"ctl")) - 5)])
        again = SendQueues(60)  # and they queue as they were
        for p, h, d in taken:
            again.push(p, h, d, 0)
        self.assertEqual(payloads(again.take(10 * RUN_BYTES)), [b"a1", b"b1", b"c1", big, b"c2"])

    def test_what_was_taken_already_is_not_taken_again(self):
        q = SendQueues(60)
        for data in (b"x1", b"x2", b"x3"):
            q.push(0, frame(DATA, data)[:5], data, 0)
        self.assertEqual(payloads(q.take(1)), [b"x1"])  # one frame went out
        self.assertEqual([payloads(h + d)[0] for _, h, d in q.take_frames_of(DATA)], [b"x2", b"x3"])
