"""Skipping lab tests where the lab cannot run, saying exactly why."""

import os
import shutil
import subprocess
import unittest

from twisted.trial import unittest as trial_unittest

#: Tools every lab needs; add the server tools a test uses.
BASE_TOOLS = ("ip", "nft", "ss")
SERVER_TOOLS = ("miniupnpd", "turnserver", "upnpc", "natpmpc")
PACKAGES = {"ip": "iproute2", "ss": "iproute2", "nft": "nftables", "miniupnpd": "miniupnpd",
            "turnserver": "coturn", "upnpc": "miniupnpc", "natpmpc": "natpmpc"}

_netns_ok = None


def _can_make_namespace():
    """Whether ``ip netns add`` works here (cached); an error text if not."""
    global _netns_ok
    if _netns_ok is None:
        name = "nl{}-0-probe".format(os.getpid())
        try:
            result = subprocess.run(["ip", "netns", "add", name], capture_output=True,
                                    text=True, timeout=10)
            if result.returncode == 0:
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
                _netns_ok = ""
            else:
                _netns_ok = result.stderr.strip() or "exit {}".format(result.returncode)
        except (OSError, subprocess.SubprocessError) as e:
            _netns_ok = str(e)
    return _netns_ok


def missing_requirements(tools=BASE_TOOLS, tun=False):
    """What stops the lab from running here: a list of readable reasons."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (running as uid {})".format(os.geteuid()))
    wanted = list(dict.fromkeys(list(BASE_TOOLS) + list(tools)))
    absent = [t for t in wanted if shutil.which(t) is None]
    if absent:
        packages = sorted({PACKAGES.get(t, t) for t in absent})
        missing.append("{} not on PATH (apt-get install {})".format(
            ", ".join(absent), " ".join(packages)))
    if tun and not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun (for the impairment forwarder)")
    if not missing:
        error = _can_make_namespace()
        if error:
            missing.append("network namespaces (ip netns add: {})".format(error))
    return missing


def skip_reason(tools=BASE_TOOLS, tun=False):
    missing = missing_requirements(tools, tun)
    return "NAT lab needs " + "; ".join(missing) if missing else None


def skip_unless_lab(tools=BASE_TOOLS, tun=False):
    """Decorator for test classes or methods: set trial's ``skip`` if needed."""
    def decorate(obj):
        reason = skip_reason(tools, tun)
        if reason:
            obj.skip = reason
        return obj
    return decorate


class LabTestCase(trial_unittest.TestCase):
    """Base for lab tests: skips with a reason, builds labs torn down always.

    Subclasses set ``lab_tools`` (and ``lab_tun``) to what they use.
    """

    lab_tools = BASE_TOOLS
    lab_tun = False

    def setUp(self):
        reason = skip_reason(self.lab_tools, self.lab_tun)
        if reason:
            raise unittest.SkipTest(reason)

    def make_lab(self, **options):
        from .topology import Lab
        lab = Lab(**options)
        self.addCleanup(lab.teardown)
        return lab
