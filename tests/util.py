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


# -- processes with their own crust nodes (data directories) -------------------------------------

#: A node's config file for a process that must talk to loopback only.
LOOPBACK_NODE_CONFIG = {"network_name": "crust-tests", "listen_host": LOOPBACK, "enable_service_discovery": False,
                        "enable_port_mapping": False}


class Processes:
    """
    Programs run in processes of their own (Python, with this checkout's
    crust first on the path), their output kept in files; stopped (SIGTERM,
    then SIGKILL) at the test's cleanup.
    """

    def __init__(self, testcase, directory: str) -> None:
        self.dir = directory
        self.procs: list = []
        testcase.addCleanup(self.stop_all)

    def start(self, *argv: str):
        import os
        import subprocess
        import sys
        from pathlib import Path

        log = open(os.path.join(self.dir, f"out-{len(self.procs)}.txt"), "w+")
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=root)
        proc = subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        self.procs.append((proc, log))
        return proc, log

    @staticmethod
    def output(log) -> str:
        log.seek(0)
        return log.read()

    def stop_all(self) -> None:
        import signal
        import subprocess

        for proc, log in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            log.close()


def make_node_dir(path: str, **config) -> str:
    """A node data directory with a config file for loopback only (plus C{config}); returns C{path}."""
    import json
    import os

    os.makedirs(path, 0o700, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**LOOPBACK_NODE_CONFIG, **config}, f)
    return path


def node_contact(path: str) -> dict:
    """The running node of data directory C{path} as a contact (its peer id and TCP address, from node.json)."""
    import json
    import os

    with open(os.path.join(path, "node.json")) as f:
        state = json.load(f)
    tcp = [a for a in state["listen_addresses"] if a.startswith("tcp:")][0]
    return {"peer_id": state["peer_id"], "address": tcp}


def never_answer(case) -> None:
    """
    For the rest of test C{case}, no connection answers a HEARTBEAT that asks
    for one (doc/protocol.md section 5): a peer with a long heartbeat
    interval is then silent, as a peer gone away is.
    """
    from crust.session import connection
    from crust.wire import FrameType

    handlers = dict(connection._CONTROL_HANDLERS)
    handlers[FrameType.HEARTBEAT] = lambda conn, payload: None
    case.patch(connection, "_CONTROL_HANDLERS", handlers)
