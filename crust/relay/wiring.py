"""
L{install}: relayed circuits wired into a node: the switch of relay frames
on its peer table, the relay server (when C{Config.serve_relay} is on), the
ends (opening circuits, answering invitations), the C{relay} dial strategy
on its dialer, the rendezvous's ANSWERs saying whether we relay, and, with
TCP, splicing (C{Config.relay_splice}): the relay's claim on the splice
preamble at its TCP listener, and the ends' splice connections.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.application.service import IServiceCollection, Service

from crust.config import Config
from crust.identity import PeerId
from crust.peering.dialer import Dialer
from crust.peering.table import PeerTable
from crust.punch.rendezvous import Rendezvous
from crust.relay.client import RelayEnds, RelayStrategy, takes_circuits
from crust.relay.preamble import MAGIC, PREAMBLE_SIZE
from crust.relay.server import RelayServer
from crust.relay.spliced import EndSplicing
from crust.relay.splicer import Splicer
from crust.relay.switch import CircuitSwitch
from crust.transport.tcp import TcpTransport
from crust.transport.tls import ConnectionCreator


class Relaying(Service):
    """
    The relay layer of one node (a child service: stopping it ends every
    circuit it still has).

    @ivar switch: the relay frames (L{CircuitSwitch}).
    @ivar server: the circuits we carry for others (L{RelayServer}).
    @ivar ends: the circuits we are an end of (L{RelayEnds}).
    @ivar strategy: the C{relay} dial strategy.
    @ivar splicer: the relay's side of spliced circuits (None without TCP).
    """

    name = "relay"

    def __init__(self, switch: CircuitSwitch, server: RelayServer, ends: RelayEnds, strategy: RelayStrategy,
                 unregister: Callable[[], None], splicer: Optional[Splicer] = None) -> None:
        self.switch = switch
        self.server = server
        self.ends = ends
        self.strategy = strategy
        self.unregister = unregister
        self.splicer = splicer

    def stats(self) -> dict[str, Any]:
        """What C{crust info} shows: the circuits we relay (now, in all, their bytes) and those we are an end of."""
        return {**self.server.stats(), "ends": self.ends.circuits}

    def stopService(self) -> Any:
        self.server.stop()
        self.ends.stop()
        return Service.stopService(self)


def install(*, local_id: PeerId, reactor: Any, config: Callable[[], Config], table: PeerTable, dialer: Dialer,
            rendezvous: Rendezvous, creator: Callable[[], ConnectionCreator], emit: Callable[..., None],
            tcp: Optional[TcpTransport] = None, parent: Optional[IServiceCollection] = None) -> Relaying:
    """Wire relayed circuits into a node (see the module docstring) and return them."""
    switch = CircuitSwitch(table, local_id)
    splicer = end_splicing = None
    if tcp is not None:
        def splices() -> bool:
            return config().relay_splice and tcp.available()

        splicer = Splicer(reactor, lambda: splices() and tcp.listening_port is not None)
        end_splicing = EndSplicing(reactor, tcp.connect_plain, splices)
    server = RelayServer(switch, table, reactor, serving=lambda: config().serve_relay,
                         limits=lambda: config().relay_limits, frame_ok=lambda: takes_circuits(config()),
                         splicer=splicer)
    ends = RelayEnds(switch, table, dialer, reactor, creator=creator, config=config, emit=emit, splice=end_splicing)
    strategy = RelayStrategy(ends, rendezvous, table, config)
    rendezvous.relaying = server.serving
    unregister = [dialer.register(strategy)]
    if tcp is not None and splicer is not None:
        unregister.append(tcp.register_preamble(MAGIC, PREAMBLE_SIZE, splicer.claim,
                                                active=lambda: server.serving() and splicer.available()))

    def unregister_all() -> None:
        for undo in unregister:
            undo()

    relaying = Relaying(switch, server, ends, strategy, unregister_all, splicer)
    if parent is not None:
        relaying.setServiceParent(parent)
    return relaying
