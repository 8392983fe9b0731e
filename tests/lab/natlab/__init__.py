"""A real-NAT lab: Linux network namespaces, nftables NATs, real servers.

    from tests.lab.natlab import Lab

    with Lab() as lab:
        seed = lab.public_host("seed")
        home = lab.nat("home", kind="port-restricted", upnp=True)
        alice = home.host("alice")
        stun = lab.start_stun()
        proc = alice.spawn(["python3", "-m", "crust.node.cli", ...])
        proc.wait_for_line(r"listening on", timeout=10)

See ``doc/natlab.md``. Needs root, ``ip``, ``nft`` (and the server tools);
tests skip elsewhere through ``skip_unless_lab`` or ``LabTestCase``.
"""

from .nat_rules import KINDS
from .netns import CommandError
from .process import LabProcess, ProcessError
from .skip import LabTestCase, missing_requirements, skip_reason, skip_unless_lab
from .topology import Host, Lab, Nat, cleanup_stale

__all__ = [
    "KINDS", "CommandError", "Host", "Lab", "LabProcess", "LabTestCase", "Nat",
    "ProcessError", "cleanup_stale", "missing_requirements", "skip_reason",
    "skip_unless_lab",
]
