"""
The punch exchange between two peers through a rendezvous, as a state
machine (Automat's C{TypeMachineBuilder}, the style doc/hacking.md chooses
for multi-party machines).

One side initiates (it wants to connect), the other responds::

    initiator                        rendezvous R                 responder
    CONNECT {info} ------------------- FORWARD/DELIVER ------------>   (t0)
                   <------------------ REPLY {info} --------------      reply
    (t1: rtt = t1 - t0)
    SYNC ----------------------------------------------------------->   punch now
    punch at t1 + rtt/2

as libp2p's DCUtR does: SYNC takes about rtt/2 to arrive, so both sides
start punching at about the same moment.  Every message is a sealed, signed
envelope (L{crust.punch.messages}): R forwards it and can neither read nor
alter it.

States (both roles): C{idle} -> C{offered} (initiator: CONNECT sent) or
C{answered} (responder: REPLY sent) -> C{done} (the initiator got the reply
and sent SYNC; the responder got SYNC) or C{failed} (no reply or SYNC in
time, or R could not forward).  Late and repeated inputs are ignored
explicitly (C{loop}), so a duplicate, a reply after a timeout or a SYNC
after failure change nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from automat import TypeMachineBuilder
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from crust.connection_info import PubConnectionInfo
from crust.errors import CrustError
from crust.identity import PeerId
from crust.punch.messages import EnvelopeType
from crust.punch.plan import PunchPlan

EXCHANGE_TIMEOUT = 5.0  # seconds for the other side's REPLY or SYNC


class ExchangeFailed(CrustError):
    """The exchange through the rendezvous did not complete."""


class Exchange(Protocol):
    """The inputs of one exchange."""

    def initiate(self) -> None:
        "Send CONNECT (initiator)."

    def connect_received(self, info: PubConnectionInfo) -> None:
        "The peer's CONNECT arrived (responder): answer it."

    def reply_received(self, info: PubConnectionInfo) -> None:
        "The peer's REPLY arrived (initiator)."

    def sync_received(self) -> None:
        "The peer's SYNC arrived (responder): punch now."

    def timed_out(self) -> None:
        "No answer in time."

    def refused(self, reason: str) -> None:
        "The rendezvous could not forward our envelope."

    def cancel(self) -> None:
        "Give up (the connect attempt ended)."


@dataclass
class ExchangeCore:
    """
    What an exchange works with.

    @ivar send: C{send(type, body)} seals an envelope to the peer and sends it through C{via}.
    @ivar our_info: our connection info now.
    @ivar punch: the responder starts punching with this plan.
    @ivar result: (initiator) fires with the L{PunchPlan}; (both roles) fails with L{ExchangeFailed}, so its
        owner consumes it on the responder's side too.
    """

    peer_id: PeerId
    via: PeerId
    attempt: bytes
    clock: Any
    send: Callable[[EnvelopeType, dict[str, Any]], bool]
    our_info: Callable[[], PubConnectionInfo]
    punch: Callable[[PunchPlan], None]
    finished: Callable[[], None]
    result: Deferred = field(default_factory=Deferred)
    sent_at: float = 0.0
    timer: Any = None
    rtt: Optional[float] = None
    their_info: Optional[PubConnectionInfo] = None

    def arm(self, fire: Callable[[], None]) -> None:
        self.disarm()
        self.timer = self.clock.callLater(EXCHANGE_TIMEOUT, fire)

    def disarm(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def info_body(self) -> dict[str, Any]:
        return {"info": json.loads(self.our_info().to_json()), "tcp": True, "udp": True}

    def fail(self, text: str) -> None:
        self.disarm()
        if not self.result.called:
            self.result.errback(Failure(ExchangeFailed(text)))
        self.finished()


_builder = TypeMachineBuilder(Exchange, ExchangeCore)
_idle = _builder.state("idle")
_offered = _builder.state("offered")
_answered = _builder.state("answered")
_done = _builder.state("done")
_failed = _builder.state("failed")


@_idle.upon(Exchange.initiate).to(_offered)
def _initiate(exchange: Exchange, core: ExchangeCore) -> None:
    core.sent_at = core.clock.seconds()
    if not core.send(EnvelopeType.CONNECT, core.info_body()):
        core.clock.callLater(0, exchange.refused, f"not connected to the rendezvous {core.via.short()}")
        return
    core.arm(exchange.timed_out)


@_idle.upon(Exchange.connect_received).to(_answered)
def _answer(exchange: Exchange, core: ExchangeCore, info: PubConnectionInfo) -> None:
    core.their_info = info
    core.send(EnvelopeType.REPLY, core.info_body())
    core.arm(exchange.timed_out)


@_offered.upon(Exchange.reply_received).to(_done)
def _replied(exchange: Exchange, core: ExchangeCore, info: PubConnectionInfo) -> None:
    core.disarm()
    now = core.clock.seconds()
    core.rtt = now - core.sent_at
    core.send(EnvelopeType.SYNC, {})
    plan = PunchPlan(core.peer_id, core.attempt, info, now + core.rtt / 2, core.via)
    core.result.callback(plan)
    core.finished()


@_answered.upon(Exchange.sync_received).to(_done)
def _synced(exchange: Exchange, core: ExchangeCore) -> None:
    core.disarm()
    assert core.their_info is not None
    core.punch(PunchPlan(core.peer_id, core.attempt, core.their_info, core.clock.seconds(), core.via))
    core.finished()


@_offered.upon(Exchange.timed_out).to(_failed)
def _no_reply(exchange: Exchange, core: ExchangeCore) -> None:
    core.fail(f"no reply from {core.peer_id.short()} through {core.via.short()} within {EXCHANGE_TIMEOUT:g} s")


@_answered.upon(Exchange.timed_out).to(_failed)
def _no_sync(exchange: Exchange, core: ExchangeCore) -> None:
    core.fail(f"no SYNC from {core.peer_id.short()} through {core.via.short()} within {EXCHANGE_TIMEOUT:g} s")


@_offered.upon(Exchange.refused).to(_failed)
def _refused(exchange: Exchange, core: ExchangeCore, reason: str) -> None:
    core.fail(f"the rendezvous {core.via.short()} could not forward: {reason}")


for _state in (_idle, _offered, _answered, _done, _failed):
    @_state.upon(Exchange.cancel).to(_failed)
    def _cancel(exchange: Exchange, core: ExchangeCore) -> None:
        core.disarm()
        core.finished()

# late, repeated or out-of-place inputs change nothing
_answered.upon(Exchange.connect_received).loop().returns(None)
_answered.upon(Exchange.refused).loop().returns(None)
_answered.upon(Exchange.reply_received).loop().returns(None)
_offered.upon(Exchange.connect_received).loop().returns(None)
_offered.upon(Exchange.sync_received).loop().returns(None)
_idle.upon(Exchange.reply_received).loop().returns(None)
_idle.upon(Exchange.sync_received).loop().returns(None)
_idle.upon(Exchange.timed_out).loop().returns(None)
_idle.upon(Exchange.refused).loop().returns(None)
for _state in (_done, _failed):
    for _input in (Exchange.initiate, Exchange.connect_received, Exchange.reply_received, Exchange.sync_received,
                   Exchange.timed_out, Exchange.refused):
        _state.upon(_input).loop().returns(None)

ExchangeMachine = _builder.build()
