#!/usr/bin/env python3
"""Lab agent: crust's ``discover_external_address`` against STUN servers.

    stun_discover.py --server IP:PORT [--server ...] [--local-port N]
                     [--rto S --rc N --rm N] [--deadline S]

Prints one JSON line ``{"event": "result", ...}``: ``ok`` with ``mapped``
(``udp:IP:PORT``), or ``ok: false`` with ``error_type`` and ``error``; both
with ``elapsed`` and ``clean`` (whether the reactor was left with no timer and
no socket of the discovery once the Deferred fired).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _agent import emit, leftovers, run, stun_arguments  # noqa: E402
from twisted.internet import defer, reactor, task  # noqa: E402

from crust.nat.stun_client import discover_external_address  # noqa: E402


def main():
    args, servers, options = stun_arguments()

    @defer.inlineCallbacks
    def go():
        before = leftovers()
        t0 = time.monotonic()
        try:
            mapped = yield discover_external_address(reactor, servers, local_port=args.local_port,
                                                     **options)
        except Exception as e:  # reported, the test decides
            outcome = {"ok": False, "error_type": type(e).__name__, "error": str(e)}
        else:
            outcome = {"ok": True, "mapped": str(mapped)}
        outcome["elapsed"] = round(time.monotonic() - t0, 3)
        # Let the port's stopListening settle, then compare with the start.
        yield task.deferLater(reactor, 0.05, lambda: None)
        after = leftovers()
        after["delayed_calls"] = [c for c in after["delayed_calls"] if "too_late" not in c]
        before["delayed_calls"] = [c for c in before["delayed_calls"] if "too_late" not in c]
        outcome["clean"] = after == before
        outcome["leftovers"] = after
        emit("result", **outcome)

    return run(go, args.deadline)


if __name__ == "__main__":
    sys.exit(main())
