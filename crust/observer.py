"""
Observers of a L{crust.service.Service}: the fan-out that delivers its events
(L{Observers}), a no-op base class and a recorder for tests and tools.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger
from zope.interface import implementer

from crust.interfaces import ICrustObserver

EVENT_NAMES = (
    "listener_started",
    "listener_failed",
    "connect_success",
    "connect_failure",
    "lost_peer",
    "new_message",
    "new_signed_message",
    "message_dropped",
    "message_too_large",
    "bootstrap_connect",
    "bootstrap_accept",
    "bootstrap_failed",
    "path_changed",
    "relay_circuit_opened",
    "relay_circuit_closed",
)


@implementer(ICrustObserver)
class CrustObserver:
    """Implements every event as a no-op; override the ones you need."""

    def listener_started(self, address: Any) -> None: ...
    def listener_failed(self, transport: str, reason: str) -> None: ...
    def connect_success(self, peer_id: Any) -> None: ...
    def connect_failure(self, peer_id: Any, reason: Any) -> None: ...
    def lost_peer(self, peer_id: Any, reason: str) -> None: ...
    def new_message(self, peer_id: Any, data: bytes) -> None: ...
    def new_signed_message(self, peer_id: Any, data: bytes, proof: Any) -> None:
        """By default, a signed message is a message: override to get its proof."""
        self.new_message(peer_id, data)
    def message_dropped(self, peer_id: Any, priority: int, count: int, size: int, reason: str) -> None: ...
    def message_too_large(self, peer_id: Any, size: int, limit: int) -> None: ...
    def bootstrap_connect(self, peer_id: Any, address: Any) -> None: ...
    def bootstrap_accept(self, peer_id: Any, role: Any) -> None: ...
    def bootstrap_failed(self, reason: Any) -> None: ...
    def path_changed(self, peer_id: Any, old: Any, new: Any) -> None: ...
    def relay_circuit_opened(self, peer_id: Any, via: Any) -> None: ...
    def relay_circuit_closed(self, peer_id: Any, via: Any, reason: str) -> None: ...


@implementer(ICrustObserver)
class RecordingObserver(CrustObserver):
    """Records every event as C{(name, args)} in C{events}; handy in tests."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def __getattribute__(self, name: str) -> Any:
        if name in EVENT_NAMES:
            events = object.__getattribute__(self, "events")
            return lambda *args: events.append((name, args))
        return object.__getattribute__(self, name)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for (n, args) in self.events if n == name]


class Observers:
    """
    The observers of one service, and the fan-out of its events to them.

    An observer is any object with the L{ICrustObserver} methods; one that
    raises is logged and the others still hear the event.  A signed message
    reaches an observer once: through its C{new_signed_message}, with the
    proof, if it has one, else through its C{new_message}.
    """

    log = Logger()

    def __init__(self) -> None:
        self._observers: list[Any] = []
        self._message_handlers: list[Callable[[Any, bytes], object]] = []
        self._message_observers: list[Any] = []  # whose each handler is
        self._signed_handlers: list[Callable[[Any, bytes, Any], object]] = []  # theirs, for signed messages

    def add(self, observer: Any) -> None:
        """Register C{observer} (once); one whose C{new_message} is None is not told of messages."""
        if observer not in self._observers:
            self._observers.append(observer)
            handler = observer.new_message
            if handler is not None:
                self._message_handlers.append(handler)
                self._message_observers.append(observer)
                self._signed_handlers.append(_signed_handler(observer, handler))

    def remove(self, observer: Any) -> None:
        if observer in self._observers:
            self._observers.remove(observer)
        if observer in self._message_observers:
            i = self._message_observers.index(observer)
            del self._message_observers[i]
            del self._message_handlers[i]
            del self._signed_handlers[i]

    def emit(self, event: str, *args: Any) -> None:
        """Tell every observer of C{event} (one of L{EVENT_NAMES})."""
        assert event in EVENT_NAMES, event
        for observer in list(self._observers):
            try:
                getattr(observer, event)(*args)
            except Exception:
                self.log.failure("observer {observer!r} failed on {event}", observer=observer, event=event)

    def deliverer(self, peer_id: Any) -> Callable[[bytes], None]:
        """The function that hands C{peer_id}'s messages to every observer (the hot path)."""
        handlers = self._message_handlers  # the list object itself: later observers are seen
        log = self.log

        def deliver(payload: bytes) -> None:
            for handler in handlers:
                try:
                    handler(peer_id, payload)
                except Exception:
                    log.failure("observer failed on new_message from {peer}", peer=str(peer_id))

        return deliver

    def deliver_signed(self, peer_id: Any, payload: bytes, proof: Any) -> None:
        """Hand a verified signed message and its proof to every observer."""
        for handler in list(self._signed_handlers):
            try:
                handler(peer_id, payload, proof)
            except Exception:
                self.log.failure("observer failed on a signed message from {peer}", peer=str(peer_id))


def _signed_handler(observer: Any, new_message: Callable[[Any, bytes], object]) -> Callable[[Any, bytes, Any], object]:
    """The observer's C{new_signed_message}, or its C{new_message} without the proof."""
    method = getattr(observer, "new_signed_message", None)
    if method is not None:
        return method
    return lambda peer_id, data, proof: new_message(peer_id, data)
