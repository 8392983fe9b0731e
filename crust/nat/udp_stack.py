"""
L{build_udp_stack}: the node's UDP socket with what lives on it besides
QUIC: a STUN client, the STUN responder and the secure UDP echo, each
registered on the endpoint (L{crust.transport.udp}).  The service calls it and
only wires; QUIC registers itself on C{UdpStack.endpoint} afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from crust.nat.stun_client import StunClient
from crust.nat.stun_responder import DEFAULT_RATE, StunResponder
from crust.nat.echo import UdpEcho
from crust.transport.udp import UdpEndpoint


@dataclass(frozen=True)
class UdpStack:
    """
    The node's UDP socket and what is registered on it.

    @ivar endpoint: the L{UdpEndpoint} (the socket).
    @ivar stun_client: a L{StunClient} sending from the socket; first in its STUN chain.
    @ivar stun_responder: the L{StunResponder}; second in the STUN chain.
    @ivar echo: the L{UdpEcho}, on crust message types 4 and 5.
    """

    endpoint: UdpEndpoint
    stun_client: StunClient
    stun_responder: StunResponder
    echo: UdpEcho

    def stats(self) -> dict[str, Any]:
        """A snapshot of every counter: the socket's, and its STUN client's, responder's and echo's."""
        stats = self.endpoint.stats()
        stats["stun_client"] = dict(self.stun_client.counters)
        stats["stun_responder"] = dict(self.stun_responder.counters)
        stats["echo"] = dict(self.echo.counters)
        return stats


def add_stun_client(endpoint: UdpEndpoint, **options: Any) -> StunClient:
    """
    A L{StunClient} sending from C{endpoint}, first in its STUN chain from
    now on (add it before the responder), whose requests in flight fail
    when the socket closes.

    @param options: for the L{StunClient} (C{rto}, C{rc}, C{rm}, ...).
    """
    client = StunClient(endpoint.send_or_raise, endpoint.clock, **options)
    endpoint.add_stun_handler(client.datagram_received, "stun client")
    endpoint.call_when_closed(client.cancel_all)
    return client


def build_udp_stack(reactor: Any = None, *, host: str = "0.0.0.0", port: int = 0, identity: Any = None,
                    stun_responder: bool = True,
                    stun_rate: tuple[tuple[float, float], tuple[float, float]] = DEFAULT_RATE,
                    stun_options: Optional[dict[str, Any]] = None,
                    echo_options: Optional[dict[str, Any]] = None,
                    **endpoint_options: Any) -> UdpStack:
    """
    A L{UdpEndpoint} (not yet bound: call C{endpoint.listen()}) with a STUN
    client, the STUN responder and the UDP echo registered on it.

    @param reactor: for the socket and every clock; the global reactor by default.
    @param host: the interface to bind.
    @param port: the port; 0 picks a random one.
    @param identity: the node's L{crust.identity.Identity}; with it the echo
        answers requests, without it it can only ask.
    @param stun_responder: answer STUN Binding requests from anyone (the
        responder is there either way: C{stun_responder.enabled}).
    @param stun_rate: C{(per source IP, total)} limits on STUN answers, each
        a C{(rate per second, burst)} pair.
    @param stun_options: for the L{StunClient} (C{rto}, ...).
    @param echo_options: for the L{UdpEcho} (C{rate}, C{max_outstanding}).
    @param endpoint_options: for the L{UdpEndpoint} (C{max_packet_size},
        C{socket_buffer}).
    """
    endpoint = UdpEndpoint(reactor, host=host, port=port, **endpoint_options)
    client = add_stun_client(endpoint, **(stun_options or {}))
    responder = StunResponder(endpoint, rate=stun_rate, enabled=stun_responder)
    echo = UdpEcho(endpoint, identity, **(echo_options or {}))
    return UdpStack(endpoint, client, responder, echo)


@dataclass(frozen=True)
class EchoSocket:
    """
    A second UDP socket that only answers: the address echo and STUN
    Binding, so that peers asking both it and the main socket learn how their
    NAT maps (HELLO C{echo_alt}, L{crust.nat.reflexive}).
    """

    endpoint: UdpEndpoint
    stun_responder: StunResponder
    echo: UdpEcho


def build_echo_socket(reactor: Any = None, *, host: str = "0.0.0.0", port: int = 0, identity: Any) -> EchoSocket:
    """An answering-only UDP socket (not yet bound) for C{identity}."""
    endpoint = UdpEndpoint(reactor, host=host, port=port, socket_buffer=0)
    return EchoSocket(endpoint, StunResponder(endpoint), UdpEcho(endpoint, identity))


__all__ = ["EchoSocket", "UdpStack", "add_stun_client", "build_echo_socket", "build_udp_stack"]
