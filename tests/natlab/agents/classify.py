#!/usr/bin/env python3
"""Lab agent: crust's ``classify_nat`` (RFC 5780 tests) on a fresh UDP socket.

    classify.py --server IP:PORT [--server ...] [--local-port N]
                [--rto S] [--rc N] [--rm N] [--hairpin-timeout S] [--deadline S]

Prints one JSON line ``{"event": "report", "report": NatReport.to_dict(),
"wall": seconds}``; the schedule options default to ``classify_nat``'s own.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _agent import emit, run  # noqa: E402
from twisted.internet import defer, reactor  # noqa: E402

from crust.address import Address  # noqa: E402
from crust.nat_classify import classify_nat  # noqa: E402
from crust.stun_client import StunProtocol  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", action="append", required=True)
    parser.add_argument("--local-port", type=int, default=0)
    parser.add_argument("--rto", type=float)
    parser.add_argument("--rc", type=int)
    parser.add_argument("--rm", type=float)
    parser.add_argument("--hairpin-timeout", type=float)
    parser.add_argument("--deadline", type=float, default=60.0)
    args = parser.parse_args()
    servers = [Address.parse(s, "udp") for s in args.server]
    options = {k: v for k, v in (("rto", args.rto), ("rc", args.rc), ("rm", args.rm),
                                 ("hairpin_timeout", args.hairpin_timeout)) if v is not None}

    @defer.inlineCallbacks
    def go():
        protocol = StunProtocol(reactor)
        port = reactor.listenUDP(args.local_port, protocol, interface="0.0.0.0")
        local_port = port.getHost().port
        emit("socket", local_port=local_port)
        t0 = time.monotonic()
        try:
            report = yield classify_nat(reactor, protocol.client, servers, local_port, **options)
        finally:
            yield port.stopListening()
        emit("report", report=report.to_dict(), nat_type=report.nat_type,
             wall=round(time.monotonic() - t0, 3))

    return run(go, args.deadline)


if __name__ == "__main__":
    sys.exit(main())
