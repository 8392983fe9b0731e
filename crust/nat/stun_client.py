"""
A STUN Binding client (RFC 8489) for a UDP socket shared with other traffic.

L{StunClient} owns no socket: it sends through a C{send(datagram, addr)}
callable and is fed every incoming datagram through L{StunClient.datagram_received},
which returns C{True} only for the STUN responses it consumed, so the caller
passes everything else on.  Requests are retransmitted on the RFC 8489
schedule (RTO doubling, Rc transmissions, a final wait of Rm*RTO) using an
injected C{IReactorTime}.

L{StunProtocol} wraps a client in a C{DatagramProtocol} that owns its socket,
and L{discover_external_address} is the one-call convenience built on it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from crust._util.ratelimit import RateLimiter
from crust.nat import stun
from crust.address import Address
from crust.errors import CrustError

log = Logger()

DEFAULT_RTO = 0.5
DEFAULT_RC = 7
DEFAULT_RM = 16
_COMPLETED_MEMORY = 256  # transaction ids remembered to absorb duplicate responses

Sender = Callable[[bytes, "tuple[str, int]"], Any]


class StunError(CrustError):
    """A STUN transaction failed."""


class StunTimeout(StunError):
    """No response after the last retransmission and the final wait."""

    def __init__(self, server: Address, transmissions: int, elapsed: float) -> None:
        self.server = server
        self.transmissions = transmissions
        self.elapsed = elapsed
        super().__init__(
            f"STUN server {server} did not answer: {transmissions} requests over {elapsed:.1f} s"
        )


class StunErrorResponse(StunError):
    """The server answered with an error response (ERROR-CODE)."""

    def __init__(self, server: Address, code: int, reason: str) -> None:
        self.server = server
        self.code = code
        self.reason = reason
        super().__init__(f"STUN server {server} answered error {code} {reason}".rstrip())


class StunBadResponse(StunError):
    """A response matched our transaction but cannot be used."""


@dataclass(frozen=True)
class BindingResult:
    """
    The outcome of one Binding transaction.

    @ivar mapped_address: our address as the server saw it.
    @ivar source: where the response came from (differs from C{server}
        after a CHANGE-REQUEST).
    @ivar rtt: seconds from the first transmission to the response; a true
        round-trip time only when C{transmissions} is 1.
    """

    server: Address
    mapped_address: Address
    source: Address
    response_origin: Optional[Address]
    other_address: Optional[Address]
    rtt: float
    transmissions: int
    software: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        def text(a: Optional[Address]) -> Optional[str]:
            return None if a is None else str(a)

        return {
            "server": str(self.server),
            "mapped_address": str(self.mapped_address),
            "source": str(self.source),
            "response_origin": text(self.response_origin),
            "other_address": text(self.other_address),
            "rtt": self.rtt,
            "transmissions": self.transmissions,
            "software": self.software,
        }


class _Transaction:
    def __init__(self, kind: str, target: Address, datagram: bytes, started: float) -> None:
        self.kind = kind  # "binding" or "hairpin"
        self.target = target
        self.datagram = datagram
        self.started = started
        self.transmissions = 0
        self.deferred: Deferred[Any] = Deferred(self._cancel)
        self.retransmit: Optional[IDelayedCall] = None
        self.deadline: Optional[IDelayedCall] = None
        self.on_cancel: Callable[["_Transaction"], object] = lambda tx: None

    def stop_timers(self) -> None:
        for call in (self.retransmit, self.deadline):
            if call is not None and call.active():
                call.cancel()
        self.retransmit = self.deadline = None

    def _cancel(self, d: Deferred[Any]) -> None:
        self.stop_timers()
        self.on_cancel(self)


class StunClient:
    """
    STUN Binding transactions over a socket someone else owns.

    @param send: C{send(datagram, (host, port))}, e.g. a UDP transport's
        C{write}.
    @param clock: the C{IReactorTime} for retransmission timers.
    @param rto: initial retransmission timeout, seconds.
    @param rc: number of transmissions of a request.
    @param rm: the final wait after the last transmission is C{rm * rto}.
    @param software: a SOFTWARE attribute for requests, or C{None}.
    @param fingerprint: append FINGERPRINT to requests.

    C{counters} counts what came in and went out: C{sent},
    C{retransmissions}, C{responses}, C{error_responses}, C{timeouts},
    C{duplicates} (responses to an already finished transaction),
    C{unmatched} (valid STUN not answering an outstanding transaction),
    C{malformed} (looked like STUN, failed to parse), C{not_stun}, and
    C{send_errors}.
    """

    def __init__(
        self,
        send: Sender,
        clock: IReactorTime,
        *,
        rto: float = DEFAULT_RTO,
        rc: int = DEFAULT_RC,
        rm: float = DEFAULT_RM,
        software: Optional[str] = None,
        fingerprint: bool = True,
    ) -> None:
        _check_schedule(rto, rc, rm)
        self._send = send
        self._clock = clock
        self.rto = rto
        self.rc = rc
        self.rm = rm
        self._software = software
        self._fingerprint = fingerprint
        self._transactions: dict[bytes, _Transaction] = {}
        self._completed: OrderedDict[bytes, None] = OrderedDict()
        self._logs = RateLimiter(clock, per_key=(0.2, 3.0), total=(1.0, 10.0), max_keys=8)  # lines about input
        self.counters = dict.fromkeys(
            (
                "sent",
                "retransmissions",
                "responses",
                "error_responses",
                "timeouts",
                "duplicates",
                "unmatched",
                "malformed",
                "not_stun",
                "send_errors",
            ),
            0,
        )

    @property
    def outstanding(self) -> int:
        """The number of transactions in progress."""
        return len(self._transactions)

    def binding_request(
        self,
        server: Address,
        change_ip: bool = False,
        change_port: bool = False,
        *,
        rto: Optional[float] = None,
        rc: Optional[int] = None,
        rm: Optional[float] = None,
    ) -> "Deferred[BindingResult]":
        """
        Send a Binding request to C{server}, retransmitting until a response.

        C{rto}, C{rc} and C{rm} override the client's schedule for this
        request.  Cancelling the Deferred abandons the transaction.

        @return: fires with a L{BindingResult}, or fails with L{StunTimeout},
            L{StunErrorResponse} or L{StunBadResponse}.
        """
        rto = self.rto if rto is None else rto
        rc = self.rc if rc is None else rc
        rm = self.rm if rm is None else rm
        _check_schedule(rto, rc, rm)
        request = stun.make_binding_request(
            self._new_tid(), change_ip=change_ip, change_port=change_port, software=self._software
        )
        tx = self._start("binding", server, stun.encode(request, fingerprint=self._fingerprint), request)
        log.debug(
            "STUN binding request {tid} to {server} (change_ip={change_ip}, change_port={change_port})",
            tid=request.transaction_id.hex(),
            server=str(server),
            change_ip=change_ip,
            change_port=change_port,
        )
        if self._transmit(tx, request.transaction_id):
            self._schedule(tx, request.transaction_id, rto, rc, rm)
        return tx.deferred

    def hairpin_probe(self, target: Address, timeout: float = 2.0) -> "Deferred[bool]":
        """
        Send a Binding request to C{target} (normally our own mapped address)
        and watch for that same request arriving back on this socket, as it
        does when the NAT hairpins.  Retransmits on the RTO schedule.

        @return: fires C{True} when the request came back, C{False} when
            C{timeout} seconds passed without it.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        request = stun.make_binding_request(self._new_tid(), software=self._software)
        tx = self._start("hairpin", target, stun.encode(request, fingerprint=self._fingerprint), request)
        tid = request.transaction_id
        tx.deadline = self._clock.callLater(timeout, self._hairpin_expired, tid)
        if self._transmit(tx, tid):
            self._schedule(tx, tid, self.rto, None, None)
        return tx.deferred

    def datagram_received(self, data: bytes, addr: "tuple[Any, ...]") -> bool:
        """
        Offer an incoming datagram.  Returns C{True} when it was consumed:
        a response (or, for a hairpin probe, our own request) of an
        outstanding transaction, or a late duplicate of one.  Anything else
        is counted and left to the caller.

        Only the header is read until the transaction id matches one of
        ours: a stranger's message costs a dictionary look-up, never a
        decode, whatever its size.
        """
        if not stun.is_stun(data):
            self.counters["not_stun"] += 1
            return False
        try:
            method, message_class, tid = stun.peek(data)
        except stun.StunParseError:  # is_stun passed: cannot happen, but a header is all we trust
            self.counters["malformed"] += 1
            return False
        tx = self._transactions.get(tid)
        if tx is None:
            if tid in self._completed and message_class in (stun.MessageClass.SUCCESS, stun.MessageClass.ERROR):
                self.counters["duplicates"] += 1
                return True
            self.counters["unmatched"] += 1
            if message_class != stun.MessageClass.REQUEST and self._logs.allow("unsolicited"):
                log.info("ignoring unsolicited STUN {cls} {tid} from {source}",
                         cls=message_class.name.lower(), tid=tid.hex(), source=_addr_text(addr))
            return False
        source = Address.from_sockaddr("udp", addr)
        if source is None:
            self.counters["malformed"] += 1
            if self._logs.allow("source"):
                log.info("ignoring STUN datagram from unusable source {source!r}", source=addr)
            return False
        if tx.kind == "hairpin":
            if message_class == stun.MessageClass.REQUEST and method == stun.BINDING and data == tx.datagram:
                self._finish(tid, True)
                return True
            self.counters["unmatched"] += 1
            return False
        if method != stun.BINDING or message_class not in (stun.MessageClass.SUCCESS, stun.MessageClass.ERROR):
            self.counters["unmatched"] += 1
            if self._logs.allow("mismatch"):
                log.info("ignoring STUN {cls} with our transaction id {tid} from {source}",
                         cls=message_class.name.lower(), tid=tid.hex(), source=str(source))
            return False
        try:
            message = stun.decode(data, max_size=stun.MAX_BINDING_SIZE)
        except stun.StunParseError as e:
            self.counters["malformed"] += 1
            if self._logs.allow("malformed"):
                log.info("ignoring malformed STUN datagram from {source}: {reason}", source=str(source), reason=str(e))
            return False
        self._complete_binding(tx, message, source)
        return True

    def cancel_all(self) -> None:
        """Cancel every outstanding transaction (their Deferreds fail with C{CancelledError})."""
        for tx in list(self._transactions.values()):
            tx.deferred.cancel()

    # --- internals ---

    def _new_tid(self) -> bytes:
        while True:
            tid = stun.new_transaction_id()
            if tid not in self._transactions and tid not in self._completed:
                return tid

    def _start(self, kind: str, target: Address, datagram: bytes, request: stun.StunMessage) -> _Transaction:
        tx = _Transaction(kind, target, datagram, self._clock.seconds())
        tid = request.transaction_id
        tx.on_cancel = lambda t: self._transactions.pop(tid, None)
        self._transactions[tid] = tx
        return tx

    def _transmit(self, tx: _Transaction, tid: bytes) -> bool:
        """Send once; False (and the transaction failed) when the first send raises."""
        tx.transmissions += 1
        try:
            self._send(tx.datagram, tx.target.sockaddr())
        except Exception as e:
            self.counters["send_errors"] += 1
            log.info(
                "STUN send to {target} failed: {error}", target=str(tx.target), error=str(e)
            )
            if tx.transmissions == 1:
                self._finish(tid, StunError(f"cannot send to STUN server {tx.target}: {e}"))
                return False
            return True
        self.counters["sent"] += 1
        if tx.transmissions > 1:
            self.counters["retransmissions"] += 1
        return True

    def _schedule(self, tx: _Transaction, tid: bytes, rto: float, rc: Optional[int], rm: Optional[float]) -> None:
        """Arm the next retransmission (rc=None: until the deadline) or the final wait."""
        if rc is None or tx.transmissions < rc:
            delay = rto * 2 ** (tx.transmissions - 1)
            tx.retransmit = self._clock.callLater(delay, self._retransmit, tid, rto, rc, rm)
        else:
            assert rm is not None
            tx.retransmit = self._clock.callLater(rto * rm, self._timed_out, tid)

    def _retransmit(self, tid: bytes, rto: float, rc: Optional[int], rm: Optional[float]) -> None:
        tx = self._transactions.get(tid)
        if tx is None:
            return
        tx.retransmit = None
        log.debug(
            "STUN retransmission {n} of {tid} to {target}", n=tx.transmissions + 1, tid=tid.hex(), target=str(tx.target)
        )
        if self._transmit(tx, tid):
            self._schedule(tx, tid, rto, rc, rm)

    def _timed_out(self, tid: bytes) -> None:
        tx = self._transactions.get(tid)
        if tx is None:
            return
        tx.retransmit = None
        self.counters["timeouts"] += 1
        elapsed = self._clock.seconds() - tx.started
        log.info(
            "STUN binding request to {server} timed out after {transmissions} transmissions",
            server=str(tx.target),
            transmissions=tx.transmissions,
        )
        self._finish(tid, StunTimeout(tx.target, tx.transmissions, elapsed))

    def _hairpin_expired(self, tid: bytes) -> None:
        tx = self._transactions.get(tid)
        if tx is not None:
            tx.deadline = None
            self._finish(tid, False)

    def _complete_binding(self, tx: _Transaction, message: stun.StunMessage, source: Address) -> None:
        tid = message.transaction_id
        server = tx.target
        if message.message_class == stun.MessageClass.ERROR:
            self.counters["error_responses"] += 1
            error = message.error_code
            if error is None:
                self._finish(tid, StunBadResponse(f"STUN server {server} sent an error response without ERROR-CODE"))
            else:
                log.info("STUN server {server} answered {code} {reason}",
                         server=str(server), code=error.code, reason=error.reason)
                self._finish(tid, StunErrorResponse(server, error.code, error.reason))
            return
        self.counters["responses"] += 1
        unknown = message.unknown_comprehension_required()
        if unknown:
            names = ", ".join(stun.attribute_name(t) for t in unknown)
            self._finish(tid, StunBadResponse(
                f"STUN server {server} sent unknown comprehension-required attributes: {names}"))
            return
        mapped = message.mapped_address
        if mapped is None:
            self._finish(tid, StunBadResponse(f"STUN server {server} sent a success response without a mapped address"))
            return
        result = BindingResult(
            server=server,
            mapped_address=mapped,
            source=source,
            response_origin=message.response_origin,
            other_address=message.other_address,
            rtt=self._clock.seconds() - tx.started,
            transmissions=tx.transmissions,
            software=message.software,
        )
        log.debug(
            "STUN server {server} sees us at {mapped} (rtt {rtt:.3f} s)",
            server=str(server), mapped=str(mapped), rtt=result.rtt,
        )
        self._finish(tid, result)

    def _finish(self, tid: bytes, outcome: Any) -> None:
        tx = self._transactions.pop(tid)
        tx.stop_timers()
        self._completed[tid] = None
        while len(self._completed) > _COMPLETED_MEMORY:
            self._completed.popitem(last=False)
        if isinstance(outcome, Exception):
            tx.deferred.errback(outcome)
        else:
            tx.deferred.callback(outcome)


class StunProtocol(DatagramProtocol):
    """
    A UDP socket of its own with a L{StunClient} on it.  Datagrams the client
    does not consume go to C{other_datagram(data, addr)} when given.
    """

    def __init__(
        self,
        reactor: Optional[IReactorTime] = None,
        *,
        other_datagram: Optional[Callable[[bytes, Any], None]] = None,
        **client_options: Any,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._other_datagram = other_datagram
        self.client = StunClient(self._write, reactor, **client_options)

    def _write(self, data: bytes, addr: "tuple[str, int]") -> None:
        if self.transport is None:
            raise StunError("the STUN socket is not open")
        self.transport.write(data, addr)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if not self.client.datagram_received(data, addr) and self._other_datagram is not None:
            self._other_datagram(data, addr)

    def stopProtocol(self) -> None:
        self.client.cancel_all()

    def local_address(self) -> Address:
        transport = self.transport
        assert transport is not None, "the STUN socket is not open"
        host = transport.getHost()
        return Address("udp", host.host, host.port)

    def binding_request(
        self, server: Address, change_ip: bool = False, change_port: bool = False, **kw: Any
    ) -> "Deferred[BindingResult]":
        return self.client.binding_request(server, change_ip, change_port, **kw)


def discover_external_address(
    reactor: Any,
    servers: Iterable[Address],
    *,
    local_port: int = 0,
    interface: str = "",
    **client_options: Any,
) -> "Deferred[Address]":
    """
    Open a UDP socket on C{interface}:C{local_port}, ask C{servers} in turn
    until one answers, close the socket.

    @param client_options: passed to L{StunClient} (C{rto}, C{rc}, C{rm}, ...).
    @return: fires with our address as the first answering server saw it,
        or fails with L{StunError} naming every server's failure.
    """
    servers = list(servers)
    if not servers:
        raise ValueError("discover_external_address needs at least one STUN server")

    async def run() -> Address:
        protocol = StunProtocol(reactor, **client_options)
        port = reactor.listenUDP(local_port, protocol, interface=interface)
        try:
            failures = []
            for server in servers:
                try:
                    result = await protocol.binding_request(server)
                except StunError as e:
                    failures.append(str(e))
                    continue
                log.info(
                    "external address {mapped} (from STUN server {server})",
                    mapped=str(result.mapped_address),
                    server=str(server),
                )
                return result.mapped_address
            raise StunError("no STUN server answered: " + "; ".join(failures))
        finally:
            await _maybe_deferred(port.stopListening())

    return ensureDeferred(run())


async def _maybe_deferred(value: Any) -> None:
    if isinstance(value, Deferred):
        await value


def _addr_text(addr: Any) -> str:
    try:
        return f"{addr[0]}:{addr[1]}"
    except (TypeError, IndexError, KeyError):
        return repr(addr)


def _check_schedule(rto: float, rc: int, rm: float) -> None:
    if not rto > 0:
        raise ValueError(f"rto must be positive, not {rto!r}")
    if not isinstance(rc, int) or rc < 1:
        raise ValueError(f"rc must be a positive integer, not {rc!r}")
    if not rm > 0:
        raise ValueError(f"rm must be positive, not {rm!r}")


__all__ = [
    "BindingResult",
    "StunBadResponse",
    "StunClient",
    "StunError",
    "StunErrorResponse",
    "StunProtocol",
    "StunTimeout",
    "discover_external_address",
]
