#!/usr/bin/env python
"""
One side of one benchmark measurement, in a process of its own.

Started by C{bench/run.py}, never by hand (but see C{--help}).  A server
prints C{BENCH {"event": "listening", "port": ...}} once it listens on
127.0.0.1; a receiver or client prints C{BENCH {"event": "result", ...}} when
its measurement is done.  Every worker exits when its stdin closes (the runner
went away) or after C{--timeout} seconds, whichever comes first, and on
SIGTERM.

Implementations (C{--impl}):
  - C{crust}: two L{crust.Service}s, C{Config(listen_host="127.0.0.1")},
    over TCP (C{enable_udp=False}).
  - C{quic}: the same, over QUIC only (C{enable_tcp=False}: the node's UDP
    socket carries the connection); stream tests send at C{--priority}.
  - C{tls}: the baseline, plain Twisted TLS 1.3 (C{TLSMemoryBIOFactory}, as
    crust uses) with mutual Ed25519 certificates and C{Int32StringReceiver}.
  - C{relay}: crust over TCP through a relay: a third worker (C{--role
    relay}) is a node that relays (C{serve_relay}, no rate or byte limit);
    the server and the client connect to it first (C{--relay-info}), and the
    client connects to the server by peer id with only the C{relay} dial
    strategy: the connection is a circuit through the relay (spliced onto
    TCP connections to it, unless C{--relay-frames}), the secure channel end
    to end inside it.  The relay's and the invited end's rate limits on
    queries and new circuits are lifted, for the setup test.
  - C{crust} with C{--signed message} or C{--signed batch}: the client sends
    with C{Service.send(..., signed=True)} or C{signed="batch"}; the server
    checks every signature (its observer gets the messages as any others).
  - C{stream}: crust over TCP as C{crust}, the bulk test on a byte stream
    (L{crust.streams}) instead of messages: the client opens one stream to
    the server's service C{bench} and writes C{--size}-byte chunks while the
    stream accepts them (a push producer), then half-closes it (the end
    marker); the server counts the bytes and answers with a 1-byte ack.
(aioquic's own asyncio client and server, the QUIC baseline, are in
C{bench/aioquic_worker.py}.)

Tests (C{--test}):
  - C{bulk}/C{rate}: the client streams messages of C{--size} bytes for
    C{--warmup} + C{--duration} seconds, respecting backpressure, then a
    1-byte end marker; the server counts what arrives after its own warm-up
    and answers the marker with a 1-byte ack.
  - C{setup}: C{--connections} times: connect, handshake, send one message,
    receive its echo, disconnect and wait until the connection is gone.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    ACK,
    END_MARKER,
    LOOPBACK,
    cpu_seconds,
    emit,
    minor_faults,
    load_tls_options,
)

perf_counter = time.perf_counter


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=("server", "client", "relay"), required=True)
    p.add_argument("--impl", choices=("crust", "quic", "tls", "relay", "stream"), required=True)
    p.add_argument("--test", choices=("bulk", "rate", "setup"), required=True)
    p.add_argument("--size", type=int, default=100, help="message size in bytes")
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds (stream tests)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds not measured at the start")
    p.add_argument("--connections", type=int, default=200, help="connections (setup test)")
    p.add_argument("--port", type=int, default=0, help="the server's port (client)")
    p.add_argument("--info", default="", help="the crust server's PubConnectionInfo JSON (client)")
    p.add_argument("--relay-info", default="", help="the relay's PubConnectionInfo JSON (relay: server, client)")
    p.add_argument("--relay-frames", action="store_true",
                   help="relay: circuits carry their bytes in frames (Config.relay_splice off)")
    p.add_argument("--certdir", default="", help="baseline certificates (server.*, client.*)")
    p.add_argument("--max-queued", type=int, default=0,
                   help="crust Config.max_queued_bytes (0: the Config default)")
    p.add_argument("--signed", choices=("", "message", "batch"), default="",
                   help="crust client: send with signed=True (message) or signed=\"batch\"")
    p.add_argument("--priority", type=int, default=1,
                   help="crust: the priority of the stream tests' messages (on QUIC, >= 2 is the bulk lane)")
    p.add_argument("--profile", default="", help="write a cProfile dump here (and a .txt summary)")
    p.add_argument("--timeout", type=float, default=120.0, help="hard limit on this process's life")
    return p.parse_args(argv)


def _watch_parent() -> None:
    """Exit at once when the runner goes away (our stdin reaches EOF)."""

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except Exception:
            pass
        os._exit(70)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


_listening_cpu: list[float] = []


def _watchdog(seconds: float) -> None:
    """
    The hard limit, on a thread of its own: it holds even if the reactor
    never gets to run a timer again (a busy loop, a stuck handshake).
    """

    def expire() -> None:
        _hard_exit(f"worker killed by its watchdog after {seconds:g} s")

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def _mark_listening() -> None:
    _listening_cpu.append(cpu_seconds())


def _hard_exit(reason: str) -> None:
    emit(event="error", reason=reason)
    os._exit(71)


def _fail(reactor, what: str):
    def failed(failure):
        emit(event="error", reason=f"{what}: {failure.getErrorMessage() or failure.type.__name__}",
             traceback=failure.getTraceback())
        reactor.callLater(0, reactor.stop)

    return failed


# -- the receiving side of a stream test (shared by both implementations) ---------------


class Meter:
    """
    Counts what a receiver got.  The hot path (C{count}/C{nbytes}) lives in
    the protocol/observer; this takes snapshots: at the first message, after
    the warm-up, at the end marker.
    """

    def __init__(self, reactor, warmup: float, on_end) -> None:
        self.reactor = reactor
        self.warmup = warmup
        self.on_end = on_end
        self.warm = None
        self.extra = dict  # more fields for the result line (diagnostics)

    def snapshot(self, sink) -> tuple[float, int, int, float, int]:
        return (perf_counter(), sink.count, sink.nbytes, cpu_seconds(), minor_faults())

    def first(self, sink) -> None:
        self.warm = self.snapshot(sink)
        self.reactor.callLater(self.warmup, self._warmed, sink)

    def _warmed(self, sink) -> None:
        if not sink.ended:
            self.warm = self.snapshot(sink)

    def end(self, sink) -> None:
        end = self.snapshot(sink)
        warm = self.warm or end
        emit(event="result", side="receiver", seconds=end[0] - warm[0], messages=end[1] - warm[1],
             bytes=end[2] - warm[2], cpu=end[3] - warm[3], minflt=end[4] - warm[4], total_messages=sink.count,
             total_bytes=sink.nbytes, **self.extra())
        self.on_end()


# -- the sending side of a stream test ------------------------------------------------


class SendClock:
    """Start, warm-up and stop times of a sender, and its result line."""

    def __init__(self, reactor, warmup: float, duration: float, on_stop) -> None:
        self.reactor = reactor
        self.warmup = warmup
        self.duration = duration
        self.on_stop = on_stop
        self.warm = None
        self.sent = 0
        self.extra = dict  # more fields for the result line (diagnostics)

    def start(self) -> None:
        self.warm = (perf_counter(), cpu_seconds(), minor_faults())
        self.reactor.callLater(self.warmup, self._warmed)
        self.reactor.callLater(self.warmup + self.duration, self.on_stop)

    def _warmed(self) -> None:
        self.warm = (perf_counter(), cpu_seconds(), minor_faults())

    def acked(self, sent: int) -> None:
        now, cpu, faults = perf_counter(), cpu_seconds(), minor_faults()
        emit(event="result", side="sender", seconds=now - self.warm[0], cpu=cpu - self.warm[1],
             minflt=faults - self.warm[2], sent=sent, **self.extra())


def _batch(size: int) -> int:
    """Messages sent between two backpressure checks: about 64 KiB worth."""
    return max(1, (64 * 1024) // max(1, size))


# -- crust ---------------------------------------------------------------------------


def _crust_config(args):
    from crust import Config

    kw = {"listen_host": LOOPBACK, "network_name": "crust-bench"}
    if args.impl == "quic":
        kw["enable_tcp"] = False  # QUIC only, on the node's UDP socket
    else:
        kw["enable_udp"] = False
    if args.max_queued:
        kw["max_queued_bytes"] = args.max_queued
        # the bound must hold one maximum-size message
        kw["max_message_size"] = min(Config.max_message_size, args.max_queued)
    if args.impl == "relay":
        kw["relay_splice"] = not args.relay_frames
        _lift_circuit_rates()
    return Config(**kw)


def _lift_circuit_rates() -> None:
    """
    The setup test finds a relay (a rendezvous QUERY) and opens a circuit
    per connection, one after the other: more a second than a relay answers
    and takes from one peer (and an end from one relay).  Lifted in these
    processes only, before their service is made.
    """
    from crust.punch import rendezvous
    from crust.relay import client, server

    server.OPEN_RATE = server.OPEN_TOTAL = (1e6, 1e6)
    client.INVITE_RATE = client.INVITE_TOTAL = (1e6, 1e6)
    rendezvous.ANSWER_RATE = rendezvous.FORWARD_TOTAL = (1e6, 1e6)


def crust_server(args, reactor) -> None:
    import crust
    from crust import CrustObserver, Identity, Service

    service = Service(Identity.generate(), _crust_config(args), reactor=reactor)

    if args.test == "setup":

        class Echo(CrustObserver):
            def new_message(self, peer_id, data):
                service.send(peer_id, data, 0)

        service.add_observer(Echo())
    else:

        class Counter(CrustObserver):
            count = 0
            nbytes = 0
            ended = False
            started = False

            def new_message(self, peer_id, data):
                n = len(data)
                if n == 1:
                    self.ended = True
                    meter.end(self)
                    service.send(peer_id, ACK, 1)
                    return
                if not self.started:
                    self.started = True
                    meter.first(self)
                self.count += 1
                self.nbytes += n

        meter = Meter(reactor, args.warmup, lambda: None)
        meter.extra = lambda: _quic_diagnostics(service)
        service.add_observer(Counter())

    service.startService()

    def listening(info):
        if args.impl == "relay":  # on the relay first: the client's connection comes through it
            return service.connect(args.relay_info).addCallback(lambda _: announce(info))
        return announce(info)

    def announce(info):
        port = info.public.addresses[0].port
        _mark_listening()
        extra = {}
        if service.quic is not None:  # what the aioquic baseline should match
            o = service.quic.options
            extra["quic_options"] = {"max_datagram_size": o.max_datagram_size, "max_data": o.max_data,
                                     "max_stream_data": o.max_stream_data,
                                     "congestion_control": o.congestion_control,
                                     "high_water": o.high_water, "low_water": o.low_water}
        emit(event="listening", port=port, info=info.public.to_json(), crust=os.path.dirname(crust.__file__),
             **extra)

    service.prepare_connection_info().addCallback(listening).addErrback(_fail(reactor, "listen"))


def _quic_diagnostics(service):
    """What the QUIC path did (datagrams both ways, send failures, congestion window): for the JSON."""
    if service.quic is None:
        return {}
    out = {}
    drivers = service.quic.drivers
    if drivers:
        stats = drivers[0].stats()
        out = {k: stats[k] for k in ("datagrams_sent", "datagrams_received", "send_failures") if k in stats}
        try:
            cc = drivers[0].quic._loss._cc  # aioquic internals: diagnostics only
            out["cwnd"] = cc.congestion_window
            out["ssthresh"] = cc.ssthresh
        except AttributeError:
            pass
    counters = service.udp_endpoint.counters
    out["udp_send_failures"] = counters.get("send_failures")
    sock = getattr(service.udp_endpoint.transport, "socket", None)
    if sock is not None:
        import socket

        out["so_rcvbuf"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return {"quic": out}


def _identity_above(peer_id):
    """A fresh identity whose id is larger than C{peer_id}: this side is the chooser."""
    from crust import Identity

    while True:
        identity = Identity.generate()
        if identity.peer_id > peer_id:
            return identity


def crust_client(args, reactor) -> None:
    from twisted.internet.defer import Deferred, ensureDeferred

    from crust import CrustObserver, PubConnectionInfo, Service

    their = PubConnectionInfo.from_json(args.info)
    # The client is made the chooser of the connection, so each setup
    # iteration's new connection wins even if the server has not yet
    # noticed the previous one is gone (no spurious duplicate refusals).
    service = Service(_identity_above(their.peer_id), _crust_config(args), reactor=reactor)

    class Watcher(CrustObserver):
        echo: Deferred | None = None
        lost: Deferred | None = None
        on_ack = None

        def new_message(self, peer_id, data):
            if self.echo is not None:
                d, self.echo = self.echo, None
                d.callback(data)
            elif data == ACK and self.on_ack is not None:
                self.on_ack()

        def lost_peer(self, peer_id, reason):
            if self.lost is not None:
                d, self.lost = self.lost, None
                d.callback(reason)

    watcher = Watcher()
    service.add_observer(watcher)
    service.startService()

    async def through_the_relay() -> None:
        await service.connect(args.relay_info)
        for name in ("tcp", "quic", "rendezvous", "tcp-punch", "udp-punch"):
            service.dialer.unregister(name)  # through the relay, or not at all

    def check_relayed(peer) -> None:
        path = service.peer_details(peer)["path"]
        if path["kind"] != "relayed":
            raise RuntimeError(f"the connection is not relayed: {path}")

    async def setup() -> None:
        ours = await service.prepare_connection_info()
        if args.impl == "relay":
            await through_the_relay()
        message = b"p" * args.size
        times = []
        cpu0 = cpu_seconds()
        for _ in range(args.connections):
            t0 = perf_counter()
            if args.impl == "relay":
                peer = await service.connect(their.peer_id)
            else:
                peer = await service.connect(ours, args.info)
            watcher.echo = Deferred()
            service.send(peer, message, 0)
            echoed = await watcher.echo
            times.append(perf_counter() - t0)
            if echoed != message:
                raise RuntimeError("the echo differs from the message")
            if args.impl == "relay" and len(times) == 1:
                check_relayed(peer)
            watcher.lost = Deferred()
            service.disconnect(peer)
            await watcher.lost
        emit(event="result", side="client", times=times, cpu=cpu_seconds() - cpu0)

    async def stream() -> None:
        ours = await service.prepare_connection_info()
        if args.impl == "relay":
            await through_the_relay()
            peer = await service.connect(their.peer_id)
            check_relayed(peer)
        else:
            peer = await service.connect(ours, args.info)
        message = b"x" * args.size
        priority = args.priority  # the end marker too: order is kept per priority lane on QUIC
        batch = range(_batch(args.size))
        # fill to 1 MiB over half the bound, then wait for when_writable (it
        # fires once the queue drained to half the bound): a wake-up per MiB
        half = service.config.max_queued_bytes // 2
        high = min(half + (1 << 20), service.config.max_queued_bytes - 2 * len(batch) * (len(message) + 16))
        send = service.send
        if args.signed:  # each message signed, or in batches; the receiver checks every signature
            mode = True if args.signed == "message" else "batch"

            def send(peer, data, priority, _send=service.send):
                _send(peer, data, priority, mode)
        queued = service.queued_bytes
        state = {"stopping": False, "sent": 0}

        def pump(_=None):
            if state["stopping"]:
                return
            n = 0
            while queued(peer) <= high:
                for _ in batch:
                    send(peer, message, priority)
                n += len(batch)
            state["sent"] += n
            service.when_writable(peer).addCallback(pump)

        def stop():
            state["stopping"] = True
            send(peer, END_MARKER, priority)

        clock = SendClock(reactor, args.warmup, args.duration, stop)
        clock.extra = lambda: _quic_diagnostics(service)
        watcher.on_ack = lambda: clock.acked(state["sent"])
        clock.start()
        pump()

    ensureDeferred(setup() if args.test == "setup" else stream()).addErrback(_fail(reactor, "client"))


def relay_node(args, reactor) -> None:
    """
    A node that relays, with no limit that would end or slow the measured
    circuit.  Its CPU time (the C{exit} line) counts from C{--warmup}
    seconds after the first relayed byte, as the receiver's measurement does
    (the setup test: from the first relayed byte).
    """
    import crust
    from twisted.internet.task import LoopingCall

    from crust import Identity, Service
    from crust.config import RelayLimits

    config = _crust_config(args).replace(
        serve_relay=True, relay_limits=RelayLimits(bytes_per_circuit=1 << 50, rate_per_circuit=None))
    service = Service(Identity.generate(), config, reactor=reactor)
    service.startService()

    def watch():
        if service.relay.stats()["bytes_relayed"]:
            watching.stop()
            reactor.callLater(0 if args.test == "setup" else args.warmup, _mark_listening)

    watching = LoopingCall(watch)
    watching.clock = reactor

    def listening(info):
        watching.start(0.01)
        emit(event="listening", port=info.public.addresses[0].port, info=info.public.to_json(),
             crust=os.path.dirname(crust.__file__))

    service.prepare_connection_info().addCallbacks(listening, _fail(reactor, "listen"))


# -- crust byte streams ---------------------------------------------------------------------


def stream_server(args, reactor) -> None:
    """A crust service (TCP) counting the bytes of the stream the client opens to its service C{bench}."""
    import crust
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    from crust import Identity, Service

    service = Service(Identity.generate(), _crust_config(args), reactor=reactor)
    size = args.size

    @implementer(IHalfCloseableProtocol)
    class Sink(Protocol):
        nbytes = 0
        ended = False
        started = False

        @property
        def count(self):
            return self.nbytes // size  # in --size messages' worth

        def dataReceived(self, data):
            if not self.started:
                self.started = True
                meter.first(self)
            self.nbytes += len(data)

        def readConnectionLost(self):
            self.ended = True
            meter.end(self)
            self.transport.write(ACK)
            self.transport.loseConnection()

        def writeConnectionLost(self):
            pass

    meter = Meter(reactor, args.warmup, lambda: None)
    meter.extra = lambda: {}
    service.listen_streams("bench", Factory.forProtocol(Sink))
    service.startService()

    def announce(info):
        _mark_listening()
        emit(event="listening", port=info.public.addresses[0].port, info=info.public.to_json(),
             crust=os.path.dirname(crust.__file__))

    service.prepare_connection_info().addCallbacks(announce, _fail(reactor, "listen"))


def stream_client(args, reactor) -> None:
    """Connects as the crust client does, opens a stream to C{bench} and writes while it takes data."""
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.interfaces import IPushProducer
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    from crust import PubConnectionInfo, Service

    their = PubConnectionInfo.from_json(args.info)
    service = Service(_identity_above(their.peer_id), _crust_config(args), reactor=reactor)
    service.startService()

    @implementer(IPushProducer)
    class Sender(Protocol):
        paused = False
        stopping = False
        sent = 0

        def connectionMade(self):
            self.transport.registerProducer(self, True)

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False
            self.pump()

        def stopProducing(self):
            self.paused = True

        def pump(self):
            write = self.transport.write
            chunk = message
            n = 0
            while not self.paused and not self.stopping:
                write(chunk)
                n += 1
            self.sent += n

        def stop(self):
            self.stopping = True
            self.transport.loseWriteConnection()

        def dataReceived(self, data):
            if data == ACK:
                state["clock"].acked(self.sent)

    message = b"x" * args.size
    state: dict = {}

    async def stream() -> None:
        ours = await service.prepare_connection_info()
        peer = await service.connect(ours, args.info)
        sender = await service.open_stream(peer, "bench", Factory.forProtocol(Sender))
        clock = state["clock"] = SendClock(reactor, args.warmup, args.duration, sender.stop)
        clock.start()
        sender.pump()

    ensureDeferred(stream()).addErrback(_fail(reactor, "client"))


# -- the baseline: Twisted TLS 1.3 + Int32StringReceiver -----------------------------------


def _tls_protocols():
    from twisted.internet.interfaces import IHandshakeListener, IPushProducer
    from twisted.protocols.basic import Int32StringReceiver
    from zope.interface import implementer

    class Echo(Int32StringReceiver):
        MAX_LENGTH = 4 * 1024 * 1024

        def stringReceived(self, data):
            self.sendString(data)

    class Counter(Int32StringReceiver):
        MAX_LENGTH = 4 * 1024 * 1024
        count = 0
        nbytes = 0
        ended = False
        started = False
        meter: Meter

        def stringReceived(self, data):
            n = len(data)
            if n == 1:
                self.ended = True
                self.meter.end(self)
                self.sendString(ACK)
                return
            if not self.started:
                self.started = True
                self.meter.first(self)
            self.count += 1
            self.nbytes += n

    @implementer(IHandshakeListener, IPushProducer)
    class Sender(Int32StringReceiver):
        """Streams while its transport accepts data (a push producer)."""

        MAX_LENGTH = 4 * 1024 * 1024
        paused = False
        stopping = False
        sent = 0
        message = b""
        clock: SendClock
        ready: object

        def connectionMade(self):
            self.transport.registerProducer(self, True)

        def handshakeCompleted(self):
            self.ready.callback(self)

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False
            self.pump()

        def stopProducing(self):
            self.paused = True

        def pump(self):
            if self.stopping:
                return
            send = self.sendString
            message = self.message
            batch = range(_batch(len(message)))
            n = 0
            while not self.paused:
                for _ in batch:
                    send(message)
                n += len(batch)
            self.sent += n

        def stop(self):
            self.stopping = True
            self.sendString(END_MARKER)

        def stringReceived(self, data):
            if data == ACK:
                self.clock.acked(self.sent)

    class Pinger(Int32StringReceiver):
        MAX_LENGTH = 4 * 1024 * 1024
        message = b""

        def connectionMade(self):
            # as a plain TLS application would: the TLS layer holds the
            # message until its handshake is done
            self.sendString(self.message)

        def stringReceived(self, data):
            d, self.echoed = self.echoed, None
            if d is not None:
                d.callback(data)

        def connectionLost(self, reason):
            self.lost.callback(None)

    return Echo, Counter, Sender, Pinger


def tls_server(args, reactor) -> None:
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory
    from twisted.protocols.tls import TLSMemoryBIOFactory

    Echo, Counter, _, _ = _tls_protocols()
    options = load_tls_options(args.certdir, "server", "client")
    if args.test == "setup":
        factory = Factory.forProtocol(Echo)
    else:
        meter = Meter(reactor, args.warmup, lambda: None)

        class Measured(Counter):
            pass

        Measured.meter = meter
        factory = Factory.forProtocol(Measured)
    factory.noisy = False
    tls = TLSMemoryBIOFactory(options, False, factory, clock=reactor)
    endpoint = TCP4ServerEndpoint(reactor, 0, backlog=128, interface=LOOPBACK)

    def listening(port):
        _mark_listening()
        emit(event="listening", port=port.getHost().port)

    endpoint.listen(tls).addCallbacks(listening, _fail(reactor, "listen"))


def tls_client(args, reactor) -> None:
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory
    from twisted.protocols.tls import TLSMemoryBIOFactory

    _, _, Sender, Pinger = _tls_protocols()
    options = load_tls_options(args.certdir, "client", "server")
    endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, args.port, timeout=30)

    async def setup() -> None:
        message = b"p" * args.size
        times = []
        factory = Factory.forProtocol(Pinger)
        factory.noisy = False
        cpu0 = cpu_seconds()
        for _ in range(args.connections):
            t0 = perf_counter()
            echoed, lost = Deferred(), Deferred()
            Pinger.message, Pinger.echoed, Pinger.lost = message, echoed, lost
            tls = await endpoint.connect(TLSMemoryBIOFactory(options, True, factory, clock=reactor))
            data = await echoed
            times.append(perf_counter() - t0)
            if data != message:
                raise RuntimeError("the echo differs from the message")
            tls.loseConnection()
            await lost
        emit(event="result", side="client", times=times, cpu=cpu_seconds() - cpu0)

    async def stream() -> None:
        ready = Deferred()

        class Streaming(Sender):
            pass

        Streaming.ready = ready
        Streaming.message = b"x" * args.size
        factory = Factory.forProtocol(Streaming)
        factory.noisy = False
        await endpoint.connect(TLSMemoryBIOFactory(options, True, factory, clock=reactor))
        proto = await ready
        proto.clock = SendClock(reactor, args.warmup, args.duration, proto.stop)
        proto.clock.start()
        proto.pump()

    ensureDeferred(setup() if args.test == "setup" else stream()).addErrback(_fail(reactor, "client"))


# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    _watch_parent()
    reactor.callLater(args.timeout, _hard_exit, f"worker timed out after {args.timeout:g} s")
    _watchdog(args.timeout + 5)
    build = {
        ("crust", "server"): crust_server,
        ("crust", "client"): crust_client,
        ("quic", "server"): crust_server,
        ("quic", "client"): crust_client,
        ("tls", "server"): tls_server,
        ("tls", "client"): tls_client,
        ("relay", "relay"): relay_node,
        ("relay", "server"): crust_server,
        ("relay", "client"): crust_client,
        ("stream", "server"): stream_server,
        ("stream", "client"): stream_client,
    }[(args.impl, args.role)]
    def start() -> None:
        try:
            build(args, reactor)
        except Exception as e:
            import traceback

            emit(event="error", reason=f"{args.impl} {args.role}: {e!r}", traceback=traceback.format_exc())
            reactor.stop()

    reactor.callWhenRunning(start)
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(reactor.run)
        profiler.dump_stats(args.profile)
        with open(args.profile + ".txt", "w") as f:
            stats = pstats.Stats(profiler, stream=f)
            stats.strip_dirs()
            f.write(f"# {args.impl} {args.role} {args.test} (size {args.size})\n## by own time\n")
            stats.sort_stats("tottime").print_stats(35)
            f.write("## by cumulative time\n")
            stats.sort_stats("cumulative").print_stats(35)
    else:
        reactor.run()
    if _listening_cpu:
        # a server's CPU time from listening to the end (the setup test's server share)
        emit(event="exit", cpu_since_listening=cpu_seconds() - _listening_cpu[0])
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
