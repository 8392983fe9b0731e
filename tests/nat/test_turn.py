"""
Tests for L{crust.nat.turn}: the TURN client against a fake server on a
L{Clock} (the long-term credential challenge, stale nonces, refresh timing,
permissions and channels and their refreshes, relaying both ways, errors,
forged responses, deallocation), then against a real coturn on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Any, Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from crust.address import Address
from crust.nat import stun, turn_codec
from crust.nat.stun import Attribute, ErrorCode, MessageClass, StunMessage
from crust.nat.turn import (
    TurnClient,
    TurnError,
    TurnErrorResponse,
    TurnOptions,
    TurnState,
    TurnTimeout,
)

from tests import examples
from tests.mutate import apply_edits, valid_or_mutated

SERVER = Address("udp", "192.0.2.1", 3478)
RELAYED = Address("udp", "192.0.2.1", 50000)
MAPPED = Address("udp", "203.0.113.5", 41000)
PEER = Address("udp", "198.51.100.7", 7000)
REALM = "crust.test"


class FakeTurnServer:
    """
    A TURN server in memory: long-term credentials with a nonce (401 first,
    438 once the nonce is marked stale), allocations, permissions, channels.
    C{reply} decides each answer (None drops the request).
    """

    def __init__(self, client_addr: tuple[str, int] = ("10.0.0.2", 5000), *, lifetime: int = 600,
                 password: str = "secret") -> None:
        self.client_addr = client_addr
        self.client: Optional[TurnClient] = None
        self.lifetime = lifetime
        self.key = stun.long_term_key("alice", REALM, password)
        self.nonce = "nonce-1"
        self.requests: list[StunMessage] = []
        self.indications: list[StunMessage] = []
        self.channel_data: list[tuple[int, bytes]] = []
        self.permissions: dict[str, int] = {}
        self.channels: dict[int, Address] = {}
        self.allocated = False
        self.silent = False
        self.errors: dict[int, tuple[int, str]] = {}  # method -> the error to answer with (once)
        self.sent_to_client: list[bytes] = []

    def send(self, datagram: bytes, addr: tuple[str, int]) -> bool:
        """The client's sender: everything goes to this server."""
        assert addr == SERVER.sockaddr(), addr
        if turn_codec.is_channel_data(datagram):
            self.channel_data.append(turn_codec.decode_channel_data(datagram))
            return True
        message = stun.decode(datagram)
        if message.message_class is MessageClass.INDICATION:
            self.indications.append(message)
            return True
        self.requests.append(message)
        if not self.silent:
            response = self.reply(message)
            if response is not None:
                self.to_client(response)
        return True

    def to_client(self, datagram: bytes) -> None:
        assert self.client is not None
        self.sent_to_client.append(datagram)
        self.client.datagram_received(datagram, SERVER.sockaddr())

    def error(self, request: StunMessage, code: int, reason: str, *, sign: bool = True,
              extra: tuple[Attribute, ...] = ()) -> bytes:
        attrs = (Attribute(stun.ERROR_CODE, ErrorCode(code, reason)),) + extra
        message = StunMessage(MessageClass.ERROR, request.method, request.transaction_id, attrs)
        return stun.encode(message, integrity_key=self.key if sign else None)

    def challenge(self, request: StunMessage, code: int = 401) -> bytes:
        return self.error(request, code, "Unauthorized" if code == 401 else "Stale Nonce", sign=False,
                          extra=(Attribute(stun.REALM, REALM), Attribute(stun.NONCE, self.nonce)))

    def reply(self, request: StunMessage) -> Optional[bytes]:
        if request.get(stun.USERNAME) is None or request.nonce is None:
            return self.challenge(request)
        if not request.verify_integrity(self.key):
            return self.challenge(request)  # a wrong password: the same nonce again
        if request.nonce != self.nonce:
            return self.challenge(request, 438)
        if request.method in self.errors:
            code, reason = self.errors.pop(request.method)
            return self.error(request, code, reason)
        method = request.method
        attrs: tuple[Attribute, ...] = ()
        if method == stun.ALLOCATE:
            if self.allocated:
                return self.error(request, 437, "Allocation Mismatch")
            self.allocated = True
            asked = request.lifetime
            attrs = (Attribute(stun.XOR_RELAYED_ADDRESS, RELAYED), Attribute(stun.XOR_MAPPED_ADDRESS, MAPPED),
                     Attribute(stun.LIFETIME, min(asked, self.lifetime) if asked else self.lifetime))
        elif method == stun.REFRESH:
            if not self.allocated:
                return self.error(request, 437, "Allocation Mismatch")
            granted = self.lifetime if request.lifetime is None else min(request.lifetime, self.lifetime)
            if granted == 0:
                self.allocated = False
            attrs = (Attribute(stun.LIFETIME, granted),)
        elif method == stun.CREATE_PERMISSION:
            for peer in request.get_all(stun.XOR_PEER_ADDRESS):
                self.permissions[peer.host] = self.permissions.get(peer.host, 0) + 1
        elif method == stun.CHANNEL_BIND:
            self.channels[request.get(stun.CHANNEL_NUMBER)] = request.peer_address
        return stun.encode(StunMessage(MessageClass.SUCCESS, method, request.transaction_id, attrs),
                           integrity_key=self.key)

    def relay_from(self, peer: Address, data: bytes) -> None:
        """A peer sent C{data} to the relayed address: ChannelData if bound, else a Data indication."""
        for channel, bound in self.channels.items():
            if bound == peer:
                self.to_client(turn_codec.encode_channel_data(channel, data))
                return
        self.to_client(stun.encode(turn_codec.data_indication(peer, data)))

    def requests_of(self, method: int) -> list[StunMessage]:
        return [r for r in self.requests if r.method == method]


def step(clock: Clock, seconds: float, tick: float = 0.25) -> None:
    """Advance C{clock} in small steps, so timers set by timers run when they are due."""
    for _ in range(round(seconds / tick)):
        clock.advance(tick)


def make_client(testcase: SynchronousTestCase, server: FakeTurnServer, clock: Clock, *, password: str = "secret",
                **options: Any) -> tuple[TurnClient, list, list]:
    data: list = []
    allocations: list = []
    client = TurnClient(server.send, clock, SERVER, "alice", password,
                        on_data=lambda d, p: data.append((d, p)), on_allocation=allocations.append,
                        options=TurnOptions(**options))
    server.client = client
    return client, data, allocations


class AllocationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = FakeTurnServer()
        self.client, self.data, self.allocations = make_client(self, self.server, self.clock)

    def test_challenge_then_authenticated(self):
        """401 with REALM and NONCE, then the request again with credentials and MESSAGE-INTEGRITY."""
        allocation = self.successResultOf(self.client.start())
        first, second = self.server.requests
        self.assertEqual((first.method, first.get(stun.USERNAME)), (stun.ALLOCATE, None))
        self.assertEqual(first.get(stun.REQUESTED_TRANSPORT), 17)
        self.assertEqual((second.get(stun.USERNAME), second.realm, second.nonce), ("alice", REALM, "nonce-1"))
        self.assertTrue(second.verify_integrity(stun.long_term_key("alice", REALM, "secret")))
        self.assertNotEqual(first.transaction_id, second.transaction_id)
        self.assertEqual((allocation.relayed, allocation.mapped, allocation.lifetime), (RELAYED, MAPPED, 600))
        self.assertEqual(self.allocations, [allocation])
        self.assertIs(self.client.state, TurnState.ALLOCATED)
        self.assertEqual(self.client.counters["challenges"], 1)
        status = self.client.status()
        self.assertEqual((status["relayed"], status["lifetime"], status["state"]), (str(RELAYED), 600, "allocated"))

    def test_requested_lifetime(self):
        self.client.options = TurnOptions(lifetime=30)
        allocation = self.successResultOf(self.client.start())
        self.assertEqual(self.server.requests[-1].lifetime, 30)
        self.assertEqual(allocation.lifetime, 30)

    def test_refresh_at_half_the_lifetime(self):
        self.server.lifetime = 100
        self.successResultOf(self.client.start())
        self.clock.advance(49.9)
        self.assertEqual(self.server.requests_of(stun.REFRESH), [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.server.requests_of(stun.REFRESH)), 1)
        self.assertEqual(self.client.allocation.refreshes, 1)
        self.assertEqual(self.client.allocation.refreshed_at, 50.0)
        self.server.lifetime = 40  # the server grants less: the next refresh comes sooner
        self.clock.advance(50)
        self.assertEqual(len(self.server.requests_of(stun.REFRESH)), 2)
        self.assertEqual(self.client.allocation.lifetime, 40)
        self.clock.advance(20)
        self.assertEqual(len(self.server.requests_of(stun.REFRESH)), 3)
        self.assertEqual(self.client.counters["refreshes"], 3)
        self.assertEqual(self.client.status()["expires_in"], 40.0)

    def test_stale_nonce(self):
        """A 438 carries a new nonce: the request goes again with it, and later ones use it."""
        self.successResultOf(self.client.start())
        self.server.nonce = "nonce-2"
        self.clock.advance(300)
        refreshes = self.server.requests_of(stun.REFRESH)
        self.assertEqual([r.nonce for r in refreshes], ["nonce-1", "nonce-2"])
        self.assertEqual(self.client.counters["stale_nonces"], 1)
        self.assertEqual(self.client.allocation.refreshes, 1)
        self.successResultOf(self.client.permit([PEER]))
        self.assertEqual(self.server.requests[-1].nonce, "nonce-2")

    def test_wrong_password(self):
        client, _, _ = make_client(self, self.server, self.clock, password="wrong")
        failure = self.failureResultOf(client.start(), TurnErrorResponse)
        self.assertEqual(failure.value.code, 401)
        self.assertIn("wrong username or password", str(failure.value))
        self.assertEqual(len(self.server.requests), 2)  # no endless retry
        self.assertIs(client.state, TurnState.RETRYING)
        self.assertIn("401", client.last_error)

    def test_error_response_then_retry_with_backoff(self):
        self.server.errors[stun.ALLOCATE] = (486, "Allocation Quota Reached")
        failure = self.failureResultOf(self.client.start(), TurnErrorResponse)
        self.assertEqual((failure.value.code, failure.value.reason), (486, "Allocation Quota Reached"))
        self.assertEqual(self.allocations, [])
        self.clock.advance(29.9)
        self.assertIsNone(self.client.allocation)
        self.clock.advance(0.1)
        self.assertEqual(self.client.allocation.relayed, RELAYED)
        self.assertEqual(len(self.allocations), 1)

    def test_timeout(self):
        """RFC 8489's schedule: 7 transmissions, the last wait 16 RTOs: 39.5 s."""
        self.server.silent = True
        d = self.client.start()
        step(self.clock, 39.25)
        self.assertNoResult(d)
        self.assertEqual(len(self.server.requests), 7)
        step(self.clock, 0.25)
        self.failureResultOf(d, TurnTimeout)
        self.assertEqual(self.client.counters["retransmissions"], 6)
        self.assertEqual(self.client.counters["timeouts"], 1)

    def test_send_failure_fails_at_once(self):
        client = TurnClient(lambda d, a: False, self.clock, SERVER, "alice", "secret")
        self.failureResultOf(client.start())
        self.assertIs(client.state, TurnState.RETRYING)

    def test_refresh_failure_loses_the_allocation(self):
        self.successResultOf(self.client.start())
        self.server.allocated = False  # the server forgot it: 437 to the refresh
        self.clock.advance(300)
        self.assertEqual(self.allocations[-1], None)
        self.assertIs(self.client.state, TurnState.RETRYING)
        self.assertIn("437", self.client.last_error)
        self.clock.advance(30)
        self.assertIs(self.client.state, TurnState.ALLOCATED)
        self.assertEqual(self.allocations[-1].relayed, RELAYED)

    def test_allocation_mismatch_on_allocate(self):
        """437 to an Allocate: an allocation of ours from before; it is deleted, then we allocate again."""
        self.server.allocated = True
        allocation = self.successResultOf(self.client.start())
        self.assertEqual(allocation.relayed, RELAYED)
        methods = [(r.method, r.lifetime) for r in self.server.requests]
        self.assertIn((stun.REFRESH, 0), methods)
        self.assertEqual(methods[-1][0], stun.ALLOCATE)

    def test_forged_responses_are_dropped(self):
        """A success without our MESSAGE-INTEGRITY, or an error with a wrong one, is not taken."""
        self.successResultOf(self.client.start())
        self.server.silent = True
        d = self.client.permit([PEER])
        request = self.server.requests[-1]
        forged = StunMessage(MessageClass.SUCCESS, request.method, request.transaction_id)
        self.server.to_client(stun.encode(forged))
        self.server.to_client(stun.encode(forged, integrity_key=b"not the key"))
        wrong_error = StunMessage(MessageClass.ERROR, request.method, request.transaction_id,
                                  (Attribute(stun.ERROR_CODE, ErrorCode(403, "Forbidden")),))
        self.server.to_client(stun.encode(wrong_error, integrity_key=b"not the key"))
        self.assertNoResult(d)
        self.assertEqual(self.client.counters["bad_integrity"], 3)
        self.server.to_client(stun.encode(forged, integrity_key=self.server.key))
        self.assertEqual(self.successResultOf(d), [PEER.host])

    def test_stop_deallocates(self):
        self.successResultOf(self.client.start())
        d = self.client.stop()
        self.successResultOf(d)
        last = self.server.requests[-1]
        self.assertEqual((last.method, last.lifetime), (stun.REFRESH, 0))
        self.assertFalse(self.server.allocated)
        self.assertIs(self.client.state, TurnState.STOPPED)
        self.assertEqual(self.allocations[-1], None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(self.client.stop())  # again: nothing to do

    def test_stop_without_answer_is_bounded(self):
        self.successResultOf(self.client.start())
        self.server.silent = True
        d = self.client.stop()
        step(self.clock, 1.75)
        self.assertNoResult(d)
        step(self.clock, 0.25)
        self.successResultOf(d)
        self.assertEqual(len(self.server.requests_of(stun.REFRESH)), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_while_allocating_and_restart(self):
        self.server.silent = True
        d = self.client.start()
        self.successResultOf(self.client.stop())
        self.failureResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.server.silent = False
        self.assertEqual(self.successResultOf(self.client.start()).relayed, RELAYED)

    def test_when_settled(self):
        self.server.silent = True
        d = self.client.start()
        settled = self.client.when_settled()
        self.assertNoResult(settled)
        step(self.clock, 40)
        self.failureResultOf(d)
        self.assertIsNone(self.successResultOf(settled))


class PermissionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = FakeTurnServer()
        self.client, self.data, _ = make_client(self, self.server, self.clock, max_permissions=3)

    def test_permit_filters_and_asks_once_per_ip(self):
        self.successResultOf(self.client.start())
        d = self.client.permit([PEER, Address("udp", PEER.host, 9999), Address("tcp", "198.51.100.8", 1),
                                Address("udp", "127.0.0.1", 1), Address("udp", "169.254.1.1", 1),
                                Address("udp", "2001:db8::1", 1), SERVER, RELAYED, "0.0.0.0", "not an ip"])
        self.assertEqual(sorted(self.successResultOf(d)), sorted([PEER.host, PEER.host, "198.51.100.8"]))
        self.assertEqual(self.server.permissions, {PEER.host: 1, "198.51.100.8": 1})
        self.assertEqual(sorted(self.client.permitted()), [PEER.host, "198.51.100.8"])

    def test_permit_before_the_allocation(self):
        d = self.client.permit([PEER])
        self.server.silent = True
        start = self.client.start()
        self.assertNoResult(d)
        self.server.silent = False
        self.clock.advance(0.5)  # the retransmission gets through
        self.successResultOf(start)
        self.assertEqual(self.successResultOf(d), [PEER.host])

    def test_refresh_while_wanted_then_expire(self):
        """Refreshed every 240 s while within the 300 s hold; then let go."""
        self.successResultOf(self.client.start())
        self.successResultOf(self.client.permit([PEER]))
        self.clock.advance(240)
        self.assertEqual(self.server.permissions[PEER.host], 2)
        self.clock.advance(240)  # 480 s: past the hold, and no relayed peer of that IP
        self.assertEqual(self.server.permissions[PEER.host], 2)
        self.assertEqual(self.client.permitted(), [])

    def test_kept_while_a_peer_talks(self):
        self.successResultOf(self.client.start())
        self.successResultOf(self.client.permit([PEER]))
        for _ in range(4):
            self.server.relay_from(PEER, b"ping")
            self.clock.advance(240)
        self.assertEqual(self.server.permissions[PEER.host], 5)
        self.assertEqual(self.client.permitted(), [PEER.host])

    def test_cap(self):
        self.successResultOf(self.client.start())
        ips = [f"198.51.100.{i}" for i in range(10, 14)]
        granted = self.successResultOf(self.client.permit(ips))
        self.assertEqual(granted, ips[:3])
        self.assertEqual(self.client.counters["permissions_refused"], 1)
        self.clock.advance(600)  # the first three are not wanted any more: room for new ones
        self.assertEqual(self.successResultOf(self.client.permit(ips[3:])), ips[3:])

    def test_refused_permission_asked_again_later(self):
        self.successResultOf(self.client.start())
        self.server.errors[stun.CREATE_PERMISSION] = (403, "Forbidden IP")
        self.assertEqual(self.successResultOf(self.client.permit([PEER])), [])
        self.assertEqual(self.client.permitted(), [])
        self.assertEqual(self.successResultOf(self.client.permit([PEER])), [PEER.host])


class RelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = FakeTurnServer()
        self.routes: dict = {}
        self.client, self.data, _ = make_client(self, self.server, self.clock, max_peers=2)
        self.client.routes = self.routes
        self.successResultOf(self.client.start())
        self.successResultOf(self.client.permit([PEER]))

    def test_data_indication_then_channel(self):
        self.server.silent = True  # hold the ChannelBind's answer
        self.server.relay_from(PEER, b"hello")
        self.assertEqual(self.data, [(b"hello", PEER.sockaddr())])
        self.assertIs(self.routes[PEER.sockaddr()], self.client)
        bind = self.server.requests[-1]
        self.assertEqual((bind.method, bind.get(stun.CHANNEL_NUMBER), bind.peer_address),
                         (stun.CHANNEL_BIND, 0x4000, PEER))
        self.assertTrue(self.client.send(b"before", PEER.sockaddr()))
        indication = self.server.indications[-1]
        self.assertEqual((indication.method, indication.peer_address, indication.get(stun.DATA)),
                         (stun.SEND, PEER, b"before"))
        self.server.silent = False
        self.clock.advance(0.5)  # the ChannelBind retransmits and is answered
        self.assertTrue(self.client.send(b"after", PEER.sockaddr()))
        self.assertEqual(self.server.channel_data, [(0x4000, b"after")])
        self.server.relay_from(PEER, b"on the channel")
        self.assertEqual(self.data[-1], (b"on the channel", PEER.sockaddr()))
        self.assertEqual(self.client.counters["channel_data_in"], 1)
        self.assertEqual(self.client.status()["channels"], 1)
        self.assertEqual(self.client.status()["peers"], [PEER.host_port()])

    def test_channel_refreshed_while_heard_then_forgotten(self):
        self.server.relay_from(PEER, b"hello")
        binds = lambda: len(self.server.requests_of(stun.CHANNEL_BIND))  # noqa: E731
        self.assertEqual(binds(), 1)
        self.clock.advance(300)
        self.server.relay_from(PEER, b"still here")
        self.clock.advance(180)  # 480 s: heard from 180 s ago
        self.assertEqual(binds(), 2)
        self.clock.advance(480)  # 960 s: silent for 660 s
        self.assertEqual(binds(), 2)
        self.assertEqual(self.routes, {})
        self.assertFalse(self.client.send(b"x", PEER.sockaddr()) and self.server.channel_data)

    def test_peers_capped(self):
        for port in (1, 2, 3):
            self.clock.advance(1)
            self.server.relay_from(Address("udp", PEER.host, port), b"x")
        self.assertEqual(sorted(self.routes), [(PEER.host, 2), (PEER.host, 3)])
        self.assertEqual(self.client.counters["peers_evicted"], 1)
        self.assertEqual(sorted(self.server.channels), [0x4000, 0x4001, 0x4002])  # never reused

    def test_bad_datagrams(self):
        taken = self.client.datagram_received
        self.assertTrue(taken(b"\x40\x00\x00\x09short", SERVER.sockaddr()))
        self.assertTrue(taken(turn_codec.encode_channel_data(0x4123, b"x"), SERVER.sockaddr()))
        bare = StunMessage(MessageClass.INDICATION, stun.DATA_INDICATION, stun.new_transaction_id())
        self.assertTrue(taken(stun.encode(bare), SERVER.sockaddr()))
        self.assertEqual((self.client.counters["malformed"], self.client.counters["unknown_channel"]), (2, 1))
        self.assertEqual(self.data, [])
        # not ours: left to the endpoint's first-byte map
        binding_response = stun.make_binding_success(stun.make_binding_request(), MAPPED)
        self.assertFalse(taken(stun.encode(binding_response), SERVER.sockaddr()))
        self.assertFalse(taken(stun.encode(stun.make_binding_request()), SERVER.sockaddr()))
        self.assertFalse(taken(b"\xc0quic", SERVER.sockaddr()))
        self.assertFalse(taken(b"", SERVER.sockaddr()))
        self.assertFalse(taken(b"\x00\x01not stun at all", SERVER.sockaddr()))

    def test_late_duplicate_response_is_taken(self):
        response = self.server.sent_to_client[-1]
        self.assertTrue(self.client.datagram_received(response, SERVER.sockaddr()))
        self.assertEqual(self.client.counters["duplicates"], 1)

    def test_no_relaying_without_an_allocation(self):
        self.successResultOf(self.client.stop())
        self.assertFalse(self.client.send(b"x", PEER.sockaddr()))
        self.server.relay_from(PEER, b"late")
        self.assertEqual(self.data, [])
        self.assertEqual(self.client.counters["dropped_no_allocation"], 2)

    def test_lost_allocation_forgets_peers_keeps_wanted_permissions(self):
        self.server.relay_from(PEER, b"hello")
        self.server.allocated = False
        self.clock.advance(300)  # the refresh gets 437
        self.assertEqual(self.routes, {})
        self.assertEqual(self.client.permitted(), [])
        before = self.server.permissions[PEER.host]
        self.clock.advance(30)  # allocated again: the permission (still wanted: the peer talked) asked again
        self.assertIs(self.client.state, TurnState.ALLOCATED)
        self.assertEqual(self.server.permissions[PEER.host], before + 1)


# --- a real coturn on loopback -------------------------------------------------------------------


class _Socket(DatagramProtocol):
    def __init__(self) -> None:
        self.handler: Any = None
        self.received: list[tuple[bytes, Any]] = []
        self.waiting: Optional[Deferred] = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.handler is not None and self.handler(data, addr):
            return
        self.received.append((data, addr))
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.callback(None)


def _free_udp_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Coturn:
    """
    coturn on 127.0.0.1 as a TURN server with long-term credentials (user
    C{alice}, password C{secret}, realm C{crust.test}) and
    C{allow-loopback-peers}; C{extra} config lines (short lifetimes...).
    Skips the test when coturn is not installed; stopped at cleanup.
    """

    def __init__(self, testcase: TestCase, *extra: str) -> None:
        turnserver = shutil.which("turnserver")
        if turnserver is None:
            raise SkipTest("turnserver (coturn) is not installed: apt-get install coturn to run these tests")
        self.tmp = tempfile.mkdtemp(prefix="crust-coturn-turn-")
        testcase.addCleanup(shutil.rmtree, self.tmp, True)
        port = _free_udp_port("127.0.0.1")
        self.address = Address("udp", "127.0.0.1", port)
        self.log_path = os.path.join(self.tmp, "turnserver.log")
        config = os.path.join(self.tmp, "turnserver.conf")
        with open(config, "w") as f:
            f.write("\n".join([
                "listening-ip=127.0.0.1", "relay-ip=127.0.0.1", f"listening-port={port}",
                "min-port=49152", "max-port=65535",
                "lt-cred-mech", "user=alice:secret", "realm=crust.test", "allow-loopback-peers",
                *extra,
                "no-cli", "no-tls", "no-dtls", "no-tcp", "simple-log", "verbose", "no-stdout-log",
                f"log-file={self.log_path}", f"pidfile={os.path.join(self.tmp, 'turnserver.pid')}",
                f"userdb={os.path.join(self.tmp, 'turndb')}", ""]))
        self.process = subprocess.Popen([turnserver, "-c", config], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        testcase.addCleanup(self.stop)
        self.testcase = testcase

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def log(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    async def ready(self) -> None:
        """Wait (10 s at most) until coturn has started its servers."""
        for _ in range(100):
            if self.process.poll() is not None:
                self.testcase.fail(f"turnserver exited with {self.process.returncode}:\n{self.log()[-2000:]}")
            if "Total General servers" in self.log():
                await deferLater(reactor, 0.1, lambda: None)
                return
            await deferLater(reactor, 0.1, lambda: None)
        self.testcase.fail("turnserver did not start within 10 s")


class CoturnTurnTests(TestCase):
    """
    coturn on 127.0.0.1 (L{Coturn}; a socket on 127.0.0.2 is the peer), a
    20 s allocation lifetime and a 6 s nonce lifetime.
    """

    timeout = 60

    def setUp(self):
        self.coturn = Coturn(self, "max-allocate-lifetime=20", "stale-nonce=6")
        self.server = self.coturn.address
        self.ours = _Socket()
        self.addCleanup(reactor.listenUDP(0, self.ours, interface="127.0.0.1").stopListening)
        self.peer = _Socket()
        self.addCleanup(reactor.listenUDP(0, self.peer, interface="127.0.0.2").stopListening)
        self.data: list = []
        self.client = TurnClient(lambda d, a: self.ours.transport.write(d, a), reactor, self.server, "alice",
                                 "secret", on_data=lambda d, p: self.data.append((d, p)),
                                 options=TurnOptions(lifetime=10, rto=0.1, permit_loopback=True))
        self.ours.handler = self.client.datagram_received
        self.addCleanup(lambda: self.client.stop())
        return self.coturn.ready()

    def _log(self) -> str:
        return self.coturn.log()

    async def _peer_receives(self, count: int) -> None:
        for _ in range(50):
            if len(self.peer.received) >= count:
                return
            await deferLater(reactor, 0.05, lambda: None)

    async def _we_receive(self, count: int) -> None:
        for _ in range(50):
            if len(self.data) >= count:
                return
            await deferLater(reactor, 0.05, lambda: None)

    async def test_relay_both_ways_refresh_and_deallocate(self):
        allocation = await self.client.start()
        self.assertEqual(allocation.relayed.host, "127.0.0.1")
        self.assertEqual(allocation.mapped, Address("udp", "127.0.0.1", self.ours.transport.getHost().port))
        self.assertLessEqual(allocation.lifetime, 20)
        peer_port = self.peer.transport.getHost().port
        self.assertEqual(await self.client.permit([Address("udp", "127.0.0.2", peer_port)]), ["127.0.0.2"])
        relayed = allocation.relayed.sockaddr()
        self.peer.transport.write(b"one", relayed)
        await self._we_receive(1)
        self.assertEqual(self.data, [(b"one", ("127.0.0.2", peer_port))])  # a Data indication
        self.client.send(b"back", ("127.0.0.2", peer_port))
        await self._peer_receives(1)
        self.assertEqual(self.peer.received, [(b"back", relayed)])
        await deferLater(reactor, 0.3, lambda: None)  # the channel is bound by now
        self.assertEqual(self.client.status()["channels"], 1)
        self.client.send(b"on the channel", ("127.0.0.2", peer_port))
        self.peer.transport.write(b"two", relayed)
        await self._peer_receives(2)
        await self._we_receive(2)
        self.assertEqual(self.peer.received[-1], (b"on the channel", relayed))
        self.assertEqual(self.data[-1], (b"two", ("127.0.0.2", peer_port)))
        self.assertEqual(self.client.counters["channel_data_in"], 1)
        self.assertGreaterEqual(self.client.counters["sent_channel_data"], 1)
        self.assertEqual(self.client.counters["sent_channel_data"] + self.client.counters["sent_indications"], 2)
        await deferLater(reactor, allocation.lifetime / 2 + 1, lambda: None)  # the refresh, past the 6 s nonce
        self.assertEqual(self.client.allocation.refreshes, 1)
        self.assertGreaterEqual(self.client.counters["stale_nonces"], 1)
        self.peer.transport.write(b"three", relayed)
        await self._we_receive(3)
        self.assertEqual(self.data[-1][0], b"three")
        await self.client.stop()
        self.assertIs(self.client.state, TurnState.STOPPED)
        self.assertIn("lifetime=0", self._log())
        self.peer.transport.write(b"after", relayed)
        await deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(self.data[-1][0], b"three")

    async def test_wrong_password(self):
        client = TurnClient(lambda d, a: self.ours.transport.write(d, a), reactor, self.server, "alice", "wrong",
                            options=TurnOptions(rto=0.1))
        self.ours.handler = client.datagram_received
        try:
            await client.start()
        except TurnErrorResponse as e:
            self.assertEqual(e.code, 401)
        else:
            self.fail("allocated with a wrong password")
        await client.stop()


# -- property test: a TURN server (or someone spoofing its address) that answers anything ----------------------


class DamagingServer(FakeTurnServer):
    """The fake server, whose answers a test may damage (C{damage(datagram)} returns what is sent instead)."""

    damage: Any = None

    def to_client(self, datagram: bytes) -> None:
        if self.damage is not None:
            datagram = self.damage(datagram)
        super().to_client(datagram)


_peers = st.sampled_from([PEER, Address("udp", "198.51.100.8", 7001), Address("udp", "198.51.100.7", 7002)])
_turn_steps = st.lists(st.one_of(
    st.tuples(st.just("permit"), _peers),
    st.tuples(st.just("send"), _peers, st.binary(max_size=20)),
    st.tuples(st.just("relay"), _peers, st.binary(max_size=20)),
    st.tuples(st.just("damage"), st.lists(st.tuples(st.sampled_from(["flip", "put", "insert", "delete", "truncate",
                                                                       "repeat"]),
                                                     st.integers(0, 1 << 16), st.integers(1, 255)),
                                           min_size=1, max_size=3)),
    st.tuples(st.just("spoof"), valid_or_mutated(st.builds(
        lambda tid, peer, data: stun.encode(turn_codec.data_indication(peer, data)) if tid is None
        else turn_codec.encode_channel_data(0x4000, data), st.none() | st.just(1), _peers, st.binary(max_size=20)))),
    st.tuples(st.just("time"), st.sampled_from([0.3, 2.0, 60.0, 400.0])),
), max_size=10)


def _damage_with(edits: list[tuple[str, int, int]]) -> Any:
    """A damage function applying C{edits} (with byte arguments where an edit takes bytes)."""
    edits = [(kind, at, bytes([arg]) if kind in ("put", "insert") else arg) for kind, at, arg in edits]
    return lambda datagram: apply_edits(datagram, edits)


class HostileServerTests(SynchronousTestCase):
    """
    A client whose server's answers are damaged at any point, and datagrams
    from the server's address made by anyone: the client never raises or
    logs an error, its Deferreds fail only with L{TurnError}s, and it keeps
    within its caps.
    """

    @examples(150)
    @given(st.booleans(), _turn_steps)
    def test_any_answers(self, damage_from_start: bool, steps: list[tuple[Any, ...]]) -> None:
        clock = Clock()
        server = DamagingServer()
        client, data, _ = make_client(self, server, clock, max_peers=2, max_permissions=2)
        outcomes: list[Any] = []

        def keep(d: Deferred) -> None:
            d.addBoth(outcomes.append)

        if damage_from_start:
            server.damage = _damage_with([("flip", 30, 1)])
        keep(client.start())
        for kind, *args in steps:
            if kind == "permit":
                keep(client.permit([args[0]]))
            elif kind == "send":
                client.send(args[1], args[0].sockaddr())
            elif kind == "relay":
                server.relay_from(args[0], args[1])
            elif kind == "damage":
                server.damage = _damage_with(args[0])
            elif kind == "spoof":
                client.datagram_received(args[0], SERVER.sockaddr())
            else:
                step(clock, args[0], tick=0.3)
            self.assertLessEqual(len(client.relayed_peers()), 2)
            self.assertLessEqual(len(client.permitted()), 2)
            self.assertEqual(self.flushLoggedErrors(), [])
        keep(client.stop())
        step(clock, 5, tick=0.5)
        for outcome in outcomes:
            if isinstance(outcome, Failure):
                self.assertIsInstance(outcome.value, (TurnError, CancelledError), outcome.getTraceback())
        self.assertEqual(self.flushLoggedErrors(), [])
