"""A result many callers can wait for (a Deferred fans out to one chain only)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class OneShot:
    """Fires every waiter, past and future, with one result."""

    def __init__(self) -> None:
        self._waiters: list[Deferred] = []
        self._result: Any = None
        self.called = False

    def wait(self) -> Deferred:
        d: Deferred = Deferred()
        if self.called:
            self._fire_one(d)
        else:
            self._waiters.append(d)
        return d

    def fire(self, result: Any) -> None:
        if self.called:
            return
        self.called = True
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire_one(d)

    def _fire_one(self, d: Deferred) -> None:
        if isinstance(self._result, Failure):
            d.errback(self._result)
        else:
            d.callback(self._result)
