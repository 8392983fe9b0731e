#!/usr/bin/env python3
"""Lab agent: a crust ``PortMapper`` using exactly one method.

    portmap.py --method pcp|natpmp|upnp --gateway IP [--ssdp IP:PORT]
               [--tcp-port N] [--udp-port N] [--lifetime S]
               [--min-renew-delay S] [--deadline S]

``PortMapper(methods=...)`` takes method *objects*, so the one named is built
here the way ``PortMapper._default_methods`` builds it (PCP and NAT-PMP
clients of ``--gateway``, UPnP discovering by SSDP at ``--ssdp``). Each
method is wrapped so that every request shows as JSON lines:

    {"event": "request", "method", "transport", "port", "lifetime", "renewal"}
    {"event": "granted", ..., "external", "granted_lifetime", "renewal"}
    {"event": "refused", ..., "error"}
    {"event": "unmap", ...} / {"event": "unmapped", ...} / {"event": "unmap_failed", ...}

and the mapper's observer events as ``{"event": "added"|"removed", ...}``.
After the first round: ``{"event": "round", "mappings": [...]}``.
Commands on stdin, one per line, bare or as ``{"cmd": NAME}``: ``status``,
``stop`` (``stopService``, then ``{"event": "stopped"}`` and exit).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _agent import emit, run  # noqa: E402
from twisted.internet import defer, reactor, stdio  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

from crust.nat.portmap.natpmp import NATPMPClient  # noqa: E402
from crust.nat.portmap.pcp import PCPClient  # noqa: E402
from crust.nat.portmap.mapper import NATPMPMethod, PCPMethod, PortMapper, UPnPMethod  # noqa: E402


def mapping_dict(m):
    return {"transport": m.transport, "internal_port": m.internal_port, "external": str(m.external),
            "method": m.method, "lifetime": m.lifetime}


class Traced:
    """An ``IPortMappingMethod`` that reports every call of the one it wraps."""

    def __init__(self, method):
        self.method = method
        self.name = method.name

    def map(self, transport, internal_port, lifetime, previous):
        info = dict(method=self.name, transport=transport, port=internal_port,
                    renewal=previous is not None)
        emit("request", lifetime=lifetime,
             previous=str(previous.external) if previous is not None else None, **info)

        def granted(grant):
            emit("granted", external=str(grant.external), granted_lifetime=grant.lifetime, **info)
            return grant

        def refused(failure):
            emit("refused", error="{}: {}".format(failure.type.__name__, failure.getErrorMessage()),
                 **info)
            return failure

        return defer.maybeDeferred(self.method.map, transport, internal_port, lifetime,
                                   previous).addCallbacks(granted, refused)

    def unmap(self, transport, internal_port, grant):
        info = dict(method=self.name, transport=transport, port=internal_port,
                    external=str(grant.external))
        emit("unmap", **info)

        def done(result):
            emit("unmapped", **info)
            return result

        def failed(failure):
            emit("unmap_failed", error=failure.getErrorMessage(), **info)
            return failure

        return defer.maybeDeferred(self.method.unmap, transport, internal_port,
                                   grant).addCallbacks(done, failed)

    def close(self):
        return self.method.close()


def build_method(name, gateway, ssdp):
    if name == "pcp":
        return PCPMethod(PCPClient(gateway, reactor=reactor))
    if name == "natpmp":
        return NATPMPMethod(NATPMPClient(gateway, reactor=reactor))
    if name == "upnp":
        return UPnPMethod(reactor, ssdp_address=ssdp)
    raise SystemExit("unknown method {!r}".format(name))


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, mapper, done):
        self.mapper = mapper
        self.done = done

    def lineReceived(self, line):
        command = line.decode().strip()
        if command.startswith("{"):
            command = json.loads(command).get("cmd", "")
        if command == "status":
            emit("status", mappings=[mapping_dict(m) for m in self.mapper.mappings.values()])
        elif command == "stop":
            self.stop()
        elif command:
            emit("unknown_command", command=command)

    def connectionLost(self, reason=None):
        self.stop()  # the test went away: clean up all the same

    def stop(self):
        if self.done.called or not self.mapper.running:
            return
        d = defer.maybeDeferred(self.mapper.stopService)

        def stopped(_):
            emit("stopped", mappings=[mapping_dict(m) for m in self.mapper.mappings.values()])
            if not self.done.called:
                self.done.callback(None)

        d.addBoth(stopped)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", required=True, choices=["pcp", "natpmp", "upnp"])
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--ssdp", help="IP:PORT for SSDP (default: the gateway's port 1900)")
    parser.add_argument("--tcp-port", type=int)
    parser.add_argument("--udp-port", type=int)
    parser.add_argument("--lifetime", type=int, default=7200)
    parser.add_argument("--min-renew-delay", type=float, default=10.0)
    parser.add_argument("--deadline", type=float, default=60.0)
    args = parser.parse_args()
    if args.ssdp:
        host, _, port = args.ssdp.rpartition(":")
        ssdp = (host, int(port))
    else:
        ssdp = (args.gateway, 1900)
    method = Traced(build_method(args.method, args.gateway, ssdp))
    mapper = PortMapper(args.tcp_port, args.udp_port, reactor=reactor, gateway=args.gateway,
                        ssdp_address=ssdp, methods=[method], lifetime=args.lifetime,
                        min_renew_delay=args.min_renew_delay)
    mapper.add_observer(lambda event, m: emit(event, **mapping_dict(m)))
    done = defer.Deferred()

    def go():
        stdio.StandardIO(Commands(mapper, done))
        mapper.startService()
        mapper.refresh().addCallback(lambda _: emit(
            "round", mappings=[mapping_dict(m) for m in mapper.mappings.values()],
            probes=[{"method": p.method, "answered": p.answered, "error": p.error,
                     "elapsed": round(p.elapsed, 3)} for p in mapper.probe_history]))
        return done

    return run(go, args.deadline)


if __name__ == "__main__":
    sys.exit(main())
