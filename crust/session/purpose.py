"""
What a connection is for: a L{Purpose}, handed to the connection when it is
made, to which the peer table reports the connection's outcomes.

A dialled connection serves a connect attempt
(L{crust.peering.attempt.ConnectAttempt}), a reachability probe (L{crust.peering.dialer.Probe}) or a
bootstrap request (L{crust.bootstrap.bootstrapper.BootstrapRequest}); an accepted one
serves no one in particular (L{ACCEPTED}).  Each outcome is reported once:

  - C{promoted}: the connection became the peer's one active connection;
  - C{probed}: a probe's HELLOs were exchanged (the connection then closes);
  - C{refused}: a handshake check failed (C{lost} follows);
  - C{lost}: the connection ended, for whatever reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from crust.identity import PeerId
from crust.wire import Hello

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection


class Purpose:
    """
    The base purpose: every outcome is a no-op.

    @ivar role: the role we claim in our HELLO on this connection (C{"node"}
        or C{"client"}); None means the node's own role.
    """

    role: Optional[str] = None

    def attached(self, conn: "PeerConnection") -> None:
        """C{conn} was made for this purpose (its transport is connected)."""

    def promoted(self, conn: "PeerConnection", peer_id: PeerId) -> None:
        """C{conn} is now the active connection to C{peer_id}."""

    def probed(self, conn: "PeerConnection", peer_id: PeerId, hello: Hello) -> None:
        """A probe's HELLOs were exchanged on C{conn}; it closes next."""

    def refused(self, conn: "PeerConnection", reason: str, detail: str) -> None:
        """A handshake check on C{conn} failed; C{reason} is a code or text."""

    def lost(self, conn: "PeerConnection", reason: str) -> None:
        """C{conn} ended."""


#: The purpose of connections peers opened to us.
ACCEPTED = Purpose()
