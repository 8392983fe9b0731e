"""
L{install}: TURN relays wired into a node: one L{TurnClient} per configured
TURN server on the node's UDP socket, their relayed addresses offered as
C{relay} candidates, QUIC to and from peers through them, and the
permissions that let those peers in.

How a connection goes through a TURN server S that node B allocated on:

  1. B allocates relayed address R on S and offers it in its connection
     info (a C{relay} candidate, after the server-reflexive ones).
  2. B learns A's candidates (A's pasted connection info, a connect
     attempt: L{TurnRelays.note_peer}) and asks S to let their IPs in
     (CreatePermission).
  3. A dials QUIC to R like any other C{udp:} address, straight from its
     own socket: nothing on A's side knows of TURN.
  4. S relays A's datagrams to B (Data indications, then ChannelData on a
     channel B binds); B's TURN client hands them to B's QUIC dispatcher as
     if they came from A's address as S sees it.
  5. B's QUIC sends to that address: the dispatcher's send function
     (L{TurnRelays.wrap_send}) finds the address among the TURN routes (one
     dict lookup a datagram) and sends it through S instead of straight.

B's side of such a connection reads path C{relayed}, strategy C{turn}, via
C{turn:S}; A's side reads C{relayed}, via C{turn:R} (A knows the relayed
address, not the server) when A learned R as a C{relay} candidate.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from crust.address import Address
from crust.candidates import CandidateKind
from crust.config import Config
from crust.nat.addresses import OurAddresses
from crust.nat.turn import Allocation, TurnClient, TurnOptions
from crust.session.connection import PathInfo

log = Logger()

Send = Callable[[bytes, "tuple[str, int]"], Any]

MAX_PEER_RELAYS = 256  # relay candidates of peers remembered (for the dialing side's path)
QUIC_FIRST_BYTE = 64


class TurnRelays:
    """
    The node's TURN clients and what connects them to the rest of it.

    @param deliver: C{deliver(data, (ip, port))}: a datagram a peer sent us
        through a TURN server (the QUIC dispatcher's C{datagram_received}).
    @ivar clients: one L{TurnClient} per configured server.
    @ivar routes: C{(ip, port) -> TurnClient} of every peer we relay for.
    @ivar counters: C{delivered}, C{dropped_not_quic} (relayed datagrams
        that are not QUIC: crust's other UDP messages do not go through
        TURN).
    """

    def __init__(self, config: Config, endpoint: Any, clock: Any, addresses: OurAddresses,
                 deliver: Callable[[bytes, "tuple[str, int]"], Any], options: Optional[TurnOptions] = None) -> None:
        self._endpoint = endpoint
        self._addresses = addresses
        self._deliver = deliver
        self.routes: dict[Any, TurnClient] = {}
        self.clients: list[TurnClient] = []
        self._unregister: list[Callable[[], None]] = []
        self._peer_relays: dict[tuple[str, int], Address] = {}
        self.counters = {"delivered": 0, "dropped_not_quic": 0}
        for server in config.turn_servers:
            client = TurnClient(endpoint.send, clock, server.address, server.username, server.password,
                                on_data=self._relayed, routes=self.routes, options=options)
            client.on_allocation = self._allocation_changed(client)
            self.clients.append(client)
            self._unregister.append(endpoint.register_source(server.address.sockaddr(), client.datagram_received,
                                                             f"turn {server.address.host_port()}"))

    def configure(self, **changes: Any) -> None:
        """
        Change L{TurnOptions} of every client (C{configure(lifetime=60)}),
        from the next request on; call it before the node starts to have the
        allocation use them.
        """
        for client in self.clients:
            client.options = replace(client.options, **changes)

    # -- lifetime ------------------------------------------------------------------------

    def start(self) -> None:
        """Allocate on every server (the socket listens); failures are logged and retried by each client."""
        for client in self.clients:
            client.start().addErrback(lambda f: None)  # the client logs it and tries again

    def settled(self, timeout: float, clock: Any) -> Deferred:
        """Fires (with None) once no allocation is under way, or after C{timeout} seconds."""
        waits = [client.when_settled() for client in self.clients]
        done: Deferred = DeferredList(waits, consumeErrors=True)

        def expired() -> None:
            if not done.called:
                done.callback(None)

        timer = clock.callLater(timeout, expired)

        def finished(result: Any) -> None:
            if timer.active():
                timer.cancel()

        return done.addBoth(finished)

    def stop(self) -> Deferred:
        """Give every allocation back (the socket is still open); fires when done, never fails."""
        if not self.clients:
            return succeed(None)
        return DeferredList([client.stop() for client in self.clients], consumeErrors=True).addCallback(
            lambda _: None)

    def close(self) -> None:
        """Take the clients off the socket (the node is going away for good)."""
        for unregister in self._unregister:
            unregister()
        self._unregister.clear()

    # -- datagrams -------------------------------------------------------------------------

    def wrap_send(self, direct: Send) -> Send:
        """
        The send function for the QUIC dispatcher: datagrams to a peer we
        relay for go through its TURN server, the rest straight out
        (C{direct}), at the cost of one dict lookup.
        """
        routes = self.routes

        def send(datagram: bytes, addr: "tuple[str, int]") -> Any:
            client = routes.get(addr)
            if client is None:
                return direct(datagram, addr)
            return client.send(datagram, addr)

        return send

    def _relayed(self, data: bytes, peer: "tuple[str, int]") -> None:
        if data and data[0] >= QUIC_FIRST_BYTE:
            self.counters["delivered"] += 1
            self._deliver(data, peer)
        else:
            self.counters["dropped_not_quic"] += 1

    def _allocation_changed(self, client: TurnClient) -> Callable[[Optional[Allocation]], None]:
        current: list[Address] = []

        def changed(allocation: Optional[Allocation]) -> None:
            for old in current:
                self._addresses.remove_relay(old)
            current.clear()
            if allocation is not None:
                current.append(allocation.relayed)
                self._addresses.set_relay(allocation.relayed, "turn")
                if allocation.mapped is not None:
                    self._addresses.add_reflexive(allocation.mapped, "turn")

        return changed

    # -- peers --------------------------------------------------------------------------------

    def permit(self, addresses: Iterable[Address]) -> Deferred:
        """Let these addresses' IPs send to us through every TURN server; fires when asked."""
        wanted = [a for a in addresses if a.transport == "udp"]
        return DeferredList([client.permit(wanted) for client in self.clients], consumeErrors=True)

    def note_peer(self, info: Any) -> None:
        """
        A peer's connection info (pasted, or named by a connect attempt):
        permit its IPs, and remember its relay candidates (to tell a
        connection we dial to one is relayed).
        """
        self.permit(info.addresses).addErrback(lambda f: None)
        for candidate in getattr(info, "candidates", ()):
            if candidate.kind is CandidateKind.RELAY and candidate.address.transport == "udp":
                self._peer_relays[candidate.address.sockaddr()] = candidate.address
                while len(self._peer_relays) > MAX_PEER_RELAYS:
                    del self._peer_relays[next(iter(self._peer_relays))]

    # -- PeerListener -------------------------------------------------------------------------

    def classify(self, conn: Any) -> None:
        """
        Mark a connection through a TURN server as relayed before the peer
        table ranks it (L{crust.peering.table.PeerTable.classify_paths}):
        taken for a direct one, it would replace a relayed connection the
        peer ranks above it, and the peer would close it.
        """
        self.peer_promoted(conn, None)

    def peer_promoted(self, conn: Any, peer_id: Any) -> None:
        address = conn.peer_address
        if conn.transport_name != "udp" or address is None:
            return
        sockaddr = address.sockaddr()
        client = self.routes.get(sockaddr)
        if client is not None:
            conn.path = PathInfo("relayed", "turn", None, f"turn:{client.server.host_port()}")
        elif sockaddr in self._peer_relays:
            strategy = conn.path.strategy if conn.path is not None else "quic"
            conn.path = PathInfo("relayed", strategy or "quic", None, f"turn:{address.host_port()}")

    def connection_ended(self, conn: Any, reason: str) -> None:
        pass

    # -- what it reports ----------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Each server's allocation (L{TurnClient.status})."""
        return [client.status() for client in self.clients]


def install(*, config: Config, endpoint: Any, clock: Any, addresses: OurAddresses, table: Any,
            deliver: Callable[[bytes, "tuple[str, int]"], Any]) -> Optional[TurnRelays]:
    """
    Wire TURN into a node when its configuration names TURN servers (and it
    has a UDP socket): the clients on the socket, the peer table told of
    promotions (the path of relayed connections).  Returns None otherwise.
    Install it before the other listeners that set paths.
    """
    if not config.turn_servers or endpoint is None:
        return None
    relays = TurnRelays(config, endpoint, clock, addresses, deliver)
    table.listen(relays)
    table.classify_paths(relays.classify)
    return relays


__all__ = ["TurnRelays", "install"]
