"""
L{StunResponder}: answers STUN Binding requests on the node's UDP socket, so
that every node is an address echo source for its peers.

It answers with the request's source address and nothing else (no SOFTWARE,
RESPONSE-ORIGIN or OTHER-ADDRESS); CHANGE-REQUEST and unknown
comprehension-required attributes get 420 (RFC 5780 asks this of a server
without an alternate address).  Answers are rate limited per source IP and
in total, and never larger than the request plus L{STUN_RESPONSE_OVERHEAD}
bytes (no amplification).  Responses, indications and malformed STUN are
never answered.  A request is only decoded once its source is within the
rate limit, so a flood of large requests costs a header check each.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger

from crust.nat import stun
from crust.address import Address
from crust._util.ratelimit import RateLimiter

# A Binding success for IPv6 adds XOR-MAPPED-ADDRESS (24 bytes) to the 20-byte
# header; a bare request is 20 bytes.  FINGERPRINT is only echoed when the
# request had one, and a 420 error grows by at most 2 bytes per unknown
# attribute the request carried (4 bytes or more each).
STUN_RESPONSE_OVERHEAD = 24

DEFAULT_RATE = ((10.0, 20.0), (200.0, 400.0))


class StunResponder:
    """
    The STUN Binding responder of one endpoint (anything with C{clock},
    C{send(data, addr) -> bool} and C{add_stun_handler(handler, name) ->
    unregister}, such as L{crust.transport.udp.UdpEndpoint}).  It registers
    itself in the endpoint's STUN chain: register the STUN client first, so
    that it keeps the datagrams that answer its own requests (and its own
    hairpinned request).

    @param rate: C{(per source IP, total)} limits on answers, each a
        C{(rate per second, burst)} pair.
    @param enabled: answer at all; may be changed at any time.

    @ivar counters: C{answered} (success responses sent), C{errors_sent}
        (420 responses sent), C{rate_limited} (requests not answered for the
        rate limit, which is applied before they are decoded), C{malformed}
        (Binding requests within the rate limit that failed to decode).
        What it leaves alone (not a Binding request, malformed, or while
        disabled) the endpoint counts as C{stun_dropped}.
    """

    log = Logger()

    def __init__(self, endpoint: Any, *, rate: tuple[tuple[float, float], tuple[float, float]] = DEFAULT_RATE,
                 enabled: bool = True) -> None:
        self.endpoint = endpoint
        self.enabled = enabled
        self._limiter = RateLimiter(endpoint.clock, rate[0], rate[1])
        self._logs = RateLimiter(endpoint.clock, per_key=(0.2, 3.0), total=(1.0, 10.0), max_keys=8)
        self.counters = dict.fromkeys(("answered", "errors_sent", "rate_limited", "malformed"), 0)
        self._unregister: Callable[[], None] = endpoint.add_stun_handler(self.datagram_received, "stun responder")

    def unregister(self) -> None:
        """Leave the endpoint's STUN chain (idempotent)."""
        self._unregister()

    def datagram_received(self, data: bytes, addr: Any) -> bool:
        """
        Answer a Binding request with its source address, within the rate
        limits.  Returns True when the request was ours to answer (answered,
        or not for the rate limit), False for anything else.

        What it costs comes in order: the header (a Binding request of at
        most L{stun.MAX_BINDING_SIZE} bytes), the rate limit of the source,
        and only then the attributes.
        """
        if not self.enabled:
            return False
        try:
            method, message_class, _ = stun.peek(data, stun.MAX_BINDING_SIZE)
        except stun.StunParseError as e:
            if self._logs.allow("header"):
                self.log.debug("dropping STUN from {addr}: {reason}", addr=_text(addr), reason=str(e))
            return False
        if message_class != stun.MessageClass.REQUEST or method != stun.BINDING or not isinstance(addr, tuple):
            return False
        if not self._limiter.allow(addr[0]):
            self.counters["rate_limited"] += 1
            if self._logs.allow("rate"):
                self.log.debug("not answering STUN from {addr}: rate limited", addr=_text(addr))
            return True
        source = Address.from_sockaddr("udp", addr)
        if source is None:
            return False
        try:
            request = stun.decode(data, max_size=stun.MAX_BINDING_SIZE)
        except stun.StunParseError as e:
            self.counters["malformed"] += 1
            if self._logs.allow("malformed"):
                self.log.debug("dropping malformed STUN from {addr}: {reason}", addr=str(source), reason=str(e))
            return False
        unknown = list(request.unknown_comprehension_required())
        change = request.get(stun.CHANGE_REQUEST)
        if change is not None and (change.change_ip or change.change_port):
            unknown.append(stun.CHANGE_REQUEST)  # no alternate address: RFC 5780 says 420
        if unknown:
            response = stun.make_binding_error(request, 420, "", unknown_attributes=tuple(unknown))
        else:
            response = stun.make_binding_success(request, source)
        out = stun.encode(response, fingerprint=stun.FINGERPRINT in request.types())
        if len(out) > len(data) + STUN_RESPONSE_OVERHEAD:  # cannot happen; never amplify if it does
            self.log.warn(
                "not answering STUN from {addr}: the answer would be {size} bytes for a {request}-byte request",
                addr=str(source), size=len(out), request=len(data),
            )
            return False
        if self.endpoint.send(out, addr):
            self.counters["errors_sent" if unknown else "answered"] += 1
        return True


def _text(addr: Any) -> str:
    try:
        return f"{addr[0]}:{addr[1]}"
    except (TypeError, IndexError, KeyError):
        return repr(addr)


__all__ = ["STUN_RESPONSE_OVERHEAD", "StunResponder"]
