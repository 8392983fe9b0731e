"""
The node's local control interface: newline-delimited JSON over a UNIX socket.

The protocol is described in L{crust.node.control.protocol} (for users: doc/node.md).
Its parts:

  - L{crust.node.control.protocol}: constants and error codes, L{Request},
    L{Command} and L{CommandRegistry}, L{ControlProtocol} (one connection,
    server side) and L{EventHub} (events as JSON);
  - L{crust.node.control.commands}: the standard commands, L{node_commands};
  - L{crust.node.control.server}: L{ControlServer} (the listening service),
    L{ControlFactory}, L{parse_control_endpoint}, L{clear_stale_socket};
  - L{crust.node.control.client}: a Twisted client, L{ControlClient} /
    L{connect_control}.

Every name is also importable from C{crust.node.control} itself.
"""

from crust.node.control.client import ControlClient, ControlError, connect_control
from crust.node.control.commands import STANDARD_COMMANDS, node_commands
from crust.node.control.protocol import (
    BAD_REQUEST,
    BUSY,
    CONNECT_FAILED,
    DEFAULT_MAX_REQUEST,
    EVENT_FIELDS,
    FAILED,
    INTERNAL,
    MAX_CONNECT_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_IN_FLIGHT,
    MESSAGE_TOO_LARGE,
    NOT_CONNECTED,
    NOT_RUNNING,
    PROTOCOL_VERSION,
    QUEUE_FULL,
    TIMEOUT,
    TOO_LARGE,
    UNKNOWN_COMMAND,
    Command,
    CommandRegistry,
    ControlProtocol,
    ControlTimeout,
    EventHub,
    Handler,
    Request,
    RequestError,
    event_to_json,
    message_fields,
    plain,
)
from crust.node.control.server import ControlFactory, ControlServer, clear_stale_socket, parse_control_endpoint

__all__ = [
    # protocol
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_REQUEST",
    "MAX_IN_FLIGHT",
    "MAX_CONNECTIONS",
    "MAX_CONNECT_TIMEOUT",
    "BAD_REQUEST",
    "UNKNOWN_COMMAND",
    "TOO_LARGE",
    "BUSY",
    "NOT_CONNECTED",
    "MESSAGE_TOO_LARGE",
    "QUEUE_FULL",
    "CONNECT_FAILED",
    "TIMEOUT",
    "NOT_RUNNING",
    "FAILED",
    "INTERNAL",
    "RequestError",
    "ControlTimeout",
    "EVENT_FIELDS",
    "plain",
    "message_fields",
    "event_to_json",
    "EventHub",
    "Request",
    "Handler",
    "Command",
    "CommandRegistry",
    "ControlProtocol",
    # commands
    "STANDARD_COMMANDS",
    "node_commands",
    # server
    "ControlFactory",
    "ControlServer",
    "parse_control_endpoint",
    "clear_stale_socket",
    # client
    "ControlClient",
    "ControlError",
    "connect_control",
]
