"""
Connection info: what one peer hands the other, out of band, to connect.

The public part is one JSON line::

    {"crust": 1, "id": "<peer id>", "addrs": ["tcp:203.0.113.5:4242", ...]}

Unknown keys are ignored (later versions add hole-punching data), so older
nodes can read newer info.  The private part keeps what must not be shared
(sockets bound for hole punching, in later transports).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from crust.address import Address
from crust.errors import InvalidConnectionInfo
from crust.identity import PeerId

INFO_VERSION = 1
MAX_INFO_TEXT = 64 * 1024
MAX_ADDRESSES = 64


@dataclass(frozen=True)
class PubConnectionInfo:
    """The shareable part: a peer id and every candidate address."""

    peer_id: PeerId
    addresses: tuple[Address, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "crust": INFO_VERSION,
            "id": str(self.peer_id),
            "addrs": [str(a) for a in self.addresses],
        }
        body.update(self.extra)
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
        if len(text) > MAX_INFO_TEXT:
            raise InvalidConnectionInfo(f"connection info is over {MAX_INFO_TEXT} characters")
        try:
            body = json.loads(text)
        except ValueError as e:
            raise InvalidConnectionInfo(f"connection info is not JSON: {e}") from None
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
        extra = {k: v for k, v in body.items() if k not in ("crust", "id", "addrs")}
        return cls(peer_id, tuple(dict.fromkeys(parsed)), extra)

    def tcp_addresses(self) -> tuple[Address, ...]:
        return tuple(a for a in self.addresses if a.transport == "tcp")

    def udp_addresses(self) -> tuple[Address, ...]:
        return tuple(a for a in self.addresses if a.transport == "udp")


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
