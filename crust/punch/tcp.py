"""
TCP hole punching by simultaneous open (L{TcpPuncher}).

Both sides connect I{from their listening port} (it is bound with
C{SO_REUSEPORT}, L{crust.transport.tcp}) to every TCP candidate of the other
at the agreed moment.  Each SYN opens its sender's NAT for the other's SYN;
whichever arrives second crosses it, and the kernel completes a
simultaneous open (both C{connect()}s succeed), or, when one side's SYN
reached the other's listener first, an ordinary accept on that side (its own
C{connect()} to the same pair of addresses then fails with "address not
available": that pair is connected already, and it is not dialled again).
A SYN refused (an RST from a NAT or host that did not drop it) is retried
every L{RETRY} seconds until the window closes.

Who runs TLS as client is settled by peer id, not by who connected: the
larger id is the TLS client and the crust initiator on every connection of
a punch, whether it came from C{connect()} or from the listener (the accept
hook claims a connection from a punching peer's candidate address and makes
us its client when we are the larger id).
"""

from __future__ import annotations

import errno
from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectError, ConnectionRefusedError, TimeoutError as TcpTimeout
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust.address import Address
from crust.candidates import NatInfo
from crust.identity import PeerId
from crust.punch.pairs import remote_targets
from crust.punch.plan import PunchPlan
from crust.session.purpose import Purpose

RETRY = 0.2  # seconds between SYNs to a target that refused
WINDOW = 10.0  # seconds a coordinated punch goes on
BLIND_WINDOW = 20.0  # without a rendezvous, the other side starts whenever its user pastes
MAX_TARGETS = 8  # TCP candidates of the peer punched at once

#: C{dial(address, purpose, peer, tls_client)}: a TCP connection from our listening port; fires with the connection.
TcpDial = Callable[[Address, Purpose, PeerId, bool], Deferred]
#: C{factory(purpose, peer)}: the connection factory for a connection our listener accepted from a punching
#: peer, which we run as TLS client.
AcceptFactory = Callable[[Purpose, PeerId], Any]


def _symmetric(nat: NatInfo) -> bool:
    """Endpoint-dependent mapping on TCP, or, when TCP's is unknown, on UDP (NATs mostly treat both alike)."""
    tcp = nat.tcp.mapping.value
    return tcp == "edm" or (tcp == "unknown" and nat.udp.mapping.value == "edm")


class TcpPunchFailed(Exception):
    """A TCP punch gave up; the message says what each target answered."""


class TcpPuncher:
    """
    @param dial: connects from our listening port (L{crust.transport.tcp.TcpTransport.dial} with C{from_listener}).
    @param claim: builds the factory for an accepted connection we must run as TLS client.
    @param local_id: our peer id (the larger id is the TLS client).
    """

    log = Logger()

    def __init__(self, clock: Any, local_id: PeerId, dial: TcpDial, claim: AcceptFactory,
                 local_addresses: Callable[[], list[Address]] = lambda: [],
                 local_nat: Callable[[], NatInfo] = NatInfo) -> None:
        self.clock = clock
        self.local_id = local_id
        self.local_nat = local_nat
        self._dial = dial
        self._claim = claim
        self._local_addresses = local_addresses
        self._runs: dict[bytes, _TcpRun] = {}

    def punch(self, plan: PunchPlan, purpose: Purpose) -> Deferred:
        """Punch to C{plan}'s peer over TCP; fires with the first connection made (handshake running)."""
        targets = remote_targets(list(plan.info.candidates), "tcp", local_addresses=self._local_addresses(),
                                 max_targets=MAX_TARGETS)
        if not targets:
            return fail(TcpPunchFailed("the peer offers no TCP candidate"))
        prepared = self._runs.get(plan.attempt)
        if prepared is not None and not prepared.started and prepared.plan.peer_id == plan.peer_id:
            prepared.plan, prepared.purpose = plan, purpose
            prepared.start()
            return prepared.result
        run = _TcpRun(self, plan, purpose, targets)
        self._runs[plan.attempt] = run
        run.start()
        return run.result

    def prepare(self, plan: PunchPlan, purpose: Purpose, lifetime: float) -> None:
        """
        The peer will punch to us with C{plan}'s attempt (we answered its
        request; the SYNC that starts ours is on its way): claim its
        connections from now on, as that punch would, for C{lifetime}
        seconds or until L{punch} starts it.  Its SYN may reach our listener
        before the SYNC reaches us, and the TLS roles must match all the same.
        """
        targets = remote_targets(list(plan.info.candidates), "tcp", local_addresses=self._local_addresses(),
                                 max_targets=MAX_TARGETS)
        if not targets or plan.attempt in self._runs:
            return
        run = _TcpRun(self, plan, purpose, targets)
        self._runs[plan.attempt] = run
        run.prepare(lifetime)

    def stop(self, peer_id: PeerId) -> None:
        for run in [r for r in self._runs.values() if r.plan.peer_id == peer_id]:
            run.finish(None)

    def stop_all(self) -> None:
        for run in list(self._runs.values()):
            run.finish(TcpPunchFailed("the node is stopping"))

    def accept_hook(self, addr: Any) -> Optional[Any]:
        """
        For the listener: a connection from C{addr} that belongs to a punch of
        ours, and we are the larger id (the TLS client): the factory to run it
        with; else None (run it as any accepted connection).
        """
        host, port = getattr(addr, "host", None), getattr(addr, "port", None)
        runs = list(self._runs.values())
        # the peer's SYN leaves from its listener's mapped address (one of its candidates); behind a
        # NAT that maps per destination it comes from another port of the same host (once our punch
        # runs: before, its direct dials from other ports are more likely, and they run as TLS client)
        run = next((r for r in runs if r.expects(host, port)), None) or next(
            (r for r in runs if r.started and r.may_come_from(host)), None)
        if run is None:
            return None
        run.accepted += 1
        return self._claim(run.purpose, run.plan.peer_id) if self.local_id > run.plan.peer_id else None

    def running(self, peer_id: PeerId) -> bool:
        return any(r.plan.peer_id == peer_id for r in self._runs.values())

    def punched_from(self, address: Address) -> Optional[PeerId]:
        for run in self._runs.values():
            if run.expects(address.host, address.port):
                return run.plan.peer_id
        return None

    def _finished(self, run: "_TcpRun") -> None:
        if self._runs.get(run.plan.attempt) is run:
            del self._runs[run.plan.attempt]


class _TcpRun:
    def __init__(self, puncher: TcpPuncher, plan: PunchPlan, purpose: Purpose, targets: list[Address]) -> None:
        self.puncher = puncher
        self.plan = plan
        self.purpose = purpose
        self.targets = targets
        self.clock = puncher.clock
        self.window = WINDOW if plan.coordinated else BLIND_WINDOW
        self.tls_client = puncher.local_id > plan.peer_id
        self.result: Deferred = Deferred(lambda d: self.finish(None))
        self.outcomes: dict[Address, str] = {}
        self.tries: dict[Address, int] = {}
        self._dials: dict[Address, Deferred] = {}
        self._timers: dict[Address, Any] = {}
        self._deadline: Any = None
        self.accepted = 0
        self.started = False
        self.done = False

    def expects(self, host: Optional[str], port: Optional[int]) -> bool:
        return any(t.host == host and t.port == port for t in self.targets)

    def may_come_from(self, host: Optional[str]) -> bool:
        """A SYN from another port of a target's host: only when the peer's NAT may map per destination."""
        nat = self.plan.info.nat
        if nat is not None and nat.tcp.mapping.value == "eim":
            return False
        return any(t.host == host for t in self.targets)

    def prepare(self, lifetime: float) -> None:
        """Claim the peer's connections, not dialling yet; end quietly after C{lifetime} seconds if not started."""
        self._deadline = self.clock.callLater(lifetime, self.finish, None)

    def start(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()  # a prepared run's lifetime
        self.started = True
        delay = max(0.0, self.plan.start_at - self.clock.seconds())
        self._deadline = self.clock.callLater(delay + self.window, self._expired)
        for target in self.targets:
            self._timers[target] = self.clock.callLater(delay, self._dial, target)

    def _dial(self, target: Address) -> None:
        self._timers.pop(target, None)
        if self.done:
            return
        self.tries[target] = self.tries.get(target, 0) + 1
        remaining = self._deadline.getTime() - self.clock.seconds() if self._deadline is not None else 1.0
        if remaining <= 0:
            return
        d = self.puncher._dial(target, self.purpose, self.plan.peer_id, self.tls_client)
        self._dials[target] = d
        d.addCallbacks(self._connected, self._failed, callbackArgs=(target,), errbackArgs=(target,))

    def _connected(self, conn: Any, target: Address) -> None:
        self._dials.pop(target, None)
        self.outcomes[target] = "connected"
        self.finish(conn)

    def _failed(self, failure: Failure, target: Address) -> None:
        self._dials.pop(target, None)
        if self.done or failure.check(CancelledError):
            return
        value = failure.value
        os_error = getattr(value, "osError", None)  # the reactor's ConnectError holds the errno itself
        code = os_error if isinstance(os_error, int) else getattr(os_error, "errno", None) or getattr(
            value, "errno", None)
        if code == errno.EADDRNOTAVAIL or "Cannot assign requested address" in str(value):
            # the peer's SYN reached our listener first: this pair of addresses is connected already
            self.outcomes[target] = "connected by the peer's SYN (accepted)"
            return
        if failure.check(ConnectionRefusedError):
            self.outcomes[target] = "refused (RST)"
        elif failure.check(TcpTimeout):
            self.outcomes[target] = "no answer to our SYNs"
        elif failure.check(ConnectError):
            self.outcomes[target] = str(value).strip() or type(value).__name__
        else:
            self.outcomes[target] = str(value).strip() or type(value).__name__
        self._timers[target] = self.clock.callLater(RETRY, self._dial, target)

    def _expired(self) -> None:
        self._deadline = None
        if self.done:
            return
        parts = [f"{t}: {self.outcomes.get(t, 'no answer to our SYNs')} ({self.tries.get(t, 0)} tries)"
                 for t in self.targets]
        self.finish(TcpPunchFailed(f"simultaneous open for {self.window:g} s: " + "; ".join(parts) + self._why()))

    def _why(self) -> str:
        """What the NATs known say about why (a symmetric NAT maps each destination to its own port)."""
        theirs = self.plan.info.nat
        sides = []
        if _symmetric(self.puncher.local_nat()):
            sides.append("ours")
        if theirs is not None and _symmetric(theirs):
            sides.append("the peer's")
        if not sides:
            return ""
        return (f" ({' and '.join(sides)} NAT is symmetric: its TCP port for the other side cannot be known "
                "in advance; this pair needs a relay)")

    def finish(self, outcome: Any) -> None:
        if self.done:
            return
        self.done = True
        for timer in [*self._timers.values(), self._deadline]:
            if timer is not None and timer.active():
                timer.cancel()
        self._timers.clear()
        self._deadline = None
        for d in list(self._dials.values()):
            d.cancel()
        self._dials.clear()
        self.puncher._finished(self)
        if outcome is None or self.result.called:
            return
        if isinstance(outcome, Exception):
            self.result.errback(Failure(outcome))
        else:
            self.result.callback(outcome)
