"""Agents: small programs running real crust code inside lab namespaces.

The scripts here (``stun_discover.py``, ``classify.py``, ``portmap.py``,
``node.py``) run under ``host.run``/``host.spawn`` with the repository on
``PYTHONPATH`` and report JSON lines (``{"event": NAME, "t": seconds, ...}``);
this module is the test side: ``run_agent`` for one-shot agents and
``Agent`` for long-running ones driven by JSON commands on stdin.
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def agent_path(name):
    """The path of agent script *name* (``"node"`` or ``"node.py"``)."""
    return os.path.join(HERE, name if name.endswith(".py") else name + ".py")


def parse_events(text):
    """The JSON event lines of an agent's output (other lines are skipped)."""
    events = []
    for line in text.splitlines():
        if line.startswith('{"event": '):
            events.append(json.loads(line))
    return events


def run_agent(host, name, *args, timeout=30.0):
    """Run agent *name* on *host* to completion; return its events.

    Raises ``AssertionError`` with the agent's output when it exits non-zero.
    """
    result = host.run([sys.executable, agent_path(name)] + [str(a) for a in args],
                      timeout=timeout, check=False)
    if result.returncode != 0:
        raise AssertionError("agent {} on {} exited {}:\n{}\n{}".format(
            name, host.name, result.returncode, result.stdout[-3000:], result.stderr[-3000:]))
    return parse_events(result.stdout)


def event_regex(name):
    """A regex for the line of event *name* (or of any of a tuple of names)."""
    names = (name,) if isinstance(name, str) else tuple(name)
    return r'^\{"event": "(?:' + "|".join(re.escape(n) for n in names) + r')"[,}]'


class Agent:
    """A long-running agent on a lab host (a ``LabProcess`` with stdin)."""

    def __init__(self, host, name, *args, label=None):
        self.host = host
        self.label = label or name
        self.proc = host.spawn([sys.executable, agent_path(name)] + [str(a) for a in args],
                               name=self.label, stdin=True)

    def __repr__(self):
        return "<Agent {} on {}>".format(self.label, self.host.name)

    @property
    def mark(self):
        """The index of the next output line (to wait only for later events)."""
        return len(self.proc.lines)

    def event(self, name, timeout=10.0, start=0):
        """The first event *name* at or after line *start* (bounded wait)."""
        match = self.proc.wait_for_line(event_regex(name), timeout=timeout, start=start)
        return json.loads(match.string)

    def next_event(self, name, timeout=10.0, start=0):
        """Like ``event``, also returning the mark just after that event's line."""
        match = self.proc.wait_for_line(event_regex(name), timeout=timeout, start=start)
        lines = self.proc.lines
        index = next(i for i in range(start, len(lines)) if lines[i] is match.string)
        return json.loads(match.string), index + 1

    def events(self, name):
        """Every event *name* printed so far."""
        return [e for e in parse_events(self.proc.output) if e["event"] == name]

    def send(self, **command):
        """Send a JSON command; return the mark from before it (for ``event``)."""
        mark = self.mark
        self.proc.send(json.dumps(command) + "\n")
        return mark

    def command(self, expect, timeout=10.0, **command):
        """Send *command* and wait for the event *expect* it leads to."""
        return self.event(expect, timeout, self.send(**command))

    def stop(self):
        return self.proc.stop()
