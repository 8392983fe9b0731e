"""
Tests for L{crust.nat.portmap.upnp_igd}: SSDP, device description and SOAP parsing, safe
XML, the bounded body reader and deadlines, the mapping policy (725, 718,
724...) against a fake agent, and loopback runs against a fake IGD
(L{FakeIGD}, a twisted.web site, and L{FakeSSDPResponder}, both on
127.0.0.1; also used by the port mapper tests).
"""

from __future__ import annotations

import encodings.aliases
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from crust.nat.portmap import upnp_igd
from crust.nat.portmap.gateway import GatewayTimeout, MalformedResponse, NoService
from crust.nat.portmap.upnp_igd import BodyTooLarge, IGDClient, IGDNotFound, UPnPError, XMLRejected
from tests import examples
from tests.nat.test_natpmp import FakeUDP

WANIP1 = "urn:schemas-upnp-org:service:WANIPConnection:1"
WANIP2 = "urn:schemas-upnp-org:service:WANIPConnection:2"
WANPPP1 = "urn:schemas-upnp-org:service:WANPPPConnection:1"


def description(service_type: str = WANIP1, control: str = "/ctl/IPConn", url_base: str = "",
                device: str = "urn:schemas-upnp-org:device:InternetGatewayDevice:1") -> bytes:
    base = f"<URLBase>{url_base}</URLBase>" if url_base else ""
    return f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major><minor>0</minor></specVersion>{base}
<device><deviceType>{device}</deviceType><friendlyName>fake</friendlyName>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<serviceList><service><serviceType>{service_type}</serviceType><serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>{control}</controlURL><SCPDURL>/WANIPCn.xml</SCPDURL></service></serviceList>
</device></deviceList></device></deviceList></device></root>
""".encode()


def soap_response(action: str, service_type: str = WANIP1, **out: object) -> bytes:
    args = "".join(f"<{k}>{v}</{k}>" for k, v in out.items())
    return (f'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            f's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            f'<u:{action}Response xmlns:u="{service_type}">{args}</u:{action}Response>'
            f'</s:Body></s:Envelope>').encode()


def soap_fault(code: int, text: str = "Error") -> bytes:
    return (f'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            f's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body><s:Fault>'
            f'<faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>'
            f'<UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>{code}</errorCode>'
            f'<errorDescription>{text}</errorDescription></UPnPError></detail></s:Fault></s:Body>'
            f'</s:Envelope>').encode()


SSDP_OK = (b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n"
           b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
           b"USN: uuid:1234::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\n"
           b"SERVER: Debian/12 UPnP/1.1 MiniUPnPd/2.3.1\r\n"
           b"LOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n\r\n")

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<root><URLBase>&lol3;</URLBase></root>"""

UNKNOWN_ENCODING = description().replace(b'<?xml version="1.0"?>', b'<?xml version="1.0" encoding="x-foo"?>')

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE root [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><root>&xxe;</root>"""


# every encoding name Python knows, and some it does not: expat asks Python for the ones it lacks
ENCODINGS = sorted(set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
                   | {"hex", "base64", "rot13", "zlib", "bz2", "uu", "quopri", "idna", "punycode", "undefined",
                      "unicode_escape", "utf_7", "utf-32", "x-foo", "", "x" * 300})

_PIECES = [b"<", b">", b"/", b"&", b";", b'"', b"=", b"[", b"]", b":", b"\r\n", b"\x00", b"\xff", b"\xc2\xb2",
           "\u0663".encode(), b"<!DOCTYPE r>", b'<?xml version="1.0" encoding="hex"?>', b"http://[::1", b"[zz]",
           b"&#0;", b"&lol;", b"<a>" * 40, b"99999", b"-1"]


def mutations(original: bytes) -> st.SearchStrategy[bytes]:
    """C{original} with a few pieces inserted or written over, at random places."""
    def apply(edits: list[tuple[int, int, bytes]]) -> bytes:
        data = original
        for where, cut, piece in edits:
            at = where % (len(data) + 1)
            data = data[:at] + piece + data[at + cut:]
        return data

    return st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 8), st.sampled_from(_PIECES) | st.binary(
        max_size=8)), min_size=1, max_size=5).map(apply)


class SSDPParsingTests(SynchronousTestCase):
    def test_msearch(self) -> None:
        data = upnp_igd.build_msearch("urn:x", ("239.255.255.250", 1900), 2)
        self.assertEqual(data, b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\n'
                               b"MX: 2\r\nST: urn:x\r\n\r\n")

    def test_response(self) -> None:
        r = upnp_igd.parse_ssdp_response(SSDP_OK)
        self.assertEqual(r.location, "http://192.168.1.1:5000/rootDesc.xml")
        self.assertTrue(upnp_igd.is_gateway_target(r.st))
        self.assertIn("MiniUPnPd", r.server)

    def test_bare_newlines_and_case(self) -> None:
        r = upnp_igd.parse_ssdp_response(SSDP_OK.replace(b"\r\n", b"\n").replace(b"LOCATION", b"Location"))
        self.assertEqual(r.location, "http://192.168.1.1:5000/rootDesc.xml")

    def test_rejects(self) -> None:
        bad = [
            b"", b"NOTIFY * HTTP/1.1\r\n\r\n", SSDP_OK.replace(b"200 OK", b"404 Not Found"),
            SSDP_OK.replace(b"LOCATION", b"X-LOC"), SSDP_OK.replace(b"http://", b"https://"),
            SSDP_OK.replace(b"192.168.1.1:5000", b"router.lan:5000"), SSDP_OK.replace(b":5000", b":99999"),
            SSDP_OK.replace(b"EXT:", b"no colon here"), SSDP_OK + b"\xff\xfe", SSDP_OK + b"x" * 5000,
            SSDP_OK.replace(b"rootDesc", "r\u00f6\u00f6t".encode()),
        ]
        for data in bad:
            self.assertRaises(MalformedResponse, upnp_igd.parse_ssdp_response, data)

    @given(st.binary(max_size=600))
    def test_garbage(self, data: bytes) -> None:
        try:
            upnp_igd.parse_ssdp_response(data)
        except MalformedResponse:
            pass

    def test_malformed_ipv6_location(self) -> None:
        """A bare ValueError escaped for these."""
        for location in (b"http://[::1/x", b"http://[zz]:80/", b"http://[::1]:x/", b"http://[192.168.1.1]:5000/"):
            e = self.assertRaises(MalformedResponse, upnp_igd.parse_ssdp_response,
                                  SSDP_OK.replace(b"http://192.168.1.1:5000/rootDesc.xml", location))
            self.assertIn("LOCATION", str(e))

    @examples(500)
    @given(mutations(SSDP_OK))
    def test_mutated(self, data: bytes) -> None:
        try:
            upnp_igd.parse_ssdp_response(data)
        except MalformedResponse:
            pass


class XMLTests(SynchronousTestCase):
    def test_prefixes_stripped(self) -> None:
        root = upnp_igd.parse_xml(b'<s:a xmlns:s="urn:x"><s:b>t</s:b><c/></s:a>')
        self.assertEqual((root.tag, [c.tag for c in root], root.find("b").text), ("a", ["b", "c"], "t"))

    def test_entities_refused(self) -> None:
        for data in (BILLION_LAUGHS, EXTERNAL_ENTITY, b'<!DOCTYPE r SYSTEM "http://127.0.0.1/x.dtd"><r/>'):
            error = self.assertRaises(XMLRejected, upnp_igd.parse_xml, data)
            self.assertIn("refused", str(error))

    def test_undefined_entity(self) -> None:
        self.assertRaises(XMLRejected, upnp_igd.parse_xml, b"<r>&lol;</r>")

    def test_standard_entities_fine(self) -> None:
        self.assertEqual(upnp_igd.parse_xml(b"<r>a&amp;b&#65;</r>").text, "a&bA")

    def test_depth(self) -> None:
        self.assertRaises(XMLRejected, upnp_igd.parse_xml, b"<a>" * 40 + b"</a>" * 40)
        upnp_igd.parse_xml(b"<a>" * 30 + b"</a>" * 30)

    def test_malformed(self) -> None:
        for data in (b"", b"<a>", b"<a></b>", b"\xff\xfe\x00", b"<a/><b/>", b"text"):
            self.assertRaises(XMLRejected, upnp_igd.parse_xml, data)

    @examples(300)
    @given(st.binary(max_size=300))
    def test_garbage(self, data: bytes) -> None:
        try:
            upnp_igd.parse_xml(data)
        except XMLRejected:
            pass

    @given(st.text(max_size=200))
    def test_text_garbage(self, text: str) -> None:
        try:
            upnp_igd.parse_xml(f"<root>{text}</root>".encode())
        except XMLRejected:
            pass

    def test_unknown_encoding(self) -> None:
        """A LookupError escaped for an encoding Python does not know, a ValueError for some it does."""
        for name in ("x-foo", "hex", "utf-7", "x" * 300):
            data = f'<?xml version="1.0" encoding="{name}"?><a>\u00e9</a>'.encode("utf-8")
            e = self.assertRaises(XMLRejected, upnp_igd.parse_xml, data)
            self.assertIn("XML", str(e))
        self.assertEqual(upnp_igd.parse_xml(b'<?xml version="1.0" encoding="iso-8859-1"?><a>\xe9</a>').text, "\u00e9")

    @examples(500)
    @given(st.sampled_from(ENCODINGS) | st.text(max_size=20), st.binary(max_size=40))
    def test_any_declared_encoding(self, name: str, body: bytes) -> None:
        data = b'<?xml version="1.0" encoding="' + name.encode("utf-8", "replace") + b'"?><a>' + body + b"</a>"
        try:
            upnp_igd.parse_xml(data)
        except XMLRejected:
            pass


class DescriptionTests(SynchronousTestCase):
    LOCATION = "http://192.168.1.1:5000/rootDesc.xml"

    def test_relative_control_url(self) -> None:
        service = upnp_igd.parse_device_description(description(), self.LOCATION)
        self.assertEqual(service, upnp_igd.IGDService(WANIP1, "http://192.168.1.1:5000/ctl/IPConn"))

    def test_url_base(self) -> None:
        service = upnp_igd.parse_device_description(
            description(control="ctl/IPConn", url_base="http://192.168.1.1:6000/dev/"), self.LOCATION)
        self.assertEqual(service.control_url, "http://192.168.1.1:6000/dev/ctl/IPConn")

    def test_absolute_control_url(self) -> None:
        service = upnp_igd.parse_device_description(description(control="http://192.168.1.1:7/c"), self.LOCATION)
        self.assertEqual(service.control_url, "http://192.168.1.1:7/c")

    def test_ppp(self) -> None:
        service = upnp_igd.parse_device_description(description(WANPPP1), self.LOCATION)
        self.assertEqual(service.service_type, WANPPP1)

    def test_prefers_v2(self) -> None:
        text = description(WANIP1).replace(
            b"</serviceList>\n</device></deviceList>",
            f"<service><serviceType>{WANIP2}</serviceType><controlURL>/v2</controlURL></service>"
            f"</serviceList>\n</device></deviceList>".encode())
        service = upnp_igd.parse_device_description(text, self.LOCATION)
        self.assertEqual((service.service_type, service.control_url), (WANIP2, "http://192.168.1.1:5000/v2"))

    def test_no_wan_service(self) -> None:
        self.assertRaises(IGDNotFound, upnp_igd.parse_device_description,
                          description("urn:schemas-upnp-org:service:Foo:1"), self.LOCATION)

    def test_control_url_elsewhere(self) -> None:
        for control in ("http://10.0.0.1/ctl", "https://192.168.1.1/ctl", "file:///etc/passwd",
                        "http://192.168.1.1:99999/c", ""):
            self.assertRaises(MalformedResponse, upnp_igd.parse_device_description,
                              description(control=control), self.LOCATION)
        self.assertRaises(MalformedResponse, upnp_igd.parse_device_description,
                          description(url_base="http://10.0.0.1/"), self.LOCATION)

    def test_entities(self) -> None:
        self.assertRaises(XMLRejected, upnp_igd.parse_device_description, BILLION_LAUGHS, self.LOCATION)

    def test_malformed_ipv6_urls(self) -> None:
        """A bare ValueError escaped for these."""
        for body, location in ((description(url_base="http://[::1"), self.LOCATION),
                               (description(control="http://[::1/ctl"), self.LOCATION),
                               (description(control="http://[zz]/ctl"), self.LOCATION),
                               (description(), "http://[::1/rootDesc.xml"),
                               (UNKNOWN_ENCODING, self.LOCATION)):
            self.assertRaises(MalformedResponse, upnp_igd.parse_device_description, body, location)

    @examples(500)
    @given(mutations(description(url_base="http://192.168.1.1:6000/dev/")))
    def test_mutated(self, data: bytes) -> None:
        try:
            upnp_igd.parse_device_description(data, self.LOCATION)
        except (MalformedResponse, IGDNotFound):
            pass


class SOAPTests(SynchronousTestCase):
    def test_request(self) -> None:
        body = upnp_igd.build_soap_request(WANIP1, "AddPortMapping", [("NewPortMappingDescription", "a<b&c")])
        root = upnp_igd.parse_xml(body)
        action = root.find("Body/AddPortMapping")
        self.assertEqual(action.find("NewPortMappingDescription").text, "a<b&c")
        self.assertIn(f'xmlns:u="{WANIP1}"'.encode(), body)

    def test_response(self) -> None:
        out = upnp_igd.parse_soap_response(soap_response("GetExternalIPAddress", NewExternalIPAddress="1.2.3.4"),
                                           "GetExternalIPAddress")
        self.assertEqual(out, {"NewExternalIPAddress": "1.2.3.4"})

    def test_response_for_another_action(self) -> None:
        self.assertRaises(MalformedResponse, upnp_igd.parse_soap_response,
                          soap_response("AddPortMapping"), "GetExternalIPAddress")

    def test_fault(self) -> None:
        self.assertEqual(upnp_igd.parse_soap_fault(soap_fault(718, "ConflictInMappingEntry")),
                         (718, "ConflictInMappingEntry"))

    def test_fault_without_detail(self) -> None:
        body = (b'<s:Envelope xmlns:s="x"><s:Body><s:Fault><faultstring>Nope</faultstring>'
                b"</s:Fault></s:Body></s:Envelope>")
        self.assertEqual(upnp_igd.parse_soap_fault(body), (None, "Nope"))

    def test_fault_bad_code(self) -> None:
        self.assertEqual(upnp_igd.parse_soap_fault(soap_fault(0).replace(b">0<", b">x99999999<"))[0], None)

    def test_fault_code_in_other_digits(self) -> None:
        """str.isdigit takes these, and int() raised a bare ValueError on some."""
        for digits in ("\u00b2", "\u0667\u0661\u0668", "7\u00b9\u2078", "\uff17\uff11\uff18"):
            body = soap_fault(0).replace(b">0<", f">{digits}<".encode())
            self.assertEqual(upnp_igd.parse_soap_fault(body), (None, "Error"), digits)

    @examples(500)
    @given(mutations(soap_fault(718, "ConflictInMappingEntry")))
    def test_mutated_fault(self, data: bytes) -> None:
        try:
            code, description = upnp_igd.parse_soap_fault(data)
        except MalformedResponse:
            return
        self.assertTrue(code is None or 0 <= code < 100000)
        self.assertIsInstance(description, str)

    @examples(500)
    @given(mutations(soap_response("AddAnyPortMapping", NewReservedPort=4242)))
    def test_mutated_response(self, data: bytes) -> None:
        try:
            upnp_igd.parse_soap_response(data, "AddAnyPortMapping")
        except MalformedResponse:
            pass


# HTTP with fakes


class FakeBodyTransport:
    def __init__(self, protocol: Any = None) -> None:
        self.stopped = False
        self.protocol = protocol  # given: stopping loses the connection at once

    def stopProducing(self) -> None:
        self.stopped = True
        if self.protocol is not None:
            self.protocol.connectionLost(Failure(ConnectionAbortedError("aborted")))


class BoundedBodyTests(SynchronousTestCase):
    def reader(self, limit: int = 10, expected: Any = upnp_igd.UNKNOWN_LENGTH) -> tuple[Any, FakeBodyTransport]:
        reader = upnp_igd.BoundedBodyReader(limit, expected)
        transport = FakeBodyTransport()
        reader.makeConnection(transport)
        return reader, transport

    def test_collects(self) -> None:
        reader, _ = self.reader()
        reader.dataReceived(b"hello")
        reader.dataReceived(b"world")
        reader.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(reader.finished), b"helloworld")

    def test_no_length_closed(self) -> None:
        reader, _ = self.reader()
        reader.dataReceived(b"hi")
        reader.connectionLost(Failure(PotentialDataLoss()))
        self.assertEqual(self.successResultOf(reader.finished), b"hi")

    def test_over_limit_aborts(self) -> None:
        reader, transport = self.reader()
        reader.dataReceived(b"0123456789")
        reader.dataReceived(b"x")
        self.failureResultOf(reader.finished, BodyTooLarge)
        self.assertTrue(transport.stopped)
        reader.dataReceived(b"more")
        reader.connectionLost(Failure(ResponseDone()))  # no double result

    def test_announced_length(self) -> None:
        reader, transport = self.reader(expected=11)
        self.failureResultOf(reader.finished, BodyTooLarge)
        self.assertTrue(transport.stopped)

    def test_truncated(self) -> None:
        reader, _ = self.reader()
        reader.connectionLost(Failure(ConnectionError("reset")))
        self.failureResultOf(reader.finished, MalformedResponse)

    def test_cancel_aborts(self) -> None:
        reader, transport = self.reader()
        reader.finished.cancel()
        self.assertTrue(transport.stopped)
        self.failureResultOf(reader.finished, CancelledError)

    def test_cancel_with_synchronous_loss(self) -> None:
        reader = upnp_igd.BoundedBodyReader(10)
        transport = FakeBodyTransport(reader)
        reader.makeConnection(transport)
        reader.finished.cancel()
        self.failureResultOf(reader.finished, CancelledError)

    def test_over_limit_with_synchronous_loss(self) -> None:
        reader = upnp_igd.BoundedBodyReader(10)
        reader.makeConnection(FakeBodyTransport(reader))
        reader.dataReceived(b"x" * 11)
        self.failureResultOf(reader.finished, BodyTooLarge)


class FakeResponse:
    def __init__(self, code: int, body: bytes, length: Any = None) -> None:
        self.code, self.body = code, body
        self.length = len(body) if length is None else length

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(FakeBodyTransport())
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class Collector:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class FakeAgent:
    """Answers SOAP requests with C{handler(action, args) -> (code, body)}; records them."""

    def __init__(self, handler: Any = None) -> None:
        self.handler = handler
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.pending: list[Deferred] = []

    def request(self, method: bytes, uri: bytes, headers: Any, producer: Any) -> Deferred:
        if self.handler is None:
            d: Deferred = Deferred(lambda _: None)
            self.pending.append(d)
            return d
        collector = Collector()
        producer.startProducing(collector)
        self.assert_header = headers.getRawHeaders(b"SOAPAction")[0].decode()
        root = upnp_igd.parse_xml(collector.data)
        action = root.find("Body")[0]
        args = {c.tag: c.text or "" for c in action}
        self.requests.append((action.tag, args))
        code, body = self.handler(action.tag, args)
        return succeed(FakeResponse(code, body))


def igd(handler: Any, service_type: str = WANIP1, clock: Any = None) -> IGDClient:
    return IGDClient("http://192.168.1.1:5000/ctl/IPConn", service_type, reactor=clock or Clock(),
                     agent=FakeAgent(handler), internal_client="192.168.1.10")


class ActionTests(SynchronousTestCase):
    def test_external_ip(self) -> None:
        client = igd(lambda a, args: (200, soap_response(a, NewExternalIPAddress="203.0.113.5")))
        self.assertEqual(self.successResultOf(client.get_external_ip()), "203.0.113.5")
        self.assertEqual(client._agent.assert_header, f'"{WANIP1}#GetExternalIPAddress"')

    def test_external_ip_invalid(self) -> None:
        for value in ("", "0.0.0.0", "nope"):
            client = igd(lambda a, args: (200, soap_response(a, NewExternalIPAddress=value)))
            self.failureResultOf(client.get_external_ip(), UPnPError)

    def test_fault(self) -> None:
        client = igd(lambda a, args: (500, soap_fault(501, "ActionFailed")))
        error = self.failureResultOf(client.add_port_mapping("tcp", 1, 1, 60), UPnPError).value
        self.assertEqual((error.code, error.action, error.description), (501, "AddPortMapping", "ActionFailed"))

    def test_http_error(self) -> None:
        client = igd(lambda a, args: (404, b"<html>not found"))
        error = self.failureResultOf(client.get_external_ip(), UPnPError).value
        self.assertIsNone(error.code)
        self.assertIn("HTTP 404", str(error))

    def test_bad_xml_response(self) -> None:
        client = igd(lambda a, args: (200, BILLION_LAUGHS))
        self.failureResultOf(client.get_external_ip(), XMLRejected)

    def test_add_arguments(self) -> None:
        client = igd(lambda a, args: (200, soap_response(a)))
        self.successResultOf(client.add_port_mapping("udp", 5000, 4242, 3600))
        self.assertEqual(client._agent.requests[0], ("AddPortMapping", {
            "NewRemoteHost": "", "NewExternalPort": "5000", "NewProtocol": "UDP", "NewInternalPort": "4242",
            "NewInternalClient": "192.168.1.10", "NewEnabled": "1", "NewPortMappingDescription": "crust",
            "NewLeaseDuration": "3600"}))

    def test_reserved_port_in_other_digits(self) -> None:
        for port in ("\u00b2", "\u0664\u0662", "", "0", "65536", "4242x"):
            client = igd(lambda a, args: (200, soap_response(a, NewReservedPort=port)), WANIP2)
            self.failureResultOf(client.add_any_port_mapping("tcp", 1, 1, 60), MalformedResponse)
        client = igd(lambda a, args: (200, soap_response(a, NewReservedPort=4242)), WANIP2)
        self.assertEqual(self.successResultOf(client.add_any_port_mapping("tcp", 1, 1, 60)), 4242)

    @examples(200)
    @given(mutations(soap_response("GetExternalIPAddress", NewExternalIPAddress="203.0.113.5")), st.booleans())
    def test_mutated_answers(self, body: bytes, ok: bool) -> None:
        """Whatever the gateway answers, an action fails only with the module's errors."""
        client = igd(lambda a, args: (200 if ok else 500, body))
        d = client.get_external_ip()
        if not d.called or not isinstance(d.result, Failure):
            self.successResultOf(d)
            return
        self.failureResultOf(d, MalformedResponse, UPnPError)

    def test_delete_missing_is_fine(self) -> None:
        client = igd(lambda a, args: (500, soap_fault(714, "NoSuchEntryInArray")))
        self.assertIsNone(self.successResultOf(client.delete_port_mapping("tcp", 5000)))
        client = igd(lambda a, args: (500, soap_fault(606)))
        self.failureResultOf(client.delete_port_mapping("tcp", 5000), UPnPError)


class MapPolicyTests(SynchronousTestCase):
    def test_same_port_first(self) -> None:
        client = igd(lambda a, args: (200, soap_response(a)))
        self.assertEqual(self.successResultOf(client.map_port("tcp", 4242, 3600)), (4242, 3600))

    def test_permanent_only(self) -> None:
        def handler(action: str, args: dict[str, str]) -> tuple[int, bytes]:
            if args["NewLeaseDuration"] != "0":
                return 500, soap_fault(725, "OnlyPermanentLeasesSupported")
            return 200, soap_response(action)

        client = igd(handler)
        self.assertEqual(self.successResultOf(client.map_port("tcp", 4242, 3600)), (4242, 0))
        self.assertEqual(len(client._agent.requests), 2)

    def test_conflict_v1_random_port(self) -> None:
        def handler(action: str, args: dict[str, str]) -> tuple[int, bytes]:
            if args["NewExternalPort"] == "4242":
                return 500, soap_fault(718, "ConflictInMappingEntry")
            return 200, soap_response(action)

        port, _ = self.successResultOf(igd(handler).map_port("tcp", 4242, 3600))
        self.assertNotEqual(port, 4242)
        self.assertTrue(1024 <= port <= 65535)

    def test_conflict_v2_any_port(self) -> None:
        def handler(action: str, args: dict[str, str]) -> tuple[int, bytes]:
            if action == "AddAnyPortMapping":
                return 200, soap_response(action, WANIP2, NewReservedPort=40001)
            return 500, soap_fault(718, "ConflictInMappingEntry")

        client = igd(handler, WANIP2)
        self.assertEqual(self.successResultOf(client.map_port("udp", 4242, 3600)), (40001, 3600))
        self.assertEqual([r[0] for r in client._agent.requests], ["AddPortMapping", "AddAnyPortMapping"])

    def test_v2_without_any_port(self) -> None:
        def handler(action: str, args: dict[str, str]) -> tuple[int, bytes]:
            if action == "AddAnyPortMapping":
                return 500, soap_fault(401, "Invalid Action")
            if args["NewExternalPort"] == "4242":
                return 500, soap_fault(718)
            return 200, soap_response(action)

        client = igd(handler, WANIP2)
        port, _ = self.successResultOf(client.map_port("udp", 4242, 3600))
        self.assertNotEqual(port, 4242)

    def test_same_port_required(self) -> None:
        def handler(action: str, args: dict[str, str]) -> tuple[int, bytes]:
            if args["NewExternalPort"] != args["NewInternalPort"]:
                return 500, soap_fault(724, "SamePortValuesRequired")
            return 200, soap_response(action)

        self.assertEqual(self.successResultOf(igd(handler).map_port("tcp", 4242, 60, external_port=9)), (4242, 60))

    def test_conflicts_bounded(self) -> None:
        client = igd(lambda a, args: (500, soap_fault(718)))
        self.failureResultOf(client.map_port("tcp", 4242, 60), UPnPError)
        self.assertEqual(len(client._agent.requests), 4)

    def test_other_refusal_not_retried(self) -> None:
        client = igd(lambda a, args: (500, soap_fault(501, "ActionFailed")))
        self.assertEqual(self.failureResultOf(client.map_port("tcp", 4242, 60), UPnPError).value.code, 501)
        self.assertEqual(len(client._agent.requests), 1)


class DeadlineTests(SynchronousTestCase):
    def test_timeout(self) -> None:
        clock = Clock()
        agent = FakeAgent()
        d = upnp_igd.http_request(agent, clock, b"GET", "http://192.168.1.1/x", timeout=2.0)
        clock.advance(1.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.failureResultOf(d, GatewayTimeout)
        self.assertTrue(agent.pending[0].called)  # the request was cancelled

    def test_cancel(self) -> None:
        clock = Clock()
        d = upnp_igd.http_request(FakeAgent(), clock, b"GET", "http://192.168.1.1/x")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connection_failure_is_no_service(self) -> None:
        class Refusing:
            def request(self, *args: Any) -> Deferred:
                from twisted.internet.defer import fail
                from twisted.internet.error import ConnectionRefusedError

                return fail(ConnectionRefusedError())

        self.failureResultOf(upnp_igd.http_request(Refusing(), Clock(), b"GET", "http://192.168.1.1/"), NoService)

    def test_non_ascii_url(self) -> None:
        self.failureResultOf(upnp_igd.http_request(FakeAgent(), Clock(), b"GET", "http://h/\u00e9"),
                             MalformedResponse)


class SSDPSearchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.search = upnp_igd.SSDPSearch(self.clock, ("192.168.1.1", 1900), timeout=3.0)
        self.transport = FakeUDP()
        self.search.makeConnection(self.transport)

    def test_sends_and_resends(self) -> None:
        self.assertEqual(len(self.transport.written), 2)
        self.assertTrue(all(addr == ("192.168.1.1", 1900) for _, addr in self.transport.written))
        self.assertIn(b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:2", self.transport.written[0][0])
        self.clock.advance(0.5)
        self.assertEqual(len(self.transport.written), 4)

    def test_found(self) -> None:
        self.search.datagramReceived(SSDP_OK, ("192.168.1.1", 33333))
        self.search.datagramReceived(SSDP_OK, ("192.168.1.1", 33333))  # duplicate
        self.assertNoResult(self.search.result)
        self.clock.advance(0.3)
        [found] = self.successResultOf(self.search.result)
        self.assertEqual((found.location, found.source), ("http://192.168.1.1:5000/rootDesc.xml", "192.168.1.1"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing(self) -> None:
        self.clock.pump([0.5, 2.5])
        self.assertEqual(self.successResultOf(self.search.result), [])

    def test_rejects(self) -> None:
        self.search.datagramReceived(SSDP_OK, ("192.168.1.77", 1900))
        self.search.datagramReceived(b"garbage", ("192.168.1.1", 1900))
        self.search.datagramReceived(SSDP_OK.replace(b"InternetGatewayDevice", b"MediaServer"), ("192.168.1.1", 1))
        self.search.datagramReceived(SSDP_OK.replace(b"192.168.1.1:5000", b"192.168.1.2:5000"),
                                     ("192.168.1.1", 1900))
        self.assertEqual(dict(self.search.rejected), {"wrong source": 1, "malformed": 1, "not a gateway": 1,
                                                      "location elsewhere": 1})
        self.clock.advance(3)
        self.assertEqual(self.successResultOf(self.search.result), [])

    def test_multicast_accepts_any_sender(self) -> None:
        search = upnp_igd.SSDPSearch(self.clock)
        search.makeConnection(FakeUDP())
        search.datagramReceived(SSDP_OK, ("192.168.1.1", 1900))
        self.clock.advance(0.3)
        self.assertEqual(len(self.successResultOf(search.result)), 1)

    def test_cancel(self) -> None:
        self.search.result.cancel()
        self.failureResultOf(self.search.result, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @examples(200)
    @given(st.binary(max_size=300))
    def test_fuzz(self, data: bytes) -> None:
        search = upnp_igd.SSDPSearch(Clock(), ("192.168.1.1", 1900))
        search.makeConnection(FakeUDP())
        search.datagramReceived(data, ("192.168.1.1", 1900))
        self.assertEqual(sum(search.rejected.values()), 1)

    @examples(300)
    @given(mutations(SSDP_OK))
    def test_mutated(self, data: bytes) -> None:
        """A mutated answer is found or rejected; nothing raises."""
        search = upnp_igd.SSDPSearch(Clock(), ("192.168.1.1", 1900))
        search.makeConnection(FakeUDP())
        search.datagramReceived(data, ("192.168.1.1", 1900))
        self.assertEqual(sum(search.rejected.values()) + len(search.found), 1)


# loopback


class FakeControl(Resource):
    """The WANIPConnection control URL of L{FakeIGD}."""

    isLeaf = True

    def __init__(self, igd: "FakeIGD") -> None:
        super().__init__()
        self.igd = igd

    def render_POST(self, request: Any) -> bytes:
        soap_action = (request.getHeader("soapaction") or "").strip('"')
        root = upnp_igd.parse_xml(request.content.read())
        element = root.find("Body")[0]
        action, args = element.tag, {c.tag: c.text or "" for c in element}
        self.igd.calls.append((action, args))
        assert soap_action == f"{self.igd.service_type}#{action}", soap_action
        code = self.igd.faults.get(action)
        if code:
            request.setResponseCode(500)
            return soap_fault(code, "fault")
        if action == "GetExternalIPAddress":
            return soap_response(action, self.igd.service_type, NewExternalIPAddress=self.igd.external_ip)
        key = (args.get("NewProtocol", "").lower(), int(args.get("NewExternalPort", "0")))
        if action in ("AddPortMapping", "AddAnyPortMapping"):
            existing = self.igd.mappings.get(key)
            if existing is not None and existing[0] != args["NewInternalClient"]:
                if action == "AddPortMapping":
                    request.setResponseCode(500)
                    return soap_fault(718, "ConflictInMappingEntry")
                key = (key[0], max(p for _, p in self.igd.mappings) + 1)
            self.igd.mappings[key] = (args["NewInternalClient"], int(args["NewInternalPort"]),
                                      int(args["NewLeaseDuration"]))
            if action == "AddAnyPortMapping":
                return soap_response(action, self.igd.service_type, NewReservedPort=key[1])
            return soap_response(action, self.igd.service_type)
        if action == "DeletePortMapping":
            if self.igd.mappings.pop(key, None) is None:
                request.setResponseCode(500)
                return soap_fault(714, "NoSuchEntryInArray")
            return soap_response(action, self.igd.service_type)
        request.setResponseCode(500)
        return soap_fault(401, "Invalid Action")


class Static(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: Any) -> bytes:
        return self.body


class Stream(Resource):
    """A chunked body (no Content-Length) of 160 KiB."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        for _ in range(20):
            request.write(b"x" * 8192)
        request.finish()
        return NOT_DONE_YET


class Hang(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.requests.append(request)
        request.write(b"<root>")
        return NOT_DONE_YET


class FakeIGD:
    """
    A UPnP gateway on 127.0.0.1: a web server with C{/rootDesc.xml} and the
    control URL C{/ctl/IPConn}, and an SSDP responder pointing at C{/rootDesc.xml} (or at
    C{location_path}).  Start it with L{listen}.  Misbehaving pages: C{/huge}
    (200 KiB with a Content-Length), C{/stream} (160 KiB chunked), C{/hang}
    (never ends), C{/entities} (billion laughs), C{/encoding} (XML in an
    unknown encoding), C{/ipv6} (a malformed IPv6 URLBase).  The SSDP
    responder also answers for C{bad_devices} (paths), before the gateway.
    """

    def __init__(self, *, service_type: str = WANIP1, external_ip: str = "203.0.113.7",
                 location_path: str = "/rootDesc.xml", bad_devices: tuple[str, ...] = ()) -> None:
        self.service_type = service_type
        self.external_ip = external_ip
        self.location_path = location_path
        self.bad_devices = bad_devices
        self.faults: dict[str, int] = {}
        self.mappings: dict[tuple[str, int], tuple[str, int, int]] = {}
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.hang = Hang()

    def listen(self, test: TestCase) -> "FakeIGD":
        root = Resource()
        root.putChild(b"rootDesc.xml", Static(description(self.service_type)))
        root.putChild(b"ctl", FakeControl(self))
        root.putChild(b"huge", Static(b"<root>" + b"x" * (200 * 1024) + b"</root>"))
        root.putChild(b"stream", Stream())
        root.putChild(b"entities", Static(BILLION_LAUGHS))
        root.putChild(b"encoding", Static(UNKNOWN_ENCODING))
        root.putChild(b"ipv6", Static(description(url_base="http://[::1")))
        root.putChild(b"hang", self.hang)
        site = Site(root)
        site.displayTracebacks = False
        self.web = reactor.listenTCP(0, site, interface="127.0.0.1")
        test.addCleanup(self.web.stopListening)

        def finish_hung() -> None:
            for request in self.hang.requests:
                if not request.finished and request.channel is not None:
                    request.channel.transport.abortConnection()

        test.addCleanup(finish_hung)
        self.base = f"http://127.0.0.1:{self.web.getHost().port}"
        self.ssdp_protocol = FakeSSDPResponder(f"{self.base}{self.location_path}",
                                               tuple(f"{self.base}{path}" for path in self.bad_devices))
        self.ssdp = reactor.listenUDP(0, self.ssdp_protocol, interface="127.0.0.1")
        test.addCleanup(self.ssdp.stopListening)
        self.ssdp_address = ("127.0.0.1", self.ssdp.getHost().port)
        return self


class FakeSSDPResponder(DatagramProtocol):
    """Answers every M-SEARCH for C{location}, after one answer for each of C{before} (other devices)."""

    def __init__(self, location: str, before: tuple[str, ...] = ()) -> None:
        self.location = location
        self.before = before
        self.searches: list[bytes] = []
        self.silent = False

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.searches.append(data)
        if self.silent or not data.startswith(b"M-SEARCH"):
            return
        st = [line[3:].strip() for line in data.decode().split("\r\n") if line.upper().startswith("ST:")][0]
        for location in self.before + (self.location,):
            self.transport.write(
                (f"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: {st}\r\nUSN: uuid:fake::{st}\r\n"
                 f"EXT:\r\nSERVER: fake UPnP/1.1\r\nLOCATION: {location}\r\n\r\n").encode(), addr)


class LoopbackTests(TestCase):
    @inlineCallbacks
    def test_discover_and_map(self) -> Any:
        fake = FakeIGD().listen(self)
        client = yield IGDClient.discover(reactor, ssdp_address=fake.ssdp_address, search_timeout=2.0)
        self.assertEqual(client.control_url, f"{fake.base}/ctl/IPConn")
        ip = yield client.get_external_ip()
        self.assertEqual(ip, "203.0.113.7")
        mapped = yield client.map_port("tcp", 4242, 3600)
        self.assertEqual(mapped, (4242, 3600))
        self.assertEqual(fake.mappings, {("tcp", 4242): ("127.0.0.1", 4242, 3600)})
        yield client.delete_port_mapping("tcp", 4242)
        self.assertEqual(fake.mappings, {})

    @inlineCallbacks
    def test_conflict_with_another_host(self) -> Any:
        fake = FakeIGD(service_type=WANIP2).listen(self)
        fake.mappings[("udp", 4242)] = ("127.0.0.99", 1, 0)
        client = yield IGDClient.from_location(f"{fake.base}/rootDesc.xml")
        mapped = yield client.map_port("udp", 4242, 600)
        self.assertEqual(mapped, (4243, 600))

    @inlineCallbacks
    def test_permanent_only(self) -> Any:
        fake = FakeIGD().listen(self)
        fake.faults["AddPortMapping"] = 725
        client = yield IGDClient.from_location(f"{fake.base}/rootDesc.xml")
        calls = []
        original = client.add_port_mapping

        def add(transport: str, ext: int, internal: int, lease: int) -> Deferred:
            calls.append(lease)
            if lease == 0:
                fake.faults.pop("AddPortMapping")
            return original(transport, ext, internal, lease)

        client.add_port_mapping = add  # type: ignore[method-assign]
        mapped = yield client.map_port("tcp", 4242, 3600)
        self.assertEqual((mapped, calls), ((4242, 0), [3600, 0]))

    @inlineCallbacks
    def test_huge_description(self) -> Any:
        fake = FakeIGD().listen(self)
        yield self.assertFailure(IGDClient.from_location(f"{fake.base}/huge", max_body=64 * 1024), BodyTooLarge)

    @inlineCallbacks
    def test_huge_chunked_body(self) -> Any:
        fake = FakeIGD().listen(self)
        yield self.assertFailure(IGDClient.from_location(f"{fake.base}/stream"), BodyTooLarge)

    @inlineCallbacks
    def test_entity_description(self) -> Any:
        fake = FakeIGD().listen(self)
        yield self.assertFailure(IGDClient.from_location(f"{fake.base}/entities"), XMLRejected)

    @inlineCallbacks
    def test_hanging_server(self) -> Any:
        fake = FakeIGD().listen(self)
        start = reactor.seconds()
        yield self.assertFailure(IGDClient.from_location(f"{fake.base}/hang", timeout=0.3), GatewayTimeout)
        self.assertLess(reactor.seconds() - start, 2.0)

    @inlineCallbacks
    def test_discovery_skips_bad_gateway(self) -> Any:
        fake = FakeIGD(location_path="/entities").listen(self)
        yield self.assertFailure(IGDClient.discover(reactor, ssdp_address=fake.ssdp_address, search_timeout=1.0),
                                 IGDNotFound)

    @inlineCallbacks
    def test_discovery_goes_on_after_bad_devices(self) -> Any:
        """A device that failed with a LookupError or ValueError used to end discovery."""
        fake = FakeIGD(bad_devices=("/encoding", "/ipv6", "/entities")).listen(self)
        client = yield IGDClient.discover(reactor, ssdp_address=fake.ssdp_address, search_timeout=2.0)
        self.assertEqual(client.control_url, f"{fake.base}/ctl/IPConn")

    @inlineCallbacks
    def test_discovery_goes_on_after_an_unexpected_error(self) -> Any:
        fake = FakeIGD(bad_devices=("/encoding",)).listen(self)
        original = upnp_igd.parse_device_description

        def broken(body: bytes, location: str) -> Any:
            if location.endswith("/encoding"):
                raise RuntimeError("a bug")
            return original(body, location)

        self.patch(upnp_igd, "parse_device_description", broken)
        client = yield IGDClient.discover(reactor, ssdp_address=fake.ssdp_address, search_timeout=2.0)
        self.assertEqual(client.control_url, f"{fake.base}/ctl/IPConn")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_no_gateway(self) -> Any:
        fake = FakeIGD().listen(self)
        fake.ssdp_protocol.silent = True
        start = reactor.seconds()
        yield self.assertFailure(IGDClient.discover(reactor, ssdp_address=fake.ssdp_address, search_timeout=0.5),
                                 IGDNotFound)
        self.assertGreaterEqual(len(fake.ssdp_protocol.searches), 4)  # two targets, sent twice
        self.assertLess(reactor.seconds() - start, 2.0)
