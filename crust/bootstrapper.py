"""
Bootstrapping, both ways, for a L{crust.Service}.

Requesting: L{Bootstrapper.bootstrap} gathers candidates (LAN discovery
replies, then the bootstrap cache, then the hard-coded contacts, minus the
blacklist), runs them through L{crust.bootstrap_plan.run_bootstrap} with a
real C{try_candidate} (a connection with the C{bootstrap} intent), and
reports the outcome as events.

Accepting: L{Bootstrapper.admit} decides on a peer's bootstrap request:
accepting at all, the whitelist for its role, and for a C{node} the external
reachability test (a fresh connection back to its claimed listeners).

It also keeps the cache honest: L{CacheValidator} probes entries not seen for
the cache timeout, so a bootstrap finds live peers first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

from twisted.application.service import Service as _TwistedService
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust.address import Address
from crust.bootstrap_plan import BootstrapFailed, Candidate, plan_candidates, run_bootstrap
from crust.errors import ConnectFailed, HandshakeRefused
from crust.identity import PeerId
from crust.roles import Role
from crust.wire import Hello, Intent, RejectReason

if TYPE_CHECKING:
    from crust.connection import PeerConnection
    from crust.service import Service

REACHABILITY_TIMEOUT = 3.0
REACHABILITY_MAX_ADDRESSES = 3


class Bootstrapper:
    log = Logger()

    def __init__(self, service: "Service") -> None:
        self.service = service
        self._running: Optional[Deferred] = None
        self.bootstrapped_to: Optional[tuple[PeerId, Address]] = None

    # -- requesting -------------------------------------------------------------

    def bootstrap(self, blacklist: Iterable[Union[Address, str]] = (), role: Role = Role.NODE) -> Deferred:
        service = self.service
        d = service.start_listening()
        d.addCallback(lambda _: self._discover())
        d.addCallback(self._run, blacklist, role)
        return d

    def _discover(self) -> Deferred:
        requester = self.service.discovery_requester
        if requester is None:
            return succeed([])
        d = requester.discover()

        def failed(f: Failure) -> list:
            self.log.warn("LAN discovery failed: {error}", error=str(f.value))
            return []

        return d.addErrback(failed)

    def _run(self, lan: list, blacklist: Iterable[Union[Address, str]], role: Role) -> Deferred:
        service = self.service
        config = service.config
        cache = service.bootstrap_cache
        cached: list[Any] = []
        if cache is not None:
            found = cache.candidates()
            cached = list(found.fresh) + list(found.stale)
        candidates = plan_candidates(
            lan=[(p.peer_id, p.addresses) for p in lan],
            cached=cached,
            hard_coded=config.hard_coded_contacts,
            blacklist=list(blacklist),
            our_peer_id=service.peer_id,
            transports=tuple(service.accepting_transports),
        )
        self.log.info(
            "bootstrapping as {role} from {count} candidate(s): {candidates}",
            role=str(role), count=len(candidates), candidates=", ".join(map(str, candidates[:10])),
        )
        result = run_bootstrap(
            candidates,
            lambda c: self._try(c, role),
            clock=service.clock,
            timeout=config.bootstrap_timeout,
            concurrency=config.bootstrap_concurrency,
            cache=cache,
            release=self._release,
        )
        result.addCallbacks(self._succeeded, self._failed)
        return result

    def _try(self, candidate: Candidate, role: Role) -> Deferred:
        service = self.service
        conn_box: list["PeerConnection"] = []

        def cancel(d: Deferred) -> None:
            if conn_box and conn_box[0].connected and not conn_box[0].is_active:
                conn_box[0].close_duplicate()
            elif not conn_box:
                dial.cancel()

        result: Deferred = Deferred(cancel)
        dial = service._dial(candidate.address, candidate.peer_id, None, Intent.BOOTSTRAP,
                             bootstrap=result, role=str(role))

        def dialled(conn: "PeerConnection") -> None:
            conn_box.append(conn)

        def dial_failed(f: Failure) -> None:
            if not result.called:
                result.errback(f)

        dial.addCallbacks(dialled, dial_failed)
        return result

    def _release(self, candidate: Candidate, peer_id: PeerId) -> None:
        """A bootstrap connection that did not count: close it."""
        self.service.disconnect(peer_id)

    def _succeeded(self, result: Any) -> PeerId:
        peer_id, address = result.peer_id, result.candidate.address
        self.bootstrapped_to = (peer_id, address)
        self.log.info("bootstrapped to {peer} at {address}", peer=str(peer_id), address=str(address))
        self.service._emit("bootstrap_connect", peer_id, address)
        return peer_id

    def _failed(self, failure: Failure) -> Failure:
        self.log.warn("bootstrap failed: {reason}", reason=str(failure.value))
        self.service._emit("bootstrap_failed", failure.value)
        return failure

    # -- accepting ----------------------------------------------------------------

    def admit(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        service = self.service
        config = service.config
        if not service.running_for_peers or not config.accept_bootstrap:
            conn.handshake.admission_result(
                False, RejectReason.BOOTSTRAP_DENIED, "this node does not accept bootstrap requests")
            return
        try:
            role = Role.from_text(hello.role)
        except ValueError:
            conn.handshake.admission_result(False, RejectReason.MALFORMED, f"unknown role {hello.role!r}")
            return
        if not service._ip_allowed(conn, role):
            conn.handshake.admission_result(
                False, RejectReason.NOT_WHITELISTED, f"{conn.peer_address.host} is not whitelisted for {role} peers")
            return
        if role is Role.CLIENT or not config.external_reachability_test:
            conn.handshake.admission_result(True)
            return
        self._test_reachability(conn, peer_id, hello)

    def _test_reachability(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        service = self.service
        source = conn.peer_address.host if conn.peer_address is not None else None
        targets = [a for a in hello.listeners if a.host == source and service._may_dial(a)]
        targets = targets[:REACHABILITY_MAX_ADDRESSES]
        if not targets:
            conn.handshake.admission_result(
                False, RejectReason.FAILED_REACHABILITY,
                f"none of the listeners you claim is at the address your request came from ({source})")
            return
        service = self.service
        outcomes: dict[Address, str] = {}
        probes = []
        decided = []

        def reached(result: Any, address: Address) -> None:
            outcomes[address] = "reached"
            if not decided:
                decided.append(True)
                self.log.info("reachability test of {peer} passed at {address}", peer=str(peer_id), address=str(address))
                conn.handshake.admission_result(True)

        def missed(f: Failure, address: Address) -> None:
            outcomes[address] = "timed out" if f.check(CancelledError) else str(f.value)

        for address in targets:
            d = service.probe(address, expected_peer=peer_id)
            d.addTimeout(REACHABILITY_TIMEOUT, service.clock)
            d.addCallbacks(reached, missed, callbackArgs=(address,), errbackArgs=(address,))
            probes.append(d)

        def all_done(_: Any) -> None:
            if not decided:
                detail = "; ".join(f"{a}: {outcomes.get(a, 'no answer')}" for a in targets)
                self.log.info("reachability test of {peer} failed: {detail}", peer=str(peer_id), detail=detail)
                conn.handshake.admission_result(
                    False, RejectReason.FAILED_REACHABILITY, f"could not reach you back from a fresh socket: {detail}")

        DeferredList(probes, consumeErrors=True).addCallback(all_done)


def bootstrap_error(conn: "PeerConnection", reason: str) -> Exception:
    """The exception a failed bootstrap attempt reports for C{conn}."""
    refusal = getattr(conn, "refusal", None)
    if refusal is not None:
        return HandshakeRefused(*refusal)
    return ConnectFailed(conn.peer_id, [f"{conn.peer_address}: {reason}"], "bootstrap attempt failed")


class CacheValidator(_TwistedService):
    """
    Every cache timeout, probe the cached peers not seen for that long
    (a few at a time) and record whether they answered.  A peer that is
    briefly down only gains a failure count; the cache evicts it only when
    it needs the room.
    """

    log = Logger()
    CONCURRENCY = 8

    def __init__(self, service: "Service") -> None:
        self.service = service
        self._loop: Optional[LoopingCall] = None
        self._running_round: Optional[Deferred] = None

    def startService(self) -> None:
        _TwistedService.startService(self)
        cache = self.service.bootstrap_cache
        if cache is None:
            return
        self._loop = LoopingCall(self.validate)
        self._loop.clock = self.service.clock
        self._loop.start(cache.timeout, now=False)

    def stopService(self) -> Any:
        _TwistedService.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def validate(self) -> Deferred:
        """Probe the stale entries once; fires when done."""
        cache = self.service.bootstrap_cache
        if cache is None or self._running_round is not None or not self.service.running_for_peers:
            return succeed(None)
        stale = list(cache.candidates().stale)
        if not stale:
            return succeed(None)
        pending = list(stale)

        def probe_next(_: Any = None) -> Optional[Deferred]:
            if not pending:
                return None
            entry = pending.pop(0)
            d = self.service.probe(entry.address, expected_peer=entry.peer_id)
            d.addTimeout(REACHABILITY_TIMEOUT, self.service.clock)

            def alive(_: Any) -> None:
                cache.record_alive(entry.peer_id)

            def dead(f: Failure) -> None:
                self.log.info("cached peer {peer} at {address} did not answer: {reason}",
                              peer=str(entry.peer_id), address=str(entry.address), reason=str(f.value))
                cache.record_failure(entry.peer_id)

            d.addCallbacks(alive, dead)
            d.addCallback(probe_next)
            return d

        workers = [probe_next() for _ in range(min(self.CONCURRENCY, len(pending)))]
        round_done = DeferredList([w for w in workers if w is not None], consumeErrors=True)
        self._running_round = round_done

        def finished(_: Any) -> None:
            self._running_round = None

        round_done.addCallback(finished)
        return round_done
