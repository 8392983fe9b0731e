"""The cache validator: stale cached peers are probed, and only recorded, on a Clock."""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.bootstrap.cache import BootstrapCache
from crust.bootstrap.bootstrapper import CacheValidator
from crust.identity import Identity


class FakeService:
    def __init__(self, clock, cache):
        self.clock = clock
        self.bootstrap_cache = cache
        self.running_for_peers = True
        self.probes = []
        self.answers = {}

    def probe(self, address, expected_peer=None):
        self.probes.append((address, expected_peer))
        answer = self.answers.get(expected_peer)
        if answer is None:
            return Deferred()  # never answers: the validator's timeout applies
        return answer()


class CacheValidatorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        path = self.mktemp()
        self.cache = BootstrapCache(path, max_size=10, timeout=120, clock=self.clock)
        self.service = FakeService(self.clock, self.cache)
        self.alive, self.dead, self.silent = (Identity.generate().peer_id for _ in range(3))
        for i, peer in enumerate((self.alive, self.dead, self.silent)):
            self.cache.put(peer, Address("tcp", "127.0.0.1", 4000 + i))
        self.service.answers[self.alive] = lambda: succeed(object())
        self.service.answers[self.dead] = lambda: fail(ConnectionRefusedError("refused"))
        self.validator = CacheValidator(self.service)
        self.validator.startService()
        self.addCleanup(self.validator.stopService)
        self.addCleanup(lambda: self.cache._pending and self.cache._pending.cancel())

    def test_fresh_entries_are_not_probed(self):
        self.clock.advance(60)
        self.validator.validate()
        self.assertEqual(self.service.probes, [])

    def test_stale_entries_probed_every_timeout_and_recorded(self):
        self.clock.advance(120)  # the loop runs every cache timeout; all three are stale now
        self.assertEqual({p for _, p in self.service.probes}, {self.alive, self.dead, self.silent})
        self.clock.advance(3)  # the silent one times out
        self.assertEqual(self.cache.get(self.alive).failures, 0)
        self.assertFalse(self.cache.is_stale(self.cache.get(self.alive)))
        self.assertEqual(self.cache.get(self.dead).failures, 1)
        self.assertEqual(self.cache.get(self.silent).failures, 1)
        # briefly down is not evicted while there is room (the original's issue #1138)
        self.assertEqual(len(self.cache), 3)
