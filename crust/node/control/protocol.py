"""
The control protocol: newline-delimited JSON, one connection at a time.

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

Bounds: a request line is at most
L{crust.node.control.server.ControlFactory.max_request} bytes (over that: a
C{too-large} error and the connection is closed), read by
L{crust._util.jsonread.read_json_object} (at most L{MAX_REQUEST_DEPTH}
levels and L{MAX_REQUEST_CONTAINERS} arrays and objects); at most
L{MAX_IN_FLIGHT} requests per connection and L{MAX_CONNECTIONS}
connections.  A connection that leaves a request line incomplete for
L{REQUEST_TIMEOUT} seconds, that sends nothing for L{IDLE_TIMEOUT} seconds
while it neither watches nor waits for an answer, or that reads nothing of
what we write for L{IDLE_TIMEOUT} seconds is closed (a C{timeout} error
first), so that stalled clients cannot hold every connection.  A reader too
slow for the events it watches loses events (an C{events_dropped} line says
how many) rather than growing the node's memory.  Malformed requests get an
error response; every line sent is JSON (no C{NaN} or C{Infinity}); nothing
a client sends stops the node.  The protocol is documented for users in
doc/node.md.

Here: the constants and error codes, L{Request} (argument checking),
L{Command} and L{CommandRegistry}, L{ControlProtocol} (the server side of one
connection) and L{EventHub} (the node's observer, turning events into JSON).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from crust._util.jsonread import JsonRefused, read_json_object
from crust.address import Address
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
#: How deep a request's JSON may nest (the request object is depth 1).
MAX_REQUEST_DEPTH = 32
#: How many arrays and objects a request's JSON may hold.
MAX_REQUEST_CONTAINERS = 4096
#: How deep a response or event line may nest, as clients read them.
MAX_RESPONSE_DEPTH = 64
#: How many arrays and objects a response or event line may hold, as clients read them.
MAX_RESPONSE_CONTAINERS = 1 << 22
#: Seconds a connection may leave a request line incomplete before it is closed.
REQUEST_TIMEOUT = 10.0
#: Seconds a connection may stay idle (not watching, no request in progress) or
#: leave what we write unread before it is closed.
IDLE_TIMEOUT = 300.0
#: Seconds a closing connection has to take what we wrote before it is aborted.
CLOSE_GRACE = 10.0
#: The longest request id, in characters.
MAX_ID_LENGTH = 256

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


class ControlTimeout(CrustError):
    """An operation did not finish within the time the request allowed."""


# -- events as JSON -------------------------------------------------------------

EVENT_FIELDS: dict[str, tuple[str, ...]] = {name: tuple(ICrustObserver[name].positional) for name in EVENT_NAMES}


def plain(value: Any) -> Any:
    """A JSON-able form of an event argument."""
    if isinstance(value, float) and not math.isfinite(value):
        return None  # not JSON
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
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
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
    An observer of a L{crust.service.Service} that hands every event, as a JSON
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
        self._publish(event_to_json(name, args, self._clock.seconds()), name)

    def _publish(self, body: dict[str, Any], name: str) -> None:
        for callback in list(self._subscribers):
            try:
                callback(body)
            except Exception:
                self.log.failure("event subscriber {callback!r} failed on {event}", callback=callback, event=name)

    # -- ICrustObserver: every event is published ------------------------------------

    def listener_started(self, address: Any) -> None:
        self.publish("listener_started", address)

    def listener_failed(self, transport: str, reason: str) -> None:
        self.publish("listener_failed", transport, reason)

    def connect_success(self, peer_id: Any) -> None:
        self.publish("connect_success", peer_id)

    def connect_failure(self, peer_id: Any, reason: Any) -> None:
        self.publish("connect_failure", peer_id, reason)

    def lost_peer(self, peer_id: Any, reason: str) -> None:
        self.publish("lost_peer", peer_id, reason)

    def new_message(self, peer_id: Any, data: bytes) -> None:
        self.publish("new_message", peer_id, data)

    def new_signed_message(self, peer_id: Any, data: bytes, proof: Any) -> None:
        """A signed message is a C{new_message} event with its C{proof} (the object C{crust verify} reads)."""
        if not self._subscribers:
            return
        body = event_to_json("new_message", (peer_id, data), self._clock.seconds())
        to_dict = getattr(proof, "to_dict", None)
        body["proof"] = to_dict() if to_dict is not None else plain(proof)
        self._publish(body, "new_signed_message")

    def message_dropped(self, peer_id: Any, priority: int, count: int, size: int, reason: str) -> None:
        self.publish("message_dropped", peer_id, priority, count, size, reason)

    def message_too_large(self, peer_id: Any, size: int, limit: int) -> None:
        self.publish("message_too_large", peer_id, size, limit)

    def bootstrap_connect(self, peer_id: Any, address: Any) -> None:
        self.publish("bootstrap_connect", peer_id, address)

    def bootstrap_accept(self, peer_id: Any, role: Any) -> None:
        self.publish("bootstrap_accept", peer_id, role)

    def bootstrap_failed(self, reason: Any) -> None:
        self.publish("bootstrap_failed", reason)

    def path_changed(self, peer_id: Any, old: Any, new: Any) -> None:
        self.publish("path_changed", peer_id, old, new)

    def relay_circuit_opened(self, peer_id: Any, via: Any) -> None:
        self.publish("relay_circuit_opened", peer_id, via)

    def relay_circuit_closed(self, peer_id: Any, via: Any, reason: str) -> None:
        self.publish("relay_circuit_closed", peer_id, via, reason)


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


def _encode(body: dict[str, Any]) -> bytes:
    """
    One line of JSON: no C{NaN} or C{Infinity}.

    @raise ValueError: C{body} holds something JSON cannot say (a
        non-finite number, nesting too deep for the encoder).
    @raise TypeError: C{body} holds something that is not JSON.
    """
    try:
        text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise ValueError("nested too deeply to encode") from None
    return text.encode("ascii") + b"\n"


def _valid_id(rid: Any) -> bool:
    """Whether C{rid} may be a request id: null, a string, an integer or a finite number."""
    if rid is None or isinstance(rid, str):
        return True
    if isinstance(rid, bool):
        return False
    return isinstance(rid, int) or isinstance(rid, float) and math.isfinite(rid)


class IStreamTransport(ITransport, IConsumer, IPushProducer):
    """
    A stream socket's transport as Twisted makes it (a UNIX socket's here):
    it takes a push producer for what we write, and is one for what we read.
    """


@implementer(IPushProducer)
class ControlProtocol(Protocol):
    """
    One control connection (server side).

    @param factory: its L{crust.node.control.server.ControlFactory}: C{node},
        C{commands} (a L{CommandRegistry}), C{max_request},
        C{max_connections}, the set of live C{connections}, the C{clock}
        (an C{IReactorTime}), C{request_timeout}, C{idle_timeout},
        C{close_grace} and C{log_limit} (a
        L{crust._util.ratelimit.RateLimiter} for the lines logged about
        connections closed for a timeout).
    """

    log = Logger()
    transport: Optional[IStreamTransport]

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.node = factory.node
        self._clock = factory.clock
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
        now = self._clock.seconds()
        self._last_activity = now  # the last complete request or response
        self._partial_since = now  # when the incomplete line in the buffer began
        self._paused_since = now
        self._timer: Any = None
        self._deadline: Optional[float] = None
        self._abort_timer: Any = None

    # -- connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        if len(self.factory.connections) > self.factory.max_connections:
            self._send_error(None, BUSY, f"too many control connections (at most {self.factory.max_connections})")
            self._close()
            return
        transport = self.transport
        assert transport is not None
        transport.registerProducer(self, True)
        self._arm()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone = True
        self.factory.connections.discard(self)
        self._stop_watch()
        self._buffer = bytearray()
        self._disarm()
        abort, self._abort_timer = self._abort_timer, None
        if abort is not None and abort.active():
            abort.cancel()

    def _close(self) -> None:
        """Close the connection; abort it if it has not taken what we wrote within C{close_grace}."""
        if self._closing or self._gone:
            return
        self._closing = True
        self._stop_watch()
        self._disarm()
        transport = self.transport
        assert transport is not None
        transport.loseConnection()
        if not self._gone:
            self._abort_timer = self._clock.callLater(self.factory.close_grace, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        transport = self.transport
        if self._gone or transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()

    # -- timeouts: stalled clients must not hold the connections -----------------------

    def _next_deadline(self) -> Optional[float]:
        if self._paused:  # the client reads nothing of what we write
            return self._paused_since + self.factory.idle_timeout
        if self._buffer:  # an incomplete request line
            return self._partial_since + self.factory.request_timeout
        if self._watch_events is not None or self._in_flight:
            return None
        return self._last_activity + self.factory.idle_timeout

    def _arm(self) -> None:
        """Set the timer to the next deadline (if any) of this connection."""
        if self._closing or self._gone:
            return
        deadline = self._next_deadline()
        if deadline == self._deadline and (deadline is None or self._timer is not None):
            return
        self._deadline = deadline
        if deadline is None:
            self._disarm()
            return
        delay = max(0.0, deadline - self._clock.seconds())
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self._clock.callLater(delay, self._timed_out)

    def _disarm(self) -> None:
        timer, self._timer, self._deadline = self._timer, None, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self) -> None:
        self._timer, self._deadline = None, None
        if self._closing or self._gone:
            return
        deadline = self._next_deadline()
        if deadline is None or deadline > self._clock.seconds():
            self._arm()
            return
        if self._paused:
            what = f"has read nothing of what the node wrote for {self.factory.idle_timeout:g} s"
        elif self._buffer:
            what = f"left a request line incomplete for {self.factory.request_timeout:g} s"
        else:
            what = f"was idle for {self.factory.idle_timeout:g} s"
        if self.factory.log_limit.allow("timeout"):
            self.log.info("closing a control connection that {what}", what=what)
        self._send_error(None, TIMEOUT, f"the connection {what}; closing it")
        self._buffer = bytearray()
        self._close()

    # -- IPushProducer: our writes back up, so stop reading and shed events ---------

    def pauseProducing(self) -> None:
        self._paused = True
        self._paused_since = self._clock.seconds()
        transport = self.transport
        assert transport is not None  # it is the transport that pauses us
        transport.pauseProducing()
        self._arm()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._gone or self._closing:
            return
        transport = self.transport
        assert transport is not None  # it is the transport that resumes us
        transport.resumeProducing()
        self._partial_since = self._last_activity = self._clock.seconds()  # we did not read while paused
        if self.dropped_events and self._watch_events is not None:
            count, self.dropped_events = self.dropped_events, 0
            self._write({"event": "events_dropped", "id": self._watch_id, "count": count,
                         "reason": "the control client read too slowly"})
        self._arm()

    def stopProducing(self) -> None:
        self._stop_watch()

    # -- input -------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing or self._gone:
            return
        if not self._buffer:
            self._partial_since = self._clock.seconds()
        self._buffer += data
        limit = self.factory.max_request
        while not self._closing:
            end = self._buffer.find(b"\n", self._scanned)
            if end < 0:
                if len(self._buffer) > limit:
                    self._oversize()
                else:
                    self._scanned = len(self._buffer)
                break
            if end > limit:
                self._oversize()
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._scanned = 0
            self._last_activity = self._partial_since = self._clock.seconds()
            try:
                self._line_received(line)
            except Exception:  # a bug in a handler must not end the node
                self.log.failure("control request failed")
                self._send_error(None, INTERNAL, "internal error handling the request")
        self._arm()

    def _oversize(self) -> None:
        limit = self.factory.max_request
        self.log.warn("control request over {limit} bytes; closing that control connection", limit=limit)
        config = getattr(self.factory.node, "config", None)  # (a node not prepared yet has none)
        hint = ""
        if config is not None:  # what makes a request this long: a message to send
            hint = f" (a message is at most {config.max_message_size} bytes: max_message_size)"
        self._send_error(None, TOO_LARGE, f"request line over {limit} bytes{hint}; closing the connection")
        self._buffer = bytearray()
        self._close()

    def _line_received(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        try:
            body = read_json_object(line, max_size=self.factory.max_request, max_depth=MAX_REQUEST_DEPTH,
                                    max_containers=MAX_REQUEST_CONTAINERS)
        except JsonRefused as e:
            if e.reason.startswith("not a JSON object"):
                self._send_error(None, BAD_REQUEST, f'a request is a JSON object, like {{"id": 1, "cmd": "info"}}, '
                                                    f'{e.reason}')
            else:
                self._send_error(None, BAD_REQUEST, f"the request is refused: {e.reason}")
            return
        rid = body.get("id")
        if not _valid_id(rid):
            self._send_error(None, BAD_REQUEST, '"id" must be a string, a finite number or null')
            return
        if isinstance(rid, str) and len(rid) > MAX_ID_LENGTH:
            self._send_error(None, BAD_REQUEST, f'"id" is over {MAX_ID_LENGTH} characters')
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
        self._arm()

    def _failed(self, failure: Failure, request: Request) -> None:
        self._in_flight -= 1
        code, text = _error_for(failure)
        if code == INTERNAL:
            self.log.failure("control command {cmd} failed", failure, cmd=request.cmd)
        reasons = getattr(failure.value, "reasons", None) if isinstance(failure.value, ConnectFailed) else None
        self._send_error(request.id, code, text, reasons=list(reasons) if reasons else None)
        self._arm()

    # -- output ------------------------------------------------------------------------

    def _send_error(self, rid: Any, code: str, text: str, reasons: Optional[list[str]] = None) -> None:
        body: dict[str, Any] = {"id": rid, "ok": False, "code": code, "error": text}
        if reasons:
            body["reasons"] = reasons  # one line per strategy and address tried
        self._write(body)

    def _write(self, body: dict[str, Any]) -> None:
        if self._gone:
            return
        try:
            data = _encode(body)
        except (TypeError, ValueError):
            self.log.failure("unencodable control {what}", what="event" if "event" in body else "response")
            rid = body.get("id")
            rid = rid if _valid_id(rid) and not (isinstance(rid, str) and len(rid) > MAX_ID_LENGTH) else None
            if "event" in body and "ok" not in body:
                data = _encode({"event": "events_dropped", "id": rid, "count": 1,
                                "reason": "an event could not be encoded as JSON"})
            else:
                data = _encode({"id": rid, "ok": False, "code": INTERNAL,
                                "error": "internal error: the result could not be encoded"})
        self._last_activity = self._clock.seconds()
        transport = self.transport
        assert transport is not None  # not gone
        transport.write(data)

    # -- watching ---------------------------------------------------------------------

    @property
    def watching(self) -> Optional[frozenset[str]]:
        return self._watch_events

    def start_watch(self, rid: Any, events: Iterable[str]) -> None:
        self._watch_id = rid
        self._watch_events = frozenset(events)
        if self._unsubscribe is None:
            self._unsubscribe = self.node.events.subscribe(self._event)
        self._arm()

    def _stop_watch(self) -> None:
        self._watch_events = None
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def _event(self, body: dict[str, Any]) -> None:
        if self._watch_events is None or self._gone or self._closing:
            return
        if body["event"] not in self._watch_events and not (
                "proof" in body and "new_signed_message" in self._watch_events):  # a signed new_message
            return
        if self._paused:
            self.dropped_events += 1
            return
        self._write(dict(body, id=self._watch_id))
