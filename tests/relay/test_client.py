"""
Tests for L{crust.relay.client}: opening circuits and answering invitations
(L{RelayEnds}), and the C{relay} dial strategy; a node's real peer table and
connections over L{StringTransport}, the relay's frames written by hand.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from crust.config import Config
from crust.connection_info import PubConnectionInfo
from crust.errors import CrustError
from crust.identity import Identity, PeerId
from crust.peering.dialer import Dialer
from crust.punch import messages as rdv
from crust.punch.rendezvous import Rendezvous
from crust.relay import messages
from crust.relay.circuit import CircuitTransport, RelayClosed
from crust.relay.client import INVITE_RATE, MAX_ENDS_PER_RELAY, OPEN_TIMEOUT, RelayEnds, RelayStrategy, RelayTarget
from crust.relay.messages import RelayFrame, id_space
from crust.relay.spliced import EndSplicing
from crust.relay.switch import CircuitSwitch
from crust.session.connection import PathInfo
from crust.session.purpose import Purpose
from crust.transport.tls import ConnectionCreator, make_context
from crust.wire import FrameType

from tests.punch.fakes import NET, TableNode
from tests.relay.test_server import decoded

ME = Identity.from_seed(b"m" * 32)
R = Identity.from_seed(b"r" * 32).peer_id
R2 = Identity.from_seed(b"s" * 32).peer_id
T = Identity.from_seed(b"t" * 32).peer_id
TOKEN = bytes(range(32))


class EndNode(TableNode):
    def __init__(self, config: Config | None = None) -> None:
        super().__init__(ME.peer_id)
        self.config = config or Config()
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.switch = CircuitSwitch(self.table, ME.peer_id)
        self.dialer = Dialer(self.table, self.clock, ME.peer_id, NET, lambda: self.config, lambda a: True)
        creator = ConnectionCreator(make_context(ME))
        self.ends = RelayEnds(self.switch, self.table, self.dialer, self.clock, creator=lambda: creator,
                              config=lambda: self.config, emit=lambda name, *args: self.events.append((name, args)))

    def sent(self, peer: PeerId) -> list[Any]:
        return decoded([(t, p) for t, p in self.frames(peer) if t != FrameType.HEARTBEAT])

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.events if n == name]


class OpenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = EndNode()
        self.conn_r = self.node.connect(R)
        self.results: list[Any] = []

    def open(self) -> tuple[Any, int]:
        d = self.node.ends.open(R, T)
        d.addBoth(self.results.append)
        [opened] = self.node.sent(R)
        self.assertIsInstance(opened, messages.RelayOpen)
        self.assertEqual(opened.to, T)
        self.assertTrue(messages.picked_by(opened.c, ME.peer_id, R))
        return d, opened.c

    def failure(self) -> Any:
        [failure] = self.results
        self.assertIsInstance(failure, Failure)
        return failure.value

    def test_ready_gives_the_circuit(self) -> None:
        d, c = self.open()
        self.assertEqual(self.node.ends.circuits, 1)
        self.conn_r.dataReceived(messages.encode_ready(c, messages.CircuitLimits(10, 1.0, None, 65536)))
        [circuit] = self.results
        self.assertIsInstance(circuit, CircuitTransport)
        self.assertEqual((circuit.circuit_id, circuit.peer, circuit.via), (c, T, R))
        self.assertIs(self.node.switch.leg(self.conn_r, c), circuit)
        self.assertEqual(self.node.named("relay_circuit_opened"), [(T, R)])
        self.assertEqual(self.node.ends.counters["opened"], 1)
        circuit.close_received(messages.REASON_BYTE_LIMIT, "")
        self.assertEqual(self.node.named("relay_circuit_closed"), [(T, R, messages.REASON_BYTE_LIMIT)])
        self.assertEqual(self.node.ends.circuits, 0)

    def test_a_refusal(self) -> None:
        d, c = self.open()
        self.conn_r.dataReceived(messages.encode_close(c, messages.REASON_NOT_CONNECTED, "not connected to it"))
        error = self.failure()
        self.assertIsInstance(error, RelayClosed)
        self.assertEqual(error.reason, messages.REASON_NOT_CONNECTED)
        self.assertIn("not connected to it", str(error))
        self.assertEqual((self.node.ends.circuits, self.node.switch.leg_count), (0, 0))
        self.assertEqual(self.node.named("relay_circuit_opened"), [])

    def test_no_answer(self) -> None:
        self.open()
        self.node.clock.advance(OPEN_TIMEOUT)
        self.assertIn("no answer from the relay", str(self.failure()))
        [close] = self.node.sent(R)
        self.assertEqual(close.reason, messages.REASON_TIMEOUT)
        self.assertEqual(self.node.switch.leg_count, 0)

    def test_losing_the_relay(self) -> None:
        self.open()
        self.conn_r.connectionLost(Failure(ConnectionLost("reset")))
        self.assertEqual(self.failure().reason, messages.REASON_PEER_LOST)

    def test_cancel(self) -> None:
        d, c = self.open()
        d.cancel()
        self.assertIsInstance(self.failure(), CancelledError)
        [close] = self.node.sent(R)
        self.assertEqual((close.c, close.reason), (c, messages.REASON_CLOSED))
        self.conn_r.dataReceived(messages.encode_ready(c, messages.CircuitLimits(10, 1.0, None, 65536)))  # late
        self.assertEqual(len(self.results), 1)
        self.assertEqual(self.node.clock.getDelayedCalls() and
                         [x for x in self.node.clock.getDelayedCalls() if "liveness" not in repr(x.func)], [])

    def test_not_connected_to_the_relay(self) -> None:
        self.node.ends.open(R2, T).addBoth(self.results.append)
        self.assertIn("not connected to the relay", str(self.failure()))


class InviteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = EndNode()
        self.conn_r = self.node.connect(R)
        self.node.table.accepting = True

    def invite(self, n: int = 1, peer: PeerId = T) -> int:
        c = id_space(R, ME.peer_id) | n
        self.conn_r.dataReceived(messages.encode_invite(c, peer, 65536))
        return c

    def test_accepted_as_tls_server_expecting_the_named_peer(self) -> None:
        c = self.invite()
        [accept] = self.node.sent(R)
        self.assertEqual(accept, messages.RelayAccept(c))
        circuit = self.node.switch.leg(self.conn_r, c)
        self.assertIsInstance(circuit, CircuitTransport)
        tls = circuit.protocol
        conn = tls.wrappedProtocol
        self.assertEqual((conn.initiator, conn.handshake.expected_peer), (False, T))
        self.assertEqual(conn.path, PathInfo("relayed", "relay", None, via=str(R)))
        self.assertIsNone(conn.peer_address)
        self.assertIn(conn, self.node.table.connections)
        self.assertEqual(self.node.named("relay_circuit_opened"), [(T, R)])
        self.assertEqual(self.node.ends.counters["accepted"], 1)

    def assert_refused(self, reason: str, needle: str) -> None:
        c = self.invite()
        [close] = self.node.sent(R)
        self.assertEqual((close.c, close.reason), (c, reason))
        self.assertIn(needle, close.detail)
        self.assertEqual(self.node.switch.leg_count, 0)
        self.assertEqual(self.node.named("relay_circuit_opened"), [])

    def test_refused_when_configured(self) -> None:
        self.node.config = Config(accept_relayed=False)
        self.assert_refused(messages.REASON_REFUSED, "does not accept relayed")

    def test_refused_with_a_node_whitelist(self) -> None:
        self.node.config = Config(whitelisted_node_ips=("10.0.0.0/8",))
        self.assert_refused(messages.REASON_REFUSED, "whitelists")

    def test_refused_with_a_frame_limit_too_small(self) -> None:
        self.node.config = Config(max_message_size=1000)
        self.assert_refused(messages.REASON_REFUSED, "frame limit")

    def test_refused_while_not_running(self) -> None:
        self.node.table.accepting = False
        self.assert_refused(messages.REASON_SHUTDOWN, "not running")

    def test_refused_over_a_relayed_connection(self) -> None:
        self.conn_r.path = PathInfo("relayed", "relay", via=str(R2))
        self.assert_refused(messages.REASON_REFUSED, "relayed")

    def test_refused_from_the_relay_itself(self) -> None:
        c = self.invite(peer=R)
        [close] = self.node.sent(R)
        self.assertEqual((close.c, close.reason), (c, messages.REASON_REFUSED))

    def test_invitations_from_one_relay_are_capped(self) -> None:
        for n in range(1, MAX_ENDS_PER_RELAY + 5):
            self.invite(n)
        sent = self.node.sent(R)
        self.assertEqual(sum(isinstance(f, messages.RelayAccept) for f in sent), MAX_ENDS_PER_RELAY)
        refused = [f for f in sent if isinstance(f, messages.RelayClose)]
        self.assertEqual({f.reason for f in refused}, {messages.REASON_TOO_MANY})
        self.assertEqual(len(refused), 4)

    def test_invitations_from_one_relay_are_rate_limited(self) -> None:
        rate, burst = INVITE_RATE
        for n in range(1, 41):
            self.invite(n)
            c = id_space(R, ME.peer_id) | n
            circuit = self.node.switch.leg(self.conn_r, c)
            if circuit is not None:
                circuit.abortConnection()  # (so that the cap on open circuits is not what refuses)
        sent = self.node.sent(R)
        self.assertEqual(sum(isinstance(f, messages.RelayAccept) for f in sent), int(burst))
        refused = {f.reason for f in sent if isinstance(f, messages.RelayClose) and f.reason != "aborted"}
        self.assertEqual(refused, {messages.REASON_RATE_LIMITED})
        self.node.clock.advance(1.0)
        self.node.sent(R)
        self.invite(100)
        self.assertIsInstance(self.node.sent(R)[0], messages.RelayAccept)

    def test_stop_aborts_every_circuit(self) -> None:
        c = self.invite()
        self.node.sent(R)
        self.node.ends.stop()
        [close] = self.node.sent(R)
        self.assertEqual((close.c, close.reason), (c, messages.REASON_ABORTED))
        self.node.clock.advance(0)
        self.assertEqual(self.node.ends.circuits, 0)


class StrategyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = EndNode(Config(relay_delay=1.5))
        self.rdv = Rendezvous(self.node.table, self.node.clock, serving=lambda: False,
                              delivered=lambda *a: None)
        self.strategy = RelayStrategy(self.node.ends, self.rdv, self.node.table, lambda: self.node.config)
        self.info = PubConnectionInfo(T)

    def test_delay(self) -> None:
        self.assertEqual(self.strategy.delay({}), 1.5)

    def test_targets(self) -> None:
        self.assertEqual(self.strategy.targets(self.info, {}), [])  # no peer to relay through
        self.node.connect(T)
        self.assertEqual(self.strategy.targets(self.info, {}), [])  # only the target itself
        conn_r = self.node.connect(R)
        self.assertEqual(self.strategy.targets(self.info, {}), [RelayTarget(T)])
        self.assertEqual(str(RelayTarget(T)), "relay")
        self.assertEqual(str(RelayTarget(T, (R,))), f"relay (not via {R.short()})")  # the next relay's leg
        self.assertEqual(self.strategy.targets(self.info, {"punch": object()}), [])  # legs added later
        conn_r.path = PathInfo("relayed", "relay", via=str(R2))
        self.assertEqual(self.strategy.targets(self.info, {}), [])  # no relays through relays
        conn_r.path = None
        self.node.config = Config(whitelisted_node_ips=("10.0.0.0/8",))
        self.assertEqual(self.strategy.targets(self.info, {}), [])

    def test_no_relay_found(self) -> None:
        self.node.connect(R)
        results: list[Any] = []
        self.strategy.dial(RelayTarget(T), Purpose()).addBoth(results.append)  # type: ignore[arg-type]
        [(_, query)] = self.node.frames(R)
        q = rdv.decode_query(query).q
        self.node.table.active[R].dataReceived(rdv.encode_answer(q, T, True, False))  # a rendezvous, no relay
        [failure] = results
        self.assertIsInstance(failure.value, CrustError)
        self.assertIn("no relay: none of the 1 peer(s) we asked", str(failure.value))

    def test_found_then_opened(self) -> None:
        conn_r = self.node.connect(R)
        results: list[Any] = []
        purpose = Purpose()
        d = self.strategy.dial(RelayTarget(T), purpose)  # type: ignore[arg-type]
        d.addBoth(results.append)
        [(_, query)] = self.node.frames(R)
        conn_r.dataReceived(rdv.encode_answer(rdv.decode_query(query).q, T, False, True))
        [opened] = self.node.sent(R)
        self.assertIsInstance(opened, messages.RelayOpen)
        conn_r.dataReceived(messages.encode_ready(opened.c, messages.CircuitLimits(10, 1.0, None, 65536)))
        [conn] = results
        self.assertIs(conn.purpose, purpose)
        self.assertEqual((conn.initiator, conn.handshake.expected_peer), (True, T))
        self.assertEqual(conn.path, PathInfo("relayed", "relay", None, via=str(R)))
        self.assertTrue(conn.connected)
        # the TLS ClientHello goes out in the circuit at the end of the turn
        self.node.clock.advance(0)
        [(ftype, payload)] = self.node.frames(R)
        self.assertEqual((ftype, messages.data_circuit(payload)), (RelayFrame.DATA, opened.c))

    def test_cancel_while_opening(self) -> None:
        conn_r = self.node.connect(R)
        d = self.strategy.dial(RelayTarget(T), Purpose())  # type: ignore[arg-type]
        d.addErrback(lambda f: f.trap(CancelledError))
        [(_, query)] = self.node.frames(R)
        conn_r.dataReceived(rdv.encode_answer(rdv.decode_query(query).q, T, False, True))
        [opened] = self.node.sent(R)
        d.cancel()
        [close] = self.node.sent(R)
        self.assertEqual((close.c, close.reason), (opened.c, messages.REASON_CLOSED))
        self.assertEqual(self.node.switch.leg_count, 0)


class SpliceEndTests(SynchronousTestCase):
    """The ends ask for splices, take the relay's tokens and try them (L{crust.relay.spliced}, faked here)."""

    def setUp(self) -> None:
        self.node = EndNode()
        self.dials: list[tuple[Any, Any]] = []
        self.enabled = True
        self.node.ends.splice = EndSplicing(self.node.clock, self.connect_plain, lambda: self.enabled)
        self.conn_r = self.node.connect(R)
        self.node.table.accepting = True

    def connect_plain(self, address: Any, factory: Any, timeout: float) -> Deferred:
        d: Deferred = Deferred()
        self.dials.append((address, d))
        return d

    def test_the_opener_asks_and_tries_the_token(self) -> None:
        results: list[Any] = []
        self.node.ends.open(R, T).addCallback(
            lambda circuit: self.node.ends.run(circuit, Purpose(), tls_client=True)).addBoth(results.append)
        [opened] = self.node.sent(R)
        self.assertTrue(opened.splice)
        self.conn_r.dataReceived(messages.encode_ready(opened.c, messages.CircuitLimits(10, 1.0, None, 65536),
                                                       splice=TOKEN))
        [(address, d)] = self.dials  # the relay's address, as we dialled it
        self.assertEqual(address, self.conn_r.peer_address)
        self.assertEqual(results, [])  # the secure connection waits for the splice, or its failure
        d.errback(Failure(ConnectionLost()))
        [conn] = results
        self.assertIsInstance(conn.transport.transport, CircuitTransport)  # on frames, then

    def test_no_token_no_try(self) -> None:
        results: list[Any] = []
        self.node.ends.open(R, T).addCallback(
            lambda circuit: self.node.ends.run(circuit, Purpose(), tls_client=True)).addBoth(results.append)
        [opened] = self.node.sent(R)
        self.conn_r.dataReceived(messages.encode_ready(opened.c, messages.CircuitLimits(10, 1.0, None, 65536)))
        self.assertEqual(self.dials, [])
        self.assertEqual(len(results), 1)

    def test_not_asked_when_off(self) -> None:
        self.enabled = False
        self.node.ends.open(R, T)
        [opened] = self.node.sent(R)
        self.assertFalse(opened.splice)

    def test_the_invited_end_takes_the_token(self) -> None:
        c = id_space(R, ME.peer_id) | 1
        self.conn_r.dataReceived(messages.encode_invite(c, T, 65536, splice=TOKEN))
        [accept] = self.node.sent(R)
        self.assertEqual((accept.c, accept.splice), (c, True))
        self.assertEqual(len(self.dials), 1)

    def test_the_invited_end_declines_when_off(self) -> None:
        self.enabled = False
        c = id_space(R, ME.peer_id) | 1
        self.conn_r.dataReceived(messages.encode_invite(c, T, 65536, splice=TOKEN))
        [accept] = self.node.sent(R)
        self.assertEqual((accept.c, accept.splice), (c, False))
        self.assertEqual(self.dials, [])
