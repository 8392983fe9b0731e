"""Helpers shared by the loopback tests."""

from __future__ import annotations

from twisted.internet import defer, reactor, task

from crust import Config, Identity, Service
from crust.observer import RecordingObserver

LOOPBACK = "127.0.0.1"


def loopback_config(**kw) -> Config:
    kw.setdefault("listen_host", LOOPBACK)
    return Config(**kw)


def make_service(testcase, identity=None, start=True, data_dir=None, **config) -> Service:
    """A started service on 127.0.0.1 with a RecordingObserver at C{.events}."""
    service = Service(identity or Identity.generate(), loopback_config(**config), reactor, data_dir=data_dir)
    service.events = RecordingObserver()
    service.add_observer(service.events)
    if start:
        service.startService()
    testcase.addCleanup(lambda: service.stopService() if service.running else None)
    return service


def ordered_identities():
    """Two identities, the first with the larger PeerId (the chooser of a connection between them)."""
    x, y = Identity.generate(), Identity.generate()
    return (x, y) if x.peer_id > y.peer_id else (y, x)


def wait_for(predicate, timeout=10.0, interval=0.01):
    """Poll C{predicate} until true; fail after C{timeout} seconds."""
    deadline = reactor.seconds() + timeout

    @defer.inlineCallbacks
    def poll():
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"condition not met within {timeout} s: {predicate}")
            yield task.deferLater(reactor, interval, lambda: None)

    return poll()


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def connect_pair(testcase, a: Service, b: Service):
    ia = yield a.prepare_connection_info()
    ib = yield b.prepare_connection_info()
    peer = yield a.connect(ia, ib.public)
    yield wait_for(lambda: a.peer_id in b.peers.active)
    return peer
