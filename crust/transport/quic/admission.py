"""
L{InboundAdmission}: which QUIC Initials may open a connection, before one
is made.  Pure logic: the time comes from an injected clock.

A connection costs a slot and, until its handshake ends, a handshake
timeout's worth of it; an Initial costs its sender one datagram from any
source address it likes.  So an Initial from an address not yet validated
opens a connection only while that is cheap to grant:

  - fewer than C{retry_threshold} inbound handshakes pending;
  - fewer than C{max_pending_per_source} of them from its IP;
  - while its IP, and all sources together, stay within a rate of
    failures (L{FAILURE_RATE}): Initials from addresses not yet validated
    that did not decrypt, and handshakes of such connections that failed or
    timed out.  An Initial that does not decrypt holds nothing, but still
    costs a connection's setup, some 0.4 ms; a peer whose handshakes
    complete is never held to this rate, however often it connects;

otherwise it gets a Retry (RFC 9000 section 8.1.2): a stateless token
bound to its address and connection id, which only a sender that receives
at that address can return.  An Initial with a valid token comes from a
validated address: it opens a connection while fewer than
C{max_pending_inbound} handshakes are pending in all and fewer than
C{max_pending_per_source} validated ones from its IP; otherwise it is
dropped.  Either way, inbound connections never hold more than
L{crust.transport.quic.driver.QuicOptions.max_inbound}: the rest of
C{max_connections} is the reserve of the node's own connects.  In use::

    decision = admission.decide(host, validated=..., inbound=...)
    if decision is ACCEPT: ...; admission.add(driver, host, validated)
    ...; admission.settle(driver)      # handshake done, failed or gone
"""

from __future__ import annotations

from typing import Any, Hashable, NamedTuple, Union

from crust._util.ratelimit import RateLimiter
from crust.transport.quic.driver import QuicOptions

#: C{(per IP, total)} token buckets (rate per second, burst) of failures of connections opened for
#: Initials from addresses not yet validated; beyond them, such Initials get a Retry.
FAILURE_RATE = ((5.0, 10.0), (50.0, 50.0))


class _Decision:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


#: Open a connection for this Initial.
ACCEPT = _Decision("accept")
#: Answer with a Retry packet (a token), open nothing.
RETRY = _Decision("retry")

class Refusal(NamedTuple):
    """Drop the Initial: C{full} (the inbound connections are all taken) or C{pending} (too many handshakes)."""

    kind: str
    reason: str


#: L{ACCEPT}, L{RETRY}, or a L{Refusal}.
Decision = Union[_Decision, Refusal]


class InboundAdmission:
    """
    The pending inbound handshakes of one dispatcher, by source, and the
    decision on each new Initial (see the module docstring).

    @param clock: anything with C{seconds()}.
    @param options: the dispatcher's L{QuicOptions}.
    @ivar counters: C{retry_threshold} (Retries because many handshakes are
        pending), C{retry_source} (because its IP has many pending),
        C{retry_rate} (because of the rate of failures from unvalidated sources).
    """

    def __init__(self, clock: Any, options: QuicOptions) -> None:
        self.options = options
        self._failures = RateLimiter(clock, *FAILURE_RATE, max_keys=4096)
        self._pending: dict[Hashable, tuple[str, bool]] = {}
        self._by_source: dict[tuple[str, bool], int] = {}  # (host, validated) -> pending handshakes
        self.counters = dict.fromkeys(("retry_threshold", "retry_source", "retry_rate"), 0)

    @property
    def pending(self) -> int:
        """Inbound handshakes pending."""
        return len(self._pending)

    def pending_from(self, host: str, validated: bool) -> int:
        return self._by_source.get((host, validated), 0)

    def decide(self, host: str, *, validated: bool, inbound: int) -> Decision:
        """
        What to do with an Initial from C{host} that would open a new
        connection, while C{inbound} connections peers opened are held.
        """
        options = self.options
        if inbound >= options.max_inbound:
            return Refusal("full", f"{inbound} incoming QUIC connections already (at most {options.max_inbound})")
        pending = len(self._pending)
        if validated:
            if pending >= options.max_pending_inbound:
                return Refusal("pending", f"{pending} incoming QUIC handshakes pending already "
                               f"(at most {options.max_pending_inbound})")
            if self._by_source.get((host, True), 0) >= options.max_pending_per_source:
                return Refusal("pending",
                               f"{options.max_pending_per_source} QUIC handshakes from {host} pending already")
            return ACCEPT
        counters = self.counters
        if pending >= options.retry_threshold:
            counters["retry_threshold"] += 1
            return RETRY
        if self._by_source.get((host, False), 0) >= options.max_pending_per_source:
            counters["retry_source"] += 1
            return RETRY
        if not self._failures.would_allow(host):
            counters["retry_rate"] += 1
            return RETRY
        return ACCEPT

    def failed(self, host: str) -> None:
        """An Initial from C{host}, not yet validated, opened nothing (it did not decrypt)."""
        self._failures.charge(host)

    def handshake_failed(self, key: Hashable) -> None:
        """C{key}'s handshake failed or timed out (and is settled); counts if its source was not validated."""
        source = self._pending.get(key)
        self.settle(key)
        if source is not None and not source[1]:
            self._failures.charge(source[0])

    def add(self, key: Hashable, host: str, validated: bool) -> None:
        """A connection C{key} was opened for an Initial from C{host}: its handshake is pending."""
        if key in self._pending:
            return
        self._pending[key] = (host, validated)
        source = (host, validated)
        self._by_source[source] = self._by_source.get(source, 0) + 1

    def settle(self, key: Hashable) -> None:
        """C{key}'s handshake is over (it completed, failed, or the connection is gone); idempotent."""
        source = self._pending.pop(key, None)
        if source is None:
            return
        left = self._by_source[source] - 1
        if left:
            self._by_source[source] = left
        else:
            del self._by_source[source]


__all__ = ["ACCEPT", "Decision", "InboundAdmission", "RETRY", "Refusal", "FAILURE_RATE"]
