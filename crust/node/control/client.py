"""
A Twisted client of the control interface: L{connect_control} and
L{ControlClient}, whose failed requests fail with L{ControlError}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from crust._util.jsonread import JsonRefused, read_json_object
from crust.node.control.protocol import MAX_RESPONSE_CONTAINERS, MAX_RESPONSE_DEPTH, _encode
from crust.errors import CrustError


class ControlError(CrustError):
    """An error response, as seen by a client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ControlClient(Protocol):
    """
    The client side, for Twisted programs::

        client = await connect_control(reactor, "/path/control.sock")
        info = await client.request("info")
        client.on_event = print
        await client.request("watch", events=["new_message"])
    """

    max_line = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._next_id = 1
        self._pending: dict[Any, Deferred] = {}
        self.on_event: Callable[[dict[str, Any]], Any] = lambda event: None
        self.closed: Deferred = Deferred()
        self.errors: list[dict[str, Any]] = []  # error responses without an id we sent

    def request(self, cmd: str, **args: Any) -> Deferred:
        """
        Fires with the C{result}; fails with L{ControlError} (its C{code} and message).

        @raise ValueError: an argument is not JSON (C{NaN}, C{Infinity}).
        """
        rid = self._next_id
        transport = self.transport
        assert transport is not None, "not connected"
        line = _encode(dict(args, id=rid, cmd=cmd))
        self._next_id += 1
        d: Deferred = Deferred()
        self._pending[rid] = d
        transport.write(line)
        return d

    def send_raw(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None, "not connected"
        transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.max_line:
                    transport = self.transport
                    assert transport is not None  # it delivered the data
                    transport.loseConnection()
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            try:
                body = read_json_object(line, max_size=self.max_line, max_depth=MAX_RESPONSE_DEPTH,
                                        max_containers=MAX_RESPONSE_CONTAINERS)
            except JsonRefused:
                continue  # not a line of ours to read
            if "event" in body and "ok" not in body:
                self.on_event(body)
                continue
            rid = body.get("id")
            # an id we sent is a number: anything else (a list, say, which is no key) answers nothing of ours
            d = self._pending.pop(rid, None) if isinstance(rid, (int, float, str)) else None
            if d is None:
                self.errors.append(body)
            elif body.get("ok"):
                d.callback(body.get("result"))
            else:
                d.errback(ControlError(str(body.get("code")), str(body.get("error"))))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(ControlError("closed", "the control connection closed"))
        self.closed.callback(None)


def connect_control(reactor: Any, path: str) -> Deferred:
    """Connect to the control socket at C{path}; fires with a L{ControlClient}."""
    from twisted.internet.endpoints import UNIXClientEndpoint
    from twisted.internet.protocol import Factory as _Factory

    return UNIXClientEndpoint(reactor, path, timeout=10).connect(_Factory.forProtocol(ControlClient))
