"""
An end's side of a spliced circuit (L{crust.relay.splicer} is the relay's):
the plain TCP connection to the relay that the secure connection runs on
instead of RELAY_DATA frames.

With a splice token (INVITE or READY), the end connects to the relay's TCP
listener (L{relay_tcp_address}), sends the preamble
(L{crust.relay.preamble}) and waits for the relay's answer:

  - L{crust.relay.preamble.SPLICED}: the connection is joined to the other
    end's; the secure connection (TLS 1.3 with both identities, the opener
    the client, as over TCP) runs on it, through a L{SpliceLink}.  The
    circuit's frames still carry its end (CLOSE).
  - the connection fails or ends without an answer (the relay did not
    splice: the other end did not come, or cannot): the secure connection
    runs in RELAY_DATA frames on the circuit (L{crust.relay.circuit}), as
    without splicing.  So does a circuit whose splice connection cannot be
    made within L{CONNECT_TIMEOUT}.

The spliced connection's loss is attributed to the circuit's CLOSE: an end
whose socket ends (and that did not end it itself) waits up to
L{CLOSE_GRACE} seconds for the relay's CLOSE and reports that reason (the
relay sends CLOSE before it closes the sockets, but the two travel on
different connections); one whose CLOSE comes first waits as long for the
socket's end (the other end's last bytes may still be on their way).  The
connection inside is lost with L{crust.relay.circuit.RelayClosed} (the
reason, the detail), as a circuit on frames would be.

What the relay sees and can do does not change with splicing: the TLS inside
is end to end (it cannot read or alter), and a stolen token lets someone at
most take the end's place on the relay's side, where the TLS handshake fails
(wrong identity) and the circuit ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from crust.address import Address
from crust.identity import PeerId
from crust.relay import messages
from crust.relay.circuit import CircuitTransport, RelayAddress, RelayClosed
from crust.relay.preamble import SPLICED, encode_preamble
from crust.relay.splicer import no_delay

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection

CONNECT_TIMEOUT = 3.0  # seconds to connect to the relay's listener, else the circuit goes on frames
ANSWER_TIMEOUT = 15.0  # seconds for the relay's answer to the preamble (it answers within its token lifetime)
CLOSE_GRACE = 2.0  # seconds between the socket's end and the circuit's CLOSE, either way round

#: C{build(transport)}: the secure connection run on C{transport} (a circuit or a link), its handshake started.
Build = Callable[[Any], "PeerConnection"]


def relay_tcp_address(conn: Any) -> Optional[Address]:
    """
    Where to open a splice connection to the relay at the other end of
    C{conn}: the address we dialled it at, if C{conn} is TCP and ours; else
    the relay's own host (as C{conn} sees it) with the port of a TCP listener
    its HELLO named (the one on that host if there is one).  Only ever the
    relay's host: a relay cannot send us elsewhere.  None: no such address.
    """
    seen = conn.peer_address
    if seen is None:
        return None
    if conn.transport_name == "tcp" and conn.initiator:
        return Address("tcp", seen.host, seen.port)
    hello = getattr(conn.handshake, "peer_hello", None)
    listeners = [a for a in (hello.listeners if hello is not None else ()) if a.transport == "tcp"]
    same = [a.port for a in listeners if a.host == seen.host]
    ports = same or [a.port for a in listeners]
    return Address("tcp", seen.host, ports[0]) if ports else None


class EndSplicing:
    """
    The splice side of a node's circuit ends.

    @param connect_plain: C{connect_plain(address, factory, timeout)}: a
        plain TCP connection (L{crust.transport.tcp.TcpTransport.connect_plain}).
    @param enabled: returns whether we splice (C{Config.relay_splice}, TCP on).
    @ivar counters: C{spliced}, C{fell_back} (offered, went on frames).
    """

    def __init__(self, clock: Any, connect_plain: Callable[[Address, Factory, float], Deferred],
                 enabled: Callable[[], bool]) -> None:
        self.clock = clock
        self.connect_plain = connect_plain
        self._enabled = enabled
        self.counters = dict.fromkeys(("spliced", "fell_back"), 0)

    def can_splice(self, conn: Any) -> bool:
        """Whether we can splice circuits through the relay at the other end of C{conn}."""
        return bool(self._enabled()) and relay_tcp_address(conn) is not None

    def start(self, circuit: CircuitTransport, token: bytes, relay_conn: Any, build: Build) -> Deferred:
        """
        Splice C{circuit} (or fall back to its frames): fires with the secure
        connection, running on the splice or on the circuit; fails with the
        circuit's L{RelayClosed} if it ends first.
        """
        address = relay_tcp_address(relay_conn)
        attempt = _Attempt(self, circuit, token, build)
        if address is None:
            attempt.fall_back("no address")
        else:
            attempt.dial(address)
        return attempt.result


class _Attempt:
    """One circuit end's try to splice: until the relay answers (or does not)."""

    log = Logger()

    def __init__(self, owner: EndSplicing, circuit: CircuitTransport, token: bytes, build: Build) -> None:
        self.owner = owner
        self.circuit = circuit
        self.token = token
        self.build = build
        self.result: Deferred = Deferred(self._cancelled)
        self.done = False
        self.link: Optional[SpliceLink] = None
        self._dialling: Optional[Deferred] = None
        circuit.watcher = self._circuit_ended

    def dial(self, address: Address) -> None:
        factory: Any = Factory.forProtocol(lambda: SpliceLink(self, self.circuit))
        self._dialling = d = self.owner.connect_plain(address, factory, CONNECT_TIMEOUT)
        d.addCallbacks(self._connected, self._not_connected)

    def _connected(self, link: "SpliceLink") -> None:
        self._dialling = None
        if self.done:
            link.raw.abortConnection()
            return
        self.link = link

    def _not_connected(self, failure: Failure) -> None:
        self._dialling = None
        self.fall_back(failure.getErrorMessage())

    def _finish(self) -> bool:
        if self.done:
            return False
        self.done = True
        if self.circuit.watcher == self._circuit_ended:
            self.circuit.watcher = None
        return True

    def spliced(self, link: "SpliceLink") -> None:
        """The relay answered SPLICED on C{link}."""
        if not self._finish():
            link.raw.abortConnection()
            return
        self.owner.counters["spliced"] += 1
        self.circuit.watcher = link.circuit_ended
        self.result.callback(self.build(link))

    def fall_back(self, why: str) -> None:
        """No splice: the secure connection runs on the circuit's frames."""
        if self.circuit.closed or not self._finish():
            return
        self.owner.counters["fell_back"] += 1
        self.log.debug("{circuit}: not spliced ({why}): on frames", circuit=repr(self.circuit), why=why)
        self.result.callback(self.build(self.circuit))

    def answer_timed_out(self) -> None:
        self.circuit.end(messages.REASON_TIMEOUT, f"the relay did not answer the splice within {ANSWER_TIMEOUT:g} s")

    def _circuit_ended(self, failure: Failure) -> None:
        """The circuit ended before it was spliced or went on frames."""
        if not self._finish():
            return
        if self._dialling is not None:
            self._dialling.cancel()
        if self.link is not None and self.link.raw is not None:
            self.link.raw.abortConnection()
        self.result.errback(failure)

    def _cancelled(self, d: Deferred) -> None:
        if self._finish():
            if self._dialling is not None:
                self._dialling.cancel()
            if self.link is not None and self.link.raw is not None:
                self.link.raw.abortConnection()
            self.circuit.abortConnection()


@implementer(ITransport, IConsumer, IPushProducer)
class SpliceLink(Protocol):
    """
    An end's plain TCP connection to the relay for one circuit: the
    preamble, the relay's answer, then the transport of the secure
    connection (its TLS layer) on the spliced bytes.  Its addresses are the
    circuit's (L{RelayAddress}: the connection inside has no IP address).
    """

    log = Logger()

    def __init__(self, attempt: _Attempt, circuit: CircuitTransport) -> None:
        self._attempt = attempt
        self.circuit = circuit
        self.via = circuit.via
        self.peer: Optional[PeerId] = circuit.peer
        self.state = "connecting"  # -> presented -> spliced -> ended
        self.upper: Any = None  # the TLS protocol on top
        self._we_closed: Optional[Failure] = None
        self._socket_lost: Optional[Failure] = None
        self._relay_closed: Optional[Failure] = None
        self._timer: Any = None
        self.disconnecting = False
        self.raw: Any = None  # the TCP transport (C{self.transport}, typed loosely)

    def __repr__(self) -> str:
        return f"<SpliceLink {self.circuit!r} {self.state}>"

    # -- the raw connection --------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.raw = transport
        no_delay(transport)
        self.state = "presented"
        transport.write(encode_preamble(self._attempt.token))
        self._arm(ANSWER_TIMEOUT, self._attempt.answer_timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.state == "spliced":
            self.upper.dataReceived(data)
            return
        if self.state != "presented":
            return
        self._disarm()
        if data[:1] != SPLICED:
            self.log.info("{link}: the relay answered the splice with {byte!r}: not spliced", link=repr(self),
                          byte=data[:1])
            self.raw.abortConnection()  # (and so: frames)
            return
        self.state = "spliced"
        transport = self.raw
        self.write = transport.write  # type: ignore[method-assign]  # (the hot path: no call in between)
        self.writeSequence = transport.writeSequence  # type: ignore[method-assign]
        self._attempt.spliced(self)
        rest = data[1:]
        if rest and self.upper is not None and self.state == "spliced":
            self.upper.dataReceived(rest)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        state, self.state = self.state, "ended" if self.state == "spliced" else "failed"
        if state != "spliced":
            self._disarm()
            self._attempt.fall_back(f"the relay did not splice ({reason.getErrorMessage()})")
            return
        self._socket_lost = reason
        if self._we_closed is not None:
            if self._we_closed.check(ConnectionDone):
                self.circuit.loseConnection()  # (sent last: what we wrote went first, on the socket)
            self._deliver(self._we_closed)
        elif self._relay_closed is not None:
            self._deliver(self._relay_closed)
        else:
            self._arm(CLOSE_GRACE, self._no_close)

    def _no_close(self) -> None:
        """The socket ended, no CLOSE came: the circuit is lost; tell the relay."""
        self._timer = None
        why = self._socket_lost.getErrorMessage() if self._socket_lost is not None else "?"
        self.circuit.end(messages.REASON_PEER_LOST, f"the spliced connection to the relay ended: {why}")

    # -- the circuit's end (its CLOSE, or the connection to the relay lost) --------------

    def circuit_ended(self, failure: Failure) -> None:
        if self.state == "ended":
            self._deliver(self._we_closed or failure)
            return
        self._relay_closed = failure
        if not failure.check(RelayClosed):  # we ended the circuit ourselves (the node stops): the socket goes now
            self._abort_socket()
        elif self._timer is None:
            self._arm(CLOSE_GRACE, self._abort_socket)

    def _abort_socket(self) -> None:
        self._timer = None
        if self.raw is not None and self.state == "spliced":
            self.raw.abortConnection()

    def _deliver(self, failure: Failure) -> None:
        self._disarm()
        upper, self.upper = self.upper, None
        if upper is not None:
            upper.connectionLost(failure)

    def _arm(self, seconds: float, fire: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self._attempt.owner.clock.callLater(seconds, fire)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- the transport of the secure connection --------------------------------------------

    def attach(self, protocol: Any) -> None:
        """Run C{protocol} (the TLS layer) on the spliced bytes."""
        self.upper = protocol
        protocol.makeConnection(self)

    def write(self, data: bytes) -> None:
        self.raw.write(data)

    def writeSequence(self, data: Any) -> None:
        self.raw.writeSequence(data)

    def loseConnection(self) -> None:
        if self._we_closed is None:
            self._we_closed = Failure(ConnectionDone("the spliced connection was closed"))
        self.disconnecting = True
        self.raw.loseConnection()

    def abortConnection(self) -> None:
        if self._we_closed is None or self._we_closed.check(ConnectionDone):
            self._we_closed = Failure(ConnectionAborted("the spliced connection was aborted"))
        self.disconnecting = True
        if not self.circuit.closed:
            self.circuit.abortConnection()  # (CLOSE aborted first: the relay ends the other side at once)
        self.raw.abortConnection()

    def getPeer(self) -> RelayAddress:
        return RelayAddress(self.peer, self.via)

    def getHost(self) -> RelayAddress:
        return RelayAddress(self.circuit.local, self.via)

    def getHandle(self) -> Any:
        return self.raw.getHandle()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.raw.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.raw.unregisterProducer()

    def pauseProducing(self) -> None:
        self.raw.pauseProducing()

    def resumeProducing(self) -> None:
        self.raw.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()


__all__ = ["EndSplicing", "SpliceLink", "relay_tcp_address", "RelayClosed"]
