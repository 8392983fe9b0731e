"""Tests for crust.bootstrap.discovery: the codec, the responder's defences, the requester, loopback."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey, PublicKey, SealedBox
from twisted.internet import defer, error, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from crust.address import Address
from crust.bootstrap.discovery import (
    HEADER,
    DiscoveredPeer,
    DiscoveryError,
    DiscoveryRequester,
    DiscoveryResponder,
    DiscoveryResponderService,
    MAX_DATAGRAM,
    MIN_REQUEST_SIZE,
    decode_reply,
    decode_request,
    default_destinations,
    encode_reply,
    encode_request,
    has_peers_on_lan,
    listen_discovery,
    lan_network_key as network_hash,
)
from crust.identity import Identity
from crust._util.ratelimit import RateLimiter

from tests import examples

ME = Identity.from_seed(b"\x01" * 32).peer_id
OTHER = Identity.from_seed(b"\x02" * 32).peer_id
ADDRS = [Address.parse("tcp:192.0.2.10:5483"), Address.parse("udp:192.0.2.10:5483"),
         Address.parse("tcp:[2001:db8::10]:5483")]


def make_request(name=None, size=MIN_REQUEST_SIZE, key=None):
    key = key or PrivateKey.generate()
    rid = os.urandom(8)
    return key, rid, encode_request(key.public_key, network_hash(name), rid, size)


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []
        self.stopped = False

    def write(self, data: bytes, addr: tuple) -> None:
        self.sent.append((data, addr))

    def stopListening(self):
        self.stopped = True
        return None


class CodecTests(unittest.TestCase):
    def test_request_round_trip_and_padding(self) -> None:
        key, rid, data = make_request("net", size=300)
        self.assertEqual(len(data), 300)
        self.assertEqual(data[:4], b"CrSD")
        req = decode_request(data)
        self.assertEqual((req.network_hash, req.request_id, req.public_key, req.size),
                         (network_hash("net"), rid, bytes(key.public_key), 300))

    def test_request_size_bounds(self) -> None:
        key = PrivateKey.generate()
        self.assertRaises(ValueError, encode_request, key.public_key, network_hash(None), b"x" * 8, 255)
        self.assertRaises(ValueError, encode_request, key.public_key, network_hash(None), b"x" * 8,
                          MAX_DATAGRAM + 1)

    def test_reply_is_sealed_to_the_requester(self) -> None:
        key, rid, data = make_request()
        reply = encode_reply(decode_request(data), ME, ADDRS)
        self.assertNotIn(ME.raw, reply)  # encrypted
        self.assertEqual(decode_reply(reply, key, rid), DiscoveredPeer(ME, ADDRS))
        other = PrivateKey.generate()
        self.assertEqual(self.assertRaises(DiscoveryError, decode_reply, reply, other, rid).reason,
                         "undecryptable")
        self.assertEqual(self.assertRaises(DiscoveryError, decode_reply, reply, key, b"\0" * 8).reason, "stale")
        tampered = reply[:-1] + bytes([reply[-1] ^ 1])
        self.assertEqual(self.assertRaises(DiscoveryError, decode_reply, tampered, key, rid).reason,
                         "undecryptable")

    def test_reply_never_larger_than_request(self) -> None:
        many = [Address("tcp", f"10.0.{i // 250}.{i % 250 + 1}", 5483) for i in range(500)]
        for size in (MIN_REQUEST_SIZE, 512, MAX_DATAGRAM):
            key, rid, data = make_request(size=size)
            reply = encode_reply(decode_request(data), ME, many)
            self.assertLessEqual(len(reply), size)
            got = decode_reply(reply, key, rid)
            self.assertEqual(got.addresses, many[:len(got.addresses)])
            self.assertGreater(len(got.addresses), 10)

    def test_malformed_requests(self) -> None:
        _, _, good = make_request()
        cases = {
            b"": "truncated",
            b"CrS": "truncated",
            b"XXXX" + good[4:]: "bad_magic",
            good[:4] + b"\x02" + good[5:]: "bad_version",
            good[:5] + b"\x02" + good[6:]: "bad_kind",
            good[:MIN_REQUEST_SIZE - 1]: "undersize",
            good + bytes(MAX_DATAGRAM): "oversize",
            os.urandom(400): "bad_magic",
        }
        for data, reason in cases.items():
            self.assertEqual(self.assertRaises(DiscoveryError, decode_request, data).reason, reason)

    def test_network_hash(self) -> None:
        self.assertEqual(len(network_hash("a")), 16)
        self.assertNotEqual(network_hash("a"), network_hash("b"))
        self.assertNotEqual(network_hash(None), network_hash(""))
        self.assertEqual(network_hash("a"), network_hash("a"))


SOURCES = st.sampled_from([("192.0.2.50", 40000), ("127.0.0.1", 5484), ("::1", 5484), ("fe80::1%3", 40000),
                           ("::ffff:192.0.2.5", 40000), ("192.0.2.50", 80), ("2001:db8::7", 65535)])
# a reply's payload, in pieces a parser may trip on: flags, IPs of both sizes, ports (0 among them)
_ADDRESS_ITEMS = st.builds(lambda flags, ip, port: bytes([flags]) + ip + port.to_bytes(2, "big"),
                           st.sampled_from([0, 1, 2, 3, 4, 0xFF]),
                           st.sampled_from([bytes(4), bytes(16), b"\x7f\0\0\1", bytes(15) + b"\1",
                                            b"\xfe\x80" + bytes(14), b"\xc0\0\2\x0a", b"\xff" * 16]),
                           st.integers(0, 65535))


def sealed_reply(key: PrivateKey, plain: bytes) -> bytes:
    return HEADER.pack(b"CrSD", 1, 2) + SealedBox(key.public_key).encrypt(plain)


class ParserPropertyTests(unittest.TestCase):
    """Discovery datagrams from the LAN: only DiscoveryError, never anything else, whatever they hold."""

    @examples(500)
    @given(st.binary(max_size=MAX_DATAGRAM + 50))
    def test_requests(self, data: bytes) -> None:
        try:
            request = decode_request(data)
        except DiscoveryError:
            return
        self.assertEqual(request.size, len(data))

    @examples(300)
    @given(st.binary(max_size=400), st.booleans())
    def test_reply_bytes(self, data: bytes, with_header: bool) -> None:
        key = PrivateKey.generate()
        try:
            decode_reply((HEADER.pack(b"CrSD", 1, 2) if with_header else b"") + data, key, b"\0" * 8)
        except DiscoveryError:
            pass

    @examples(500)
    @given(st.integers(0, 255), st.lists(_ADDRESS_ITEMS, max_size=6), st.binary(max_size=20), st.booleans())
    def test_reply_payloads(self, count: int, items: list[bytes], tail: bytes, our_id: bool) -> None:
        """Sealed to us (so past decryption), any payload is a peer or a DiscoveryError."""
        key, rid = PrivateKey.generate(), os.urandom(8)
        plain = (rid if our_id else os.urandom(8)) + OTHER.raw + bytes([count]) + b"".join(items) + tail
        try:
            peer = decode_reply(sealed_reply(key, plain), key, rid)
        except DiscoveryError:
            return
        self.assertEqual(len(peer.addresses), count)

    @examples(300)
    @given(st.binary(max_size=MAX_DATAGRAM + 50) | st.builds(
        lambda size, at, piece: (lambda good: good[:at] + piece + good[at + len(piece):])(
            make_request("net", size)[2]), st.integers(MIN_REQUEST_SIZE, MAX_DATAGRAM), st.integers(0, 300),
        st.binary(min_size=1, max_size=8)), SOURCES)
    def test_responder(self, data: bytes, source: tuple) -> None:
        clock = Clock()
        responder = DiscoveryResponder(lambda: (ME, list(ADDRS)), network_name="net", clock=clock)
        transport = FakeTransport()
        responder.makeConnection(transport)
        responder.datagramReceived(data, source)
        self.assertEqual(responder.stats["received"], 1)
        self.assertEqual(responder.stats["ignored"] + responder.stats["replied"], 1)
        for reply, _ in transport.sent:
            self.assertLessEqual(len(reply), len(data))

    @examples(300)
    @given(st.integers(0, 255), st.lists(_ADDRESS_ITEMS, max_size=6), st.binary(max_size=8), SOURCES)
    def test_requester(self, count: int, items: list[bytes], tail: bytes, source: tuple) -> None:
        """A round takes any reply sealed to it, or counts it as ignored; nothing raises."""
        clock = Clock()
        ports: list[FakeTransport] = []
        protocols: list = []

        def listen(protocol, v6):
            port = FakeTransport()
            protocol.makeConnection(port)
            ports.append(port)
            protocols.append(protocol)
            return port

        requester = DiscoveryRequester(port=5484, network_name="net", window=1.0, clock=clock, reactor=object(),
                                       destinations=[("127.0.0.1", 5484)])
        requester._listen = listen
        d = requester.discover()
        [(request_data, _)] = ports[0].sent
        request = decode_request(request_data)
        plain = request.request_id + OTHER.raw + bytes([count]) + b"".join(items) + tail
        sealed = HEADER.pack(b"CrSD", 1, 2) + SealedBox(PublicKey(request.public_key)).encrypt(plain)
        protocols[0].datagramReceived(sealed, source)
        clock.advance(1.0)
        found = self.successResultOf(d)
        self.assertEqual(requester.stats["replies"] + requester.stats["ignored"], 1)
        self.assertLessEqual(len(found), 1)


class ResponderTests(unittest.TestCase):
    SOURCE = ("192.0.2.50", 40000)

    def setUp(self) -> None:
        self.clock = Clock()
        self.info = (ME, list(ADDRS))
        self.responder = DiscoveryResponder(lambda: self.info, network_name="net", clock=self.clock,
                                            limiter=RateLimiter(self.clock, (2, 5), (20, 40)))
        self.transport = FakeTransport()
        self.responder.makeConnection(self.transport)

    def ask(self, source=SOURCE, name="net", size=MIN_REQUEST_SIZE):
        key, rid, data = make_request(name, size)
        before = len(self.transport.sent)
        self.responder.datagramReceived(data, source)
        new = self.transport.sent[before:]
        return key, rid, new

    def test_answers_with_sealed_reply_to_sender(self) -> None:
        key, rid, sent = self.ask()
        self.assertEqual(len(sent), 1)
        reply, dest = sent[0]
        self.assertEqual(dest, self.SOURCE)
        self.assertEqual(decode_reply(reply, key, rid), DiscoveredPeer(ME, ADDRS))
        self.assertLessEqual(len(reply), MIN_REQUEST_SIZE)
        self.assertEqual(self.responder.stats["replied"], 1)

    def test_garbage_and_oversize_ignored_and_counted(self) -> None:
        for data in (b"", b"hello", os.urandom(300), b"CrSD\x01\x01" + bytes(2000)):
            self.responder.datagramReceived(data, self.SOURCE)
        self.assertEqual(self.transport.sent, [])
        stats = self.responder.stats
        self.assertEqual(stats["received"], 4)
        self.assertEqual(stats["ignored"], 4)
        self.assertEqual(stats["oversize"], 1)
        self.assertEqual(stats["truncated"], 2)
        self.assertEqual(stats["bad_magic"], 1)

    def test_small_request_not_answered(self) -> None:
        _, _, data = make_request("net")
        self.responder.datagramReceived(data[:200], self.SOURCE)
        self.assertEqual(self.transport.sent, [])
        self.assertEqual(self.responder.stats["undersize"], 1)

    def test_wrong_network_ignored(self) -> None:
        _, _, sent = self.ask(name="othernet")
        self.assertEqual(sent, [])
        _, _, sent = self.ask(name=None)
        self.assertEqual(sent, [])
        self.assertEqual(self.responder.stats["wrong_network"], 2)

    def test_disabled_ignores(self) -> None:
        self.responder.set_enabled(False)
        self.assertEqual(self.ask()[2], [])
        self.assertEqual(self.responder.stats["disabled"], 1)
        self.responder.set_enabled(True)
        self.assertEqual(len(self.ask()[2]), 1)

    def test_privileged_source_port_ignored(self) -> None:
        self.assertEqual(self.ask(source=("192.0.2.50", 53))[2], [])
        self.assertEqual(self.responder.stats["privileged_source_port"], 1)

    def test_per_ip_rate_limit(self) -> None:
        answered = sum(len(self.ask()[2]) for _ in range(20))
        self.assertEqual(answered, 5)  # the burst
        self.assertEqual(self.responder.stats["rate_limited"], 15)
        self.assertEqual(len(self.ask(source=("192.0.2.51", 40000))[2]), 1)  # others unaffected
        self.clock.advance(1.0)
        answered = sum(len(self.ask()[2]) for _ in range(10))
        self.assertEqual(answered, 2)  # 2 per second refill

    def test_global_rate_limit(self) -> None:
        answered = 0
        for i in range(100):
            answered += len(self.ask(source=(f"10.0.0.{i + 1}", 40000))[2])
        self.assertEqual(answered, 40)
        self.clock.advance(1.0)
        answered = sum(len(self.ask(source=(f"10.0.1.{i + 1}", 40000))[2]) for i in range(100))
        self.assertEqual(answered, 20)

    def test_loopback_addresses_only_for_loopback_requesters(self) -> None:
        self.info = (ME, [Address.parse("tcp:127.0.0.1:5483")] + ADDRS)
        key, rid, sent = self.ask()
        self.assertEqual(decode_reply(sent[0][0], key, rid).addresses, ADDRS)
        key, rid, sent = self.ask(source=("127.0.0.1", 40000))
        self.assertEqual(decode_reply(sent[0][0], key, rid).addresses[0], Address.parse("tcp:127.0.0.1:5483"))

    def test_no_addresses_no_reply(self) -> None:
        self.info = (ME, [])
        self.assertEqual(self.ask()[2], [])
        self.assertEqual(self.responder.stats["no_addresses"], 1)

    def test_bad_key_no_reply(self) -> None:
        data = bytearray(make_request("net")[2])
        data[30:62] = bytes(32)  # an all-zero Curve25519 key
        self.responder.datagramReceived(bytes(data), self.SOURCE)
        self.assertEqual(self.transport.sent, [])
        self.assertEqual(self.responder.stats["bad_key"], 1)

    def test_info_error_is_logged_not_raised(self) -> None:
        def broken():
            raise KeyError("no listener")
        self.responder.our_info = broken
        self.assertEqual(self.ask()[2], [])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_rate_limiter_table_is_bounded(self) -> None:
        limiter = RateLimiter(Clock(), max_keys=10)
        for i in range(100):
            limiter.allow(f"10.0.0.{i}")
        self.assertEqual(len(limiter), 10)


def adapter(name, ips, index=None):
    return SimpleNamespace(nice_name=name, name=name, index=index,
                           ips=[SimpleNamespace(ip=ip, network_prefix=prefix) for ip, prefix in ips])


class DestinationTests(unittest.TestCase):
    ADAPTERS = [
        adapter("lo", [("127.0.0.1", 8), (("::1", 0, 0), 128)], 1),
        adapter("eth0", [("192.168.1.17", 24), (("fe80::1", 0, 2), 64), (("2001:db8::5", 0, 0), 64)], 2),
        adapter("eth1", [("10.1.2.3", 16)], 3),
        adapter("tun0", [("100.64.0.9", 32)], 4),
        adapter("wlan0", [(("fe80::9", 0, 5), 64)], None),
    ]

    def test_broadcast_per_interface(self) -> None:
        got = default_destinations(5484, adapters=self.ADAPTERS)
        self.assertEqual(got, [("192.168.1.255", 5484), ("ff02::1%2", 5484), ("10.1.255.255", 5484),
                               ("ff02::1%5", 5484)])

    def test_loopback_when_asked(self) -> None:
        got = default_destinations(7, include_loopback=True, ipv6=False, adapters=self.ADAPTERS)
        self.assertEqual(got, [("127.0.0.1", 7), ("192.168.1.255", 7), ("10.1.255.255", 7)])


class RequesterUnitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.ports: list[FakeTransport] = []
        self.protocols = []
        self.requester = DiscoveryRequester(port=5484, network_name="net", window=1.0, clock=self.clock,
                                            reactor=object(), exclude_peer_ids=[ME],
                                            destinations=[("127.0.0.1", 5484), ("::1", 5484),
                                                          ("127.0.0.2", 5484)])

        def listen(protocol, v6):
            port = FakeTransport()
            protocol.makeConnection(port)
            self.ports.append(port)
            self.protocols.append(protocol)
            return port
        self.requester._listen = listen

    def reply(self, port_index, peer_id, addrs, source=("127.0.0.1", 5484), sent_index=0):
        request = decode_request(self.ports[port_index].sent[sent_index][0])
        self.protocols[port_index].datagramReceived(encode_reply(request, peer_id, addrs), source)

    def test_collects_for_the_window_and_merges(self) -> None:
        d = self.requester.discover()
        self.assertEqual(len(self.ports), 2)  # one IPv4, one IPv6 socket
        self.assertEqual([a for _, a in self.ports[0].sent], [("127.0.0.1", 5484), ("127.0.0.2", 5484)])
        self.assertEqual([a for _, a in self.ports[1].sent], [("::1", 5484)])
        self.assertEqual(len(self.ports[0].sent[0][0]), 512)
        self.assertEqual(self.requester.stats["sent"], 3)
        a1, a2 = Address.parse("tcp:127.0.0.1:1000"), Address.parse("tcp:[::1]:1000")
        self.reply(0, OTHER, [a1])
        self.reply(1, OTHER, [a2, a1], source=("::1", 5484))
        self.reply(0, ME, [a1])  # ourselves
        self.protocols[0].datagramReceived(b"junk", ("127.0.0.1", 5484))
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d), [DiscoveredPeer(OTHER, [a1, a2])])
        self.assertTrue(all(p.stopped for p in self.ports))
        self.assertEqual(self.requester.stats["own"], 1)
        self.assertEqual(self.requester.stats["truncated"], 1)

    def test_unspecified_address_becomes_source(self) -> None:
        d = self.requester.discover()
        self.reply(0, OTHER, [Address.parse("tcp:0.0.0.0:4000"), Address.parse("tcp:[::]:4001")],
                   source=("127.0.0.2", 5484))
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d)[0].addresses, [Address.parse("tcp:127.0.0.2:4000")])

    def test_stale_reply_to_earlier_round_ignored(self) -> None:
        d1 = self.requester.discover()
        self.clock.advance(1.0)
        self.successResultOf(d1)
        self.requester.discover()
        old = decode_request(self.ports[0].sent[0][0])
        self.protocols[2].datagramReceived(encode_reply(old, OTHER, ADDRS), ("127.0.0.1", 5484))
        self.assertEqual(self.requester.stats["undecryptable"], 1)

    def test_has_peers_on_lan_fires_at_first_reply(self) -> None:
        d = has_peers_on_lan(self.requester)
        self.reply(0, OTHER, ADDRS)
        self.assertIs(self.successResultOf(d), True)
        self.assertTrue(all(p.stopped for p in self.ports))

    def test_has_peers_on_lan_false(self) -> None:
        d = self.requester.has_peers_on_lan(window=0.5)
        self.clock.advance(0.5)
        self.assertIs(self.successResultOf(d), False)

    def test_cancel_stops_round(self) -> None:
        d = self.requester.discover()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(all(p.stopped for p in self.ports))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_limit_ends_round_and_its_timer(self) -> None:
        d = self.requester.discover(limit=1)
        self.reply(0, OTHER, ADDRS[:1])
        self.assertEqual(self.successResultOf(d), [DiscoveredPeer(OTHER, ADDRS[:1])])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(all(p.stopped for p in self.ports))

    def test_datagram_after_the_round_is_ignored(self) -> None:
        d = self.requester.discover()
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d), [])
        self.reply(0, OTHER, ADDRS)
        self.protocols[0].datagramReceived(b"junk", ("127.0.0.1", 5484))
        self.assertEqual((self.requester.stats["replies"], self.requester.stats["ignored"]), (0, 0))

    def test_socket_that_cannot_open_is_skipped(self) -> None:
        listen = self.requester._listen

        def listen_v4_only(protocol, v6):
            if v6:
                raise error.CannotListenError("::", 0, OSError("no IPv6"))
            return listen(protocol, v6)
        self.requester._listen = listen_v4_only
        d = self.requester.discover()
        self.assertEqual([a for _, a in self.ports[0].sent], [("127.0.0.1", 5484), ("127.0.0.2", 5484)])
        self.assertEqual(self.requester.stats["sent"], 2)
        self.reply(0, OTHER, ADDRS[:1])
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d), [DiscoveredPeer(OTHER, ADDRS[:1])])

    def test_no_destinations(self) -> None:
        self.requester.destinations = []
        d = self.requester.discover()
        self.assertEqual(self.ports, [])
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d), [])


class LoopbackTests(unittest.TestCase):
    """Real sockets, 127.0.0.1 (and ::1) only."""

    def start_responder(self, peer_id, addrs, name="net", interface="127.0.0.1"):
        responder = DiscoveryResponder(lambda: (peer_id, addrs), network_name=name)
        port = listen_discovery(responder, 0, interface)
        self.addCleanup(port.stopListening)
        return responder, port.getHost().port

    @defer.inlineCallbacks
    def test_requester_finds_responders(self) -> None:
        a_me = [Address.parse("tcp:127.0.0.1:7001")]
        a_other = [Address.parse("tcp:127.0.0.1:7002"), Address.parse("udp:127.0.0.1:7002")]
        r1, p1 = self.start_responder(ME, a_me)
        r2, p2 = self.start_responder(OTHER, a_other)
        r3, p3 = self.start_responder(Identity.from_seed(b"\x03" * 32).peer_id, a_me, name="elsewhere")
        requester = DiscoveryRequester(network_name="net", window=0.5, bind_v4="127.0.0.1",
                                       destinations=[("127.0.0.1", p) for p in (p1, p2, p3)])
        found = yield requester.discover()
        self.assertEqual(sorted(found), sorted([DiscoveredPeer(ME, a_me), DiscoveredPeer(OTHER, a_other)]))
        self.assertEqual(r3.stats["wrong_network"], 1)
        self.assertEqual(r1.stats["replied"], 1)
        self.assertEqual(requester.stats["replies"], 2)

    @defer.inlineCallbacks
    def test_has_peers_on_lan(self) -> None:
        _, port = self.start_responder(OTHER, [Address.parse("tcp:127.0.0.1:7003")])
        requester = DiscoveryRequester(network_name="net", window=5.0, bind_v4="127.0.0.1",
                                       destinations=[("127.0.0.1", port)])
        started = reactor.seconds()
        self.assertIs((yield requester.has_peers_on_lan()), True)
        self.assertLess(reactor.seconds() - started, 4.0)  # did not wait for the window
        silent = DiscoveryRequester(network_name="other", window=0.3, bind_v4="127.0.0.1",
                                    destinations=[("127.0.0.1", port)])
        self.assertIs((yield silent.has_peers_on_lan()), False)

    @defer.inlineCallbacks
    def test_ipv6_loopback(self) -> None:
        if not socket.has_ipv6:
            raise unittest.SkipTest("no IPv6 support")
        try:
            _, port = self.start_responder(OTHER, [Address.parse("tcp:[::1]:7004")], interface="::1")
        except Exception as e:
            raise unittest.SkipTest(f"cannot bind ::1: {e}")
        requester = DiscoveryRequester(network_name="net", window=0.5, bind_v6="::1",
                                       destinations=[("::1", port)])
        found = yield requester.discover()
        self.assertEqual(found, [DiscoveredPeer(OTHER, [Address.parse("tcp:[::1]:7004")])])

    @defer.inlineCallbacks
    def test_service_listens_and_stops(self) -> None:
        responder = DiscoveryResponder(lambda: (OTHER, [Address.parse("tcp:127.0.0.1:7005")]), network_name="n")
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
        probe.close()
        svc = DiscoveryResponderService(responder, port=free, interfaces=("127.0.0.1", "192.0.2.123"))
        svc.startService()  # the second interface is not ours: logged and skipped
        self.assertEqual(len(svc.ports), 1)
        requester = DiscoveryRequester(network_name="n", window=0.5, bind_v4="127.0.0.1",
                                       destinations=[("127.0.0.1", free)])
        self.assertEqual(len((yield requester.discover())), 1)
        yield svc.stopService()
        self.assertEqual(svc.ports, [])
        yield deferLater(reactor, 0, lambda: None)
