"""
Bootstrapping, as the requester, for a L{crust.service.Service}.

L{Bootstrapper.bootstrap} gathers candidates (LAN discovery replies, then
the bootstrap cache, then the hard-coded contacts, minus the blacklist), runs
them through L{crust.bootstrap.plan.run_bootstrap} with a real
C{try_candidate} (a connection with the C{bootstrap} intent, whose purpose is
a L{BootstrapRequest}), and reports the outcome as events.  It also records
every peer we reached by dialling it in the bootstrap cache.

It keeps the cache honest too: L{CacheValidator} probes entries not seen for
the cache timeout, so a bootstrap finds live peers first.

(Granting other peers' requests is L{crust.bootstrap.responder}.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Protocol, Union

from twisted.application.service import Service as _TwistedService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from crust.address import Address
from crust.bootstrap.cache import BootstrapCache
from crust.bootstrap.plan import BootstrapFailed, Candidate, plan_candidates, run_bootstrap
from crust.config import Config
from crust.errors import ConnectFailed, HandshakeRefused
from crust.identity import PeerId
from crust.session.purpose import Purpose
from crust.roles import Role
from crust.wire import CloseReason, Intent, RejectReason

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection
    from crust.peering.dialer import Dialer
    from crust.peering.table import PeerTable

REACHABILITY_TIMEOUT = 3.0
BOOTSTRAP_TRIES = 2  # requests to one candidate, when the peer dropped the connection the first one gave way to


class PeerDroppedBootstrap(ConnectFailed):
    """
    Our request gave way to the peer's own bootstrap connection to us, which
    the peer then dropped (its bootstrap had won elsewhere): we are not
    connected to it, but a new request may well be granted.
    """


class BootstrapRequest(Purpose):
    """
    The purpose of one connection that asks a peer to be our bootstrap peer:
    C{result} fires with the peer's id once it granted (or once we turn out
    to be connected to it anyway), or fails with the reason.

    Two peers that bootstrap off each other at once each open a request to
    the other; the chooser keeps one of the two connections and closes the
    other as a duplicate.  The side whose request was closed is connected
    through the peer's request, which the peer still drops if its bootstrap
    won elsewhere before the chooser's CHOOSE reached it.  So that side
    counts it only once the peer holds it as active: at once if the peer
    chose it (it promoted it before sending CHOOSE); if we chose it, once the
    peer answers a question asked on it after our CHOOSE
    (L{crust.session.connection.PeerConnection.ask_peer}).  If the peer drops it first, the request
    fails with L{PeerDroppedBootstrap}.
    """

    def __init__(self, bootstrapper: "Bootstrapper", role: Role,
                 canceller: Optional[Callable[[Deferred], None]] = None) -> None:
        self._bootstrapper = bootstrapper
        self.role = str(role)
        self.refusal: Optional[tuple[str, str]] = None
        self.result: Deferred = Deferred(canceller)

    def promoted(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        if not self.result.called:
            self.result.callback(peer_id)

    def refused(self, conn: "PeerConnection", reason: str, detail: str) -> None:
        self.refusal = (reason, detail)

    def lost(self, conn: "PeerConnection", reason: str) -> None:
        if not self.result.called:
            # closed as a duplicate (by us or the peer): the peer had another connection to us then, and if
            # none is left when the close is done, it dropped that one meanwhile
            self._settle(conn, reason, dropped=conn.close_code == CloseReason.DUPLICATE.value)

    def _settle(self, conn: "PeerConnection", reason: str, dropped: bool) -> None:
        """
        Our connection C{conn} ended without becoming active: succeed if we
        are connected to its peer all the same, fail if not.  C{dropped}: a
        connection of the peer's that we waited on ended meanwhile.
        """
        result = self.result
        peer_id = conn.peer_id
        table = self._bootstrapper.table
        active = table.usable(peer_id) if peer_id is not None else None
        if peer_id is None or active is None:
            if dropped:
                result.errback(Failure(PeerDroppedBootstrap(
                    peer_id, [f"{conn.peer_address}: {reason}; the peer then dropped its own bootstrap connection"],
                    "bootstrap attempt failed")))
            else:
                result.errback(Failure(self.error(conn, reason)))
        elif active.is_bootstrap and not active.initiator and active.handshake.is_chooser:
            # The peer's own request, which we chose: it may not hold it yet.
            def answered(_: Any) -> None:
                if result.called:
                    return
                if table.usable(peer_id) is active:
                    result.callback(peer_id)
                else:
                    self._settle(conn, reason, dropped)

            def ended(_: Failure) -> None:
                if not result.called:
                    self._settle(conn, reason, dropped=True)

            active.ask_peer().addCallbacks(answered, ended)
        else:
            # connected already: through a connection of ours, an ordinary one, or the peer's own request,
            # which it chose (it made it active before it sent CHOOSE)
            result.callback(peer_id)

    def failed(self, failure: Failure) -> None:
        """The connection could not even be made."""
        if not self.result.called:
            self.result.errback(failure)

    def error(self, conn: "PeerConnection", reason: str) -> Exception:
        """The exception this failed request reports for C{conn}."""
        if self.refusal is not None:
            return HandshakeRefused(*self.refusal)
        return ConnectFailed(conn.peer_id, [f"{conn.peer_address}: {reason}"], "bootstrap attempt failed")


class Bootstrapper:
    """
    @param ready: starts the node's listeners (once); fires when they listen.
    @param discovery: returns the LAN discovery requester, if discovery is on.
    @param transports: returns the transports we accept connections on.
    @param emit: the observers' event fan-out.
    """

    log = Logger()
    #: a failure that repeats the one last warned about within this many seconds is logged at debug level
    #: (a node that bootstraps again and again while its seed is down says so once, not every minute)
    REPEAT_QUIET = 600.0

    def __init__(self, *, peer_id: PeerId, clock: Any, config: Callable[[], Config], dialer: "Dialer",
                 table: "PeerTable", emit: Callable[..., None], cache: Optional[BootstrapCache],
                 ready: Callable[[], Deferred], discovery: Callable[[], Any],
                 transports: Callable[[], Iterable[str]]) -> None:
        self.peer_id = peer_id
        self.clock = clock
        self._config = config
        self.dialer = dialer
        self.table = table
        self._emit = emit
        self.cache = cache
        self._ready = ready
        self._discovery = discovery
        self._transports = transports
        self.bootstrapped_to: Optional[tuple[PeerId, Address]] = None
        self.held_role: Optional[Role] = None  # the role we hold on the network, once bootstrapped
        self.role_reason = "not bootstrapped yet"
        self._client_reason = ""
        self._warned: Optional[tuple[str, float]] = None  # the failure last warned about, and when
        table.listen(self)

    # -- PeerListener: every peer we dialled and reached is directly reachable -----

    def peer_promoted(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        if conn.initiator and conn.peer_address is not None and self.cache is not None:
            self.cache.put(peer_id, conn.peer_address)

    def connection_ended(self, conn: "PeerConnection", reason: str) -> None:
        pass

    # -- requesting -------------------------------------------------------------

    def bootstrap(self, blacklist: Iterable[Union[Address, str]] = (), role: Optional[Role] = Role.NODE) -> Deferred:
        """
        Bootstrap as C{role}; with C{role} None, as a node if a peer can
        reach us back, else as a client (the role and why: L{held_role},
        L{role_reason}).
        """
        d = self._ready()
        d.addCallback(lambda _: self._discover())

        def run(lan: list) -> Deferred:
            attempt = self._run(lan, blacklist, role or Role.NODE)
            if role is None:
                attempt.addErrback(self._as_client, lan, blacklist)
            return attempt

        d.addCallback(run)
        d.addCallbacks(self._succeeded, self._failed)
        return d

    def _as_client(self, failure: Failure, lan: list, blacklist: Iterable[Union[Address, str]]) -> Any:
        """A peer could not reach us back: we cannot be a node, but we can join as a client."""
        failure.trap(BootstrapFailed)
        error = failure.value
        assert isinstance(error, BootstrapFailed)
        if not error.external_reachability:
            return failure
        refusals = [reason for _, reason in error.failures if RejectReason.FAILED_REACHABILITY.value in reason]
        why = refusals[0] if refusals else str(error)
        self.log.info("no peer can reach us back ({why}): joining as a client", why=why)
        d = self._run(lan, blacklist, Role.CLIENT)

        def joined(result: Any) -> Any:
            self._client_reason = f"joined as a client: {why}"
            return result

        return d.addCallback(joined)

    def _discover(self) -> Deferred:
        requester = self._discovery()
        if requester is None:
            return succeed([])
        d = requester.discover()

        def failed(f: Failure) -> list:
            self.log.warn("LAN discovery failed: {error}", error=str(f.value))
            return []

        return d.addErrback(failed)

    def _run(self, lan: list, blacklist: Iterable[Union[Address, str]], role: Role) -> Deferred:
        config = self._config()
        cache = self.cache
        cached: list[Any] = []
        if cache is not None:
            found = cache.candidates()
            cached = list(found.fresh) + list(found.stale)
        candidates = plan_candidates(
            lan=[(p.peer_id, p.addresses) for p in lan],
            cached=cached,
            hard_coded=config.hard_coded_contacts,
            blacklist=list(blacklist),
            our_peer_id=self.peer_id,
            transports=tuple(self._transports()),
        )
        self.log.emit(
            LogLevel.debug if self._warned is not None else LogLevel.info,  # quiet while failing again and again
            "bootstrapping as {role} from {count} candidate(s): {candidates}",
            role=str(role), count=len(candidates), candidates=", ".join(map(str, candidates[:10])),
        )
        result = run_bootstrap(
            candidates,
            lambda c: self._try(c, role),
            clock=self.clock,
            timeout=config.bootstrap_timeout,
            concurrency=config.bootstrap_concurrency,
            cache=cache,
            release=self._release,
        )
        result.addCallback(lambda found: (found, role))
        return result

    def _try(self, candidate: Candidate, role: Role) -> Deferred:
        """
        Ask C{candidate} to be our bootstrap peer: up to L{BOOTSTRAP_TRIES}
        requests, a new one when the peer dropped the connection the last
        one gave way to (L{PeerDroppedBootstrap}).
        """
        current: list[Deferred] = []
        outcome: Deferred = Deferred(lambda _: current[-1].cancel())

        def request(left: int) -> None:
            d = self._request(candidate, role)
            current[:] = [d]

            def failed(f: Failure) -> None:
                if outcome.called:
                    return
                if left > 1 and f.check(PeerDroppedBootstrap):
                    self.log.info("bootstrap request to {candidate}: {reason}; asking again",
                                  candidate=str(candidate), reason=str(f.value))
                    request(left - 1)
                else:
                    outcome.errback(f)

            d.addCallbacks(lambda peer_id: None if outcome.called else outcome.callback(peer_id), failed)

        request(BOOTSTRAP_TRIES)
        return outcome

    def _request(self, candidate: Candidate, role: Role) -> Deferred:
        """One bootstrap request to C{candidate}: fires with its peer's id, as L{BootstrapRequest.result}."""
        conn_box: list["PeerConnection"] = []

        def cancel(d: Deferred) -> None:
            if conn_box and conn_box[0].connected and not conn_box[0].is_active:
                conn_box[0].close_duplicate()
            elif not conn_box:
                dial.cancel()

        request = BootstrapRequest(self, role, cancel)
        dial = self.dialer.dial(candidate.address, request, expected=candidate.peer_id, intent=Intent.BOOTSTRAP)
        dial.addCallbacks(conn_box.append, request.failed)
        return request.result

    def _release(self, candidate: Candidate, peer_id: PeerId) -> None:
        """A bootstrap connection that did not count: close it."""
        self.table.disconnect(peer_id)

    def _succeeded(self, outcome: tuple[Any, Role]) -> PeerId:
        result, role = outcome
        peer_id, address = result.peer_id, result.candidate.address
        self.bootstrapped_to = (peer_id, address)
        self.held_role = role
        if role is Role.CLIENT and self._client_reason:
            self.role_reason, self._client_reason = self._client_reason, ""
        else:
            self.role_reason = f"bootstrapped to {peer_id.short()} as a {role}"
        self._warned = None
        self.log.info("bootstrapped to {peer} at {address} as a {role}", peer=str(peer_id), address=str(address),
                      role=str(role))
        self._emit("bootstrap_connect", peer_id, address)
        return peer_id

    def _failed(self, failure: Failure) -> Failure:
        reason, now = str(failure.value), self.clock.seconds()
        warned = self._warned
        if warned is not None and warned[0] == reason and now - warned[1] < self.REPEAT_QUIET:
            self.log.debug("{reason} (again)", reason=reason)
        else:
            self.log.warn("{reason}", reason=reason)
            self._warned = (reason, now)
        self._emit("bootstrap_failed", failure.value)
        return failure


class ProbeSource(Protocol):
    """What L{CacheValidator} needs of its node."""

    clock: Any
    bootstrap_cache: Optional[BootstrapCache]
    running_for_peers: bool

    def probe(self, address: Address, expected_peer: Optional[PeerId] = None) -> Deferred: ...


class CacheValidator(_TwistedService):
    """
    Every cache timeout, probe the cached peers not seen for that long
    (a few at a time) and record whether they answered.  A peer that is
    briefly down only gains a failure count; the cache evicts it only when
    it needs the room.
    """

    log = Logger()
    CONCURRENCY = 8

    def __init__(self, service: ProbeSource) -> None:
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
