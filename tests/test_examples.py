"""
The examples of doc/streams.md run, each side a process with its own crust
node on 127.0.0.1: a twisted.web site (the example's, and Twisted's own
C{twist web} with a C{crust:} listener) fetched by peer id, and an AMP call.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.util import Processes, make_node_dir, node_contact, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class ExampleTests(TestCase):
    timeout = 180

    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="crust-ex-")
        self.procs = Processes(self, self.base)

    @defer.inlineCallbacks
    def serve(self, *argv, ready):
        """Start a serving program on a new node; fires with (its node's contact, its output file)."""
        server_dir = make_node_dir(os.path.join(self.base, "server"))
        proc, log = self.procs.start(*argv, server_dir)
        yield wait_for(lambda: ready in self.procs.output(log) or proc.poll() is not None, timeout=60)
        self.assertIn(ready, self.procs.output(log))
        yield wait_for(lambda: os.path.exists(os.path.join(server_dir, "node.json")))
        return node_contact(server_dir), log

    @defer.inlineCallbacks
    def client(self, contact, *argv):
        """Run a client program on a node that has the server as a contact; fires with its output."""
        client_dir = make_node_dir(os.path.join(self.base, "client"), hard_coded_contacts=[contact])
        proc, log = self.procs.start(*argv, "--datadir", client_dir)
        yield wait_for(lambda: proc.poll() is not None, timeout=120)
        out = self.procs.output(log)
        self.assertEqual(proc.returncode, 0, out)
        return out

    @defer.inlineCallbacks
    def test_web_example(self):
        contact, log = yield self.serve(str(EXAMPLES / "web_over_crust.py"), "serve", "--datadir", ready="serving")
        peer = contact["peer_id"]
        self.assertIn(f"serving http://{peer}/ over crust (crust:{peer}:web)", self.procs.output(log))
        out = yield self.client(contact, str(EXAMPLES / "web_over_crust.py"), "fetch", peer, "/some/page")
        self.assertIn("200 OK", out)
        self.assertIn("you asked for '/some/page' over crust", out)

    @defer.inlineCallbacks
    def test_twist_web_with_a_crust_listener(self):
        site = Path(self.base, "site")
        site.mkdir()
        (site / "index.html").write_text("<p>served by twist web over crust</p>\n")
        server_dir = make_node_dir(os.path.join(self.base, "server"))
        proc, log = self.procs.start("-m", "twisted", "web", "--listen", f"crust:web:datadir={server_dir}",
                                     "--path", str(site))
        yield wait_for(lambda: os.path.exists(os.path.join(server_dir, "node.json")) or proc.poll() is not None,
                       timeout=60)
        self.assertIsNone(proc.poll(), self.procs.output(log))
        contact = node_contact(server_dir)
        out = yield self.client(contact, str(EXAMPLES / "web_over_crust.py"), "fetch", contact["peer_id"],
                                "/index.html")
        self.assertIn("200 OK", out)
        self.assertIn("served by twist web over crust", out)

    @defer.inlineCallbacks
    def test_amp_example(self):
        contact, _ = yield self.serve(str(EXAMPLES / "amp_over_crust.py"), "serve", "--datadir",
                                      ready="AMP calculator at crust:")
        peer = contact["peer_id"]
        out = yield self.client(contact, str(EXAMPLES / "amp_over_crust.py"), "add", peer, "2", "40")
        self.assertIn(f"2 + 40 = 42 (computed by {peer})", out)
