"""
Twisted endpoints over crust's byte streams: any Twisted protocol between
two peers, by peer id, through whatever path crust finds (direct, hole
punched, relayed).

Endpoint strings (the C{crust} plugin, C{twisted/plugins/crust_endpoints.py})::

    serverFromString(reactor, "crust:SERVICE")                   # streams peers open to SERVICE
    serverFromString(reactor, "crust:SERVICE:datadir=/path")
    clientFromString(reactor, "crust:PEER_ID:SERVICE")           # connect to the peer, open a stream
    clientFromString(reactor, "crust:PEER_ID:SERVICE:datadir=/path:timeout=30")

Which crust L{Service} an endpoint uses: the one the application registered
(L{register_service}; one per process is the common case), or, with
C{datadir=PATH}, a node started from that data directory (its identity
and config file, as C{twistd crust node --data-dir PATH} would run it, with
its control socket, so the C{crust} command sees it), once per directory
and process, stopped when the reactor stops.

Client options:
  - C{timeout=SECONDS}: give up on connecting and opening after this long
    (default: the service's own limits, C{Config.connect_timeout} and the
    stream open timeout);
  - C{info=PATH}: a file holding the peer's connection info (the JSON line
    C{crust connection-info} prints), for a peer that neither the
    configured contacts nor the bootstrap cache know.

Otherwise the client connects with what the node knows of the peer: an
active connection, the configured contacts and bootstrap cache entries
with its id, and hole punching or relays through peers both are connected
to (L{crust.service.Service.connect}).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from crust.connection_info import PubConnectionInfo, info_for
from crust.errors import CrustError
from crust.identity import PeerId

__all__ = [
    "CrustClientEndpoint",
    "CrustServerEndpoint",
    "EndpointError",
    "client_from_args",
    "register_service",
    "registered_service",
    "server_from_args",
    "stop_nodes",
    "unregister_service",
]

log = Logger()

_registered: list[Any] = []
_nodes: dict[str, Any] = {}  # data directory -> the Service of the node started from it


class EndpointError(CrustError):
    """A C{crust:} endpoint cannot be used as given; the message says why."""


# -- which service ---------------------------------------------------------------------------------


def register_service(service: Any) -> None:
    """Make C{service} (a L{crust.service.Service}) the one C{crust:} endpoints without C{datadir=} use."""
    if service not in _registered:
        _registered.append(service)


def unregister_service(service: Any) -> None:
    if service in _registered:
        _registered.remove(service)


def registered_service() -> Any:
    """
    The registered service.

    @raise EndpointError: none is registered, or several are.
    """
    if not _registered:
        raise EndpointError("no crust Service is registered: call crust.endpoints.register_service(service) "
                            "or give the endpoint datadir=PATH")
    if len(_registered) > 1:
        raise EndpointError(f"{len(_registered)} crust Services are registered: keep one, or give the endpoint "
                            "datadir=PATH")
    return _registered[0]


def _service_from(reactor: Any, datadir: Optional[str]) -> Callable[[], Deferred]:
    """What gives an endpoint its service, when it needs it."""
    if datadir is None:
        return lambda: maybeDeferred(registered_service)
    path = os.path.abspath(os.path.expanduser(datadir))
    return lambda: _node_service(reactor, path)


def _node_service(reactor: Any, path: str) -> Deferred:
    service = _nodes.get(path)
    if service is None:
        try:
            service = _nodes[path] = _start_node(reactor, path)
        except Exception:
            return fail()
    return succeed(service)


def _start_node(reactor: Any, path: str) -> Any:
    from crust.node.node import Node, StartupError

    node = Node(path, reactor=reactor)
    try:
        node.prepare()
    except StartupError as e:
        raise EndpointError(f"cannot start a crust node from {path}: {e}") from None
    node.startService()
    reactor.addSystemEventTrigger("before", "shutdown", node.stopService)
    log.info("crust node {peer_id} started from {path} for endpoints", peer_id=str(node.peer_id), path=path)
    return node.service


# -- the endpoints ---------------------------------------------------------------------------------


@implementer(IStreamServerEndpoint)
class CrustServerEndpoint:
    """
    Listens for the streams peers open to one service name.

    @param service_source: fires with the L{crust.service.Service} to use (see L{_service_from}).
    @param name: the service name.
    """

    def __init__(self, service_source: Callable[[], Deferred], name: str) -> None:
        self._service = service_source
        self.name = name

    def __repr__(self) -> str:
        return f"<CrustServerEndpoint {self.name!r}>"

    def listen(self, protocolFactory: Any) -> Deferred:
        """Fires with an C{IListeningPort} whose C{stopListening} refuses new streams to the service."""
        return self._service().addCallback(lambda service: service.listen_streams(self.name, protocolFactory))


@implementer(IStreamClientEndpoint)
class CrustClientEndpoint:
    """
    Connects to a peer by id and opens a stream to one of its services.

    @param peer: the peer's L{PeerId}, or its connection info.
    @param timeout: seconds for connecting and opening together, or None.
    """

    def __init__(self, reactor: Any, service_source: Callable[[], Deferred], peer: Any, name: str,
                 timeout: Optional[float] = None) -> None:
        self._reactor = reactor
        self._service = service_source
        self.peer = peer
        self.name = name
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<CrustClientEndpoint {self.peer} {self.name!r}>"

    def connect(self, protocolFactory: Any) -> Deferred:
        """Fires with the protocol C{protocolFactory} built, running on the stream, once the peer accepted it."""
        d = self._service().addCallback(
            lambda service: service.open_stream(peer_info(service, self.peer), self.name, protocolFactory))
        if self.timeout is not None:
            d.addTimeout(self.timeout, self._reactor)
        return d


def peer_info(service: Any, peer: Any) -> Any:
    """
    What to connect to for C{peer} (a L{PeerId} or connection info): its
    connection info with the addresses the node knows for it, from its
    configured contacts and its bootstrap cache.
    """
    if not isinstance(peer, PeerId):
        return peer
    if service.is_connected(peer):
        return peer
    addresses = [c.address for c in service.config.hard_coded_contacts if c.peer_id == peer]
    addresses += [address for peer_id, address in service.bootstrap_cached_peers() if peer_id == peer]
    return PubConnectionInfo(peer, tuple(dict.fromkeys(addresses)))


# -- the strings -------------------------------------------------------------------------------------


def server_from_args(reactor: Any, *args: str, **kwargs: str) -> CrustServerEndpoint:
    """The endpoint of C{crust:SERVICE[:datadir=PATH]} (the plugin's C{parseStreamServer})."""
    if len(args) != 1:
        raise EndpointError("a crust server endpoint is crust:SERVICE[:datadir=PATH], "
                            f"not crust:{':'.join(args)}")
    datadir = kwargs.pop("datadir", None)
    _no_more(kwargs, "server")
    return CrustServerEndpoint(_service_from(reactor, datadir), _name(args[0]))


def client_from_args(reactor: Any, *args: str, **kwargs: str) -> CrustClientEndpoint:
    """The endpoint of C{crust:PEER_ID:SERVICE[:datadir=PATH][:timeout=S][:info=PATH]}."""
    if len(args) != 2:
        raise EndpointError("a crust client endpoint is crust:PEER_ID:SERVICE[:datadir=PATH][:timeout=SECONDS]"
                            f"[:info=PATH], not crust:{':'.join(args)}")
    try:
        peer_id = PeerId.from_text(args[0])
    except ValueError as e:
        raise EndpointError(f"crust endpoint: {args[0]!r} is not a peer id: {e}") from None
    peer: Any = peer_id
    info_path = kwargs.pop("info", None)
    if info_path is not None:
        peer = _read_info(info_path, peer_id)
    timeout: Optional[float] = None
    if "timeout" in kwargs:
        text = kwargs.pop("timeout")
        try:
            timeout = float(text)
        except ValueError:
            timeout = -1.0
        if not timeout > 0:
            raise EndpointError(f"crust endpoint: timeout must be a positive number of seconds, not {text!r}")
    datadir = kwargs.pop("datadir", None)
    _no_more(kwargs, "client")
    return CrustClientEndpoint(reactor, _service_from(reactor, datadir), peer, _name(args[1]), timeout)


def _name(text: str) -> str:
    from crust.streams.frames import check_service_name

    try:
        return check_service_name(text)
    except ValueError as e:
        raise EndpointError(f"crust endpoint: {e}") from None


def _no_more(kwargs: dict[str, str], kind: str) -> None:
    if kwargs:
        known = "datadir" if kind == "server" else "datadir, timeout, info"
        raise EndpointError(f"crust {kind} endpoint: unknown option(s) {', '.join(sorted(kwargs))} "
                            f"(it takes {known})")


def _read_info(path: str, peer_id: PeerId) -> PubConnectionInfo:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EndpointError(f"crust endpoint: cannot read the connection info {path}: {e}") from None
    try:
        info = info_for(text.strip())
    except CrustError as e:
        raise EndpointError(f"crust endpoint: {path} is not connection info: {e}") from None
    if info.peer_id != peer_id:
        raise EndpointError(f"crust endpoint: {path} is the connection info of {info.peer_id}, not {peer_id}")
    return info


def stop_nodes() -> Deferred:
    """Stop the nodes endpoints started from data directories (the reactor's shutdown does it too)."""
    services = list(_nodes.values())
    _nodes.clear()
    return gatherResults([maybeDeferred(service.parent.stopService) for service in services if service.parent])
