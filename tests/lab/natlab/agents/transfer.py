#!/usr/bin/env python3
"""Lab agent: one side of a bulk transfer over a crust connection.

    transfer.py --role receive [--transport quic|tcp|any] --bytes N
                [--listen-port P] [--progress-interval S] [--stall S] [--deadline S]
    transfer.py --role send --connect INFO_JSON [--transport quic|tcp|any] --bytes N
                [--message-size B] [--priority P] [--seed N] [--ping-interval S]
                [--max-queued B] [--deadline S]
    experiments (not crust's defaults; both sides): [--tcp-cc NAME] [--tcp-notsent-lowat B]
                [--quic-cc reno|cubic] [--quic-datagram B] [--udp-buffer B]

``--transport quic`` runs the ``Service`` with ``Config(enable_tcp=False)``
(QUIC only), ``tcp`` with ``enable_udp=False``, ``any`` with both (the race
decides). Port mapping, LAN discovery and the external reachability test are
off: only the connection under test carries traffic.

The receiver prints ``ready`` (``info``: its public connection info JSON,
``peer_id``, ``listen``) and waits for one sender. The sender connects with
``Service.connect`` and sends ``--bytes`` bytes of seeded pseudo-random data
in ``--message-size`` messages of priority ``--priority`` (>= 2 is the bulk
lane on QUIC), paced by crust's backpressure: it sends while
``queued_bytes(peer)`` is at most half of ``Config.max_queued_bytes``
(``--max-queued``, 8 MiB by default), then waits on ``when_writable(peer)``.
With ``--ping-interval`` it also sends a small priority-0 message that often;
the receiver echoes it (priority 0) and the sender reports the round trips
(latency of the urgent lane under load).

The experiment options change one thing under crust, in this process
only: ``--tcp-cc`` sets ``TCP_CONGESTION`` on the connection's socket once
connected (the sender's is what matters), ``--tcp-notsent-lowat``
``TCP_NOTSENT_LOWAT`` there (the kernel then holds at most that many unsent
bytes; the rest waits in crust's priority queues), ``--quic-cc`` and
``--quic-datagram`` aioquic's ``congestion_control_algorithm`` and
``max_datagram_size`` in the dispatcher's configurations, ``--udp-buffer``
``SO_RCVBUF``/``SO_SNDBUF`` of the UDP socket instead of crust's (reported
as ``udp_buffer``, as the kernel grants them: Linux doubles the value and
caps it at ``net.core.rmem_max``/``wmem_max``). They reach into crust's internals
(``service.quic``, ``peers.active``) and are for ``bench/lab_goodput.py
--what-if`` and investigations, not for tests of crust's behaviour.

Every message starts with one type byte: ``D`` data (the rest is payload),
``P`` ping, ``Q`` ping answer, ``F`` the receiver's final report. Payload
bytes (not the type bytes) are counted and hashed (SHA-256) on both sides.

Events (JSON lines ``{"event", "t", ...}``):

- both: ``ready``; ``connected`` (``peer``, ``address``, ``transport``,
  ``local_address``); ``progress`` every ``--progress-interval`` seconds
  (``bytes`` so far, ``rate`` in MB/s over the last interval; the sender's
  ``bytes`` are payload bytes handed to ``send``, with ``queued`` and
  ``acked`` = the receiver's count from its last progress report, if any);
  ``lost_peer``/``message_dropped``/``connect_failure`` as they happen.
- receiver, when ``--bytes`` have arrived: ``done`` with ``bytes``,
  ``sha256``, ``seconds`` (connection established to last byte),
  ``first_byte`` (seconds from established to first byte), ``messages``,
  ``max_gap`` (the longest time, from the connection's establishment to
  the last byte, during which no data arrived), ``stalls`` (gaps longer than
  ``--stall``), ``cpu_seconds`` (this process, established to last byte),
  ``mbps`` (10^6 bytes per second over ``seconds``). It then sends ``F`` +
  that JSON to the sender at priority 0.
- sender: ``done`` with ``bytes``, ``sha256`` (of what it sent),
  ``seconds`` (first send to the receiver's final report: one extra one-way
  delay), ``cpu_seconds``, ``mbps``, ``waits`` (``when_writable`` waits),
  ``ping_ms`` (list), ``receiver`` (the receiver's ``done``), ``intact``
  (the two hashes and byte counts agree).
- ``done`` and the sender's ``progress`` also carry the transport's state:
  ``tcp_info`` (from the kernel's ``TCP_INFO``: congestion control, MSS,
  RTT, cwnd, retransmitted bytes...) or ``quic`` (aioquic's congestion
  window, bytes in flight, smoothed RTT, flow-control credit, the bulk
  lane's unsent bytes; read from aioquic internals, diagnostics only).

Both exit 0 after ``done`` (the receiver once its report was sent and a
short grace period passed, so that it reaches the sender), 2 when the
connection was lost or the data did not match, 3 at ``--deadline``.
"""

import argparse
import hashlib
import json
import os
import random
import resource
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _agent import emit, run  # noqa: E402
from twisted.internet import defer, reactor, task  # noqa: E402

from crust import Config, Identity, Service  # noqa: E402
from crust.observer import CrustObserver  # noqa: E402

MIB = 1 << 20
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux
NETWORK = "crust-lab-transfer"


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_config(args):
    return Config(
        network_name=NETWORK, listen_host="0.0.0.0", listen_port=args.listen_port,
        udp_listen_port=args.listen_port,
        enable_tcp=args.transport != "quic", enable_udp=args.transport != "tcp",
        enable_port_mapping=False, enable_service_discovery=False,
        external_reachability_test=False,
        max_queued_bytes=args.max_queued, max_message_size=min(2 * MIB, args.max_queued),
        connect_timeout=args.connect_timeout)


def quic_state(service, peer):
    """The QUIC sender's state, when the connection is QUIC (aioquic internals;
    diagnostics only, empty if they moved)."""
    try:
        driver = service.peers.active[peer].transport.driver
        quic = driver.quic
        loss = quic._loss
        bulk = quic._streams[driver.bulk.send_stream_id]
        return {"quic": dict(
            cwnd=loss.congestion_window, in_flight=loss.bytes_in_flight,
            srtt_ms=round(loss._rtt_smoothed * 1000, 1),
            max_data=quic._remote_max_data - quic._remote_max_data_used,
            max_stream_data=bulk.max_stream_data_remote - bulk.sender.highest_offset,
            lane_unsent=driver.bulk.unsent if hasattr(driver.bulk, "unsent") else None)}
    except Exception:
        return {}


def tcp_socket(service, peer):
    """The kernel socket under a TCP connection (None for QUIC)."""
    try:
        transport = service.peers.active[peer].transport
        if getattr(transport, "driver", None) is not None:
            return None
        return transport.transport.getHandle()  # TLSMemoryBIOProtocol -> tcp.Connection
    except Exception:
        return None


def tcp_info(sock):
    """Part of the kernel's ``struct tcp_info`` of *sock* (Linux), for the report."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
        cc = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode()
    except (OSError, AttributeError):
        return None
    u32 = lambda offset: struct.unpack_from("I", raw, offset)[0]  # noqa: E731
    u64 = lambda offset: struct.unpack_from("Q", raw, offset)[0]  # noqa: E731
    info = dict(congestion_control=cc, snd_mss=u32(16), rcv_mss=u32(20), pmtu=u32(60),
                rtt_ms=u32(68) / 1000.0, snd_cwnd=u32(80), total_retrans=u32(100))
    if len(raw) >= 144:
        info.update(segs_out=u32(136), segs_in=u32(140))
    if len(raw) >= 216:
        info.update(bytes_sent=u64(200), bytes_retrans=u64(208))
    return info


class Side(CrustObserver):
    """What both sides share: the service, the events, the final exit code."""

    def __init__(self, args):
        self.args = args
        self.service = Service(Identity.generate(), make_config(args), reactor)
        self.service.add_observer(self)
        quic = self.service.quic
        if quic is not None:  # experiments (not crust's defaults): --quic-cc, --quic-datagram
            for configuration in (quic._client_configuration, quic._server_configuration):
                if args.quic_cc:
                    configuration.congestion_control_algorithm = args.quic_cc
                if args.quic_datagram:
                    configuration.max_datagram_size = args.quic_datagram
        self.finished = defer.Deferred()
        self.peer = None
        self.rc = 0

    def tune_udp(self):
        """--udp-buffer: set the UDP socket's kernel buffers (an experiment)."""
        endpoint = self.service.udp_endpoint
        if not self.args.udp_buffer or endpoint is None:
            return
        sock = endpoint.transport.getHandle()
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, self.args.udp_buffer)
        emit("udp_buffer", rcvbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
             sndbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))

    def tune_tcp(self, peer):
        """--tcp-cc, --tcp-notsent-lowat: this connection's socket (experiments)."""
        sock = tcp_socket(self.service, peer)
        if sock is not None and self.args.tcp_cc:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, self.args.tcp_cc.encode())
        if sock is not None and self.args.tcp_notsent_lowat:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, self.args.tcp_notsent_lowat)

    def transport_stats(self):
        """TCP: tcp_info of the connection; QUIC: the sender state (diagnostics)."""
        if self.peer is None:
            return {}
        sock = tcp_socket(self.service, self.peer)
        if sock is not None:
            return {"tcp_info": tcp_info(sock)}
        return quic_state(self.service, self.peer)

    def describe_peer(self, peer):
        details = self.service.peer_details(peer) or {}
        return dict(peer=str(peer), address=details.get("address"),
                    transport=details.get("transport"), local_address=details.get("local_address"))

    def finish(self, rc):
        if self.finished.called:
            return
        self.rc = rc
        d = defer.maybeDeferred(self.service.stopService)
        d.addBoth(lambda _: self.finished.callback(rc) if not self.finished.called else None)

    # observer events that matter here
    def lost_peer(self, peer_id, reason):
        emit("lost_peer", peer=str(peer_id), reason=str(reason))
        if not self.is_done():
            self.finish(2)

    def message_dropped(self, peer_id, priority, count, size, reason):
        emit("message_dropped", peer=str(peer_id), priority=priority, count=count, size=size,
             reason=str(reason))

    def connect_failure(self, peer_id, reason):
        emit("connect_failure", peer=str(peer_id), reason=str(reason))


class Receiver(Side):

    def __init__(self, args):
        super().__init__(args)
        self.hash = hashlib.sha256()
        self.bytes = 0
        self.messages = 0
        self.established = None
        self.first = None
        self.last = None
        self.max_gap = 0.0
        self.stalls = 0
        self.cpu0 = None
        self.report = None
        self._last_progress = (0.0, 0)
        self._loop = None

    def is_done(self):
        return self.report is not None

    def connect_success(self, peer_id):
        if self.peer is not None:
            return
        self.peer = peer_id
        self.tune_tcp(peer_id)
        self.established = time.monotonic()
        self.last = self.established
        self.cpu0 = cpu_seconds()
        self._last_progress = (self.established, 0)
        emit("connected", **self.describe_peer(peer_id))
        self._loop = task.LoopingCall(self.progress)
        self._loop.start(self.args.progress_interval, now=False)

    def progress(self):
        now = time.monotonic()
        t0, b0 = self._last_progress
        self._last_progress = (now, self.bytes)
        emit("progress", bytes=self.bytes, rate=round((self.bytes - b0) / max(now - t0, 1e-9) / 1e6, 3),
             since_last_byte=round(now - self.last, 3))
        if self.peer is not None and not self.is_done():
            # tell the sender how far we got (its progress lines show it)
            try:
                self.service.send(self.peer, b"A%d" % self.bytes, 0)
            except Exception:
                pass

    def new_message(self, peer_id, data):
        kind = data[:1]
        if kind == b"D":
            now = time.monotonic()
            if self.first is None:
                self.first = now
            gap = now - self.last
            if gap > self.max_gap:
                self.max_gap = gap
            if gap > self.args.stall:
                self.stalls += 1
            self.last = now
            payload = memoryview(data)[1:]
            self.hash.update(payload)
            self.bytes += len(payload)
            self.messages += 1
            if self.bytes >= self.args.bytes and self.report is None:
                self.done(now)
        elif kind == b"P":
            self.service.send(peer_id, b"Q" + data[1:], 0)

    def done(self, now):
        seconds = now - self.established
        self.report = dict(
            bytes=self.bytes, sha256=self.hash.hexdigest(), seconds=round(seconds, 4),
            first_byte=round(self.first - self.established, 4), messages=self.messages,
            max_gap=round(self.max_gap, 4), stalls=self.stalls,
            cpu_seconds=round(cpu_seconds() - self.cpu0, 3),
            mbps=round(self.bytes / seconds / 1e6, 3) if seconds > 0 else None,
            **self.transport_stats())
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.progress()
        emit("done", **self.report)
        self.service.send(self.peer, b"F" + json.dumps(self.report).encode(), 0)
        # the sender closes once it has the report; leave by ourselves otherwise
        reactor.callLater(self.args.linger, self.finish, 0)

    def lost_peer(self, peer_id, reason):
        if self.is_done():
            emit("closed", peer=str(peer_id), reason=str(reason))
            self.finish(0)
        else:
            super().lost_peer(peer_id, reason)

    @defer.inlineCallbacks
    def main(self):
        self.service.startService()
        yield self.service.start_listening()
        self.tune_udp()
        info = yield self.service.prepare_connection_info()
        emit("ready", info=info.public.to_json(), peer_id=str(self.service.peer_id),
             listen=[str(a) for a in self.service.listen_addresses])
        rc = yield self.finished
        return rc


class Sender(Side):

    def __init__(self, args):
        super().__init__(args)
        self.hash = hashlib.sha256()
        self.rng = random.Random(args.seed)
        self.sent = 0
        self.waits = 0
        self.acked = None
        self.report = None
        self.pings = []
        self.start = None
        self.cpu0 = None
        self._loops = []
        self._last_progress = (0.0, 0)

    def is_done(self):
        return self.report is not None

    def new_message(self, peer_id, data):
        kind = data[:1]
        if kind == b"A":
            self.acked = int(data[1:])
        elif kind == b"Q":
            self.pings.append(round((time.monotonic() - float(data[1:])) * 1000.0, 2))
        elif kind == b"F":
            self.received_report(json.loads(data[1:]))

    def progress(self):
        now = time.monotonic()
        t0, b0 = self._last_progress
        self._last_progress = (now, self.sent)
        emit("progress", bytes=self.sent, acked=self.acked,
             queued=self.service.queued_bytes(self.peer) if self.peer else None,
             rate=round((self.sent - b0) / max(now - t0, 1e-9) / 1e6, 3),
             **self.transport_stats())

    def ping(self):
        if self.peer is not None and not self.is_done():
            try:
                self.service.send(self.peer, b"P%.6f" % time.monotonic(), 0)
            except Exception:
                pass

    def pump(self, _=None):
        """Send while at most half the bound is queued; then wait for when_writable."""
        if self.is_done() or self.finished.called:
            return
        args = self.args
        service, peer = self.service, self.peer
        high = service.config.max_queued_bytes // 2
        while self.sent < args.bytes and service.queued_bytes(peer) <= high:
            size = min(args.message_size, args.bytes - self.sent)
            payload = self.rng.randbytes(size)
            self.hash.update(payload)
            service.send(peer, b"D" + payload, args.priority)
            self.sent += size
        if self.sent < args.bytes:
            self.waits += 1
            service.when_writable(peer).addCallback(self.pump).addErrback(self.failed)
        else:
            emit("all_sent", bytes=self.sent, queued=service.queued_bytes(peer))

    def failed(self, failure):
        emit("send_failed", error=failure.getErrorMessage())
        self.finish(2)

    def received_report(self, receiver):
        now = time.monotonic()
        seconds = now - self.start
        for loop in self._loops:
            if loop.running:
                loop.stop()
        sha = self.hash.hexdigest()
        intact = receiver.get("sha256") == sha and receiver.get("bytes") == self.sent == self.args.bytes
        self.report = dict(
            bytes=self.sent, sha256=sha, seconds=round(seconds, 4),
            cpu_seconds=round(cpu_seconds() - self.cpu0, 3),
            mbps=round(self.sent / seconds / 1e6, 3), waits=self.waits,
            ping_ms=self.pings, receiver=receiver, intact=intact, **self.transport_stats())
        emit("done", **self.report)
        self.finish(0 if intact else 2)

    @defer.inlineCallbacks
    def main(self):
        args = self.args
        self.service.startService()
        yield self.service.start_listening()
        self.tune_udp()
        ours = yield self.service.prepare_connection_info()
        t0 = time.monotonic()
        try:
            peer = yield self.service.connect(ours, args.connect)
        except Exception as e:
            emit("connect_error", error="{}: {}".format(type(e).__name__, e))
            yield self.service.stopService()
            return 2
        self.peer = peer
        self.tune_tcp(peer)
        emit("connected", seconds=round(time.monotonic() - t0, 4), **self.describe_peer(peer))
        self.start = time.monotonic()
        self.cpu0 = cpu_seconds()
        self._last_progress = (self.start, 0)
        loop = task.LoopingCall(self.progress)
        loop.start(args.progress_interval, now=False)
        self._loops.append(loop)
        if args.ping_interval:
            loop = task.LoopingCall(self.ping)
            loop.start(args.ping_interval, now=True)
            self._loops.append(loop)
        self.pump()
        rc = yield self.finished
        return rc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("send", "receive"), required=True)
    parser.add_argument("--transport", choices=("quic", "tcp", "any"), default="quic")
    parser.add_argument("--bytes", type=int, required=True)
    parser.add_argument("--connect", help="the receiver's public connection info JSON (send)")
    parser.add_argument("--listen-port", type=int)
    parser.add_argument("--message-size", type=int, default=64 * 1024)
    parser.add_argument("--priority", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-queued", type=int, default=8 * MIB)
    parser.add_argument("--ping-interval", type=float, default=0.0)
    parser.add_argument("--progress-interval", type=float, default=1.0)
    parser.add_argument("--stall", type=float, default=10.0,
                        help="a gap without data longer than this counts as a stall")
    parser.add_argument("--linger", type=float, default=5.0,
                        help="receiver: seconds to stay after its report (the sender closes first)")
    parser.add_argument("--connect-timeout", type=float, default=15.0)
    # experiments, not crust's defaults (bench/lab_goodput.py --what-if)
    parser.add_argument("--tcp-cc", help="TCP congestion control of the connection (e.g. cubic)")
    parser.add_argument("--tcp-notsent-lowat", type=int, help="TCP_NOTSENT_LOWAT of the connection")
    parser.add_argument("--quic-cc", choices=("reno", "cubic"), help="aioquic's congestion control")
    parser.add_argument("--quic-datagram", type=int, help="QUIC max_datagram_size (crust: 1200)")
    parser.add_argument("--udp-buffer", type=int, help="SO_RCVBUF/SO_SNDBUF of the UDP socket")
    parser.add_argument("--deadline", type=float, default=300.0)
    args = parser.parse_args()
    if args.role == "send" and not args.connect:
        parser.error("--role send needs --connect")
    if args.message_size + 1 > min(2 * MIB, args.max_queued):
        parser.error("--message-size must be below the message size limit")
    side = Sender(args) if args.role == "send" else Receiver(args)
    result = {}

    def go():
        d = side.main()
        d.addCallback(lambda rc: result.setdefault("rc", rc))
        return d

    rc = run(go, args.deadline)
    return rc if rc != 0 else result.get("rc", 0) or 0


if __name__ == "__main__":
    sys.exit(main())
