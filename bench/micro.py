#!/usr/bin/env python
"""
In-process micro benchmarks of crust's own per-message work, next to the
same work done by Twisted's Int32StringReceiver (the baseline's framing).

No TLS, no sockets, no reactor running: a connection is driven through a sink
transport that only counts bytes, so only the Python work above the TLS layer
is timed -- the part crust adds over the baseline, and the part a patch to
crust/session/connection.py, crust/session/framing.py, crust/session/send_queue.py or
crust/service.py changes.  Being CPU-bound and single-process, these figures
are much steadier than the loopback ones of bench/run.py on a noisy machine
(the best of several repeats is reported).

    python bench/micro.py                               # the crust on sys.path / in the repo
    PYTHONPATH=/tmp/copy python bench/micro.py --json   # a patched copy

It builds a connection the way the service does, with the service's dialer
(C{service.dialer.factory}; older copies: C{crust.service._ConnectionFactory}).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# this repository's crust, unless PYTHONPATH names another (which then comes first);
# either way ahead of an installed copy in site-packages
_given = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
sys.path.insert(1 + len(_given), ROOT)

CHUNK = 16 * 1024  # TLS hands the application at most one record (16 KiB) per read


class SinkTransport:
    """Accepts everything, counts bytes; enough of ITransport/IProducer for a protocol."""

    def __init__(self) -> None:
        self.written = 0
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writeSequence(self, seq) -> None:
        for data in seq:
            self.write(data)

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def getPeer(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 40001)

    def getHost(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 40000)

    def loseConnection(self) -> None:
        pass

    def abortConnection(self) -> None:
        pass

    def getPeerCertificate(self):
        return None


def _best(fn, repeats: int) -> float:
    """Best CPU seconds of C{repeats} calls of C{fn}."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def crust_connection(max_queued: int):
    """A real Service and one ACTIVE PeerConnection on a sink transport; (service, peer id, conn, counter)."""
    from twisted.internet.testing import MemoryReactorClock

    from crust import Config, CrustObserver, Identity, Service
    try:
        from crust.session.handshake import HandshakeState
    except ImportError:  # an older crust, before the subpackages
        from crust.handshake import HandshakeState  # type: ignore[no-redef]

    config = Config(listen_host="127.0.0.1", max_queued_bytes=max_queued)
    service = Service(Identity.generate(), config, reactor=MemoryReactorClock())
    service.running_for_peers = True

    class Counter(CrustObserver):
        count = 0
        nbytes = 0

        def new_message(self, peer_id, data):
            self.count += 1
            self.nbytes += len(data)

    counter = Counter()
    service.add_observer(counter)
    if hasattr(service, "dialer"):
        conn = service.dialer.factory(initiator=True).buildProtocol(None)
    else:  # an older crust: its factory took the service
        from crust.service import _ConnectionFactory  # type: ignore[attr-defined]

        conn = _ConnectionFactory(service, initiator=True).buildProtocol(None)
    conn.makeConnection(SinkTransport())
    peer = Identity.generate().peer_id
    conn.handshake.peer_id = peer
    conn.handshake.state = HandshakeState.ACTIVE
    conn.promote(peer)
    # the application holds the id it connected with, which is equal to, but
    # not the same object as, the table's key (as after Service.connect)
    return service, type(peer)(peer.raw), conn, counter


def baseline_protocol():
    from twisted.protocols.basic import Int32StringReceiver

    class Counter(Int32StringReceiver):
        MAX_LENGTH = 4 * 1024 * 1024
        count = 0
        nbytes = 0

        def stringReceived(self, data):
            self.count += 1
            self.nbytes += len(data)

    proto = Counter()
    proto.makeConnection(SinkTransport())
    return proto


def _chunks(stream: bytes) -> list[bytes]:
    return [stream[i:i + CHUNK] for i in range(0, len(stream), CHUNK)]


def run(size: int, n: int, repeats: int, max_queued: int) -> dict[str, float]:
    message = b"x" * size
    out: dict[str, float] = {}

    # -- sending, the transport accepting (writes go straight through) ---------------------
    service, peer, conn, _ = crust_connection(max_queued)
    send = service.send

    def crust_send():
        for _ in range(n):
            send(peer, message, 1)

    out["crust_send_direct"] = _best(crust_send, repeats) / n

    # -- sending while the transport is paused, then draining: the queued path ----------------
    # in cycles of ~512 KiB queued, like a sender's steady state (queueing everything
    # first and freeing it all at once would time the allocator returning memory to
    # the kernel and faulting it back, not crust)
    per_cycle = max(1, (512 * 1024) // size)

    def crust_queued():
        left = n
        while left > 0:
            k = min(per_cycle, left)
            conn.pauseProducing()
            for _ in range(k):
                send(peer, message, 1)
            conn.resumeProducing()
            left -= k
        assert not conn.queued_bytes

    out["crust_send_queued"] = _best(crust_queued, repeats) / n

    proto = baseline_protocol()
    send_string = proto.sendString

    def tls_send():
        for _ in range(n):
            send_string(message)

    out["baseline_send"] = _best(tls_send, repeats) / n

    # -- receiving: a stream of frames in 16 KiB chunks --------------------------------------
    header = struct.pack("!IB", size + 1, 4)  # crust: length counts the type byte; DATA = 4
    crust_chunks = _chunks((header + message) * n)
    base_chunks = _chunks((struct.pack("!I", size) + message) * n)
    _, _, conn, counter = crust_connection(max_queued)

    def crust_receive():
        data_received = conn.dataReceived
        before = counter.count
        for chunk in crust_chunks:
            data_received(chunk)
        assert counter.count - before == n, (counter.count - before, n)

    out["crust_receive"] = _best(crust_receive, repeats) / n
    proto = baseline_protocol()

    def tls_receive():
        data_received = proto.dataReceived
        before = proto.count
        for chunk in base_chunks:
            data_received(chunk)
        assert proto.count - before == n

    out["baseline_receive"] = _best(tls_receive, repeats) / n
    out.update(stream_run(message, n, repeats, max_queued))
    return out


def stream_run(message: bytes, n: int, repeats: int, max_queued: int) -> dict[str, float]:
    """
    The same work on a byte stream (L{crust.streams}) of an ACTIVE
    connection: writes of C{message} with the transport accepting, and
    receiving STREAM_DATA frames of that size in 16 KiB chunks.  Nothing
    for a crust without streams.
    """
    try:
        from crust.streams import frames
    except ImportError:
        return {}
    from twisted.internet.protocol import Factory, Protocol

    class Sink(Protocol):
        nbytes = 0

        def dataReceived(self, data):
            self.nbytes += len(data)

    service, peer, conn, _ = crust_connection(max_queued)
    mux = service.streams.backend(conn, peer)
    service.listen_streams("micro", Factory.forProtocol(Sink))
    sid = (0 if mux.high else frames.HIGH_BIT) | 1  # a stream the peer opened, with all the credit we need
    conn.dataReceived(frames.encode_open(sid, frames.MAX_WINDOW, "micro"))
    channel = mux.channels[sid]
    stream = channel.stream
    out: dict[str, float] = {}

    def send():
        channel.credit = 1 << 60
        write = stream.write
        for _ in range(n):
            write(message)

    out["stream_send"] = _best(send, repeats) / n
    chunks = _chunks(b"".join(frames.encode_data(sid, message[i:i + frames.MAX_CHUNK])
                              for i in range(0, len(message), frames.MAX_CHUNK)) * n)

    def receive():
        data_received = conn.dataReceived
        before = stream.protocol.nbytes
        for chunk in chunks:
            data_received(chunk)
        assert stream.protocol.nbytes - before == n * len(message)

    out["stream_receive"] = _best(receive, repeats) / n
    return out


def setup_cpu(n: int, repeats: int, impls: tuple[str, ...] = ("crust", "tls")) -> dict[str, float]:
    """
    CPU seconds per connection of the setup test (connect, handshake, one
    echoed 100-byte message, disconnect), both sides in this one process over
    127.0.0.1: the work of both ends together, without the scheduling noise of
    two processes.  Best of C{repeats} batches of C{n}, crust and baseline
    alternating.
    """
    import tempfile

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import Int32StringReceiver
    from twisted.protocols.tls import TLSMemoryBIOFactory

    sys.path.insert(0, HERE)
    from _common import load_tls_options, make_tls_identity

    from crust import Config, CrustObserver, Identity, Service

    message = b"p" * 100
    out: dict[str, float] = {}

    async def crust_setup():
        config = Config(listen_host="127.0.0.1", enable_udp=False, network_name="crust-micro")
        server = Service(Identity.generate(), config)

        class Echo(CrustObserver):
            def new_message(self, peer_id, data):
                server.send(peer_id, data, 0)

        server.add_observer(Echo())
        server.startService()
        their = (await server.prepare_connection_info()).public.to_json()
        while True:  # the client chooses (as in bench/worker.py)
            identity = Identity.generate()
            if identity.peer_id > server.peer_id:
                break
        client = Service(identity, config)

        class Watch(CrustObserver):
            echo = lost = None

            def new_message(self, peer_id, data):
                d, self.echo = self.echo, None
                d.callback(data)

            def lost_peer(self, peer_id, reason):
                d, self.lost = self.lost, None
                if d is not None:
                    d.callback(reason)

        watch = Watch()
        client.add_observer(watch)
        client.startService()
        ours = await client.prepare_connection_info()

        async def batch():
            for _ in range(n):
                peer = await client.connect(ours, their)
                watch.echo = Deferred()
                client.send(peer, message, 0)
                await watch.echo
                watch.lost = Deferred()
                client.disconnect(peer)
                await watch.lost

        return batch

    async def tls_setup():
        certdir = tempfile.mkdtemp(prefix="crust-micro-")
        make_tls_identity(certdir, "server")
        make_tls_identity(certdir, "client")

        class Echo(Int32StringReceiver):
            def stringReceived(self, data):
                self.sendString(data)

        class Pinger(Int32StringReceiver):
            def connectionMade(self):
                self.sendString(message)

            def stringReceived(self, data):
                self.factory.echoed.callback(data)

            def connectionLost(self, reason):
                self.factory.lost.callback(None)

        server_options = load_tls_options(certdir, "server", "client")
        client_options = load_tls_options(certdir, "client", "server")
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            TLSMemoryBIOFactory(server_options, False, Factory.forProtocol(Echo)))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        factory = Factory.forProtocol(Pinger)

        async def batch():
            for _ in range(n):
                factory.echoed, factory.lost = Deferred(), Deferred()
                tls = await endpoint.connect(TLSMemoryBIOFactory(client_options, True, factory))
                await factory.echoed
                tls.loseConnection()
                await factory.lost

        return batch

    async def measure():
        batches = {}
        if "crust" in impls:
            batches["crust_setup"] = await crust_setup()
        if "tls" in impls:
            batches["baseline_setup"] = await tls_setup()
        for _ in range(repeats):
            for name, batch in batches.items():
                t0 = time.process_time()
                await batch()
                out[name] = min(out.get(name, float("inf")), (time.process_time() - t0) / n)

    failure = []

    def done(result):
        if isinstance(result, Exception) or hasattr(result, "getTraceback"):
            failure.append(result)
        reactor.stop()

    ensureDeferred(measure()).addBoth(done)
    reactor.callLater(300, reactor.stop)
    reactor.run()
    if failure:
        raise RuntimeError(failure[0].getTraceback())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="the best of this many repeats (default 7)")
    p.add_argument("--quick", action="store_true", help="fewer messages and repeats")
    p.add_argument("--json", action="store_true")
    o = p.parse_args(argv)
    repeats = 3 if o.quick else o.repeats
    cases = {"100 B": (100, 20_000 if o.quick else 200_000), "64 KiB": (64 * 1024, 200 if o.quick else 2000)}
    import crust

    results = {}
    for name, (size, n) in cases.items():
        results[name] = run(size, n, repeats, max_queued=max(32 * 1024 * 1024, 2 * n * (size + 5)))
    results["setup"] = setup_cpu(20 if o.quick else 100, repeats)
    setup = results.pop("setup")
    if o.json:
        json.dump({
            "crust": os.path.dirname(crust.__file__),
            "ns_per_message": {k: {m: v * 1e9 for m, v in r.items()} for k, r in results.items()},
            "us_per_connection": {m: v * 1e6 for m, v in setup.items()},
        }, sys.stdout, indent=2)
        print()
        return 0
    print(f"crust: {os.path.dirname(crust.__file__)}; CPU ns per message, best of {repeats}")
    rows = [("send (transport accepting)", "crust_send_direct", "baseline_send"),
            ("send while paused + drain", "crust_send_queued", "baseline_send"),
            ("receive (16 KiB chunks)", "crust_receive", "baseline_receive"),
            ("stream write (accepting)", "stream_send", "baseline_send"),
            ("stream receive (16 KiB chunks)", "stream_receive", "baseline_receive")]
    for name, r in results.items():
        print(f"\n{name} messages{'':14}crust  Int32StringReceiver  crust/baseline")
        for label, ck, bk in rows:
            if ck not in r:
                continue
            c, b = r[ck] * 1e9, r[bk] * 1e9
            print(f"  {label:28} {c:10,.0f}  {b:19,.0f}  {c / b:13.2f}x")
    c, b = setup["crust_setup"] * 1e6, setup["baseline_setup"] * 1e6
    print(f"\nsetup + echo + close, both ends{'':8}crust   TLS baseline  crust/baseline  (CPU us per connection)")
    print(f"  {'one process, 127.0.0.1':28} {c:10,.0f}  {b:13,.0f}  {c / b:14.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
