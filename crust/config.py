"""
The settings of a L{crust.service.Service}, as one immutable value.

L{crust.node.config_file} reads and validates the node's JSON config file into a
L{Config}; library users may build one directly.  Durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from crust.identity import PeerId
from crust.address import Address

MIB = 1024 * 1024


@dataclass(frozen=True)
class HardCodedContact:
    """A seed peer: its id and one address (C{tcp:} or C{udp:})."""

    peer_id: PeerId
    address: Address


@dataclass(frozen=True)
class BootstrapCacheConfig:
    file: Optional[str] = None  # None: "bootstrap_cache.json" in the data directory
    max_size: int = 200
    timeout: float = 120.0


@dataclass(frozen=True)
class RelayLimits:
    """What a node that relays for others gives each circuit, and how many it carries (doc/relay.md)."""

    bytes_per_circuit: int = 256 * MIB  # each direction
    seconds_per_circuit: float = 3600.0
    rate_per_circuit: Optional[int] = 8 * MIB  # bytes a second each direction; None: unlimited
    circuits_per_peer: int = 8  # circuits each peer opens through us at once
    circuits_total: int = 64
    window: int = 1024 * 1024  # how far an end may send ahead of the other's credit: we hold up to this each way


@dataclass(frozen=True)
class TurnServer:
    """A TURN server (RFC 8656) to allocate a relayed address on, with long-term credentials."""

    address: Address  # udp:IP:PORT
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Config:
    # identity of the network: nodes of different names never connect
    network_name: Optional[str] = None

    # listening
    listen_host: str = "0.0.0.0"
    listen_port: Optional[int] = None  # None: a random port
    udp_listen_port: Optional[int] = None  # None: a random port
    enable_tcp: bool = True
    enable_udp: bool = True
    force_acceptor_port_in_ext_ep: bool = False

    # messages
    max_message_size: int = 2 * MIB
    max_queued_bytes: int = 32 * MIB
    drop_after: float = 60.0  # a queue of priority >= 2 whose oldest message waited longer is dropped
    # signed messages sent with signed="batch": one signature for the messages of one priority to one peer
    # within this many seconds (they wait that long at most), or for this many (doc/signed.md)
    signed_batch_window: float = 0.005
    signed_batch_max: int = 64

    # liveness
    heartbeat_interval: float = 20.0
    inactivity_timeout: float = 120.0

    # connecting
    connect_timeout: float = 30.0
    handshake_timeout: float = 10.0
    quic_dial_delay: float = 0.25  # the head start of TCP candidates over QUIC ones (Happy Eyeballs); 0: none

    # bootstrap and discovery
    hard_coded_contacts: tuple[HardCodedContact, ...] = ()
    enable_service_discovery: bool = True  # the node answers and asks the LAN (the library: start_service_discovery)
    service_discovery_port: int = 5484
    service_discovery_listener_port: int = 5484
    bootstrap_cache: BootstrapCacheConfig = field(default_factory=BootstrapCacheConfig)
    whitelisted_node_ips: Optional[tuple[str, ...]] = None  # None: everyone
    whitelisted_client_ips: Optional[tuple[str, ...]] = None
    accept_bootstrap: bool = False
    external_reachability_test: bool = True
    bootstrap_timeout: float = 10.0
    bootstrap_concurrency: int = 64
    bootstrap_retry_max: float = 60.0  # the ready node bootstraps again while it has no peer, at most this far apart

    # NAT traversal
    stun_servers: tuple[Address, ...] = ()
    enable_port_mapping: bool = True
    serve_rendezvous: bool = False  # forward hole-punching exchanges between two peers connected to us

    # relays
    serve_relay: bool = False  # carry circuits between two peers connected to us
    relay_delay: float = 2.0  # a relayed connection starts after this unless everything else failed first
    relay_limits: RelayLimits = field(default_factory=RelayLimits)
    accept_relayed: bool = True  # take circuits a relay invites us to (connections to us through a relay)
    relay_splice: bool = True  # splice circuits onto plain TCP connections to the relay (doc/relay.md)
    upgrade_interval: float = 5.0  # a relayed connection tries for a direct path this long after it began, ...
    upgrade_interval_max: float = 300.0  # ... then after twice as long each time, up to this
    turn_servers: tuple[TurnServer, ...] = ()

    def replace(self, **changes) -> "Config":
        return replace(self, **changes)

    def __post_init__(self) -> None:
        if self.max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        if self.max_queued_bytes < self.max_message_size:
            raise ValueError("max_queued_bytes must hold at least one maximum-size message")
        if self.inactivity_timeout <= self.heartbeat_interval:
            raise ValueError("inactivity_timeout must be longer than heartbeat_interval")
        for name in ("heartbeat_interval", "inactivity_timeout", "drop_after",
                     "connect_timeout", "handshake_timeout", "bootstrap_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 < self.signed_batch_window <= 1.0:
            raise ValueError("signed_batch_window must be more than 0 and at most 1 second")
        if type(self.signed_batch_max) is not int or not 1 <= self.signed_batch_max <= 256:
            raise ValueError("signed_batch_max must be an integer in 1..256")
        if not 0 <= self.quic_dial_delay <= self.connect_timeout:
            raise ValueError("quic_dial_delay must be in 0..connect_timeout")
        if not 0 < self.upgrade_interval <= self.upgrade_interval_max:
            raise ValueError("upgrade_interval must be positive and at most upgrade_interval_max")
        if not 0 <= self.bootstrap_retry_max < float("inf"):
            raise ValueError("bootstrap_retry_max must be 0 or more seconds")
        if not 0 <= self.relay_delay <= self.connect_timeout:
            raise ValueError("relay_delay must be in 0..connect_timeout")
        limits = self.relay_limits
        if limits.bytes_per_circuit < 1 or limits.seconds_per_circuit <= 0 or limits.circuits_per_peer < 0 \
                or limits.circuits_total < 0 or (limits.rate_per_circuit is not None and limits.rate_per_circuit < 1):
            raise ValueError("relay_limits must be positive (circuit counts may be 0)")
        if not 64 * 1024 <= limits.window <= 16 * MIB:
            raise ValueError("relay_limits.window must be in 64 KiB..16 MiB")
