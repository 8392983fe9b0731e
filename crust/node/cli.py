"""
The C{crust} command: drive a running node through its control socket::

    crust info                      crust connect '<their connection info>'
    crust peers                     crust send PEER_ID 'hello'   (or @file, @- for stdin)
    crust connection-info           crust disconnect PEER_ID
    crust watch                     crust --json <command>  (machine-readable output)
    crust verify PROOF_FILE         (a signed message's proof; needs no node)

Exit status: 0 ok; 1 the operation failed (reason on stderr); 2 usage
error; 3 the node cannot be reached.

This is a small blocking client of the newline-delimited JSON control
protocol (L{crust.node.control}); it imports only the standard library (and
L{crust.node.datadir}) so it starts quickly.  Subcommands live in a registry:
L{register} adds one (C{bootstrap}, C{cache}, C{netcheck} will).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, TextIO

from crust._util.jsonread import JsonRefused, read_json_object
from crust.node.datadir import CONTROL_SOCKET, MAX_STATE_BYTES, STATE_FILE, read_state_bytes, resolve_data_dir

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_TIMEOUT = 10.0  # seconds to wait for an ordinary answer
DEFAULT_CONNECT_TIMEOUT = 30.0
MAX_RESPONSE_LINE = 64 * 1024 * 1024
MAX_RESPONSE_DEPTH = 64  # how deep a line from the node may nest (as the control client reads it)
MAX_RESPONSE_CONTAINERS = 1 << 22
START_HINT = "is the node running? start it with: twistd -n crust node"

_PEER_ID = re.compile(r"^[a-z2-7]{52}$", re.IGNORECASE)
# error codes of the control protocol that mean "the arguments were wrong"
_USAGE_CODES = ("bad-request", "too-large")


class CliError(Exception):
    """Ends the command: C{message} on stderr, exit status C{status}."""

    def __init__(self, message: str, status: int = EXIT_FAILED, code: Optional[str] = None,
                 reasons: Optional[list[str]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.reasons = reasons or []


class NodeUnreachable(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_UNREACHABLE, "unreachable")


# -- the client --------------------------------------------------------------------------


class NodeClient:
    """A blocking client of one node's control socket."""

    def __init__(self, path: str, timeout: Optional[float] = DEFAULT_TIMEOUT, hint: str = START_HINT) -> None:
        self.path = path
        self.timeout = timeout
        self.hint = hint
        self._sock: Optional[socket.socket] = None
        self._buffer = bytearray()
        self._next_id = 1

    def __enter__(self) -> "NodeClient":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise NodeUnreachable(f"cannot reach the node: no node is listening on {self.path}\n{self.hint}") from None
        except PermissionError:
            sock.close()
            raise NodeUnreachable(f"cannot reach the node at {self.path}: permission denied "
                                  f"(is it another user's node?)") from None
        except socket.timeout:
            sock.close()
            raise NodeUnreachable(f"cannot reach the node at {self.path}: it does not accept connections") from None
        except OSError as e:
            sock.close()
            raise NodeUnreachable(f"cannot reach the node at {self.path}: {e.strerror or e}\n{self.hint}") from None
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, cmd: str, **args: Any) -> int:
        """Send a request; returns its id."""
        assert self._sock is not None
        rid = self._next_id
        self._next_id += 1
        line = json.dumps(dict(args, id=rid, cmd=cmd), separators=(",", ":")).encode("ascii") + b"\n"
        try:
            self._sock.sendall(line)
        except OSError as e:
            said = self._last_words()
            if said is not None and said.get("ok") is False:  # it refused the request (too large) and hung up
                code = str(said.get("code") or "failed")
                raise CliError(str(said.get("error") or "the node refused the request"),
                               EXIT_USAGE if code in _USAGE_CODES else EXIT_FAILED, code) from None
            raise NodeUnreachable(f"lost the connection to the node: {e.strerror or e}") from None
        return rid

    def _last_words(self) -> Optional[dict[str, Any]]:
        """The line the node sent before it closed the connection on us, if any."""
        try:
            return self.read(1.0)
        except (CliError, OSError):  # socket.timeout is an OSError
            return None

    def read(self, timeout: Any = "default") -> dict[str, Any]:
        """The next line from the node, decoded."""
        assert self._sock is not None
        self._sock.settimeout(self.timeout if timeout == "default" else timeout)
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                try:
                    return read_json_object(line, max_size=MAX_RESPONSE_LINE, max_depth=MAX_RESPONSE_DEPTH,
                                            max_containers=MAX_RESPONSE_CONTAINERS)
                except JsonRefused as e:
                    raise CliError(f"the node sent a line that is not a JSON object we can read: {e}") from None
            if len(self._buffer) > MAX_RESPONSE_LINE:
                raise CliError("the node sent an over-long line")
            try:
                chunk = self._sock.recv(256 * 1024)
            except socket.timeout:
                raise
            except OSError as e:
                raise NodeUnreachable(f"lost the connection to the node: {e.strerror or e}") from None
            if not chunk:
                raise NodeUnreachable("the node closed the connection (did it stop?)")
            self._buffer += chunk

    def request(self, cmd: str, _wait: Optional[float] = None, **args: Any) -> Any:
        """Send C{cmd} with C{args}; return its result (waiting C{_wait} s); an error response raises L{CliError}."""
        rid = self.send(cmd, **args)
        wait = self.timeout if _wait is None else _wait
        deadline = time.monotonic() + wait if wait is not None else None
        while True:
            left = None if deadline is None else max(0.01, deadline - time.monotonic())
            try:
                body = self.read(left)
            except socket.timeout:
                raise CliError(f"the node did not answer {cmd!r} within {wait:g} s", EXIT_FAILED, "timeout") from None
            if "event" in body and "ok" not in body:
                continue
            if body.get("id") not in (rid, None):
                continue
            if body.get("ok"):
                return body.get("result")
            code = str(body.get("code") or "failed")
            status = EXIT_USAGE if code in _USAGE_CODES else EXIT_FAILED
            if code == "unknown-command":
                raise CliError(f"the node does not know {cmd!r} (is it an older version?): {body.get('error')}",
                               status, code)
            reasons = body.get("reasons")
            reasons = [str(r) for r in reasons] if isinstance(reasons, list) else None
            raise CliError(str(body.get("error") or "the request failed"), status, code, reasons)

    def events(self, timeout: Optional[float] = None) -> Iterator[dict[str, Any]]:
        """Yield event lines until the connection ends (or C{timeout}, then C{socket.timeout})."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise socket.timeout()
            body = self.read(left)
            if "event" in body and "ok" not in body:
                yield body


# -- context and output -----------------------------------------------------------------------


@dataclass
class Context:
    """What a subcommand works with."""

    args: argparse.Namespace
    control_path: str
    hint: str
    json: bool
    out: TextIO
    err: TextIO

    def client(self, timeout: Optional[float] = DEFAULT_TIMEOUT) -> NodeClient:
        client = NodeClient(self.control_path, timeout, self.hint)
        client.connect()
        return client

    def call(self, cmd: str, _wait: Optional[float] = None, **args: Any) -> Any:
        """One request on a fresh connection; wait C{_wait} seconds for the answer."""
        wait = DEFAULT_TIMEOUT if _wait is None else _wait
        client = self.client(wait)
        try:
            return client.request(cmd, _wait=wait, **args)
        finally:
            client.close()

    def emit(self, result: Any, text: Optional[str] = None) -> None:
        """Print C{result} as one JSON line (C{--json}) or C{text}."""
        if self.json or text is None:
            self.out.write(json.dumps(result, separators=(",", ":")) + "\n")
        else:
            self.out.write(text if text.endswith("\n") else text + "\n")
        self.out.flush()


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    run: Callable[[Context], int]
    configure: Optional[Callable[[argparse.ArgumentParser], None]] = None
    description: Optional[str] = None


COMMANDS: dict[str, Subcommand] = {}


def register(name: str, help: str, configure: Optional[Callable[[argparse.ArgumentParser], None]] = None,
             description: Optional[str] = None) -> Callable[[Callable[[Context], int]], Callable[[Context], int]]:
    """Decorator adding a subcommand: C{run(context) -> exit status}; C{configure(parser)} adds its arguments."""

    def decorate(run: Callable[[Context], int]) -> Callable[[Context], int]:
        COMMANDS[name] = Subcommand(name, help, run, configure, description)
        return run

    return decorate


def _safe(text: str) -> str:
    """C{text} with control characters escaped (message text comes from other people)."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _check_peer_id(text: str) -> str:
    cleaned = text.strip()
    if not _PEER_ID.match(cleaned):
        raise CliError(f"not a peer id: {text!r} (expected 52 base32 characters, as `crust peers` shows)",
                       EXIT_USAGE, "bad-request")
    return cleaned.lower()


def _read_argument(value: str, what: str) -> bytes:
    """C{@file} -> the file's bytes, C{@-} -> standard input, C{@@x} -> C{"@x"}, otherwise the text."""
    if value.startswith("@@"):
        return value[1:].encode("utf-8", "surrogateescape")
    if value.startswith("@"):
        name = value[1:]
        try:
            if name == "-":
                return sys.stdin.buffer.read()
            with open(name, "rb") as f:
                return f.read()
        except OSError as e:
            raise CliError(f"cannot read {what} from {name}: {e.strerror or e}", EXIT_USAGE, "bad-request") from None
    return value.encode("utf-8", "surrogateescape")


# -- subcommands -------------------------------------------------------------------------------


@register("info", "show the node's peer id, addresses and state")
def cmd_info(ctx: Context) -> int:
    info = ctx.call("info")
    lines = [
        f"peer id:          {info.get('peer_id')}",
        f"network:          {info.get('network_name') or '(default)'}",
        f"listening on:     {' '.join(info.get('listen_addresses') or []) or '(not listening)'}",
        f"external:         {' '.join(info.get('external_addresses') or []) or '(none known)'}",
        f"role:             {info.get('role')} ({info.get('role_reason') or 'not bootstrapped yet'})",
        f"our NAT:          {info.get('nat') or 'unknown'}",
        *[f"TURN relay:       {_turn_line(t)}" for t in info.get("turn") or []],
        f"connected peers:  {info.get('peers', 0)}",
        "bootstrapped to:  " + (f"{info['bootstrapped_to']['peer_id']} at {info['bootstrapped_to']['address']}"
                                if info.get("bootstrapped_to") else "(not bootstrapped)")
        + _rebootstrap(info.get("rebootstrap")),
        f"accepts bootstrap: {'yes' if info.get('accept_bootstrap') else 'no'}; "
        f"bootstrap cache: {info.get('bootstrap_cache_size', 0)} peer(s)",
        f"relaying:         {_relaying(info.get('relay') or {})}",
        f"data directory:   {info.get('data_dir')}",
        f"control socket:   {info.get('control')}",
        *([f"metrics:          {_safe(str(info['metrics']))}"] if info.get("metrics") else []),
        f"pid:              {info.get('pid')} (up {_duration(info.get('uptime') or 0)})",
        f"version:          {info.get('version')}",
        "connection info:  " + json.dumps(info.get("connection_info"), separators=(",", ":")),
    ]
    ctx.emit(info, "\n".join(lines))
    return EXIT_OK


def _rebootstrap(status: Any) -> str:
    """While the node has no peer: when it bootstraps again (the C{info} result's C{rebootstrap})."""
    if not isinstance(status, dict):
        return ""
    state, failures = status.get("state"), status.get("failures") or 0
    if state == "waiting":
        return f"; bootstrapping again in {status.get('next_attempt_in')} s ({failures} failed attempt(s))"
    if state == "bootstrapping" and failures:
        return f"; bootstrapping again ({failures} failed attempt(s))"
    return ""


def _turn_line(t: dict[str, Any]) -> str:
    server = _safe(str(t.get("server")))
    if not t.get("relayed"):
        return f"{server}: {t.get('state')}" + (f" ({_safe(str(t['error']))})" if t.get("error") else "")
    return (f"{_safe(str(t['relayed']))} on {server} (lifetime {t.get('lifetime')} s, expires in "
            f"{t.get('expires_in')} s; {len(t.get('permissions') or [])} permission(s), "
            f"{t.get('channels', 0)} channel(s))")


def _relaying(relay: dict) -> str:
    """The C{info} result's relay figures, for a person."""
    if relay.get("serving"):
        spliced = relay.get("splice_spliced") or 0
        text = (f"yes: {relay.get('circuits', 0)} circuit(s) now, {relay.get('circuits_total', 0)} in all"
                + (f" ({spliced} spliced)" if spliced else "")
                + f", {_size(relay.get('bytes_relayed') or 0)} relayed")
    else:
        text = "no"
    ends = relay.get("ends") or 0
    if ends:
        text += f"; {ends} relayed circuit(s) of ours"
    return text


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # (not reached)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@register("peers", "list the connected peers")
def cmd_peers(ctx: Context) -> int:
    def line(p: dict) -> str:
        direction = "outgoing" if p.get("initiator") else "incoming"
        path = p.get("path") or {}
        how = ""
        if path.get("kind"):
            how = f"  {path['kind']}"
            if path.get("via"):
                how += f" via {path['via']}"
            if isinstance(path.get("elapsed"), (int, float)):
                how += f" in {path['elapsed']:.2f} s"
        address = p.get("address")
        address = address or "-"  # (a relayed connection has none)
        return (f"{p.get('peer_id')}  {address}  {direction}{how}"
                f"  role={p.get('role')}  queued={p.get('queued_bytes')}")

    return _list(ctx, ctx.call("peers"), "no connected peers", line)


def _list(ctx: Context, result: dict, empty: str, line: Callable[[dict], str]) -> int:
    """Print C{result["peers"]}: as JSON, as C{empty}, or a C{line} each."""
    peers = result.get("peers") or []
    if ctx.json:
        ctx.emit(result)
    elif not peers:
        ctx.out.write(empty + "\n")
    else:
        for p in peers:
            ctx.out.write(line(p) + "\n")
    ctx.out.flush()
    return EXIT_OK


@register("connection-info", "print the node's public connection info (one JSON line to give a peer)")
def cmd_connection_info(ctx: Context) -> int:
    result = ctx.call("connection-info")
    ctx.emit(result["connection_info"])
    return EXIT_OK


def _configure_connect(p: argparse.ArgumentParser) -> None:
    p.add_argument("info", metavar="PEER_ID|INFO",
                   help="their peer id (connects through a peer you are both connected to, punching through "
                        "NATs), or their connection info (the JSON line `crust connection-info` printed on their "
                        "side), @file, or - for standard input")
    p.add_argument("--timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT, metavar="SECONDS",
                   help=f"give up after this long (default {DEFAULT_CONNECT_TIMEOUT:g})")


def _configure_bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blacklist", action="append", default=[], metavar="ADDRESS",
                   help="never try this address (tcp:ip:port, ip:port or ip); repeatable")
    p.add_argument("--role", choices=("node", "client"), default=None,
                   help="bootstrap as a reachable node (tested by the peer) or as a client (default: the node's role)")


@register("bootstrap", "find the network: LAN discovery, cached peers, hard-coded contacts", _configure_bootstrap)
def cmd_bootstrap(ctx: Context) -> int:
    args: dict = {"blacklist": ctx.args.blacklist}
    if ctx.args.role:
        args["role"] = ctx.args.role
    result = ctx.call("bootstrap", _wait=60, **args)
    ctx.emit(result, f"bootstrapped to {result['peer_id']} at {result['address']}")
    return EXIT_OK


@register("cache", "list the bootstrap cache (most recently used first)")
def cmd_cache(ctx: Context) -> int:
    def line(p: dict) -> str:
        state = "stale" if p.get("stale") else "fresh"
        return f"{p['peer_id']}  {p['address']}  {state}  failures={p.get('failures', 0)}"

    return _list(ctx, ctx.call("cache"), "the bootstrap cache is empty", line)


@register("netcheck", "what the node learned about its network: addresses, NAT type, port mapping")
def cmd_netcheck(ctx: Context) -> int:
    result = ctx.call("netcheck", _wait=30.0)
    ctx.emit(result["report"], result["text"])
    return EXIT_OK


@register("connect", "connect to a peer, given its connection info", _configure_connect)
def cmd_connect(ctx: Context) -> int:
    raw = ctx.args.info
    data = _read_argument("@-" if raw == "-" else raw, "connection info")
    try:
        text = data.decode("utf-8").strip().lstrip("\ufeff")
    except UnicodeDecodeError:
        raise CliError("the connection info is not UTF-8 text", EXIT_USAGE, "bad-request") from None
    if not text:
        raise CliError("the connection info is empty", EXIT_USAGE, "bad-request")
    timeout = ctx.args.timeout
    if not 0 < timeout <= 3600:
        raise CliError("--timeout must be more than 0 and at most 3600 seconds", EXIT_USAGE, "bad-request")
    # the node gives up after `timeout`; we wait a little longer for its answer
    if _PEER_ID.match(text):
        result = ctx.call("connect", timeout + 5, peer_id=text.lower(), timeout=timeout)
    elif not text.startswith("{"):
        raise CliError(f"{_safe(text[:80])!r} is neither a peer id (52 base32 characters) nor connection info "
                       "(a JSON object: crust connection-info on the peer prints it)", EXIT_USAGE, "bad-request")
    else:
        result = ctx.call("connect", timeout + 5, info=text, timeout=timeout)
    ctx.emit(result, result["peer_id"])  # the peer id alone on stdout: scripts read it
    path = result.get("path") or {}
    if not ctx.json and path.get("kind"):
        took = f" in {path['elapsed']:.2f} s" if isinstance(path.get("elapsed"), (int, float)) else ""
        where = f" {result['address']}" if result.get("address") else ""
        if path.get("via"):
            where += f" via {path['via']}"
        ctx.err.write(f"connected {path['kind']}{where}{took}\n")
    return EXIT_OK


def _configure_send(p: argparse.ArgumentParser) -> None:
    p.add_argument("peer_id", metavar="PEER_ID", help="the connected peer to send to")
    p.add_argument("message", metavar="MESSAGE",
                   help="the message text; @FILE sends a file's bytes, @- standard input, @@x the text @x")
    p.add_argument("--priority", type=int, default=1, metavar="N",
                   help="0-255, lower goes first; 0 and 1 are never dropped (default 1)")
    signing = p.add_mutually_exclusive_group()
    signing.add_argument("--signed", action="store_const", const=True, default=False, dest="signed",
                         help="sign it: the peer gets a proof anyone can check (crust verify)")
    signing.add_argument("--batch", action="store_const", const="batch", dest="signed",
                         help="sign it with the others sent within a few milliseconds (one signature)")


@register("send", "send a message to a connected peer", _configure_send)
def cmd_send(ctx: Context) -> int:
    peer_id = _check_peer_id(ctx.args.peer_id)
    if not 0 <= ctx.args.priority <= 255:
        raise CliError("--priority must be between 0 and 255", EXIT_USAGE, "bad-request")
    data = _read_argument(ctx.args.message, "the message")
    args: dict[str, Any] = {"peer_id": peer_id, "priority": ctx.args.priority}
    if ctx.args.signed:
        args["signed"] = ctx.args.signed
    try:
        args["text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        args["data_b64"] = base64.b64encode(data).decode("ascii")
    result = ctx.call("send", **args)
    how = {True: ", signed", "batch": ", signed in a batch"}.get(result.get("signed"), "")
    ctx.emit(result, f"queued {result.get('size')} bytes for {result.get('peer_id')} "
                     f"(priority {result.get('priority')}{how})")
    return EXIT_OK


def _configure_disconnect(p: argparse.ArgumentParser) -> None:
    p.add_argument("peer_id", metavar="PEER_ID", help="the connected peer")


@register("disconnect", "close the connection to a peer", _configure_disconnect)
def cmd_disconnect(ctx: Context) -> int:
    peer_id = _check_peer_id(ctx.args.peer_id)
    result = ctx.call("disconnect", peer_id=peer_id)
    ctx.emit(result, f"disconnected {result.get('peer_id')}")
    return EXIT_OK


EVENT_NAMES = (
    "listener_started", "listener_failed", "connect_success", "connect_failure", "lost_peer",
    "new_message", "new_signed_message", "message_dropped", "message_too_large", "bootstrap_connect",
    "bootstrap_accept", "bootstrap_failed", "path_changed", "relay_circuit_opened", "relay_circuit_closed",
)


def _configure_watch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", metavar="NAMES",
                   help="comma-separated event names to show (default all): " + ", ".join(EVENT_NAMES))
    p.add_argument("--count", type=int, metavar="N", help="exit after N events")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="exit with status 1 if the events have not all come within this time")


def format_event(event: dict[str, Any]) -> str:
    """One line for a person."""
    name = event.get("event", "?")
    if isinstance(event.get("time"), (int, float)):
        stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    else:
        stamp = "--:--:--"
    peer = event.get("peer_id")
    if name == "new_message":
        if "text" in event:
            body = _safe(str(event["text"]))
        else:
            body = f"({event.get('size')} bytes, not text; --json shows them as base64)"
        proof = event.get("proof")
        if isinstance(proof, dict):
            return f"{stamp} signed message from {peer} (sequence number {proof.get('seq')}): {body}"
        return f"{stamp} message from {peer}: {body}"
    if name == "connect_success":
        return f"{stamp} connected to {peer}"
    if name == "connect_failure":
        return f"{stamp} could not connect to {peer}: {_safe(str(event.get('reason')))}"
    if name == "lost_peer":
        return f"{stamp} lost {peer}: {_safe(str(event.get('reason')))}"
    if name == "events_dropped":
        return f"{stamp} ({event.get('count')} events dropped: {event.get('reason')})"
    fields = " ".join(f"{k}={_safe(str(v))}" for k, v in event.items() if k not in ("event", "time", "id"))
    return f"{stamp} {name} {fields}".rstrip()


@register("watch", "print the node's events as they happen, until interrupted", _configure_watch)
def cmd_watch(ctx: Context) -> int:
    args = ctx.args
    request: dict[str, Any] = {}
    if args.events:
        names = [n.strip() for n in args.events.split(",") if n.strip()]
        unknown = [n for n in names if n not in EVENT_NAMES]
        if unknown:
            raise CliError(f"unknown event {unknown[0]!r}; events: {', '.join(EVENT_NAMES)}", EXIT_USAGE)
        request["events"] = names
    if args.count is not None and args.count < 1:
        raise CliError("--count must be at least 1", EXIT_USAGE)
    client = ctx.client(DEFAULT_TIMEOUT)
    try:
        result = client.request("watch", **request)
        ctx.err.write(f"watching {', '.join(result.get('watching') or [])} (Ctrl-C to stop)\n")
        ctx.err.flush()
        seen = 0
        try:
            for event in client.events(args.timeout):
                if ctx.json:
                    ctx.out.write(json.dumps(event, separators=(",", ":")) + "\n")
                else:
                    ctx.out.write(format_event(event) + "\n")
                ctx.out.flush()
                if event.get("event") != "events_dropped":
                    seen += 1
                if args.count is not None and seen >= args.count:
                    return EXIT_OK
        except socket.timeout:
            raise CliError(f"timed out after {args.timeout:g} s", EXIT_FAILED, "timeout") from None
    finally:
        client.close()
    return EXIT_OK  # pragma: no cover - events() ends by raising


def _configure_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("proof", metavar="FILE",
                   help="the proof: a file, or - for standard input; a proof's JSON (SignedMessage.to_json), "
                        "or a `crust watch --json` line of a signed message")
    p.add_argument("--network", metavar="NAME", help="fail unless it was signed in this network")
    p.add_argument("--sender", metavar="PEER_ID", help="fail unless this peer signed it")
    p.add_argument("--recipient", metavar="PEER_ID", help="fail unless it was signed for this peer")


def _read_proof(name: str, limit: int) -> bytes:
    try:
        if name == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(name, "rb") as f:
                data = f.read(limit + 1)
    except OSError as e:
        raise CliError(f"cannot read {name}: {e.strerror or e}", EXIT_USAGE, "bad-request") from None
    if len(data) > limit:
        raise CliError(f"{name} is over {limit} bytes: not a proof", EXIT_FAILED, "invalid-proof")
    return data


def _unwrap_event(data: bytes, limit: int) -> Any:
    """The proof in a C{crust watch --json} event line, or C{data} itself."""
    try:
        body = read_json_object(data, max_size=limit, max_depth=3, max_containers=4)
    except JsonRefused:
        return data  # the proof reader says what is wrong
    proof = body.get("proof")
    if "event" in body and isinstance(proof, dict):
        return json.dumps(proof)
    return data


@register("verify", "check a signed message's proof: who signed what for whom (needs no node)", _configure_verify)
def cmd_verify(ctx: Context) -> int:
    from crust.errors import BadSignature, SignedMessageError
    from crust.signed import MAX_EXPORT_SIZE, verify_signed

    args = ctx.args
    sender = _check_peer_id(args.sender) if args.sender is not None else None
    recipient = _check_peer_id(args.recipient) if args.recipient is not None else None
    data = _unwrap_event(_read_proof(args.proof, MAX_EXPORT_SIZE), MAX_EXPORT_SIZE)
    try:
        message = verify_signed(data, network_name=args.network, expected_sender=sender,
                                expected_recipient=recipient)
    except BadSignature as e:
        raise CliError(f"bad signature: {e}", EXIT_FAILED, "bad-signature") from None
    except SignedMessageError as e:
        raise CliError(f"not verified: {e}", EXIT_FAILED, "invalid-proof") from None
    result: dict[str, Any] = {"ok": True, "verified": True, "sender": str(message.sender),
                              "recipient": str(message.recipient), "network": message.network,
                              "priority": message.priority, "seq": message.seq, "kind": message.kind}
    result["size"] = len(message.payload)
    try:
        text = result["text"] = message.payload.decode("utf-8")
    except UnicodeDecodeError:
        result["data_b64"] = base64.b64encode(message.payload).decode("ascii")
        shown = "(not text; --json shows it as base64)"
    else:
        text = _safe(text)
        shown = text if len(text) <= 200 else text[:200] + f"... ({len(text) - 200} more characters)"
    how = "signed alone" if message.kind == "message" else f"signed in a batch, {len(message.later)} after it"
    ctx.emit(result, "\n".join([
        f"good signature by {message.sender}",
        f"  for:       {message.recipient}",
        f"  network:   {_safe(repr(message.network))}",
        f"  sequence:  {message.seq} (priority {message.priority}, {how})",
        f"  message:   {len(message.payload)} bytes: {shown}",
    ]))
    return EXIT_OK


# -- main ---------------------------------------------------------------------------------


def _common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--data-dir", "-d", metavar="DIR", default=default(None),
                        help="the node's data directory (default: $CRUST_DATA_DIR, $XDG_DATA_HOME/crust "
                             "or ~/.local/share/crust)")
    parser.add_argument("--control", metavar="SOCKET", default=default(None),
                        help="the node's control socket (unix:PATH or PATH; default: the one the node in "
                             "the data directory uses)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="machine-readable output: one JSON object per line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crust",
        description="Drive a running crust node (start one with: twistd -n crust node).",
        epilog="exit status: 0 ok, 1 the operation failed, 2 usage error, 3 cannot reach the node",
    )
    from crust._version import __version__

    parser.add_argument("--version", action="version", version=f"crust {__version__}")
    _common_options(parser, defaults=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for sub in COMMANDS.values():
        p = subparsers.add_parser(sub.name, help=sub.help, description=sub.description or sub.help)
        _common_options(p, defaults=False)
        if sub.configure is not None:
            sub.configure(p)
    return parser


def control_socket_path(data_dir: Optional[str], control: Optional[str]) -> str:
    """Where the CLI finds the node: C{--control}, else the node's C{node.json}, else C{control.sock}."""
    if control:
        text = control.strip()
        if text.startswith("unix:"):
            text = text[5:]
            if text.startswith("address="):
                text = text[8:]
            text = text.replace("\\:", ":")
        elif ":" in text.split("/")[0] and not text.startswith((".", "/", "~")):
            raise CliError(f"--control must be a UNIX socket path (unix:PATH), not {control!r}", EXIT_USAGE)
        return os.path.abspath(os.path.expanduser(text))
    directory = resolve_data_dir(data_dir)
    try:
        with open(directory / STATE_FILE, "rb") as f:
            state = read_state_bytes(f.read(MAX_STATE_BYTES + 1))
        path = state.get("control") if state is not None else None
        if isinstance(path, str) and path and os.path.exists(path):
            return path
    except (OSError, ValueError):  # ValueError: a path with a NUL
        pass
    return str(directory / CONTROL_SOCKET)


def main(argv: Optional[list[str]] = None, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Run the command line C{argv}; returns the exit status (the console script exits with it)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors exit 2, --help/--version 0
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    if not args.command:
        parser.print_usage(err)
        err.write("crust: error: a command is needed: " + ", ".join(COMMANDS) + "\n")
        return EXIT_USAGE
    want_json = bool(args.json)
    try:
        hint = START_HINT if args.data_dir is None else f"{START_HINT} --data-dir {args.data_dir}"
        path = control_socket_path(args.data_dir, args.control)
        ctx = Context(args, path, hint, want_json, out, err)
        return COMMANDS[args.command].run(ctx)
    except CliError as e:
        if want_json:
            body: dict[str, Any] = {"ok": False, "code": e.code or "failed", "error": e.message}
            if e.reasons:
                body["reasons"] = e.reasons
            out.write(json.dumps(body, separators=(",", ":")) + "\n")
            out.flush()
        if e.reasons:
            err.write(f"crust {args.command}: {e.message.split(': ', 1)[0]}:\n"
                      + "".join(f"  {_safe(r)}\n" for r in e.reasons))
        else:
            err.write(f"crust {args.command}: {e.message}\n")
        return e.status
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "watch" else 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # nothing more can be written; no noise at exit
        except OSError:
            pass
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
