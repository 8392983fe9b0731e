"""Convenience observers: a no-op base class and a recorder for tests and tools."""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from crust.interfaces import ICrustObserver

EVENT_NAMES = (
    "listener_started",
    "listener_failed",
    "connect_success",
    "connect_failure",
    "lost_peer",
    "new_message",
    "message_dropped",
    "message_too_large",
    "bootstrap_connect",
    "bootstrap_accept",
    "bootstrap_failed",
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
    def message_dropped(self, peer_id: Any, priority: int, count: int, size: int, reason: str) -> None: ...
    def message_too_large(self, peer_id: Any, size: int, limit: int) -> None: ...
    def bootstrap_connect(self, peer_id: Any, address: Any) -> None: ...
    def bootstrap_accept(self, peer_id: Any, role: Any) -> None: ...
    def bootstrap_failed(self, reason: Any) -> None: ...


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
