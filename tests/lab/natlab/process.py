"""Long-running processes inside lab namespaces, with bounded waits."""

import os
import re
import signal
import subprocess
import threading
import time


class ProcessError(RuntimeError):
    """A lab process did not do what was awaited (timeout or early exit)."""


class LabProcess:
    """A process started by the lab, its combined output read line by line.

    Output is kept in memory (``lines``) and copied to *log_path* when given.
    All waits take a timeout; ``stop()`` is idempotent and always reaps.
    """

    def __init__(self, argv, name, env=None, log_path=None, cwd=None, stdin=False):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.lines = []
        self._cond = threading.Condition()
        self._log = open(log_path, "a", buffering=1) if log_path else None
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env=env, cwd=cwd, text=True, bufsize=1, errors="replace",
            start_new_session=True)
        self.pid = self.proc.pid
        self._reader = threading.Thread(
            target=self._read, name="natlab-" + name, daemon=True)
        self._reader.start()

    def __repr__(self):
        return "<LabProcess {} pid={} rc={}>".format(self.name, self.pid, self.proc.poll())

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
            if self._log:
                try:
                    self._log.write(line + "\n")
                except ValueError:  # closed by stop() after its join timed out
                    pass
        self.proc.stdout.close()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self):
        """Everything printed so far, as one string."""
        with self._cond:
            return "\n".join(self.lines)

    @property
    def returncode(self):
        return self.proc.poll()

    def running(self):
        return self.proc.poll() is None

    def wait_for_line(self, regex, timeout=10.0, start=0):
        """Wait for an output line matching *regex*; return the match.

        Lines before index *start* are ignored. Raises ``ProcessError`` on
        timeout or if the process exits without printing such a line.
        """
        pattern = re.compile(regex)
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    match = pattern.search(self.lines[index])
                    index += 1
                    if match:
                        return match
                if not self._reader.is_alive():
                    raise ProcessError("{} exited ({}) before printing /{}/; output:\n{}".format(
                        self.name, self.proc.poll(), regex, self._tail()))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProcessError("{}: no line /{}/ within {}s; output:\n{}".format(
                        self.name, regex, timeout, self._tail()))
                self._cond.wait(remaining)

    def _tail(self, n=30):
        return "\n".join(self.lines[-n:])

    def send(self, text):
        """Write *text* to the process's stdin (started with ``stdin=True``)."""
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def wait(self, timeout=10.0):
        """Wait for exit; return the exit code. Raises ``ProcessError`` on timeout."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ProcessError("{} still running after {}s; output:\n{}".format(
                self.name, timeout, self._tail()))
        self._reader.join(timeout)
        return rc

    def signal(self, signum):
        """Send *signum* to the process group (only while it runs)."""
        if self.proc.poll() is None:
            self._killpg(signum)

    def _killpg(self, signum):
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout=3.0):
        """SIGTERM, then SIGKILL after *timeout*; reap; return the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout)
        elif self._pgroup_alive():
            # The leader is gone but children it left in its group are not
            # (the group id cannot be reused while they live).
            self._killpg(signal.SIGKILL)
        self._reader.join(timeout)
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self._log and not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def _pgroup_alive(self):
        try:
            os.killpg(self.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
