"""
The one place where library code falls back to the global reactor.

Constructors take a C{reactor} (or C{clock}) argument defaulting to
C{None}; they resolve it once, with L{maybe_global_reactor}, and keep the
result.  Tests pass a C{Clock} or a C{MemoryReactorClock} instead.
"""

from __future__ import annotations

from typing import Optional, TypeVar, cast

_R = TypeVar("_R")


def maybe_global_reactor(reactor: Optional[_R]) -> _R:
    """
    C{reactor} if it is not C{None}, otherwise the global
    C{twisted.internet.reactor}, imported only then (so that importing a
    crust module never installs a reactor).  The global reactor provides
    every reactor interface, so it stands for whichever one C{reactor} is
    declared as.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return cast(_R, global_reactor)
    return reactor
