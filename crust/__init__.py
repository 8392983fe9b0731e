"""
crust: reliable, encrypted peer-to-peer connections with NAT traversal, on Twisted.

The public API: L{Service}, L{Config}, L{Identity}, L{PeerId}, the observer
interface L{ICrustObserver} (with the no-op base L{CrustObserver}), connection
info, and the errors in L{crust.errors}.
"""

from crust._version import __version__
from crust.address import Address
from crust.config import Config
from crust.connection_info import PrivConnectionInfo, PubConnectionInfo
from crust.identity import Identity, PeerId
from crust.interfaces import ICrustObserver
from crust.observer import CrustObserver
from crust.service import ProbeResult, Service

__all__ = [
    "__version__",
    "Address",
    "Config",
    "CrustObserver",
    "ICrustObserver",
    "Identity",
    "PeerId",
    "PrivConnectionInfo",
    "ProbeResult",
    "PubConnectionInfo",
    "Service",
]
