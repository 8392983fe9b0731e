"""
PCP, the Port Control Protocol (RFC 6887): the MAP opcode's codec and a
Twisted client.

The codec is pure: L{encode_map_request} and L{decode_map_response}.
L{PCPClient} shares L{crust.nat.portmap.natpmp.DatagramRequestClient}'s request and
retransmission machinery (RFC 6887 retransmits for ever from 3 s; a node
wants to fall back to NAT-PMP or UPnP within seconds, so the schedule is
NAT-PMP's, injectable).  A NAT-PMP-only server answers a PCP request with
NAT-PMP's "unsupported version": that ends the request at once with
L{crust.nat.portmap.gateway.NoService}.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass, field
from typing import Optional

from twisted.internet.defer import Deferred, fail

from crust.nat.portmap.gateway import MalformedResponse, MappingRefused, NoService
from crust.nat.portmap.natpmp import DEFAULT_LIFETIME, AnswerError, DatagramRequestClient, ResponseMismatch

SERVER_PORT = 5351
VERSION = 2
OP_ANNOUNCE = 0
OP_MAP = 1
PROTOCOLS = {"tcp": 6, "udp": 17}
_TRANSPORTS = {v: k for k, v in PROTOCOLS.items()}
MAX_MESSAGE = 1100
NONCE_SIZE = 12

RESULT_CODES = {
    0: "SUCCESS",
    1: "UNSUPP_VERSION",
    2: "NOT_AUTHORIZED",
    3: "MALFORMED_REQUEST",
    4: "UNSUPP_OPCODE",
    5: "UNSUPP_OPTION",
    6: "MALFORMED_OPTION",
    7: "NETWORK_FAILURE",
    8: "NO_RESOURCES",
    9: "UNSUPP_PROTOCOL",
    10: "USER_EX_QUOTA",
    11: "CANNOT_PROVIDE_EXTERNAL",
    12: "ADDRESS_MISMATCH",
    13: "EXCESSIVE_REMOTE_PEERS",
}
# results meaning "this server does not do what we ask", not "no to this request"
_NO_SERVICE_RESULTS = (1, 4)

_REQUEST_HEADER = struct.Struct("!BBHI16s")  # version, R|opcode, reserved, lifetime, client ip
_RESPONSE_HEADER = struct.Struct("!BBBBII12s")  # version, R|opcode, reserved, result, lifetime, epoch, reserved
_MAP = struct.Struct("!12sB3sHH16s")  # nonce, protocol, reserved, internal port, external port, external ip
HEADER_SIZE = _RESPONSE_HEADER.size  # 24
MAP_SIZE = HEADER_SIZE + _MAP.size  # 60


def to_wire_address(host: str) -> bytes:
    """16 bytes: IPv6 as is, IPv4 as IPv4-mapped IPv6 (C{::ffff:a.b.c.d})."""
    ip = ipaddress.ip_address(host.partition("%")[0])
    if ip.version == 4:
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def from_wire_address(raw: bytes) -> str:
    """The text form of a 16-byte PCP address (IPv4-mapped ones as IPv4)."""
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


@dataclass(frozen=True)
class MapResponse:
    """A decoded MAP response; C{result} 0 is success, then the rest is the grant."""

    result: int
    lifetime: int
    epoch: int
    nonce: Optional[bytes]  # None for a header-only error response
    transport: Optional[str]
    internal_port: int
    external_port: int
    external_ip: Optional[str]
    options: tuple[tuple[int, bytes], ...] = field(default=())

    @property
    def reason(self) -> str:
        return RESULT_CODES.get(self.result, f"unknown result {self.result}")


def encode_map_request(nonce: bytes, transport: str, internal_port: int, client_ip: str,
                       lifetime: int = DEFAULT_LIFETIME, external_port: int = 0,
                       external_ip: Optional[str] = None) -> bytes:
    """
    A MAP request.  C{client_ip} is our address as the server sees it;
    C{external_ip} (a suggestion) defaults to "any" of the client's family;
    C{lifetime} 0 deletes the mapping named by the nonce, protocol and port.
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a nonce is {NONCE_SIZE} bytes, not {len(nonce)}")
    if transport not in PROTOCOLS:
        raise ValueError(f"unknown transport {transport!r}")
    if not 0 < internal_port < 65536 or not 0 <= external_port < 65536:
        raise ValueError(f"port out of range: {internal_port}, {external_port}")
    if not 0 <= lifetime < 2**32:
        raise ValueError(f"lifetime out of range: {lifetime}")
    client = to_wire_address(client_ip)
    if external_ip is None:
        external_ip = "0.0.0.0" if ipaddress.ip_address(client_ip.partition("%")[0]).version == 4 else "::"
    header = _REQUEST_HEADER.pack(VERSION, OP_MAP, 0, lifetime, client)
    body = _MAP.pack(nonce, PROTOCOLS[transport], b"\0\0\0", internal_port, external_port,
                     to_wire_address(external_ip))
    return header + body


def _parse_options(data: bytes) -> tuple[tuple[int, bytes], ...]:
    options = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise MalformedResponse(f"truncated option header at offset {offset}")
        code, length = data[offset], int.from_bytes(data[offset + 2: offset + 4], "big")
        padded = (length + 3) & ~3
        if offset + 4 + padded > len(data):
            raise MalformedResponse(f"option {code} of length {length} overruns the message")
        options.append((code, data[offset + 4: offset + 4 + length]))
        offset += 4 + padded
    return tuple(options)


def decode_map_response(data: bytes) -> MapResponse:
    """
    Decode a response to a MAP request (sizes, version, opcode, options
    checked; nonce and ports are the caller's to match).  An error response
    may be the bare 24-byte header.

    @raise MalformedResponse: naming what is wrong.
    """
    if len(data) < HEADER_SIZE or len(data) > MAX_MESSAGE or len(data) % 4:
        raise MalformedResponse(f"{len(data)} bytes is not a PCP response size "
                                f"({HEADER_SIZE}..{MAX_MESSAGE}, a multiple of 4)")
    version, r_opcode, _, result, lifetime, epoch, _ = _RESPONSE_HEADER.unpack_from(data)
    if version != VERSION:
        raise MalformedResponse(f"version {version}, expected {VERSION}")
    if not r_opcode & 0x80:
        raise MalformedResponse("a request (R bit clear), not a response")
    if r_opcode & 0x7F != OP_MAP:
        raise MalformedResponse(f"response to opcode {r_opcode & 0x7F}, expected MAP ({OP_MAP})")
    if len(data) < MAP_SIZE:
        if result == 0:
            raise MalformedResponse(f"success response of {len(data)} bytes lacks the MAP data")
        if len(data) != HEADER_SIZE:
            raise MalformedResponse(f"error response of {len(data)} bytes: neither header-only nor full")
        return MapResponse(result, lifetime, epoch, None, None, 0, 0, None)
    nonce, protocol, _, internal, external, ext_ip = _MAP.unpack_from(data, HEADER_SIZE)
    options = _parse_options(data[MAP_SIZE:])
    transport = _TRANSPORTS.get(protocol)
    if result == 0:
        if transport is None:
            raise MalformedResponse(f"granted a mapping of unknown protocol {protocol}")
        if internal == 0:
            raise MalformedResponse("granted a mapping of internal port 0")
    return MapResponse(result, lifetime, epoch, nonce, transport, internal, external,
                       from_wire_address(ext_ip), options)


def is_natpmp_unsupported_version(data: bytes) -> bool:
    """Whether C{data} is a NAT-PMP server's "unsupported version" answer to a PCP request."""
    return 8 <= len(data) <= 16 and data[0] == 0 and data[1] >= 128 and int.from_bytes(data[2:4], "big") == 1


def epoch_valid(prev_epoch: int, prev_time: float, epoch: int, now: float) -> bool:
    """RFC 6887 section 8.5: whether the server's epoch is consistent with our clock."""
    if epoch < prev_epoch - 1:
        return False
    client_delta = now - prev_time
    server_delta = epoch - prev_epoch
    if client_delta + 2 < server_delta - server_delta / 16:
        return False
    if server_delta + 2 < client_delta - client_delta / 16:
        return False
    return True


class PCPClient(DatagramRequestClient):
    """
    A PCP client of one server (the gateway).  C{client_ip} overrides our
    address as written in requests (default: the connected socket's).
    """

    protocol_name = "PCP"

    def __init__(self, gateway: str, *, client_ip: Optional[str] = None, **kwargs: object) -> None:
        super().__init__(gateway, **kwargs)  # type: ignore[arg-type]
        self.client_ip = client_ip

    def map_port(self, transport: str, internal_port: int, lifetime: int = DEFAULT_LIFETIME, *,
                 nonce: Optional[bytes] = None, external_port: int = 0,
                 external_ip: Optional[str] = None) -> Deferred:
        """
        Ask for (or renew, with the same C{nonce}) a mapping; fires with the
        successful L{MapResponse} (its C{nonce} is the one to renew and delete
        with) or fails with L{MappingRefused} or L{crust.nat.portmap.gateway.NoService}.
        """
        nonce = nonce if nonce is not None else new_nonce()
        client_ip = self.client_ip or self.local_host()
        if client_ip is None or ipaddress.ip_address(client_ip.partition("%")[0]).is_unspecified:
            return fail(NoService(f"PCP: no local address towards {self.gateway} (not connected?)"))
        payload = encode_map_request(nonce, transport, internal_port, client_ip, lifetime,
                                     external_port, external_ip)

        def decode(data: bytes) -> MapResponse:
            if is_natpmp_unsupported_version(data):
                raise AnswerError(NoService(f"{self.gateway} speaks NAT-PMP, not PCP"))
            response = decode_map_response(data)
            if response.nonce is not None and (response.nonce != nonce or response.transport != transport
                                               or response.internal_port != internal_port):
                raise ResponseMismatch("nonce, protocol or internal port do not match our request")
            self.note_epoch(response.epoch)
            if response.result in _NO_SERVICE_RESULTS:
                raise AnswerError(NoService(f"PCP server {self.gateway}: {response.reason}"))
            if response.result != 0:
                raise AnswerError(MappingRefused("PCP", response.result, response.reason))
            if lifetime and (response.lifetime == 0 or response.external_port == 0):
                raise AnswerError(MappingRefused("PCP", 0, "granted no mapping (lifetime or port 0)"))
            return response

        return self._request(payload, decode)

    def unmap_port(self, transport: str, internal_port: int, nonce: bytes) -> Deferred:
        """Delete the mapping made with C{nonce}; fires with the L{MapResponse}."""
        return self.map_port(transport, internal_port, 0, nonce=nonce)

    def _epoch_restart(self, prev_epoch: int, prev_time: float, epoch: int, now: float) -> bool:
        return not epoch_valid(prev_epoch, prev_time, epoch, now)
