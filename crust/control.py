"""
The node's local control interface: newline-delimited JSON over a UNIX socket.

One request per line, one response per request (responses carry the
request's C{id}; slow requests like C{connect} may be answered out of order)::

    -> {"id": 1, "cmd": "info"}
    <- {"id": 1, "ok": true, "result": {"peer_id": "...", ...}}
    -> {"id": 2, "cmd": "send", "peer_id": "...", "text": "hi", "priority": 1}
    <- {"id": 2, "ok": false, "code": "not-connected", "error": "not connected to ..."}

After C{{"cmd": "watch"}} is answered, event lines follow on the same
connection until C{{"cmd": "unwatch"}} or the connection ends; they have an
C{"event"} key and no C{"ok"}::

    <- {"event": "new_message", "id": 3, "time": 1700000000.1, "peer_id": "...", "size": 2, "text": "hi"}

Bounds: a request line is at most L{ControlFactory.max_request} bytes (over
that: a C{too-large} error and the connection is closed); at most
L{MAX_IN_FLIGHT} requests per connection and L{MAX_CONNECTIONS}
connections.  A reader too slow for the events it watches loses events (an
C{events_dropped} line says how many) rather than growing the node's memory.
Malformed requests get an error response; nothing a client sends stops the
node.  The protocol is documented for users in doc/node.md.

The socket file is mode 0600 inside the data directory (mode 0700): only the
node's user can use it, and it is never reachable from the network.

Also here: L{EventHub} (the node's observer, turning events into JSON),
the standard commands (L{node_commands}), L{ControlServer} (the listening
service) and a Twisted client, L{ControlClient} / L{connect_control}.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterable, Optional

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from crust.address import Address
from crust.connection_info import PubConnectionInfo
from crust.datadir import NodeAlreadyRunning, unix_path_problem
from crust.errors import (
    ConnectFailed,
    ConnectToSelf,
    CrustError,
    InvalidConnectionInfo,
    InvalidPriority,
    MessageTooLarge,
    PeerNotConnected,
    SendQueueFull,
    ServiceNotRunning,
)
from crust.identity import PeerId
from crust.interfaces import ICrustObserver
from crust.observer import EVENT_NAMES

PROTOCOL_VERSION = 1
DEFAULT_MAX_REQUEST = 1024 * 1024
MAX_IN_FLIGHT = 32
MAX_CONNECTIONS = 64
MAX_CONNECT_TIMEOUT = 3600.0

# error codes
BAD_REQUEST = "bad-request"
UNKNOWN_COMMAND = "unknown-command"
TOO_LARGE = "too-large"
BUSY = "busy"
NOT_CONNECTED = "not-connected"
MESSAGE_TOO_LARGE = "message-too-large"
QUEUE_FULL = "queue-full"
CONNECT_FAILED = "connect-failed"
TIMEOUT = "timeout"
NOT_RUNNING = "not-running"
FAILED = "failed"
INTERNAL = "internal"


class RequestError(CrustError):
    """A request cannot be carried out; C{code} is one of the error codes above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ControlError(CrustError):
    """An error response, as seen by a client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ControlTimeout(CrustError):
    """An operation did not finish within the time the request allowed."""


# -- events as JSON -------------------------------------------------------------

EVENT_FIELDS: dict[str, tuple[str, ...]] = {name: tuple(ICrustObserver[name].positional) for name in EVENT_NAMES}


def plain(value: Any) -> Any:
    """A JSON-able form of an event argument."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (PeerId, Address)):
        return str(value)
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, Failure):
        value = value.value
    if isinstance(value, BaseException):
        return str(value) or type(value).__name__
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def message_fields(data: bytes) -> dict[str, Any]:
    """C{size}, and C{text} if C{data} is UTF-8, otherwise C{data_b64}."""
    fields: dict[str, Any] = {"size": len(data)}
    try:
        fields["text"] = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        fields["data_b64"] = base64.b64encode(bytes(data)).decode("ascii")
    return fields


def event_to_json(name: str, args: tuple[Any, ...], time: Optional[float] = None) -> dict[str, Any]:
    """The JSON object for observer event C{name} called with C{args}."""
    body: dict[str, Any] = {"event": name}
    if time is not None:
        body["time"] = time
    for field, value in zip(EVENT_FIELDS.get(name, ()), args):
        if name == "new_message" and field == "data":
            body.update(message_fields(value))
        else:
            body[field] = plain(value)
    if name == "connect_failure" and len(args) > 1 and isinstance(args[1], ConnectFailed) and args[1].reasons:
        body["reasons"] = list(args[1].reasons)
    return body


@implementer(ICrustObserver)
class EventHub:
    """
    An observer of a L{crust.Service} that hands every event, as a JSON
    object, to its subscribers (the watching control connections).
    """

    log = Logger()

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call C{callback(event_json)} for every event; returns the unsubscriber."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, name: str, *args: Any) -> None:
        if not self._subscribers:
            return
        body = event_to_json(name, args, self._clock.seconds())
        for callback in list(self._subscribers):
            try:
                callback(body)
            except Exception:
                self.log.failure("event subscriber {callback!r} failed on {event}", callback=callback, event=name)


def _hub_method(name: str) -> Callable[..., None]:
    def method(self: EventHub, *args: Any) -> None:
        self.publish(name, *args)

    method.__name__ = name
    return method


for _name in EVENT_NAMES:
    setattr(EventHub, _name, _hub_method(_name))
del _name


# -- requests ------------------------------------------------------------------------

_MISSING = object()


class Request:
    """One decoded request: its C{id}, C{cmd} and the other keys as C{args}."""

    def __init__(self, id: Any, cmd: str, args: dict[str, Any]) -> None:
        self.id = id
        self.cmd = cmd
        self.args = args

    def allow(self, *names: str) -> None:
        unknown = sorted(set(self.args) - set(names))
        if unknown:
            accepted = ", ".join(names) if names else "none"
            raise RequestError(BAD_REQUEST, f"unknown argument {', '.join(map(repr, unknown))} for "
                                            f"{self.cmd!r} (accepted: {accepted})")

    def _get(self, name: str, default: Any) -> Any:
        value = self.args.get(name, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise RequestError(BAD_REQUEST, f"{self.cmd!r} needs the argument {name!r}")
            return default
        return value

    def string(self, name: str, default: Any = _MISSING, max_len: int = 1 << 30) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise RequestError(BAD_REQUEST, f"{name!r} must be a string")
        if len(value) > max_len:
            raise RequestError(BAD_REQUEST, f"{name!r} is over {max_len} characters")
        return value

    def integer(self, name: str, default: Any, lo: int, hi: int) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(BAD_REQUEST, f"{name!r} must be an integer")
        if not lo <= value <= hi:
            raise RequestError(BAD_REQUEST, f"{name!r} must be between {lo} and {hi}, not {value}")
        return value

    def number(self, name: str, default: Any, lo: float, hi: float) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(BAD_REQUEST, f"{name!r} must be a number")
        if not lo < value <= hi:
            raise RequestError(BAD_REQUEST, f"{name!r} must be more than {lo:g} and at most {hi:g}")
        return float(value)

    def peer_id(self, name: str = "peer_id") -> PeerId:
        text = self.string(name, max_len=256)
        try:
            return PeerId.from_text(text)
        except ValueError as e:
            raise RequestError(BAD_REQUEST, f"bad {name}: {e}") from None


Handler = Callable[["ControlProtocol", Request], Any]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    help: str


class CommandRegistry:
    """The commands a control server answers: name -> handler."""

    def __init__(self, commands: Iterable[Command] = ()) -> None:
        self._commands: dict[str, Command] = {}
        for c in commands:
            self._commands[c.name] = c

    def register(self, name: str, handler: Handler, help: str = "") -> None:
        """Add (or replace) a command; C{handler(protocol, request)} returns a result or a Deferred."""
        self._commands[name] = Command(name, handler, help)

    def get(self, name: str) -> Optional[Command]:
        return self._commands.get(name)

    def names(self) -> list[str]:
        return sorted(self._commands)

    def describe(self) -> dict[str, str]:
        return {name: self._commands[name].help for name in self.names()}

    def copy(self) -> "CommandRegistry":
        return CommandRegistry(self._commands.values())


def _error_for(failure: Failure) -> tuple[str, str]:
    """The error code and text a failure is reported with."""
    e = failure.value
    if isinstance(e, RequestError):
        return e.code, e.message
    table: list[tuple[type, str]] = [
        (PeerNotConnected, NOT_CONNECTED),
        (MessageTooLarge, MESSAGE_TOO_LARGE),
        (SendQueueFull, QUEUE_FULL),
        (InvalidPriority, BAD_REQUEST),
        (InvalidConnectionInfo, BAD_REQUEST),
        (ConnectToSelf, CONNECT_FAILED),
        (ConnectFailed, CONNECT_FAILED),
        (ServiceNotRunning, NOT_RUNNING),
        (ControlTimeout, TIMEOUT),
        (CrustError, FAILED),
    ]
    for cls, code in table:
        if isinstance(e, cls):
            return code, str(e) or type(e).__name__
    return INTERNAL, f"internal error: {type(e).__name__}: {e}"


# -- the protocol -----------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("ascii") + b"\n"


@implementer(IPushProducer)
class ControlProtocol(Protocol):
    """One control connection (server side)."""

    log = Logger()

    def __init__(self, factory: "ControlFactory") -> None:
        self.factory = factory
        self.node = factory.node
        self._buffer = bytearray()
        self._scanned = 0
        self._in_flight = 0
        self._closing = False
        self._gone = False
        self._paused = False
        self._watch_id: Any = None
        self._watch_events: Optional[frozenset[str]] = None
        self._unsubscribe: Optional[Callable[[], None]] = None
        self.dropped_events = 0

    # -- connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        if len(self.factory.connections) > self.factory.max_connections:
            self._send_error(None, BUSY, f"too many control connections (at most {self.factory.max_connections})")
            self._close()
            return
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._gone = True
        self.factory.connections.discard(self)
        self._stop_watch()
        self._buffer = bytearray()

    def _close(self) -> None:
        self._closing = True
        self._stop_watch()
        self.transport.loseConnection()

    # -- IPushProducer: our writes back up, so stop reading and shed events ---------

    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._gone or self._closing:
            return
        self.transport.resumeProducing()
        if self.dropped_events and self._watch_events is not None:
            count, self.dropped_events = self.dropped_events, 0
            self._write({"event": "events_dropped", "id": self._watch_id, "count": count,
                         "reason": "the control client read too slowly"})

    def stopProducing(self) -> None:
        self._stop_watch()

    # -- input -------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing or self._gone:
            return
        self._buffer += data
        limit = self.factory.max_request
        while not self._closing:
            end = self._buffer.find(b"\n", self._scanned)
            if end < 0:
                if len(self._buffer) > limit:
                    self._oversize()
                else:
                    self._scanned = len(self._buffer)
                return
            if end > limit:
                self._oversize()
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._scanned = 0
            try:
                self._line_received(line)
            except Exception:  # a bug in a handler must not end the node
                self.log.failure("control request failed")
                self._send_error(None, INTERNAL, "internal error handling the request")

    def _oversize(self) -> None:
        limit = self.factory.max_request
        self.log.warn("control request over {limit} bytes; closing that control connection", limit=limit)
        self._send_error(None, TOO_LARGE, f"request line over {limit} bytes; closing the connection")
        self._buffer = bytearray()
        self._close()

    def _line_received(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._send_error(None, BAD_REQUEST, "the request is not UTF-8 text")
            return
        try:
            body = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as e:
            self._send_error(None, BAD_REQUEST, f"the request is not JSON: {e}")
            return
        if not isinstance(body, dict):
            self._send_error(None, BAD_REQUEST, 'a request is a JSON object, like {"id": 1, "cmd": "info"}')
            return
        rid = body.get("id")
        if not (rid is None or isinstance(rid, (str, int, float)) and not isinstance(rid, bool)):
            self._send_error(None, BAD_REQUEST, '"id" must be a string, a number or null')
            return
        if isinstance(rid, str) and len(rid) > 256:
            self._send_error(None, BAD_REQUEST, '"id" is over 256 characters')
            return
        cmd = body.get("cmd")
        if not isinstance(cmd, str):
            self._send_error(rid, BAD_REQUEST, 'the request lacks "cmd" (a string naming the command)')
            return
        command = self.factory.commands.get(cmd)
        if command is None:
            shown = cmd if len(cmd) <= 40 else cmd[:37] + "..."
            self._send_error(rid, UNKNOWN_COMMAND, f"unknown command {shown!r}; commands: "
                                                   f"{', '.join(self.factory.commands.names())}")
            return
        if self._in_flight >= MAX_IN_FLIGHT:
            self._send_error(rid, BUSY, f"too many requests in progress on this connection (at most {MAX_IN_FLIGHT})")
            return
        request = Request(rid, cmd, {k: v for k, v in body.items() if k not in ("id", "cmd")})
        self._in_flight += 1
        d = maybeDeferred(command.handler, self, request)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(request,), errbackArgs=(request,))

    def _succeeded(self, result: Any, request: Request) -> None:
        self._in_flight -= 1
        self._write({"id": request.id, "ok": True, "result": result if result is not None else {}})

    def _failed(self, failure: Failure, request: Request) -> None:
        self._in_flight -= 1
        code, text = _error_for(failure)
        if code == INTERNAL:
            self.log.failure("control command {cmd} failed", failure, cmd=request.cmd)
        self._send_error(request.id, code, text)

    # -- output ------------------------------------------------------------------------

    def _send_error(self, rid: Any, code: str, text: str) -> None:
        self._write({"id": rid, "ok": False, "code": code, "error": text})

    def _write(self, body: dict[str, Any]) -> None:
        if self._gone:
            return
        try:
            data = _encode(body)
        except (TypeError, ValueError):
            self.log.failure("unencodable control response")
            data = _encode({"id": body.get("id"), "ok": False, "code": INTERNAL,
                            "error": "internal error: the result could not be encoded"})
        self.transport.write(data)

    # -- watching ---------------------------------------------------------------------

    @property
    def watching(self) -> Optional[frozenset[str]]:
        return self._watch_events

    def start_watch(self, rid: Any, events: Iterable[str]) -> None:
        self._watch_id = rid
        self._watch_events = frozenset(events)
        if self._unsubscribe is None:
            self._unsubscribe = self.node.events.subscribe(self._event)

    def _stop_watch(self) -> None:
        self._watch_events = None
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def _event(self, body: dict[str, Any]) -> None:
        if self._watch_events is None or self._gone or self._closing or body["event"] not in self._watch_events:
            return
        if self._paused:
            self.dropped_events += 1
            return
        self._write(dict(body, id=self._watch_id))


class ControlFactory(Factory):
    """Builds L{ControlProtocol}s for C{node} answering C{commands}."""

    protocol = ControlProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, node: Any, commands: Optional[CommandRegistry] = None,
                 max_request: int = DEFAULT_MAX_REQUEST, max_connections: int = MAX_CONNECTIONS) -> None:
        self.node = node
        self.commands = commands if commands is not None else node_commands()
        self.max_request = max_request
        self.max_connections = max_connections
        self.connections: set[ControlProtocol] = set()

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return ControlProtocol(self)


# -- the standard commands --------------------------------------------------------------
#
# Each handler takes (protocol, request); protocol.node is the node (see
# crust.node.Node: service, events, describe(), connection_info(), connect()).


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
    req.allow("info", "timeout")
    raw = req._get("info", _MISSING)
    try:
        if isinstance(raw, dict):
            info = PubConnectionInfo.from_dict(raw)
        elif isinstance(raw, str):
            info = PubConnectionInfo.from_json(raw)
        else:
            raise RequestError(BAD_REQUEST, "'info' must be connection info (a JSON object, or its text)")
    except InvalidConnectionInfo as e:
        raise RequestError(BAD_REQUEST, f"bad connection info: {e}") from None
    timeout = req.number("timeout", None, 0, MAX_CONNECT_TIMEOUT)
    return proto.node.connect(info, timeout).addCallback(lambda peer_id: {"peer_id": str(peer_id)})


def _cmd_send(proto: ControlProtocol, req: Request) -> dict[str, Any]:
    req.allow("peer_id", "text", "data_b64", "priority")
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
    service = proto.node.service
    service.send(peer_id, data, priority)
    return {"peer_id": str(peer_id), "size": len(data), "priority": priority,
            "queued_bytes": service.queued_bytes(peer_id)}


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
    Command("connect", _cmd_connect, "connect to a peer: info (connection info), timeout (s)"),
    Command("send", _cmd_send, "send a message: peer_id, text or data_b64, priority (default 1)"),
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


# -- the listening service --------------------------------------------------------------


def parse_control_endpoint(description: str) -> Optional[str]:
    """
    The UNIX socket path named by a C{--control} value, or L{None} for
    C{"none"} (no control interface).  Accepted: C{unix:PATH} (or
    C{unix:address=PATH}; C{\\:} escapes a colon) and a plain path.

    @raise ValueError: anything else (the interface has no authentication,
        so it is never offered on a network endpoint).
    """
    text = description.strip()
    if text.lower() == "none":
        return None
    if text.startswith(("/", ".", "~")):
        return os.path.abspath(os.path.expanduser(text))
    kind, sep, rest = text.partition(":")
    if not sep or kind.lower() != "unix":
        raise ValueError(
            f"unsupported control endpoint {description!r}: the control interface has no "
            f"authentication, so it is only offered on a UNIX socket (unix:/path/to/control.sock) or 'none'"
        )
    parts, current, escaped = [], [], False
    for ch in rest:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    path: Optional[str] = None
    for part in parts:
        key, eq, value = part.partition("=")
        if eq and key == "address":
            path = value
        elif eq and key in ("mode", "lockfile", "backlog"):
            continue  # the node decides these: mode 0600, its own data-dir lock
        elif eq:
            raise ValueError(f"unknown option {key!r} in control endpoint {description!r}")
        elif path is None:
            path = part
        else:
            raise ValueError(f"unexpected {part!r} in control endpoint {description!r}")
    if not path:
        raise ValueError(f"control endpoint {description!r} lacks a path (unix:/path/to/control.sock)")
    return os.path.abspath(os.path.expanduser(path))


def clear_stale_socket(path: str, timeout: float = 1.0) -> bool:
    """
    Make way for a new socket at C{path}: a socket nobody listens on is
    removed.  Returns True if one was removed.

    @raise NodeAlreadyRunning: a live socket is there.
    @raise CrustError: something that is not a socket is there.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise CrustError(f"cannot inspect {path}: {e.strerror or e}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise CrustError(f"{path} exists and is not a socket; remove it or choose another --control path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: nobody is listening
    except PermissionError:
        raise CrustError(f"cannot use the control socket {path}: permission denied") from None
    except OSError as e:  # timeout and the like: someone is there, but not answering
        raise NodeAlreadyRunning(f"another node seems to be running: its control socket {path} "
                                 f"is in use ({e.strerror or e})") from None
    else:
        raise NodeAlreadyRunning(f"another node is running with this data dir: its control socket {path} is live")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return True


class ControlServer(service.Service):
    """
    Listens on the control socket C{path} (mode 0600).  L{listen} binds at
    once (so a node reports a problem before its reactor runs);
    C{startService} does it if not done yet.
    """

    log = Logger()
    name = "control"

    def __init__(self, node: Any, path: str, reactor: Any = None,
                 commands: Optional[CommandRegistry] = None, max_request: int = DEFAULT_MAX_REQUEST) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.path = path
        self.factory = ControlFactory(node, commands, max_request)
        self.port: Any = None

    @property
    def commands(self) -> CommandRegistry:
        return self.factory.commands

    def listen(self) -> None:
        """
        Bind the socket now.

        @raise NodeAlreadyRunning: a live node owns the socket.
        @raise CrustError: the socket cannot be created (the message says why).
        """
        if self.port is not None:
            return
        problem = unix_path_problem(self.path)
        if problem:
            raise CrustError(problem)
        if clear_stale_socket(self.path):
            self.log.info("removed the stale control socket {path} of a node that is gone", path=self.path)
        old_umask = os.umask(0o177)  # never a moment with a socket others could use
        try:
            self.port = self.reactor.listenUNIX(self.path, self.factory, backlog=16, mode=0o600)
        except Exception as e:
            reason = getattr(e, "socketError", None) or e
            raise CrustError(f"cannot listen on the control socket {self.path}: {reason}") from None
        finally:
            os.umask(old_umask)

    def startService(self) -> None:
        self.listen()
        service.Service.startService(self)

    def stopService(self) -> Deferred:
        service.Service.stopService(self)
        for proto in list(self.factory.connections):
            proto._stop_watch()
            proto.transport.loseConnection()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)


# -- a Twisted client ----------------------------------------------------------------------


class ControlClient(Protocol):
    """
    The client side, for Twisted programs::

        client = await connect_control(reactor, "/path/control.sock")
        info = await client.request("info")
        client.on_event = print
        await client.request("watch", events=["new_message"])
    """

    max_line = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._next_id = 1
        self._pending: dict[Any, Deferred] = {}
        self.on_event: Callable[[dict[str, Any]], Any] = lambda event: None
        self.closed: Deferred = Deferred()
        self.errors: list[dict[str, Any]] = []  # error responses without an id we sent

    def request(self, cmd: str, **args: Any) -> Deferred:
        """Fires with the C{result}; fails with L{ControlError} (its C{code} and message)."""
        rid = self._next_id
        self._next_id += 1
        d: Deferred = Deferred()
        self._pending[rid] = d
        self.transport.write(_encode(dict(args, id=rid, cmd=cmd)))
        return d

    def send_raw(self, data: bytes) -> None:
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.max_line:
                    self.transport.loseConnection()
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            try:
                body = json.loads(line)
            except ValueError:
                continue
            if not isinstance(body, dict):
                continue
            if "event" in body and "ok" not in body:
                self.on_event(body)
                continue
            d = self._pending.pop(body.get("id"), None)
            if d is None:
                self.errors.append(body)
            elif body.get("ok"):
                d.callback(body.get("result"))
            else:
                d.errback(ControlError(str(body.get("code")), str(body.get("error"))))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(ControlError("closed", "the control connection closed"))
        self.closed.callback(None)


def connect_control(reactor: Any, path: str) -> Deferred:
    """Connect to the control socket at C{path}; fires with a L{ControlClient}."""
    from twisted.internet.endpoints import UNIXClientEndpoint
    from twisted.internet.protocol import Factory as _Factory

    return UNIXClientEndpoint(reactor, path, timeout=10).connect(_Factory.forProtocol(ControlClient))
