"""
Property test of the multiplexed streams (L{crust.streams.mux}) against a
peer that sends anything: any sequence of valid, misplaced, damaged and
random stream frames, with the local protocols pausing, resuming and
writing and time passing.

Nothing raises but L{ProtocolViolation} (which closes the connection that
carried the frame: the test then stops feeding it), nothing is logged as an
error, and the caps hold: streams per connection, what is granted to the
peer (the connection's budget, each stream's window), what a paused
protocol holds.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.errors import ProtocolViolation
from crust.streams import frames
from crust.streams.frames import HIGH_BIT
from crust.streams.manager import StreamOptions

from tests import examples
from tests.mutate import mutated
from tests.streams.test_mux import HIGH, LOW, Recorder, Side

K = 1024
OPTIONS = StreamOptions(window=128 * K, connection_window=256 * K, min_window=64 * K, max_streams=4,
                        max_pending_opens=2, open_timeout=5.0, high_water=32 * K, low_water=8 * K, linger=2.0)
# the peer (HIGH) opens ids with the top bit set; ours (LOW's) are without
_sids = st.one_of(st.integers(1, 8).map(lambda n: HIGH_BIT | n), st.integers(1, 4), st.integers(0, 2**32 - 1))

_frames = st.one_of(
    st.builds(lambda sid, window, name: frames.encode_open(sid, window, name), _sids,
              st.integers(1, 256 * K), st.sampled_from(["svc", "svc", "nobody"])),
    st.builds(frames.encode_accept, _sids, st.integers(1, 256 * K)),
    st.builds(lambda sid, n: frames.encode_data(sid, b"d" * n), _sids, st.integers(1, 64 * K)),
    st.builds(frames.encode_credit, _sids, st.integers(1, 256 * K)),
    st.builds(frames.encode_fin, _sids),
    st.builds(frames.encode_reset, _sids, st.sampled_from(sorted(frames.REASONS)), st.text(max_size=20)),
)
_on = st.tuples(st.just("on"), st.integers(0, 7), st.sampled_from(["data", "data", "data", "credit", "fin", "reset"]),
               st.integers(1, 64 * K))
_actions = st.lists(st.one_of(
    # the peer opens its next stream (ids that increase, as a well-behaved peer's do)
    st.tuples(st.just("open"), st.sampled_from(["svc", "svc", "nobody"]), st.integers(1, 256 * K)),
    # a frame on one of the streams the peer opened
    _on, _on, _on,
    # anything: valid frames with any ids, damaged ones
    st.tuples(st.just("frame"), st.one_of(_frames, mutated(_frames, 2))),
    st.tuples(st.just("pause"), st.integers(0, 5)),
    st.tuples(st.just("pause"), st.integers(0, 5)),
    st.tuples(st.just("resume"), st.integers(0, 5)),
    st.tuples(st.just("write"), st.integers(0, 5), st.integers(1, 100 * K)),
    st.tuples(st.just("close"), st.integers(0, 5)),
    st.tuples(st.just("time"), st.floats(0, 3)),
    st.tuples(st.just("flush"), st.just(0)),
), min_size=5, max_size=40)


class HostilePeerTests(SynchronousTestCase):
    @examples(300)
    @given(_actions)
    def test_any_frames(self, actions):
        clock = Clock()
        us = Side(clock, LOW, HIGH, OPTIONS)
        us.layer.listen("svc", us.factory(Recorder))
        conn = us.conn
        opened: list[int] = []
        for action in actions:
            kind = action[0]
            protocols = [p for p in us.protocols if p.lost is None]
            if kind == "open":
                opened.append(HIGH_BIT | (len(opened) + 1))
                kind, action = "frame", ("frame", frames.encode_open(opened[-1], action[2], action[1]))
            elif kind == "on":
                if not opened:
                    continue
                sid, what, n = opened[action[1] % len(opened)], action[2], action[3]
                action = ("frame", {"data": lambda: frames.encode_data(sid, b"d" * n),
                                    "credit": lambda: frames.encode_credit(sid, n),
                                    "fin": lambda: frames.encode_fin(sid),
                                    "reset": lambda: frames.encode_reset(sid, frames.REASON_ABORTED)}[what]())
                kind = "frame"
            if kind == "frame":
                data = action[1]
                if len(data) < 5:
                    continue
                ftype, payload = data[4], data[5:]
                handler = getattr(conn, "channel_handlers", {}).get(ftype)
                try:
                    if handler is not None and len(payload) >= 4:  # as the connection's decoder splits it
                        handler(struct.unpack_from("!I", payload)[0], payload[4:])
                    else:
                        us.layer._frame(conn, ftype, payload)
                except ProtocolViolation:
                    break  # the connection closes: nothing more arrives on it
            elif kind in ("pause", "resume", "write", "close") and protocols:
                protocol = protocols[action[1] % len(protocols)]
                if kind == "pause":
                    protocol.transport.pauseProducing()
                elif kind == "resume":
                    protocol.transport.resumeProducing()
                elif kind == "write":
                    protocol.transport.write(b"w" * action[2])
                else:
                    protocol.transport.loseConnection()
            elif kind == "time":
                clock.advance(action[1])
            elif kind == "flush":
                conn.flush()
                conn.out = bytearray()
            self.check(us)
        self.assertEqual(self.flushLoggedErrors(), [])

    def check(self, us):
        mux = us.layer.backends.get(us.conn)
        if mux is None:
            return
        self.assertLessEqual(mux.count, OPTIONS.max_streams)
        self.assertLessEqual(len(mux._opening), OPTIONS.max_pending_opens)
        channels = list(mux.channels.values()) + [o.channel for o in mux._opening.values()]
        self.assertEqual(mux.committed, sum(c.outstanding for c in channels))
        # granted: within the connection's budget, but for each stream's guaranteed minimum
        self.assertLessEqual(mux.committed, OPTIONS.connection_window + OPTIONS.min_window * len(channels))
        for channel in channels:
            self.assertLessEqual(channel.outstanding, OPTIONS.window)
            self.assertLessEqual(channel.received, channel.recv_limit)
            if channel.stream is not None:
                self.assertLessEqual(channel.stream.held, channel.outstanding)
            self.assertGreaterEqual(channel.credit, 0)
