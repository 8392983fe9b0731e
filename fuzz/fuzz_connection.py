"""
atheris target: a connection after TLS (crust.session.connection with its
handshake machine and frame decoder), fed a stream of frames in chunks;
the peer's side and ours are picked by the stream's first byte.
"""

from _target import chunked, instrumented, main

with instrumented():
    from crust.identity import PeerId
    from crust.session.connection import PeerConnection
    from crust.wire import Hello, network_hash

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

NET = network_hash(None)
HIGH, LOW = PeerId(b"\x09" * 32), PeerId(b"\x01" * 32)


class Owner:
    """The node's side: claims and promotes whatever the handshake asks."""

    def hello_for(self, conn):
        return Hello(network=NET)

    def claim(self, conn, peer_id):
        return True

    def promote(self, conn, peer_id):
        conn.deliver = lambda message: None

    def control_received(self, conn, ftype, payload):
        return False

    def __getattr__(self, name):
        return lambda *args: None


def test_one(data: bytes) -> None:
    if not data:
        return
    local = HIGH if data[0] & 1 else LOW
    clock = Clock()
    conn = PeerConnection(Owner(), clock, local_id=local, network=NET, initiator=bool(data[0] & 2),
                          max_message_size=4096, max_queued_bytes=65536, drop_after=60.0, heartbeat_interval=20.0,
                          inactivity_timeout=120.0, handshake_timeout=10.0)
    conn.makeConnection(StringTransport())
    conn.handshake.tls_complete(LOW if local == HIGH else HIGH)
    for chunk in chunked(data[1:]):
        conn.dataReceived(chunk)
        clock.advance(1)
    clock.advance(130)


if __name__ == "__main__":
    main(test_one)
