"""
The per-connection handshake state machine.  Pure logic: it decides, a
L{HandshakeDelegate} acts (sends frames, closes, asks the peer table).

States::

    AWAIT_TLS --tls_complete--> AWAIT_HELLO --hello ok--> AWAIT_CHOICE --CHOOSE--> ACTIVE
                                            \\--hello ok, we choose, claim ok-----> ACTIVE
                                            \\--probe hello------------------------> PROBED
                                            \\--we ask to bootstrap--> AWAIT_GRANT --GRANT--> (election)
                                            \\--they ask to bootstrap--> ADMITTING --granted--> (election)
    any --reject/close/error--> CLOSED

"Election" is the AWAIT_CHOICE / claim step above.

Early claim: a connector that is the chooser, with intent C{connect}, whose
peer's certificate carries a compatible L{CertInfo} (same network, a shared
protocol version), claims the connection as soon as TLS completes: it sends
HELLO and CHOOSE together and is ACTIVE without waiting for the peer's HELLO,
which saves the round trip.  That HELLO still comes and is checked like any;
one that contradicts the certificate closes the connection.

Checks, in order, on the peer's HELLO: protocol version overlap, network name,
not ourselves, the key we expected (if we connected to a named peer).  Of the
two peers, the one with the larger L{PeerId} chooses which connection
survives: it claims the first candidate that completes and sends CHOOSE on it;
the other side promotes whichever candidate carries CHOOSE.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Optional, Protocol

from crust.identity import PeerId
from crust.wire import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    CloseReason,
    CertInfo,
    Hello,
    Intent,
    RejectReason,
    negotiate_version,
)


class HandshakeState(enum.Enum):
    AWAIT_TLS = "await-tls"
    AWAIT_HELLO = "await-hello"
    AWAIT_GRANT = "await-grant"
    ADMITTING = "admitting"
    AWAIT_CHOICE = "await-choice"
    ACTIVE = "active"
    PROBED = "probed"
    CLOSED = "closed"


class HandshakeDelegate(Protocol):
    def send_hello(self) -> None: ...
    def send_choose(self) -> None: ...
    def send_grant(self) -> None: ...
    def admit(self, peer_id: PeerId, hello: Hello) -> None:
        """The peer asks to bootstrap off us: decide, then call L{Handshake.admission_result}."""
    def reject(self, reason: RejectReason, detail: str) -> None: ...
    def close(self, reason: CloseReason, detail: str) -> None: ...
    def claim(self, peer_id: PeerId) -> bool:
        """We are the chooser: may this connection become the active one?"""
    def promote(self, peer_id: PeerId) -> None:
        """This connection is now the active connection to C{peer_id}."""
    def candidate(self, peer_id: PeerId, hello: Hello) -> None:
        """The HELLOs are exchanged and valid; wait for the chooser."""
    def probed(self, peer_id: PeerId, hello: Hello) -> None:
        """A probe completed (either side)."""
    def late_hello(self, peer_id: PeerId, hello: Hello) -> None:
        """After an early claim: the peer's HELLO arrived and is valid."""
    def refused(self, reason: str, detail: str) -> None:
        """The handshake failed; C{reason} is a L{RejectReason} value or text."""


class Handshake:
    """One connection's handshake; see the module docstring."""

    def __init__(
        self,
        delegate: HandshakeDelegate,
        local_id: PeerId,
        network: str,
        intent: Intent,
        expected_peer: Optional[PeerId] = None,
        versions: tuple[int, int] = (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
        *,
        initiator: bool = False,
    ) -> None:
        self._delegate = delegate
        self.initiator = initiator
        self.local_id = local_id
        self.network = network
        self.intent = intent
        self.expected_peer = expected_peer
        self.versions = versions
        self.state = HandshakeState.AWAIT_TLS
        self.peer_id: Optional[PeerId] = None
        self.peer_hello: Optional[Hello] = None
        self.peer_info: Optional[CertInfo] = None  # what the peer's certificate says
        self.early = False  # we claimed at TLS completion, before the peer's HELLO
        self.version: Optional[int] = None

    # -- inputs -----------------------------------------------------------

    def check_key(self, peer_id: Optional[PeerId]) -> Optional[str]:
        """During TLS: the reason to refuse C{peer_id}'s key, or None."""
        if peer_id is None:
            return "no valid crust identity"
        if self.expected_peer is not None and peer_id != self.expected_peer:
            return f"wrong peer key: expected {self.expected_peer}, got {peer_id}"
        return None

    def tls_complete(self, peer_id: PeerId, info: Optional[CertInfo] = None) -> None:
        if self.state is not HandshakeState.AWAIT_TLS:
            return
        self.peer_id = peer_id
        self.peer_info = info
        self.state = HandshakeState.AWAIT_HELLO
        self._delegate.send_hello()
        if self._may_claim_early(info):
            self.early = True
            self._elect()

    def _may_claim_early(self, info: Optional[CertInfo]) -> bool:
        if not (self.initiator and self.intent is Intent.CONNECT and self.is_chooser and info is not None):
            return False
        return self._check_node(info) is None

    def _check_node(self, said: "Hello | CertInfo") -> Optional[tuple[RejectReason, str]]:
        """Why what the peer says of its node (HELLO or certificate) is unacceptable, or None; sets L{version}."""
        version = negotiate_version(self.versions, (said.min_version, said.version))
        if version is None:
            return (
                RejectReason.VERSION_MISMATCH,
                f"peer speaks protocol versions {said.min_version}..{said.version}, "
                f"we speak {self.versions[0]}..{self.versions[1]}",
            )
        self.version = version
        if said.network != self.network:
            return RejectReason.NETWORK_MISMATCH, "the peer belongs to another network (network name differs)"
        if self.peer_id == self.local_id:
            return RejectReason.CONNECT_TO_SELF, "the peer is this node itself"
        if self.expected_peer is not None and self.peer_id != self.expected_peer:
            return RejectReason.WRONG_PEER, f"expected {self.expected_peer}, got {self.peer_id}"
        return None

    def _check_hello(self, hello: Hello) -> Optional[tuple[RejectReason, str]]:
        """Why the peer's HELLO is unacceptable, or None; sets L{version}."""
        problem = self._check_node(hello)
        if problem is not None:
            return problem
        if hello.intent is None:
            return RejectReason.UNSUPPORTED_INTENT, "the peer asked for an intent we do not know"
        return None

    def hello_received(self, hello: Hello) -> None:
        if self.early and self.state is HandshakeState.ACTIVE and self.peer_hello is None:
            self._late_hello(hello)
            return
        if self.state is not HandshakeState.AWAIT_HELLO:
            self._fail(RejectReason.MALFORMED, f"unexpected HELLO in state {self.state.value}")
            return
        assert self.peer_id is not None
        self.peer_hello = hello
        problem = self._check_hello(hello)
        if problem is not None:
            self._fail(*problem)
            return
        if hello.intent is Intent.PROBE or self.intent is Intent.PROBE:
            self.state = HandshakeState.PROBED
            self._delegate.probed(self.peer_id, hello)
            return
        if hello.intent is Intent.BOOTSTRAP and self.intent is Intent.BOOTSTRAP:
            self._fail(RejectReason.UNSUPPORTED_INTENT, "both sides asked to bootstrap on one connection")
            return
        if hello.intent is Intent.BOOTSTRAP:
            self.state = HandshakeState.ADMITTING
            self._delegate.admit(self.peer_id, hello)
            return
        if self.intent is Intent.BOOTSTRAP:
            self.state = HandshakeState.AWAIT_GRANT
            return
        self._elect()

    def _late_hello(self, hello: Hello) -> None:
        """The acceptor's HELLO, after we claimed early: it must agree with its certificate."""
        assert self.peer_id is not None
        early_version = self.version
        problem = self._check_hello(hello)
        if problem is None and (hello.intent is not Intent.CONNECT or self.version != early_version):
            problem = (RejectReason.MALFORMED, "the peer's HELLO contradicts its certificate")
        if problem is not None:
            self._fail(*problem)
            return
        self.peer_hello = hello
        self._delegate.late_hello(self.peer_id, hello)

    def admission_result(self, granted: bool, reason: Optional[RejectReason] = None, detail: str = "") -> None:
        """Our decision on the peer's bootstrap request."""
        if self.state is not HandshakeState.ADMITTING:
            return
        if granted:
            self._delegate.send_grant()
            self._elect()
        else:
            self._fail(reason or RejectReason.BOOTSTRAP_DENIED, detail)

    def grant_received(self) -> None:
        if self.state is not HandshakeState.AWAIT_GRANT:
            self._fail(RejectReason.MALFORMED, f"unexpected GRANT in state {self.state.value}")
            return
        self._elect()

    def _elect(self) -> None:
        assert self.peer_id is not None
        self.state = HandshakeState.AWAIT_CHOICE
        if self.is_chooser:
            if self._delegate.claim(self.peer_id):
                self.state = HandshakeState.ACTIVE
                self._delegate.send_choose()
                self._delegate.promote(self.peer_id)
            else:
                self.state = HandshakeState.CLOSED
                self._delegate.close(CloseReason.DUPLICATE, "another connection to this peer is active")
        else:
            assert self.peer_hello is not None
            self._delegate.candidate(self.peer_id, self.peer_hello)

    @property
    def is_bootstrap(self) -> bool:
        """Whether this connection was opened to bootstrap (from either side)."""
        return self.intent is Intent.BOOTSTRAP or (
            self.peer_hello is not None and self.peer_hello.intent is Intent.BOOTSTRAP
        )

    def choose_received(self) -> None:
        if self.state is not HandshakeState.AWAIT_CHOICE or self.is_chooser:
            self._fail(RejectReason.MALFORMED, f"unexpected CHOOSE in state {self.state.value}")
            return
        assert self.peer_id is not None
        self.state = HandshakeState.ACTIVE
        self._delegate.promote(self.peer_id)

    def choice_timed_out(self) -> None:
        if self.state is HandshakeState.AWAIT_CHOICE:
            self.state = HandshakeState.CLOSED
            self._delegate.close(CloseReason.TIMEOUT, "the peer did not choose this connection in time")

    def reject_received(self, reason: str, detail: str) -> None:
        """The peer refused us; report its reason."""
        if self.state in (HandshakeState.CLOSED, HandshakeState.ACTIVE):
            return
        self.state = HandshakeState.CLOSED
        self._delegate.refused(reason, f"refused by the peer: {detail}" if detail else "refused by the peer")

    def closed(self) -> None:
        self.state = HandshakeState.CLOSED

    def detach(self) -> None:
        """The connection is gone: outputs from now on go nowhere (and the handshake holds it no longer)."""
        self.state = HandshakeState.CLOSED
        self._delegate = _DETACHED

    # -- helpers ----------------------------------------------------------

    @property
    def peer_role(self) -> Optional[str]:
        """The role the peer claims: its HELLO's, else its certificate's."""
        said = self.peer_hello or self.peer_info
        return said.role if said is not None else None

    @property
    def is_chooser(self) -> bool:
        return self.peer_id is not None and self.local_id > self.peer_id

    def _fail(self, reason: RejectReason, detail: str) -> None:
        self.state = HandshakeState.CLOSED
        self._delegate.reject(reason, detail)
        self._delegate.refused(reason.value, detail)


class _Detached:
    """The delegate of a handshake whose connection is gone: every output is ignored, every claim refused."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _ignore


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


_DETACHED: Any = _Detached()
