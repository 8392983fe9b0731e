"""
The C{crust:} endpoints (L{crust.endpoints}, C{twisted/plugins/crust_endpoints.py}):
the strings, the registered service, connecting by peer id with what the
node knows, and a plain Twisted program that uses only the strings.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase

from crust import endpoints
from crust.address import Address
from crust.connection_info import PubConnectionInfo
from crust.config import HardCodedContact
from crust.endpoints import CrustClientEndpoint, CrustServerEndpoint, EndpointError
from crust.errors import ConnectFailed
from crust.identity import Identity

from tests.util import Processes, connect_pair, make_node_dir, make_service, node_contact, wait_for

ROOT = Path(__file__).resolve().parent.parent
PEER = Identity.from_seed(bytes(range(32))).peer_id


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Collector(protocol.Protocol):
    def connectionMade(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data


class ParseTests(SynchronousTestCase):
    def test_server_string(self):
        endpoint = serverFromString(reactor, "crust:web")
        self.assertIsInstance(endpoint, CrustServerEndpoint)
        self.assertTrue(IStreamServerEndpoint.providedBy(endpoint))
        self.assertEqual(endpoint.name, "web")
        self.assertIsInstance(serverFromString(reactor, "crust:web:datadir=/tmp/somewhere"), CrustServerEndpoint)

    def test_client_string(self):
        endpoint = clientFromString(reactor, f"crust:{PEER}:amp:timeout=2.5")
        self.assertIsInstance(endpoint, CrustClientEndpoint)
        self.assertTrue(IStreamClientEndpoint.providedBy(endpoint))
        self.assertEqual((endpoint.peer, endpoint.name, endpoint.timeout), (PEER, "amp", 2.5))

    def test_bad_strings(self):
        cases = [
            (serverFromString, "crust:"),
            (serverFromString, "crust:a:b"),
            (serverFromString, "crust:web:port=80"),
            (clientFromString, "crust:web"),
            (clientFromString, "crust:not-a-peer-id:web"),
            (clientFromString, f"crust:{PEER}:web:timeout=0"),
            (clientFromString, f"crust:{PEER}:web:timeout=soon"),
            (clientFromString, f"crust:{PEER}:web:colour=blue"),
            (clientFromString, f"crust:{PEER}:" + "x" * 300),
            (clientFromString, f"crust:{PEER}:web:info=/nonexistent/info.json"),
        ]
        for parse, text in cases:
            e = self.assertRaises(EndpointError, parse, reactor, text)
            self.assertIn("crust", str(e))

    def test_info_file_must_name_the_peer(self):
        path = Path(self.mktemp())
        other = Identity.generate().peer_id
        address = (Address.parse("tcp:127.0.0.1:1"),)
        path.write_text(PubConnectionInfo(other, address).to_json())
        e = self.assertRaises(EndpointError, clientFromString, reactor, f"crust:{PEER}:web:info={path}")
        self.assertIn(str(other), str(e))
        path.write_text("{not json")
        self.assertRaises(EndpointError, clientFromString, reactor, f"crust:{PEER}:web:info={path}")
        path.write_text(PubConnectionInfo(PEER, address).to_json())
        endpoint = clientFromString(reactor, f"crust:{PEER}:web:info={path}")
        self.assertEqual(str(endpoint.peer.addresses[0]), "tcp:127.0.0.1:1")


class RegistryTests(SynchronousTestCase):
    def tearDown(self):
        endpoints._registered.clear()

    def test_none_or_several_registered(self):
        e = self.failureResultOf(serverFromString(reactor, "crust:web").listen(protocol.Factory()), EndpointError)
        self.assertIn("register_service", str(e.value))
        endpoints.register_service(object())
        endpoints.register_service(object())
        self.failureResultOf(clientFromString(reactor, f"crust:{PEER}:web").connect(protocol.Factory()),
                             EndpointError)

    def test_register_and_unregister(self):
        service = object()
        endpoints.register_service(service)
        endpoints.register_service(service)
        self.assertIs(endpoints.registered_service(), service)
        endpoints.unregister_service(service)
        self.assertRaises(EndpointError, endpoints.registered_service)


class LoopbackTests(TestCase):
    timeout = 60

    def setUp(self):
        self.addCleanup(endpoints._registered.clear)

    def use(self, service):
        endpoints._registered[:] = [service]

    @defer.inlineCallbacks
    def test_strings_with_the_registered_service(self):
        a, b = make_service(self), make_service(self)
        yield connect_pair(self, a, b)
        self.use(b)
        port = yield serverFromString(reactor, "crust:echo").listen(protocol.Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().peer_id, b.peer_id)
        self.use(a)
        client = yield clientFromString(reactor, f"crust:{b.peer_id}:echo").connect(
            protocol.Factory.forProtocol(Collector))
        client.transport.write(b"over the registered service")
        yield wait_for(lambda: client.received == b"over the registered service")
        client.transport.loseConnection()

    @defer.inlineCallbacks
    def test_connects_by_peer_id_with_the_configured_contact(self):
        b = make_service(self)
        yield b.start_listening()
        contact = HardCodedContact(b.peer_id, b.listen_addresses[0])
        a = make_service(self, hard_coded_contacts=(contact,))
        self.assertFalse(a.is_connected(b.peer_id))
        b.listen_streams("echo", protocol.Factory.forProtocol(Echo))
        self.use(a)
        client = yield clientFromString(reactor, f"crust:{b.peer_id}:echo").connect(
            protocol.Factory.forProtocol(Collector))
        self.assertTrue(a.is_connected(b.peer_id))
        client.transport.write(b"by peer id")
        yield wait_for(lambda: client.received == b"by peer id")
        client.transport.loseConnection()

    @defer.inlineCallbacks
    def test_connects_with_an_info_file(self):
        a, b = make_service(self), make_service(self)
        info = yield b.prepare_connection_info()
        path = Path(self.mktemp())
        path.write_text(info.public.to_json())
        b.listen_streams("echo", protocol.Factory.forProtocol(Echo))
        self.use(a)
        client = yield clientFromString(reactor, f"crust:{b.peer_id}:echo:info={path}").connect(
            protocol.Factory.forProtocol(Collector))
        client.transport.write(b"with info")
        yield wait_for(lambda: client.received == b"with info")
        client.transport.loseConnection()

    @defer.inlineCallbacks
    def test_unknown_peer_fails(self):
        a = make_service(self, connect_timeout=2.0, relay_delay=0.0)
        self.use(a)
        stranger = Identity.generate().peer_id
        d = clientFromString(reactor, f"crust:{stranger}:echo").connect(protocol.Factory.forProtocol(Collector))
        e = yield self.assertFailure(d, ConnectFailed)
        self.assertEqual(e.peer_id, stranger)


SERVER = textwrap.dedent("""
    import sys
    from twisted.internet import protocol, reactor
    from twisted.internet.endpoints import serverFromString

    class Echo(protocol.Protocol):
        def dataReceived(self, data):
            self.transport.write(data.upper())

    def listening(port):
        print("LISTENING", port.getHost(), "crust imported by the plugin:", "crust" in sys.modules, flush=True)

    def failed(failure):
        print("FAILED", failure.getErrorMessage(), flush=True)
        reactor.stop()

    assert "crust" not in sys.modules
    endpoint = serverFromString(reactor, "crust:shout:datadir=" + sys.argv[1])
    endpoint.listen(protocol.Factory.forProtocol(Echo)).addCallbacks(listening, failed)
    reactor.run()
""")

CLIENT = textwrap.dedent("""
    import sys
    from twisted.internet import protocol, reactor
    from twisted.internet.endpoints import clientFromString

    class Ping(protocol.Protocol):
        def connectionMade(self):
            self.got = b""
            self.transport.write(b"hello over crust")

        def dataReceived(self, data):
            self.got += data
            if len(self.got) == 16:
                print("REPLY", self.got.decode(), "FROM", self.transport.getPeer(), flush=True)
                self.transport.loseConnection()

        def connectionLost(self, reason):
            print("CLOSED", reason.getErrorMessage(), flush=True)
            reactor.stop()

    def failed(failure):
        print("FAILED", failure.getErrorMessage(), flush=True)
        reactor.stop()

    assert "crust" not in sys.modules
    endpoint = clientFromString(reactor, "crust:%s:shout:datadir=%s:timeout=30" % (sys.argv[1], sys.argv[2]))
    endpoint.connect(protocol.Factory.forProtocol(Ping)).addErrback(failed)
    reactor.callLater(60, reactor.stop)
    reactor.run()
""")

class PlainTwistedProgramTests(TestCase):
    """Two processes that import only Twisted: the C{crust:} strings with C{datadir=} do the rest."""

    timeout = 120

    @defer.inlineCallbacks
    def test_server_and_client_from_strings_with_data_directories(self):
        base = tempfile.mkdtemp(prefix="crust-ep-")
        procs = Processes(self, base)
        server_dir = make_node_dir(os.path.join(base, "server"))
        Path(base, "server.py").write_text(SERVER)
        Path(base, "client.py").write_text(CLIENT)
        server, server_log = procs.start("server.py", server_dir)
        yield wait_for(lambda: "LISTENING" in procs.output(server_log) or server.poll() is not None, timeout=60)
        self.assertIn("LISTENING", procs.output(server_log))
        contact = node_contact(server_dir)
        server_id = contact["peer_id"]
        self.assertIn(f"crust:{server_id}:shout", procs.output(server_log))
        # the client's node knows the server as a contact: nothing else is needed to reach it by peer id
        client_dir = make_node_dir(os.path.join(base, "client"), hard_coded_contacts=[contact])
        client, client_log = procs.start("client.py", server_id, client_dir)
        yield wait_for(lambda: client.poll() is not None, timeout=90)
        out = procs.output(client_log)
        self.assertIn("REPLY HELLO OVER CRUST FROM crust:" + server_id + ":shout", out)
        self.assertIn("CLOSED", out)
        self.assertNotIn("FAILED", out)
        self.assertEqual(client.returncode, 0, out)
