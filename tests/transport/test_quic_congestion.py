"""
crust's QUIC congestion controller (crust.transport.quic.congestion): driven with
synthetic QuicSentPacket sequences through a simulated path, the way
aioquic's QuicPacketRecovery calls it; and over real QUIC between two crust
Services on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import heapq
import random

from aioquic.quic.congestion.base import create_congestion_control, register_congestion_control
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.tls import Epoch
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from crust.errors import ConfigError
from crust.transport.quic.dispatcher import QuicOptions
from crust.transport.quic.congestion import (
    DRAIN,
    NAME,
    PROBE_BW,
    PROBE_RTT,
    STARTUP,
    CrustBbr,
    CrustPacer,
    install_pacer,
)

from tests.util import connect_pair, make_service, wait_for

MDS = 1200


def packet(number: int, now: float, size: int = MDS) -> QuicSentPacket:
    return QuicSentPacket(epoch=Epoch.ONE_RTT, in_flight=True, is_ack_eliciting=True, is_crypto_packet=False,
                          packet_number=number, packet_type=QuicPacketType.ONE_RTT, sent_time=now,
                          sent_bytes=size)


class Path:
    """
    A simulated path driving a controller as aioquic's recovery does: per ACK
    (one per C{ack_every} seconds), C{on_packet_acked} for each packet, then
    C{on_rtt_measurement}, then C{on_packets_lost}, then the pacer's
    C{update_rate}.  A bottleneck of C{rate} bytes/s with a drop-tail queue
    of C{buffer} bytes, C{rtt} seconds of propagation delay, random loss.
    The sender sends whenever the window, the pacer and C{has_data(now)}
    allow.  Lost packets are declared lost when a later packet's ACK arrives.
    """

    def __init__(self, rate=5e6, rtt=0.04, loss=0.0, buffer=None, seed=1, cc=None, pace=True,
                 ack_every=0.001) -> None:
        self.rate = rate
        self.rtt = rtt
        self.loss = loss
        self.buffer = buffer if buffer is not None else int(rate * rtt * 4)
        self.rng = random.Random(seed)
        self.cc = cc if cc is not None else CrustBbr(max_datagram_size=MDS, rng=random.Random(seed))
        self.pacer = CrustPacer(self.cc, max_datagram_size=MDS) if pace and isinstance(self.cc, CrustBbr) else None
        self.tick = ack_every
        self.now = 0.0
        self.number = 0
        self.link_free = 0.0
        self.last_ack = 0.0
        self.events: list = []  # (time, number, kind, packet)
        self.srtt = None
        self.delivered = 0
        self.sent = 0
        self.lost = 0
        self.has_data = lambda now: True
        self.trace: list = []

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        cc = self.cc
        while self.now < end:
            self.now += self.tick
            now = self.now
            acked, lost = [], []
            events = self.events
            while events and events[0][0] <= now:
                _, _, kind, p = heapq.heappop(events)
                (acked if kind == "ack" else lost).append(p)
            if acked:
                for p in acked:
                    cc.on_packet_acked(now=now, packet=p)
                    self.delivered += p.sent_bytes
                sample = now - acked[-1].sent_time
                self.srtt = sample if self.srtt is None else 7 / 8 * self.srtt + sample / 8
                cc.on_rtt_measurement(now=now, rtt=sample)
                if self.pacer is not None:
                    self.pacer.update_rate(congestion_window=cc.congestion_window, smoothed_rtt=self.srtt)
            if lost:
                cc.on_packets_lost(now=now, packets=lost)
                self.lost += len(lost)
                if self.pacer is not None and self.srtt is not None:
                    self.pacer.update_rate(congestion_window=cc.congestion_window, smoothed_rtt=self.srtt)
            self._send(now)
            self.trace.append((now, cc.congestion_window, cc.bytes_in_flight))

    def _send(self, now: float) -> None:
        cc = self.cc
        pacer = self.pacer
        while cc.congestion_window - cc.bytes_in_flight >= MDS and self.has_data(now):
            if pacer is not None and pacer.next_send_time(now) is not None:
                return
            self.send_one(now)
            if pacer is not None:
                pacer.update_after_send(now)

    def send_one(self, now: float) -> QuicSentPacket:
        self.number += 1
        p = packet(self.number, now)
        self.cc.on_packet_sent(packet=p)
        self.sent += 1
        queued = max(0.0, self.link_free - now) * self.rate
        if self.rng.random() < self.loss or queued + MDS > self.buffer:
            # declared lost once the packets after it are acknowledged
            heapq.heappush(self.events, (max(now, self.link_free) + self.rtt + 0.002, self.number, "lost", p))
        else:
            self.link_free = max(now, self.link_free) + MDS / self.rate
            self.last_ack = max(self.link_free + self.rtt, self.last_ack)  # in order, when the RTT changes too
            heapq.heappush(self.events, (self.last_ack, self.number, "ack", p))
        return p

    def goodput(self, seconds: float, run=None) -> float:
        before = self.delivered
        self.run(seconds)
        return (self.delivered - before) / seconds

    @property
    def bdp(self) -> float:
        return self.rate * self.rtt


class ControllerTests(TestCase):
    def assertNear(self, value, expected, delta):
        self.assertLessEqual(abs(value - expected), delta, f"{value} is not within {delta} of {expected}")

    def test_registered_and_default(self):
        self.assertIsInstance(create_congestion_control(NAME, max_datagram_size=MDS), CrustBbr)
        register_congestion_control(NAME, CrustBbr)  # what importing does: again is harmless
        self.assertIsInstance(create_congestion_control("crust-bbr", max_datagram_size=MDS), CrustBbr)
        self.assertEqual(QuicOptions().congestion_control, "crust-bbr")
        self.assertEqual(QuicOptions().configuration_options()["congestion_control"], "crust-bbr")
        for name in ("reno", "cubic", "crust-bbr"):
            QuicOptions(congestion_control=name)
        e = self.assertRaises(ConfigError, QuicOptions, congestion_control="bbr")
        self.assertIn("crust-bbr, reno, cubic", str(e))

    def test_startup_doubles_then_settles_at_the_bottleneck(self):
        path = Path(rate=5e6, rtt=0.04)
        cc = path.cc
        self.assertEqual(cc.congestion_window, 10 * MDS)
        windows = []
        for _ in range(6):
            path.run(0.042)
            windows.append(cc.congestion_window)
        self.assertEqual(cc.state, STARTUP)
        for before, after in zip(windows[1:], windows[2:5]):
            self.assertGreaterEqual(after, 1.7 * before)  # about doubling per round trip
        path.run(2.0)
        self.assertTrue(cc.filled_pipe)
        self.assertEqual(cc.state, PROBE_BW)
        self.assertNear(cc.btlbw / path.rate, 1.0, 0.1)
        self.assertNear(cc.min_rtt, path.rtt, 0.003)
        self.assertGreater(path.goodput(2.0), 0.9 * path.rate)
        # probe-bw keeps about one BDP in flight: the queue stays small
        queue_delay = max(0.0, path.link_free - path.now)
        self.assertLess(queue_delay, 0.5 * path.rtt)

    def test_one_percent_random_loss_keeps_the_model(self):
        path = Path(rate=5e6, rtt=0.04, loss=0.01, seed=3)
        cc = path.cc
        path.run(1.5)
        self.assertEqual(cc.state, PROBE_BW)
        windows = []
        for _ in range(20):
            path.run(0.1)
            windows.append(cc.congestion_window)
        goodput = path.goodput(3.0)
        self.assertGreater(path.lost, 50)
        self.assertGreater(goodput, 0.85 * path.rate)  # Reno here: ~ MSS/RTT x 1.22/sqrt(p) = 0.37 MB/s
        self.assertNear(cc.btlbw / path.rate, 1.0, 0.15)
        for w in windows:
            self.assertGreater(w, 1.5 * path.bdp)
            self.assertLess(w, 3 * path.bdp)
        self.assertIsNone(cc.inflight_cap)

    def test_reno_under_the_same_loss(self):
        """The reason for all this: the same path with aioquic's Reno."""
        path = Path(rate=5e6, rtt=0.04, loss=0.01, seed=3, cc=RenoCongestionControl(max_datagram_size=MDS))
        path.run(1.5)
        self.assertLess(path.goodput(3.0), 0.25 * path.rate)

    def test_isolated_loss_does_not_halve(self):
        path = Path(rate=5e6, rtt=0.04)
        cc = path.cc
        path.run(2.0)
        self.assertEqual(cc.state, PROBE_BW)
        before = cc.congestion_window
        rate_before = cc.pacing_rate
        p = path.send_one(path.now)
        path.events.remove(next(e for e in path.events if e[3] is p))
        heapq.heapify(path.events)
        cc.on_packets_lost(now=path.now + 0.05, packets=[p])
        self.assertEqual(cc.congestion_window, before)
        path.run(0.5)
        self.assertGreaterEqual(cc.congestion_window, 0.9 * before)
        self.assertGreaterEqual(cc.pacing_rate, 0.7 * rate_before)  # the gain cycle may be in its 0.75 phase

    def test_app_limited_samples_do_not_lower_the_estimate(self):
        path = Path(rate=5e6, rtt=0.04)
        cc = path.cc
        path.run(2.0)
        bw = cc.btlbw
        self.assertNear(bw / path.rate, 1.0, 0.1)
        # a trickle: one packet every 20 ms for 4 s (100 round trips)
        last = [0.0]

        def trickle(now):
            if now - last[0] >= 0.02:
                last[0] = now
                return True
            return False

        path.has_data = trickle
        path.run(4.0)
        self.assertGreater(cc._round_count, 50)
        self.assertGreaterEqual(cc.btlbw, 0.95 * bw)
        self.assertLess(cc.last_sample, 0.1 * bw)  # the samples were low, and ignored
        # back to bulk: full rate at once, no new startup needed
        path.has_data = lambda now: True
        self.assertGreater(path.goodput(0.5), 0.8 * path.rate)

    def test_app_limited_handshake_does_not_end_startup(self):
        path = Path(rate=5e6, rtt=0.04)
        cc = path.cc
        count = [0]

        def handshake(now):  # a few small messages, one per round trip
            if count[0] < 10 and now >= count[0] * 0.045:
                count[0] += 1
                return True
            return False

        path.has_data = handshake
        path.run(0.6)
        self.assertEqual(cc.state, STARTUP)
        self.assertFalse(cc.filled_pipe)
        path.has_data = lambda now: True
        path.run(1.5)
        self.assertNear(cc.btlbw / path.rate, 1.0, 0.1)

    def test_min_rtt_follows_the_path(self):
        path = Path(rate=2e6, rtt=0.04)
        cc = path.cc
        path.run(2.0)
        self.assertNear(cc.min_rtt, 0.04, 0.003)
        path.rtt = 0.02  # a shorter route: seen at once (through the queue BBR keeps), exactly in probe-rtt
        path.run(0.5)
        self.assertLess(cc.min_rtt, 0.039)
        states = set()
        for _ in range(120):
            path.run(0.1)
            states.add(cc.state)
        self.assertIn(PROBE_RTT, states)
        self.assertNear(cc.min_rtt, 0.02, 0.003)
        path.rtt = 0.06  # a longer one: taken when the 10 s window expires (probe-rtt)
        for _ in range(120):
            path.run(0.1)
        self.assertNear(cc.min_rtt, 0.06, 0.005)
        self.assertEqual(cc.state, PROBE_BW)
        self.assertGreater(path.goodput(1.0), 0.85 * path.rate)
        # what probe-bw keeps in flight is bounded by 2 x BDP: at most one BDP of queue
        self.assertLess(max(inflight for _, _, inflight in path.trace[-1000:]), 2.2 * path.bdp)

    def test_rtt_samples_at_or_below_zero_are_ignored(self):
        # a send time ahead of the receive clock (seen with crust's driver) gives such samples
        path = Path(rate=2e6, rtt=0.02)
        cc = path.cc
        path.run(1.0)
        for rtt in (0.0, -0.004):
            cc.on_rtt_measurement(now=path.now, rtt=rtt)
            self.assertNear(cc.min_rtt, 0.02, 0.003)
        self.assertGreater(cc.congestion_window, path.bdp)

    def test_heavy_loss_caps_inflight(self):
        path = Path(rate=5e6, rtt=0.04, loss=0.3, seed=5)
        cc = path.cc
        path.run(3.0)
        self.assertIsNotNone(cc.inflight_cap)
        self.assertTrue(cc.filled_pipe)  # high loss ends startup
        self.assertNotEqual(cc.state, STARTUP)
        self.assertLessEqual(cc.congestion_window, cc.inflight_cap)
        self.assertLess(cc.congestion_window, path.bdp)
        # the loss goes away: the cap grows and is dropped
        path.loss = 0.0
        path.run(4.0)
        self.assertIsNone(cc.inflight_cap)
        self.assertGreater(path.goodput(1.0), 0.85 * path.rate)

    def test_shallow_buffer_congestion_is_bounded(self):
        # A real bottleneck with a small queue (a quarter of a BDP): the probe
        # phases overflow it; loss stays well below the heavy-loss threshold.
        path = Path(rate=5e6, rtt=0.04, buffer=int(5e6 * 0.04 / 4))
        path.run(5.0)
        sent, lost = path.sent, path.lost
        goodput = path.goodput(5.0)
        self.assertGreater(goodput, 0.9 * path.rate)
        self.assertLess((path.lost - lost) / (path.sent - sent), 0.05)

    def test_persistent_congestion_restarts_from_the_minimum(self):
        path = Path(rate=5e6, rtt=0.04)
        cc = path.cc
        path.run(2.0)
        # an outage: nothing arrives for 1 s, then everything in flight is lost
        outage = path.events
        path.events = []
        cc.on_packets_lost(now=path.now + 1.0, packets=[e[3] for e in sorted(outage)])
        cc.on_persistent_congestion()
        path.now += 1.0
        self.assertEqual(cc.bytes_in_flight, 0)
        self.assertEqual(cc.congestion_window, 4 * MDS)
        self.assertEqual(cc.state, STARTUP)
        self.assertEqual(cc.btlbw, 0)
        path.link_free = path.now
        path.run(1.0)
        self.assertNear(cc.btlbw / path.rate, 1.0, 0.1)
        self.assertGreater(path.goodput(1.0), 0.85 * path.rate)

    def test_drain_follows_startup(self):
        path = Path(rate=5e6, rtt=0.04)
        cc = path.cc
        states = []
        for _ in range(200):
            path.run(0.005)
            if not states or states[-1] != cc.state:
                states.append(cc.state)
        self.assertEqual(states[:3], [STARTUP, DRAIN, PROBE_BW])

    def test_bytes_in_flight_bookkeeping(self):
        """Every packet acknowledged, lost or expired: back to 0, as with Reno."""
        rng = random.Random(7)
        bbr, reno = CrustBbr(max_datagram_size=MDS), RenoCongestionControl(max_datagram_size=MDS)
        now, number = 0.0, 0
        outstanding: list = []
        for step in range(3000):
            now += 0.001
            for _ in range(rng.randrange(4)):
                number += 1
                p = packet(number, now, rng.choice((MDS, 300, 52)))
                bbr.on_packet_sent(packet=p)
                reno.on_packet_sent(packet=p)
                outstanding.append(p)
            rng.shuffle(outstanding)
            take = rng.randrange(len(outstanding) + 1) if outstanding else 0
            batch, outstanding = outstanding[:take], outstanding[take:]
            batch.sort(key=lambda p: p.packet_number)
            fate = rng.random()
            if fate < 0.7:
                for p in batch:
                    bbr.on_packet_acked(now=now, packet=p)
                    reno.on_packet_acked(now=now, packet=p)
                if batch:
                    bbr.on_rtt_measurement(now=now, rtt=now - batch[-1].sent_time + 0.01)
                    reno.on_rtt_measurement(now=now, rtt=now - batch[-1].sent_time + 0.01)
            elif fate < 0.9:
                bbr.on_packets_lost(now=now, packets=batch)
                reno.on_packets_lost(now=now, packets=batch)
            else:
                bbr.on_packets_expired(packets=batch)
                reno.on_packets_expired(packets=batch)
            if step == 1500:
                bbr.on_persistent_congestion()
            self.assertEqual(bbr.bytes_in_flight, reno.bytes_in_flight)
            self.assertGreaterEqual(bbr.congestion_window, 4 * MDS)
        for p in outstanding:
            bbr.on_packet_acked(now=now, packet=p)
        self.assertEqual(bbr.bytes_in_flight, 0)
        bbr.get_log_data()

    def test_pacer_paces_at_the_model_rate(self):
        path = Path(rate=5e6, rtt=0.04)
        cc = path.cc
        path.run(2.0)
        pacer = path.pacer
        pacer.update_rate(congestion_window=cc.congestion_window, smoothed_rtt=path.srtt)
        self.assertNear(pacer.packet_time, MDS / cc.pacing_rate, 1e-7)
        self.assertNear(cc.pacing_rate / (cc.pacing_gain * cc.btlbw), 1.0, 1e-6)
        # aioquic's own pacer would pace at cwnd / srtt, about twice as fast
        self.assertGreater(cc.congestion_window / path.srtt, 1.5 * cc.btlbw)

    def test_install_pacer(self):
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection

        for algorithm, installed in (("crust-bbr", True), ("reno", False)):
            quic = QuicConnection(configuration=QuicConfiguration(is_client=True,
                                                                  congestion_control_algorithm=algorithm))
            self.assertEqual(install_pacer(quic._loss), installed)
            self.assertEqual(isinstance(quic._loss._pacer, CrustPacer), installed)
            self.assertFalse(install_pacer(quic._loss))  # once


class ServiceTests(TestCase):
    """crust-bbr between two Services over real QUIC (127.0.0.1)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_eight_mebibytes_intact(self):
        a = make_service(self, enable_tcp=False)
        b = make_service(self, enable_tcp=False)
        peer = yield connect_pair(self, a, b)
        driver = a.peers.active[peer].transport.driver
        self.assertIsInstance(driver.quic._loss._cc, CrustBbr)
        self.assertIsInstance(driver.quic._loss._pacer, CrustPacer)
        rng = random.Random(5)
        sent = hashlib.sha256()
        total, size = 8 << 20, 64 * 1024
        for _ in range(total // size):
            if a.queued_bytes(peer) > 4_000_000:
                yield a.when_writable(peer)
            data = rng.randbytes(size)
            sent.update(data)
            a.send(peer, data, 2)
        yield wait_for(lambda: len(b.events.named("new_message")) >= total // size, timeout=40)
        got = hashlib.sha256()
        for _, data in b.events.named("new_message"):
            got.update(data)
        self.assertEqual(got.hexdigest(), sent.hexdigest())
        cc = driver.quic._loss._cc
        self.assertGreater(cc.btlbw, 0)
        self.assertLess(cc.min_rtt, 0.1)
        self.assertEqual(cc.bytes_in_flight, driver.quic._loss.bytes_in_flight)
