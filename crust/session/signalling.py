"""
Control frames by table: L{ControlFrames} maps a frame type to the handler
of the subsystem that claimed it.

A connection handles its own frames (HELLO, CHOOSE, GRANT, REJECT, CLOSE,
HEARTBEAT: L{crust.wire.FrameType}); every other control frame goes to its
owner, which looks the type up here.  A subsystem (the rendezvous of hole
punching, the relay) claims its frame types once, when the service wires
it::

    frames.register(RENDEZVOUS_FRAME, rendezvous.frame_received)

A type can be claimed once; the connection's own types cannot be claimed.
Frames of a type nobody claimed are a protocol violation: the connection
that carried them is closed with that reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from crust.wire import FrameType

if TYPE_CHECKING:
    from crust.session.connection import PeerConnection

#: C{handler(conn, payload)}: a frame of a claimed type arrived on C{conn}.
ControlHandler = Callable[["PeerConnection", bytes], None]

#: Frame types a connection handles itself.
BUILTIN_TYPES = frozenset(int(t) for t in FrameType)

FIRST_TYPE, LAST_TYPE = 1, 255


class ControlFrames:
    """The frame type -> handler table of one node."""

    def __init__(self) -> None:
        self._handlers: dict[int, ControlHandler] = {}

    def register(self, ftype: int, handler: ControlHandler) -> Callable[[], None]:
        """
        Send control frames of type C{ftype} to C{handler}; returns a
        function that removes the claim.

        @raise ValueError: the type is out of range, built in, or claimed.
        """
        if not isinstance(ftype, int) or not FIRST_TYPE <= ftype <= LAST_TYPE:
            raise ValueError(f"control frame types are {FIRST_TYPE}..{LAST_TYPE}, not {ftype!r}")
        if ftype in BUILTIN_TYPES:
            raise ValueError(f"control frame type {ftype} belongs to the connection itself")
        if ftype in self._handlers:
            raise ValueError(f"control frame type {ftype} is already claimed by {self._handlers[ftype]!r}")
        self._handlers[ftype] = handler

        def unregister() -> None:
            if self._handlers.get(ftype) is handler:
                del self._handlers[ftype]

        return unregister

    def handler(self, ftype: int) -> "ControlHandler | None":
        """The handler of C{ftype}, or None if nobody claimed it."""
        return self._handlers.get(ftype)

    def dispatch(self, conn: "PeerConnection", ftype: int, payload: bytes) -> bool:
        """Hand a frame to its handler; False if nobody claimed its type."""
        handler = self._handlers.get(ftype)
        if handler is None:
            return False
        handler(conn, payload)
        return True

    def __contains__(self, ftype: object) -> bool:
        return ftype in self._handlers
