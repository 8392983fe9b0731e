"""
What a secure connection needs of the transport it runs over.
"""

from __future__ import annotations

from typing import Optional

from OpenSSL import crypto
from twisted.internet.interfaces import IConsumer, ITransport


class ISecureTransport(ITransport, IConsumer):
    """
    A byte stream authenticated by TLS, as a L{crust.session.connection.PeerConnection}
    sees it: Twisted's TLS transport over TCP, or a QUIC lane
    (L{crust.transport.quic.driver.QuicLane}).

    Beyond L{ITransport}, it takes a push producer (L{IConsumer}), can be
    aborted, and shows the peer's certificate.
    """

    def abortConnection() -> None:
        """Close the connection at once, dropping what was not sent."""

    def getPeerCertificate() -> Optional[crypto.X509]:
        """The certificate the peer presented, or C{None} before the handshake."""
