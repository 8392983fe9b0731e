#!/usr/bin/env python3
"""
An AMP server and client talking over crust, by peer id.

Plain Twisted AMP, with the C{crust:} endpoint strings (doc/streams.md)
where a TCP program would have C{tcp:} ones.  On one machine::

    python examples/amp_over_crust.py serve --datadir ~/.crust-amp
    AMP calculator at crust:<PEER_ID>:calculator

On another, whose node knows the first (a contact in its config file, or
C{--info} with the first node's connection info, from C{crust --data-dir
~/.crust-amp connection-info})::

    python examples/amp_over_crust.py add <PEER_ID> 2 3 --datadir ~/.crust-client
    2 + 3 = 5 (computed by <PEER_ID>)
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory
from twisted.protocols import amp


class Sum(amp.Command):
    arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]
    response = [(b"total", amp.Integer()), (b"by", amp.Unicode())]


class Calculator(amp.AMP):
    @Sum.responder
    def sum(self, a: int, b: int) -> dict:
        return {"total": a + b, "by": str(self.transport.getHost().peer_id)}


def escape(value: str) -> str:
    """An endpoint string option value: colons and backslashes escaped."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


async def serve(reactor, args) -> None:
    endpoint = serverFromString(reactor, f"crust:calculator:datadir={escape(args.datadir)}")
    port = await endpoint.listen(Factory.forProtocol(Calculator))
    print(f"AMP calculator at {port.getHost()}", flush=True)
    await defer.Deferred()  # until interrupted


async def add(reactor, args) -> None:
    text = f"crust:{args.peer}:calculator:datadir={escape(args.datadir)}:timeout={args.timeout:g}"
    if args.info:
        text += f":info={escape(args.info)}"
    client = await clientFromString(reactor, text).connect(Factory.forProtocol(amp.AMP))
    result = await client.callRemote(Sum, a=args.a, b=args.b)
    print(f"{args.a} + {args.b} = {result['total']} (computed by {result['by']})", flush=True)
    client.transport.loseConnection()


def main(reactor, *argv: str):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="answer Sum calls from peers")
    s.add_argument("--datadir", required=True, help="the crust node's data directory")
    a = sub.add_parser("add", help="ask a peer to add two numbers")
    a.add_argument("peer", help="the serving node's peer id")
    a.add_argument("a", type=int)
    a.add_argument("b", type=int)
    a.add_argument("--datadir", required=True, help="this side's crust node's data directory")
    a.add_argument("--info", help="a file holding the serving node's connection info")
    a.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    run = serve if args.command == "serve" else add
    return defer.ensureDeferred(run(reactor, args))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
