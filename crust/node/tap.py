"""
C{twistd crust}: the twistd plugin's options and service maker::

    twistd -n --pidfile= crust node [--data-dir DIR] [--listen-port N] ...
    twistd -n --pidfile= --logger=crust.node.tap.jsonLogObserver crust node   # JSON-lines log on stdout
    twistd -n crust node --metrics tcp:9464:interface=127.0.0.1              # Prometheus metrics at /metrics

Option values are checked here (a bad one is a usage error); everything that
touches the disk or the network happens in L{makeService}, which turns a
problem (another node running, a corrupt key, an invalid config file, a
port in use) into one line on stderr and exit status 1.

This module is imported whenever C{twistd} lists its plugins, so it imports
nothing heavy at module level.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from typing import Any

from twisted.python import usage

from crust.node.datadir import resolve_data_dir


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range (0-65535; 0 means random): {port}")
    return port


_port.coerceDoc = "An integer 0-65535; 0 picks a random free port."  # type: ignore[attr-defined]


class NodeOptions(usage.Options):
    synopsis = "[options]"
    description = "Run a crust peer node."
    longdesc = (
        "Runs a crust peer node: it keeps its key, config and state in the data directory "
        "(created with mode 0700 if missing), listens for peers, and is driven through a local "
        "control socket by the `crust` command (crust info, crust connect '<info>', crust send ...). "
        "Command-line options override the config file.  See doc/node.md."
    )

    optParameters = [
        ["data-dir", "d", None,
         "The data directory [default: $CRUST_DATA_DIR, $XDG_DATA_HOME/crust or ~/.local/share/crust]."],
        ["listen-port", "p", None, "TCP port to listen on for peers (0: random) [default: from the config; random].",
         _port],
        ["listen-host", None, None, "IP address (interface) to listen on [default: from the config; 0.0.0.0]."],
        ["network", "n", None, "Network name: nodes with different names never connect [default: from the config]."],
        ["config", "c", None, "JSON config file [default: config.json in the data directory, created if missing]."],
        ["control", None, None,
         "Control endpoint: unix:/path/to/socket, or 'none' [default: unix:<data dir>/control.sock]."],
        ["log-json", None, None, "Also write the log to this file as JSON lines (appending)."],
        ["udp-port", None, None, "UDP port (QUIC, STUN, echo) [default: from the config; random].", _port],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on this endpoint, e.g. tcp:9464:interface=127.0.0.1 "
         "[default: none]."],
    ]

    optFlags = [
        ["no-tcp", None, "Do not listen or connect over TCP (QUIC only)."],
        ["no-udp", None, "No UDP socket: no QUIC, no STUN or UDP echo (TCP only)."],
        ["no-port-mapping", None, "Do not ask the router for port mappings (PCP, NAT-PMP, UPnP IGD)."],
        ["no-discovery", None, "Do not take part in LAN discovery."],
        ["verbose", "v", "Log everything (debug level), Twisted's own per-port messages too."],
    ]

    compData = usage.Completions(
        optActions={
            "data-dir": usage.CompleteDirs(),
            "config": usage.CompleteFiles("*.json"),
            "log-json": usage.CompleteFiles(),
        }
    )

    def postOptions(self) -> None:
        self["data-dir"] = str(resolve_data_dir(self["data-dir"]))
        host = self["listen-host"]
        if host is not None:
            try:
                self["listen-host"] = str(ipaddress.ip_address(host.strip().strip("[]")))
            except ValueError:
                raise usage.UsageError(f"--listen-host must be an IP address, not {host!r}") from None
        if self["no-tcp"] and self["no-udp"]:
            raise usage.UsageError("--no-tcp and --no-udp together leave no transport")
        network = self["network"]
        if network is not None and not 1 <= len(network) <= 255:
            raise usage.UsageError("--network must be 1 to 255 characters long")
        control = self["control"]
        if control is not None:
            from crust.node.control import parse_control_endpoint  # light enough once a node starts

            try:
                self["control-path"] = parse_control_endpoint(control)
            except ValueError as e:
                raise usage.UsageError(f"--control: {e}") from None
        else:
            self["control-path"] = "default"

    def overrides(self) -> dict[str, Any]:
        """The L{crust.config.Config} fields the command line sets."""
        found: dict[str, Any] = {}
        if self["listen-port"] is not None:
            found["listen_port"] = self["listen-port"] or None
        if self["listen-host"] is not None:
            found["listen_host"] = self["listen-host"]
        if self["network"] is not None:
            found["network_name"] = self["network"]
        if self["udp-port"] is not None:
            found["udp_listen_port"] = self["udp-port"] or None
        for flag, field in (("no-tcp", "enable_tcp"), ("no-udp", "enable_udp"),
                            ("no-port-mapping", "enable_port_mapping"), ("no-discovery", "enable_service_discovery")):
            if self[flag]:
                found[field] = False
        return found


class Options(usage.Options):
    synopsis = "node [options]"
    description = "crust: encrypted peer-to-peer connections with NAT traversal."
    longdesc = "Use `twistd -n crust node --help` for the node's options."
    subCommands = [
        ["node", None, NodeOptions, "Run a crust peer node (its key, config and control socket in a data directory)."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a subcommand is needed: node (try: twistd -n crust node --help)")


def makeService(options: Options, reactor: Any = None) -> Any:
    """
    The node for C{options}.  A node that cannot start raises C{SystemExit}
    with a one-line reason (twistd prints it and exits with status 1).
    """
    from crust.node.node import Node, StartupError

    if options.subCommand != "node":  # pragma: no cover - Options.postOptions prevents it
        raise SystemExit(f"crust: unknown subcommand {options.subCommand!r}")
    sub = options.subOptions
    node = Node(
        sub["data-dir"],
        config_file=sub["config"],
        overrides=sub.overrides(),
        control=sub["control-path"],
        reactor=reactor,
        metrics=sub["metrics"],
    )
    try:
        node.prepare()
    except StartupError as e:
        raise SystemExit(f"crust node: error: {e}") from None
    twistd = getattr(options, "parent", None)
    if twistd is not None and not twistd.get("logger") and twistd.get("logfile") in (None, "-"):
        # twistd logs to standard output: say what a person needs; the rest at debug (--verbose)
        node.log_observer = quietLogObserver(verbose=bool(sub["verbose"]))
    if sub["log-json"]:
        try:
            node.json_log_observer = _add_json_log_file(sub["log-json"])  # type: ignore[attr-defined]
        except OSError as e:
            node.stopService()
            raise SystemExit(f"crust node: error: cannot open the JSON log file {sub['log-json']}: "
                             f"{e.strerror or e}") from None
    return node


# -- logging ------------------------------------------------------------------------------


def _real_stdout() -> Any:
    out = sys.stdout
    # once twistd redirects standard I/O, sys.stdout is a LoggingFile: writing
    # log events to it would loop
    if type(out).__name__ == "LoggingFile" and sys.__stdout__ is not None:
        out = sys.__stdout__
    return out


# Twisted's own messages for each port and factory, and twistd's: useful when debugging, noise otherwise
_CHATTER = re.compile(
    r"^(?:\S+ starting on \S+|\((?:TCP|UDP|UNIX) Port \S+ Closed\)|Starting (?:protocol|factory) |"
    r"Stopping (?:protocol|factory) |reactor class: )")


def quietLogObserver(verbose: bool = False) -> Any:
    """
    The ready node's log on standard output: info and above, without
    Twisted's per-port chatter (C{Foo starting on 4242}, C{(UDP Port 4242
    Closed)}); everything at debug level with C{verbose}.
    """
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        PredicateResult,
        formatEvent,
        textFileLogObserver,
    )

    def not_chatter(event: dict) -> Any:
        if "log_namespace" in event and event.get("log_namespace") not in ("log_legacy", "twisted.internet.base",
                                                                           "twisted.scripts._twistd_unix.UnixAppLogger"):
            return PredicateResult.maybe
        return PredicateResult.no if _CHATTER.match(formatEvent(event)) else PredicateResult.maybe

    predicates: list[Any] = [LogLevelFilterPredicate(LogLevel.debug if verbose else LogLevel.info)]
    if not verbose:
        predicates.append(not_chatter)
    return FilteringLogObserver(textFileLogObserver(_real_stdout()), predicates)


def jsonLogObserver() -> Any:
    """
    A log observer writing one JSON object per line to standard output, for
    C{twistd --logger=crust.node.tap.jsonLogObserver}.  Read the lines back with
    C{twisted.logger.eventsFromJSONLogFile} or any JSON-lines tool.
    """
    from twisted.logger import jsonFileLogObserver

    return jsonFileLogObserver(_real_stdout(), recordSeparator="")


def _add_json_log_file(path: str) -> Any:
    """Send every log event, as a JSON line, to the file C{path} too; returns the observer (C{.file}: the file)."""
    from twisted.logger import globalLogPublisher, jsonFileLogObserver

    out = open(path, "a", encoding="utf-8")
    observer = jsonFileLogObserver(out, recordSeparator="")
    observer.file = out  # type: ignore[attr-defined]
    globalLogPublisher.addObserver(observer)
    return observer
