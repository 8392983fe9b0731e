"""
Racing a peer's candidate addresses: L{ConnectAttempt}.

TCP addresses are dialled at once, QUIC (UDP) addresses C{quic_delay}
seconds later, or as soon as every TCP dial has failed (Happy Eyeballs, RFC
8305: where both work, TCP, much the faster in Python, usually wins; where TCP
is blocked, QUIC costs only the delay).  Each dial that connects runs the
secure handshake.  The attempt succeeds as soon as the peer table has an
active connection to the peer (from any candidate, ours or theirs) and fails
once every candidate has failed, or at the deadline, with every reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from twisted.internet.defer import Deferred, CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from crust.address import Address
from crust.errors import ConnectFailed
from crust.identity import PeerId

if TYPE_CHECKING:
    from crust.connection import PeerConnection

Dial = Callable[[Address, PeerId, "ConnectAttempt"], Deferred]


class ConnectAttempt:
    """One L{crust.Service.connect} in progress (shared by repeated calls)."""

    log = Logger()

    def __init__(
        self,
        peer_id: PeerId,
        addresses: tuple[Address, ...],
        dial: Dial,
        clock,
        timeout: float,
        has_candidates: Callable[[PeerId], bool],
        on_done: Callable[["ConnectAttempt"], None],
        quic_delay: float = 0.0,
    ) -> None:
        self.peer_id = peer_id
        self.addresses = addresses
        self._dial = dial
        self._clock = clock
        self._timeout = timeout
        self._has_candidates = has_candidates
        self._on_done = on_done
        self._waiters: list[Deferred] = []
        self._dials: dict[Address, Deferred] = {}
        self._connections: dict["PeerConnection", Address] = {}
        self.reasons: dict[Address, str] = {}
        self.done = False
        self.error: Optional[ConnectFailed] = None
        self._timer = None
        self._quic_delay = quic_delay
        self._held: list[Address] = []  # QUIC addresses waiting for their turn
        self._held_timer = None
        self.started_at = clock.seconds()

    def wait(self) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def start(self) -> None:
        self._timer = self._clock.callLater(self._timeout, self._timed_out)
        if not self.addresses:
            self._check_done()
            return
        now = [a for a in self.addresses if a.transport != "udp"]
        held = [a for a in self.addresses if a.transport == "udp"]
        if now and held and self._quic_delay > 0:
            self._held = held
            self._held_timer = self._clock.callLater(self._quic_delay, self._release)
        else:
            now += held
        for address in now:
            self._start_dial(address)

    def _start_dial(self, address: Address) -> None:
        d = self._dial(address, self.peer_id, self)
        self._dials[address] = d
        d.addCallbacks(self._dialled, self._dial_failed, callbackArgs=(address,), errbackArgs=(address,))

    def _release(self) -> None:
        """Dial the held QUIC addresses (their delay is over, or TCP has failed)."""
        if self._held_timer is not None and self._held_timer.active():
            self._held_timer.cancel()
        self._held_timer = None
        held, self._held = self._held, []
        for address in held:
            if not self.done:
                self._start_dial(address)

    # -- reports from dials and connections ------------------------------------

    def _dialled(self, conn: "PeerConnection", address: Address) -> None:
        self._dials.pop(address, None)
        if self.done:
            if conn.connected and not conn.is_active:
                conn.close_duplicate()
            return
        if conn.connected:
            self._connections[conn] = address
        self._check_done()

    def _dial_failed(self, failure: Failure, address: Address) -> None:
        self._dials.pop(address, None)
        if not failure.check(CancelledError):
            self.reasons[address] = f"{address}: {_failure_text(failure)}"
        self._check_done()

    def connection_lost(self, conn: "PeerConnection", reason: str) -> None:
        address = self._connections.pop(conn, None)
        if address is None:
            return
        if not self.done:
            self.reasons.setdefault(address, f"{address}: {reason}")
            self._check_done()

    def connection_refused(self, conn: "PeerConnection", reason: str) -> None:
        """A handshake check failed on one of our connections (its loss follows)."""
        address = self._connections.get(conn)
        if address is not None:
            self.reasons.setdefault(address, f"{address}: {reason}")

    def owns(self, conn: "PeerConnection") -> bool:
        return conn in self._connections

    # -- outcome -----------------------------------------------------------------

    def succeeded(self) -> None:
        if self.done:
            return
        self._finish()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.peer_id)

    def fail(self, summary: str) -> None:
        if self.done:
            return
        reasons = [self.reasons[a] for a in self.addresses if a in self.reasons]
        reasons += [r for a, r in self.reasons.items() if a not in self.addresses]
        error = self.error = ConnectFailed(self.peer_id, reasons, summary)
        self._finish()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(Failure(error))

    def _finish(self) -> None:
        """Stop the clock and abandon the candidates that did not win."""
        self.done = True
        for timer in (self._timer, self._held_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._held_timer = None
        self._held = []
        self._on_done(self)
        for d in list(self._dials.values()):
            d.cancel()
        for conn in list(self._connections):
            if not conn.is_active:
                conn.close_duplicate()

    def _check_done(self) -> None:
        if self.done or self._dials or self._connections:
            return
        if self._held:
            self._release()  # every TCP dial failed: QUIC need not wait
            return
        if self._has_candidates(self.peer_id):
            return  # an incoming candidate may still become the connection
        if not self.addresses:
            self.fail(f"could not connect to {self.peer_id}: its connection info has no address we can use")
        else:
            self.fail(f"could not connect to {self.peer_id}")

    def _timed_out(self) -> None:
        self._timer = None
        self.fail(f"could not connect to {self.peer_id} within {self._timeout:g} s")


def _failure_text(failure: Failure) -> str:
    return (str(failure.value) or type(failure.value).__name__).strip()
