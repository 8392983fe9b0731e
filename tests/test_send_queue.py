from twisted.trial.unittest import SynchronousTestCase

from crust.send_queue import Dropped, SendQueues


class SendQueuesTests(SynchronousTestCase):
    def fill(self, q, items, now=0.0):
        for prio, data in items:
            q.push(prio, data, len(data), now)

    def drain(self, q):
        out = []
        while (item := q.pop()) is not None:
            out.append(item[0])
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
        self.assertEqual(q.take(25), b"a" * 10 + b"b" * 10)
        self.assertEqual(q.take(25), b"c" * 10 + b"e" * 10)
        self.assertEqual((q.size, q.count), (0, 0))
        self.assertEqual(q.take(25), b"")
        self.fill(q, [(1, b"x" * 100)])
        self.assertEqual(q.take(10), b"x" * 100)  # at least one frame
