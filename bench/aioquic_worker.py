#!/usr/bin/env python
"""
One side of one QUIC baseline measurement: aioquic's own asyncio client and
server (C{aioquic.asyncio}), in a process of its own.

Started by C{bench/run.py} (C{--impls aioquic}), never by hand.  It speaks
to the runner exactly as C{bench/worker.py} does (C{BENCH {json}} lines:
C{listening}, C{result}, C{exit}, C{error}), takes the same options, and has
the same bounds: it exits when its stdin closes (the runner went away), on
SIGTERM, and after C{--timeout} seconds (a watchdog thread: it holds even if
the event loop is stuck).

What it runs, on 127.0.0.1 only, with the QUIC settings crust's C{Service}
uses (C{--datagram}, C{--max-data}, C{--max-stream-data}, C{--cc}; the
runner passes crust's defaults), self-signed Ed25519 certificates, ALPN
C{crust/1}, no CA verification, no session tickets, and mutual TLS (the
server asks for the client's certificate, as crust's does):

  - C{bulk}: the client streams C{--size}-byte writes on one bidirectional
    stream for C{--warmup} + C{--duration} seconds, then finishes the stream
    (the FIN is the end marker); the server counts the bytes that arrive
    after its own warm-up and answers the FIN with a 1-byte ack on the same
    stream.  Backpressure as in crust's QUIC lanes: the sender writes while
    the bytes aioquic has not yet sent once are at most C{high_water}
    (1 MiB), and resumes once a transmit left them at or below C{low_water}
    (256 KiB).  Both sides are subclasses of C{QuicConnectionProtocol} that
    handle stream events in C{quic_event_received} (no C{StreamReader}), the
    cheapest way aioquic's asyncio API offers.
  - C{setup}: C{--connections} times: a new connection (aioquic's
    C{connect()} makes a socket per connection too), the handshake, C{--size}
    bytes on a new stream, the server's echo of them; then the client closes
    (CONNECTION_CLOSE) and drops its socket, outside the timed part, without
    waiting for aioquic's closing period (3 PTO, about 80 ms).

There is no C{rate} test: a raw QUIC stream has no messages to count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import ssl
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import ACK, LOOPBACK, cpu_seconds, emit  # noqa: E402
from worker import Meter, SendClock, _batch, _watch_parent  # noqa: E402  (no reactor is installed)

perf_counter = time.perf_counter

ALPN = "crust/1"  # the same ALPN crust negotiates (bench traffic only; the value costs nothing)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=("server", "client"), required=True)
    p.add_argument("--impl", choices=("aioquic",), default="aioquic")
    p.add_argument("--test", choices=("bulk", "setup"), required=True)
    p.add_argument("--size", type=int, default=100, help="bytes per write (bulk) or echoed (setup)")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--port", type=int, default=0, help="the server's port (client)")
    p.add_argument("--certdir", required=True, help="server.key/.crt and client.key/.crt (bench/_common.py)")
    p.add_argument("--datagram", type=int, default=1200, help="max_datagram_size")
    p.add_argument("--max-data", type=int, default=1 << 20)
    p.add_argument("--max-stream-data", type=int, default=1 << 20)
    p.add_argument("--cc", default="reno", help="congestion_control_algorithm")
    p.add_argument("--high-water", type=int, default=1 << 20)
    p.add_argument("--low-water", type=int, default=256 * 1024)
    p.add_argument("--socket-buffer", type=int, default=0,
                   help="SO_RCVBUF and SO_SNDBUF of every socket (0: the system's default, as aioquic leaves it)")
    p.add_argument("--profile", default="")
    p.add_argument("--timeout", type=float, default=120.0)
    # accepted for symmetry with bench/worker.py, unused
    p.add_argument("--info", default="")
    p.add_argument("--max-queued", type=int, default=0)
    p.add_argument("--priority", type=int, default=1)
    return p.parse_args(argv)


class _Clock:
    """Meter and SendClock want C{callLater}: asyncio's C{call_later}."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.callLater = loop.call_later


def _configuration(args, is_client: bool):
    from aioquic.quic.configuration import QuicConfiguration

    ours = "client" if is_client else "server"
    config = QuicConfiguration(
        alpn_protocols=[ALPN], is_client=is_client, verify_mode=ssl.CERT_NONE,
        connection_id_length=8, idle_timeout=130.0, max_datagram_size=args.datagram,
        max_data=args.max_data, max_stream_data=args.max_stream_data,
        congestion_control_algorithm=args.cc,
    )
    config.load_cert_chain(os.path.join(args.certdir, f"{ours}.crt"), os.path.join(args.certdir, f"{ours}.key"))
    return config


def _mutual_tls() -> None:
    """
    aioquic's server asks for a client certificate only when a private flag
    of its TLS context is set (crust sets it the same way, in
    C{crust.transport.quic.tls.CrustQuicConnection}); C{serve()} builds its connections
    from the module's C{QuicConnection}, so that name gets the subclass.
    """
    import aioquic.asyncio.server as server_module
    from aioquic.quic.connection import QuicConnection

    class MutualQuicConnection(QuicConnection):
        def _initialize(self, peer_cid: bytes) -> None:
            super()._initialize(peer_cid)
            if not self._is_client:
                self.tls._request_client_certificate = True

    server_module.QuicConnection = MutualQuicConnection


def _diagnostics(protocol) -> dict:
    """Datagrams both ways and the congestion window, as bench/worker.py reports crust's: for the JSON."""
    out = {"datagrams_sent": protocol.datagrams_sent, "datagrams_received": protocol.datagrams_received}
    try:
        cc = protocol._quic._loss._cc  # aioquic internals: diagnostics only
        out["cwnd"] = cc.congestion_window
        out["ssthresh"] = cc.ssthresh
    except AttributeError:
        pass
    sock = protocol._transport.get_extra_info("socket") if protocol._transport is not None else None
    if sock is not None:
        out["so_rcvbuf"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return {"quic": out}


def _counting(protocol_type):
    """C{protocol_type} counting the datagrams it receives and sends."""

    class Counting(protocol_type):
        datagrams_received = 0
        datagrams_sent = 0

        def datagram_received(self, data, addr) -> None:
            self.datagrams_received += 1
            super().datagram_received(data, addr)

        def connection_made(self, transport) -> None:
            sendto = transport.sendto

            def counted(data, addr=None) -> None:
                self.datagrams_sent += 1
                sendto(data, addr)

            proxy = _TransportProxy(transport)
            proxy.sendto = counted
            super().connection_made(proxy)

    return Counting


class _TransportProxy:
    def __init__(self, transport) -> None:
        self._wrapped = transport

    def __getattr__(self, name):
        return getattr(self._wrapped, name)


def _tune(sock, size: int) -> None:
    if size:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


def _unsent(quic, stream_id: int) -> int:
    """Bytes written to the stream that aioquic has not sent once yet (crust's lanes count the same)."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    sender = stream.sender
    return sender._buffer_stop - sender.highest_offset


async def server(args, loop) -> None:
    from aioquic.asyncio import serve
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.events import StreamDataReceived

    _mutual_tls()
    clock = _Clock(loop)
    meter = Meter(clock, args.warmup, lambda: None)

    class Echo(QuicConnectionProtocol):
        def quic_event_received(self, event) -> None:
            if type(event) is StreamDataReceived and event.data:
                self._quic.send_stream_data(event.stream_id, event.data)  # sent by the transmit that follows

    class Counter(QuicConnectionProtocol):
        count = 0
        nbytes = 0
        ended = False
        started = False

        def quic_event_received(self, event) -> None:
            if type(event) is not StreamDataReceived:
                return
            n = len(event.data)
            if n:
                if not self.started:
                    self.started = True
                    meter.first(self)
                self.count += 1  # stream events, not messages: the bulk figure is bytes
                self.nbytes += n
            if event.end_stream and not self.ended:
                self.ended = True
                meter.end(self)
                self._quic.send_stream_data(event.stream_id, ACK, end_stream=True)

    protocol = Echo if args.test == "setup" else _counting(Counter)
    if protocol is not Echo:
        meter.extra = lambda: _diagnostics(protocol.last)

        class Last(protocol):
            last = None

            def connection_made(self, transport) -> None:
                Last.last = self
                super().connection_made(transport)

        protocol = Last
    quic_server = await serve(LOOPBACK, 0, configuration=_configuration(args, False), create_protocol=protocol)
    _tune(quic_server._transport.get_extra_info("socket"), args.socket_buffer)
    port = quic_server._transport.get_extra_info("sockname")[1]
    _listening_cpu.append(cpu_seconds())
    emit(event="listening", port=port, aioquic=_aioquic_version())
    await asyncio.Event().wait()  # until SIGTERM or the runner goes away


async def _open(args, loop, protocol_type):
    """A client connection as aioquic's C{connect()} makes one (a socket of its own), without its close wait."""
    from aioquic.quic.connection import QuicConnection

    configuration = _configuration(args, True)
    quic = QuicConnection(configuration=configuration)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    _tune(sock, args.socket_buffer)
    transport, protocol = await loop.create_datagram_endpoint(lambda: protocol_type(quic), sock=sock)
    protocol.connect((LOOPBACK, args.port))
    await protocol.wait_connected()
    return transport, protocol


async def client(args, loop) -> None:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.events import StreamDataReceived

    if args.test == "setup":

        class Pinger(QuicConnectionProtocol):
            waiter = None
            got = b""

            def quic_event_received(self, event) -> None:
                if type(event) is StreamDataReceived:
                    self.got += event.data
                    if len(self.got) >= args.size and self.waiter is not None and not self.waiter.done():
                        self.waiter.set_result(self.got)

        message = b"p" * args.size
        times = []
        cpu0 = cpu_seconds()
        for _ in range(args.connections):
            t0 = perf_counter()
            transport, proto = await _open(args, loop, Pinger)
            proto.waiter = loop.create_future()
            quic = proto._quic
            quic.send_stream_data(quic.get_next_available_stream_id(), message)
            proto.transmit()
            echoed = await proto.waiter
            times.append(perf_counter() - t0)
            if echoed != message:
                raise RuntimeError("the echo differs from the message")
            proto.close()  # sends the CONNECTION_CLOSE now
            transport.close()
        emit(event="result", side="client", times=times, cpu=cpu_seconds() - cpu0)
        return

    high, low = args.high_water, args.low_water
    message = b"x" * args.size
    batch = range(_batch(args.size))
    done = loop.create_future()

    class Sender(QuicConnectionProtocol):
        """Writes while aioquic's unsent bytes are at most high_water; a transmit resumes it at low_water."""

        stream_id = -1
        paused = True
        stopping = False
        sent = 0
        clock: SendClock

        def fill(self) -> None:
            quic = self._quic
            send, sid = quic.send_stream_data, self.stream_id
            n = 0
            while _unsent(quic, sid) <= high:
                for _ in batch:
                    send(sid, message)
                n += len(batch)
            self.sent += n
            self.paused = True

        def transmit(self) -> None:
            super().transmit()
            if self.paused and not self.stopping and self.stream_id >= 0 and _unsent(self._quic, self.stream_id) <= low:
                self.paused = False
                self.fill()
                super().transmit()  # what congestion control allows goes now

        def stop(self) -> None:
            self.stopping = True
            self._quic.send_stream_data(self.stream_id, b"", end_stream=True)
            self.transmit()

        def quic_event_received(self, event) -> None:
            if type(event) is StreamDataReceived and event.data == ACK and not done.done():
                self.clock.acked(self.sent)
                done.set_result(None)

    transport, proto = await _open(args, loop, _counting(Sender))
    proto.stream_id = proto._quic.get_next_available_stream_id()
    proto.clock = SendClock(_Clock(loop), args.warmup, args.duration, proto.stop)
    proto.clock.extra = lambda: _diagnostics(proto)
    proto.clock.start()
    proto.fill()
    proto.transmit()
    await done
    proto.close()
    transport.close()


def _aioquic_version() -> str:
    import aioquic

    return aioquic.__version__


_listening_cpu: list[float] = []


def _watchdog(seconds: float) -> None:
    def expire() -> None:
        emit(event="error", reason=f"aioquic worker killed by its watchdog after {seconds:g} s")
        os._exit(71)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def main(argv=None) -> int:
    args = parse_args(argv)
    _watch_parent()
    _watchdog(args.timeout + 5)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
        loop.call_later(args.timeout, lambda: stop.done() or stop.set_exception(
            TimeoutError(f"worker timed out after {args.timeout:g} s")))

        work = asyncio.ensure_future((server if args.role == "server" else client)(args, loop))
        try:
            await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                work.result()  # raises what the measurement raised
                if args.role == "client":
                    return
            stop.result()
        finally:
            work.cancel()

    failed = []

    def go() -> None:
        try:
            asyncio.run(run())
        except Exception as e:
            import traceback

            failed.append(e)
            emit(event="error", reason=f"aioquic {args.role}: {e!r}", traceback=traceback.format_exc())

    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(go)
        profiler.dump_stats(args.profile)
        with open(args.profile + ".txt", "w") as f:
            stats = pstats.Stats(profiler, stream=f)
            stats.strip_dirs()
            f.write(f"# aioquic {args.role} {args.test} (size {args.size})\n## by own time\n")
            stats.sort_stats("tottime").print_stats(35)
            f.write("## by cumulative time\n")
            stats.sort_stats("cumulative").print_stats(35)
    else:
        go()
    if _listening_cpu:
        emit(event="exit", cpu_since_listening=cpu_seconds() - _listening_cpu[0])
    sys.stdout.flush()
    os._exit(71 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
