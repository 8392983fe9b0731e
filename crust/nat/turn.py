"""
L{TurnClient}: a TURN client (RFC 8656) for a UDP relay, on a UDP socket
someone else owns (the node's L{crust.transport.udp.UdpEndpoint}).

What it does with one TURN server and long-term credentials:

  - B{allocate}: an Allocate request (REQUESTED-TRANSPORT UDP), the
    server's 401 with REALM and NONCE, the same request again with
    USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (HMAC-SHA1, key
    MD5(username:realm:password)); a 438 (stale nonce) takes the new nonce
    and retries.  The allocation's relayed address (XOR-RELAYED-ADDRESS) is
    what peers send to.
  - B{refresh} it at half its lifetime; a refresh that fails means the
    allocation is gone: it is reported lost and a new one is made after a
    backoff (30 s, doubling up to 10 minutes).
  - B{permissions} (L{TurnClient.permit}): a CreatePermission per peer IP,
    refreshed every 4 minutes while wanted (named by C{permit} within the
    last 5 minutes, or a relayed peer of that IP heard from lately).  At
    most C{max_permissions}.
  - B{relaying}: a Data indication or ChannelData from the server is a
    datagram from a peer; it goes to C{on_data(data, (ip, port))}.  Each new
    peer gets a channel (ChannelBind, refreshed every 8 minutes while the
    peer is heard from), and L{TurnClient.send} sends to it as ChannelData,
    or as a Send indication until the channel is bound.  At most
    C{max_peers} peers (the least recently heard is forgotten).
  - B{deallocate} on L{TurnClient.stop}: a Refresh with LIFETIME 0.

Responses are matched by transaction id.  Once the client holds a key, a
success response must carry a MESSAGE-INTEGRITY made with it, and an error
response may carry none but never a wrong one: anything else is dropped (the
request retransmits until it times out), so a forged response from the
server's address cannot end an allocation.  Everything from the server's
address reaches L{TurnClient.datagram_received} first (the endpoint's
C{register_source}); what it does not take (a Binding response to the STUN
client, say) goes on through the endpoint's first-byte map.

It is a single-party machine, so its states are an C{enum.Enum} with guards
(doc/hacking.md)::

    IDLE -start-> ALLOCATING -success-> ALLOCATED -refresh fails-> RETRYING
                      |                    ^                         |
                      +-- fails --> RETRYING +--------- timer -------+
    any -stop-> STOPPING -> STOPPED -start-> ALLOCATING

Pure protocol logic on an injected clock: it sends through C{send(datagram,
(host, port))} and is fed datagrams, so tests drive it with a fake server
and a C{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust._util.ratelimit import RateLimiter
from crust.address import Address
from crust.errors import CrustError
from crust.nat import stun, turn_codec
from crust.nat.stun import MessageClass, StunMessage
from crust.nat.turn_codec import TurnParseError

log = Logger()

Sender = Callable[[bytes, "tuple[str, int]"], Any]

_COMPLETED_MEMORY = 64  # transaction ids remembered to absorb late duplicate responses


class TurnError(CrustError):
    """A TURN transaction failed."""


class TurnTimeout(TurnError):
    """The TURN server did not answer a request."""


class TurnErrorResponse(TurnError):
    """The TURN server answered with an error (ERROR-CODE)."""

    def __init__(self, server: Address, what: str, code: int, reason: str) -> None:
        self.server = server
        self.what = what
        self.code = code
        self.reason = reason
        super().__init__(f"TURN server {server} refused {what}: {code} {reason}".rstrip())


class TurnBadResponse(TurnError):
    """A response matched our request but cannot be used."""


class TurnState(enum.Enum):
    IDLE = "idle"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    RETRYING = "retrying"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class TurnOptions:
    """
    The TURN client's knobs (defaults follow RFC 8656).

    @ivar lifetime: the allocation lifetime to ask for (LIFETIME, seconds),
        or None for the server's default (600 s); servers cap it.
    @ivar permission_refresh: seconds between CreatePermissions of a
        permission in use (permissions last 300 s).
    @ivar channel_refresh: seconds between ChannelBinds of a channel in use
        (channels last 600 s).
    @ivar permission_hold: how long a L{TurnClient.permit} keeps a
        permission when no relayed peer of that IP is heard from.
    @ivar peer_idle: a relayed peer not heard from this long is forgotten.
    @ivar max_permissions: peer IPs with a permission at once.
    @ivar max_peers: relayed peers (IP and port) at once.
    @ivar channels: bind a channel to each relayed peer (ChannelData costs
        4 bytes a datagram, a Send indication 36 or more).
    @ivar rto, rc, rm: the retransmission schedule of requests (RFC 8489).
    @ivar retry_delay, max_retry_delay: the backoff after an allocation failed or was lost.
    @ivar stop_timeout: how long L{TurnClient.stop} waits for the deallocation's answer.
    @ivar software: a SOFTWARE attribute for Allocate requests, or None.
    @ivar permit_loopback: let loopback peers in too (tests on one machine,
        with a server that allows them: coturn's C{allow-loopback-peers}).
    """

    lifetime: Optional[int] = None
    permission_refresh: float = 240.0
    channel_refresh: float = 480.0
    permission_hold: float = 300.0
    peer_idle: float = 600.0
    max_permissions: int = 32
    max_peers: int = 64
    channels: bool = True
    rto: float = 0.5
    rc: int = 7
    rm: float = 16.0
    retry_delay: float = 30.0
    max_retry_delay: float = 600.0
    stop_timeout: float = 2.0
    software: Optional[str] = None
    permit_loopback: bool = False

    def __post_init__(self) -> None:
        if self.lifetime is not None and not 0 < self.lifetime <= 0xFFFFFFFF:
            raise ValueError(f"a TURN lifetime is a positive number of seconds, not {self.lifetime!r}")
        for name in ("permission_refresh", "channel_refresh", "permission_hold", "peer_idle", "rto", "rm",
                     "retry_delay", "max_retry_delay", "stop_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.rc < 1 or self.max_permissions < 1 or self.max_peers < 1:
            raise ValueError("rc, max_permissions and max_peers must be at least 1")


@dataclass(frozen=True)
class Allocation:
    """
    A relayed transport address the server holds for us.

    @ivar relayed: the XOR-RELAYED-ADDRESS: peers send to it.
    @ivar mapped: our address as the server sees it (XOR-MAPPED-ADDRESS), if sent.
    @ivar lifetime: seconds granted at the last Allocate or Refresh.
    @ivar refreshed_at: the clock's time of that answer.
    @ivar refreshes: successful Refreshes so far.
    """

    server: Address
    relayed: Address
    mapped: Optional[Address]
    lifetime: int
    allocated_at: float
    refreshed_at: float
    refreshes: int = 0

    def expires_in(self, now: float) -> float:
        return max(0.0, self.refreshed_at + self.lifetime - now)


@dataclass
class _Permission:
    ip: str
    address: Address  # an address of that IP, for XOR-PEER-ADDRESS (the server ignores its port)
    keep_until: float
    granted_at: Optional[float] = None
    timer: Optional[IDelayedCall] = None
    waiters: list[Deferred] = field(default_factory=list)
    in_flight: bool = False


@dataclass
class _Peer:
    sockaddr: tuple[str, int]
    address: Address
    last_seen: float
    channel: Optional[int] = None
    channel_ready: bool = False
    timer: Optional[IDelayedCall] = None


class _Transaction:
    def __init__(self, datagram: bytes, key: Optional[bytes], method: int, started: float) -> None:
        self.datagram = datagram
        self.key = key
        self.method = method
        self.started = started
        self.transmissions = 0
        self.timer: Optional[IDelayedCall] = None
        self.deferred: Deferred[StunMessage] = Deferred()


class TurnClient:
    """
    One allocation on one TURN server (see the module docstring).

    @param send: C{send(datagram, (host, port))} on the node's socket; it
        may return False or raise when the datagram cannot go.
    @param clock: the C{IReactorTime} for retransmissions and refreshes.
    @param server: the TURN server's C{udp:} address.
    @param username: the long-term credentials' user name.
    @param password: their password (used as given: its OpaqueString
        preparation is a no-op for ASCII).
    @param on_data: C{on_data(data, (ip, port))} for each relayed datagram.
    @param on_allocation: called with the L{Allocation} when one is made and
        with None when it is lost or given up.
    @param routes: a dict the client keeps C{(ip, port) -> self} in for each
        relayed peer, for a sender that routes by destination.
    @param options: L{TurnOptions}.

    @ivar allocation: the current L{Allocation}, or None.
    @ivar state: a L{TurnState}.
    @ivar last_error: why the last allocation attempt failed or was lost.
    @ivar counters: C{requests}, C{retransmissions}, C{challenges} (401),
        C{stale_nonces} (438), C{allocations}, C{refreshes},
        C{permissions}, C{channel_binds}, C{errors}, C{timeouts},
        C{bad_integrity}, C{duplicates}, C{relayed_in}, C{relayed_in_bytes},
        C{channel_data_in}, C{data_indications_in}, C{sent_channel_data},
        C{sent_indications}, C{relayed_out_bytes}, C{malformed},
        C{unknown_channel}, C{dropped_no_allocation}, C{peers_evicted},
        C{permissions_refused}, C{send_failures}.
    """

    def __init__(self, send: Sender, clock: IReactorTime, server: Address, username: str, password: str, *,
                 on_data: Optional[Callable[[bytes, "tuple[str, int]"], Any]] = None,
                 on_allocation: Optional[Callable[[Optional[Allocation]], Any]] = None,
                 routes: Optional[dict[Any, "TurnClient"]] = None,
                 options: Optional[TurnOptions] = None) -> None:
        if server.transport != "udp":
            raise ValueError(f"a TURN server is a udp: address, not {server}")
        self._send = send
        self._clock = clock
        self.server = server
        self._server_sockaddr = server.sockaddr()
        self.username = username
        self._password = password
        self.on_data = on_data or (lambda data, peer: None)
        self.on_allocation = on_allocation or (lambda allocation: None)
        self.routes: dict[Any, TurnClient] = routes if routes is not None else {}
        self.options = options or TurnOptions()
        self.state = TurnState.IDLE
        self.allocation: Optional[Allocation] = None
        self.last_error: Optional[str] = None
        self._realm: Optional[str] = None
        self._nonce: Optional[str] = None
        self._key: Optional[bytes] = None
        self._transactions: dict[bytes, _Transaction] = {}
        self._completed: dict[bytes, None] = {}
        self._permissions: dict[str, _Permission] = {}
        self._peers: dict[tuple[str, int], _Peer] = {}
        self._by_channel: dict[int, _Peer] = {}
        self._next_channel = turn_codec.CHANNEL_FIRST
        self._refresh_timer: Optional[IDelayedCall] = None
        self._retry_timer: Optional[IDelayedCall] = None
        self._retry_delay = self.options.retry_delay
        self._settled: list[Deferred] = []
        self._logs = RateLimiter(clock, per_key=(0.2, 2), total=(1.0, 5), max_keys=16)
        self.counters = dict.fromkeys(
            ("requests", "retransmissions", "challenges", "stale_nonces", "allocations", "refreshes", "permissions",
             "channel_binds", "errors", "timeouts", "bad_integrity", "duplicates", "relayed_in", "relayed_in_bytes",
             "channel_data_in", "data_indications_in", "sent_channel_data", "sent_indications", "relayed_out_bytes",
             "malformed", "unknown_channel", "dropped_no_allocation", "peers_evicted", "permissions_refused",
             "send_failures"),
            0)

    # -- lifetime -----------------------------------------------------------------------

    def start(self) -> Deferred:
        """
        Allocate (again, after L{stop}).  Fires with the L{Allocation}, or
        fails with L{TurnError} when this first attempt fails (new attempts
        follow on the backoff until L{stop}).
        """
        if self.state in (TurnState.ALLOCATING, TurnState.ALLOCATED, TurnState.RETRYING):
            return self.when_settled()
        if self.state is TurnState.STOPPING:
            return fail(TurnError("the TURN client is stopping"))
        self._retry_delay = self.options.retry_delay
        return self._allocate()

    def when_settled(self) -> Deferred:
        """Fires with the L{Allocation}, or None, once no allocation attempt is under way."""
        if self.state is not TurnState.ALLOCATING:
            return succeed(self.allocation)
        d: Deferred = Deferred()
        self._settled.append(d)
        return d

    def stop(self) -> Deferred:
        """
        Give the allocation back (a Refresh with LIFETIME 0, waiting at most
        C{stop_timeout} for the answer) and forget everything.  Fires with
        None, never fails.
        """
        if self.state is TurnState.STOPPING:
            return succeed(None)
        if self.state in (TurnState.STOPPED, TurnState.IDLE):
            self.state = TurnState.STOPPED
            return succeed(None)
        had = self.allocation
        self.state = TurnState.STOPPING
        self._cancel_timers()
        for tx in list(self._transactions.values()):
            tx.deferred.cancel()
        self._forget_relaying()
        self._settle()
        if had is None:
            self._stopped()
            return succeed(None)
        wait = self.options.stop_timeout
        d = self._request(lambda tid: turn_codec.refresh_request(tid, lifetime=0), "deallocation",
                          rto=wait / 2, rc=2, rm=1.0)

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                e = result.value
                if isinstance(e, TurnErrorResponse) and e.code == 437:
                    log.info("TURN server {server}: the allocation was gone already", server=str(self.server))
                else:
                    log.info("TURN server {server}: deallocation not confirmed: {error}", server=str(self.server),
                             error=str(e))
            else:
                log.info("TURN server {server}: deallocated {relayed}", server=str(self.server),
                         relayed=str(had.relayed))
            self._stopped()

        return d.addBoth(done)

    def _stopped(self) -> None:
        self.state = TurnState.STOPPED
        if self.allocation is not None:
            self.allocation = None
            self.on_allocation(None)

    # -- allocation -------------------------------------------------------------------------

    def _allocate(self) -> Deferred:
        self.state = TurnState.ALLOCATING
        options = self.options

        async def run() -> Allocation:
            try:
                response = await self._request(
                    lambda tid: turn_codec.allocate_request(tid, lifetime=options.lifetime,
                                                            software=options.software), "an allocation")
            except TurnErrorResponse as e:
                if e.code != 437:
                    raise
                # an allocation of ours from before (a restart on the same port): give it back, then again
                log.info("TURN server {server} holds an allocation of this address already; deleting it",
                         server=str(self.server))
                await self._request(lambda tid: turn_codec.refresh_request(tid, lifetime=0), "a deallocation")
                response = await self._request(
                    lambda tid: turn_codec.allocate_request(tid, lifetime=options.lifetime,
                                                            software=options.software), "an allocation")
            relayed = response.relayed_address
            if relayed is None:
                raise TurnBadResponse(f"TURN server {self.server} allocated without XOR-RELAYED-ADDRESS")
            now = self._clock.seconds()
            lifetime = response.lifetime if response.lifetime is not None else 600
            return Allocation(self.server, relayed, response.mapped_address, lifetime, now, now)

        d = ensureDeferred(run())
        d.addCallbacks(self._allocated, self._allocation_failed)
        return d

    def _allocated(self, allocation: Allocation) -> Allocation:
        if self.state is not TurnState.ALLOCATING:
            return allocation  # stopped meanwhile: stop() gives it back only if it knew of it
        self.counters["allocations"] += 1
        self.allocation = allocation
        self.state = TurnState.ALLOCATED
        self.last_error = None
        self._retry_delay = self.options.retry_delay
        log.info("TURN server {server} relays for us at {relayed} (we are {mapped} to it; lifetime {lifetime} s)",
                 server=str(self.server), relayed=str(allocation.relayed), mapped=str(allocation.mapped),
                 lifetime=allocation.lifetime)
        self._schedule_refresh(allocation.lifetime)
        for permission in list(self._permissions.values()):
            if permission.granted_at is None and not permission.in_flight:
                self._create_permission(permission)
        self.on_allocation(allocation)
        self._settle()
        return allocation

    def _allocation_failed(self, failure: Failure) -> Failure:
        if self.state is not TurnState.ALLOCATING:
            return failure  # stopped meanwhile
        self._lost(_reason(failure))
        return failure

    def _lost(self, reason: str) -> None:
        """The allocation failed or is gone: tell, forget, and try again after the backoff."""
        self.last_error = reason
        self.state = TurnState.RETRYING
        self._cancel_timers()
        self._forget_relaying()
        lost = self.allocation
        self.allocation = None
        delay = self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self.options.max_retry_delay)
        log.warn("TURN server {server}: {what}: {reason}; trying again in {delay:g} s", server=str(self.server),
                 what="allocation lost" if lost is not None else "no allocation", reason=reason, delay=delay)
        self._retry_timer = self._clock.callLater(delay, self._retry)
        if lost is not None:
            self.on_allocation(None)
        self._settle()

    def _retry(self) -> None:
        self._retry_timer = None
        if self.state is TurnState.RETRYING:
            self._allocate().addErrback(lambda f: None)  # reported by _lost

    def _settle(self) -> None:
        waiters, self._settled = self._settled, []
        for d in waiters:
            d.callback(self.allocation)

    def _schedule_refresh(self, lifetime: int) -> None:
        self._refresh_timer = self._clock.callLater(max(1.0, lifetime / 2), self._refresh)

    def _refresh(self) -> None:
        self._refresh_timer = None
        if self.state is not TurnState.ALLOCATED:
            return
        lifetime = self.options.lifetime
        d = self._request(lambda tid: turn_codec.refresh_request(tid, lifetime=lifetime), "a refresh")

        def refreshed(response: StunMessage) -> None:
            allocation = self.allocation
            if self.state is not TurnState.ALLOCATED or allocation is None:
                return
            granted = response.lifetime if response.lifetime is not None else allocation.lifetime
            self.counters["refreshes"] += 1
            self.allocation = Allocation(allocation.server, allocation.relayed, allocation.mapped, granted,
                                         allocation.allocated_at, self._clock.seconds(), allocation.refreshes + 1)
            log.info("TURN server {server}: refreshed {relayed} for {lifetime} s", server=str(self.server),
                     relayed=str(allocation.relayed), lifetime=granted)
            self._schedule_refresh(granted)

        def failed(failure: Failure) -> None:
            if self.state is TurnState.ALLOCATED and not failure.check(CancelledError):
                self._lost(f"refresh failed: {_reason(failure)}")

        d.addCallbacks(refreshed, failed)

    # -- permissions --------------------------------------------------------------------------

    def permit(self, addresses: Iterable[Union[Address, str]]) -> Deferred:
        """
        Let the server relay to us what these addresses' IPs send (the
        ports do not matter).  IPs of another family than the server's,
        loopback, link-local, multicast and unspecified ones, and the
        server's own and our relayed IP are skipped (loopback is let in with
        C{permit_loopback}, but the server's IP never).  Each IP is kept for
        C{permission_hold} seconds, and as long as a relayed peer of that IP
        is heard from.  Before the allocation exists they are remembered and
        asked for once it does.

        @return: fires with the IPs the server granted (after the
            allocation, when there is none yet), never fails.
        """
        now = self._clock.seconds()
        waiting: list[Deferred] = []
        for address in addresses:
            if isinstance(address, str):
                try:
                    address = Address("udp", str(ipaddress.ip_address(address)), 9)
                except ValueError:
                    continue
            if not self._permissible(address):
                continue
            permission = self._permissions.get(address.host)
            if permission is None:
                if len(self._permissions) >= self.options.max_permissions and not self._evict_permission():
                    self.counters["permissions_refused"] += 1
                    if self._logs.allow("permissions"):
                        log.info("TURN server {server}: not asking a permission for {ip}: {n} held already",
                                 server=str(self.server), ip=address.host, n=len(self._permissions))
                    continue
                permission = _Permission(address.host, address, now + self.options.permission_hold)
                self._permissions[address.host] = permission
                d: Deferred = Deferred()
                permission.waiters.append(d)
                waiting.append(d)
                if self.state is TurnState.ALLOCATED:
                    self._create_permission(permission)
                continue
            permission.keep_until = max(permission.keep_until, now + self.options.permission_hold)
            if permission.granted_at is not None and not permission.in_flight:
                waiting.append(succeed(permission.ip))
            else:
                d = Deferred()
                permission.waiters.append(d)
                waiting.append(d)
        return DeferredList(waiting).addCallback(lambda results: [ip for ok, ip in results if ok and ip])

    def permitted(self) -> list[str]:
        """The IPs the server granted a permission for (and we keep)."""
        return [p.ip for p in self._permissions.values() if p.granted_at is not None]

    def _permissible(self, address: Address) -> bool:
        ip = address.ip
        if ip.is_loopback and not self.options.permit_loopback or ip.is_link_local or ip.is_multicast \
                or ip.is_unspecified:
            return False
        if address.family_is_v6 != self.server.family_is_v6:
            return False
        allocation = self.allocation
        return address.host != self.server.host and (allocation is None or address.host != allocation.relayed.host)

    def _evict_permission(self) -> bool:
        """Make room: forget one permission nobody needs now; False when all are needed."""
        now = self._clock.seconds()
        for ip, permission in list(self._permissions.items()):
            if not self._wanted(permission, now) and not permission.waiters:
                self._drop_permission(permission)
                return True
        return False

    def _wanted(self, permission: _Permission, now: float) -> bool:
        if now < permission.keep_until:
            return True
        idle = self.options.peer_idle
        return any(peer.address.host == permission.ip and now - peer.last_seen < idle
                   for peer in self._peers.values())

    def _drop_permission(self, permission: _Permission) -> None:
        if permission.timer is not None and permission.timer.active():
            permission.timer.cancel()
        permission.timer = None
        self._permissions.pop(permission.ip, None)
        self._answer(permission, False)

    def _answer(self, permission: _Permission, granted: bool) -> None:
        waiters, permission.waiters = permission.waiters, []
        for d in waiters:
            d.callback(permission.ip if granted else None)

    def _create_permission(self, permission: _Permission) -> None:
        permission.in_flight = True
        d = self._request(lambda tid: turn_codec.create_permission_request([permission.address], tid),
                          f"a permission for {permission.ip}")

        def granted(_: StunMessage) -> None:
            permission.in_flight = False
            if self._permissions.get(permission.ip) is not permission:
                return
            self.counters["permissions"] += 1
            first = permission.granted_at is None
            permission.granted_at = self._clock.seconds()
            if first:
                log.info("TURN server {server}: {ip} may send to us", server=str(self.server), ip=permission.ip)
            permission.timer = self._clock.callLater(self.options.permission_refresh, self._permission_due,
                                                     permission)
            self._answer(permission, True)

        def failed(failure: Failure) -> None:
            permission.in_flight = False
            if failure.check(CancelledError) or self._permissions.get(permission.ip) is not permission:
                self._answer(permission, False)
                return
            log.info("TURN server {server}: no permission for {ip}: {error}", server=str(self.server),
                     ip=permission.ip, error=_reason(failure))
            self._drop_permission(permission)  # a later permit() asks again

        d.addCallbacks(granted, failed)

    def _permission_due(self, permission: _Permission) -> None:
        permission.timer = None
        if self._permissions.get(permission.ip) is not permission or self.state is not TurnState.ALLOCATED:
            return
        if self._wanted(permission, self._clock.seconds()):
            self._create_permission(permission)
        else:
            log.debug("TURN server {server}: letting the permission for {ip} expire", server=str(self.server),
                      ip=permission.ip)
            self._drop_permission(permission)

    # -- relaying ----------------------------------------------------------------------------

    def relayed_peers(self) -> list[tuple[str, int]]:
        """The peers (IP and port) we relay for, most recently heard first."""
        return [p.sockaddr for p in sorted(self._peers.values(), key=lambda p: -p.last_seen)]

    def send(self, data: bytes, peer: "tuple[str, int]") -> bool:
        """
        Send C{data} to C{peer} through the server, from our relayed
        address: as ChannelData once the peer's channel is bound, as a Send
        indication until then.  False when it could not go (no allocation,
        the socket refused).
        """
        if self.state is not TurnState.ALLOCATED:
            self.counters["dropped_no_allocation"] += 1
            return False
        known = self._peers.get(peer)
        if known is not None and known.channel_ready:
            assert known.channel is not None
            datagram = turn_codec.encode_channel_data(known.channel, data)
            self.counters["sent_channel_data"] += 1
        else:
            address = known.address if known is not None else Address.from_sockaddr("udp", peer)
            if address is None:
                return False
            datagram = stun.encode(turn_codec.send_indication(address, data))
            self.counters["sent_indications"] += 1
        self.counters["relayed_out_bytes"] += len(data)
        try:
            sent = self._send(datagram, self._server_sockaddr)
        except Exception:
            sent = False
        if sent is False:
            self.counters["send_failures"] += 1
            return False
        return True

    def datagram_received(self, data: bytes, addr: Any) -> bool:
        """
        Offer a datagram from the server's address; True when it was ours:
        ChannelData, a Data indication, a response to one of our requests.
        """
        if not data:
            return False
        first = data[0]
        if 0x40 <= first <= 0x4F:
            try:
                channel, payload = turn_codec.decode_channel_data(data)
            except TurnParseError as e:
                self._malformed(str(e))
                return True
            peer = self._by_channel.get(channel)
            if peer is None:
                self.counters["unknown_channel"] += 1
                return True
            self.counters["channel_data_in"] += 1
            self._relayed(peer.sockaddr, payload, peer)
            return True
        if first > 3 or not stun.is_stun(data):
            return False
        try:
            # the header first: only a Data indication or a response to one of our
            # transactions is worth decoding (the attributes are bounded by stun.decode)
            method, cls, tid = stun.peek(data)
        except stun.StunParseError:
            return False  # the STUN chain counts it
        if cls is MessageClass.REQUEST:
            return False
        if cls is MessageClass.INDICATION:
            if method != stun.DATA_INDICATION:
                return False
        elif tid not in self._transactions:
            if tid in self._completed:
                self.counters["duplicates"] += 1
                return True
            return False  # a Binding response for the STUN client, say
        try:
            message = stun.decode(data)
        except stun.StunParseError as e:
            if cls is MessageClass.INDICATION:
                self._malformed(str(e))
                return True
            return False  # the STUN chain counts it
        if cls is MessageClass.INDICATION:
            try:
                peer_address, payload = turn_codec.parse_data_indication(message)
            except TurnParseError as e:
                self._malformed(str(e))
                return True
            self.counters["data_indications_in"] += 1
            self._relayed(peer_address.sockaddr(), payload, None)
            return True
        tx = self._transactions[tid]
        if message.method != tx.method:
            return False
        if tx.key is not None and (not message.verify_integrity(tx.key) if message.integrity_offset is not None
                                   else cls is MessageClass.SUCCESS):
            self.counters["bad_integrity"] += 1
            if self._logs.allow("integrity"):
                log.info("TURN server {server}: dropping a response without our MESSAGE-INTEGRITY",
                         server=str(self.server))
            return True
        self._finish(tid, message)
        return True

    def _relayed(self, sockaddr: tuple[str, int], payload: bytes, peer: Optional[_Peer]) -> None:
        if self.state is not TurnState.ALLOCATED:
            self.counters["dropped_no_allocation"] += 1
            return
        now = self._clock.seconds()
        if peer is None:
            peer = self._peers.get(sockaddr)
            if peer is None:
                peer = self._new_peer(sockaddr, now)
        peer.last_seen = now
        counters = self.counters
        counters["relayed_in"] += 1
        counters["relayed_in_bytes"] += len(payload)
        self.on_data(payload, sockaddr)

    def _new_peer(self, sockaddr: tuple[str, int], now: float) -> _Peer:
        if len(self._peers) >= self.options.max_peers:
            oldest = min(self._peers.values(), key=lambda p: p.last_seen)
            self.counters["peers_evicted"] += 1
            self._forget_peer(oldest)
        address = Address("udp", sockaddr[0], sockaddr[1])
        peer = _Peer(sockaddr, address, now)
        self._peers[sockaddr] = peer
        self.routes[sockaddr] = self
        log.info("TURN server {server} relays {peer} to us", server=str(self.server), peer=str(address))
        if self.options.channels and self._next_channel <= turn_codec.CHANNEL_LAST:
            peer.channel = self._next_channel  # channel numbers are not reused within an allocation
            self._next_channel += 1
            self._by_channel[peer.channel] = peer
            self._bind(peer)
        return peer

    def _forget_peer(self, peer: _Peer) -> None:
        if peer.timer is not None and peer.timer.active():
            peer.timer.cancel()
        peer.timer = None
        self._peers.pop(peer.sockaddr, None)
        if self.routes.get(peer.sockaddr) is self:
            del self.routes[peer.sockaddr]
        if peer.channel is not None and self._by_channel.get(peer.channel) is peer:
            del self._by_channel[peer.channel]

    def _bind(self, peer: _Peer) -> None:
        channel = peer.channel
        assert channel is not None
        d = self._request(lambda tid: turn_codec.channel_bind_request(channel, peer.address, tid),
                          f"channel 0x{channel:04x} for {peer.address}")

        def bound(_: StunMessage) -> None:
            if self._peers.get(peer.sockaddr) is not peer:
                return
            self.counters["channel_binds"] += 1
            if not peer.channel_ready:
                log.info("TURN server {server}: channel 0x{channel:04x} bound to {peer}", server=str(self.server),
                         channel=channel, peer=str(peer.address))
            peer.channel_ready = True
            peer.timer = self._clock.callLater(self.options.channel_refresh, self._channel_due, peer)

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError) or self._peers.get(peer.sockaddr) is not peer:
                return
            log.info("TURN server {server}: no channel for {peer} (Send indications instead): {error}",
                     server=str(self.server), peer=str(peer.address), error=_reason(failure))
            peer.channel_ready = False

        d.addCallbacks(bound, failed)

    def _channel_due(self, peer: _Peer) -> None:
        peer.timer = None
        if self._peers.get(peer.sockaddr) is not peer or self.state is not TurnState.ALLOCATED:
            return
        if self._clock.seconds() - peer.last_seen < self.options.peer_idle:
            self._bind(peer)
        else:
            log.info("TURN server {server}: {peer} has been silent; forgetting it", server=str(self.server),
                     peer=str(peer.address))
            self._forget_peer(peer)

    def _forget_relaying(self) -> None:
        """The allocation is gone: peers, channels and granted permissions with it (wanted IPs stay wanted)."""
        for peer in list(self._peers.values()):
            self._forget_peer(peer)
        self._by_channel.clear()
        self._next_channel = turn_codec.CHANNEL_FIRST
        for permission in list(self._permissions.values()):
            if permission.timer is not None and permission.timer.active():
                permission.timer.cancel()
            permission.timer = None
            permission.granted_at = None
            if self.state is TurnState.STOPPING:
                self._drop_permission(permission)

    def _malformed(self, reason: str) -> None:
        self.counters["malformed"] += 1
        if self._logs.allow("malformed"):
            log.info("TURN server {server}: dropping a malformed datagram: {reason}", server=str(self.server),
                     reason=reason)

    # -- transactions ------------------------------------------------------------------------

    def _request(self, build: Callable[[bytes], StunMessage], what: str, *, rto: Optional[float] = None,
                 rc: Optional[int] = None, rm: Optional[float] = None) -> Deferred:
        """
        Run one request to completion, answering the server's 401 and 438
        challenges (twice at most); fires with the success response, fails
        with L{TurnErrorResponse} or L{TurnTimeout}.
        """

        async def run() -> StunMessage:
            challenges = 0
            while True:
                tid = self._new_tid()
                message = build(tid)
                key = self._key
                if key is not None and self._realm is not None and self._nonce is not None:
                    message = turn_codec.with_credentials(message, self.username, self._realm, self._nonce)
                else:
                    key = None
                datagram = stun.encode(message, integrity_key=key)
                response = await self._transact(tid, datagram, key, message.method, rto, rc, rm)
                if response.message_class is MessageClass.SUCCESS:
                    return response
                error = response.error_code
                code, reason = (error.code, error.reason) if error is not None else (0, "no ERROR-CODE")
                if code in (401, 438) and challenges < 2 and response.nonce is not None \
                        and (response.realm is not None or self._realm is not None):
                    if code == 401 and key is not None and response.nonce == self._nonce:
                        raise TurnErrorResponse(self.server, what, code, f"{reason} (wrong username or password?)")
                    challenges += 1
                    self.counters["challenges" if code == 401 else "stale_nonces"] += 1
                    self._realm = response.realm or self._realm
                    self._nonce = response.nonce
                    assert self._realm is not None
                    self._key = stun.long_term_key(self.username, self._realm, self._password)
                    continue
                self.counters["errors"] += 1
                raise TurnErrorResponse(self.server, what, code, reason)

        return ensureDeferred(run())

    def _new_tid(self) -> bytes:
        while True:
            tid = stun.new_transaction_id()
            if tid not in self._transactions and tid not in self._completed:
                return tid

    def _transact(self, tid: bytes, datagram: bytes, key: Optional[bytes], method: int, rto: Optional[float],
                  rc: Optional[int], rm: Optional[float]) -> Deferred:
        options = self.options
        rto = options.rto if rto is None else rto
        rc = options.rc if rc is None else rc
        rm = options.rm if rm is None else rm
        tx = _Transaction(datagram, key, method, self._clock.seconds())

        def cancel(d: Deferred) -> None:
            self._transactions.pop(tid, None)
            if tx.timer is not None and tx.timer.active():
                tx.timer.cancel()

        tx.deferred = Deferred(cancel)
        self._transactions[tid] = tx
        self.counters["requests"] += 1
        if self._transmit(tid, tx, rto, rc, rm):
            return tx.deferred
        self._finish(tid, TurnError(f"cannot send to TURN server {self.server}"))
        return tx.deferred

    def _transmit(self, tid: bytes, tx: _Transaction, rto: float, rc: int, rm: float) -> bool:
        tx.transmissions += 1
        try:
            sent = self._send(tx.datagram, self._server_sockaddr)
        except Exception:
            sent = False
        if tx.transmissions > 1:
            self.counters["retransmissions"] += 1
        if sent is False and tx.transmissions == 1:
            return False
        if self._transactions.get(tid) is not tx:
            return True  # answered (or cancelled) while it was being sent
        if tx.transmissions < rc:
            tx.timer = self._clock.callLater(rto * 2 ** (tx.transmissions - 1), self._transmit_again, tid, rto, rc, rm)
        else:
            tx.timer = self._clock.callLater(rto * rm, self._timed_out, tid)
        return True

    def _transmit_again(self, tid: bytes, rto: float, rc: int, rm: float) -> None:
        tx = self._transactions.get(tid)
        if tx is not None:
            tx.timer = None
            self._transmit(tid, tx, rto, rc, rm)

    def _timed_out(self, tid: bytes) -> None:
        tx = self._transactions.get(tid)
        if tx is None:
            return
        tx.timer = None
        self.counters["timeouts"] += 1
        elapsed = self._clock.seconds() - tx.started
        self._finish(tid, TurnTimeout(
            f"TURN server {self.server} did not answer {stun.method_name(tx.method)}: "
            f"{tx.transmissions} requests over {elapsed:.1f} s"))

    def _finish(self, tid: bytes, outcome: Union[StunMessage, Exception]) -> None:
        tx = self._transactions.pop(tid, None)
        if tx is None:
            return
        if tx.timer is not None and tx.timer.active():
            tx.timer.cancel()
        tx.timer = None
        self._completed[tid] = None
        while len(self._completed) > _COMPLETED_MEMORY:
            del self._completed[next(iter(self._completed))]
        if isinstance(outcome, Exception):
            tx.deferred.errback(outcome)
        else:
            tx.deferred.callback(outcome)

    def _cancel_timers(self) -> None:
        for timer in (self._refresh_timer, self._retry_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._refresh_timer = self._retry_timer = None

    # -- what it reports ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What C{crust info} and netcheck show: the allocation, its lifetime, permissions and channels."""
        allocation = self.allocation
        now = self._clock.seconds()
        return {
            "server": str(self.server),
            "state": self.state.value,
            "relayed": str(allocation.relayed) if allocation is not None else None,
            "mapped": str(allocation.mapped) if allocation is not None and allocation.mapped is not None else None,
            "lifetime": allocation.lifetime if allocation is not None else None,
            "expires_in": round(allocation.expires_in(now), 1) if allocation is not None else None,
            "refreshes": allocation.refreshes if allocation is not None else 0,
            "permissions": self.permitted(),
            "peers": [f"{host}:{port}" for host, port in self.relayed_peers()],
            "channels": sum(1 for p in self._peers.values() if p.channel_ready),
            "error": self.last_error,
        }


def _reason(failure: Failure) -> str:
    e = failure.value
    return str(e) if isinstance(e, CrustError) else f"{type(e).__name__}: {e}"


__all__ = [
    "Allocation",
    "TurnBadResponse",
    "TurnClient",
    "TurnError",
    "TurnErrorResponse",
    "TurnOptions",
    "TurnState",
    "TurnTimeout",
]
