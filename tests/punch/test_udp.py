"""
Tests for L{crust.punch.udp}: L{UdpPuncher} on fake endpoints joined by a
fake network on a L{Clock}.

The network delivers a datagram to the endpoint whose public address it is
sent to, after L{LATENCY}; an endpoint with C{filtering} (a NAT that
filters by address and port) takes datagrams only from addresses it has
sent to, as a port-restricted NAT does; extra sockets (birthday probing)
get random public ports of their node's IP, as a symmetric NAT gives.
"""

from __future__ import annotations

import functools
import os
import random
import time
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.candidates import Candidate, CandidateKind, MappingKind, NatBehaviour, NatInfo, PortAllocation
from crust.connection_info import PubConnectionInfo
from crust.identity import Identity, PeerId
from crust.punch import checks, predict, udp
from crust.punch.pacing import DEFAULT_INTERVAL, DEFAULT_WINDOW, SendBudget, SendRate
from crust.punch.plan import PunchPlan
from crust.punch.udp import PunchFailed, UdpPuncher
from crust.session.purpose import Purpose

LATENCY = 0.01
STEP = 0.001
ATTEMPT = bytes.fromhex("1122334455667788")
EIM = NatBehaviour(MappingKind.EIM)
SYMMETRIC = NatBehaviour(MappingKind.EDM, ports=PortAllocation.RANDOM)

_a, _b = Identity.from_seed(b"x" * 32), Identity.from_seed(b"y" * 32)
BIG, SMALL = (_a, _b) if _a.peer_id > _b.peer_id else (_b, _a)  # BIG controls a direct punch
OTHER = Identity.from_seed(b"z" * 32)


class FakeEndpoint:
    """A UDP socket behind (or without) a NAT, as the puncher sees it."""

    def __init__(self, net: "Network", public: Address, filtering: bool = False) -> None:
        self.net = net
        self.public = public
        self.filtering = filtering
        self.handlers: dict[int, Callable[[bytes, Any], None]] = {}
        self.sent: list[tuple[float, bytes, tuple[str, int]]] = []
        self.opened: set[tuple[str, int]] = set()  # destinations sent to: the NAT lets their answers in
        self.listening = True
        self.stopped = False
        self.deaf = False  # drops everything that comes in
        net.endpoints[public] = self

    def set_crust_handler(self, message_type: int, handler: Optional[Callable[[bytes, Any], None]]) -> None:
        if handler is None:
            self.handlers.pop(message_type, None)
        else:
            self.handlers[message_type] = handler

    def local_addresses(self) -> list[Address]:
        return [Address("udp", "10.0.0.1", self.public.port)]

    def send(self, datagram: bytes, addr: tuple[str, int]) -> bool:
        assert not self.stopped, "a stopped socket sends"
        self.sent.append((self.net.clock.seconds(), datagram, addr))
        self.opened.add(addr)
        self.net.carry(self, datagram, addr)
        return True

    def stop(self) -> Deferred:
        self.stopped = True
        self.listening = False
        return Deferred()

    def checks(self) -> list[tuple[float, tuple[str, int], int]]:
        """(time, destination, flags) of each CHECK sent."""
        return [(t, a, checks.decode(d).flags) for t, d, a in self.sent if d[0] == checks.CHECK]


class Network:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(500.0)
        self.endpoints: dict[Address, FakeEndpoint] = {}
        self.dropped = 0

    def carry(self, source: FakeEndpoint, datagram: bytes, addr: tuple[str, int]) -> None:
        target = self.endpoints.get(Address("udp", *addr))
        filtered = target is not None and target.filtering and source.public.sockaddr() not in target.opened
        if target is None or target.stopped or target.deaf or filtered:
            self.dropped += 1
            return
        self.clock.callLater(LATENCY, self._arrive, target, datagram, source.public.sockaddr())

    def _arrive(self, target: FakeEndpoint, datagram: bytes, source: tuple[str, int]) -> None:
        handler = target.handlers.get(datagram[0])
        if handler is not None and not target.stopped:
            handler(datagram, source)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / STEP)):
            self.clock.advance(STEP)


class Node:
    """One side: its puncher, its socket, and the QUIC dials it asked for."""

    def __init__(self, net: Network, identity: Identity, host: str, *, nat: NatBehaviour = NatBehaviour(),
                 filtering: bool = True, rate: Optional[SendRate] = None, seed: int = 1,
                 birthday_sockets: bool = False, port: int = 5000) -> None:
        """
        @param port: the public port of our socket toward the peer; the one
            we advertise is 5000 (a symmetric NAT maps each destination anew).
        """
        self.net = net
        self.identity = identity
        self.host = host
        self.nat = nat
        self.advertised = Address("udp", host, 5000)
        self.endpoint = FakeEndpoint(net, Address("udp", host, port), filtering)
        self.dials: list[tuple[Address, Any, Deferred]] = []
        self.sockets: list[FakeEndpoint] = []
        self._ports = random.Random(seed + 1000)
        self.puncher = UdpPuncher(self.endpoint, identity, net.clock, self.dial, lambda: self.nat, rate=rate,
                                  rng=random.Random(seed),
                                  open_socket=self.open_socket if birthday_sockets else None)

    def dial(self, address: Address, purpose: Purpose, peer: PeerId, socket: Any) -> Deferred:
        d: Deferred = Deferred()
        self.dials.append((address, socket, d))
        return d

    def open_socket(self) -> FakeEndpoint:
        while True:
            port = self._ports.randrange(1024, 65536)
            public = Address("udp", self.host, port)
            if public not in self.net.endpoints:
                break
        socket = FakeEndpoint(self.net, public, filtering=True)
        self.sockets.append(socket)
        return socket

    def info(self, nat: Optional[NatBehaviour] = None, extra: tuple[str, ...] = ()) -> PubConnectionInfo:
        cands = [Candidate(self.advertised, CandidateKind.SRFLX, "echo")]
        cands += [Candidate(Address.parse(a), CandidateKind.SRFLX, "echo") for a in extra]
        return PubConnectionInfo(self.identity.peer_id, candidates=tuple(cands),
                                 nat=NatInfo(udp=nat if nat is not None else self.nat))

    def punch(self, peer: "Node", start_at: float, *, attempt: bytes = ATTEMPT,
              info: Optional[PubConnectionInfo] = None) -> list[Any]:
        plan = PunchPlan(peer.identity.peer_id, attempt, info or peer.info(), start_at, via=OTHER.peer_id)
        results: list[Any] = []
        self.puncher.punch(plan, Purpose()).addBoth(results.append)
        return results


def failure_text(results: list[Any]) -> str:
    [failure] = results
    assert not isinstance(failure, (str, bytes)) and failure.check(PunchFailed), failure
    return str(failure.value)


class DirectPunchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Network()
        self.big = Node(self.net, BIG, "203.0.113.1")
        self.small = Node(self.net, SMALL, "203.0.113.2")
        self.start = self.net.clock.seconds() + 0.5

    def test_two_punchers_confirm_and_the_larger_id_dials_once(self):
        big_results = self.big.punch(self.small, self.start)
        small_results = self.small.punch(self.big, self.start + 0.004)  # about the same moment
        self.net.run(0.49)
        self.assertEqual((self.big.endpoint.sent, self.small.endpoint.sent), ([], []))  # not before start_at
        self.net.run(0.5)
        [(address, socket, d)] = self.big.dials
        self.assertEqual(address, self.small.endpoint.public)
        self.assertIsNone(socket)  # the node's own socket
        self.assertEqual(self.small.dials, [])
        self.assertEqual(self.big.puncher._runs[ATTEMPT].confirmed, [self.small.endpoint.public])
        self.assertGreater(self.net.dropped, 0)  # the first check hit a closed NAT
        self.net.run(1.0)  # more ACKs: still one dial
        self.assertEqual(len(self.big.dials), 1)
        conn = object()
        d.callback(conn)
        self.assertEqual(big_results, [conn])
        self.assertFalse(self.big.puncher.running(SMALL.peer_id))
        self.assertEqual(self.big.puncher.punched_from(self.small.endpoint.public), None)  # the run is over
        self.assertEqual(self.small.puncher.punched_from(self.big.endpoint.public), BIG.peer_id)
        self.small.puncher.stop(BIG.peer_id)  # the connection reached its peer table
        self.assertEqual(small_results, [])
        sent = len(self.big.endpoint.sent) + len(self.small.endpoint.sent)
        self.net.run(DEFAULT_WINDOW + 1)
        self.assertEqual(len(self.big.endpoint.sent) + len(self.small.endpoint.sent), sent)  # all quiet
        self.assertEqual(self.net.clock.getDelayedCalls(), [])

    def test_a_check_from_a_new_address_becomes_a_target(self):
        """The peer's NAT gave it another port: its check, from there, is answered and checked back."""
        other_port = FakeEndpoint(self.net, Address("udp", "203.0.113.2", 6111), filtering=False)
        self.big.endpoint.filtering = False
        info = self.small.info()
        results = self.big.punch(self.small, self.start, info=info)
        self.net.run(0.6)
        key = self.big.puncher._runs[ATTEMPT].key
        other_port.send(checks.encode_check(key, ATTEMPT, 1), self.big.endpoint.public.sockaddr())
        self.net.run(0.05)
        run = self.big.puncher._runs[ATTEMPT]
        self.assertIn(other_port.public, run.heard)
        self.assertIn(other_port.public, run.triggered)
        sent_there = [a for _, _, a in self.big.endpoint.sent if a == other_port.public.sockaddr()]
        self.assertGreaterEqual(len(sent_there), 2)  # the ACK and a triggered check
        self.assertEqual(results, [])

    def test_pacing_and_the_window(self):
        targets = ("udp:198.51.100.7:5000", "udp:198.51.100.8:5000", "udp:198.51.100.9:5000")
        results = self.big.punch(self.small, self.start, info=self.small.info(extra=targets))
        self.small.endpoint.stopped = True  # the peer never answers
        self.net.run(0.5 + DEFAULT_WINDOW - 0.05)
        self.assertEqual(results, [])
        self.net.run(0.1)
        sent = self.big.endpoint.checks()
        times = [t for t, _, _ in sent]
        self.assertGreater(len(sent), 4 * 10)
        self.assertGreaterEqual(min(b - a for a, b in zip(times, times[1:])), DEFAULT_INTERVAL - 1e-9)
        self.assertGreaterEqual(times[0], self.start)
        self.assertLess(times[-1], self.start + DEFAULT_WINDOW)
        self.assertEqual({a for _, a, _ in sent}, {self.small.endpoint.public.sockaddr()}
                         | {Address.parse(t).sockaddr() for t in targets})
        text = failure_text(results)
        self.assertIn(f"{len(sent)} checks to 4 address(es)", text)
        self.assertIn("in 10 s", text)
        self.assertIn("no check from the peer got through and none of ours was answered", text)
        self.assertEqual(self.big.puncher._runs, {})
        self.assertEqual(self.net.clock.getDelayedCalls(), [])

    def test_heard_but_not_answered(self):
        """The peer's checks arrive, nothing reaches the peer: the failure says so."""
        self.big.endpoint.filtering = False
        self.small.endpoint.deaf = True
        results = self.big.punch(self.small, self.start)
        small_results = self.small.punch(self.big, self.start)
        self.net.run(0.5 + DEFAULT_WINDOW + 0.1)
        self.assertEqual((self.big.dials, self.small.dials), ([], []))
        text = failure_text(results)
        self.assertIn(f"the peer's checks reached us (from {self.small.endpoint.public})", text)
        self.assertIn("ours never got an answer", text)
        self.assertIn("no check from the peer got through", failure_text(small_results))

    def test_both_symmetric_fails_at_once(self):
        self.big.nat = SYMMETRIC
        results = self.big.punch(self.small, self.start, info=self.small.info(SYMMETRIC))
        text = failure_text(results)
        self.assertIn("both behind symmetric NATs", text)
        self.assertIn("needs a relay", text)
        self.assertEqual(self.big.endpoint.sent, [])
        self.assertEqual(self.net.clock.getDelayedCalls(), [])

    def test_no_udp_candidate(self):
        info = PubConnectionInfo(SMALL.peer_id, (Address.parse("tcp:203.0.113.2:4242"),))
        results = self.big.punch(self.small, self.start, info=info)
        self.assertIn("no UDP candidate", failure_text(results))

    def test_a_second_caller_of_the_same_attempt_shares_the_outcome(self):
        first = self.big.punch(self.small, self.start)
        second = self.big.punch(self.small, self.start)
        self.small.punch(self.big, self.start)
        self.net.run(1.0)
        [(_, _, d)] = self.big.dials
        d.callback("conn")
        self.assertEqual((first, second), (["conn"], ["conn"]))

    def test_stop_all(self):
        results = self.big.punch(self.small, self.start)
        self.big.puncher.stop_all()
        self.assertIn("stopping", failure_text(results))
        self.assertEqual(self.net.clock.getDelayedCalls(), [])


class FloodTests(SynchronousTestCase):
    def test_flood_of_bad_checks_is_dropped_cheaply(self):
        net = Network()
        big, small = Node(net, BIG, "203.0.113.1"), Node(net, SMALL, "203.0.113.2")
        big.punch(small, net.clock.seconds() + 100)  # a run exists, not started: nothing of its own is sent
        deliver = big.endpoint.handlers[checks.CHECK]
        wrong_key = os.urandom(32)
        source = ("198.51.100.66", 4444)
        datagrams = []
        for i in range(10_000):
            kind = i % 3
            if kind == 0:
                datagrams.append(checks.encode_check(wrong_key, os.urandom(8), i))  # unknown attempt
            elif kind == 1:
                datagrams.append(checks.encode_check(wrong_key, ATTEMPT, i))  # our attempt, bad MAC
            else:
                datagrams.append(bytes([checks.CHECK]) + os.urandom(32))  # malformed
        started = time.process_time()
        for data in datagrams:
            deliver(data, source)
        spent = time.process_time() - started
        counters = big.puncher.counters
        self.assertEqual(counters["unknown_attempt"] + counters["bad_mac"] + counters["malformed"], 10_000)
        self.assertGreater(counters["unknown_attempt"], 3000)
        self.assertEqual(counters["bad_mac"], 3333)
        self.assertEqual(counters["checks_received"], 0)
        self.assertEqual(big.endpoint.sent, [])
        self.assertEqual(big.puncher._runs[ATTEMPT].heard, set())
        self.assertLess(spent, 2.0)


class BudgetTests(SynchronousTestCase):
    def test_node_rate_is_shared_across_attempts(self):
        net = Network()
        rate = SendRate(rate=20.0, burst=40)
        us = Node(net, BIG, "203.0.113.1", rate=rate)
        peers = [Node(net, ident, f"203.0.113.{i + 2}") for i, ident in enumerate((SMALL, OTHER))]
        start = net.clock.seconds() + 0.1
        extra = tuple(f"udp:198.51.100.{i}:5000" for i in range(1, 12))
        results = [us.punch(p, start, attempt=bytes([i + 1]) * 8, info=p.info(extra=extra))
                   for i, p in enumerate(peers)]
        for p in peers:
            p.endpoint.stopped = True
        net.run(0.1 + DEFAULT_WINDOW + 0.1)
        sent = len(us.endpoint.checks())
        self.assertLessEqual(sent, 40 + 20 * DEFAULT_WINDOW + 1)
        self.assertGreater(us.puncher.counters["budget_refused"], 0)
        self.assertEqual(us.puncher.counters["checks_sent"], sent)
        per_peer = {p.endpoint.public.sockaddr(): 0 for p in peers}
        for _, addr, _ in us.endpoint.checks():
            if addr in per_peer:
                per_peer[addr] += 1
        self.assertTrue(all(n > 0 for n in per_peer.values()), per_peer)  # both attempts got some
        for r in results:
            self.assertIsInstance(r[0].value, PunchFailed)

    def test_attempt_budget_exhausted(self):
        self.patch(udp, "SendBudget", functools.partial(SendBudget, max_packets=30))
        net = Network()
        us, peer = Node(net, BIG, "203.0.113.1"), Node(net, SMALL, "203.0.113.2")
        extra = tuple(f"udp:198.51.100.{i}:5000" for i in range(1, 12))
        results = us.punch(peer, net.clock.seconds(), info=peer.info(extra=extra))
        peer.endpoint.stopped = True
        net.run(DEFAULT_WINDOW + 0.1)
        self.assertEqual(len(us.endpoint.checks()), 30)
        self.assertGreater(us.puncher.counters["budget_refused"], 0)
        self.assertIn("(send budget exhausted)", failure_text(results))


class BirthdayTests(SynchronousTestCase):
    def test_easy_side_probes_random_ports_of_the_peer_ip(self):
        net = Network()
        easy = Node(net, SMALL, "203.0.113.1", nat=EIM)
        hard = Node(net, BIG, "198.51.100.2", nat=SYMMETRIC)
        hard.endpoint.stopped = True
        start = net.clock.seconds() + 0.1
        results = easy.punch(hard, start)
        net.run(0.1 + predict.BIRTHDAY_WINDOW + 0.1)
        probes = [(a, f) for _, a, f in easy.endpoint.checks() if f & checks.BIRTHDAY]
        ports = [port for (host, port), _ in probes]
        self.assertEqual(len(probes), predict.EASY_PROBES)
        self.assertEqual(len(set(ports)), len(ports))  # each port once
        self.assertEqual({host for (host, _), _ in probes}, {"198.51.100.2"})
        self.assertTrue(all(predict.PORT_LOW <= p <= predict.PORT_HIGH for p in ports))
        self.assertNotIn(5000, ports)  # the known port is checked the ordinary way
        self.assertLessEqual(len(easy.endpoint.checks()), 2000)
        text = failure_text(results)
        self.assertIn(f"birthday probing: {predict.EASY_PROBES} random ports", text)

    def test_easy_side_probes_within_the_node_rate(self):
        net = Network()
        easy = Node(net, SMALL, "203.0.113.1", nat=EIM, rate=SendRate(rate=50.0, burst=100))
        hard = Node(net, BIG, "198.51.100.2", nat=SYMMETRIC)
        hard.endpoint.stopped = True
        easy.punch(hard, net.clock.seconds())
        net.run(predict.BIRTHDAY_WINDOW + 0.1)
        self.assertLessEqual(len(easy.endpoint.checks()), 100 + 50 * predict.BIRTHDAY_WINDOW + 1)
        self.assertGreater(easy.puncher.counters["budget_refused"], 0)

    def test_hard_side_without_an_answer_closes_every_socket(self):
        net = Network()
        hard = Node(net, BIG, "198.51.100.2", nat=SYMMETRIC, birthday_sockets=True)
        easy = Node(net, SMALL, "203.0.113.1", nat=EIM)
        easy.endpoint.stopped = True
        results = hard.punch(easy, net.clock.seconds())
        net.run(predict.BIRTHDAY_WINDOW + 0.1)
        self.assertEqual(len(hard.sockets), predict.HARD_SOCKETS)
        self.assertTrue(all(s.stopped for s in hard.sockets))
        for socket in hard.sockets:
            sent = socket.checks()
            self.assertEqual(len(sent), 1 + predict.HARD_RETRIES)
            self.assertEqual({a for _, a, _ in sent}, {easy.endpoint.public.sockaddr()})
        self.assertIn(f"from {predict.HARD_SOCKETS} extra sockets", failure_text(results))

    def test_birthday_meets(self):
        """Both halves against each other: a probe finds a socket; that socket carries QUIC, the rest close."""
        net = Network()
        hard = Node(net, BIG, "198.51.100.2", nat=SYMMETRIC, birthday_sockets=True, seed=7, port=40000)
        easy = Node(net, SMALL, "203.0.113.1", nat=EIM, seed=8)
        start = net.clock.seconds() + 0.1
        hard_results = hard.punch(easy, start)
        easy_results = easy.punch(hard, start)
        waited = 0.0
        while not hard.dials and waited < predict.BIRTHDAY_WINDOW:
            net.run(0.1)
            waited += 0.1
        self.assertEqual(len(hard.dials), 1, "no probe met a socket")
        [(address, socket, d)] = hard.dials
        self.assertEqual(address, easy.endpoint.public)
        self.assertIn(socket, hard.sockets)
        self.assertEqual(easy.dials, [])  # the hard side controls a birthday punch
        self.assertLessEqual(len(hard.sockets), predict.HARD_SOCKETS)
        d.callback("quic")
        self.assertEqual(hard_results, ["quic"])
        self.assertFalse(socket.stopped)
        self.assertTrue(all(s.stopped for s in hard.sockets if s is not socket))
        easy.puncher.stop(BIG.peer_id)
        self.assertEqual(easy_results, [])
        net.run(1.0)
        self.assertEqual(net.clock.getDelayedCalls(), [])

    def test_a_socket_of_one_run_that_hears_another_runs_check_stays_with_the_connection(self):
        """
        Both sides paste: two exchanges, two runs to the same peer, each
        with its own extra sockets.  A check of the first run reaching a
        socket of the second makes the first dial on it: when the second
        run ends, that socket must stay open for the connection.
        """
        net = Network()
        hard = Node(net, BIG, "198.51.100.2", nat=SYMMETRIC, birthday_sockets=True, seed=7, port=40000)
        easy = Node(net, SMALL, "203.0.113.1", nat=EIM, seed=8)
        start = net.clock.seconds() + 0.1
        other = bytes.fromhex("99aabbccddeeff00")
        hard.punch(easy, start)
        hard.punch(easy, start, attempt=other)
        net.run(0.5)
        first, second = hard.puncher._runs[ATTEMPT], hard.puncher._runs[other]
        self.assertTrue(second.sockets)
        socket = next(iter(second.sockets.values()))
        check = checks.encode_check(first.key, ATTEMPT, 1, checks.BIRTHDAY)
        hard.puncher.datagram_received(check, easy.endpoint.public.sockaddr(), socket)
        [(address, dialled_on, d)] = [dial for dial in hard.dials if dial[1] is socket]
        hard.puncher.stop(SMALL.peer_id)  # the connection became active: both runs end
        self.assertFalse(socket.stopped)
        self.assertTrue(all(s.stopped for s in hard.sockets if s is not socket))

    def test_dials_still_running_are_cancelled_when_the_run_ends(self):
        """A second dial left running would connect again later: after the first connection, or after a disconnect."""
        net = Network()
        big, small = Node(net, BIG, "203.0.113.1"), Node(net, SMALL, "203.0.113.2")
        start = net.clock.seconds() + 0.1
        results = big.punch(small, start)
        small.punch(big, start)
        net.run(1.0)
        [(address, socket, first)] = big.dials
        big.puncher._runs[ATTEMPT]._nominate(Address("udp", "203.0.113.2", 6000), None)  # another pair confirmed
        [_, (_, _, second)] = big.dials
        first.callback("quic")
        self.assertEqual(results, ["quic"])
        self.assertTrue(second.called)  # cancelled
        # stopped from outside (the connection became active first): the same
        results = big.punch(small, net.clock.seconds(), attempt=b"\x01" * 8)
        small.punch(big, net.clock.seconds(), attempt=b"\x01" * 8)
        net.run(1.0)
        [(_, _, third)] = big.dials[2:]
        big.puncher.stop(SMALL.peer_id)
        self.assertTrue(third.called)
        self.assertEqual(results, [])


class BirthdayWinnerTests(SynchronousTestCase):
    def test_punch_ended_from_outside_keeps_the_socket_that_carries_the_connection(self):
        """
        The connection may reach the peer table (and the connect end the punch)
        before the dial's Deferred fires: the socket it runs on stays open.
        """
        net = Network()
        hard = Node(net, BIG, "198.51.100.2", nat=SYMMETRIC, birthday_sockets=True, seed=7, port=40000)
        easy = Node(net, SMALL, "203.0.113.1", nat=EIM, seed=8)
        start = net.clock.seconds() + 0.1
        hard.punch(easy, start)
        easy.punch(hard, start)
        waited = 0.0
        while not hard.dials and waited < predict.BIRTHDAY_WINDOW:
            net.run(0.1)
            waited += 0.1
        [(address, socket, d)] = hard.dials
        hard.puncher.stop(SMALL.peer_id)  # connected: the punch ends before its dial fired
        self.assertFalse(socket.stopped, "the socket carrying the QUIC connection was closed")
        self.assertTrue(all(s.stopped for s in hard.sockets if s is not socket))
        d.callback("quic")  # late: nothing more happens
        self.assertFalse(socket.stopped)
