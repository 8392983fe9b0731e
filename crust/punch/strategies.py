"""
Hole punching's dial strategies (registered with L{crust.peering.dialer.Dialer},
as peers of direct TCP and QUIC):

  - C{rendezvous}: finds a peer both sides are connected to and runs the
    exchange through it (L{crust.punch.coordinator}); with the peer's
    candidates and an agreed moment, it adds the other legs to the attempt:
    direct TCP and QUIC to the candidates it had not tried, and the two
    punches.  Without a common peer, when the peer's info came out of band
    (both users paste each other's line), it adds the punches at once, with
    a longer window: the other side punches when its user pastes.
  - C{tcp-punch}: TCP simultaneous open (L{crust.punch.tcp}).
  - C{udp-punch}: UDP checks, then QUIC (L{crust.punch.udp}).

The punches apply only to legs the rendezvous adds (their target carries
the plan); a connect attempt by connection info alone never starts one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from crust.candidates import CandidateKind
from crust.connection_info import PubConnectionInfo
from crust.identity import PeerId
from crust.punch.plan import PunchPlan, PunchTarget
from crust.punch.rendezvous import NoCommonPeer

if TYPE_CHECKING:
    from crust.peering.attempt import ConnectAttempt
    from crust.peering.dialer import Dialer
    from crust.punch.manager import PunchManager


@dataclass(frozen=True)
class RendezvousTarget:
    """The rendezvous leg's one target: the peer (and its info, when we had it already)."""

    peer_id: PeerId
    info: PubConnectionInfo

    def __str__(self) -> str:
        return "rendezvous"


class RendezvousStrategy:
    name = "rendezvous"
    path_kind = "direct"

    def __init__(self, manager: "PunchManager", dialer: "Dialer") -> None:
        self._manager = manager
        self._dialer = dialer

    def delay(self, hints: Mapping[str, Any]) -> float:
        return 0.0

    def targets(self, info: PubConnectionInfo, hints: Mapping[str, Any]) -> list[RendezvousTarget]:
        if "punch" in hints:
            return []
        if info.candidates and all(c.address.is_loopback for c in info.candidates):
            return []  # a peer on this machine: nothing to punch
        return [RendezvousTarget(info.peer_id, info)]

    def dial(self, target: RendezvousTarget, attempt: "ConnectAttempt") -> Deferred:
        manager = self._manager
        out: Deferred = Deferred(lambda d: running.cancel() if running is not None else None)
        running: Optional[Deferred] = None
        pasted = bool(target.info.candidates)
        behind_nat = any(c.kind is not CandidateKind.HOST for c in target.info.candidates)

        def found(via: PeerId) -> Deferred:
            nonlocal running
            running = manager.exchange(target.peer_id, via)
            return running

        def planned(plan: PunchPlan) -> None:
            self._extend(attempt, plan)
            if not out.called:
                out.callback(None)

        def failed(failure: Failure) -> None:
            if out.called:
                return
            if pasted and behind_nat:
                # no rendezvous: the other user pastes our info too, and punches at the same time
                self._extend(attempt, manager.blind_plan(target.info))
                out.callback(None)
                return
            if pasted:
                out.callback(None)  # the direct legs are all there is to try: they give the reasons
                return
            why = str(failure.value) if failure.check(NoCommonPeer) else f"exchange failed: {failure.value}"
            out.errback(Failure(_ReasonError(why)))

        running = manager.find(target.peer_id)
        running.addCallback(found).addCallbacks(planned, failed)
        return out

    def _extend(self, attempt: "ConnectAttempt", plan: PunchPlan) -> None:
        attempt.extend(self._dialer.plan(plan.info, {"punch": plan}))


class _ReasonError(Exception):
    pass


class _PunchStrategy:
    name = ""
    path_kind = ""

    def __init__(self, manager: "PunchManager") -> None:
        self._manager = manager

    def delay(self, hints: Mapping[str, Any]) -> float:
        return 0.0  # the puncher itself waits for the plan's moment

    def targets(self, info: PubConnectionInfo, hints: Mapping[str, Any]) -> list[PunchTarget]:
        plan = hints.get("punch")
        return [PunchTarget(self.name, plan)] if isinstance(plan, PunchPlan) else []


class TcpPunchStrategy(_PunchStrategy):
    name = "tcp-punch"
    path_kind = "punched-tcp"

    def dial(self, target: PunchTarget, attempt: "ConnectAttempt") -> Deferred:
        return self._manager.punch_tcp(target.plan, attempt)


class UdpPunchStrategy(_PunchStrategy):
    name = "udp-punch"
    path_kind = "punched-udp"

    def dial(self, target: PunchTarget, attempt: "ConnectAttempt") -> Deferred:
        return self._manager.punch_udp(target.plan, attempt)
