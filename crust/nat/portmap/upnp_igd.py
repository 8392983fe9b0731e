"""
UPnP Internet Gateway Device: SSDP discovery, device description, and the
SOAP actions of WANIPConnection (v1, v2) and WANPPPConnection (v1) that port
mapping needs.

Everything read from the network is bounded: SSDP responses (size, and only
from the host named in their LOCATION), HTTP bodies (L{MAX_BODY}, read by
L{BoundedBodyReader}, which aborts the connection at the limit), XML
(no DOCTYPE, no entities, limited depth: see L{parse_xml}), and time (every
HTTP exchange has a deadline on the injected reactor).  Control URLs must be
on the host that served the description.

The parsers (L{parse_ssdp_response}, L{parse_device_description},
L{parse_soap_response}, L{parse_soap_fault}) are pure, and whatever they
are given they raise only this module's errors (L{MalformedResponse} and its
kinds: L{XMLRejected}, L{IGDNotFound}...): an unknown XML encoding, a
malformed IPv6 URL or a number in other digits than ASCII's is a malformed
response like any other.  Discovery tries every gateway that answered and
skips (with a log line) any one that fails, whatever the failure.  The
external address is not required to be routable: gateways in test labs use
documentation ranges, and a P2P client has no business refusing them.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, cast
from urllib.parse import urljoin, urlsplit
from xml.parsers import expat
from xml.sax.saxutils import escape

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from crust._util.reactor import maybe_global_reactor
from crust.nat.portmap.gateway import GatewayTimeout, MalformedResponse, MappingRefused, NoService, PortMappingError

SSDP_ADDRESS = ("239.255.255.250", 1900)
IGD_DEVICES = (
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
)
WAN_SERVICES = (  # in order of preference
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
MAX_BODY = 64 * 1024
MAX_SSDP_RESPONSE = 4096
MAX_XML_DEPTH = 32
DEFAULT_TIMEOUT = 5.0
DEFAULT_SEARCH_TIMEOUT = 3.0

# UPnP error codes (UPnP-arch-DeviceArchitecture, WANIPConnection:2)
INVALID_ACTION = 401
INVALID_ARGS = 402
ACTION_FAILED = 501
NOT_AUTHORIZED = 606
OPTIONAL_ACTION_NOT_IMPLEMENTED = 602
NO_SUCH_ENTRY = 714
CONFLICT_IN_MAPPING_ENTRY = 718
SAME_PORT_VALUES_REQUIRED = 724
ONLY_PERMANENT_LEASES_SUPPORTED = 725


class UPnPError(MappingRefused):
    """A SOAP fault (C{code} is the UPnP error code, if given) or an HTTP error."""

    def __init__(self, action: str, code: Optional[int], description: str) -> None:
        super().__init__("UPnP", code, f"{action}: {description}")
        self.action = action
        self.description = description


class XMLRejected(MalformedResponse):
    """XML that is malformed, too deep, or has a DOCTYPE or entities."""


class BodyTooLarge(MalformedResponse):
    """An HTTP body over the size limit; the connection was aborted."""


class IGDNotFound(NoService):
    """No Internet Gateway Device answered discovery, or none had a WAN connection service."""


# XML


def _local(name: str) -> str:
    return name.rpartition(":")[2]


def _refuse(what: str) -> Any:
    def handler(*args: object) -> None:
        raise XMLRejected(f"XML with {what} is refused")

    return handler


def parse_xml(data: bytes, max_depth: int = MAX_XML_DEPTH) -> ET.Element:
    """
    Parse XML into an element tree whose tags are local names (prefixes
    stripped: devices are sloppy with namespaces).  DOCTYPE, entity
    declarations and external entities are refused, so no entity is ever
    expanded; nesting deeper than C{max_depth} is refused.

    @raise XMLRejected: with the reason.
    """
    parser = expat.ParserCreate()
    builder = ET.TreeBuilder()
    depth = 0

    def start(name: str, attrs: dict) -> None:
        nonlocal depth
        depth += 1
        if depth > max_depth:
            raise XMLRejected(f"XML nested deeper than {max_depth}")
        builder.start(_local(name), {})

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(_local(name))

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = _refuse("a DOCTYPE")
    parser.EntityDeclHandler = _refuse("an entity declaration")
    parser.UnparsedEntityDeclHandler = _refuse("an unparsed entity")
    parser.ExternalEntityRefHandler = _refuse("an external entity")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
        return builder.close()
    except XMLRejected:
        raise
    except (expat.ExpatError, AssertionError, IndexError) as e:  # TreeBuilder asserts on a broken tree
        raise XMLRejected(f"bad XML: {e}") from None
    except (LookupError, ValueError, TypeError) as e:  # the declared encoding: unknown, multi-byte, not text
        raise XMLRejected(f"XML in an encoding we cannot read: {str(e)[:100]}") from None


def _text(element: Optional[ET.Element]) -> str:
    return (element.text or "").strip() if element is not None else ""


def _ascii_number(text: str, max_digits: int) -> Optional[int]:
    """C{text} as a number if it is 1 to C{max_digits} ASCII digits, else None (C{str.isdigit} takes others)."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def _split_url(url: str, what: str) -> Any:
    """C{urlsplit(url)} with its port checked. @raise MalformedResponse: it does not split (a bad IPv6 host...)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (ValueError if bad)
    except ValueError as e:
        raise MalformedResponse(f"{what} {url[:100]!r} is not a URL: {e}") from None
    return parts


# SSDP


@dataclass(frozen=True)
class SSDPResponse:
    location: str
    st: str
    usn: str = ""
    server: str = ""
    source: str = ""  # the address that sent it


def build_msearch(target: str, address: tuple[str, int] = SSDP_ADDRESS, mx: int = 1) -> bytes:
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {host}:{address[1]}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {mx}\r\n"
        f"ST: {target}\r\n"
        "\r\n"
    ).encode("ascii")


def parse_ssdp_response(data: bytes) -> SSDPResponse:
    """
    Parse an M-SEARCH response (C{HTTP/1.1 200 OK} and headers) with an
    C{http://} LOCATION whose host is an IP address.

    @raise MalformedResponse: naming what is wrong.
    """
    if len(data) > MAX_SSDP_RESPONSE:
        raise MalformedResponse(f"SSDP response of {len(data)} bytes (limit {MAX_SSDP_RESPONSE})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse("SSDP response is not UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].upper().startswith("HTTP/1.") or status[1] != "200":
        raise MalformedResponse(f"not an SSDP search response: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line.strip():
            break
        name, sep, value = line.partition(":")
        if not sep:
            raise MalformedResponse(f"bad header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    location = headers.get("location", "")
    if not location:
        raise MalformedResponse("SSDP response without LOCATION")
    if not location.isascii() or any(c.isspace() for c in location):
        raise MalformedResponse(f"LOCATION {location[:100]!r} is not a plain URL")
    parts = _split_url(location, "LOCATION")
    if parts.scheme != "http" or not parts.hostname:
        raise MalformedResponse(f"LOCATION {location[:100]!r} is not an http URL")
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        raise MalformedResponse(f"LOCATION {location[:100]!r} does not name an IP address and port") from None
    return SSDPResponse(location, headers.get("st", ""), headers.get("usn", ""), headers.get("server", ""))


def is_gateway_target(st: str) -> bool:
    return st in IGD_DEVICES or st in WAN_SERVICES


class SSDPSearch(DatagramProtocol):
    """
    One SSDP search for gateways: M-SEARCH for each target (sent twice, for
    loss), then collect responses until C{settle} seconds after the first
    (or C{timeout} seconds in all).  C{result} fires with the responses (one
    per LOCATION, in arrival order), possibly none.  Datagrams that are
    malformed, not about a gateway, from a host other than their LOCATION's,
    or (when the search address is unicast) not from that address, are
    dropped, logged and counted in C{rejected}.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, address: tuple[str, int] = SSDP_ADDRESS,
                 targets: Sequence[str] = IGD_DEVICES, timeout: float = DEFAULT_SEARCH_TIMEOUT,
                 settle: float = 0.3, resend: float = 0.5, mx: int = 1) -> None:
        self._reactor = reactor
        self.address = address
        self.targets = tuple(targets)
        self.timeout, self.settle, self.resend, self.mx = timeout, settle, resend, mx
        self._unicast = not ipaddress.ip_address(address[0]).is_multicast
        self.found: list[SSDPResponse] = []
        self.rejected: Counter[str] = Counter()
        self.result: Deferred = Deferred(lambda _: self._stop_timers())
        self._timers: list[Any] = []
        self._settling = False

    def startProtocol(self) -> None:
        self._send_all()
        self._timers.append(self._reactor.callLater(self.resend, self._send_all))
        self._timers.append(self._reactor.callLater(self.timeout, self._finish))

    def _send_all(self) -> None:
        transport = self.transport
        if transport is None:  # the search's socket is closed
            return
        for target in self.targets:
            try:
                transport.write(build_msearch(target, self.address, self.mx), self.address)
            except Exception as e:
                self.log.info("SSDP: sending M-SEARCH to {address} failed: {error}",
                              address=f"{self.address[0]}:{self.address[1]}", error=e)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        source = addr[0] if isinstance(addr, tuple) and addr else repr(addr)
        if self.result.called:
            return
        if self._unicast and not _same_ip(source, self.address[0]):
            self._reject("wrong source", source, f"we searched {self.address[0]} only")
            return
        try:
            response = parse_ssdp_response(datagram)
        except MalformedResponse as e:
            self._reject("malformed", source, str(e))
            return
        if not is_gateway_target(response.st):
            self._reject("not a gateway", source, f"ST {response.st[:100]!r}")
            return
        if not _same_ip(urlsplit(response.location).hostname or "", source):
            self._reject("location elsewhere", source, f"LOCATION {response.location[:100]!r}")
            return
        if any(f.location == response.location for f in self.found):
            return
        self.found.append(SSDPResponse(response.location, response.st, response.usn, response.server, source))
        if not self._settling:
            self._settling = True
            self._timers.append(self._reactor.callLater(self.settle, self._finish))

    def _reject(self, reason: str, source: str, detail: str) -> None:
        self.rejected[reason] += 1
        count = self.rejected[reason]
        if count & (count - 1) == 0:
            self.log.info("SSDP: ignored a datagram from {source}: {reason}: {detail} ({count} so far)",
                          source=source, reason=reason, detail=detail, count=count)

    def _stop_timers(self) -> None:
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []

    def _finish(self) -> None:
        self._stop_timers()
        if not self.result.called:
            self.result.callback(list(self.found))


def search(reactor: Any = None, *, address: tuple[str, int] = SSDP_ADDRESS,
           timeout: float = DEFAULT_SEARCH_TIMEOUT, interface: str = "", **kwargs: Any) -> Deferred:
    """Run an L{SSDPSearch} from an ephemeral UDP port; fires with its responses."""
    reactor = maybe_global_reactor(reactor)
    protocol = SSDPSearch(reactor, address, timeout=timeout, **kwargs)
    port = reactor.listenUDP(0, protocol, interface=interface)

    def done(result: Any) -> Any:
        d = port.stopListening()
        if isinstance(d, Deferred):
            return d.addCallback(lambda _: result)
        return result

    return protocol.result.addBoth(done)


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.partition("%")[0]) == ipaddress.ip_address(b.partition("%")[0])
    except ValueError:
        return False


# device description


@dataclass(frozen=True)
class IGDService:
    service_type: str
    control_url: str


def parse_device_description(body: bytes, location: str) -> IGDService:
    """
    The preferred WAN connection service (L{WAN_SERVICES} order) of a device
    description fetched from C{location}, its control URL resolved against
    URLBase or C{location}.  The control URL must be C{http} and on
    C{location}'s host.

    @raise IGDNotFound: no WAN connection service.
    @raise XMLRejected, MalformedResponse: bad XML, or a bad control URL.
    """
    root = parse_xml(body)
    base = _text(root.find("URLBase")) or location
    best: Optional[tuple[int, ET.Element]] = None
    for service in root.iter("service"):
        service_type = _text(service.find("serviceType"))
        if service_type in WAN_SERVICES:
            rank = WAN_SERVICES.index(service_type)
            if best is None or rank < best[0]:
                best = (rank, service)
    if best is None:
        raise IGDNotFound(f"{location}: no WAN connection service in the device description")
    service = best[1]
    control = _text(service.find("controlURL"))
    if not control:
        raise MalformedResponse(f"{location}: WAN service without a controlURL")
    origin = _split_url(location, "location")
    try:
        url = urljoin(base, control)
    except ValueError as e:
        raise MalformedResponse(f"control URL {control[:100]!r} on {base[:100]!r} is not a URL: {e}") from None
    parts = _split_url(url, "control URL")
    if parts.scheme != "http" or not _same_ip(parts.hostname or "", origin.hostname or ""):
        raise MalformedResponse(f"control URL {url[:100]!r} is not http on {origin.hostname}")
    return IGDService(WAN_SERVICES[best[0]], url)


# SOAP


def build_soap_request(service_type: str, action: str, arguments: Iterable[tuple[str, object]]) -> bytes:
    args = "".join(f"<{name}>{escape(str(value))}</{name}>" for name, value in arguments)
    return (
        '<?xml version="1.0"?>\r\n'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        f'<s:Body><u:{action} xmlns:u="{escape(service_type)}">{args}</u:{action}></s:Body>'
        "</s:Envelope>\r\n"
    ).encode("utf-8")


def parse_soap_response(body: bytes, action: str) -> dict[str, str]:
    """The output arguments of C{action}'s response (C{{name: text}})."""
    root = parse_xml(body)
    response = root.find(f"Body/{action}Response")
    if root.tag != "Envelope" or response is None:
        raise MalformedResponse(f"no {action}Response in the SOAP envelope")
    return {child.tag: _text(child) for child in response}


def parse_soap_fault(body: bytes) -> tuple[Optional[int], str]:
    """The UPnP C{(errorCode, errorDescription)} of a SOAP fault (code C{None} if absent)."""
    root = parse_xml(body)
    fault = root.find("Body/Fault")
    if fault is None:
        raise MalformedResponse("no Fault in the SOAP envelope")
    error = fault.find("detail/UPnPError")
    code_text = _text(error.find("errorCode")) if error is not None else ""
    description = _text(error.find("errorDescription")) if error is not None else ""
    code = _ascii_number(code_text, 5)
    return code, description or _text(fault.find("faultstring")) or "SOAP fault"


# HTTP


class BoundedBodyReader(Protocol):
    """
    Collects a response body into C{finished} (a Deferred), failing it with
    L{BodyTooLarge} and aborting the connection as soon as the body (or its
    announced length) exceeds C{limit} bytes.  Cancelling C{finished} aborts
    the connection too.
    """

    def __init__(self, limit: int, expected: Any = UNKNOWN_LENGTH) -> None:
        self.limit = limit
        self.expected = expected
        self.received = 0
        self._chunks: list[bytes] = []
        self._cancelled = False
        self.finished: Deferred = Deferred(self._cancel)

    def _cancel(self, _: Deferred) -> None:
        self._cancelled = True  # the Deferred fails with CancelledError, whatever the transport says
        self._abort()

    def connectionMade(self) -> None:
        if self.expected is not UNKNOWN_LENGTH and self.expected > self.limit:
            self._too_large(f"announced {self.expected} bytes")

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.received += len(data)
        if self.received > self.limit:
            self._chunks = []
            self._too_large(f"{self.received} bytes received")
            return
        self._chunks.append(data)

    def _too_large(self, detail: str) -> None:
        if not self.finished.called:
            self.finished.errback(BodyTooLarge(f"HTTP body over the limit of {self.limit} bytes ({detail})"))
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            # Twisted hands a response body's protocol a producer as its transport
            # (twisted.web's TransportProxyProducer), not the ITransport it declares
            cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called or self._cancelled:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(MalformedResponse(f"HTTP body incomplete: {reason.getErrorMessage()}"))
        self._chunks = []


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body written at once (SOAP requests are small)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def http_request(agent: Any, reactor: IReactorTime, method: bytes, url: str, *,
                 headers: Optional[dict[bytes, list[bytes]]] = None, body: Optional[bytes] = None,
                 timeout: float = DEFAULT_TIMEOUT, max_body: int = MAX_BODY) -> Deferred:
    """
    One HTTP exchange, bounded in time (C{timeout} seconds for all of it) and
    body size; fires with C{(status code, body)}.  Network failures and the
    deadline fail with L{NoService} (L{GatewayTimeout}); an oversize body
    with L{BodyTooLarge}.
    """
    try:
        raw_url = url.encode("ascii")
    except UnicodeEncodeError:
        return fail(MalformedResponse(f"URL {url[:100]!r} is not ASCII"))
    producer = _BytesProducer(body) if body is not None else None
    try:
        d = agent.request(method, raw_url, Headers(headers or {}), producer)
    except ValueError as e:  # a URL the agent cannot parse
        return fail(MalformedResponse(f"URL {url[:100]!r} cannot be requested: {e}"))

    def read(response: Any) -> Deferred:
        reader = BoundedBodyReader(max_body, response.length)
        response.deliverBody(reader)
        return reader.finished.addCallback(lambda data: (response.code, data))

    def failed(failure: Failure) -> Failure:
        if failure.check(TimeoutError):
            raise GatewayTimeout(f"HTTP {method.decode()} {url[:100]} took longer than {timeout} s")
        if failure.check(PortMappingError, CancelledError):
            return failure
        raise NoService(f"HTTP {method.decode()} {url[:100]} failed: {failure.getErrorMessage()}")

    d.addCallback(read)
    d.addTimeout(timeout, reactor)
    return d.addErrback(failed)


# the client


def local_address_towards(host: str) -> str:
    """Our address on the route to C{host} (a routing lookup: no packet is sent)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, 1900))
        return s.getsockname()[0]


class IGDClient:
    """
    The SOAP actions of one gateway's WAN connection service.  Build one
    from a device description (L{from_location}) or by SSDP discovery
    (L{discover}).

    @param internal_client: our LAN address as written in mappings
        (default: our address on the route to the control URL's host).
    """

    log = Logger()

    def __init__(self, control_url: str, service_type: str, *, reactor: Any = None, agent: Any = None,
                 timeout: float = DEFAULT_TIMEOUT, max_body: int = MAX_BODY,
                 internal_client: Optional[str] = None, description: str = "crust") -> None:
        reactor = maybe_global_reactor(reactor)
        self._reactor = reactor
        self._agent = agent if agent is not None else Agent(reactor, connectTimeout=timeout)
        self.control_url = control_url
        self.service_type = service_type
        self.timeout = timeout
        self.max_body = max_body
        self.internal_client = internal_client
        self.description = description

    @property
    def is_v2(self) -> bool:
        return self.service_type.endswith("WANIPConnection:2")

    @classmethod
    def from_location(cls, location: str, *, reactor: Any = None, agent: Any = None,
                      timeout: float = DEFAULT_TIMEOUT, max_body: int = MAX_BODY, **kwargs: Any) -> Deferred:
        """Fetch the device description at C{location}; fires with an L{IGDClient}."""
        reactor = maybe_global_reactor(reactor)
        agent = agent if agent is not None else Agent(reactor, connectTimeout=timeout)

        def parse(result: tuple[int, bytes]) -> "IGDClient":
            code, body = result
            if code != 200:
                raise NoService(f"device description {location[:100]}: HTTP {code}")
            service = parse_device_description(body, location)
            return cls(service.control_url, service.service_type, reactor=reactor, agent=agent,
                       timeout=timeout, max_body=max_body, **kwargs)

        return http_request(agent, reactor, b"GET", location, timeout=timeout, max_body=max_body).addCallback(parse)

    @classmethod
    def discover(cls, reactor: Any = None, *, ssdp_address: tuple[str, int] = SSDP_ADDRESS,
                 search_timeout: float = DEFAULT_SEARCH_TIMEOUT, **kwargs: Any) -> Deferred:
        """
        Search by SSDP (at C{ssdp_address}) and fire with the client of the
        first gateway whose description has a WAN connection service, or fail
        with L{IGDNotFound}.
        """
        reactor = maybe_global_reactor(reactor)

        async def run() -> "IGDClient":
            found = await search(reactor, address=ssdp_address, timeout=search_timeout)
            errors = []
            for response in found:
                try:
                    return await cls.from_location(response.location, reactor=reactor, **kwargs)
                except CancelledError:
                    raise
                except PortMappingError as e:
                    cls.log.info("UPnP: gateway {location} is unusable: {error}", location=response.location, error=e)
                    errors.append(str(e))
                except Exception as e:  # one bad device must not end the search of the others
                    cls.log.failure("UPnP: gateway {location} failed unexpectedly; trying the others",
                                    location=response.location)
                    errors.append(f"{response.location[:100]}: {type(e).__name__}: {e}")
            if not found:
                raise IGDNotFound(f"no UPnP gateway answered an SSDP search of "
                                  f"{ssdp_address[0]}:{ssdp_address[1]} within {search_timeout} s")
            raise IGDNotFound("no usable UPnP gateway: " + "; ".join(errors))

        return Deferred.fromCoroutine(run())

    # actions

    def call(self, action: str, arguments: Iterable[tuple[str, object]] = ()) -> Deferred:
        """
        Invoke C{action}; fires with its output arguments, or fails with
        L{UPnPError} (a SOAP fault or HTTP error), L{NoService} or
        L{MalformedResponse}.
        """
        body = build_soap_request(self.service_type, action, arguments)
        headers = {
            b"Content-Type": [b'text/xml; charset="utf-8"'],
            b"SOAPAction": [f'"{self.service_type}#{action}"'.encode("ascii")],
        }

        def parse(result: tuple[int, bytes]) -> dict[str, str]:
            code, data = result
            if code == 200:
                return parse_soap_response(data, action)
            try:
                error, description = parse_soap_fault(data)
            except MalformedResponse:
                raise UPnPError(action, None, f"HTTP {code}") from None
            raise UPnPError(action, error, description)

        d = http_request(self._agent, self._reactor, b"POST", self.control_url, headers=headers, body=body,
                         timeout=self.timeout, max_body=self.max_body)
        return d.addCallback(parse)

    def get_external_ip(self) -> Deferred:
        """Fires with the external address (any valid IP, routable or not)."""

        def check(out: dict[str, str]) -> str:
            text = out.get("NewExternalIPAddress", "")
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                raise UPnPError("GetExternalIPAddress", None, f"no valid external address ({text[:50]!r})") from None
            if ip.is_unspecified:
                raise UPnPError("GetExternalIPAddress", None, "the gateway has no external address")
            return str(ip)

        return self.call("GetExternalIPAddress").addCallback(check)

    def _mapping_arguments(self, transport: str, external_port: int, internal_port: int,
                           lease: int) -> list[tuple[str, object]]:
        if transport not in ("tcp", "udp"):
            raise ValueError(f"unknown transport {transport!r}")
        if self.internal_client is None:
            self.internal_client = local_address_towards(urlsplit(self.control_url).hostname or "")
        return [
            ("NewRemoteHost", ""),
            ("NewExternalPort", external_port),
            ("NewProtocol", transport.upper()),
            ("NewInternalPort", internal_port),
            ("NewInternalClient", self.internal_client),
            ("NewEnabled", 1),
            ("NewPortMappingDescription", self.description),
            ("NewLeaseDuration", lease),
        ]

    def add_port_mapping(self, transport: str, external_port: int, internal_port: int, lease: int) -> Deferred:
        return self.call("AddPortMapping", self._mapping_arguments(transport, external_port, internal_port, lease))

    def add_any_port_mapping(self, transport: str, external_port: int, internal_port: int, lease: int) -> Deferred:
        """IGDv2: the gateway picks a free external port; fires with it."""

        def port(out: dict[str, str]) -> int:
            text = out.get("NewReservedPort", "")
            number = _ascii_number(text, 5)
            if number is None or not 0 < number < 65536:
                raise MalformedResponse(f"AddAnyPortMapping reserved port {text[:20]!r}")
            return number

        args = self._mapping_arguments(transport, external_port, internal_port, lease)
        return self.call("AddAnyPortMapping", args).addCallback(port)

    def delete_port_mapping(self, transport: str, external_port: int) -> Deferred:
        """Delete a mapping; a missing one (714) counts as deleted."""

        def missing(failure: Failure) -> Optional[Failure]:
            failure.trap(UPnPError)
            error = failure.value
            assert isinstance(error, UPnPError)  # trapped
            if error.code != NO_SUCH_ENTRY:
                return failure
            return None

        args = [("NewRemoteHost", ""), ("NewExternalPort", external_port), ("NewProtocol", transport.upper())]
        return self.call("DeletePortMapping", args).addCallbacks(lambda _: None, missing)

    def map_port(self, transport: str, internal_port: int, lease: int, external_port: Optional[int] = None,
                 conflict_tries: int = 3) -> Deferred:
        """
        Map C{internal_port}, asking for C{external_port} (default: the same
        port); fires with C{(external port, lease)}.  Handles the usual
        refusals: 725 (only permanent leases: retry with lease 0), 724 (same
        port values required), 718 (conflict: let an IGDv2 pick, or try up to
        C{conflict_tries} random ports).
        """

        async def run() -> tuple[int, int]:
            ext = external_port or internal_port
            want_lease = lease
            conflicts = 0
            use_any = False
            for _ in range(conflict_tries + 4):
                try:
                    if use_any:
                        got = await self.add_any_port_mapping(transport, ext, internal_port, want_lease)
                        return got, want_lease
                    await self.add_port_mapping(transport, ext, internal_port, want_lease)
                    return ext, want_lease
                except UPnPError as e:
                    if e.code == ONLY_PERMANENT_LEASES_SUPPORTED and want_lease != 0:
                        self.log.info("UPnP: {url} only supports permanent leases; retrying with lease 0",
                                      url=self.control_url)
                        want_lease = 0
                    elif e.code == SAME_PORT_VALUES_REQUIRED and ext != internal_port:
                        ext = internal_port
                    elif use_any and e.code in (INVALID_ACTION, OPTIONAL_ACTION_NOT_IMPLEMENTED):
                        use_any = False
                        ext = random.randint(1024, 65535)
                    elif e.code == CONFLICT_IN_MAPPING_ENTRY and conflicts < conflict_tries:
                        conflicts += 1
                        self.log.info("UPnP: external {transport} port {port} is taken; trying another",
                                      transport=transport, port=ext)
                        if self.is_v2 and not use_any:
                            use_any = True
                        else:
                            ext = random.randint(1024, 65535)
                    else:
                        raise
            raise UPnPError("AddPortMapping", None, "gave up after repeated refusals")

        return Deferred.fromCoroutine(run())
