"""
Early failures on a real node (hardening, defect 9): random bytes, an HTTP
request, a foreign certificate, a truncated ClientHello and a handshake
timeout on TCP, and their QUIC equivalents, each give exactly one log line
naming the peer's address and the reason, at a bounded rate for each kind;
a 5000-digit version number in a HELLO is reported as a number too long.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import tempfile
import dataclasses

from twisted.internet import defer, threads
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from crust.errors import ConnectFailed
from crust.identity import Identity
from crust.wire import FrameType, frame
from tests.hostile.attacker import junk_initial, real_initials
from tests.util import make_service, sleep, wait_for


class Lines:
    """Log events at info or above."""

    def __init__(self, testcase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.info:
            self.events.append(event)

    def about(self, port: int) -> list[dict]:
        """The lines that name our client's port."""
        tag = f":{port}"
        return [e for e in self.events if tag in " ".join(str(e.get(k, "")) for k in ("address", "addr", "conn"))]


def tls_client_hello() -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        context.wrap_bio(incoming, outgoing).do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class EarlyFailureTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.node = make_service(self, handshake_timeout=1.0)
        info = yield self.node.prepare_connection_info()
        self.tcp = [a for a in info.public.addresses if a.transport == "tcp"][0].sockaddr()
        self.udp = [a for a in info.public.addresses if a.transport == "udp"][0].sockaddr()
        self.lines = Lines(self)

    def early(self, kind: str) -> int:
        return self.node.peers.counters.get(f"early_{kind}", 0)

    @defer.inlineCallbacks
    def tcp_case(self, kind: str, send: bytes = b"", hold: float = 0.2):
        before = self.early(kind)
        s = socket.create_connection(self.tcp)
        port = s.getsockname()[1]
        if send:
            s.sendall(send)
        yield sleep(hold)
        s.close()
        yield wait_for(lambda: self.early(kind) > before, timeout=5)
        yield sleep(0.1)
        return port

    def one_line(self, port: int, kind: str, fragment: str) -> None:
        lines = self.lines.about(port)
        self.assertEqual(len(lines), 1, [formatEvent(e) for e in lines])
        self.assertEqual(lines[0]["kind"], kind)
        self.assertIn(fragment, formatEvent(lines[0]))
        self.assertIn(f"127.0.0.1:{port}", formatEvent(lines[0]))

    @defer.inlineCallbacks
    def test_random_bytes(self):
        port = yield self.tcp_case("not-tls", os.urandom(300))
        self.one_line(port, "not-tls", "TLS handshake failed")

    @defer.inlineCallbacks
    def test_http_request(self):
        port = yield self.tcp_case("not-tls", b"GET / HTTP/1.1\r\nHost: crust\r\n\r\n")
        self.one_line(port, "not-tls", "http request")

    @defer.inlineCallbacks
    def test_truncated_client_hello(self):
        hello = tls_client_hello()
        port = yield self.tcp_case("closed-during-tls", hello[: len(hello) // 2])
        self.one_line(port, "closed-during-tls", "TLS handshake failed")

    @defer.inlineCallbacks
    def test_handshake_timeout(self):
        port = yield self.tcp_case("timeout", hold=1.5)
        self.one_line(port, "timeout", "handshake not complete after 1 s")

    @defer.inlineCallbacks
    def test_foreign_certificate(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.remove(os.path.join(directory, f)) for f in os.listdir(directory)])
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", os.path.join(directory, "key"), "-out", os.path.join(directory, "cert"),
                        "-days", "1", "-subj", "/CN=not-crust"], check=True, capture_output=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(os.path.join(directory, "cert"), os.path.join(directory, "key"))
        before = self.early("certificate")

        def connect() -> int:
            s = socket.create_connection(self.tcp)
            port = s.getsockname()[1]
            try:
                context.wrap_socket(s).recv(10)
            except (OSError, ssl.SSLError):
                pass
            finally:
                s.close()
            return port

        port = yield threads.deferToThread(connect)
        yield wait_for(lambda: self.early("certificate") > before, timeout=5)
        yield sleep(0.1)
        self.one_line(port, "certificate", "not Ed25519")

    @defer.inlineCallbacks
    def test_lines_are_rate_limited_per_kind(self):
        for _ in range(20):
            yield self.tcp_case("not-tls", os.urandom(300), hold=0.01)
        port = yield self.tcp_case("timeout", hold=1.5)
        not_tls = [e for e in self.lines.events if e.get("kind") == "not-tls"]
        self.assertGreaterEqual(self.early("not-tls"), 20)
        self.assertLessEqual(len(not_tls), 4)  # a burst of 3, and what the rate adds meanwhile
        self.one_line(port, "timeout", "handshake not complete")  # another kind has its own allowance

    @defer.inlineCallbacks
    def test_quic_undecryptable_initial_and_timeout(self):
        dispatcher = self.node.quic
        dispatcher.options = dataclasses.replace(dispatcher.options, handshake_timeout=1.0)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        self.addCleanup(s.close)
        port = s.getsockname()[1]
        import random

        s.sendto(junk_initial(random.Random(3)), self.udp)
        yield wait_for(lambda: dispatcher.counters["undecryptable"] == 1, timeout=5)
        self.one_line(port, "undecryptable", "does not decrypt")
        s2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a ClientHello, then silence
        s2.bind(("127.0.0.1", 0))
        self.addCleanup(s2.close)
        s2.sendto(real_initials(*self.udp, 1)[0], self.udp)
        yield wait_for(lambda: dispatcher.counters["handshake_failures"] == 1, timeout=5)
        self.one_line(s2.getsockname()[1], "timeout", "QUIC handshake not complete after 1 s")

    @defer.inlineCallbacks
    def test_huge_version_number_is_named(self):
        """A HELLO with a 5000-digit version: 'number too long' in the node's line and in the CLOSE it sends."""
        identity = Identity.generate()
        while identity.peer_id > self.node.peer_id:  # the node chooses: the rogue's connect waits for its verdict
            identity = Identity.generate()
        rogue = make_service(self, identity=identity, enable_udp=False)
        bad = frame(FrameType.HELLO, b'{"proto":"crust","version":' + b"9" * 5000 + b',"min_version":1,'
                    b'"network":"' + self.node.network.encode() + b'","intent":"connect","role":"node"}')
        rogue.peers._hello_for = lambda conn: type("Raw", (), {"encode": lambda self: bad})()
        info = yield self.node.prepare_connection_info()
        with self.assertRaises(ConnectFailed) as caught:
            yield rogue.connect(info.public)
        self.assertIn("number too long", str(caught.exception))
        self.assertNotIn("UTF-8", str(caught.exception))
        yield wait_for(lambda: any("number too long" in formatEvent(e) for e in self.lines.events), timeout=5)
        lines = [e for e in self.lines.events if "number too long" in formatEvent(e)]
        ours = [e for e in lines if e.get("kind") == "protocol-violation"]  # the node's; the rogue says why it failed
        self.assertEqual(len(ours), 1, [formatEvent(e) for e in lines])
        self.assertIn("HELLO", formatEvent(ours[0]))
