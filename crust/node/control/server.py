"""
The listening side of the control interface: L{ControlServer} (a service
listening on a UNIX socket), L{ControlFactory}, and the parsing and
clearing of the socket path (L{parse_control_endpoint},
L{clear_stale_socket}).

The socket file is mode 0600 inside the data directory (mode 0700): only the
node's user can use it, and it is never reachable from the network.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any, Optional

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from crust._util.ratelimit import RateLimiter
from crust._util.reactor import maybe_global_reactor
from crust.node.control.commands import node_commands
from crust.node.control.protocol import (
    CLOSE_GRACE,
    DEFAULT_MAX_REQUEST,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT,
    CommandRegistry,
    ControlProtocol,
)
from crust.node.datadir import NodeAlreadyRunning, unix_path_problem
from crust.errors import CrustError


class ControlFactory(Factory):
    """
    Builds L{ControlProtocol}s for C{node} answering C{commands}.

    @param clock: the C{IReactorTime} of the connections' timeouts; the
        node's C{clock} (or C{reactor}) by default.
    @ivar request_timeout: seconds a connection may leave a request line
        incomplete.
    @ivar idle_timeout: seconds a connection may stay idle (not watching,
        nothing in progress), or leave what we write unread.
    @ivar close_grace: seconds a closing connection has to take what we
        wrote before it is aborted.
    """

    protocol = ControlProtocol
    noisy = False

    def __init__(self, node: Any, commands: Optional[CommandRegistry] = None,
                 max_request: int = DEFAULT_MAX_REQUEST, max_connections: int = MAX_CONNECTIONS,
                 clock: Any = None) -> None:
        self.node = node
        self.commands = commands if commands is not None else node_commands()
        self.max_request = max_request
        self.max_connections = max_connections
        self.connections: set[ControlProtocol] = set()
        if clock is None:
            clock = getattr(node, "clock", None) or getattr(node, "reactor", None)
        self.clock = maybe_global_reactor(clock)
        self.request_timeout = REQUEST_TIMEOUT
        self.idle_timeout = IDLE_TIMEOUT
        self.close_grace = CLOSE_GRACE
        self.log_limit = RateLimiter(self.clock, (0.1, 3.0), (0.1, 3.0), max_keys=4)

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return ControlProtocol(self)


def parse_control_endpoint(description: str) -> Optional[str]:
    """
    The UNIX socket path named by a C{--control} value, or C{None} for
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
        reactor = maybe_global_reactor(reactor)
        self.reactor = reactor
        self.path = path
        self.factory = ControlFactory(node, commands, max_request, clock=reactor)
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
            transport = proto.transport
            assert transport is not None  # it joined the connections when it connected
            transport.loseConnection()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)
