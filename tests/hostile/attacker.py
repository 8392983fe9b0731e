"""
The attacker of the hostile-traffic tests, a process of its own (as a real
one would be): it floods one crust node on the loopback interface for a few
seconds, then prints what it sent as one JSON line.

    python -m tests.hostile.attacker KIND HOST PORT SECONDS [RATE]

Kinds:
  - C{quic}: junk QUIC Initials (a valid v1 header, random bytes after it)
    from 64 source ports, with one real ClientHello in ten (clients that
    never answer), RATE datagrams a second;
  - C{stun}: 64 KiB STUN Binding requests of 16,383 empty attributes from 8
    source ports, RATE a second;
  - C{tcp}: up to RATE connections held open from 127.0.0.2, silent or
    dribbling a ClientHello a byte at a time, each closed one replaced (at
    most 1000 new connections a second);
  - C{garbage}: connections from 127.0.0.2 that send random bytes or an HTTP
    request and close, RATE a second;
  - C{json}: TLS connections with a valid crust identity from 127.0.0.2 whose
    HELLO is deeply nested JSON or a 5000-digit version, RATE a second
    (from 2 threads).

It prints C{ready} once it is set up, right before the flood starts.  Only
loopback addresses are ever sent to: it refuses any other.  It runs at a
lower scheduling priority (nice 10), as if from another host: the tests
measure what the attack costs the node, not what making it costs the
(2-core) machine they share.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import sys
import threading
import time

ATTACK_SOURCE = "127.0.0.2"  # TCP floods come from another host than the legitimate peer (127.0.0.1)
NEW_CONNECTIONS_PER_SECOND = 1000  # the TCP flood replaces closed connections at most this fast


def _loopback(host: str) -> None:
    if not host.startswith("127."):
        raise SystemExit(f"the attacker only sends to loopback addresses, not {host!r}")


def _pace(start: float, done: int, rate: float) -> None:
    ahead = done / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)


def junk_initial(rng: random.Random) -> bytes:
    return (b"\xc3\x00\x00\x00\x01\x08" + rng.randbytes(8) + b"\x08" + rng.randbytes(8) + b"\x00"
            + b"\x44\xc8" + rng.randbytes(1250))


def real_initials(host: str, port: int, count: int) -> list[bytes]:
    from crust.identity import Identity
    from crust.transport.quic.tls import CrustQuicConnection, make_configuration

    configuration = make_configuration(Identity.generate(), is_client=True)
    out = []
    for _ in range(count):
        quic = CrustQuicConnection(configuration=configuration)
        quic.connect((host, port), now=time.monotonic())
        out.append(quic.datagrams_to_send(now=time.monotonic())[0][0])
    return out


def big_stun() -> bytes:
    # the largest STUN message a UDP datagram over IPv4 holds (65,507 bytes): 16,371 empty attributes
    body = struct.pack("!HH", 0x8001, 0) * ((65507 - 20) // 4)
    return struct.pack("!HHI12s", 0x0001, len(body), 0x2112A442, os.urandom(12)) + body


def flood_udp(host: str, port: int, seconds: float, rate: float, sockets: int, make) -> dict:
    socks = []
    for _ in range(sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    print("ready", flush=True)
    start = time.monotonic()
    sent = failed = 0
    while time.monotonic() - start < seconds:
        data = make(sent)
        try:
            socks[sent % sockets].sendto(data, (host, port))
        except OSError:
            failed += 1
        sent += 1
        _pace(start, sent, rate)
    return {"sent": sent, "send_failures": failed, "seconds": round(time.monotonic() - start, 3)}


def tcp_flood(host: str, port: int, seconds: float, held: int) -> dict:
    import selectors

    sel = selectors.DefaultSelector()
    hello = os.urandom(300)  # bytes dribbled one at a time: a ClientHello that never completes
    conns: dict[socket.socket, int] = {}
    opened = refused = 0
    print("ready", flush=True)
    start = time.monotonic()
    last_dribble = start

    def open_one() -> None:
        nonlocal opened
        s = socket.socket()
        s.bind((ATTACK_SOURCE, 0))
        s.setblocking(False)
        s.connect_ex((host, port))
        conns[s] = 0
        sel.register(s, selectors.EVENT_READ)
        opened += 1

    while time.monotonic() - start < seconds:
        allowed = int(NEW_CONNECTIONS_PER_SECOND * (time.monotonic() - start)) + held
        while len(conns) < held and opened < allowed:
            open_one()
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                data = s.recv(4096)  # type: ignore[union-attr]
            except OSError:
                data = b""
            if not data:  # closed by the node: refused, or timed out
                refused += 1
                sel.unregister(s)
                conns.pop(s, None)  # type: ignore[arg-type]
                s.close()  # type: ignore[union-attr]
        now = time.monotonic()
        if now - last_dribble >= 0.5:
            last_dribble = now
            for i, (s, at) in enumerate(list(conns.items())):
                if i % 2 and at < len(hello):  # half of them dribble, half are silent
                    try:
                        s.send(hello[at:at + 1])
                        conns[s] = at + 1
                    except OSError:
                        pass
    for s in conns:
        s.close()
    return {"opened": opened, "closed_by_node": refused, "seconds": round(time.monotonic() - start, 3)}


def garbage(host: str, port: int, seconds: float, rate: float) -> dict:
    print("ready", flush=True)
    start = time.monotonic()
    sent = 0
    http = b"GET / HTTP/1.1\r\nHost: crust\r\n\r\n"
    while time.monotonic() - start < seconds:
        s = socket.socket()
        s.bind((ATTACK_SOURCE, 0))
        s.settimeout(1.0)
        try:
            s.connect((host, port))
            s.sendall(http if sent % 2 else os.urandom(512))
        except OSError:
            pass
        finally:
            s.close()
        sent += 1
        _pace(start, sent, rate)
    return {"connections": sent, "seconds": round(time.monotonic() - start, 3)}


def nested_json(host: str, port: int, seconds: float, rate: float) -> dict:
    from OpenSSL import SSL, crypto
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from crust.identity import Identity
    from crust.transport.tls import make_certificate
    from crust.wire import FrameType, frame

    payloads = [b"[" * 100000, b'{"a":' * 50000, b'{"proto":"crust","version":' + b"9" * 5000 + b"}"]
    counts: dict = {"handshakes": 0, "closed_by_node": 0, "errors": 0}
    lock = threading.Lock()
    start = time.monotonic()

    def worker(index: int) -> None:
        identity = Identity.generate()
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.use_privatekey(crypto.PKey.from_cryptography_key(Ed25519PrivateKey.from_private_bytes(identity.seed)))
        ctx.use_certificate(crypto.X509.from_cryptography(make_certificate(identity)))
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        i = 0
        while time.monotonic() - start < seconds:
            _pace(start, i, rate / 2)
            i += 1
            s = socket.socket()
            s.bind((ATTACK_SOURCE, 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 2, 0))
            try:
                s.connect((host, port))
                tls = SSL.Connection(ctx, s)
                tls.set_connect_state()
                tls.do_handshake()
                with lock:
                    counts["handshakes"] += 1
                tls.sendall(frame(FrameType.HELLO, payloads[(i + index) % len(payloads)]))
                while tls.recv(65536):
                    pass
            except SSL.ZeroReturnError:
                with lock:
                    counts["closed_by_node"] += 1
            except (OSError, SSL.Error) as e:
                with lock:
                    counts["errors"] += 1
                    counts.setdefault("last_error", repr(e)[:200])
            finally:
                s.close()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(2)]
    print("ready", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 5)
    return {**counts, "seconds": round(time.monotonic() - start, 3)}


def main(argv: list[str]) -> int:
    kind, host, port, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
    rate = float(argv[4]) if len(argv) > 4 else 0.0
    _loopback(host)
    os.nice(10)
    rng = random.Random(os.getpid())
    if kind == "quic":
        hellos = real_initials(host, port, 50)
        result = flood_udp(host, port, seconds, rate or 2000, 64,
                           lambda n: hellos[n // 10 % len(hellos)] if n % 10 == 9 else junk_initial(rng))
    elif kind == "stun":
        message = big_stun()
        result = flood_udp(host, port, seconds, rate or 200, 8, lambda n: message)
    elif kind == "tcp":
        result = tcp_flood(host, port, seconds, int(rate or 300))
    elif kind == "garbage":
        result = garbage(host, port, seconds, rate or 200)
    elif kind == "json":
        result = nested_json(host, port, seconds, rate or 60)
    else:
        raise SystemExit(f"unknown attack {kind!r}")
    print(json.dumps({"kind": kind, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
