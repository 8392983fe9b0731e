"""Shared plumbing of the lab agents (imported by the scripts next to it).

An agent is a small standalone program run inside a lab namespace
(``host.spawn([sys.executable, AGENT, ...])``); it talks to the test through
JSON lines on stdout (``emit``) and, for the interactive ones, JSON commands
on stdin. Every agent bounds its own life with ``--deadline`` so that a test
that dies without stopping it never leaves it running for long (the lab also
kills it at teardown).
"""

import json
import sys
import time
import traceback

from twisted.internet import reactor

_T0 = time.monotonic()


def emit(event, **fields):
    """Print one JSON line ``{"event": EVENT, "t": seconds since start, ...}``."""
    fields = {"event": event, "t": round(time.monotonic() - _T0, 4), **fields}
    sys.stdout.write(json.dumps(fields, default=str) + "\n")
    sys.stdout.flush()


def leftovers():
    """What the reactor still holds: pending timers and open file descriptors.

    The waker (and, with stdin commands, the stdio pipes) are expected; the
    caller subtracts what it started with.
    """
    return {
        "delayed_calls": [str(c.func) for c in reactor.getDelayedCalls() if c.active()],
        "readers": len(reactor.getReaders()),
        "writers": len(reactor.getWriters()),
    }


def _log_to_stderr():
    """With CRUST_AGENT_LOG=1 in the environment, the library's log lines go to stderr (mixed into the output)."""
    import os

    if os.environ.get("CRUST_AGENT_LOG"):
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)


def run(main, deadline):
    """Run ``main()`` (returning a Deferred) under the reactor; exit code 0/1.

    The process emits ``{"event": "deadline"}`` and exits 3 if it is still
    running after *deadline* seconds.
    """
    _log_to_stderr()
    result = {"rc": 1}

    def finished(_):
        result["rc"] = 0
        if reactor.running:
            reactor.stop()

    def failed(failure):
        emit("crashed", error=failure.getErrorMessage(), traceback=failure.getTraceback())
        if reactor.running:
            reactor.stop()

    def too_late():
        emit("deadline", seconds=deadline)
        result["rc"] = 3
        reactor.stop()

    def start():
        try:
            d = main()
        except Exception:
            emit("crashed", error="main raised", traceback=traceback.format_exc())
            reactor.stop()
            return
        d.addCallbacks(finished, failed)

    timer = reactor.callLater(deadline, too_late)
    reactor.callWhenRunning(start)
    reactor.run()
    if timer.active():
        timer.cancel()
    return result["rc"]


def stun_arguments(*extra):
    """
    Parse the options the STUN agents share (``--server`` repeatable,
    ``--local-port``, the retransmission schedule, ``--deadline``) plus
    *extra* ``(flag, type)`` pairs; returns ``(args, servers, schedule)``.
    """
    import argparse

    from crust.address import Address

    parser = argparse.ArgumentParser()
    parser.add_argument("--server", action="append", required=True)
    parser.add_argument("--local-port", type=int, default=0)
    parser.add_argument("--rto", type=float)
    parser.add_argument("--rc", type=int)
    parser.add_argument("--rm", type=float)
    parser.add_argument("--deadline", type=float, default=60.0)
    for flag, kind in extra:
        parser.add_argument(flag, type=kind)
    args = parser.parse_args()
    servers = [Address.parse(s, "udp") for s in args.server]
    schedule = {k: v for k, v in (("rto", args.rto), ("rc", args.rc), ("rm", args.rm)) if v is not None}
    return args, servers, schedule
