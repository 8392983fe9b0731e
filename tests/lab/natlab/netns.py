"""Thin, bounded wrappers around ``ip``, ``nft`` and ``sysctl`` in a namespace.

Every command here runs inside a named network namespace (``ip -n NS`` or
``ip netns exec NS``); nothing touches the root namespace except creating and
deleting the namespaces themselves.
"""

import os
import re
import signal
import subprocess

#: Default bound on any single helper command, in seconds.
COMMAND_TIMEOUT = 15


class CommandError(RuntimeError):
    """A lab command failed; carries the command line and its output."""

    def __init__(self, argv, returncode, output):
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        super().__init__(
            "command {!r} failed with {}: {}".format(
                " ".join(self.argv), returncode, output.strip()[-2000:]))


def run(argv, timeout=COMMAND_TIMEOUT, check=True, input=None, env=None):
    """Run *argv* with a bounded wait; return a ``CompletedProcess`` (text).

    stdout and stderr are captured separately. On timeout the whole process
    group is killed and ``subprocess.TimeoutExpired`` is raised.
    """
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(argv, timeout, out, err)
    result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, (err or "") + (out or ""))
    return result


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def exec_prefix(ns):
    """The argv prefix that runs a program inside namespace *ns*."""
    return ["ip", "netns", "exec", ns]


def ns_add(ns):
    run(["ip", "netns", "add", ns])
    ip(ns, "link", "set", "lo", "up")


def ns_delete(ns):
    run(["ip", "netns", "del", ns], check=False)


def ns_list():
    """Names of all network namespaces known to ``ip netns``."""
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ns_pids(ns):
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def ip(ns, *args, check=True):
    """``ip -n NS ARGS...``"""
    return run(["ip", "-n", ns] + [str(a) for a in args], check=check)


def ip_batch(ns, lines):
    """Run many ``ip`` commands in *ns* through one ``ip -batch`` process."""
    text = "".join(line.strip() + "\n" for line in lines if line.strip())
    if text:
        run(["ip", "-n", ns, "-batch", "-"], input=text)


def nft(ns, ruleset):
    """Load an nftables *ruleset* (text) into namespace *ns*."""
    run(exec_prefix(ns) + ["nft", "-f", "-"], input=ruleset)


def sysctl(ns, settings):
    """Set sysctls inside *ns* only; *settings* maps key to value.

    Keys that do not exist in this kernel (e.g. bridge-nf without
    br_netfilter) are skipped.
    """
    args = []
    for key, value in settings.items():
        path = "/proc/sys/" + key.replace(".", "/")
        # bridge-nf-call-* keys contain dashes, never dots, so this is safe.
        if os.path.exists(path):
            args.append("{}={}".format(key, value))
    if args:
        run(exec_prefix(ns) + ["sysctl", "-q", "-w"] + args)


_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_name(name):
    """Reject names that would be unsafe in namespace or file names."""
    if not _NAME.match(name):
        raise ValueError("bad lab node name {!r}: use letters, digits, -_.".format(name))
    return name
