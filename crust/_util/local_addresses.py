"""The IP addresses of this host's interfaces (via C{ifaddr}), for candidate lists."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import ifaddr


@dataclass(frozen=True)
class InterfaceAddress:
    interface: str
    ip: str
    prefix: int

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.ip).version

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.ip).is_loopback

    @property
    def is_link_local(self) -> bool:
        return ipaddress.ip_address(self.ip).is_link_local

    def broadcast(self) -> str | None:
        """The IPv4 directed broadcast address of this interface's network."""
        if self.version != 4 or self.prefix >= 31:
            return None
        net = ipaddress.ip_network(f"{self.ip}/{self.prefix}", strict=False)
        return str(net.broadcast_address)


def interface_addresses() -> list[InterfaceAddress]:
    """Every address of every interface, IPv4 first, loopback last."""
    found: list[InterfaceAddress] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):
                host = ip.ip[0].split("%")[0]
            else:
                host = ip.ip
            found.append(InterfaceAddress(adapter.nice_name, host, ip.network_prefix))
    found.sort(key=lambda a: (a.version, a.is_loopback, a.is_link_local))
    return list(dict.fromkeys(found))


def addresses_for_listener(listen_host: str) -> list[str]:
    """
    The IPs a listener bound to C{listen_host} can be reached at (no
    link-local).  C{0.0.0.0} means every IPv4 address; C{::} (dual stack)
    every IPv6 and IPv4 address.
    """
    ip = ipaddress.ip_address(listen_host)
    if not ip.is_unspecified:
        return [str(ip)]
    versions = (4,) if ip.version == 4 else (6, 4)
    hosts = [a.ip for a in interface_addresses() if a.version in versions and not a.is_link_local]
    return list(dict.fromkeys(hosts))
