"""
Connection info: what one peer hands the other, out of band, to connect.

The public part is one JSON line::

    {"crust": 1, "id": "<peer id>", "addrs": ["tcp:203.0.113.5:4242", ...],
     "cands": [["tcp:10.0.0.2:4242", "host", "local"], ...], "nat": {"udp": {"map": "eim"}}}

C{addrs} lists every address (older readers dial them all); C{cands} says
how each was learned and C{nat} what we know of our NAT, for hole punching
(both optional: see L{crust.candidates}).  Unknown keys are ignored and kept,
so older nodes can read newer info.  The private part keeps what must not be
shared (sockets bound for hole punching, in later transports).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from crust._util.jsonread import JsonRefused, read_json_object
from crust.address import Address
from crust.candidates import (
    Candidate,
    CandidateKind,
    NatInfo,
    candidates_from_json,
    candidates_to_json,
    nat_info_from_json,
    nat_info_to_json,
)
from crust.errors import InvalidConnectionInfo
from crust.identity import PeerId

INFO_VERSION = 1
MAX_INFO_TEXT = 64 * 1024
MAX_ADDRESSES = 64
MAX_CANDIDATES = 64
#: How deep connection info may nest (the object itself is depth 1): what a punch envelope can carry.
MAX_INFO_DEPTH = 6
#: How many arrays and objects connection info may hold (the object itself included).
MAX_INFO_CONTAINERS = 256
_KNOWN_KEYS = ("crust", "id", "addrs", "cands", "nat")


def _host_candidates(addresses: tuple[Address, ...]) -> tuple[Candidate, ...]:
    return tuple(Candidate(a, CandidateKind.HOST) for a in addresses)


@dataclass(frozen=True)
class PubConnectionInfo:
    """
    The shareable part: a peer id, every candidate address, and what we know
    for hole punching.

    @ivar addresses: every address to dial; after construction it also holds
        the address of each candidate (appended, order kept).
    @ivar candidates: the addresses with how they were learned.  When none
        are given (or none of a kind this version knows), each address is a
        C{host} candidate of unknown source, as in info from older versions.
    @ivar nat: our NAT's behaviour, or C{None} when not said.
    @ivar extra: keys this version does not know, kept as they were.
    """

    peer_id: PeerId
    addresses: tuple[Address, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    candidates: tuple[Candidate, ...] = ()
    nat: NatInfo | None = None

    def __post_init__(self) -> None:
        addresses = tuple(self.addresses)
        candidates = tuple(self.candidates)
        if candidates:
            missing = tuple(dict.fromkeys(c.address for c in candidates if c.address not in addresses))
            addresses += missing
        else:
            candidates = _host_candidates(addresses)
        object.__setattr__(self, "addresses", addresses)
        object.__setattr__(self, "candidates", candidates)

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "crust": INFO_VERSION,
            "id": str(self.peer_id),
            "addrs": [str(a) for a in self.addresses],
        }
        if self.candidates != _host_candidates(self.addresses):
            body["cands"] = candidates_to_json(self.candidates)
        if self.nat is not None:
            body["nat"] = nat_info_to_json(self.nat)
        body.update((k, v) for k, v in self.extra.items() if k not in _KNOWN_KEYS)
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "PubConnectionInfo":
        """
        Parse connection info text.

        @raise InvalidConnectionInfo: naming what is wrong.
        """
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidConnectionInfo("connection info is not UTF-8 text") from None
        if not isinstance(text, str):
            raise InvalidConnectionInfo(f"connection info is text, not {type(text).__name__}")
        if len(text) > MAX_INFO_TEXT:
            raise InvalidConnectionInfo(f"connection info is over {MAX_INFO_TEXT} characters")
        try:
            body = read_json_object(text, max_size=MAX_INFO_TEXT, max_depth=MAX_INFO_DEPTH,
                                    max_containers=MAX_INFO_CONTAINERS)
        except JsonRefused as e:
            if e.reason.startswith("not a JSON object"):
                raise InvalidConnectionInfo(f"connection info must be a JSON object, {e.reason}") from None
            raise InvalidConnectionInfo(f"connection info refused: {e.reason}") from None
        return cls.from_dict(body)

    @classmethod
    def from_dict(cls, body: Any) -> "PubConnectionInfo":
        if not isinstance(body, dict):
            raise InvalidConnectionInfo("connection info must be a JSON object")
        version = body.get("crust")
        if not isinstance(version, int) or isinstance(version, bool):
            raise InvalidConnectionInfo('connection info lacks its "crust" version number')
        if version < 1:
            raise InvalidConnectionInfo(f"unsupported connection info version {version!r}")
        try:
            peer_id = PeerId.from_text(body.get("id"))
        except ValueError as e:
            raise InvalidConnectionInfo(f'bad "id": {e}') from None
        addrs = body.get("addrs", [])
        if not isinstance(addrs, list):
            raise InvalidConnectionInfo('"addrs" must be a list of addresses')
        if len(addrs) > MAX_ADDRESSES:
            raise InvalidConnectionInfo(f'"addrs" has {len(addrs)} entries, at most {MAX_ADDRESSES}')
        parsed = []
        for a in addrs:
            try:
                parsed.append(Address.parse(a))
            except ValueError as e:
                raise InvalidConnectionInfo(f'bad address in "addrs": {e}') from None
        candidates: tuple[Candidate, ...] = ()
        if "cands" in body:
            candidates = candidates_from_json(body["cands"], MAX_CANDIDATES)
            every = dict.fromkeys(parsed + [c.address for c in candidates])
            if len(every) > MAX_ADDRESSES:
                raise InvalidConnectionInfo(
                    f'"addrs" and "cands" together have {len(every)} addresses, at most {MAX_ADDRESSES}'
                )
        nat = None
        if body.get("nat") is not None:
            nat = nat_info_from_json(body["nat"])
        extra = {k: v for k, v in body.items() if k not in _KNOWN_KEYS}
        try:  # kept to be written out again: it must be JSON (no NaN or infinity, text keys)
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidConnectionInfo(f"connection info has a value that is not JSON: {e}") from None
        return cls(peer_id, tuple(dict.fromkeys(parsed)), extra, candidates, nat)

    def candidates_for(self, transport: str) -> tuple[Candidate, ...]:
        """The candidates of one transport (C{"tcp"} or C{"udp"}), in order."""
        return tuple(c for c in self.candidates if c.address.transport == transport)

    def tcp_addresses(self) -> tuple[Address, ...]:
        return tuple(a for a in self.addresses if a.transport == "tcp")

    def udp_addresses(self) -> tuple[Address, ...]:
        return tuple(a for a in self.addresses if a.transport == "udp")


def info_for(target: Any) -> PubConnectionInfo:
    """
    What to connect to: a L{PeerId} (its info, no addresses), a
    L{PubConnectionInfo} or L{PrivConnectionInfo}, or text (or UTF-8 bytes)
    that is either connection info's JSON or a peer id.

    @raise InvalidConnectionInfo: naming what is wrong.
    """
    if isinstance(target, PeerId):
        return PubConnectionInfo(target)
    if isinstance(target, PrivConnectionInfo):
        return target.public
    if isinstance(target, PubConnectionInfo):
        return target
    if isinstance(target, (str, bytes)):
        text = target.decode("utf-8", "replace") if isinstance(target, bytes) else target
        if text.strip().startswith("{"):
            return PubConnectionInfo.from_json(target)
        try:
            return PubConnectionInfo(PeerId.from_text(text.strip()))
        except ValueError as e:
            raise InvalidConnectionInfo(str(e)) from None
    raise InvalidConnectionInfo(f"cannot connect to {target!r}: give a peer id or connection info")


@dataclass
class PrivConnectionInfo:
    """Our side of a connection attempt: the public part plus private state."""

    public: PubConnectionInfo
    private: dict[str, Any] = field(default_factory=dict)

    @property
    def peer_id(self) -> PeerId:
        return self.public.peer_id

    def to_pub_connection_info(self) -> PubConnectionInfo:
        return self.public
