"""
Loopback throughput of crust's QUIC driver, and of aioquic's own asyncio
client/server as the baseline (not a test module: run it by hand).

    python tests/quic_measure.py crust    [--mb 100] [--chunk 65536] [--profile out.prof]
    python tests/quic_measure.py baseline [--mb 100] [--chunk 65536]
    python tests/quic_measure.py framed   [--mb 100] [--chunk 65536]
    python tests/quic_measure.py both     [--mb 100] [--runs 3]   # crust, baseline
    python tests/quic_measure.py all      [--mb 100] [--runs 3]   # crust, framed, baseline

The receiving side runs in a child process, the sending side in this one.
Both move the same bytes over one stream, client to server, in
C{--chunk}-byte writes, with the same QUIC settings (Ed25519 certificates,
datagram size, congestion control, flow-control windows).  Each prints MB/s
(10^6 bytes per second) from the first write to the last byte received, and
checks a SHA-256 of the stream.  Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SOCKET_BUFFER = 4 << 20


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


_transfer_cpu: list[float] = []  # CPU seconds of this process from first to last byte


def _chunk(size: int) -> bytes:
    return (hashlib.sha256(b"crust").digest() * (size // 32 + 1))[:size]


def _serve_child(kind: str, total: int, datagram_size: int):
    """Start the receiving side in a child process; returns it and its UDP port."""
    child = subprocess.Popen(
        [sys.executable, __file__, kind + "-server", "--bytes", str(total), "--datagram", str(datagram_size)],
        stdout=subprocess.PIPE, text=True)
    port = int(child.stdout.readline().split()[-1])
    return child, port


def _tune(sock) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)


def crust_side(role: str, total: int, chunk_size: int, datagram_size: int, profile: str | None,
               port: int = 0) -> float:
    """
    The crust driver on the global reactor.  The server counts and hashes
    what arrives and answers with the SHA-256 hex digest on its urgent lane;
    the client writes C{total} bytes and times it until the digest arrives.
    """
    from twisted.internet import reactor
    from twisted.internet.interfaces import IPushProducer
    from twisted.internet.protocol import DatagramProtocol
    from zope.interface import implementer

    from crust.identity import Identity
    from crust.transport.quic.dispatcher import QuicDispatcher, QuicOptions

    options = QuicOptions(max_datagram_size=datagram_size)
    chunk = _chunk(chunk_size)
    result: dict = {}

    class Endpoint(DatagramProtocol):
        def __init__(self, accepted=None):
            self.dispatcher = QuicDispatcher(Identity.generate(), self.send, clock=reactor, accepted=accepted,
                                             options=options)

        def startProtocol(self):
            _tune(self.transport.socket)

        def send(self, data, addr):
            try:
                self.transport.write(data, addr)
            except OSError:
                return False
            return True

        def datagramReceived(self, data, addr):
            self.dispatcher.datagram_received(data, addr)

    class Sink:
        def __init__(self):
            self.size = 0
            self.hash = hashlib.sha256()

        def makeConnection(self, transport):
            self.transport = transport

        def dataReceived(self, data):
            if not self.size:
                _transfer_cpu.append(_cpu())
            self.size += len(data)
            self.hash.update(data)
            if self.size >= total:
                _transfer_cpu.append(_cpu())
                self.transport.write(self.hash.hexdigest().encode())

        def connectionLost(self, reason):
            if reactor.running:
                reactor.stop()

    class Source:
        def makeConnection(self, transport):
            self.transport = transport
            self.answer = b""

        def dataReceived(self, data):
            self.answer += data
            if len(self.answer) >= 64:
                result["end"] = time.perf_counter()
                _transfer_cpu.append(_cpu())
                result["digest"] = self.answer.decode()
                self.transport.loseConnection()

        def connectionLost(self, reason):
            if "end" not in result:
                result["error"] = str(reason.value)
            reactor.stop()

    @implementer(IPushProducer)
    class Writer:
        def __init__(self, lane):
            self.lane = lane
            self.sent = 0
            self.paused = False

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False
            self.produce()

        def stopProducing(self):
            self.paused = True

        def produce(self):
            write = self.lane.write
            while not self.paused and self.sent < total:
                write(chunk)
                self.sent += chunk_size

    if role == "server":
        server = Endpoint(accepted=lambda driver: driver.attach(Sink()))
        listening = reactor.listenUDP(0, server, interface="127.0.0.1", maxPacketSize=65535)
        print(f"port {listening.getHost().port}", flush=True)
    else:
        client = Endpoint()
        reactor.listenUDP(0, client, interface="127.0.0.1", maxPacketSize=65535)

        def connected(driver):
            driver.attach(Source())
            writer = Writer(driver.urgent)
            driver.urgent.registerProducer(writer, True)
            result["start"] = time.perf_counter()
            _transfer_cpu.append(_cpu())
            writer.produce()

        def failed(f):
            result["error"] = str(f.value)
            reactor.stop()

        reactor.callWhenRunning(
            lambda: client.dispatcher.connect(("127.0.0.1", port)).addCallbacks(connected, failed))
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    reactor.run()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    if role == "server":
        return 0.0
    if "error" in result:
        raise SystemExit(f"crust transfer failed: {result['error']}")
    _check(result["digest"], total, chunk)
    return total / (result["end"] - result["start"]) / 1e6


def framed_side(role: str, total: int, chunk_size: int, datagram_size: int, port: int = 0) -> float:
    """
    crust's own L{PeerConnection} (HELLO, CHOOSE, DATA frames, send queues)
    on the driver's urgent lane: messages of C{chunk_size} bytes at priority 0.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    from crust.session.connection import PeerConnection
    from crust.errors import SendQueueFull
    from crust.identity import Identity
    from crust.transport.quic.dispatcher import QuicDispatcher, QuicOptions
    from crust.wire import Hello, network_hash

    chunk = _chunk(chunk_size)
    result: dict = {}
    identity = Identity.generate()

    class Owner:
        def __init__(self):
            self.size = 0
            self.hash = hashlib.sha256()
            self.conn = None
            self.sent = 0

        def hello_for(self, conn):
            return Hello(network=network_hash(None))

        def claim(self, conn, peer_id):
            return True

        def promote(self, conn, peer_id):
            self.conn = conn
            conn.deliver = self.receive if role == "server" else self.answer
            if role == "client":
                result["start"] = time.perf_counter()
                _transfer_cpu.append(_cpu())
                self.writable(conn)

        def receive(self, message):
            if not self.size:
                _transfer_cpu.append(_cpu())
            self.size += len(message)
            self.hash.update(message)
            if self.size >= total:
                _transfer_cpu.append(_cpu())
                self.conn.send_message(self.hash.hexdigest().encode(), 0)

        def answer(self, message):
            result["end"] = time.perf_counter()
            _transfer_cpu.append(_cpu())
            result["digest"] = message.decode()
            self.conn.close_duplicate()

        def writable(self, conn):
            while self.sent < total:
                try:
                    conn.send_message(chunk, 0)
                except SendQueueFull:
                    return
                self.sent += chunk_size

        def lost(self, conn, reason):
            if role == "client" and "end" not in result:
                result["error"] = reason
            if reactor.running:
                reactor.stop()

        def refused(self, conn, reason, detail):
            result["error"] = f"{reason}: {detail}"

        def control_received(self, conn, ftype, payload):
            return False

        def __getattr__(self, name):
            return lambda *args: None

    owner = Owner()

    def connection(expected, initiator):
        return PeerConnection(owner, reactor, local_id=identity.peer_id, network=network_hash(None),
                              expected_peer=expected, initiator=initiator, max_message_size=2 << 20,
                              max_queued_bytes=4 << 20, drop_after=60.0, heartbeat_interval=20.0,
                              inactivity_timeout=120.0, handshake_timeout=10.0, transport_name="udp")

    class Endpoint(DatagramProtocol):
        def __init__(self, accepted=None):
            self.dispatcher = QuicDispatcher(identity, self.send, clock=reactor, accepted=accepted,
                                             options=QuicOptions(max_datagram_size=datagram_size))

        def startProtocol(self):
            _tune(self.transport.socket)

        def send(self, data, addr):
            try:
                self.transport.write(data, addr)
            except OSError:
                return False
            return True

        def datagramReceived(self, data, addr):
            self.dispatcher.datagram_received(data, addr)

    if role == "server":
        endpoint = Endpoint(accepted=lambda driver: driver.attach(connection(None, False)))
        listening = reactor.listenUDP(0, endpoint, interface="127.0.0.1", maxPacketSize=65535)
        print(f"port {listening.getHost().port}", flush=True)
    else:
        endpoint = Endpoint()
        reactor.listenUDP(0, endpoint, interface="127.0.0.1", maxPacketSize=65535)

        def failed(f):
            result["error"] = str(f.value)
            reactor.stop()

        reactor.callWhenRunning(lambda: endpoint.dispatcher.connect(("127.0.0.1", port)).addCallbacks(
            lambda driver: driver.attach(connection(driver.peer_id, True)), failed))
    reactor.run()
    if role == "server":
        return 0.0
    if "error" in result:
        raise SystemExit(f"framed transfer failed: {result['error']}")
    _check(result["digest"], total, chunk)
    return total / (result["end"] - result["start"]) / 1e6


def baseline_side(role: str, total: int, chunk_size: int, datagram_size: int, port: int = 0) -> float:
    """aioquic's asyncio client and server, the same exchange as L{crust_side} on one stream."""
    from aioquic.asyncio import connect, serve
    from aioquic.quic.configuration import QuicConfiguration
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from crust.identity import Identity
    from crust.transport.quic.tls import ALPN
    from crust.transport.tls import make_certificate

    chunk = _chunk(chunk_size)

    def configuration(is_client: bool) -> QuicConfiguration:
        identity = Identity.generate()
        return QuicConfiguration(
            alpn_protocols=[ALPN], is_client=is_client, verify_mode=ssl.CERT_NONE,
            certificate=make_certificate(identity),
            private_key=Ed25519PrivateKey.from_private_bytes(identity.seed),
            max_datagram_size=datagram_size, idle_timeout=130.0,
        )

    async def server() -> None:
        finished = asyncio.Event()

        def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def read() -> None:
                h = hashlib.sha256()
                size = 0
                while size < total:
                    data = await reader.read(1 << 20)
                    if not data:
                        break
                    if not size:
                        _transfer_cpu.append(_cpu())
                    size += len(data)
                    h.update(data)
                _transfer_cpu.append(_cpu())
                writer.write(h.hexdigest().encode())
                await reader.read()  # until the client closes
                finished.set()

            asyncio.ensure_future(read())

        quic_server = await serve("127.0.0.1", 0, configuration=configuration(False), stream_handler=handler)
        sock = quic_server._transport.get_extra_info("socket")
        _tune(sock)
        print(f"port {sock.getsockname()[1]}", flush=True)
        await finished.wait()
        quic_server.close()

    async def client() -> tuple[float, str]:
        async with connect("127.0.0.1", port, configuration=configuration(True)) as protocol:
            _tune(protocol._transport.get_extra_info("socket"))
            reader, writer = await protocol.create_stream()
            start = time.perf_counter()
            _transfer_cpu.append(_cpu())
            sent = 0
            while sent < total:
                writer.write(chunk)
                sent += chunk_size
                await writer.drain()
            digest = await reader.readexactly(64)
            end = time.perf_counter()
            _transfer_cpu.append(_cpu())
            writer.write_eof()
        return total / (end - start) / 1e6, digest.decode()

    if role == "server":
        asyncio.run(server())
        return 0.0
    rate, digest = asyncio.run(client())
    _check(digest, total, chunk)
    return rate


def _check(digest: str, total: int, chunk: bytes) -> None:
    h = hashlib.sha256()
    for _ in range(total // len(chunk)):
        h.update(chunk)
    if h.hexdigest() != digest:
        raise SystemExit("the received stream differs from what was sent")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("crust", "framed", "baseline", "both", "all",
                                         "crust-server", "framed-server", "baseline-server"))
    parser.add_argument("--mb", type=int, default=100, help="megabytes to move (default 100)")
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=65536, help="bytes per write (default 65536)")
    parser.add_argument("--datagram", type=int, default=1200, help="max datagram size (default 1200)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each, each in fresh processes")
    parser.add_argument("--profile", help="write a cProfile of the crust client (sending) process here")
    parser.add_argument("--profile-server", help="write a cProfile of the crust server (receiving) process here")
    args = parser.parse_args(argv)
    total = args.bytes or args.mb * 1_000_000 // args.chunk * args.chunk
    if args.what.endswith("-server"):
        if args.what == "crust-server":
            crust_side("server", total, args.chunk, args.datagram, os.environ.get("CRUST_QUIC_PROFILE"))
        elif args.what == "framed-server":
            framed_side("server", total, args.chunk, args.datagram)
        else:
            baseline_side("server", total, args.chunk, args.datagram)
        print(f"receiver-cpu {_transfer_cpu[-1] - _transfer_cpu[0]:.3f}", flush=True)
        return
    if args.what in ("both", "all") or args.runs > 1:
        kinds = {"both": ["crust", "baseline"], "all": ["crust", "framed", "baseline"]}.get(args.what, [args.what])
        for kind in kinds:
            rates = []
            for _ in range(args.runs):
                out = subprocess.run(
                    [sys.executable, __file__, kind, "--mb", str(args.mb), "--chunk", str(args.chunk),
                     "--datagram", str(args.datagram)],
                    check=True, capture_output=True, text=True).stdout
                words = out.split()
                rates.append((float(words[1]), float(words[8].rstrip(",")), float(words[10])))
            print(f"{kind}: MB/s " + " ".join(f"{r[0]:.1f}" for r in rates)
                  + f" (best {max(r[0] for r in rates):.1f}); "
                  f"MB per CPU second, best: sender {max(r[1] for r in rates):.1f}, "
                  f"receiver {max(r[2] for r in rates):.1f}")
        return
    if args.profile_server:
        os.environ["CRUST_QUIC_PROFILE"] = args.profile_server
    child, port = _serve_child(args.what, total, args.datagram)
    try:
        if args.what == "crust":
            rate = crust_side("client", total, args.chunk, args.datagram, args.profile, port)
        elif args.what == "framed":
            rate = framed_side("client", total, args.chunk, args.datagram, port)
        else:
            rate = baseline_side("client", total, args.chunk, args.datagram, port)
    finally:
        try:
            receiver_cpu = child.communicate(timeout=30)[0].split()[-1]
        except subprocess.TimeoutExpired:
            child.kill()
            receiver_cpu = "?"
    sender_cpu = _transfer_cpu[-1] - _transfer_cpu[0]
    print(f"{args.what}: {rate:.1f} MB/s; MB per CPU second: sender {total / 1e6 / sender_cpu:.1f}, "
          f"receiver {total / 1e6 / float(receiver_cpu):.1f} "
          f"({total} bytes in {args.chunk}-byte writes, datagrams of {args.datagram})")


if __name__ == "__main__":
    main(sys.argv[1:])
