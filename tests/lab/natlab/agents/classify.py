#!/usr/bin/env python3
"""Lab agent: crust's ``classify_nat`` (RFC 5780 tests) on a fresh UDP socket.

    classify.py --server IP:PORT [--server ...] [--local-port N]
                [--rto S] [--rc N] [--rm N] [--hairpin-timeout S] [--deadline S]

Prints one JSON line ``{"event": "report", "report": NatReport.to_dict(),
"wall": seconds}``; the schedule options default to ``classify_nat``'s own.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _agent import emit, run, stun_arguments  # noqa: E402
from twisted.internet import defer, reactor  # noqa: E402

from crust.nat.classify import classify_nat  # noqa: E402
from crust.nat.stun_client import StunProtocol  # noqa: E402


def main():
    args, servers, options = stun_arguments(("--hairpin-timeout", float))
    if args.hairpin_timeout is not None:
        options["hairpin_timeout"] = args.hairpin_timeout

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
