"""Starting and stopping the impairment forwarder (``impair.py``) in the lab.

The forwarder owns TUN device ``imp0`` in the internet router namespace.
Policy routing there sends a forwarded packet into it when the packet comes
from an impaired link (``iif pN``) or goes to an address behind one
(``to ADDR``); packets coming back out of ``imp0`` are routed by the main
table (``iif imp0``, checked first), so each packet is impaired exactly once.
"""

import json
import os
import sys

from . import netns

IMPAIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "impair.py")
TUN = "imp0"
TABLE = 100
PREF_BYPASS = 100
PREF_IMPAIR = 110


class Impairment:
    """A running forwarder plus the routing rules that feed it."""

    def __init__(self, lab, link_names, params):
        self.lab = lab
        self.links = list(link_names)
        self.params = params
        self.stats = None
        self._rules = []
        ns = lab.internet.ns
        argv = [sys.executable, IMPAIR, "--tun", TUN]
        for key, value in params.items():
            argv += ["--" + key.replace("_", "-"), str(value)]
        self.proc = lab.spawn(lab.internet, argv, name="impair")
        try:
            self.proc.wait_for_line(r"^ready$", timeout=10)
            netns.ip_batch(ns, [
                "link set {} up txqueuelen 5000".format(TUN),
                "route add default dev {} table {}".format(TUN, TABLE),
            ])
            rules = ["pref {} iif {} lookup main".format(PREF_BYPASS, TUN)]
            for name in self.links:
                port, addresses = lab.internet.links[name]
                rules.append("pref {} iif {} lookup {}".format(PREF_IMPAIR, port, TABLE))
                rules += ["pref {} to {}/32 lookup {}".format(PREF_IMPAIR, a, TABLE)
                          for a in addresses]
            netns.ip_batch(ns, ["rule add " + r for r in rules])
            self._rules = rules
        except BaseException:
            self.stop()
            raise

    def describe(self):
        params = dict(self.params)
        if not params.get("reorder"):
            params.pop("reorder_gap", None)
        shown = ", ".join("{}={}".format(k, v) for k, v in params.items() if v)
        return "{} on links of {}".format(shown or "no-op forwarder", ", ".join(self.links))

    def stop(self):
        """Remove the rules, stop the forwarder; return its counters."""
        if self.stats is not None:
            return self.stats
        ns = self.lab.internet.ns
        for rule in self._rules:
            netns.ip(ns, "rule", "del", *rule.split(), check=False)
        self._rules = []
        netns.ip(ns, "route", "flush", "table", str(TABLE), check=False)
        self.proc.stop()
        self.stats = {}
        for line in reversed(self.proc.lines):
            if line.startswith("{"):
                try:
                    self.stats = json.loads(line)
                except ValueError:
                    pass
                break
        return self.stats
