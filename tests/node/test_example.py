"""
Runs doc/examples/embed.py (a tiny chat embedding crust.Service): two
instances on 127.0.0.1 connect and exchange a line each way.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLE = REPO / "doc" / "examples" / "embed.py"


class Chatter:
    """One running instance of the example, read line by line with deadlines."""

    def __init__(self, case: SynchronousTestCase, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--listen-host", "127.0.0.1", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.lines: list[str] = []
        self._buffer = b""
        case.addCleanup(self.stop)

    def wait_for(self, fragment: str, timeout: float = 15) -> str:
        """The first unread line containing C{fragment}; fails the test after C{timeout}."""
        deadline = time.monotonic() + timeout
        while True:
            for i, line in enumerate(self.lines):
                if fragment in line:
                    del self.lines[: i + 1]
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {fragment!r} within {timeout} s; unread: {self.lines!r}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the example exited ({self.proc.wait()}) before {fragment!r}; "
                                     f"unread: {self.lines!r}")
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            self.lines += [c.decode("utf-8", "replace") for c in complete]

    def type(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def end_input(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(15)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class EmbedExampleTests(SynchronousTestCase):
    def test_two_chatters_exchange_lines(self) -> None:
        a = Chatter(self)
        info = a.wait_for("connection info: ").split("connection info: ", 1)[1].strip()
        self.assertIn('"tcp:127.0.0.1:', info)
        b = Chatter(self, info)
        b.wait_for("* talking to")
        a.wait_for("* connected to")

        b.type("hello from b")
        self.assertTrue(a.wait_for("hello from b").startswith("<"))
        a.type("hi from a")
        b.wait_for("hi from a")

        self.assertEqual(b.end_input(), 0)  # end of input ends the program
        a.wait_for("* lost")
        self.assertEqual(a.end_input(), 0)

    def test_bad_connection_info_is_reported(self) -> None:
        c = Chatter(self, "not connection info")
        c.wait_for("could not connect")
        self.assertEqual(c.proc.wait(15), 1)
