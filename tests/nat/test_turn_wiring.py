"""
Tests for L{crust.nat.turn_wiring}: the TURN relays of a node on a fake
socket and a fake TURN server (L{tests.nat.test_turn.FakeTurnServer}):
routing QUIC's datagrams by destination, relayed datagrams to QUIC only,
relay candidates, permissions from a peer's info, and connection paths.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.candidates import Candidate, CandidateKind
from crust.config import Config, TurnServer
from crust.connection_info import PubConnectionInfo
from crust.identity import Identity
from crust.nat import stun
from crust.nat.addresses import OurAddresses
from crust.nat.turn_wiring import TurnRelays, install
from crust.session.connection import PathInfo

from tests.nat.test_turn import MAPPED, PEER, RELAYED, SERVER, FakeTurnServer, step


class FakeEndpoint:
    """The node's socket: datagrams to the TURN server go to it, the rest are recorded."""

    def __init__(self, server: FakeTurnServer) -> None:
        self.server = server
        self.direct: list[tuple[bytes, Any]] = []
        self.sources: dict[Any, Any] = {}

    def send(self, datagram: bytes, addr: tuple[str, int]) -> bool:
        if addr == SERVER.sockaddr():
            return self.server.send(datagram, addr)
        self.direct.append((datagram, addr))
        return True

    def register_source(self, addr: Any, handler: Any, name: str = "") -> Any:
        self.sources[addr] = handler
        return lambda: self.sources.pop(addr, None)


class Table:
    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self.classifiers: list[Any] = []

    def listen(self, listener: Any) -> None:
        self.listeners.append(listener)

    def classify_paths(self, classify: Any) -> None:
        self.classifiers.append(classify)


class TurnRelaysTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = FakeTurnServer()
        self.endpoint = FakeEndpoint(self.server)
        self.addresses = OurAddresses(lambda: ("udp", "tcp"))
        self.delivered: list[tuple[bytes, Any]] = []
        self.table = Table()
        config = Config(turn_servers=(TurnServer(SERVER, "alice", "secret"),))
        relays = install(config=config, endpoint=self.endpoint, clock=self.clock, addresses=self.addresses,
                         table=self.table, deliver=lambda d, a: self.delivered.append((d, a)))
        assert relays is not None
        self.relays: TurnRelays = relays
        self.server.client = self.relays.clients[0]

    def test_nothing_without_turn_servers(self):
        self.assertIsNone(install(config=Config(), endpoint=self.endpoint, clock=self.clock,
                                  addresses=self.addresses, table=self.table, deliver=lambda d, a: None))
        self.assertEqual(self.table.listeners, [self.relays])
        self.assertEqual(self.table.classifiers, [self.relays.classify])

    def test_source_route_and_candidates(self):
        self.assertIn(SERVER.sockaddr(), self.endpoint.sources)
        self.relays.start()
        self.assertEqual(self.addresses.relay, {RELAYED: "turn"})
        candidates = self.addresses.candidates()
        self.assertIn(Candidate(RELAYED, CandidateKind.RELAY, "turn"), candidates)
        self.assertIn(Candidate(MAPPED, CandidateKind.SRFLX, "turn"), candidates)
        self.assertNotIn(RELAYED, self.addresses.listeners())
        self.assertFalse(self.addresses.add_reflexive(RELAYED, "hello"))  # a peer sees us at the relay
        self.relays.clients[0]._lost("test")
        self.assertEqual(self.addresses.relay, {})

    def test_send_routes_by_destination(self):
        self.relays.start()
        send = self.relays.wrap_send(self.endpoint.send)
        other = ("198.51.100.9", 9)
        send(b"\x40direct", other)
        self.assertEqual(self.endpoint.direct, [(b"\x40direct", other)])
        self.successResultOf(self.relays.permit([PEER]))
        self.server.relay_from(PEER, b"\xc0quic from the peer")
        self.assertEqual(self.delivered, [(b"\xc0quic from the peer", PEER.sockaddr())])
        send(b"\xc0quic to the peer", PEER.sockaddr())
        self.assertEqual(self.server.channel_data, [(0x4000, b"\xc0quic to the peer")])
        self.assertEqual(len(self.endpoint.direct), 1)

    def test_only_quic_is_delivered(self):
        self.relays.start()
        self.successResultOf(self.relays.permit([PEER]))
        self.server.relay_from(PEER, b"\x04an echo request")
        self.server.relay_from(PEER, b"")
        self.assertEqual(self.delivered, [])
        self.assertEqual(self.relays.counters["dropped_not_quic"], 2)

    def test_note_peer_permits_its_addresses(self):
        self.relays.start()
        info = PubConnectionInfo(Identity.generate().peer_id, candidates=(
            Candidate(Address("tcp", "198.51.100.8", 4242), CandidateKind.HOST),
            Candidate(PEER, CandidateKind.SRFLX), Candidate(Address("udp", "203.0.113.77", 50001),
                                                            CandidateKind.RELAY)))
        self.relays.note_peer(info)
        self.assertEqual(sorted(self.server.permissions), [PEER.host, "203.0.113.77"])  # udp ones

    def test_paths(self):
        self.relays.start()
        self.successResultOf(self.relays.permit([PEER]))
        self.server.relay_from(PEER, b"\xc0x")
        relayed = SimpleNamespace(transport_name="udp", peer_address=PEER, path=None)
        self.relays.peer_promoted(relayed, None)
        self.assertEqual(relayed.path, PathInfo("relayed", "turn", None, f"turn:{SERVER.host_port()}"))
        theirs = Address("udp", "203.0.113.77", 50001)
        self.relays.note_peer(PubConnectionInfo(Identity.generate().peer_id,
                                                candidates=(Candidate(theirs, CandidateKind.RELAY),)))
        dialed = SimpleNamespace(transport_name="udp", peer_address=theirs, path=None)
        self.relays.peer_promoted(dialed, None)
        self.assertEqual(dialed.path, PathInfo("relayed", "quic", None, f"turn:{theirs.host_port()}"))
        direct = SimpleNamespace(transport_name="udp", peer_address=Address("udp", "198.51.100.9", 9), path=None)
        tcp = SimpleNamespace(transport_name="tcp", peer_address=Address("tcp", PEER.host, PEER.port), path=None)
        for conn in (direct, tcp):
            self.relays.peer_promoted(conn, None)
            self.assertIsNone(conn.path)
        # the same before it is promoted, when the peer table ranks it (PeerTable.classify_paths)
        unranked = SimpleNamespace(transport_name="udp", peer_address=PEER, path=None)
        self.relays.classify(unranked)
        self.assertEqual(unranked.path, relayed.path)

    def test_settled_and_stop(self):
        self.server.silent = True
        self.relays.start()
        settled = self.relays.settled(3.0, self.clock)
        self.assertNoResult(settled)
        step(self.clock, 3.0)
        self.successResultOf(settled)
        self.server.silent = False
        step(self.clock, 0.5)  # the retransmission at 3.5 s is answered
        self.successResultOf(self.relays.settled(3.0, self.clock))
        self.assertEqual(self.relays.status()[0]["state"], "allocated")
        self.successResultOf(self.relays.stop())
        self.assertEqual(self.server.requests[-1].method, stun.REFRESH)
        self.assertEqual(self.server.requests[-1].lifetime, 0)
        self.assertEqual(self.addresses.relay, {})
        self.relays.close()
        self.assertEqual(self.endpoint.sources, {})
