"""
atheris target: the node's one UDP socket with everything on it (crust.transport.udp
and its first-byte map, crust.transport.udp_messages; the STUN client and
responder, the echo, hole-punching checks, the QUIC dispatcher): one
datagram per run; no handler may fail, no answer be over three times the
datagram.
"""

from _target import instrumented, main

with instrumented():
    from crust.candidates import NatBehaviour
    from crust.identity import Identity
    from crust.nat.udp_stack import build_udp_stack
    from crust.punch.udp import UdpPuncher
    from crust.transport.quic.dispatcher import QUIC_FIRST_BYTE, QuicDispatcher, is_quic

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

IDENTITY = Identity.from_seed(b"u" * 32)  # the corpus's echo requests are made for it
SOURCE = ("192.0.2.7", 3478)


class Transport:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))

    def getHost(self):
        return IPv4Address("UDP", "127.0.0.1", 40000)

    def stopListening(self):
        pass


clock = Clock()
stack = build_udp_stack(clock, host="127.0.0.1", port=40000, identity=IDENTITY)
transport = Transport()
stack.endpoint.makeConnection(transport)
quic = QuicDispatcher(IDENTITY, stack.endpoint.send, clock=clock, accepted=lambda driver: None,
                      host=transport.getHost)
stack.endpoint.register(is_quic, quic.datagram_received, "quic", first_byte_at_least=QUIC_FIRST_BYTE)
puncher = UdpPuncher(stack.endpoint, IDENTITY, clock, lambda *args: None, lambda: NatBehaviour())


def test_one(data: bytes) -> None:
    transport.written.clear()
    stack.endpoint.datagramReceived(data, SOURCE)
    if stack.endpoint.counters["handler_errors"]:
        raise AssertionError("a UDP handler failed")
    answered = sum(len(d) for d, _ in transport.written)
    if answered > 3 * len(data):
        raise AssertionError(f"{len(data)} bytes answered with {answered}")
    clock.advance(0.5)  # rate limits refill, timers run


if __name__ == "__main__":
    main(test_one)
