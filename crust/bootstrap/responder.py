"""
L{BootstrapResponder}: deciding on other peers' bootstrap requests.

The peer table hands it each request (a HELLO with the C{bootstrap} intent);
it decides whether we accept bootstrap requests at all, whether the
requester's address is whitelisted for the role it claims, and, for a
C{node}, whether it passes the external reachability test (a fresh
connection back to one of the listeners it claims, at the address its
request came from).  It answers on the connection
(L{crust.session.connection.PeerConnection.admission_result}) and tells the
observers of each peer that bootstrapped off us.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import CancelledError, DeferredList, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust.address import Address
from crust.peering.admission import Admission
from crust.config import Config
from crust.identity import PeerId
from crust.roles import Role
from crust.wire import Hello, RejectReason

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection
    from crust.peering.dialer import Dialer
    from crust.peering.table import PeerTable

REACHABILITY_TIMEOUT = 3.0
REACHABILITY_MAX_ADDRESSES = 3


class BootstrapResponder:
    """
    @param config: returns the node's current L{Config}.
    @param running: returns whether the node runs.
    @param emit: the observers' event fan-out.
    """

    log = Logger()

    def __init__(self, table: "PeerTable", dialer: "Dialer", admission: Admission, clock: Any,
                 config: Callable[[], Config], running: Callable[[], bool], emit: Callable[..., None]) -> None:
        self._dialer = dialer
        self._admission = admission
        self._clock = clock
        self._config = config
        self._running = running
        self._emit = emit
        table.set_bootstrap_admitter(self.admit)
        table.listen(self)

    # -- PeerListener --------------------------------------------------------------

    def peer_promoted(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        if conn.is_bootstrap and not conn.initiator:
            role = self._admission.peer_role(conn)
            self.log.info("{peer} bootstrapped off us as {role}", peer=str(peer_id), role=str(role))
            self._emit("bootstrap_accept", peer_id, role)

    def connection_ended(self, conn: "PeerConnection", reason: str) -> None:
        pass

    # -- deciding -----------------------------------------------------------------

    def admit(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        config = self._config()
        if not self._running() or not config.accept_bootstrap:
            conn.admission_result(False, RejectReason.BOOTSTRAP_DENIED, "this node does not accept bootstrap requests")
            return
        try:
            role = Role.from_text(hello.role)
        except ValueError:
            conn.admission_result(False, RejectReason.MALFORMED, f"unknown role {hello.role!r}")
            return
        if not self._admission.ip_allowed(conn, role):
            host = conn.peer_address.host if conn.peer_address is not None else "?"
            conn.admission_result(False, RejectReason.NOT_WHITELISTED, f"{host} is not whitelisted for {role} peers")
            return
        if role is Role.CLIENT or not config.external_reachability_test:
            conn.admission_result(True)
            return
        self._test_reachability(conn, peer_id, hello)

    def _test_reachability(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        source = conn.peer_address.host if conn.peer_address is not None else None
        targets = [a for a in hello.listeners if a.host == source and self._dialer.may_dial(a)]
        targets = targets[:REACHABILITY_MAX_ADDRESSES]
        if not targets:
            conn.admission_result(
                False, RejectReason.FAILED_REACHABILITY,
                f"none of the listeners you claim is at the address your request came from ({source})")
            return
        outcomes: dict[Address, str] = {}
        probes = []
        decided: list[bool] = []

        def reached(result: Any, address: Address) -> None:
            outcomes[address] = "reached"
            if not decided:
                decided.append(True)
                self.log.info("reachability test of {peer} passed at {address}",
                              peer=str(peer_id), address=str(address))
                conn.admission_result(True)

        def missed(f: Failure, address: Address) -> None:
            if f.check(CancelledError, TimeoutError):
                outcomes[address] = f"no answer within {REACHABILITY_TIMEOUT:g} s"
            else:
                outcomes[address] = f.getErrorMessage() or type(f.value).__name__

        for address in targets:
            d = self._dialer.probe(address, expected_peer=peer_id)
            d.addTimeout(REACHABILITY_TIMEOUT, self._clock)
            d.addCallbacks(reached, missed, callbackArgs=(address,), errbackArgs=(address,))
            probes.append(d)

        def all_done(_: Any) -> None:
            if not decided:
                detail = "; ".join(f"{a}: {outcomes.get(a, 'no answer')}" for a in targets)
                self.log.info("reachability test of {peer} failed: {detail}", peer=str(peer_id), detail=detail)
                conn.admission_result(
                    False, RejectReason.FAILED_REACHABILITY, f"could not reach you back from a fresh socket: {detail}")

        DeferredList(probes, consumeErrors=True).addCallback(all_done)
