"""
Processes for the soak and scale benchmarks: starting workers that speak
``BENCH {json}`` lines (as in C{_common}), sending them commands on their
stdin, and reading another process's memory, descriptors and CPU time from
C{/proc} (Linux).  No reactor here: the runners are plain Python.
"""

from __future__ import annotations

import os
import queue
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

from _common import parse_line

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


class Proc:
    """
    One worker process; its C{BENCH} lines arrive in C{events}, commands go
    to its stdin one line each.  A worker exits when its stdin closes.
    """

    def __init__(self, label: str, args: list[str], verbose: bool = False,
                 env: Optional[dict[str, str]] = None) -> None:
        self.label = label
        self.verbose = verbose
        self.stderr = tempfile.TemporaryFile(mode="w+b")
        self.events: "queue.Queue[Optional[dict[str, Any]]]" = queue.Queue()
        self.stopped = False
        if env is None:
            env = dict(os.environ)
            path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            env["PYTHONPATH"] = os.pathsep.join(path + [ROOT])  # this checkout's crust, unless one is given first
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            cwd=ROOT,
            text=True,
            start_new_session=True,  # a ^C on the terminal reaches only the runner
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name=f"read-{label}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = parse_line(line)
            if event is not None:
                self.events.put(event)
            elif self.verbose:
                sys.stderr.write(f"[{self.label}] {line}")
        self.events.put(None)  # end of output

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise BenchError(f"{self.label}: gone (cannot send {line!r}){self.tail()}") from None

    def wait(self, name: str, timeout: float, *, on_other: Any = None) -> dict[str, Any]:
        """The next event called C{name}; other events go to C{on_other} (or are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.label}: no {name!r} within {timeout:g} s{self.tail()}")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                self.proc.wait(5)
                raise BenchError(f"{self.label}: exited ({self.proc.returncode}) before {name!r}{self.tail()}")
            if event.get("event") == "error":
                raise BenchError(f"{self.label}: {event.get('reason')}\n{event.get('traceback') or ''}{self.tail()}")
            if event.get("event") == name:
                return event
            if on_other is not None:
                on_other(event)

    def ask(self, command: str, answer: str, timeout: float = 60.0, on_other: Any = None) -> dict[str, Any]:
        self.command(command)
        return self.wait(answer, timeout, on_other=on_other)

    def tail(self) -> str:
        try:
            self.stderr.seek(0)
            text = self.stderr.read().decode("utf-8", "replace").strip()
        except Exception:
            return ""
        return f"\n--- {self.label} stderr ---\n{text[-3000:]}" if text else ""

    def stop(self, grace: float = 15.0) -> None:
        """Close its stdin (it stops), SIGTERM if it lingers, then SIGKILL."""
        if self.stopped:
            return
        self.stopped = True
        proc = self.proc
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except Exception:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass
        self._reader.join(5)
        try:
            if proc.stdout is not None:
                proc.stdout.close()
        except Exception:
            pass
        self.stderr.close()


# -- /proc -------------------------------------------------------------------------


def status_kib(pid: int, field: str = "VmRSS") -> int:
    """A C{kB} field of C{/proc/<pid>/status} (C{VmRSS}, C{RssAnon}, C{VmHWM}), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")


def fd_count(pid: int) -> int:
    """Open file descriptors of process C{pid}."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process C{pid} so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the command: state is field 3, utime 14, stime 15 (1-based, as in proc(5))
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def resident_by_kind(pid: int) -> dict[str, int]:
    """
    Resident KiB of C{pid} by kind of mapping: C{heap} (C malloc's main
    arena: OpenSSL, large Python objects), C{anon} (other anonymous
    mappings: Python's object arenas, malloc's other arenas and large
    blocks), C{files} (the interpreter, libraries, mapped files).
    """
    out = {"heap": 0, "anon": 0, "files": 0}
    kind = "files"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                fields = line.split()
                name = fields[5] if len(fields) > 5 else ""
                kind = "heap" if name == "[heap]" else "anon" if name == "" or name.startswith("[anon") else "files"
            elif first == "Rss:":
                out[kind] += int(line.split()[1])
    return out


def snapshot(pid: int) -> dict[str, Any]:
    """Memory and descriptors of C{pid}, now."""
    kinds = resident_by_kind(pid)
    return {"rss_kib": status_kib(pid, "VmRSS"), "rss_anon_kib": status_kib(pid, "RssAnon"),
            "heap_kib": kinds["heap"], "anon_mmap_kib": kinds["anon"],
            "fds": fd_count(pid), "cpu_s": round(cpu_seconds(pid), 3)}


def raise_nofile(wanted: int) -> int:
    """Raise this process's descriptor limit (soft and, if root, hard) to C{wanted}; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def load_average() -> float:
    return os.getloadavg()[0]


_PEER_ID = re.compile(r"\b[a-z2-7]{52}\b")


def reason_key(text: str, limit: int = 200) -> str:
    """A failure's text with peer ids left out, so that the same failure of many peers counts as one."""
    return _PEER_ID.sub("<peer>", text)[:limit]
