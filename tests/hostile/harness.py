"""
What every hostile-traffic test does: start a node, start an attack on it
from another process, and while it runs have a legitimate peer connect and
time its round trips, and the node connect out over QUIC; then measure what
the attack cost the node.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from twisted.internet import defer, protocol, reactor

from crust.observer import CrustObserver
from tests.util import make_service, sleep, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: What the legitimate peer must see while an attack runs.
CONNECT_WITHIN = 1.0  # seconds from connect() to connected
RTT_UNDER = 0.100  # seconds for a message to the node and back
ROUND_TRIPS = 10
RSS_GROWTH_UNDER = 48 << 20  # bytes the test process may grow by over an attack (a leak of state grows far more)


def rss() -> int:
    """This process's resident memory, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Echo(CrustObserver):
    """The node sends every message back to whoever sent it."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def new_message(self, peer_id: Any, data: bytes) -> None:
        self.service.send(peer_id, data, 0)


class Replies(CrustObserver):
    def __init__(self) -> None:
        self.waiting: dict[bytes, defer.Deferred] = {}

    def new_message(self, peer_id: Any, data: bytes) -> None:
        d = self.waiting.pop(data, None)
        if d is not None:
            d.callback(time.perf_counter())


class Attacker(protocol.ProcessProtocol):
    """The attack process: fires C{ready} when it starts sending, C{done} with its figures when it exits."""

    def __init__(self) -> None:
        self.ready: defer.Deferred = defer.Deferred()
        self.done: defer.Deferred = defer.Deferred()
        self.out = b""
        self.err = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if not self.ready.called and b"ready\n" in self.out:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        lines = [line for line in self.out.decode().splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {"error": self.err.decode()[-2000:]}
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"the attacker did not start: {self.err.decode()[-2000:]}"))
        self.done.callback(result)


def start_attacker(testcase: Any, kind: str, host: str, port: int, seconds: float,
                   rate: Optional[float] = None) -> Attacker:
    attacker = Attacker()
    args = [sys.executable, "-m", "tests.hostile.attacker", kind, host, str(port), str(seconds)]
    if rate is not None:
        args.append(str(rate))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    transport = reactor.spawnProcess(attacker, sys.executable, args, env=env, path=ROOT)

    def stop() -> Any:
        if not attacker.done.called:
            try:
                transport.signalProcess("KILL")
            except Exception:
                pass
        return attacker.done

    testcase.addCleanup(stop)
    return attacker


@dataclass
class Figures:
    """What one attack cost: the legitimate peer's view and the node's."""

    attack: dict[str, Any] = field(default_factory=dict)
    connect: float = 0.0
    rtts: list[float] = field(default_factory=list)
    own_connect: Optional[float] = None
    cpu_share: float = 0.0  # of one core, this process, while the peer connected and talked
    rss_growth: int = 0

    def summary(self) -> str:
        rtts = sorted(self.rtts)
        own = f", own QUIC connect {self.own_connect * 1000:.0f} ms" if self.own_connect is not None else ""
        return (f"connect {self.connect * 1000:.0f} ms, RTT median {rtts[len(rtts) // 2] * 1000:.1f} ms "
                f"max {rtts[-1] * 1000:.1f} ms{own}, CPU {self.cpu_share:.0%} of a core, "
                f"RSS +{self.rss_growth / 1e6:.1f} MB; attack {self.attack}")


@defer.inlineCallbacks
def under_attack(testcase: Any, kind: str, *, target: str, seconds: float = 4.0, rate: Optional[float] = None,
                 legit: str = "tcp", own_quic: bool = False, node_config: Optional[dict] = None):
    """
    Run attack C{kind} at the node's C{target} port (C{"tcp"} or C{"udp"})
    for C{seconds}; meanwhile a fresh peer connects over C{legit} (C{"tcp"}
    or C{"udp"}: QUIC) and times L{ROUND_TRIPS} round trips, and with
    C{own_quic} the node connects out over QUIC.  Returns (node, L{Figures}).
    """
    node = make_service(testcase, **(node_config or {}))
    node.add_observer(Echo(node))
    info = yield node.prepare_connection_info()
    port = [a for a in info.public.addresses if a.transport == target][0].port
    other = None
    if own_quic:
        other = make_service(testcase, enable_tcp=False)
        other_info = yield other.prepare_connection_info()
    peer = make_service(testcase, enable_tcp=legit == "tcp", enable_udp=legit == "udp")
    replies = Replies()
    peer.add_observer(replies)
    yield peer.prepare_connection_info()
    figures = Figures()
    before = rss()
    attacker = start_attacker(testcase, kind, "127.0.0.1", port, seconds, rate)
    yield attacker.ready
    yield sleep(min(1.0, seconds / 4))  # the attack is under way
    cpu, wall = time.process_time(), time.perf_counter()
    start = time.perf_counter()
    yield peer.connect(info.public)
    figures.connect = time.perf_counter() - start
    yield wait_for(lambda: peer.peer_id in node.peers.active, timeout=5)
    for i in range(ROUND_TRIPS):
        message = b"ping %d" % i
        d = replies.waiting[message] = defer.Deferred()
        sent = time.perf_counter()
        peer.send(node.peer_id, message, 0)
        back = yield d
        figures.rtts.append(back - sent)
        yield sleep(0.05)
    if other is not None:
        start = time.perf_counter()
        yield node.connect(other_info.public)
        figures.own_connect = time.perf_counter() - start
    figures.cpu_share = (time.process_time() - cpu) / (time.perf_counter() - wall)
    figures.attack = yield attacker.done
    figures.rss_growth = rss() - before
    print(f"\n    {kind}: {figures.summary()}")
    return node, figures


def check(testcase: Any, figures: Figures) -> None:
    """The legitimate peer's view held during the attack, and memory stayed bounded."""
    testcase.assertNotIn("error", figures.attack, figures.attack)
    testcase.assertLess(figures.connect, CONNECT_WITHIN, figures.summary())
    testcase.assertEqual(len(figures.rtts), ROUND_TRIPS)
    testcase.assertLess(max(figures.rtts), RTT_UNDER, figures.summary())
    if figures.own_connect is not None:
        testcase.assertLess(figures.own_connect, CONNECT_WITHIN, figures.summary())
    testcase.assertLess(figures.rss_growth, RSS_GROWTH_UNDER, figures.summary())


__all__ = ["Figures", "check", "rss", "sleep", "start_attacker", "under_attack", "wait_for"]
