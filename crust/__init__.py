"""
crust: reliable, encrypted peer-to-peer connections with NAT traversal, on Twisted.

The public API: L{Service}, L{Config}, L{Identity}, L{PeerId}, the observer
interface L{ICrustObserver} (with the no-op base L{CrustObserver}), connection
info, signed messages' proofs (L{SignedMessage}, L{verify_signed}), and the
errors in L{crust.errors}.
"""

from crust._version import __version__

# Imported on first use (PEP 562), so that `import crust.node.cli` stays light.
_LAZY = {
    "Address": "crust.address",
    "Config": "crust.config",
    "CrustObserver": "crust.observer",
    "ICrustObserver": "crust.interfaces",
    "Identity": "crust.identity",
    "PeerId": "crust.identity",
    "PrivConnectionInfo": "crust.connection_info",
    "ProbeResult": "crust.peering.dialer",
    "PubConnectionInfo": "crust.connection_info",
    "Role": "crust.roles",
    "Service": "crust.service",
    "SignedMessage": "crust.signed",
    "verify_signed": "crust.signed",
}

__all__ = ["__version__", "Address", "Config", "CrustObserver", "ICrustObserver", "Identity", "PeerId",
           "PrivConnectionInfo", "ProbeResult", "PubConnectionInfo", "Role", "Service", "SignedMessage",
           "verify_signed"]  # _LAZY's names, spelled out


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crust' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
