#!/usr/bin/env python3
"""
A twisted.web site served to a peer over crust, and fetched by peer id.

Nothing here imports crust: the C{crust:} endpoint strings do it all
(doc/streams.md).  On the serving machine::

    python examples/web_over_crust.py serve --datadir ~/.crust-web
    serving http://<PEER_ID>/ over crust (crust:<PEER_ID>:web)

(or, for a directory of files, Twisted's own web server with a crust
listener: C{twist web --listen crust:web:datadir=$HOME/.crust-web --path .}).

On the other machine, whose node knows the first one (a contact in its
config file, or its connection info in a file: C{crust --data-dir
~/.crust-web connection-info > web.json} on the serving machine)::

    python examples/web_over_crust.py fetch <PEER_ID> / --datadir ~/.crust-client [--info web.json]

Each data directory holds a crust node's identity and config file (created
on first use, as for C{twistd crust node}); the node runs as long as the
program does.
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer


class Hello(Resource):
    """Says who is asking: the peer id crust authenticated."""

    isLeaf = True

    def render_GET(self, request):
        peer = request.transport.getPeer()  # the stream's address: the peer's id and the service
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"hello {peer.peer_id}, you asked for {request.path.decode()!r} over crust\n".encode()


@implementer(IAgentEndpointFactory)
class CrustURLs:
    """http://PEER_ID/path -> a stream to that peer's service C{web}."""

    def __init__(self, reactor, options: str) -> None:
        self.reactor = reactor
        self.options = options

    def endpointForURI(self, uri):
        return clientFromString(self.reactor, f"crust:{uri.host.decode()}:web{self.options}")


def escape(value: str) -> str:
    """An endpoint string option value: colons and backslashes escaped."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


async def serve(reactor, args) -> None:
    port = await serverFromString(reactor, f"crust:web:datadir={escape(args.datadir)}").listen(Site(Hello()))
    host = port.getHost()
    print(f"serving http://{host.peer_id}/ over crust ({host})", flush=True)
    await defer.Deferred()  # until interrupted


async def fetch(reactor, args) -> None:
    options = f":datadir={escape(args.datadir)}:timeout={args.timeout:g}"
    if args.info:
        options += f":info={escape(args.info)}"
    agent = Agent.usingEndpointFactory(reactor, CrustURLs(reactor, options))
    response = await agent.request(b"GET", f"http://{args.peer}{args.path}".encode())
    body = await readBody(response)
    print(f"{response.code} {response.phrase.decode()}", flush=True)
    sys.stdout.write(body.decode("utf-8", "replace"))
    sys.stdout.flush()


def main(reactor, *argv: str):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the site to peers")
    s.add_argument("--datadir", required=True, help="the crust node's data directory")
    f = sub.add_parser("fetch", help="fetch a page from a peer")
    f.add_argument("peer", help="the serving node's peer id")
    f.add_argument("path", nargs="?", default="/")
    f.add_argument("--datadir", required=True, help="this side's crust node's data directory")
    f.add_argument("--info", help="a file holding the serving node's connection info")
    f.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    run = serve if args.command == "serve" else fetch
    return defer.ensureDeferred(run(reactor, args))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
