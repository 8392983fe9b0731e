"""
Candidates and NAT knowledge: what a node tells a peer so the two can punch.

A L{Candidate} is one transport address a peer might reach us at, with how we
learned it: a C{host} address of an interface, a C{mapped} port a gateway
holds open for us (PCP, NAT-PMP, UPnP), a server-reflexive (C{srflx})
address a helper saw our packets come from, a peer-reflexive (C{prflx})
one learned from a punch check, or a C{relay} address a TURN server relays
to us (a peer dials it like any other C{udp:} address).  L{NatInfo} says, per transport, how our NAT
maps and filters and how it allocates ports; it decides the punching plan.

Both travel in connection info (one JSON line; see L{crust.connection_info})::

    "cands": [["tcp:10.0.0.2:4242", "host", "local"], ["udp:203.0.113.10:5000", "srflx", "echo"]],
    "nat": {"udp": {"map": "eim", "filter": "apdf", "ports": "preserved"}, "tcp": {"map": "edm"}}

Parsing is forward compatible: a candidate of a kind we do not know is
skipped, and an unknown NAT value reads as unknown.  Anything malformed
(wrong type, bad address, too many entries) raises
L{InvalidConnectionInfo} naming the bad part.  The shape is fixed, so
parsing never recurses and its work is bounded by the entry cap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from crust.address import Address
from crust.errors import InvalidConnectionInfo

MAX_CANDIDATES = 64
MAX_SOURCE_LENGTH = 32
MAX_DELTA = 1000


class CandidateKind(str, enum.Enum):
    """How a candidate address was learned (ICE's candidate types, plus C{mapped})."""

    HOST = "host"
    MAPPED = "mapped"
    SRFLX = "srflx"
    PRFLX = "prflx"
    RELAY = "relay"  # a TURN allocation's relayed address


@dataclass(frozen=True, order=True)
class Candidate:
    """
    One address a peer may reach us at.

    @ivar address: a C{tcp} or C{udp} address.
    @ivar kind: how it was learned.
    @ivar source: what told us, e.g. C{"local"}, C{"pcp"}, C{"natpmp"},
        C{"upnp"}, C{"stun"}, C{"echo"}, C{"hello"}, C{"check"}, C{"turn"}; C{""} when
        not known.
    """

    address: Address
    kind: CandidateKind
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.address, Address):
            raise TypeError(f"a candidate address is an Address, not {type(self.address).__name__}")
        object.__setattr__(self, "kind", CandidateKind(self.kind))


class MappingKind(str, enum.Enum):
    """RFC 4787 mapping: endpoint-independent or endpoint-dependent."""

    EIM = "eim"
    EDM = "edm"
    UNKNOWN = "unknown"


class FilteringKind(str, enum.Enum):
    """RFC 4787 filtering: endpoint-, address- or address-and-port-dependent."""

    EIF = "eif"
    ADF = "adf"
    APDF = "apdf"
    UNKNOWN = "unknown"


class PortAllocation(str, enum.Enum):
    """How the NAT picks the external port of a new mapping."""

    PRESERVED = "preserved"
    SEQUENTIAL = "sequential"
    RANDOM = "random"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class NatBehaviour:
    """
    What we know of our NAT for one transport.

    @ivar delta: for sequential allocation, the step between consecutive
        mappings (C{None} when not known).
    @ivar public: no NAT: a host address is what peers see.
    """

    mapping: MappingKind = MappingKind.UNKNOWN
    filtering: FilteringKind = FilteringKind.UNKNOWN
    ports: PortAllocation = PortAllocation.UNKNOWN
    delta: int | None = None
    public: bool = False


@dataclass(frozen=True)
class NatInfo:
    """Our NAT's behaviour per transport."""

    udp: NatBehaviour = field(default_factory=NatBehaviour)
    tcp: NatBehaviour = field(default_factory=NatBehaviour)

    def for_transport(self, transport: str) -> NatBehaviour:
        """The behaviour for C{"udp"} or C{"tcp"}."""
        if transport == "udp":
            return self.udp
        if transport == "tcp":
            return self.tcp
        raise ValueError(f"unknown transport {transport!r} (expected tcp or udp)")


def candidates_to_json(candidates: Any) -> list:
    """
    The C{"cands"} value: a list of C{[address, kind]} or C{[address, kind, source]}.

    @param candidates: an iterable of L{Candidate}.
    """
    out: list = []
    for c in candidates:
        entry = [str(c.address), c.kind.value]
        if c.source:
            entry.append(c.source)
        out.append(entry)
    return out


def candidates_from_json(obj: Any, max_entries: int = MAX_CANDIDATES) -> tuple[Candidate, ...]:
    """
    Parse a C{"cands"} value.

    Entries of an unknown kind are skipped; exact duplicates are dropped
    (the first is kept, order is kept).

    @raise InvalidConnectionInfo: naming the bad entry.
    """
    if not isinstance(obj, list):
        raise InvalidConnectionInfo('"cands" must be a list of candidates')
    if len(obj) > max_entries:
        raise InvalidConnectionInfo(f'"cands" has {len(obj)} entries, at most {max_entries}')
    parsed: dict[Candidate, None] = {}
    for i, entry in enumerate(obj):
        where = f'"cands" entry {i}'
        if not isinstance(entry, list) or len(entry) not in (2, 3):
            raise InvalidConnectionInfo(f"{where} must be a list [address, kind] or [address, kind, source]")
        text, kind_text = entry[0], entry[1]
        source = entry[2] if len(entry) == 3 else ""
        if not isinstance(kind_text, str):
            raise InvalidConnectionInfo(f"{where}: the kind must be text")
        if not isinstance(source, str):
            raise InvalidConnectionInfo(f"{where}: the source must be text")
        if len(source) > MAX_SOURCE_LENGTH:
            raise InvalidConnectionInfo(f"{where}: the source is over {MAX_SOURCE_LENGTH} characters")
        try:
            address = Address.parse(text)
        except ValueError as e:
            raise InvalidConnectionInfo(f"{where}: bad address: {e}") from None
        try:
            kind = CandidateKind(kind_text)
        except ValueError:
            continue  # a kind from a later version
        parsed[Candidate(address, kind, source)] = None
    return tuple(parsed)


def _behaviour_to_json(b: NatBehaviour) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if b.mapping is not MappingKind.UNKNOWN:
        out["map"] = b.mapping.value
    if b.filtering is not FilteringKind.UNKNOWN:
        out["filter"] = b.filtering.value
    if b.ports is not PortAllocation.UNKNOWN:
        out["ports"] = b.ports.value
    if b.delta is not None:
        out["delta"] = b.delta
    if b.public:
        out["public"] = True
    return out


def nat_info_to_json(info: NatInfo) -> dict[str, Any]:
    """The C{"nat"} value; unknown fields (and transports with nothing known) are left out."""
    out: dict[str, Any] = {}
    for name, b in (("udp", info.udp), ("tcp", info.tcp)):
        body = _behaviour_to_json(b)
        if body:
            out[name] = body
    return out


def _enum_value(enum_type: Any, value: Any, where: str) -> Any:
    if value is None:
        return enum_type.UNKNOWN
    if not isinstance(value, str):
        raise InvalidConnectionInfo(f"{where} must be text")
    try:
        return enum_type(value)
    except ValueError:
        return enum_type.UNKNOWN  # a value from a later version


def _behaviour_from_json(obj: Any, where: str) -> NatBehaviour:
    if obj is None:
        return NatBehaviour()
    if not isinstance(obj, dict):
        raise InvalidConnectionInfo(f"{where} must be an object")
    delta = obj.get("delta")
    if delta is not None:
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise InvalidConnectionInfo(f"{where}.delta must be an integer")
        if not -MAX_DELTA <= delta <= MAX_DELTA:
            raise InvalidConnectionInfo(f"{where}.delta is out of range -{MAX_DELTA}..{MAX_DELTA}")
    public = obj.get("public", False)
    if not isinstance(public, bool):
        raise InvalidConnectionInfo(f"{where}.public must be true or false")
    return NatBehaviour(
        mapping=_enum_value(MappingKind, obj.get("map"), f"{where}.map"),
        filtering=_enum_value(FilteringKind, obj.get("filter"), f"{where}.filter"),
        ports=_enum_value(PortAllocation, obj.get("ports"), f"{where}.ports"),
        delta=delta,
        public=public,
    )


def nat_info_from_json(obj: Any) -> NatInfo:
    """
    Parse a C{"nat"} value; unknown keys are ignored, unknown values read as unknown.

    @raise InvalidConnectionInfo: naming the bad part.
    """
    if not isinstance(obj, dict):
        raise InvalidConnectionInfo('"nat" must be an object')
    return NatInfo(
        udp=_behaviour_from_json(obj.get("udp"), '"nat".udp'),
        tcp=_behaviour_from_json(obj.get("tcp"), '"nat".tcp'),
    )
