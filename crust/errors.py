"""
Errors raised or reported by crust.

Every refusal carries a reason a person can act on; where a reason crosses
the wire it has a stable code (L{crust.wire.RejectReason}).
"""


class CrustError(Exception):
    """Base class of crust's errors."""


class ConfigError(CrustError):
    """A configuration value is invalid; the message names the field and value."""


class IdentityFileError(CrustError):
    """The identity key file is unreadable, corrupt, or not a crust key."""


class PeerNotConnected(CrustError):
    """There is no active connection to that peer."""


class MessageTooLarge(CrustError):
    """A message is over the configured maximum size; it was not queued."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class SendQueueFull(CrustError):
    """The peer's send queue is at its byte bound; the message was not queued."""


class InvalidPriority(CrustError):
    """A priority is not an integer in 0..255."""


class ConnectToSelf(CrustError):
    """Refused: the connection info names our own peer id."""


class ConnectFailed(CrustError):
    """No candidate address of the peer completed the secure handshake."""

    def __init__(self, peer_id, reasons: "list[str] | None" = None, summary: str = "") -> None:
        self.peer_id = peer_id
        self.reasons = list(reasons or [])
        text = summary or "could not connect"
        if self.reasons:
            text += ": " + "; ".join(self.reasons)
        super().__init__(text)


class HandshakeRefused(CrustError):
    """The peer failed a handshake check (key, network name, version)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ProtocolViolation(CrustError):
    """The peer sent bytes that break the wire protocol."""


class InvalidConnectionInfo(CrustError, ValueError):
    """Connection info text is malformed."""


class ServiceNotRunning(CrustError):
    """The service is not started (or is stopping)."""


class SignedMessageError(CrustError, ValueError):
    """A signed message's proof is malformed, or not the one expected (L{crust.signed.verify_signed})."""


class BadSignature(SignedMessageError):
    """A signed message's signature does not hold: it was changed, or someone else signed it."""


class SignedNotSupported(CrustError):
    """The peer did not say it takes signed messages (an older crust); nothing was sent."""


class StreamRefused(CrustError):
    """
    A peer refused to open a byte stream (L{crust.streams}): nobody listens
    for that service there, or it holds all the streams it may.

    @ivar peer_id: the peer.
    @ivar service: the service name asked for.
    @ivar reason: the peer's reason code (C{refused}, C{too-many-streams}, ...).
    @ivar detail: what exactly, for people.
    """

    def __init__(self, peer_id, service: str, reason: str, detail: str = "") -> None:
        self.peer_id = peer_id
        self.service = service
        self.reason = reason
        self.detail = detail
        super().__init__(f"{peer_id} refused a stream to service {service!r}: {detail or reason}")


class StreamOpenFailed(CrustError):
    """A byte stream could not be opened for a reason of our side (not connected, too many streams, a bad name)."""


class StreamServiceInUse(CrustError):
    """Something already listens for streams to that service name on this node."""
