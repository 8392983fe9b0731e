#!/usr/bin/env python3
"""
A tiny chat over crust: a Twisted program embedding L{crust.Service} in its
own L{MultiService}.

On the first machine::

    python embed.py
    connection info: {"crust":1,"id":"...","addrs":["tcp:192.0.2.10:40123", ...]}

Copy that JSON line to the other person (chat, mail, ...).  On the second
machine::

    python embed.py '{"crust":1,"id":"...","addrs":[...]}'

Lines typed on standard input go to every connected peer; messages that
arrive are printed.  End with Ctrl-D (or Ctrl-C).  Options: --listen-host,
--port, --key (keep the same peer id across runs), --network, --verbose.
"""

from __future__ import annotations

import argparse
import sys

from twisted.application.service import MultiService
from twisted.internet import stdio, task
from twisted.internet.defer import Deferred
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineReceiver

import crust
from crust.errors import CrustError


def say(text: str) -> None:
    print(text, flush=True)


class Chat(crust.CrustObserver):
    """Prints what happens on the crust side."""

    def connect_success(self, peer_id: crust.PeerId) -> None:
        say(f"* connected to {peer_id}")

    def lost_peer(self, peer_id: crust.PeerId, reason: str) -> None:
        say(f"* lost {peer_id}: {reason}")

    def new_message(self, peer_id: crust.PeerId, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        say(f"<{peer_id.short()}> {''.join(c if c.isprintable() else '?' for c in text)}")


class Keyboard(LineReceiver):
    """Sends each line typed to every connected peer; fires C{done} at end of input."""

    delimiter = b"\n"

    def __init__(self, service: crust.Service, done: Deferred) -> None:
        self.service = service
        self.done = done

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        peers = self.service.connected_peers()
        if not peers:
            say("* nobody is connected yet")
        for peer_id in peers:
            try:
                self.service.send(peer_id, line, priority=1)
            except CrustError as e:
                say(f"* could not send to {peer_id.short()}: {e}")

    def connectionLost(self, reason: object = None) -> None:
        if not self.done.called:
            self.done.callback(None)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A tiny chat over crust.")
    parser.add_argument("their_info", nargs="?", help="the other side's connection info (one JSON line)")
    parser.add_argument("--listen-host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="TCP port to listen on (default random)")
    parser.add_argument("--key", help="identity key file (created if missing); default: a new identity each run")
    parser.add_argument("--network", help="network name (both sides must use the same)")
    parser.add_argument("--verbose", action="store_true", help="log crust's events to stderr")
    return parser.parse_args(argv)


async def main(reactor, *argv: str) -> None:
    args = parse_args(list(argv))
    if args.verbose:
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

    identity = crust.Identity.load_or_create(args.key) if args.key else crust.Identity.generate()
    config = crust.Config(listen_host=args.listen_host, listen_port=args.port, network_name=args.network)

    # our program's service tree, with the crust service in it
    app = MultiService()
    node = crust.Service(identity, config, reactor=reactor)
    node.add_observer(Chat())
    node.setServiceParent(app)
    app.startService()
    reactor.addSystemEventTrigger("before", "shutdown", app.stopService)  # Ctrl-C: close cleanly

    our_info = await node.prepare_connection_info()
    say(f"connection info: {our_info.public.to_json()}")

    end_of_input: Deferred = Deferred()
    stdio.StandardIO(Keyboard(node, end_of_input), reactor=reactor)

    if args.their_info:
        try:
            peer_id = await node.connect(our_info, args.their_info)
        except CrustError as e:
            say(f"* could not connect: {e}")
            raise SystemExit(1)
        say(f"* talking to {peer_id} (type lines; Ctrl-D ends)")
    else:
        say("* waiting for a peer to connect (give them the connection info above)")

    await end_of_input


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
