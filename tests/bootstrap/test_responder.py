"""
Tests for L{crust.bootstrap.responder}: the reasons a reachability test
gives, on a L{Clock} with a dialer whose probes are scripted.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.bootstrap.responder import REACHABILITY_TIMEOUT, BootstrapResponder
from crust.config import Config
from crust.identity import Identity
from crust.wire import Hello, RejectReason

SOURCE = "203.0.113.10"


class FakeTable:
    def set_bootstrap_admitter(self, admitter: Any) -> None:
        self.admitter = admitter

    def listen(self, listener: Any) -> None:
        pass


class FakeAdmission:
    def ip_allowed(self, conn: Any, role: Any) -> bool:
        return True


class FakeDialer:
    def __init__(self) -> None:
        self.probes: dict[Address, Deferred] = {}

    def may_dial(self, address: Address) -> bool:
        return True

    def probe(self, address: Address, expected_peer: Any = None) -> Deferred:
        d = self.probes.get(address)
        return d if d is not None else Deferred()  # no answer, ever


class FakeConnection:
    peer_address = Address("tcp", SOURCE, 40000)

    def __init__(self) -> None:
        self.results: list[tuple] = []

    def admission_result(self, ok: bool, reason: Any = None, detail: str = "") -> None:
        self.results.append((ok, reason, detail))


class ReachabilityReasonTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dialer = FakeDialer()
        self.responder = BootstrapResponder(FakeTable(), self.dialer, FakeAdmission(), self.clock,  # type: ignore
                                            lambda: Config(accept_bootstrap=True), lambda: True, lambda *a: None)

    def test_silent_and_refused_listeners_are_named_plainly(self) -> None:
        silent, refused = Address("tcp", SOURCE, 5483), Address("udp", SOURCE, 5484)
        self.dialer.probes[refused] = fail(ConnectionRefusedError())
        conn = FakeConnection()
        hello = Hello(network="n", role="node", listeners=(silent, refused))
        self.responder.admit(conn, Identity.generate().peer_id, hello)  # type: ignore[arg-type]
        self.assertEqual(conn.results, [])
        self.clock.advance(REACHABILITY_TIMEOUT)
        [(ok, reason, detail)] = conn.results
        self.assertEqual((ok, reason), (False, RejectReason.FAILED_REACHABILITY))
        self.assertIn(f"{silent}: no answer within {REACHABILITY_TIMEOUT:g} s", detail)
        self.assertIn(f"{refused}: Connection was refused by other side", detail)
        self.assertNotIn("Deferred", detail)
