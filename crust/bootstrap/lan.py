"""
L{LanDiscovery}: a node's LAN discovery, wired.  Once started, bootstraps
ask the LAN first (the requester), and the node may answer other nodes'
requests (the responder, on C{service_discovery_listener_port}); both are
in L{crust.bootstrap.discovery}.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable, Optional

from twisted.application.service import IServiceCollection
from twisted.internet.defer import Deferred, succeed

from crust.address import Address
from crust.bootstrap.discovery import DiscoveryRequester, DiscoveryResponder, DiscoveryResponderService
from crust.config import Config
from crust.identity import PeerId


class LanDiscovery:
    """
    The requester and responder of one node, made when first started.

    @param our_info: what the responder tells: our peer id and candidate addresses.
    @param parent: the service collection the responder's socket runs under.
    """

    def __init__(self, *, peer_id: PeerId, config: Callable[[], Config], reactor: Any,
                 our_info: Callable[[], tuple[PeerId, list[Address]]], parent: IServiceCollection) -> None:
        self._peer_id = peer_id
        self._config = config
        self._reactor = reactor
        self._our_info = our_info
        self._parent = parent
        self.requester: Optional[DiscoveryRequester] = None
        self.responder: Optional[DiscoveryResponder] = None
        self.service: Optional[DiscoveryResponderService] = None

    def start(self, listen: bool = False, destinations: Any = None,
              interfaces: Iterable[str] = ("0.0.0.0",)) -> None:
        """
        Ask the LAN from now on and (with C{listen}) answer it.
        C{destinations} overrides where requests go (default: every
        interface's broadcast address and C{ff02::1}).
        """
        config = self._config()
        if ipaddress.ip_address(config.listen_host).is_loopback:
            # a node only reachable on loopback has nothing to tell the LAN
            interfaces = (config.listen_host,)
            if destinations is None:
                destinations = [(config.listen_host, config.service_discovery_port)]
        if self.requester is None:
            self.requester = DiscoveryRequester(
                config.service_discovery_port, config.network_name, window=1.0,
                destinations=destinations, exclude_peer_ids=[self._peer_id], reactor=self._reactor)
        if self.responder is None:
            self.responder = DiscoveryResponder(self._our_info, config.network_name, enabled=listen,
                                                clock=self._reactor)
            self.service = DiscoveryResponderService(
                self.responder, config.service_discovery_listener_port, interfaces=tuple(interfaces),
                reactor=self._reactor)
            self.service.setServiceParent(self._parent)
        else:
            self.responder.set_enabled(listen)

    def set_listen(self, listen: bool) -> None:
        """Answer (or stop answering) other nodes' requests."""
        if self.responder is not None:
            self.responder.set_enabled(listen)

    def has_peers_on_lan(self) -> Deferred:
        """Fires True if any node of our network answers within 1 s (False when not started)."""
        if self.requester is None:
            return succeed(False)
        return self.requester.has_peers_on_lan()


__all__ = ["LanDiscovery"]
