#!/usr/bin/env python3
"""Lab agent: a crust ``Service`` driven by JSON commands, reporting JSON events.

    node.py [--listen-host 0.0.0.0] [--listen-port N] [--network NAME]
            [--no-port-mapping] [--wait-mapping S] [--accept-bootstrap]
            [--no-reachability-test] [--serve-rendezvous] [--discovery] [--echo]
            [--connect-timeout S] [--bootstrap-timeout S] [--deadline S]
            [--turn udp:IP:PORT,USER,PASSWORD] [--turn-lifetime S] [--turn-option NAME=SECONDS]
            [--serve-relay] [--relay-delay S] [--relay-limit NAME=VALUE] [--no-accept-relayed]
            [--upgrade-interval S] [--upgrade-interval-max S] [--heartbeat S] [--inactivity S]

Once listening it prints ``{"event": "ready", "peer_id", "info" (the public
connection info JSON), "listen", "external", "mappings"}``. With port mapping
on (the default, as in ``Config``) and ``--wait-mapping S`` it first waits
up to S seconds for the port mapper's first round, so that ``info`` carries
the mapped address if there is one.

Commands on stdin, one JSON object a line (``"cmd"`` names it):

    {"cmd": "info"}                            -> {"event": "info", ...} as "ready"
    {"cmd": "connect", "info": "<JSON>"}       -> "connected" or "connect_error"
    {"cmd": "connect", "peer": ID}             -> the same, connecting by peer id
    {"cmd": "disconnect", "peer": ID}          -> {"event": "disconnected", "peer", "had"}
    {"cmd": "wait_gone", "peer": ID, "timeout": S}   -> {"event": "gone", "peer", "gone", "seconds"}
    {"cmd": "send", "peer": ID, "data": TEXT, "priority": 1}   -> "sent" / "send_error"
    {"cmd": "bootstrap", "role": "node"|"client"}    -> "bootstrapped" or "bootstrap_error"
    {"cmd": "netcheck"}                        -> "netcheck" (the report, its text, seconds)
    {"cmd": "has_peers_on_lan"}                -> {"event": "has_peers_on_lan", "result"}
    {"cmd": "discover", "window": S}           -> {"event": "discovered", "peers": [...]}
    {"cmd": "peers"}                           -> {"event": "peers", "peers": [peer_details...]}
    {"cmd": "send_blob", "peer": ID, "size": N, "seed": S}  -> "sent" (with "size", "sha256") / "send_error"
    {"cmd": "turn"}                            -> {"event": "turn", "status": [...], "counters": [...]}
    {"cmd": "path", "peer": ID}                -> {"event": "path", "peer", "details" (peer_details or null)}
    {"cmd": "relay"}                           -> {"event": "relay", "stats": Service.relay.stats()}
    {"cmd": "stream", "peer": ID, "tag": T, "interval": S, "priorities": [0, 1, 2, 3]}   -> "streaming"
    {"cmd": "stream_stop"}                     -> {"event": "stream_stopped", "tag", "sent": {priority: count}}
    {"cmd": "stream_report"}                   -> {"event": "stream_report", "received": {tag: {priority: [n]}}}
    {"cmd": "stop"}                            -> "stopped" (after stopService), then exit

``connect`` with ``"info"`` calls ``service.connect(our_info, info)`` (the
two-argument form); with ``"peer"`` it calls ``service.connect(PeerId)``
(one argument: connect by peer id through a common peer). Both report
``seconds`` (from the command to the result); ``connected`` also has
``transport``, ``path`` (``peer_details(peer).get("path")``, None where the
library has none) and ``details`` (all of ``peer_details``);
``connect_error`` has ``error``, ``error_type``, ``reasons``
(``ConnectFailed.reasons``, None for other errors) and, when the library's
``Service.connect`` cannot take the call at all, ``api_missing`` naming the
missing API. ``disconnected`` says whether there was a connection
(``had``); ``wait_gone`` waits (bounded) until the peer has no connection
at all, closing ones included. ``bootstrap`` (optional ``role``, default the
library's) reports ``seconds`` and ``role``; ``bootstrap_error`` also
``error_type``.

Every ``ICrustObserver`` event is printed as it happens (``new_message``
with the data as text, or for a message over 4096 bytes its ``size`` and
``sha256`` instead); with ``--echo`` each message is answered with
``"echo:" + data``.

``--turn`` (repeatable) configures a TURN server (``Config.turn_servers``);
``--turn-lifetime`` asks it for allocations of that many seconds (the
TURN client's ``lifetime`` option), ``--turn-option`` (repeatable) sets
another ``TurnOptions`` field to a number (``permission_refresh=8``).
``ready``/``info`` then carry ``turn``
(each allocation: ``TurnClient.status()``), and ``{"cmd": "turn"}`` reports
it with the clients' counters. ``send_blob`` sends ``size`` bytes of
pseudo-random data from ``seed`` as one message (priority 1).

Relays: ``--serve-relay`` sets ``Config.serve_relay``, ``--relay-delay``
``Config.relay_delay``, ``--relay-limit`` (repeatable) a ``RelayLimits``
field (``bytes_per_circuit=262144``), ``--no-accept-relayed`` turns
``Config.accept_relayed`` off; ``--upgrade-interval`` and
``--upgrade-interval-max`` set how often a relayed connection tries for a
direct path, ``--heartbeat`` and ``--inactivity`` the liveness settings.

``stream`` sends numbered messages to the peer, one every ``interval``
seconds, cycling through ``priorities`` (the text ``stream T P N``: tag T,
priority P, the Nth message of that tag and priority, from 0); ``stream_stop``
stops it and says how many of each priority went out (and how many ``send``
refused). Stream messages that arrive are not printed: they are kept in
arrival order, per tag and priority, and ``stream_report`` gives them.
"""

import argparse
import dataclasses
import hashlib
import inspect
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _agent import emit, run  # noqa: E402
from twisted.internet import defer, reactor, stdio, task  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402
from zope.interface import implementer  # noqa: E402

from crust import Address, Config, Identity, PeerId, Service  # noqa: E402
from crust.config import HardCodedContact  # noqa: E402
from crust.interfaces import ICrustObserver  # noqa: E402
from crust.observer import EVENT_NAMES  # noqa: E402


def text(value):
    if isinstance(value, PeerId):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, BaseException):
        return "{}: {}".format(type(value).__name__, value)
    return str(value)


@implementer(ICrustObserver)
class Printer:
    """Prints every event; answers messages when ``echo``."""

    def __init__(self, service, echo):
        self.service = service
        self.echo = echo
        self.streamed = {}  # tag -> priority -> the numbers of stream messages received, in order

    def __getattr__(self, name):
        if name not in EVENT_NAMES:
            raise AttributeError(name)

        def report(*args):
            emit(name, args=[text(a) for a in args])
        return report

    def new_message(self, peer_id, data):
        if data.startswith(b"stream "):
            _, tag, priority, number = data.decode().split(" ")
            self.streamed.setdefault(tag, {}).setdefault(int(priority), []).append(int(number))
            return
        if len(data) > 4096:
            emit("new_message", peer=str(peer_id), size=len(data), sha256=hashlib.sha256(data).hexdigest())
            return
        emit("new_message", peer=str(peer_id), data=text(data))
        if self.echo and not data.startswith(b"echo:"):
            self.service.send(peer_id, b"echo:" + data, 1)


def connect_api_missing(service, target):
    """The API named if ``service.connect(target)`` (one argument) cannot be called."""
    try:
        inspect.signature(service.connect).bind(target)
    except TypeError:
        return "Service.connect(target) with one argument (connect by peer id)"
    except ValueError:  # no signature to inspect: just try it
        return None
    return None


def describe(service):
    mapper = service.port_mapper
    mappings = []
    if mapper is not None:
        mappings = [{"transport": m.transport, "internal_port": m.internal_port,
                     "external": str(m.external), "method": m.method, "lifetime": m.lifetime}
                    for m in mapper.mappings.values()]
    turn = getattr(service, "turn", None)
    return {
        "peer_id": str(service.peer_id),
        "turn": turn.status() if turn is not None else [],
        "listen": [str(a) for a in service.listen_addresses],
        "external": [str(a) for a in service.external_addresses],
        "mappings": mappings,
        "probes": ([{"method": p.method, "answered": p.answered, "error": p.error}
                    for p in mapper.probe_history] if mapper is not None else []),
    }


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, service, done, printer):
        self.service = service
        self.done = done
        self.printer = printer
        self.stream = None

    def lineReceived(self, line):
        line = line.strip()
        if not line:
            return
        try:
            command = json.loads(line)
            name = command["cmd"]
            handler = getattr(self, "do_" + name)
        except (ValueError, KeyError, AttributeError, TypeError) as e:
            emit("bad_command", line=line.decode("utf-8", "replace"), error=str(e))
            return
        try:
            d = defer.maybeDeferred(handler, command)
        except Exception as e:  # pragma: no cover - maybeDeferred catches
            emit("command_failed", cmd=name, error=text(e))
            return
        d.addErrback(lambda f: emit("command_failed", cmd=name, error=text(f.value)))

    def connectionLost(self, reason=None):
        self.do_stop({})  # the test went away: stop cleanly all the same

    @defer.inlineCallbacks
    def do_info(self, command):
        info = yield self.service.prepare_connection_info()
        emit("info", info=info.public.to_json(), **describe(self.service))

    @defer.inlineCallbacks
    def do_connect(self, command):
        start = time.monotonic()
        try:
            if "peer" in command:
                peer = PeerId.from_text(command["peer"])
                missing = connect_api_missing(self.service, peer)
                if missing:
                    emit("connect_error", error="the library has no " + missing, error_type="TypeError",
                         reasons=None, api_missing=missing, seconds=round(time.monotonic() - start, 4))
                    return
                peer = yield self.service.connect(peer)
            else:
                ours = yield self.service.prepare_connection_info()
                peer = yield self.service.connect(ours, command["info"])
        except Exception as e:
            reasons = getattr(e, "reasons", None)
            emit("connect_error", error=text(e), error_type=type(e).__name__,
                 reasons=[text(r) for r in reasons] if reasons is not None else None,
                 seconds=round(time.monotonic() - start, 4))
        else:
            seconds = round(time.monotonic() - start, 4)
            details = self.service.peer_details(peer) or {}
            emit("connected", peer=str(peer), address=text(self.service.peer_address(peer)),
                 transport=details.get("transport"), path=details.get("path"), details=details,
                 seconds=seconds)

    def do_disconnect(self, command):
        peer = PeerId.from_text(command["peer"])
        emit("disconnected", peer=str(peer), had=bool(self.service.disconnect(peer)))

    @defer.inlineCallbacks
    def do_wait_gone(self, command):
        peer = PeerId.from_text(command["peer"])
        start = time.monotonic()
        deadline = start + float(command.get("timeout", 10.0))
        while self.service.peer_details(peer) is not None and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.02, lambda: None)
        emit("gone", peer=str(peer), gone=self.service.peer_details(peer) is None,
             seconds=round(time.monotonic() - start, 4))

    def do_send(self, command):
        peer = PeerId.from_text(command["peer"])
        try:
            self.service.send(peer, command["data"].encode("utf-8"), command.get("priority", 1))
        except Exception as e:
            emit("send_error", error=text(e))
        else:
            emit("sent", peer=str(peer))

    @defer.inlineCallbacks
    def do_bootstrap(self, command):
        start = time.monotonic()
        role = command.get("role")
        try:
            if role is None:
                peer = yield self.service.bootstrap()
            else:
                peer = yield self.service.bootstrap(role=role)
        except Exception as e:
            emit("bootstrap_error", error=text(e), error_type=type(e).__name__, role=role,
                 seconds=round(time.monotonic() - start, 4))
        else:
            to = self.service.bootstrapped_to
            emit("bootstrapped", peer=str(peer), address=text(to[1]) if to else None,
                 connected=[str(p) for p in self.service.connected_peers()], role=role,
                 seconds=round(time.monotonic() - start, 4))

    @defer.inlineCallbacks
    def do_has_peers_on_lan(self, command):
        result = yield self.service.has_peers_on_lan()
        emit("has_peers_on_lan", result=result)

    @defer.inlineCallbacks
    def do_discover(self, command):
        requester = self.service.discovery_requester
        if requester is None:
            emit("discovered", peers=[], error="discovery not started")
            return
        destinations = requester._destinations()
        peers = yield requester.discover(command.get("window"))
        emit("discovered", destinations=["{}:{}".format(*d) for d in destinations],
             peers=[{"peer_id": str(p.peer_id), "addresses": [str(a) for a in p.addresses]}
                    for p in peers],
             stats=dict(requester.stats))

    @defer.inlineCallbacks
    def do_netcheck(self, command):
        start = reactor.seconds()
        report = yield self.service.netcheck()
        emit("netcheck", seconds=round(reactor.seconds() - start, 3), report=report.to_dict(),
             text=report.format_text())

    def do_send_blob(self, command):
        peer = PeerId.from_text(command["peer"])
        rng = random.Random(command.get("seed", 0))
        data = bytes(rng.getrandbits(8) for _ in range(int(command["size"])))
        try:
            self.service.send(peer, data, command.get("priority", 1))
        except Exception as e:
            emit("send_error", error=text(e))
        else:
            emit("sent", peer=str(peer), size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def do_turn(self, command):
        turn = getattr(self.service, "turn", None)
        emit("turn", status=turn.status() if turn is not None else [],
             counters=[dict(c.counters) for c in turn.clients] if turn is not None else [],
             relays=dict(turn.counters) if turn is not None else {})

    def do_path(self, command):
        emit("path", peer=command["peer"], details=self.service.peer_details(PeerId.from_text(command["peer"])))

    def do_relay(self, command):
        relay = getattr(self.service, "relay", None)
        emit("relay", stats=relay.stats() if relay is not None else None)

    def do_stream(self, command):
        if self.stream is not None:
            self.stream["loop"].stop()
        peer = PeerId.from_text(command["peer"])
        priorities = command.get("priorities", [0, 1, 2, 3])
        tag = command.get("tag", "s").encode()
        state = {"sent": {p: 0 for p in priorities}, "refused": {p: 0 for p in priorities}, "turn": 0,
                 "tag": tag.decode()}

        def one():
            priority = priorities[state["turn"] % len(priorities)]
            state["turn"] += 1
            number = state["sent"][priority]
            try:
                self.service.send(peer, b"stream %s %d %d" % (tag, priority, number), priority)
            except Exception:
                state["refused"][priority] += 1
            else:
                state["sent"][priority] += 1

        state["loop"] = loop = task.LoopingCall(one)
        loop.start(float(command.get("interval", 0.01)))
        self.stream = state
        emit("streaming", peer=str(peer), tag=state["tag"], priorities=priorities)

    def do_stream_stop(self, command):
        state, self.stream = self.stream, None
        if state is None:
            emit("stream_stopped", sent=None)
            return
        state["loop"].stop()
        emit("stream_stopped", tag=state["tag"], sent=state["sent"], refused=state["refused"])

    def do_stream_report(self, command):
        emit("stream_report", received=self.printer.streamed)

    def do_peers(self, command):
        emit("peers", peers=[self.service.peer_details(p) for p in self.service.connected_peers()])

    def do_stop(self, command):
        if self.done.called or getattr(self, "_stopping", False):
            return
        self._stopping = True
        d = defer.maybeDeferred(self.service.stopService)

        def stopped(result):
            emit("stopped", error=text(result.value) if hasattr(result, "value") else None)
            if not self.done.called:
                self.done.callback(None)

        d.addBoth(stopped)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen-host", default="0.0.0.0")
    parser.add_argument("--listen-port", type=int)
    parser.add_argument("--network")
    parser.add_argument("--no-port-mapping", action="store_true")
    parser.add_argument("--wait-mapping", type=float, default=0.0)
    parser.add_argument("--accept-bootstrap", action="store_true")
    parser.add_argument("--no-reachability-test", action="store_true")
    parser.add_argument("--serve-rendezvous", action="store_true",
                        help="forward hole-punching exchanges between two peers connected to us")
    parser.add_argument("--discovery", action="store_true")
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--bootstrap-timeout", type=float, default=10.0)
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument("--stun", action="append", default=[], help="a STUN server, udp:IP:PORT (repeatable)")
    parser.add_argument("--contact", action="append", default=[], help="a hard-coded contact, PEER_ID@ADDRESS")
    parser.add_argument("--turn", action="append", default=[], help="a TURN server, udp:IP:PORT,USER,PASSWORD")
    parser.add_argument("--turn-lifetime", type=int, help="the allocation lifetime to ask TURN servers for")
    parser.add_argument("--turn-option", action="append", default=[],
                        help="a TurnOptions field and a number of seconds, NAME=VALUE (repeatable)")
    parser.add_argument("--serve-relay", action="store_true", help="carry circuits between two peers connected to us")
    parser.add_argument("--relay-delay", type=float)
    parser.add_argument("--relay-limit", action="append", default=[],
                        help="a RelayLimits field and a number, NAME=VALUE (repeatable)")
    parser.add_argument("--no-accept-relayed", action="store_true")
    parser.add_argument("--upgrade-interval", type=float)
    parser.add_argument("--upgrade-interval-max", type=float)
    parser.add_argument("--heartbeat", type=float)
    parser.add_argument("--inactivity", type=float)
    args = parser.parse_args()
    extra = {}
    fields = {f.name for f in dataclasses.fields(Config)}
    for flag, name, value in (("--serve-relay", "serve_relay", True if args.serve_relay else None),
                              ("--relay-delay", "relay_delay", args.relay_delay),
                              ("--no-accept-relayed", "accept_relayed", False if args.no_accept_relayed else None),
                              ("--upgrade-interval", "upgrade_interval", args.upgrade_interval),
                              ("--upgrade-interval-max", "upgrade_interval_max", args.upgrade_interval_max),
                              ("--heartbeat", "heartbeat_interval", args.heartbeat),
                              ("--inactivity", "inactivity_timeout", args.inactivity)):
        if value is None:
            continue
        if name not in fields:
            emit("unsupported", option=flag, error="the library has no Config." + name)
            return 2
        extra[name] = value
    if args.relay_limit:
        from crust.config import RelayLimits

        limits = {}
        for option in args.relay_limit:
            name, value = option.split("=", 1)
            limits[name] = None if value == "none" else float(value) if "." in value else int(value)
        extra["relay_limits"] = RelayLimits(**limits)
    if args.turn:
        if "turn_servers" not in {f.name for f in dataclasses.fields(Config)}:
            emit("unsupported", option="--turn", error="the library has no Config.turn_servers")
            return 2
        from crust.config import TurnServer

        servers = []
        for spec in args.turn:
            address, username, password = spec.split(",", 2)
            servers.append(TurnServer(Address.parse(address), username, password))
        extra["turn_servers"] = tuple(servers)
    if args.serve_rendezvous:
        if "serve_rendezvous" not in {f.name for f in dataclasses.fields(Config)}:
            emit("unsupported", option="--serve-rendezvous",
                 error="the library has no Config.serve_rendezvous (rendezvous for hole punching)")
            return 2
        extra["serve_rendezvous"] = True
    config = Config(
        network_name=args.network, listen_host=args.listen_host, listen_port=args.listen_port,
        enable_port_mapping=not args.no_port_mapping, accept_bootstrap=args.accept_bootstrap,
        external_reachability_test=not args.no_reachability_test,
        connect_timeout=args.connect_timeout, bootstrap_timeout=args.bootstrap_timeout,
        stun_servers=tuple(Address.parse(a) for a in args.stun),
        hard_coded_contacts=tuple(HardCodedContact(PeerId.from_text(c.split("@")[0]), Address.parse(c.split("@")[1]))
                                  for c in args.contact), **extra)
    service = Service(Identity.generate(), config, reactor)
    if args.turn_lifetime is not None:
        service.turn.configure(lifetime=args.turn_lifetime)
    for option in args.turn_option:
        name, value = option.split("=", 1)
        service.turn.configure(**{name: float(value)})
    printer = Printer(service, args.echo)
    service.add_observer(printer)
    done = defer.Deferred()

    @defer.inlineCallbacks
    def go():
        stdio.StandardIO(Commands(service, done, printer))
        service.startService()
        if args.discovery:
            service.start_service_discovery(listen=True)
        yield service.start_listening()
        if service.port_mapper is not None and args.wait_mapping > 0:
            round_done = service.port_mapper.refresh()
            round_done.addTimeout(args.wait_mapping, reactor)
            try:
                yield round_done
            except defer.TimeoutError:
                emit("mapping_timeout", seconds=args.wait_mapping)
        info = yield service.prepare_connection_info()
        emit("ready", info=info.public.to_json(), **describe(service))
        yield done

    return run(go, args.deadline)


if __name__ == "__main__":
    sys.exit(main())
