"""
crust's QUIC congestion controller, C{crust-bbr}: a model-based controller
after BBR v1 (draft-cardwell-iccrg-bbr-congestion-control-00, with delivery
rate sampling from draft-cheng-iccrg-delivery-rate-estimation), for
aioquic's C{QuicPacketRecovery}.  Pure logic: no I/O, no clock of its own.

It estimates the bottleneck bandwidth (windowed max of delivery-rate samples
over 10 round trips) and the round-trip propagation time (windowed min over
10 s), paces at C{gain x bandwidth} and bounds what is in flight to
C{2 x bandwidth x min RTT}.  Random loss does not shrink the model; only a
round trip losing more than 20 % of its packets caps what is in flight
(BBR v2 style), and persistent congestion restarts the model.

aioquic paces at C{congestion_window / smoothed_rtt}; L{install_pacer}
replaces a connection's pacer with L{CrustPacer}, which paces at the
controller's own rate.  Importing this module registers the controller
under L{NAME} (idempotent).  Design and measurements: doc/quic.md section 11.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any, Optional

from aioquic.quic.congestion.base import K_INITIAL_WINDOW, QuicCongestionControl, register_congestion_control
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer

NAME = "crust-bbr"

STARTUP, DRAIN, PROBE_BW, PROBE_RTT = "startup", "drain", "probe_bw", "probe_rtt"

HIGH_GAIN = 2 / math.log(2)  # 2.885: doubles the sending rate every round trip
DRAIN_GAIN = 1 / HIGH_GAIN
CWND_GAIN = 2.0
PACING_CYCLE = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
BW_FILTER_ROUNDS = 10
MIN_RTT_WINDOW = 10.0  # seconds
PROBE_RTT_DURATION = 0.2  # seconds
FULL_BW_GROWTH = 1.25
FULL_BW_ROUNDS = 3
MIN_CWND_PACKETS = 4
HEAVY_LOSS_RATE = 0.2  # a loss window above this caps inflight
HEAVY_LOSS_MIN_PACKETS = 8  # ... when it lost at least this many packets
LOSS_WINDOW_PACKETS = 64  # a loss window below the rate closes after this many packets
LOSS_BETA = 0.7  # the cap: this x the most in flight during the lossy window
CAP_GROWTH = 1.125  # per loss window with little loss in which the cap bound
CAP_RELEASE = 0.8  # ... and dropped if inflight stayed below this x the cap
PACING_BURST = 0.004  # seconds of sending the pacer may release at once (CrustPacer)
SEND_QUANTUM = 0.001  # seconds of sending in the window's allowance for bursts (BBR's send quantum)


class CrustBbr(QuicCongestionControl):
    """
    BBR for aioquic.  aioquic calls, per ACK frame, C{on_packet_acked} for
    each newly acknowledged packet, then C{on_rtt_measurement} (only if the
    largest acknowledged is new and ack-eliciting), then C{on_packets_lost}
    if loss detection declares any.  The ACK's rate sample and model update
    run once, at the first other call or read of C{congestion_window} after
    the acknowledgements.

    C{bytes_in_flight} is kept exactly as Reno does: plus C{sent_bytes} on
    send, minus on ack, loss and expiry.
    """

    def __init__(self, *, max_datagram_size: int, rng: Optional[random.Random] = None) -> None:
        self._mds = max_datagram_size
        self._rng: Any = rng if rng is not None else random  # the module's generator: no seeding per connection
        self.bytes_in_flight = 0
        self.ssthresh = None
        self._initial_cwnd = K_INITIAL_WINDOW * max_datagram_size
        self._min_cwnd = MIN_CWND_PACKETS * max_datagram_size
        self._cwnd = self._initial_cwnd

        # delivery rate sampling (per connection)
        self._delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0
        self._app_limited = 0  # samples are app-limited until _delivered exceeds this (0: not)
        self._app_limited_below = 0.0  # a send that leaves less than this in flight marks app-limited
        # the pending ACK's sample
        self._acked = 0
        self._ack_now = 0.0
        self._rs_prior_delivered = -1
        self._rs_prior_time = 0.0
        self._rs_send_elapsed = 0.0
        self._rs_app_limited = False
        self._rtt_sample: Optional[float] = None
        self.last_sample: Optional[float] = None  # bytes/s of the latest valid rate sample (diagnostics)

        # the model
        self._bw_slots = [0.0] * BW_FILTER_ROUNDS
        self._bw_round = 0  # the round the newest filter slot belongs to
        self.btlbw = 0.0  # bytes/s
        self.min_rtt = math.inf
        self._min_rtt_stamp = 0.0
        self._round_count = 0
        self._next_round_delivered = 0
        self._idle_restart = False

        # state machine
        self.state = STARTUP
        self.pacing_gain = HIGH_GAIN
        self._cwnd_gain = HIGH_GAIN
        self.filled_pipe = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self._cycle_index = 0
        self._cycle_stamp = 0.0
        self._lost_in_cycle = False
        self._probe_rtt_done: Optional[float] = None
        self._probe_rtt_round_done = False
        self._prior_cwnd = 0
        self.pacing_rate = 0.0  # bytes/s; 0 until the first RTT sample

        # loss response
        self.inflight_cap: Optional[int] = None
        self._lw_delivered = 0
        self._lw_lost = 0
        self._lw_lost_packets = 0
        self._lw_max_inflight = 0

    # -- what aioquic reads ---------------------------------------------------

    @property
    def congestion_window(self) -> int:
        if self._acked:
            self._finish_ack()
        return self._cwnd

    @congestion_window.setter
    def congestion_window(self, value: int) -> None:
        self._cwnd = value

    def get_log_data(self) -> dict[str, Any]:
        data = {"cwnd": self.congestion_window, "bytes_in_flight": self.bytes_in_flight,
                "bbr_state": self.state, "btlbw": int(self.btlbw), "pacing_rate": int(self.pacing_rate)}
        if self.min_rtt != math.inf:
            data["bbr_min_rtt"] = self.min_rtt
        if self.inflight_cap is not None:
            data["inflight_cap"] = self.inflight_cap
        return data

    def get_pacing_rate(self, smoothed_rtt: float) -> float:
        """Bytes per second to pace at (L{CrustPacer})."""
        if self._acked:
            self._finish_ack()
        if self.pacing_rate > 0:
            return self.pacing_rate
        return HIGH_GAIN * self._cwnd / max(smoothed_rtt, 0.001)

    # -- aioquic's calls --------------------------------------------------------

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        if self._acked:
            self._finish_ack()
        inflight = self.bytes_in_flight
        if inflight == 0:
            sent_time = packet.sent_time
            assert sent_time is not None  # aioquic dates a packet before it reports it sent
            self._first_sent_time = self._delivered_time = sent_time
            if self._app_limited:
                self._idle_restart = True
        if inflight + packet.sent_bytes < self._app_limited_below:
            # less in flight than a sender with data would keep: the application is the limit
            self._app_limited = (self._delivered + inflight) or 1
        # the delivery state at send time rides on aioquic's packet (read back in on_packet_acked)
        packet.crust_bbr = (  # type: ignore[attr-defined]
            self._delivered, self._delivered_time, self._first_sent_time, self._app_limited != 0
        )
        inflight += packet.sent_bytes
        self.bytes_in_flight = inflight
        if inflight > self._lw_max_inflight:
            self._lw_max_inflight = inflight

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        if self._acked and now != self._ack_now:
            self._finish_ack()
        size = packet.sent_bytes
        self.bytes_in_flight -= size
        self._ack_now = now
        self._acked += size
        self._delivered += size
        self._delivered_time = now
        state = getattr(packet, "crust_bbr", None)
        if state is not None and state[0] >= self._rs_prior_delivered:
            # the most recently sent packet acknowledged so far defines the sample
            self._rs_prior_delivered = state[0]
            self._rs_prior_time = state[1]
            sent_time = packet.sent_time
            assert sent_time is not None  # it was sent
            self._rs_send_elapsed = sent_time - state[2]
            self._rs_app_limited = state[3]
            self._first_sent_time = sent_time

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        if rtt > 0:  # aioquic passes the raw sample; a send time ahead of the clock makes it <= 0
            self._rtt_sample = rtt
        if self._acked:
            self._finish_ack()
        else:
            self._update_min_rtt(now)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        if self._acked:
            self._finish_ack()
        lost = count = 0
        for packet in packets:
            lost += packet.sent_bytes
            count += 1
        self.bytes_in_flight -= lost
        self._lw_lost += lost
        self._lw_lost_packets += count
        self._lost_in_cycle = True

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        if self._acked:
            self._finish_ack()
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_persistent_congestion(self) -> None:
        """RFC 9002 section 7.6: no ACK for longer than 3 PTOs.  Forget the
        bandwidth (the path may have changed) and start again from the
        minimum window, in startup."""
        if self._acked:
            self._finish_ack()
        self._bw_slots = [0.0] * BW_FILTER_ROUNDS
        self.btlbw = 0.0
        self.filled_pipe = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self.inflight_cap = None
        self._reset_loss_window()
        self._enter_startup()
        self._cwnd = self._min_cwnd
        self.pacing_rate = 0.0
        self._set_app_limited_threshold()

    # -- per ACK: rate sample, model, state, window --------------------------------

    def _finish_ack(self) -> None:
        now = self._ack_now
        acked = self._acked
        self._acked = 0
        prior_delivered = self._rs_prior_delivered
        self._rs_prior_delivered = -1
        if self._app_limited and self._delivered > self._app_limited:
            self._app_limited = 0

        round_start = False
        if prior_delivered >= self._next_round_delivered:
            self._next_round_delivered = self._delivered
            self._round_count += 1
            round_start = True
        self._lw_delivered += acked

        expired = self._update_min_rtt(now)

        # the rate sample: delivered over the longer of the send and ack intervals
        if prior_delivered >= 0:
            interval = max(self._rs_send_elapsed, now - self._rs_prior_time)
            if interval > 0 and interval >= self.min_rtt:
                rate = (self._delivered - prior_delivered) / interval
                self.last_sample = rate
                if rate >= self.btlbw or not self._rs_app_limited:
                    self._update_btlbw(rate)

        if round_start:
            self._check_loss_window()

        # state machine (the order of BBR v1's BBRUpdateModelAndState)
        prior_inflight = self.bytes_in_flight + acked
        if self.state == PROBE_BW:
            self._check_cycle_phase(now, prior_inflight)
        if round_start and not self.filled_pipe and not self._rs_app_limited:
            if self.btlbw >= self._full_bw * FULL_BW_GROWTH:
                self._full_bw = self.btlbw
                self._full_bw_count = 0
            else:
                self._full_bw_count += 1
                if self._full_bw_count >= FULL_BW_ROUNDS:
                    self.filled_pipe = True
        if self.state == STARTUP and self.filled_pipe:
            self.state = DRAIN
            self.pacing_gain = DRAIN_GAIN
            self._cwnd_gain = HIGH_GAIN
        if self.state == DRAIN and self.bytes_in_flight <= self._inflight(1.0):
            self._enter_probe_bw(now)
        self._check_probe_rtt(now, expired, round_start)
        self._idle_restart = False

        # pacing rate (in startup it only grows, from high gain x initial window / RTT)
        if self.pacing_rate == 0 and self.min_rtt != math.inf:
            self.pacing_rate = HIGH_GAIN * self._cwnd / self.min_rtt
        if self.btlbw > 0:
            rate = self.pacing_gain * self.btlbw
            if self.filled_pipe or rate > self.pacing_rate:
                self.pacing_rate = rate

        # congestion window
        target = self._inflight(self._cwnd_gain)
        cwnd = self._cwnd
        if self.filled_pipe:
            cwnd = min(cwnd + acked, target)
        elif cwnd < target or self._delivered < self._initial_cwnd:
            cwnd += acked
        cwnd = max(cwnd, self._min_cwnd)
        if self.state == PROBE_RTT:
            cwnd = min(cwnd, self._probe_rtt_cwnd())
        if self.inflight_cap is not None and cwnd > self.inflight_cap:
            cwnd = self.inflight_cap
        self._cwnd = cwnd
        self._set_app_limited_threshold()

    def _update_min_rtt(self, now: float) -> bool:
        """Take the pending RTT sample; return whether the min RTT had expired."""
        rtt = self._rtt_sample
        expired = now > self._min_rtt_stamp + MIN_RTT_WINDOW and self.min_rtt != math.inf
        if rtt is not None:
            self._rtt_sample = None
            if rtt <= self.min_rtt or expired:
                self.min_rtt = rtt
                self._min_rtt_stamp = now
        return expired

    def _update_btlbw(self, rate: float) -> None:
        slots = self._bw_slots
        if self._round_count != self._bw_round:
            # the window moved on: forget the rounds that left it
            for r in range(max(self._bw_round + 1, self._round_count - BW_FILTER_ROUNDS + 1), self._round_count + 1):
                slots[r % BW_FILTER_ROUNDS] = 0.0
            self._bw_round = self._round_count
            i = self._round_count % BW_FILTER_ROUNDS
            if rate > slots[i]:
                slots[i] = rate
            self.btlbw = max(slots)
            return
        i = self._round_count % BW_FILTER_ROUNDS
        if rate > slots[i]:
            slots[i] = rate
            if rate > self.btlbw:
                self.btlbw = rate

    def _inflight(self, gain: float) -> int:
        """gain x the estimated bandwidth-delay product, plus room for send bursts."""
        if self.btlbw <= 0 or self.min_rtt == math.inf:
            return self._initial_cwnd
        quantum = max(2 * self._mds, min(self.pacing_rate * SEND_QUANTUM, 64 * 1024))
        return int(gain * self.btlbw * self.min_rtt + 3 * quantum)

    def _probe_rtt_cwnd(self) -> int:
        return max(self._min_cwnd, self._inflight(0.5))

    def _set_app_limited_threshold(self) -> None:
        # A sender with data keeps about a window in flight in startup and
        # about gain x BDP in probe-bw; far less means it ran out of data.
        if self.state == STARTUP:
            self._app_limited_below = self._cwnd / 2
        elif self.state == PROBE_BW:
            self._app_limited_below = 0.5 * self.btlbw * self.min_rtt if self.min_rtt != math.inf else 0.0
        elif self.state == PROBE_RTT:
            self._app_limited_below = math.inf  # its low-rate samples are not the path's
        else:
            self._app_limited_below = 0.0

    def _enter_startup(self) -> None:
        self.state = STARTUP
        self.pacing_gain = HIGH_GAIN
        self._cwnd_gain = HIGH_GAIN

    def _enter_probe_bw(self, now: float) -> None:
        self.state = PROBE_BW
        self._cwnd_gain = CWND_GAIN
        # start at a random phase, never the draining one
        self._cycle_index = len(PACING_CYCLE) - 1 - self._rng.randrange(len(PACING_CYCLE) - 1)
        self._advance_cycle(now)

    def _advance_cycle(self, now: float) -> None:
        self._cycle_index = (self._cycle_index + 1) % len(PACING_CYCLE)
        self._cycle_stamp = now
        self._lost_in_cycle = False
        self.pacing_gain = PACING_CYCLE[self._cycle_index]

    def _check_cycle_phase(self, now: float, prior_inflight: int) -> None:
        full = now - self._cycle_stamp > self.min_rtt
        gain = self.pacing_gain
        if gain > 1:
            done = full and (self._lost_in_cycle or prior_inflight >= self._inflight(gain))
        elif gain < 1:
            done = full or prior_inflight <= self._inflight(1.0)
        else:
            done = full
        if done:
            self._advance_cycle(now)

    def _check_probe_rtt(self, now: float, expired: bool, round_start: bool) -> None:
        if self.state != PROBE_RTT and expired and not self._idle_restart:
            self.state = PROBE_RTT
            self.pacing_gain = 1.0
            self._cwnd_gain = 1.0
            self._prior_cwnd = self._cwnd
            self._probe_rtt_done = None
        if self.state != PROBE_RTT:
            return
        self._app_limited = (self._delivered + self.bytes_in_flight) or 1
        if self._probe_rtt_done is None:
            if self.bytes_in_flight <= self._probe_rtt_cwnd():
                self._probe_rtt_done = now + PROBE_RTT_DURATION
                self._probe_rtt_round_done = False
                self._next_round_delivered = self._delivered
            return
        if round_start:
            self._probe_rtt_round_done = True
        if self._probe_rtt_round_done and now >= self._probe_rtt_done:
            self._min_rtt_stamp = now
            self._cwnd = max(self._cwnd, self._prior_cwnd)
            if self.filled_pipe:
                self._enter_probe_bw(now)
            else:
                self._enter_startup()

    # -- heavy loss -----------------------------------------------------------------

    def _reset_loss_window(self) -> None:
        self._lw_delivered = self._lw_lost = self._lw_lost_packets = 0
        self._lw_max_inflight = self.bytes_in_flight

    def _check_loss_window(self) -> None:
        """At a round's end: did the rounds since the last verdict lose too much?"""
        lost, total = self._lw_lost, self._lw_lost + self._lw_delivered
        if self._lw_lost_packets >= HEAVY_LOSS_MIN_PACKETS and lost > HEAVY_LOSS_RATE * total:
            # really congested: cap what is in flight, leave startup
            reference = self._lw_max_inflight
            if self.inflight_cap is not None:
                reference = min(reference, self.inflight_cap)
            self.inflight_cap = max(self._min_cwnd, int(LOSS_BETA * reference))
            if not self.filled_pipe:
                self.filled_pipe = True
            self._reset_loss_window()
        elif total >= LOSS_WINDOW_PACKETS * self._mds:
            cap = self.inflight_cap
            if cap is not None and lost <= HEAVY_LOSS_RATE / 2 * total:
                if self._lw_max_inflight < CAP_RELEASE * cap:
                    cap = None  # the model keeps inflight well below it: not needed
                else:
                    cap = int(cap * CAP_GROWTH) + self._mds
                    if cap >= self._inflight(self._cwnd_gain):
                        cap = None
                self.inflight_cap = cap
            self._reset_loss_window()


class CrustPacer(QuicPacketPacer):
    """
    aioquic's pacer (a token bucket of send time), at the controller's
    pacing rate rather than C{congestion_window / smoothed_rtt}, with two
    changes measured in the lab (doc/quic.md, "Congestion control"):

      - bursts of up to L{PACING_BURST} seconds at the pacing rate (at least
        aioquic's 16 datagrams, at most a quarter of the window): the driver
        sends once per reactor turn and a turn of a busy Python process lasts
        milliseconds, so aioquic's 16-datagram bucket (0.3 ms at 60 MB/s)
        overflowed and capped the sender near 16 MB/s;
      - no rounding up: aioquic sends whenever the bucket holds any credit
        and then empties it (one datagram per wake-up more than the rate);
        here a datagram may overdraw the bucket and the debt is paid first.
    """

    def __init__(self, cc: CrustBbr, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.cc = cc

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        rate = max(self.cc.get_pacing_rate(smoothed_rtt), 1.0)
        mds = self._max_datagram_size
        self.packet_time = max(1e-6, min(mds / rate, 1.0))
        burst = max(2 * mds, min(congestion_window // 4, max(16 * mds, rate * PACING_BURST)))
        self.bucket_max = burst / rate
        if self.bucket_time > self.bucket_max:
            self.bucket_time = self.bucket_max

    # aioquic's own returns None too when nothing waits; its annotation says float
    def next_send_time(self, now: float) -> Optional[float]:  # type: ignore[override]
        if self.packet_time is not None:
            self.update_bucket(now=now)
            if self.bucket_time < 0:
                return now + max(-self.bucket_time, 1e-6)
        return None

    def update_after_send(self, now: float) -> None:
        if self.packet_time is not None:
            self.update_bucket(now=now)
            self.bucket_time = max(self.bucket_time - self.packet_time, -self.packet_time)


def install_pacer(recovery: Any) -> bool:
    """Give an aioquic C{QuicPacketRecovery} whose controller is L{CrustBbr}
    a L{CrustPacer}; return whether it did."""
    cc = getattr(recovery, "_cc", None)
    if not isinstance(cc, CrustBbr) or isinstance(recovery._pacer, CrustPacer):
        return False
    recovery._pacer = CrustPacer(cc, max_datagram_size=cc._mds)
    return True


register_congestion_control(NAME, CrustBbr)

CONGESTION_CONTROLS = ("crust-bbr", "reno", "cubic")

__all__ = ["CONGESTION_CONTROLS", "CrustBbr", "CrustPacer", "NAME", "install_pacer"]
