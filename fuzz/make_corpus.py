"""
Write the seed corpus of every atheris target, C{fuzz/corpus/NAME/}: small
valid inputs made by crust's own encoders (and, for what only a gateway
sends, by the test suite's fixtures), each in the input format of its
target (a leading selector byte where the target has one).

    python fuzz/make_corpus.py          # from the repository's root: every target's
    python fuzz/make_corpus.py stun     # one target's

Each directory is emptied and written again.  Most inputs come out the
same each time; those with fresh randomness inside (QUIC Initials, sealed
boxes) change, which is harmless.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # crust and the test suite's fixtures, from this checkout

from nacl.bindings import crypto_box_beforenm, crypto_box_keypair  # noqa: E402
from nacl.public import PrivateKey  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from crust.address import Address  # noqa: E402
from crust.bootstrap import discovery  # noqa: E402
from crust.candidates import Candidate, CandidateKind, MappingKind, NatBehaviour, NatInfo  # noqa: E402
from crust.config import Config  # noqa: E402
from crust.connection_info import PubConnectionInfo  # noqa: E402
from crust.identity import Identity  # noqa: E402
from crust.nat import echo, stun, turn_codec  # noqa: E402
from crust.node.config_file import config_to_json  # noqa: E402
from crust.punch import checks  # noqa: E402
from crust.punch import messages as rdv  # noqa: E402
from crust.punch.messages import EnvelopeType, RendezvousFrame, seal  # noqa: E402
from crust.relay import messages as relay  # noqa: E402
from crust.relay.messages import CircuitLimits, RelayFrame  # noqa: E402
from crust.session.signed_frames import encode_batch, encode_single_head  # noqa: E402
from crust.streams import frames as streams  # noqa: E402
from crust.streams.frames import StreamFrame  # noqa: E402
from crust.transport.quic.dispatcher import QuicDispatcher  # noqa: E402
from crust.transport.tls import make_certificate  # noqa: E402
from crust.wire import (CHOOSE_FRAME, DATA, GRANT_FRAME, HEARTBEAT_FRAME, CertInfo, CloseReason, FrameType,  # noqa: E402
                        Hello, Intent, RejectReason, encode_close, encode_reject, frame, network_hash)

from tests.nat.test_natpmp import ext_response, map_response  # noqa: E402
from tests.nat.test_pcp import response as pcp_response  # noqa: E402
from tests.nat.test_upnp_igd import SSDP_OK, WANIP2, description, soap_fault, soap_response  # noqa: E402

NET = network_hash(None)
A = Identity.from_seed(b"a" * 32)
B = Identity.from_seed(b"b" * 32)
U = Identity.from_seed(b"u" * 32)  # fuzz_udp's node
NOW = 1_700_000_000.0  # fuzz_punch_messages's clock
HERE_ADDRESS = Address("udp", "203.0.113.5", 41000)
INFO = PubConnectionInfo(A.peer_id, (Address("tcp", "192.0.2.1", 4242),), candidates=(
    Candidate(Address.parse("udp:203.0.113.5:5000"), CandidateKind.SRFLX, "echo"),
    Candidate(Address.parse("tcp:[2001:db8::5]:4242"), CandidateKind.HOST, "listen"),
), nat=NatInfo(udp=NatBehaviour(MappingKind.EIM)))


def _hellos() -> list[bytes]:
    return [Hello(network=NET).encode(),
            Hello(network=NET, intent=Intent.PROBE, observed=HERE_ADDRESS).encode(),
            Hello(network=NET, intent=Intent.BOOTSTRAP, listeners=(Address("tcp", "192.0.2.1", 4242),),
                  echo_alt=5001, handover=True).encode()]


def framing() -> Iterable[bytes]:
    yield b"\x00" + b"".join(_hellos())
    yield b"\x07" + frame(DATA, b"hello") + HEARTBEAT_FRAME + frame(DATA, b"x" * 100)
    yield b"\xff" + frame(DATA, b"y" * 4096)


def wire() -> Iterable[bytes]:
    for hello in _hellos():
        yield b"\x00" + hello[5:]
    yield b"\x01" + CertInfo(network=NET).encode()
    yield b"\x02" + encode_reject(RejectReason.NETWORK_MISMATCH, "another network")[5:]
    yield b"\x03" + encode_close(CloseReason.SHUTDOWN)[5:]


def connection() -> Iterable[bytes]:
    # our side and role in the first byte (bit 0: we are the larger id, bit 1: we connected), then the peer's frames
    hello = Hello(network=NET).encode()
    yield b"\x01" + b"\xff" + hello + frame(DATA, b"first") + HEARTBEAT_FRAME
    yield b"\x00" + b"\x10" + hello + CHOOSE_FRAME + frame(DATA, b"after choose") + encode_close(CloseReason.DISCONNECT)
    yield b"\x03" + b"\x03" + Hello(network=NET, intent=Intent.BOOTSTRAP).encode() + GRANT_FRAME
    yield b"\x02" + b"\x40" + Hello(network=NET, intent=Intent.PROBE).encode()
    yield b"\x01" + b"\xff" + hello + frame(FrameType.MOVE) + encode_reject(RejectReason.WRONG_PEER)


def tls_info() -> Iterable[bytes]:
    from cryptography.hazmat.primitives.serialization import Encoding

    yield make_certificate(A).public_bytes(Encoding.DER)
    der = make_certificate(B, CertInfo(network=NET)).public_bytes(Encoding.DER)
    yield der
    # its key of a type nobody knows (OID 1.3.109.112): once a finding of this target
    ed25519 = bytes.fromhex("06032b6570")
    at = der.index(ed25519, der.index(ed25519) + 1)
    yield der[:at] + bytes.fromhex("06032b6d70") + der[at + 5:]
    # of X.509 version 121, which OpenSSL reads and cryptography does not: once a finding too
    yield der.replace(bytes.fromhex("a003020102"), bytes.fromhex("a003020179"), 1)


def stun_() -> Iterable[bytes]:
    request = stun.make_binding_request(transaction_id=b"t" * 12)
    yield b"\x00" + stun.encode(request)
    yield b"\x00" + stun.encode(stun.make_binding_success(request, HERE_ADDRESS))
    yield b"\x00" + stun.encode(stun.make_binding_error(request, 400, "Bad Request"))
    yield b"\x00" + stun.encode(request, integrity_key=stun.short_term_key("password"))
    allocate = turn_codec.with_credentials(turn_codec.allocate_request(b"a" * 12, lifetime=600), "alice", "realm",
                                           "nonce")
    yield b"\x01" + stun.encode(allocate, integrity_key=stun.long_term_key("alice", "realm", "secret"))


def turn() -> Iterable[bytes]:
    yield turn_codec.encode_channel_data(0x4000, b"relayed data")
    yield turn_codec.encode_channel_data(0x4001, b"", pad=False)
    yield stun.encode(turn_codec.data_indication(HERE_ADDRESS, b"relayed", b"d" * 12))
    yield stun.encode(turn_codec.data_indication(Address("udp", "2001:db8::5", 7000), b"six", b"e" * 12))


def echo_() -> Iterable[bytes]:
    yield echo.encode_address(HERE_ADDRESS)
    yield echo.encode_address(Address("udp", "2001:db8::5", 7000))
    public, secret = crypto_box_keypair()
    key = crypto_box_beforenm(echo.curve_public_key(U.peer_id), secret)
    yield echo.encode_request(key, public, b"r" * 16, b"n" * 24)
    yield echo.encode_response(key, b"r" * 16, HERE_ADDRESS, b"m" * 24)


def natpmp() -> Iterable[bytes]:
    yield ext_response()
    yield map_response("udp")
    yield map_response("tcp", result=3)
    yield ext_response(result=2)[:8]


def pcp() -> Iterable[bytes]:
    yield pcp_response()
    yield pcp_response(result=8)[:24]
    yield pcp_response(ip="2001:db8::1", protocol=17)
    yield pcp_response(options=b"\x80\x00\x00\x00")


def upnp() -> Iterable[bytes]:
    yield b"\x00" + SSDP_OK
    yield b"\x01" + description()
    yield b"\x01" + description(WANIP2, url_base="http://192.0.2.1:5000/")
    yield b"\x02" + soap_response("GetExternalIPAddress", NewExternalIPAddress="203.0.113.7")
    yield b"\x03" + soap_response("AddPortMapping")
    yield b"\x04" + soap_fault(718, "ConflictInMappingEntry")


def discovery_() -> Iterable[bytes]:
    key = PrivateKey(b"k" * 32)
    request_id = b"r" * 8
    request = discovery.encode_request(key.public_key, discovery.lan_network_key(None), request_id)
    yield b"\x00" + request
    parsed = discovery.decode_request(request)
    yield b"\x01" + discovery.encode_reply(parsed, A.peer_id, [Address("tcp", "192.168.1.5", 4242),
                                                                Address("udp", "fe80::1", 4242)])


def connection_info() -> Iterable[bytes]:
    yield INFO.to_json().encode()
    yield PubConnectionInfo(B.peer_id, (Address("tcp", "127.0.0.1", 5000),)).to_json().encode()


def config_file() -> Iterable[bytes]:
    yield config_to_json(Config()).encode()
    yield json.dumps({"network_name": "lab", "listen_port": 4242, "serve_relay": True,
                      "hard_coded_contacts": ["tcp:192.0.2.1:4242"]}).encode()


def bootstrap_cache() -> Iterable[bytes]:
    yield json.dumps({"crust_bootstrap_cache": 1, "peers": [
        {"peer_id": str(A.peer_id), "address": "tcp:192.0.2.1:4242", "last_seen": NOW, "last_success": NOW,
         "failures": 0},
        {"peer_id": str(B.peer_id), "address": "udp:[2001:db8::5]:4242", "last_seen": NOW - 60,
         "last_success": None, "failures": 2},
    ]}, indent=1).encode()


def jsonread() -> Iterable[bytes]:
    yield b'{"a": [1, 2.5, -3e2, "x\\u00e9", null, true, {"b": {}}]}'
    yield Hello(network=NET).encode()[5:]


def address() -> Iterable[bytes]:
    for text in ("tcp:192.0.2.1:4242", "udp:[2001:db8::5]:5000", "udp:[fe80::1%eth0]:5000", "127.0.0.1:80",
                 str(A.peer_id)):
        yield text.encode()


def punch_checks() -> Iterable[bytes]:
    key, attempt = b"k" * 32, b"\x01" * 8
    yield checks.encode_check(key, attempt, 1)
    yield checks.encode_ack(key, attempt, 1, 0, HERE_ADDRESS)
    yield checks.encode_ack(key, attempt, 2, 1, Address("udp", "2001:db8::5", 7000))


def _selector(choices: tuple, ftype: object) -> bytes:
    return bytes([choices.index(ftype)])


def punch_messages() -> Iterable[bytes]:
    choices = tuple(RendezvousFrame) + ("envelope",)
    for encoded in (rdv.encode_query(1, B.peer_id), rdv.encode_answer(1, B.peer_id, True, True),
                    rdv.encode_forward(B.peer_id, b"sealed"), rdv.encode_deliver(A.peer_id, b"sealed"),
                    rdv.encode_error(B.peer_id, rdv.ERROR_NOT_CONNECTED, "not connected")):
        yield _selector(choices, RendezvousFrame(encoded[4])) + encoded[5:]
    body = {"info": json.loads(INFO.to_json()), "tcp": True, "udp": True}
    for mtype, content in ((EnvelopeType.CONNECT, body), (EnvelopeType.REPLY, body), (EnvelopeType.SYNC, {}),
                           (EnvelopeType.RESULT, {"ok": True})):
        yield _selector(choices, "envelope") + seal(A, B.peer_id, NET, mtype, b"\x01" * 8, content, NOW)


def relay_messages() -> Iterable[bytes]:
    choices = tuple(RelayFrame)
    limits = CircuitLimits(1 << 20, 3600.0, 1 << 20, 65536)
    for encoded in (relay.encode_open(1, B.peer_id), relay.encode_invite(0x80000001, A.peer_id, 65536),
                    relay.encode_accept(0x80000001), relay.encode_ready(1, limits),
                    relay.encode_close(1, relay.REASON_REFUSED, "no"), relay.encode_data(1, b"circuit data"),
                    relay.encode_credit(1, 65536)):
        yield _selector(choices, RelayFrame(encoded[4])) + encoded[5:]


def signed_frames() -> Iterable[bytes]:
    signature = b"s" * 64
    yield b"\x00" + encode_single_head(1, 7, signature) + b"a signed message"
    yield b"\x01" + encode_batch(2, signature, [(1, b"first"), (2, b""), (5, b"third")])


def stream_frames() -> Iterable[bytes]:
    choices = tuple(StreamFrame) + ("quic open", "quic answer")
    for encoded in (streams.encode_open(0x80000001, 1 << 20, "web"), streams.encode_accept(0x80000001, 1 << 20),
                    streams.encode_data(1, b"stream data"), streams.encode_credit(1, 65536), streams.encode_fin(1),
                    streams.encode_reset(1, streams.REASON_REFUSED, "nobody listens for service 'x' here")):
        yield _selector(choices, StreamFrame(encoded[4])) + encoded[5:]
    yield _selector(choices, "quic open") + streams.encode_quic_open("amp") + b"first bytes"
    yield _selector(choices, "quic answer") + streams.ACCEPTED + b"reply"
    yield _selector(choices, "quic answer") + streams.encode_quic_refusal(streams.REASON_TOO_MANY, "1024 open")


def state() -> Iterable[bytes]:
    yield json.dumps({"pid": 1234, "peer_id": str(A.peer_id), "control": "/run/crust/control.sock",
                      "listening": ["tcp:0.0.0.0:4242"]}).encode()


def control() -> Iterable[bytes]:
    # first byte: 0 the node's side (requests), 1 the client's side (answers); then chunk size, then lines
    for line in (b'{"id": 1, "cmd": "ping"}', b'{"id": "a", "cmd": "info"}',
                 b'{"id": 2, "cmd": "send", "peer_id": "' + str(B.peer_id).encode() + b'", "data": "aGk="}',
                 b'{"id": 3, "cmd": "connect", "info": ' + INFO.to_json().encode() + b'}',
                 b'{"id": 4, "cmd": "watch", "events": ["new_message"]}'):
        yield b"\x00\xff" + line + b"\n"
    yield b"\x01\xff" + b'{"id": 1, "ok": true, "result": {"peer_id": "x"}}\n{"event": "lost_peer"}\n'


def udp() -> Iterable[bytes]:
    yield from (datagram[1:] for datagram in stun_() if datagram[0] == 0)
    yield from list(echo_())[2:]
    yield from punch_checks()
    sent: list[bytes] = []
    client = QuicDispatcher(Identity.from_seed(b"q" * 32), lambda data, addr: sent.append(data) or True,
                            clock=Clock())
    client.connect(("127.0.0.1", 40000)).addErrback(lambda failure: None)
    client.close_all()
    yield sent[0]
    yield b"\x45" + bytes(40)  # a short header, no connection of that id


TARGETS: dict[str, Callable[[], Iterable[bytes]]] = {
    "framing": framing, "wire": wire, "connection": connection, "tls_info": tls_info, "stun": stun_,
    "turn": turn, "echo": echo_, "natpmp": natpmp, "pcp": pcp, "upnp": upnp, "discovery": discovery_,
    "connection_info": connection_info, "config_file": config_file, "bootstrap_cache": bootstrap_cache,
    "jsonread": jsonread, "address": address, "punch_checks": punch_checks, "punch_messages": punch_messages,
    "relay_messages": relay_messages, "signed_frames": signed_frames,
    "stream_frames": stream_frames, "state": state, "control": control, "udp": udp,
}


def main(names: list[str]) -> None:
    missing = sorted({p.stem[5:] for p in HERE.glob("fuzz_*.py")} ^ set(TARGETS))
    if missing:
        sys.exit(f"targets and corpus makers differ: {', '.join(missing)}")
    for name in names or list(TARGETS):
        make = TARGETS[name]
        where = HERE / "corpus" / name
        shutil.rmtree(where, ignore_errors=True)
        os.makedirs(where)
        count = 0
        for data in make():
            (where / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)
            count += 1
        print(f"{name}: {count} inputs")


if __name__ == "__main__":
    main(sys.argv[1:])
