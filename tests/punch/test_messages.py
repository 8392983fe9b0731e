"""
Tests for L{crust.punch.messages}: the rendezvous control frames, the
sealed and signed envelope, and the replay guard.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from nacl.bindings import crypto_box_afternm
from twisted.trial.unittest import SynchronousTestCase

from crust.errors import CrustError, ProtocolViolation
from crust.identity import Identity, PeerId
from crust.punch import messages as m
from crust.punch.checks import static_shared
from tests import examples
from tests.hostile_json import HOSTILE_DOCUMENTS, hostile_json, only_refused
from crust.punch.messages import (
    CONTEXT,
    MAX_AGE,
    MAX_BLOB,
    Envelope,
    EnvelopeError,
    EnvelopeType,
    RdvAnswer,
    RdvDeliver,
    RdvError,
    RdvForward,
    RdvQuery,
    RendezvousFrame,
    ReplayGuard,
    decode_frame,
    open_envelope,
    seal,
)
from crust.wire import network_hash

ALICE = Identity.from_seed(bytes(range(32)))
TARGET = Identity.from_seed(bytes(range(32, 64)))
RELAY = Identity.from_seed(bytes(range(64, 96)))
A, T, R = ALICE.peer_id, TARGET.peer_id, RELAY.peer_id
NET = network_hash("lab")
ATTEMPT = bytes.fromhex("a1b2c3d4e5f60718")
NOW = 1_700_000_000.0
INFO = {"crust": 1, "id": str(A), "addrs": ["tcp:203.0.113.10:4242", "udp:[2001:db8::1]:5000"],
        "cands": [["tcp:10.0.0.2:4242", "host", "local"]], "nat": {"udp": {"map": "eim", "filter": "apdf"}}}
CONNECT_BODY = {"info": INFO, "tcp": True, "udp": True}

JSON_DECODERS = [m.decode_query, m.decode_answer, m.decode_forward, m.decode_deliver, m.decode_error]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=60),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
small_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                          lambda children: st.lists(children, max_size=3)
                          | st.dictionaries(st.sampled_from(["ok", "info", "tcp", "udp", "reason"]), children,
                                            max_size=3),
                          max_leaves=6)
field_values = st.one_of(json_values, st.just(str(T)), st.just("QQ=="), st.integers(0, 2**32 - 1),
                         st.sampled_from(["not-connected", "disabled"]))


def split(data: bytes) -> tuple[int, bytes]:
    """The type and payload of one encoded frame (checking its length)."""
    length, ftype = struct.unpack("!IB", data[:5])
    assert length == len(data) - 4
    return ftype, data[5:]


def craft(inner: bytes, sender: Identity = ALICE, to: PeerId = T, signer: Identity | None = None) -> bytes:
    """An envelope around any C{inner} bytes, signed (by C{signer}) and boxed like L{seal}'s."""
    signature = (signer or sender).signing_key.sign(CONTEXT + inner).signature
    nonce = os.urandom(24)
    return nonce + crypto_box_afternm(signature + inner, nonce, static_shared(sender, to))


def inner_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "t": "connect", "from": str(A), "to": str(T), "net": NET,
                           "attempt": ATTEMPT.hex(), "ts": NOW, "body": CONNECT_BODY}
    doc.update(changes)
    return doc


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def open_t(blob: bytes, now: float = NOW, guard: ReplayGuard | None = None, from_peer: PeerId = A,
           network: str = NET) -> Envelope:
    return open_envelope(TARGET, from_peer, network, blob, now, guard if guard is not None else ReplayGuard())


class FrameTests(SynchronousTestCase):
    def test_types(self) -> None:
        self.assertEqual([int(t) for t in RendezvousFrame], [16, 17, 18, 19, 20])
        self.assertEqual(m.RDV_FORWARD, 18)

    def test_round_trips(self) -> None:
        """Every frame decodes to what was encoded, by type."""
        blob = os.urandom(MAX_BLOB)
        cases = [
            (m.encode_query(0xFFFFFFFF, T), RdvQuery(0xFFFFFFFF, T)),
            (m.encode_answer(7, T, True, False), RdvAnswer(7, T, True, False)),
            (m.encode_answer(0, T, False, True), RdvAnswer(0, T, False, True)),
            (m.encode_forward(T, blob), RdvForward(T, blob)),
            (m.encode_deliver(A, b"x"), RdvDeliver(A, b"x")),
            (m.encode_error(T, m.ERROR_RATE_LIMITED, "slow down [3/s]"),
             RdvError(T, "rate-limited", "slow down [3/s]")),
            (m.encode_error(T, m.ERROR_NOT_CONNECTED), RdvError(T, "not-connected", "")),
        ]
        for data, expected in cases:
            ftype, payload = split(data)
            self.assertLessEqual(len(payload), m.MAX_FRAME_PAYLOAD)
            self.assertEqual(decode_frame(ftype, payload), expected)

    def test_encoders_refuse_bad_arguments(self) -> None:
        self.assertRaises(ValueError, m.encode_forward, T, b"")
        self.assertRaises(ValueError, m.encode_forward, T, bytes(MAX_BLOB + 1))
        self.assertRaises(ValueError, m.encode_query, -1, T)
        self.assertRaises(ValueError, m.encode_query, 2**32, T)
        self.assertRaises(ValueError, m.encode_query, True, T)
        self.assertRaises(ValueError, m.encode_error, T, "no-such-reason")
        self.assertRaises(TypeError, m.encode_query, 1, str(T))
        self.assertEqual(m.decode_error(split(m.encode_error(T, m.ERROR_DISABLED, "x" * 5000))[1]).detail, "x" * 512)

    def test_unknown_keys_and_reasons(self) -> None:
        """Unknown scalar keys are ignored, an unknown ERROR reason is kept."""
        self.assertEqual(m.decode_query(canonical({"q": 1, "peer": str(T), "hint": "x", "n": None})),
                         RdvQuery(1, T))
        self.assertEqual(m.decode_error(canonical({"to": str(T), "reason": "busy"})).reason, "busy")

    def test_wrong_type(self) -> None:
        self.assertRaises(ProtocolViolation, decode_frame, 4, b"")
        self.assertRaises(ProtocolViolation, decode_frame, 21, canonical({"q": 1, "peer": str(T)}))

    def test_malformed(self) -> None:
        """Each malformed payload is a ProtocolViolation with a message."""
        peer = str(T)
        blob = base64.b64encode(b"envelope").decode()
        cases: list[tuple[Any, bytes]] = [
            (m.decode_query, b""),
            (m.decode_query, b"\xff\xfe"),
            (m.decode_query, b"[1, 2]"),
            (m.decode_query, b'"text"'),
            (m.decode_query, b"{"),
            (m.decode_query, canonical({"peer": peer})),
            (m.decode_query, canonical({"q": True, "peer": peer})),
            (m.decode_query, canonical({"q": 1.0, "peer": peer})),
            (m.decode_query, canonical({"q": -1, "peer": peer})),
            (m.decode_query, canonical({"q": 2**32, "peer": peer})),
            (m.decode_query, canonical({"q": 1, "peer": peer[:-1]})),
            (m.decode_query, canonical({"q": 1, "peer": 5})),
            (m.decode_query, b'{"q": 1, "q": 2, "peer": "%s"}' % peer.encode()),
            (m.decode_query, b'{"q": NaN, "peer": "%s"}' % peer.encode()),
            (m.decode_query, canonical({"q": 1, "peer": peer, "extra": [1]})),
            (m.decode_query, canonical({"q": 1, "peer": peer, "extra": {}})),
            (m.decode_query, canonical({"q": 1, "peer": peer, **{f"k{i}": i for i in range(20)}})),
            (m.decode_query, b" " * (m.MAX_FRAME_PAYLOAD + 1)),
            (m.decode_answer, canonical({"q": 1, "peer": peer, "connected": 1, "relay": False})),
            (m.decode_answer, canonical({"q": 1, "peer": peer, "connected": True})),
            (m.decode_forward, canonical({"to": peer})),
            (m.decode_forward, canonical({"to": peer, "blob": ""})),
            (m.decode_forward, canonical({"to": peer, "blob": "not base64!"})),
            (m.decode_forward, canonical({"to": peer, "blob": blob[:-1]})),  # bad padding
            (m.decode_forward, canonical({"to": peer, "blob": blob + "\n"})),
            (m.decode_forward, canonical({"to": peer, "blob": "QR=="})),  # non-canonical: b"A" is "QQ=="
            (m.decode_forward, canonical({"to": peer, "blob": base64.b64encode(bytes(MAX_BLOB + 1)).decode()})),
            (m.decode_deliver, canonical({"to": peer, "blob": blob})),  # DELIVER names "from"
            (m.decode_error, canonical({"to": peer, "reason": ""})),
            (m.decode_error, canonical({"to": peer, "reason": "x" * 65})),
            (m.decode_error, canonical({"to": peer, "reason": "disabled", "detail": 3})),
            (m.decode_error, canonical({"to": peer, "reason": "disabled", "detail": "x" * 513})),
        ]
        for decoder, payload in cases:
            with self.assertRaises(ProtocolViolation, msg=f"{decoder.__name__} {payload[:80]!r}") as cm:
                decoder(payload)
            self.assertIn("rendezvous", str(cm.exception))
        self.assertEqual(m.decode_forward(canonical({"to": peer, "blob": "QQ=="})).blob, b"A")

    def test_deep_nesting(self) -> None:
        """Deeply nested payloads are refused before parsing, never a RecursionError."""
        for payload in (b"[" * 100000, b"[" * 16000, b'{"a":' * 3000, b"[" * 8000 + b"]" * 8000,
                        b'{"q": 1, "peer": "x", "z": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
            for decoder in JSON_DECODERS:
                self.assertRaises(ProtocolViolation, decoder, payload)

    def test_brackets_in_strings(self) -> None:
        """Brackets, quotes and backslashes inside strings do not count as nesting."""
        detail = '[[[{{{ \\" ]]] \\\\ "[' * 20
        payload = json.dumps({"to": str(T), "reason": "disabled", "detail": detail}).encode()
        self.assertEqual(m.decode_error(payload).detail, detail)

    def test_many_containers(self) -> None:
        """A frame holds one object: more arrays or objects are refused before parsing."""
        for payload in (b"[]" * 8000, b'{"q": 1, "peer": "x", "z": [' + b"[]," * 5000 + b"[]]}", b"{}" * 2):
            with self.assertRaises(ProtocolViolation) as cm:
                m.decode_query(payload)
            self.assertIn("arrays and objects", str(cm.exception))

    def test_hostile_documents(self) -> None:
        for payload in HOSTILE_DOCUMENTS:
            for decoder in JSON_DECODERS:
                only_refused(self, lambda: decoder(payload), ProtocolViolation)
        e = self.assertRaises(ProtocolViolation, m.decode_query, b'{"q": ' + b"9" * 5000 + b', "peer": "x"}')
        self.assertIn("number too long", str(e))

    @examples(300)
    @given(st.sampled_from(JSON_DECODERS),
           hostile_json({"q": 1, "peer": "a" * 52, "connected": True, "relay": False, "to": "a" * 52,
                         "blob": "AAAA", "reason": "disabled"}))
    def test_hostile(self, decoder: Any, payload: bytes) -> None:
        only_refused(self, lambda: decoder(payload), ProtocolViolation)

    @examples(300)
    @given(st.sampled_from(JSON_DECODERS), st.binary(max_size=200))
    def test_random_bytes(self, decoder: Any, payload: bytes) -> None:
        """Random bytes decode or raise ProtocolViolation, nothing else."""
        try:
            decoder(payload)
        except ProtocolViolation:
            pass

    @examples(500)
    @given(st.sampled_from(JSON_DECODERS),
           st.dictionaries(st.sampled_from(["q", "peer", "connected", "relay", "to", "from", "blob", "reason",
                                            "detail", "other"]), field_values, max_size=6))
    def test_random_json(self, decoder: Any, body: dict[str, Any]) -> None:
        """Random objects of the frames' keys decode or raise ProtocolViolation, nothing else."""
        try:
            decoder(json.dumps(body).encode())
        except ProtocolViolation:
            pass

    @examples(200)
    @given(st.sampled_from(JSON_DECODERS), json_values)
    def test_random_json_values(self, decoder: Any, value: Any) -> None:
        try:
            decoder(json.dumps(value).encode())
        except ProtocolViolation:
            pass


class EnvelopeTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """The addressee opens every type of envelope and reads what was sealed."""
        bodies = {EnvelopeType.CONNECT: CONNECT_BODY, EnvelopeType.REPLY: {"info": {}, "tcp": False, "udp": True},
                  EnvelopeType.SYNC: {}, EnvelopeType.RESULT: {"ok": False, "reason": "timed out"}}
        guard = ReplayGuard()
        for mtype, body in bodies.items():
            blob = seal(ALICE, T, NET, mtype.value, ATTEMPT, body, NOW)
            self.assertLessEqual(len(blob), MAX_BLOB)
            envelope = open_envelope(TARGET, A, NET, blob, NOW + 1.5, guard)
            self.assertEqual(envelope, Envelope(A, T, mtype, ATTEMPT, NOW, body))

    def test_shared_secret_given(self) -> None:
        """Callers that keep the shared secret pass it; the result is the same."""
        blob = seal(ALICE, T, NET, EnvelopeType.SYNC, ATTEMPT, {}, NOW, shared=static_shared(ALICE, T))
        envelope = open_envelope(TARGET, A, NET, blob, NOW, ReplayGuard(), shared=static_shared(TARGET, A))
        self.assertEqual(envelope.mtype, EnvelopeType.SYNC)

    def test_only_the_addressee(self) -> None:
        """R (or anyone else) cannot open an envelope for T; its sender can, but finds it is not for it."""
        blob = seal(ALICE, T, NET, "sync", ATTEMPT, {}, NOW)
        for claimed in (A, T, R):
            with self.assertRaises(EnvelopeError) as cm:
                open_envelope(RELAY, claimed, NET, blob, NOW, ReplayGuard())
            self.assertEqual(cm.exception.reason, "unreadable")
        self.assertEqual(self.reason(lambda: open_envelope(ALICE, A, NET, blob, NOW, ReplayGuard())), "unreadable")
        # the box's key is shared by Alice and T, so Alice reads her own envelope, but it is not signed by T
        self.assertEqual(self.reason(lambda: open_envelope(ALICE, T, NET, blob, NOW, ReplayGuard())), "bad-signature")

    def test_every_byte_altered(self) -> None:
        """R cannot alter an envelope: flipping any byte makes it an EnvelopeError."""
        blob = seal(ALICE, T, NET, "result", ATTEMPT, {"ok": True, "reason": ""}, NOW)
        for i in range(len(blob)):
            altered = bytearray(blob)
            altered[i] ^= 0x01
            with self.assertRaises(EnvelopeError, msg=f"byte {i}"):
                open_t(bytes(altered))
        self.assertRaises(EnvelopeError, open_t, blob[:-1])
        self.assertRaises(EnvelopeError, open_t, blob + b"\0")

    def test_other_sender_claimed(self) -> None:
        """R says the envelope comes from someone else: refused."""
        blob = seal(ALICE, T, NET, "sync", ATTEMPT, {}, NOW)
        with self.assertRaises(EnvelopeError) as cm:
            open_t(blob, from_peer=R)
        self.assertEqual(cm.exception.reason, "unreadable")
        # R's own envelope claiming to be Alice's inside: boxed by R, so it only opens as R's, and is misaddressed
        blob = craft(canonical(inner_doc()), sender=RELAY)
        self.assertEqual(self.reason(lambda: open_t(blob)), "unreadable")
        self.assertEqual(self.reason(lambda: open_t(blob, from_peer=R)), "misaddressed")

    def reason(self, f: Any, *args: Any, **kwargs: Any) -> str:
        """The reason code of the EnvelopeError that C{f(*args, **kwargs)} raises."""
        with self.assertRaises(EnvelopeError) as cm:
            f(*args, **kwargs)
        self.assertIsInstance(cm.exception, CrustError)
        return cm.exception.reason

    def test_bad_signature(self) -> None:
        """Boxed by Alice but signed by another key: bad-signature."""
        blob = craft(canonical(inner_doc()), signer=RELAY)
        self.assertEqual(self.reason(lambda: open_t(blob)), "bad-signature")
        self.assertEqual(self.reason(lambda: open_t(craft(b""))), "malformed")

    def test_misaddressed(self) -> None:
        self.assertEqual(self.reason(lambda: open_t(craft(canonical(inner_doc(to=str(R)))))), "misaddressed")
        self.assertEqual(self.reason(lambda: open_t(craft(canonical(inner_doc(**{"from": str(R)}))))),
                         "misaddressed")

    def test_other_network(self) -> None:
        blob = seal(ALICE, T, network_hash("elsewhere"), "sync", ATTEMPT, {}, NOW)
        self.assertEqual(self.reason(lambda: open_t(blob)), "other-network")

    def test_stale(self) -> None:
        """More than MAX_AGE seconds off, either way, is stale; the bound itself is not."""
        blob = seal(ALICE, T, NET, "sync", ATTEMPT, {}, NOW)
        self.assertEqual(self.reason(lambda: open_t(blob, now=NOW + MAX_AGE + 1)), "stale")
        self.assertEqual(self.reason(lambda: open_t(blob, now=NOW - MAX_AGE - 1)), "stale")
        self.assertEqual(open_t(blob, now=NOW + MAX_AGE).ts, NOW)
        self.assertEqual(open_t(blob, now=NOW - MAX_AGE).ts, NOW)

    def test_replay(self) -> None:
        """The same (sender, attempt, type) twice is a replay; another attempt or type is not."""
        guard = ReplayGuard()
        blob = seal(ALICE, T, NET, "sync", ATTEMPT, {}, NOW)
        open_t(blob, guard=guard)
        self.assertEqual(self.reason(lambda: open_t(blob, now=NOW + 10, guard=guard)), "replayed")
        self.assertEqual(self.reason(lambda: open_t(seal(ALICE, T, NET, "sync", ATTEMPT, {}, NOW + 1), guard=guard)),
                         "replayed")
        open_t(seal(ALICE, T, NET, "sync", bytes(8), {}, NOW), guard=guard)
        open_t(seal(ALICE, T, NET, "result", ATTEMPT, {"ok": True}, NOW), guard=guard)

    def test_replay_until_stale(self) -> None:
        """An envelope stamped in the future is remembered until it goes stale, not just for the window."""
        guard = ReplayGuard(window=MAX_AGE)
        blob = seal(ALICE, T, NET, "sync", ATTEMPT, {}, NOW + 500)
        open_t(blob, guard=guard)
        self.assertEqual(self.reason(lambda: open_t(blob, now=NOW + 1000, guard=guard)), "replayed")

    def test_refused_envelopes_are_not_recorded(self) -> None:
        guard = ReplayGuard()
        blob = seal(ALICE, T, NET, "sync", ATTEMPT, {}, NOW)
        self.assertRaises(EnvelopeError, open_t, blob, network="other", guard=guard)
        self.assertEqual(len(guard), 0)
        open_t(blob, guard=guard)

    def test_sizes(self) -> None:
        """Too large to seal, too large to open, truncated, not bytes."""
        self.assertEqual(self.reason(lambda: seal(ALICE, T, NET, "result", ATTEMPT,
                                                  {"ok": True, "reason": "", "pad": "x" * 9000}, NOW)), "too-large")
        self.assertEqual(self.reason(lambda: seal(ALICE, T, NET, "result", ATTEMPT,
                                                  {"ok": True, "reason": "", "pad": "x" * 8000}, NOW)), "too-large")
        self.assertEqual(self.reason(lambda: open_t(os.urandom(MAX_BLOB + 1))), "too-large")
        self.assertEqual(self.reason(lambda: open_t(os.urandom(100))), "unreadable")
        self.assertEqual(self.reason(lambda: open_t(b"")), "unreadable")
        self.assertEqual(self.reason(lambda: open_t("text")), "malformed")  # type: ignore[arg-type]
        blob = seal(ALICE, T, NET, "result", ATTEMPT, {"ok": True, "reason": "", "pad": "x" * 7500}, NOW)
        self.assertLessEqual(len(blob), MAX_BLOB)
        self.assertEqual(open_t(blob).body["pad"], "x" * 7500)

    def test_seal_refuses_bad_bodies(self) -> None:
        """seal refuses what open_envelope would refuse."""
        for mtype, body in (("connect", {"tcp": True, "udp": True}), ("reply", {"info": {}, "tcp": 1, "udp": True}),
                            ("result", {"reason": "x"}), ("result", {"ok": True, "reason": 3}),
                            ("sync", []), ("sync", {"x": {1, 2}}), ("sync", {"x": float("nan")}),
                            ("sync", {"x": [[[[[[[[1]]]]]]]]}), ("sync", {"x": [[]] * 300}), ("nonsense", {})):
            self.assertRaises(ValueError, seal, ALICE, T, NET, mtype, ATTEMPT, body, NOW)
        self.assertRaises(ValueError, seal, ALICE, T, NET, "sync", bytes(7), {}, NOW)
        self.assertRaises(ValueError, seal, ALICE, T, NET, "sync", ATTEMPT, {}, float("inf"))

    def test_malformed_inner(self) -> None:
        """Signed and boxed but not of the fixed shape: malformed."""
        docs: list[Any] = [
            inner_doc(v=2), inner_doc(v=True), inner_doc(t="hello"), inner_doc(attempt="A1B2C3D4E5F60718"),
            inner_doc(attempt="a1b2"), inner_doc(attempt=5), inner_doc(ts="now"), inner_doc(ts=True),
            inner_doc(net=5), inner_doc(to="nobody"), inner_doc(body=[]), inner_doc(body={"tcp": True}),
            inner_doc(t="result", body={"ok": "yes"}), inner_doc(extra=1), [inner_doc()], "text",
        ]
        missing = inner_doc()
        del missing["ts"]
        for doc in [*docs, missing]:
            inner = canonical(doc)
            self.assertEqual(self.reason(open_t, craft(inner)), "malformed", inner[:100])
        many = canonical(inner_doc(t="sync", body={"x": [[]] * 300}))
        for inner in (b'{"ts": NaN}', b"\xff", b"[" * 7000, b'{"body":' * 1000, canonical(inner_doc())[:-1], many,
                      b"{" * 9 + b"]" * 3000, b"[]" * 3000,
                      canonical(inner_doc()).replace(b'"ts":', b'"ts":1e999,"x":')):
            self.assertEqual(self.reason(open_t, craft(inner)), "malformed", inner[:100])
        infinite = canonical(inner_doc()).replace(str(NOW).encode(), b"1e999")
        self.assertEqual(self.reason(lambda: open_t(craft(infinite))), "malformed")

    def test_integer_time_stamp(self) -> None:
        self.assertEqual(open_t(craft(canonical(inner_doc(ts=int(NOW))))).ts, NOW)

    @examples(200)
    @given(st.binary(max_size=600))
    def test_random_blobs(self, blob: bytes) -> None:
        """Random blobs raise EnvelopeError, nothing else."""
        with self.assertRaises(EnvelopeError):
            open_t(blob)

    @examples(300)
    @given(st.fixed_dictionaries({}, optional={
        "v": st.sampled_from([1, 2, "1", None]), "t": st.sampled_from(["connect", "sync", "result", "x", 1]),
        "from": st.sampled_from([str(A), str(R), "x"]), "to": st.sampled_from([str(T), str(A), ""]),
        "net": st.sampled_from([NET, "", 0]), "attempt": st.sampled_from([ATTEMPT.hex(), "0" * 15, None]),
        "ts": st.one_of(st.floats(allow_nan=False), st.integers(), st.just(NOW)),
        "body": st.one_of(small_json, st.just(CONNECT_BODY), st.just({"ok": True})),
        "other": small_json}))
    def test_random_inner(self, doc: dict[str, Any]) -> None:
        """Random signed inner documents open or raise EnvelopeError, nothing else."""
        try:
            envelope = open_t(craft(json.dumps(doc).encode()))
        except EnvelopeError:
            return
        self.assertEqual((envelope.from_peer, envelope.to_peer), (A, T))


class ReplayGuardTests(SynchronousTestCase):
    def test_seen(self) -> None:
        guard = ReplayGuard(window=10.0)
        self.assertFalse(guard.seen("k", 0.0))
        self.assertTrue(guard.seen("k", 5.0))
        self.assertFalse(guard.seen("other", 5.0))
        self.assertFalse(guard.seen("k", 20.0))  # forgotten after the window
        self.assertTrue(guard.seen("k", 21.0))

    def test_expiry_frees_memory(self) -> None:
        guard = ReplayGuard(window=10.0)
        for i in range(100):
            guard.seen(i, 0.0)
        self.assertEqual(len(guard), 100)
        guard.seen("late", 11.0)
        self.assertEqual(len(guard), 1)

    def test_until(self) -> None:
        guard = ReplayGuard(window=10.0)
        guard.seen("k", 0.0, until=100.0)
        self.assertTrue(guard.seen("k", 50.0))
        guard.seen("j", 0.0, until=1.0)  # the window is the least
        self.assertTrue(guard.seen("j", 5.0))

    def test_bounded(self) -> None:
        """Filled past its bound, it stays at max_entries, forgetting the oldest first."""
        guard = ReplayGuard(max_entries=4096)
        for i in range(5000):
            self.assertFalse(guard.seen(("peer", i), NOW))
            self.assertLessEqual(len(guard), 4096)
        self.assertEqual(len(guard), 4096)
        self.assertTrue(guard.seen(("peer", 4999), NOW))
        self.assertTrue(guard.seen(("peer", 904), NOW))
        self.assertFalse(guard.seen(("peer", 0), NOW))
        self.assertFalse(guard.seen(("peer", 903), NOW))
        self.assertEqual(len(guard), 4096)
        self.assertRaises(ValueError, ReplayGuard, max_entries=0)
