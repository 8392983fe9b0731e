"""Helpers shared by the relay tests: a connection to a relay that records frames, and a protocol that records."""

from __future__ import annotations

import struct
from typing import Any, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from crust.identity import Identity, PeerId
from crust.relay import messages

A = Identity.from_seed(b"a" * 32).peer_id
T = Identity.from_seed(b"t" * 32).peer_id
R = Identity.from_seed(b"r" * 32).peer_id


def split_frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        length, ftype = struct.unpack("!IB", data[:5])
        out.append((ftype, bytes(data[5:4 + length])))
        data = data[4 + length:]
    return out


class FakeConn:
    """A connection to the relay: what circuits send on it is kept as (type, payload) frames."""

    def __init__(self, peer_id: PeerId = R) -> None:
        self.peer_id = peer_id
        self.frames: list[tuple[int, bytes]] = []
        self.open = True

    def send_control(self, frame: bytes) -> bool:
        if not self.open:
            return False
        self.frames.extend(split_frames(bytes(frame)))
        return True

    def take(self) -> list[tuple[int, bytes]]:
        frames, self.frames = self.frames, []
        return frames

    def data(self) -> bytes:
        """The data of the DATA frames sent (then forgotten), checking each is at most a chunk."""
        out = b""
        rest = []
        for ftype, payload in self.take():
            if ftype == messages.RelayFrame.DATA:
                c, chunk = messages.decode_data(payload)
                out += chunk
            else:
                rest.append((ftype, payload))
        self.frames = rest
        return out


class FakeSwitch:
    def __init__(self) -> None:
        self.removed: list[tuple[Any, int]] = []

    def remove(self, conn: Any, c: int, leg: Any = None) -> None:
        self.removed.append((conn, c))


@implementer(IPushProducer)
class Recorder(Protocol):
    """A protocol (and producer) that records what it gets; it takes any TLS peer."""

    tls_verdict: Optional[bool] = None

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []
        self.events: list[str] = []

    def tls_verify_peer(self, peer_id: Any, problem: str, info: Any = None) -> bool:
        self.tls_verdict = True
        return True

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.append(reason)

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")
