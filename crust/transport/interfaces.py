"""
What a secure connection needs of the transport it runs over.
"""

from __future__ import annotations

from typing import Optional

from OpenSSL import crypto
from twisted.internet.interfaces import IConsumer, ITransport
from zope.interface import Interface


class ISecureTransport(ITransport, IConsumer, Interface):  # (Interface named: the API docs see an interface)
    """
    A byte stream authenticated by TLS, as a L{crust.session.connection.PeerConnection}
    sees it: Twisted's TLS transport over TCP, or a QUIC lane
    (L{crust.transport.quic.driver.QuicLane}).

    Beyond C{ITransport}, it takes a push producer (C{IConsumer}), can be
    aborted, and shows the peer's certificate.
    """

    def abortConnection() -> None:
        """Close the connection at once, dropping what was not sent."""

    def getPeerCertificate() -> Optional[crypto.X509]:
        """The certificate the peer presented, or C{None} before the handshake."""
