"""
The standard control commands and L{node_commands}, a registry holding them.

Each handler takes C{(protocol, request)} (a
L{crust.node.control.protocol.ControlProtocol} and a
L{crust.node.control.protocol.Request}) and returns a result or a Deferred of one;
C{protocol.node} is the node (see L{crust.node.node.Node}: C{service}, C{events},
C{describe()}, C{connection_info()}, C{connect()}).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.defer import Deferred

from crust.connection_info import PubConnectionInfo
from crust.node.control.protocol import (
    BAD_REQUEST,
    MAX_CONNECT_TIMEOUT,
    NOT_CONNECTED,
    PROTOCOL_VERSION,
    Command,
    CommandRegistry,
    ControlProtocol,
    Request,
    RequestError,
    plain,
)
from crust.errors import InvalidConnectionInfo
from crust.observer import EVENT_NAMES


def _cmd_ping(proto: ControlProtocol, req: Request) -> dict[str, Any]:
    req.allow()
    return {"pong": True, "protocol": PROTOCOL_VERSION}


def _cmd_help(proto: ControlProtocol, req: Request) -> dict[str, Any]:
    req.allow()
    return {"commands": proto.factory.commands.describe(), "protocol": PROTOCOL_VERSION}


def _cmd_info(proto: ControlProtocol, req: Request) -> Deferred:
    req.allow()
    return proto.node.describe()


def _cmd_peers(proto: ControlProtocol, req: Request) -> dict[str, Any]:
    req.allow()
    service = proto.node.service
    peers = []
    for peer_id in sorted(service.connected_peers()):
        details = service.peer_details(peer_id)
        if details is not None:
            peers.append({k: plain(v) for k, v in details.items()})
    return {"peers": peers}


def _cmd_connection_info(proto: ControlProtocol, req: Request) -> Deferred:
    req.allow()
    return proto.node.connection_info().addCallback(
        lambda info: {"connection_info": json.loads(info.to_json())})


def _cmd_connect(proto: ControlProtocol, req: Request) -> Deferred:
    req.allow("info", "peer_id", "timeout")
    target: Any
    if req.args.get("peer_id") is not None:
        if req.args.get("info") is not None:
            raise RequestError(BAD_REQUEST, "'connect' takes 'info' or 'peer_id', not both")
        target = req.peer_id()
    else:
        raw = req.args.get("info")
        try:
            if isinstance(raw, dict):
                target = PubConnectionInfo.from_dict(raw)
            elif isinstance(raw, str):
                target = PubConnectionInfo.from_json(raw)
            else:
                raise RequestError(BAD_REQUEST, "'connect' needs 'info' (connection info: a JSON object, or its "
                                                "text) or 'peer_id' (to connect through a common peer)")
        except InvalidConnectionInfo as e:
            raise RequestError(BAD_REQUEST, f"bad connection info: {e}") from None
    timeout = req.number("timeout", None, 0, MAX_CONNECT_TIMEOUT)
    node = proto.node

    def connected(peer_id: Any) -> dict[str, Any]:
        details = node.service.peer_details(peer_id) if node.service is not None else None
        result: dict[str, Any] = {"peer_id": str(peer_id)}
        if details is not None:
            result.update(transport=details.get("transport"), address=details.get("address"),
                          path=details.get("path"))
        return result

    return node.connect(target, timeout).addCallback(connected)


def _cmd_send(proto: ControlProtocol, req: Request) -> dict[str, Any]:
    req.allow("peer_id", "text", "data_b64", "priority", "signed")
    peer_id = req.peer_id()
    has_text, has_data = req.args.get("text") is not None, req.args.get("data_b64") is not None
    if has_text == has_data:
        raise RequestError(BAD_REQUEST, "'send' needs exactly one of 'text' (a string) or 'data_b64' (base64)")
    if has_text:
        data = req.string("text").encode("utf-8", "surrogatepass")
    else:
        try:
            data = base64.b64decode(req.string("data_b64"), validate=True)
        except ValueError:
            raise RequestError(BAD_REQUEST, "'data_b64' is not valid base64") from None
    priority = req.integer("priority", 1, 0, 255)
    signed = req.args.get("signed", False)
    if not (signed is False or signed is True or signed == "batch"):
        raise RequestError(BAD_REQUEST, "'signed' must be false, true or \"batch\"")
    service = proto.node.service
    service.send(peer_id, data, priority, signed=signed)
    result = {"peer_id": str(peer_id), "size": len(data), "priority": priority,
              "queued_bytes": service.queued_bytes(peer_id)}
    if signed:
        result["signed"] = signed
    return result


def _cmd_disconnect(proto: ControlProtocol, req: Request) -> dict[str, Any]:
    req.allow("peer_id")
    peer_id = req.peer_id()
    if not proto.node.service.disconnect(peer_id):
        raise RequestError(NOT_CONNECTED, f"not connected to {peer_id}")
    return {"peer_id": str(peer_id), "disconnected": True}


def _cmd_watch(proto: ControlProtocol, req: Request) -> dict[str, Any]:
    req.allow("events")
    wanted = req.args.get("events")
    if wanted is None:
        events = list(EVENT_NAMES)
    else:
        if not isinstance(wanted, list) or not all(isinstance(e, str) for e in wanted):
            raise RequestError(BAD_REQUEST, "'events' must be a list of event names")
        unknown = [e for e in wanted if e not in EVENT_NAMES]
        if unknown:
            raise RequestError(BAD_REQUEST, f"unknown event {unknown[0]!r}; events: {', '.join(EVENT_NAMES)}")
        events = [e for e in EVENT_NAMES if e in wanted]
    proto.start_watch(req.id, events)
    return {"watching": events}


def _cmd_unwatch(proto: ControlProtocol, req: Request) -> dict[str, Any]:
    req.allow()
    proto._stop_watch()
    return {"watching": []}


def _cmd_bootstrap(proto: ControlProtocol, req: Request) -> Deferred:
    req.allow("blacklist", "role")
    blacklist = req.args.get("blacklist") or []
    if not isinstance(blacklist, list) or not all(isinstance(a, str) for a in blacklist):
        raise RequestError(BAD_REQUEST, "'blacklist' must be a list of addresses (tcp:ip:port or ip)")
    role = req.args.get("role")
    if role is not None and role not in ("node", "client"):
        raise RequestError(BAD_REQUEST, "'role' must be 'node' or 'client'")
    node = proto.node

    def done(peer_id: Any) -> dict[str, Any]:
        to = node.service.bootstrapped_to
        return {"peer_id": str(peer_id), "address": str(to[1]) if to else None}

    return node.bootstrap(blacklist, role).addCallback(done)


def _cmd_cache(proto: ControlProtocol, req: Request) -> dict[str, Any]:
    req.allow()
    cache = proto.node.service.bootstrap_cache
    if cache is None:
        return {"peers": []}
    return {"peers": [
        {"peer_id": str(e.peer_id), "address": str(e.address), "last_seen": e.last_seen,
         "last_success": getattr(e, "last_success", None), "failures": getattr(e, "failures", 0),
         "stale": cache.is_stale(e)}
        for e in cache.entries()
    ]}


def _cmd_netcheck(proto: ControlProtocol, req: Request) -> Deferred:
    req.allow()
    return proto.node.service.netcheck().addCallback(
        lambda report: {"report": report.to_dict(), "text": report.format_text()})


STANDARD_COMMANDS = (
    Command("ping", _cmd_ping, "check the node answers"),
    Command("help", _cmd_help, "list the commands"),
    Command("info", _cmd_info, "peer id, addresses, connection info, state"),
    Command("peers", _cmd_peers, "the connected peers and their details"),
    Command("connection-info", _cmd_connection_info, "our public connection info, to hand to a peer"),
    Command("connect", _cmd_connect, "connect to a peer: info (connection info) or peer_id (through a common "
                                     "peer), timeout (s)"),
    Command("send", _cmd_send, "send a message: peer_id, text or data_b64, priority (default 1), "
                               "signed (false, true or \"batch\")"),
    Command("disconnect", _cmd_disconnect, "close the connection to peer_id"),
    Command("watch", _cmd_watch, "stream events on this connection: events (names; default all)"),
    Command("unwatch", _cmd_unwatch, "stop streaming events"),
    Command("bootstrap", _cmd_bootstrap, "bootstrap to the network: blacklist (addresses), role (node|client)"),
    Command("cache", _cmd_cache, "the bootstrap cache, most recently used first"),
    Command("netcheck", _cmd_netcheck, "external addresses, NAT type, port mapping, with timings"),
)


def node_commands() -> CommandRegistry:
    """A fresh registry holding the standard commands (add more with C{register})."""
    return CommandRegistry(STANDARD_COMMANDS)
