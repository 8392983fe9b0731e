"""
Property test of the control frames a node's peers may send once
connected: the rendezvous (QUERY, ANSWER, FORWARD, DELIVER, ERROR), the
hole-punching exchanges in the envelopes delivered (CONNECT, REPLY, SYNC,
L{crust.punch.coordinator}) and the relay's circuits (OPEN, INVITE, ACCEPT,
READY, DATA, CREDIT, CLOSE: L{crust.relay.switch}, L{crust.relay.server},
L{crust.relay.client}), all on one node R with peers A, T and C connected
(a real L{PeerTable}, connections over L{StringTransport}).

Any sequence of valid, misplaced, damaged and random frames from any of
them, with time passing: nothing raises or is logged as an error, a frame
closes at most the connection that carried it, and every table keyed by
what peers send stays within its cap.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.candidates import Candidate, CandidateKind
from crust.config import Config, RelayLimits
from crust.connection_info import PubConnectionInfo
from crust.identity import Identity, PeerId
from crust.peering.dialer import Dialer
from crust.punch import messages as rdv
from crust.punch.manager import MAX_EXCHANGES, PunchManager
from crust.punch.messages import EnvelopeType, seal
from crust.punch.rendezvous import MAX_PENDING_QUERIES
from crust.relay import messages
from crust.relay.client import MAX_ENDS, RelayEnds
from crust.relay.messages import CircuitLimits, id_space
from crust.relay.server import RelayServer
from crust.relay.switch import CircuitSwitch
from crust.transport.tls import ConnectionCreator, make_context
from crust.wire import frame

from tests import examples
from tests.mutate import mutated
from tests.punch.fakes import NET, TableNode, split_frames

IDS = {name: Identity.from_seed(name.encode() * 32) for name in "RATC"}
R, A, T, C = (IDS[n].peer_id for n in "RATC")
X = Identity.from_seed(b"x" * 32).peer_id  # a peer nobody is connected to
PEERS = (A, T, C)
WALL = 1_700_000_000.0
LIMITS = RelayLimits(bytes_per_circuit=200_000, seconds_per_circuit=30.0, rate_per_circuit=100_000,
                     circuits_per_peer=2, circuits_total=3, window=65536)


def info_of(peer: str) -> dict[str, Any]:
    info = PubConnectionInfo(IDS[peer].peer_id, candidates=(
        Candidate(Address.parse("udp:203.0.113.5:5000"), CandidateKind.SRFLX, "echo"),))
    return json.loads(info.to_json())


# -- what the peers send -----------------------------------------------------------------------------------

_peer = st.sampled_from([A, T, C, R, X])
_attempt = st.sampled_from([b"\x01" * 8, b"\x02" * 8])
_small = st.integers(0, 5)


def _circuit_id(picker: PeerId, other: PeerId, n: int) -> int:
    return id_space(picker, other) | n


# circuit ids in either half of the ids on a connection, small numbers: some are in use
_cid = st.builds(_circuit_id, st.sampled_from([A, T, C, R]), st.sampled_from([A, T, C, R]), _small) \
    | st.integers(0, 2**32 - 1)


def _envelope(sender: str, mtype: EnvelopeType, attempt: bytes, body: dict[str, Any], age: float) -> bytes:
    return seal(IDS[sender], R, NET, mtype, attempt, body, WALL - age)


# a CONNECT or REPLY carries connection info (the sender's, or another peer's)
# (and a RESULT an ok flag)
# (unknown keys too, which never replace the known ones)
_bodies = st.builds(lambda p, ok, extra: {**extra, "info": info_of(p), "tcp": True, "udp": True, "ok": ok},
                    st.sampled_from("ATC"), st.booleans(),
                    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
_envelopes = st.builds(_envelope, st.sampled_from("ATC"), st.sampled_from(list(EnvelopeType)), _attempt, _bodies,
                       st.sampled_from([0.0, 0.0, 1.0, 3600.0]))
_blob = _envelopes | mutated(_envelopes, 2).filter(lambda b: 0 < len(b) <= 8192) | st.binary(min_size=1, max_size=60)

_valid_frames = st.one_of(
    st.builds(rdv.encode_query, _small, _peer),
    st.builds(rdv.encode_answer, _small, _peer, st.booleans(), st.booleans(), st.booleans()),
    st.builds(rdv.encode_forward, _peer, _blob),
    st.builds(lambda sender, blob: rdv.encode_deliver(IDS[sender].peer_id, blob), st.sampled_from("ATC"), _blob),
    # an envelope delivered from the peer that sealed it: gets past the checks to the exchanges
    st.builds(lambda sender, mtype, attempt, body: rdv.encode_deliver(
        IDS[sender].peer_id, _envelope(sender, mtype, attempt, body, 0.0)),
        st.sampled_from("ATC"), st.sampled_from(list(EnvelopeType)), _attempt, _bodies),
    st.builds(rdv.encode_error, _peer, st.sampled_from([rdv.ERROR_DISABLED, rdv.ERROR_NOT_CONNECTED,
                                                        rdv.ERROR_RATE_LIMITED]), st.text(max_size=5)),
    st.builds(messages.encode_open, _cid, _peer),
    st.builds(messages.encode_invite, _cid, _peer, st.sampled_from([65536, 2**24])),
    st.builds(messages.encode_accept, _cid),
    st.builds(messages.encode_ready, _cid, st.builds(CircuitLimits, st.integers(1, 10**6), st.floats(0.5, 100),
                                                     st.none() | st.integers(1, 10**6), st.just(65536))),
    st.builds(messages.encode_data, _cid, st.binary(min_size=1, max_size=5000)),
    st.builds(messages.encode_credit, _cid, st.integers(1, 100_000)),
    st.builds(messages.encode_close, _cid, st.sampled_from([messages.REASON_CLOSED, messages.REASON_REFUSED, "x"]),
              st.text(max_size=5)),
)
_frames = st.one_of(_valid_frames, _valid_frames, mutated(_valid_frames, 2),
                    st.builds(frame, st.integers(16, 40), st.binary(max_size=30)))

_who = st.sampled_from(PEERS)
_steps = st.lists(st.one_of(
    st.tuples(st.just("frame"), _who, _frames),
    st.tuples(st.just("frame"), _who, _frames),
    # well-formed circuit traffic, so that circuits open, carry data and close
    st.tuples(st.just("open"), _who, st.sampled_from(PEERS + (X,)), st.integers(1, 3)),
    st.tuples(st.just("accept"), _who),
    st.tuples(st.just("circuit"), _who, _who, st.integers(1, 3)),  # an OPEN, and the target accepts
    # an envelope from its sealer, delivered by another peer (the rendezvous): the exchanges run
    st.tuples(st.just("envelope"), _who, st.sampled_from("ATC"), st.sampled_from(list(EnvelopeType)), _attempt,
              _bodies),
    st.tuples(st.just("data"), _who, st.integers(1, 3), st.integers(1, 70_000)),
    st.tuples(st.just("credit"), _who, st.integers(1, 3), st.integers(1, 100_000)),
    st.tuples(st.just("close"), _who, st.integers(1, 3)),
    st.tuples(st.just("time"), st.sampled_from([0.1, 1.0, 6.0])),
), min_size=1, max_size=16)


class RelayNode(TableNode):
    """R, with the rendezvous and punch manager, the relay server and the relay ends on its table."""

    def __init__(self) -> None:
        super().__init__(R)
        config = Config()
        self.manager = PunchManager(identity=IDS["R"], network=NET, clock=self.clock, table=self.table,
                                    serving=lambda: True, our_info=lambda: PubConnectionInfo.from_dict(info_of("R")),
                                    udp=None, tcp=None, wall=lambda: WALL + self.clock.seconds())
        self.switch = CircuitSwitch(self.table, R)
        self.server = RelayServer(self.switch, self.table, self.clock, serving=lambda: True, limits=lambda: LIMITS)
        self.manager.rendezvous.relaying = self.server.serving
        dialer = Dialer(self.table, self.clock, R, NET, lambda: config, lambda a: True)
        creator = ConnectionCreator(make_context(IDS["R"]))
        self.ends = RelayEnds(self.switch, self.table, dialer, self.clock, creator=lambda: creator,
                              config=lambda: config, emit=lambda *args: None)
        self.conns = {peer: self.connect(peer) for peer in PEERS}
        self.invited: dict[PeerId, list[int]] = {peer: [] for peer in PEERS}  # ids R invited each peer to

    def step(self, kind: str, who: Any, *args: Any) -> None:
        """Run one step of L{_steps}."""
        if kind == "time":
            self.clock.advance(who)
            return
        conn = self.conns[who]
        own = id_space(who, R)  # the ids the peer picks
        if kind == "frame":
            conn.dataReceived(args[0])
        elif kind == "open":
            conn.dataReceived(messages.encode_open(own | args[1], args[0]))
        elif kind == "accept":
            for c in self.invited[who]:
                conn.dataReceived(messages.encode_accept(c))
        elif kind == "circuit":
            target = args[0]
            conn.dataReceived(messages.encode_open(own | args[1], target))
            self.sent(target)
            if target in self.conns and self.invited[target]:
                self.conns[target].dataReceived(messages.encode_accept(self.invited[target][-1]))
        elif kind == "envelope":
            sender, mtype, attempt, body = args
            conn.dataReceived(rdv.encode_deliver(IDS[sender].peer_id, _envelope(sender, mtype, attempt, body, 0.0)))
        else:
            # on a circuit it opened, or on one R invited it to
            n = args[0]
            invited = self.invited[who]
            c = invited[n % len(invited)] if invited and n > 1 else own | n
            if kind == "data":
                conn.dataReceived(messages.encode_data(c, bytes(min(args[1], messages.MAX_CHUNK))))
            elif kind == "credit":
                conn.dataReceived(messages.encode_credit(c, args[1]))
            else:
                conn.dataReceived(messages.encode_close(c, messages.REASON_CLOSED))

    def sent(self, peer: PeerId) -> list[tuple[int, bytes]]:
        """The frames R sent C{peer} since the last look (whole frames only); INVITEs are noted."""
        transport = self.transports[peer]
        frames = split_frames(transport.value())
        transport.clear()
        for ftype, payload in frames:
            if ftype == messages.RelayFrame.INVITE:
                self.invited[peer].append(messages.decode_invite(payload).c)
        return frames

    def reconnect(self, peer: PeerId) -> None:
        """The peer's connection closed (it misbehaved): it goes, and the peer connects again."""
        self.conns[peer].connectionLost(Failure(ConnectionDone()))
        self.conns[peer] = self.connect(peer)


class HostilePeerTests(SynchronousTestCase):
    @examples(600)
    @given(_steps)
    def test_any_frames_from_any_peer(self, steps: list[tuple[Any, Any]]) -> None:
        node = RelayNode()
        try:
            for kind, who, *args in steps:
                node.step(kind, who, *args)
                # the peers whose bytes this step fed in (a circuit step has its target ACCEPT, after whatever
                # that target sent before, a truncated frame maybe)
                actors = {who, args[0]} if kind == "circuit" else {who}
                for peer, conn in node.conns.items():
                    if peer not in actors:
                        self.assertFalse(conn.closing, f"a frame from {who} closed the connection to {peer}")
                    node.sent(peer)
                self.assertLessEqual(node.server.circuits, LIMITS.circuits_total)
                self.assertLessEqual(len(node.manager._exchanges), MAX_EXCHANGES)
                self.assertLessEqual(len(node.manager.rendezvous._pending), MAX_PENDING_QUERIES)
                self.assertLessEqual(node.ends.circuits, MAX_ENDS)
                self.assertLessEqual(node.switch.leg_count, 2 * LIMITS.circuits_total + MAX_ENDS)
                self.assertEqual(self.flushLoggedErrors(), [])
                for actor in actors if kind != "time" else ():
                    if actor in node.conns and node.conns[actor].closing:
                        node.reconnect(actor)
            node.clock.advance(60)  # every timer runs out without error
            self.assertEqual(self.flushLoggedErrors(), [])
        finally:
            node.manager.stop()
            node.server.stop()
            node.ends.stop()
