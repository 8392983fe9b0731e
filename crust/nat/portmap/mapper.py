"""
The port mapper: asks the gateway to forward the node's listening ports,
keeps the mappings alive, and removes them when the node stops.

Methods are tried in order PCP, NAT-PMP, UPnP IGD, falling back to the next
on any failure; a method that did not answer at all (L{NoService}) is
skipped for the other ports of the same round.  Each mapping is renewed at
half its lease with the method that made it; a gateway that restarted (its
PCP/NAT-PMP epoch says so) gets all its mappings re-made at once; a mapping
that cannot be renewed before it expires is dropped and looked for again
from the first method.  Ports no method could map are retried every
C{retry_interval} seconds, doubling up to C{max_retry_interval} while
nothing works.

Observers learn of external addresses as they appear and vanish
(L{PortMapper.add_observer}); L{PortMapper.probes} records what each method
did (answered, granted, how long it took), for diagnostics.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError, maybeDeferred, succeed
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from crust._util.reactor import maybe_global_reactor
from crust.address import Address
from crust.nat.portmap.gateway import MappingRefused, NoService, PortMappingError, default_gateway_v4
from crust.nat.portmap.natpmp import (
    DEFAULT_INITIAL_TIMEOUT,
    DEFAULT_LIFETIME,
    DEFAULT_MAX_TRIES,
    SERVER_PORT,
    NATPMPClient,
)
from crust.nat.portmap.pcp import PCPClient
from crust.nat.portmap.upnp_igd import DEFAULT_SEARCH_TIMEOUT, DEFAULT_TIMEOUT, SSDP_ADDRESS, IGDClient

METHOD_ORDER = ("pcp", "natpmp", "upnp")


@dataclass(frozen=True)
class Mapping:
    """
    A port forwarded by the gateway: C{external} reaches our C{transport}
    C{internal_port}.  C{lifetime} is the granted lease in seconds (0:
    permanent), from C{granted_at} (reactor time).
    """

    transport: str
    internal_port: int
    external: Address
    method: str
    lifetime: int
    granted_at: float

    @property
    def expires_at(self) -> Optional[float]:
        return self.granted_at + self.lifetime if self.lifetime else None


@dataclass(frozen=True)
class Grant:
    """What a method obtained; C{state} is the method's own (PCP nonce...)."""

    external: Address
    lifetime: int
    gateway_restarted: bool = False
    state: Any = None


@dataclass(frozen=True)
class MappingProbe:
    """One request by one method: whether the gateway answered, what it granted, in how long."""

    method: str
    transport: str
    internal_port: int
    answered: bool
    granted: Optional[Address]
    lifetime: Optional[int]
    error: Optional[str]
    elapsed: float
    at: float


class IPortMappingMethod(Interface):
    """One port-mapping protocol, as L{PortMapper} uses it."""

    name = Attribute("short name: 'pcp', 'natpmp' or 'upnp'")

    def map(transport, internal_port, lifetime, previous):
        """
        Map (or, given the C{previous} L{Grant}, renew) a port: a Deferred
        firing with a L{Grant}, or failing with L{NoService} (the gateway does
        not answer this protocol) or another L{PortMappingError}.
        """

    def unmap(transport, internal_port, grant):
        """Delete the mapping made as C{grant}: a Deferred."""

    def close():
        """Release sockets: a Deferred."""


def _usable(transport: str, host: str, port: int, protocol: str) -> Address:
    if ipaddress.ip_address(host).is_unspecified:
        raise MappingRefused(protocol, None, "the gateway has no external address")
    return Address(transport, host, port)


@implementer(IPortMappingMethod)
class PCPMethod:
    name = "pcp"

    def __init__(self, client: PCPClient) -> None:
        self.client = client

    def map(self, transport: str, internal_port: int, lifetime: int, previous: Optional[Grant]) -> Deferred:
        async def run() -> Grant:
            self.client.start()
            resets = self.client.epoch_resets
            if previous is not None:
                response = await self.client.map_port(
                    transport, internal_port, lifetime, nonce=previous.state,
                    external_port=previous.external.port, external_ip=previous.external.host)
            else:
                response = await self.client.map_port(transport, internal_port, lifetime)
            external = _usable(transport, response.external_ip, response.external_port, "PCP")
            return Grant(external, response.lifetime, self.client.epoch_resets > resets, response.nonce)

        return Deferred.fromCoroutine(run())

    def unmap(self, transport: str, internal_port: int, grant: Grant) -> Deferred:
        self.client.start()
        return self.client.unmap_port(transport, internal_port, grant.state)

    def close(self) -> Deferred:
        return self.client.stop()


@implementer(IPortMappingMethod)
class NATPMPMethod:
    name = "natpmp"

    def __init__(self, client: NATPMPClient) -> None:
        self.client = client

    def map(self, transport: str, internal_port: int, lifetime: int, previous: Optional[Grant]) -> Deferred:
        async def run() -> Grant:
            self.client.start()
            resets = self.client.epoch_resets
            address = await self.client.get_external_address()
            suggested = previous.external.port if previous is not None else internal_port
            response = await self.client.map_port(transport, internal_port, suggested, lifetime)
            external = _usable(transport, address.external_ip, response.external_port, "NAT-PMP")
            return Grant(external, response.lifetime, self.client.epoch_resets > resets)

        return Deferred.fromCoroutine(run())

    def unmap(self, transport: str, internal_port: int, grant: Grant) -> Deferred:
        self.client.start()
        return self.client.unmap_port(transport, internal_port)

    def close(self) -> Deferred:
        return self.client.stop()


@implementer(IPortMappingMethod)
class UPnPMethod:
    """
    UPnP IGD: discovers the gateway by SSDP at C{ssdp_address} on first use
    (or uses the given C{igd}), and again after it stops answering.
    """

    name = "upnp"
    log = Logger()

    def __init__(self, reactor: Any, *, ssdp_address: tuple[str, int] = SSDP_ADDRESS,
                 search_timeout: float = DEFAULT_SEARCH_TIMEOUT, timeout: float = DEFAULT_TIMEOUT,
                 igd: Optional[IGDClient] = None) -> None:
        self._reactor = reactor
        self.ssdp_address = ssdp_address
        self.search_timeout = search_timeout
        self.timeout = timeout
        self.igd = igd

    async def _get_igd(self) -> IGDClient:
        if self.igd is None:
            self.igd = await IGDClient.discover(self._reactor, ssdp_address=self.ssdp_address,
                                                search_timeout=self.search_timeout, timeout=self.timeout)
            self.log.info("UPnP: using gateway service {service} at {url}",
                          service=self.igd.service_type, url=self.igd.control_url)
        return self.igd

    def map(self, transport: str, internal_port: int, lifetime: int, previous: Optional[Grant]) -> Deferred:
        async def run() -> Grant:
            igd = await self._get_igd()
            try:
                host = await igd.get_external_ip()
                port, lease = await igd.map_port(transport, internal_port, lifetime,
                                                 previous.external.port if previous is not None else None)
            except NoService:
                self.igd = None  # it moved or went away: discover again next time
                raise
            return Grant(_usable(transport, host, port, "UPnP"), lease)

        return Deferred.fromCoroutine(run())

    def unmap(self, transport: str, internal_port: int, grant: Grant) -> Deferred:
        if self.igd is None:
            return succeed(None)
        return self.igd.delete_port_mapping(transport, grant.external.port)

    def close(self) -> Deferred:
        return succeed(None)


class PortMapper(Service):
    """
    Keeps the node's TCP port C{tcp_port} and UDP port C{udp_port} (either
    may be C{None}) mapped on the gateway.

    @param gateway: the address of the gateway for PCP and NAT-PMP (default:
        the IPv4 default gateway, read at start); C{gateway_port} its port.
    @param ssdp_address: where UPnP discovery searches (multicast by
        default; a gateway's unicast address works too).
    @param methods: L{IPortMappingMethod} providers to use, in order (default:
        PCP, NAT-PMP and UPnP built from the above).
    @param lifetime: the lease asked for, in seconds.
    @param retry_interval: seconds before trying again ports no method
        mapped, doubling up to C{max_retry_interval}.
    @param stop_timeout: how long L{stopService} waits for deletions.
    @param min_renew_delay: the shortest wait before a renewal (against
        gateways granting tiny leases).
    @param initial_timeout: PCP/NAT-PMP first retransmission timeout, doubling
        for C{max_tries} sends.
    @param search_timeout: how long an SSDP search waits for answers.
    @param http_timeout: the deadline of each UPnP HTTP exchange.
    @param history: how many L{MappingProbe}s C{probe_history} keeps.

    @ivar probes: the latest L{MappingProbe} of each method, by name.
    @ivar outcomes: how many requests (mappings and renewals) each method
        made, by C{(method, outcome)}: C{granted}, C{failed} (the gateway
        answered, but with an error) or C{no-answer}.
    """

    log = Logger()
    name = "port-mapper"

    def __init__(self, tcp_port: Optional[int] = None, udp_port: Optional[int] = None, *,
                 reactor: Any = None, gateway: Optional[str] = None, gateway_port: int = SERVER_PORT,
                 ssdp_address: tuple[str, int] = SSDP_ADDRESS,
                 methods: Optional[Sequence[IPortMappingMethod]] = None,
                 lifetime: int = DEFAULT_LIFETIME, retry_interval: float = 300.0,
                 max_retry_interval: float = 3600.0, stop_timeout: float = 3.0,
                 min_renew_delay: float = 10.0, initial_timeout: float = DEFAULT_INITIAL_TIMEOUT,
                 max_tries: int = DEFAULT_MAX_TRIES, search_timeout: float = DEFAULT_SEARCH_TIMEOUT,
                 http_timeout: float = DEFAULT_TIMEOUT, history: int = 64) -> None:
        reactor = maybe_global_reactor(reactor)
        self._reactor = reactor
        self.ports = [(t, p) for t, p in (("tcp", tcp_port), ("udp", udp_port)) if p is not None]
        for transport, port in self.ports:
            if not 0 < port < 65536:
                raise ValueError(f"{transport} port out of range: {port}")
        self.gateway = gateway
        self.gateway_port = gateway_port
        self.ssdp_address = ssdp_address
        self.methods: list[Any] = list(methods) if methods is not None else []
        self._build_methods = methods is None
        self.lifetime = lifetime
        self.retry_interval = retry_interval
        self.max_retry_interval = max(max_retry_interval, retry_interval)
        self._retry_delay = retry_interval
        self.stop_timeout = stop_timeout
        self.min_renew_delay = min_renew_delay
        self._client_options = dict(initial_timeout=initial_timeout, max_tries=max_tries)
        self._search_timeout = search_timeout
        self._http_timeout = http_timeout
        self._mappings: dict[tuple[str, int], Mapping] = {}
        self._grants: dict[tuple[str, int], tuple[Any, Grant]] = {}
        self._timers: dict[tuple[str, int], Any] = {}
        self._busy: dict[tuple[str, int], Deferred] = {}
        self._round: Optional[Deferred] = None
        self._round_waiters: list[Deferred] = []
        self._retry: Any = None
        self._observers: list[Callable[[str, Mapping], None]] = []
        self.probes: dict[str, MappingProbe] = {}
        self.probe_history: deque[MappingProbe] = deque(maxlen=history)
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (method, granted|failed|no-answer): requests

    # public view

    @property
    def mappings(self) -> dict[tuple[str, int], Mapping]:
        """The current mappings, by C{(transport, internal port)}."""
        return dict(self._mappings)

    def external_addresses(self) -> list[Address]:
        return [m.external for m in self._mappings.values()]

    def add_observer(self, observer: Callable[[str, Mapping], None]) -> None:
        """
        Call C{observer(event, mapping)} when a mapping's external address
        appears (C{"added"}) or goes (C{"removed"}); a changed address is a
        removal then an addition.  Renewals that change nothing are silent.
        """
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[str, Mapping], None]) -> None:
        self._observers.remove(observer)

    # service

    def startService(self) -> None:
        super().startService()
        if self._build_methods and not self.methods:
            self.methods = self._default_methods()
        self.refresh()

    def _default_methods(self) -> list[Any]:
        methods: list[Any] = []
        gateway = self.gateway or default_gateway_v4()
        if gateway is None:
            now = self._reactor.seconds()
            for name in ("pcp", "natpmp"):
                self._record(MappingProbe(name, "", 0, False, None, None, "no IPv4 default gateway", 0.0, now))
            self.log.info("port mapping: no IPv4 default gateway: PCP and NAT-PMP skipped")
        else:
            options = dict(reactor=self._reactor, port=self.gateway_port, **self._client_options)
            methods.append(PCPMethod(PCPClient(gateway, **options)))
            methods.append(NATPMPMethod(NATPMPClient(gateway, **options)))
        methods.append(UPnPMethod(self._reactor, ssdp_address=self.ssdp_address,
                                  search_timeout=self._search_timeout, timeout=self._http_timeout))
        return methods

    def refresh(self) -> Deferred:
        """
        Try now to map every port that has no mapping; fires (with C{None})
        when that round is over.
        """
        waiter: Deferred = Deferred()
        self._round_waiters.append(waiter)
        if self._round is None and self.running:
            if self._retry is not None and self._retry.active():
                self._retry.cancel()
            self._retry = None
            self._round = Deferred.fromCoroutine(self._run_round())
            self._round.addErrback(self._round_failed).addBoth(self._round_done)
        elif self._round is None:
            self._round_done(None)
        return waiter

    def stopService(self) -> Deferred:
        """Delete every mapping (waiting at most C{stop_timeout} seconds), then release sockets."""
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for d in [self._round, *self._busy.values()]:
            if d is not None:
                d.cancel()
        grants = list(self._grants.items())
        self._grants.clear()
        for key, _ in grants:
            self._remove(key)
        deletions = [self._delete(key, method, grant) for key, (method, grant) in grants]
        done = DeferredList(deletions, consumeErrors=True)
        done.addTimeout(self.stop_timeout, self._reactor)

        def timed_out(failure: Any) -> None:
            failure.trap(TimeoutError, CancelledError)
            self.log.warn("port mapping: gave up deleting mappings after {timeout} s", timeout=self.stop_timeout)

        def close(_: Any) -> Deferred:
            closing = [maybeDeferred(m.close) for m in self.methods]
            return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

        return done.addErrback(timed_out).addCallback(close)

    def _delete(self, key: tuple[str, int], method: Any, grant: Grant) -> Deferred:
        transport, port = key

        def ok(_: Any) -> None:
            self.log.info("port mapping: deleted the {method} mapping of {transport} port {port}",
                          method=method.name, transport=transport, port=port)

        def failed(failure: Any) -> None:
            self.log.info("port mapping: deleting the {method} mapping of {transport} port {port} failed: {error}",
                          method=method.name, transport=transport, port=port, error=failure.getErrorMessage())

        return maybeDeferred(method.unmap, transport, port, grant).addCallbacks(ok, failed)

    # rounds

    async def _run_round(self) -> None:
        silent: set[str] = set()
        for key in self.ports:
            if key in self._mappings or key in self._busy or not self.running:
                continue
            d = Deferred.fromCoroutine(self._establish(key, silent))
            self._busy[key] = d
            try:
                await d
            finally:
                self._busy.pop(key, None)
        missing = [k for k in self.ports if k not in self._mappings]
        if not missing:
            self._retry_delay = self.retry_interval
        elif self.running:
            delay = self._retry_delay
            self._retry_delay = min(delay * 2, self.max_retry_interval)
            self.log.warn("port mapping: no method mapped {ports}; trying again in {delay} s",
                          ports=", ".join(f"{t} {p}" for t, p in missing), delay=delay)
            self._retry = self._reactor.callLater(delay, self.refresh)

    def _round_failed(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            self.log.failure("port mapping: unexpected error", failure)

    def _round_done(self, _: Any) -> None:
        self._round = None
        waiters, self._round_waiters = self._round_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def _establish(self, key: tuple[str, int], silent: set[str]) -> None:
        transport, port = key
        candidates = [m for m in self.methods if m.name not in silent]
        for i, method in enumerate(candidates):
            following = candidates[i + 1].name if i + 1 < len(candidates) else "none left"
            grant = await self._attempt(method, key, None)
            if isinstance(grant, Grant):
                self._install(key, method, grant)
                return
            if isinstance(grant, NoService):
                silent.add(method.name)
            self.log.info("port mapping: {method} failed for {transport} port {port}: {error}; next: {following}",
                          method=method.name, transport=transport, port=port, error=grant, following=following)

    async def _attempt(self, method: Any, key: tuple[str, int], previous: Optional[Grant]) -> Grant | Exception:
        """Run one map/renew request, record it as a probe, return the grant or the error."""
        transport, port = key
        start = self._reactor.seconds()
        try:
            grant = await maybeDeferred(method.map, transport, port, self.lifetime, previous)
        except CancelledError:
            raise
        except Exception as e:
            if not isinstance(e, PortMappingError):
                self.log.failure("port mapping: {method} raised an unexpected error", method=method.name)
            now = self._reactor.seconds()
            self._record(MappingProbe(method.name, transport, port, not isinstance(e, NoService), None, None,
                                      str(e), now - start, now))
            return e
        now = self._reactor.seconds()
        self._record(MappingProbe(method.name, transport, port, True, grant.external, grant.lifetime, None,
                                  now - start, now))
        return grant

    def _record(self, result: MappingProbe) -> None:
        self.probes[result.method] = result
        self.probe_history.append(result)
        outcome = "granted" if result.granted is not None else "failed" if result.answered else "no-answer"
        self.outcomes[(result.method, outcome)] += 1

    # mappings

    def _install(self, key: tuple[str, int], method: Any, grant: Grant) -> None:
        transport, port = key
        old = self._mappings.get(key)
        mapping = Mapping(transport, port, grant.external, method.name, grant.lifetime, self._reactor.seconds())
        self._mappings[key] = mapping
        self._grants[key] = (method, grant)
        self._schedule_renewal(key, self._renewal_delay(mapping))
        if old is None or old.external != mapping.external:
            self.log.info("port mapping: {method} mapped {transport} port {port} to {external} for {lifetime} s",
                          method=method.name, transport=transport, port=port, external=str(mapping.external),
                          lifetime=mapping.lifetime)
            if old is not None:
                self._notify("removed", old)
            self._notify("added", mapping)
        if grant.gateway_restarted:
            others = [k for k, (m, _) in self._grants.items() if m is method and k != key]
            self.log.info("port mapping: the gateway restarted ({method}); re-mapping {count} other port(s)",
                          method=method.name, count=len(others))
            for other in others:
                self._schedule_renewal(other, 0)

    def _renewal_delay(self, mapping: Mapping) -> float:
        return max((mapping.lifetime or self.lifetime) / 2, self.min_renew_delay)

    def _schedule_renewal(self, key: tuple[str, int], delay: float) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None and timer.active():
            timer.cancel()
        if self.running:
            self._timers[key] = self._reactor.callLater(delay, self._start_renewal, key)

    def _start_renewal(self, key: tuple[str, int]) -> None:
        self._timers.pop(key, None)
        if key in self._busy or key not in self._grants:
            return
        d = Deferred.fromCoroutine(self._renew(key))
        self._busy[key] = d

        def done(result: Any) -> None:
            if self._busy.get(key) is d:
                del self._busy[key]
            if hasattr(result, "check") and not result.check(CancelledError):
                self.log.failure("port mapping: unexpected error renewing", result)

        d.addBoth(done)

    async def _renew(self, key: tuple[str, int]) -> None:
        transport, port = key
        method, grant = self._grants[key]
        old = self._mappings[key]
        result = await self._attempt(method, key, grant)
        if isinstance(result, Grant):
            self._install(key, method, result)
            return
        now = self._reactor.seconds()
        remaining = old.expires_at - now if old.expires_at is not None else float("inf")
        if not isinstance(result, NoService) and remaining > 2 * self.min_renew_delay:
            delay = min(remaining / 2, self._renewal_delay(old))
            self.log.info("port mapping: renewing {transport} port {port} by {method} failed: {error}; "
                          "retrying in {delay} s", transport=transport, port=port, method=method.name,
                          error=result, delay=delay)
            self._schedule_renewal(key, delay)
            return
        self.log.warn("port mapping: lost the {method} mapping of {transport} port {port}: {error}",
                      method=method.name, transport=transport, port=port, error=result)
        self._grants.pop(key, None)
        self._remove(key)
        self._busy.pop(key, None)  # so that the round below takes this port
        self.refresh()

    def _remove(self, key: tuple[str, int]) -> None:
        mapping = self._mappings.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None and timer.active():
            timer.cancel()
        if mapping is not None:
            self._notify("removed", mapping)

    def _notify(self, event: str, mapping: Mapping) -> None:
        for observer in list(self._observers):
            try:
                observer(event, mapping)
            except Exception:
                self.log.failure("port mapping: observer {observer!r} failed", observer=observer)

