#!/usr/bin/env python3
"""Independent UDP/TCP probes for the NAT lab (stdlib only, plain sockets).

Run inside a lab namespace (``ip netns exec NS python3 probe.py CMD ...``).
Every command but ``reflect`` and ``sink`` prints exactly one JSON line.

Commands:
  reflect --udp IP:PORT... --tcp IP:PORT...
      Reflector. A UDP request ``{"id": N, "reply_from": "IP:PORT"|null}`` is
      answered with ``{"id", "seen", "from"}`` (seen = the source address the
      request came from). With reply_from naming one of its own sockets it
      answers from that socket; otherwise it asks the reflector at reply_from
      (``{"relay": seen}``) to answer. A TCP connection gets one JSON line
      ``{"seen", "from"}``. Prints ``ready`` when bound. With ``--contact
      IP:PORT`` each UDP socket first sends a request there (opening a NAT
      mapping) and prints ``mapped LOCAL SEEN`` when answered.
  ask --server IP:PORT [--reply-from IP:PORT] [--bind IP:PORT]
      One reflector request (3 tries); ``{"seen", "from"}`` or ``{"error"}``.
  nat-test --primary A1:P1 --alt-port A1:P2 --alt-ip A2:P1 --alt-both A2:P2
      RFC 4787 mapping and filtering classification against reflectors.
  tcp-connect --server IP:PORT [--bind IP:PORT]
  stun --server IP:PORT [--change-ip] [--change-port]
      Hand-built STUN binding request (RFC 5389/5780); decoded response.
  rtt --server IP:PORT --count N --interval S
      Sequenced echo requests: RTTs and ids of the answers in arrival order,
      and how many duplicate answers came.
  flood --server IP:PORT --seconds S [--size B]   and   sink --udp IP:PORT
      Throughput: the sink prints a JSON count of datagrams per second received.
"""

import argparse
import json
import os
import select
import socket
import struct
import sys
import time


def addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def fmt(address):
    return "{}:{}".format(address[0], address[1])


def emit(obj):
    print(json.dumps(obj), flush=True)


# -- reflector -----------------------------------------------------------------

def reflect(args):
    udp = {}
    for text in args.udp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr(text))
        udp[sock.getsockname()] = sock
    tcp = []
    for text in args.tcp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        _reuse(sock)  # so tcp-connect --bind can open a mapping from this port
        sock.bind(addr(text))
        sock.listen(64)
        tcp.append(sock)
    for target in args.contact:  # open outbound mappings; answers print "mapped"
        for sock in udp.values():
            _send(sock, {"id": 0}, addr(target))
    print("ready", flush=True)
    by_fd = {s.fileno(): s for s in list(udp.values()) + tcp}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            sock = by_fd[fd]
            if sock.type == socket.SOCK_STREAM:
                _answer_tcp(sock)
            else:
                _answer_udp(sock, udp)


def _reuse(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def _answer_tcp(listener):
    try:
        conn, peer = listener.accept()
    except OSError:
        return
    with conn:
        try:
            conn.sendall((json.dumps({"seen": fmt(peer), "from": fmt(conn.getsockname())})
                          + "\n").encode())
        except OSError:
            pass


def _answer_udp(sock, udp):
    try:
        data, peer = sock.recvfrom(65535)
        msg = json.loads(data)
    except (OSError, ValueError):
        return
    if not isinstance(msg, dict):
        return
    if "relay" in msg:  # another reflector asks us to answer its client
        target, seen = addr(msg["relay"]), msg["relay"]
        reply = {"id": msg.get("id"), "seen": seen, "from": fmt(sock.getsockname())}
        _send(sock, reply, target)
        return
    if msg.get("flood"):
        return
    if "seen" in msg:  # the answer to --contact
        print("mapped {} {}".format(fmt(sock.getsockname()), msg["seen"]), flush=True)
        return
    seen = fmt(peer)
    reply_from = msg.get("reply_from")
    if not reply_from:
        _send(sock, {"id": msg.get("id"), "seen": seen, "from": fmt(sock.getsockname())}, peer)
        return
    other = udp.get(addr(reply_from))
    if other is not None:
        _send(other, {"id": msg.get("id"), "seen": seen, "from": reply_from}, peer)
    else:
        _send(sock, {"id": msg.get("id"), "relay": seen}, addr(reply_from))


def _send(sock, obj, target):
    try:
        sock.sendto(json.dumps(obj).encode(), target)
    except OSError:
        pass


# -- client side ---------------------------------------------------------------

def udp_socket(bind=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(addr(bind) if bind else ("0.0.0.0", 0))
    return sock


_ids = iter(range(1, 1 << 30))


def ask_many(requests, tries=3, wait=0.3):
    """Send reflector requests ``(sock, server, reply_from)`` concurrently.

    Unanswered ones are resent every *wait* seconds, *tries* times in all.
    Returns the reply dicts (None where no reply came), in request order.
    """
    results = [None] * len(requests)
    pending = {}
    for index, (sock, server, reply_from) in enumerate(requests):
        ident = next(_ids)
        payload = json.dumps({"id": ident, "reply_from": reply_from}).encode()
        pending[ident] = (index, sock, addr(server), payload)
    for _ in range(tries):
        for index, sock, server, payload in pending.values():
            sock.sendto(payload, server)
        deadline = time.monotonic() + wait
        while pending:
            remaining = deadline - time.monotonic()
            socks = list({id(p[1]): p[1] for p in pending.values()}.values())
            ready = select.select(socks, [], [], max(remaining, 0))[0] if remaining > 0 else []
            if not ready:
                break
            for sock in ready:
                try:
                    reply = json.loads(sock.recv(65535))
                except (OSError, ValueError):
                    continue
                if isinstance(reply, dict) and "seen" in reply:
                    entry = pending.pop(reply.get("id"), None)
                    if entry is not None and entry[1] is sock:
                        results[entry[0]] = reply
        if not pending:
            break
    return results


def ask_reflector(sock, server, reply_from=None, tries=3, wait=0.3):
    """One reflector request; the reply dict or None."""
    return ask_many([(sock, server, reply_from)], tries, wait)[0]


def ask(args):
    sock = udp_socket(args.bind)
    reply = ask_reflector(sock, args.server, args.reply_from, args.tries, args.wait)
    emit(reply if reply else {"error": "no reply", "local": fmt(sock.getsockname())})


def nat_test(args):
    """Classify mapping and filtering the way RFC 5780 does, with reflectors."""
    sock = udp_socket()
    servers = (args.primary, args.alt_ip, args.alt_both, args.alt_port)
    replies = ask_many([(sock, server, None) for server in servers], args.tries, args.wait)
    mapped = {server: (reply["seen"] if reply else None) for server, reply in zip(servers, replies)}
    first = mapped[args.primary]
    if first is None:
        mapping = "blocked"
    elif mapped[args.alt_ip] == first and mapped[args.alt_both] == first:
        mapping = "endpoint-independent"
    elif mapped[args.alt_ip] == mapped[args.alt_both]:
        mapping = "address-dependent"
    else:
        mapping = "address-and-port-dependent"
    # Filtering: each check uses a fresh socket that has only sent to primary.
    checks = (("same", None), ("other-ip", args.alt_both), ("other-port", args.alt_port))
    replies = ask_many([(udp_socket(), args.primary, reply_from) for _, reply_from in checks],
                       args.tries, args.wait)
    reached = {name: reply is not None for (name, _), reply in zip(checks, replies)}
    if not reached["same"]:
        filtering = "blocked"
    elif reached["other-ip"]:
        filtering = "endpoint-independent"
    elif reached["other-port"]:
        filtering = "address-dependent"
    else:
        filtering = "address-and-port-dependent"
    emit({"mapping": mapping, "filtering": filtering, "mapped": mapped,
          "reached": reached, "local": fmt(sock.getsockname())})


def tcp_connect(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(args.timeout)
    if args.bind:
        _reuse(sock)
        sock.bind(addr(args.bind))
    try:
        sock.connect(addr(args.server))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        emit(dict(json.loads(data), local=fmt(sock.getsockname())))
    except (OSError, ValueError) as e:
        emit({"error": "{}: {}".format(type(e).__name__, e)})
    finally:
        sock.close()


# -- STUN ----------------------------------------------------------------------

MAGIC = 0x2112A442
ATTRS = {0x0001: "mapped", 0x0020: "xor_mapped", 0x802B: "response_origin",
         0x802C: "other_address", 0x0004: "source_address", 0x0005: "changed_address"}


def stun_request(change_ip=False, change_port=False):
    """Return (transaction id, binding request bytes)."""
    txid = os.urandom(12)
    attrs = b""
    if change_ip or change_port:
        flags = (4 if change_ip else 0) | (2 if change_port else 0)
        attrs = struct.pack("!HHI", 0x0003, 4, flags)
    return txid, struct.pack("!HHI", 0x0001, len(attrs), MAGIC) + txid + attrs


def stun_parse(data, txid):
    """Decode a binding success response; None if it is not one for *txid*."""
    if len(data) < 20:
        return None
    mtype, length, magic = struct.unpack("!HHI", data[:8])
    if magic != MAGIC or data[8:20] != txid or mtype != 0x0101:
        return None
    out, pos, end = {}, 20, min(len(data), 20 + length)
    while pos + 4 <= end:
        atype, alen = struct.unpack("!HH", data[pos:pos + 4])
        value = data[pos + 4:pos + 4 + alen]
        pos += 4 + (alen + 3) // 4 * 4
        name = ATTRS.get(atype)
        if name is None or len(value) < 8 or value[1] != 1:  # IPv4 only
            continue
        port = struct.unpack("!H", value[2:4])[0]
        ip = value[4:8]
        if name == "xor_mapped":
            port ^= MAGIC >> 16
            ip = bytes(a ^ b for a, b in zip(ip, struct.pack("!I", MAGIC)))
        out[name] = "{}:{}".format(socket.inet_ntoa(ip), port)
    return out


def stun(args):
    sock = udp_socket(args.bind)
    txid, request = stun_request(args.change_ip, args.change_port)
    for _ in range(args.tries):
        sock.sendto(request, addr(args.server))
        deadline = time.monotonic() + args.wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                break
            data, peer = sock.recvfrom(65535)
            parsed = stun_parse(data, txid)
            if parsed is not None:
                emit(dict(parsed, peer=fmt(peer), local=fmt(sock.getsockname())))
                return
    emit({"error": "no reply", "local": fmt(sock.getsockname())})


# -- delay, loss, throughput ---------------------------------------------------

def rtt(args):
    sock = udp_socket()
    server = addr(args.server)
    state = {"sent": {}, "rtts": [], "order": [], "duplicates": 0}
    start = time.monotonic()
    for i in range(args.count):
        state["sent"][i] = time.monotonic()
        sock.sendto(json.dumps({"id": i}).encode(), server)
        _collect(sock, state, start + (i + 1) * args.interval)
    _collect(sock, state, time.monotonic() + args.drain)
    emit({"sent": args.count, "received": len(state["rtts"]), "rtt_ms": state["rtts"],
          "order": state["order"], "duplicates": state["duplicates"]})


def _collect(sock, state, until):
    answered = state.setdefault("answered", set())
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
            return
        try:
            ident = json.loads(sock.recv(65535))["id"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if ident in answered:
            state["duplicates"] += 1
        elif ident in state["sent"]:
            answered.add(ident)
            state["order"].append(ident)
            state["rtts"].append(round((time.monotonic() - state["sent"][ident]) * 1000.0, 3))


def flood(args):
    sock = udp_socket()
    sock.connect(addr(args.server))
    payload = b'{"flood": 1}'.ljust(args.size)
    count, end = 0, time.monotonic() + args.seconds
    gap = 1.0 / args.rate if args.rate else 0.0
    next_send = time.monotonic()
    while time.monotonic() < end:
        for _ in range(64):
            try:
                sock.send(payload)
                count += 1
            except OSError:
                pass
        if gap:
            next_send += 64 * gap
            pause = next_send - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    emit({"sent": count, "seconds": args.seconds})


def sink(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(addr(args.udp))
    sock.settimeout(args.idle)
    print("ready", flush=True)
    count, first, last = 0, None, None
    while True:
        try:
            sock.recv(65535)
        except socket.timeout:
            if count:
                break
            continue
        last = time.monotonic()
        first = first or last
        count += 1
    span = (last - first) if count > 1 else 0.0
    emit({"received": count, "seconds": round(span, 3),
          "pps": round(count / span) if span else 0})


def main(argv=None):
    parser = argparse.ArgumentParser(description="NAT lab probes")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("reflect")
    p.add_argument("--udp", action="append", default=[])
    p.add_argument("--tcp", action="append", default=[])
    p.add_argument("--contact", action="append", default=[],
                   help="reflector to send one request to from each UDP socket")
    p.set_defaults(func=reflect)
    for name, func in (("ask", ask), ("nat-test", nat_test), ("stun", stun)):
        p = sub.add_parser(name)
        p.add_argument("--tries", type=int, default=3)
        p.add_argument("--wait", type=float, default=0.3)
        p.set_defaults(func=func)
        if name == "nat-test":
            for opt in ("--primary", "--alt-port", "--alt-ip", "--alt-both"):
                p.add_argument(opt, required=True)
        else:
            p.add_argument("--server", required=True)
            p.add_argument("--bind")
    sub.choices["ask"].add_argument("--reply-from")
    sub.choices["stun"].add_argument("--change-ip", action="store_true")
    sub.choices["stun"].add_argument("--change-port", action="store_true")
    p = sub.add_parser("tcp-connect")
    p.add_argument("--server", required=True)
    p.add_argument("--bind")
    p.add_argument("--timeout", type=float, default=2.0)
    p.set_defaults(func=tcp_connect)
    p = sub.add_parser("rtt")
    p.add_argument("--server", required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--drain", type=float, default=1.0)
    p.set_defaults(func=rtt)
    p = sub.add_parser("flood")
    p.add_argument("--server", required=True)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.0, help="packets/s, 0 = as fast as possible")
    p.set_defaults(func=flood)
    p = sub.add_parser("sink")
    p.add_argument("--udp", required=True)
    p.add_argument("--idle", type=float, default=1.0)
    p.set_defaults(func=sink)
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
