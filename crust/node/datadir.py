"""
The node's data directory: where it is, what it holds, and who owns it.

Resolution (the node and the C{crust} command agree on it):

  1. C{--data-dir} on the command line;
  2. C{$CRUST_DATA_DIR};
  3. C{$XDG_DATA_HOME/crust} (when C{XDG_DATA_HOME} is an absolute path);
  4. C{~/.local/share/crust}.

Layout::

    identity.key     the node's Ed25519 secret key (mode 0600; never shared)
    config.json      settings (created with the defaults; doc/config.md)
    control.sock     the local control socket (mode 0600), while the node runs
    node.lock        held (flock) by the running node: one node per directory
    node.json        state of the running node (pid, peer id, control socket)

The directory is created with mode 0700.  This module uses only the
standard library, so the C{crust} command stays quick to start.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from crust._util.jsonread import JsonRefused, read_json_object
from crust.errors import CrustError

try:  # POSIX; the node's lock needs it
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

APP_NAME = "crust"
ENV_DATA_DIR = "CRUST_DATA_DIR"

IDENTITY_FILE = "identity.key"
CONFIG_FILE = "config.json"
CONTROL_SOCKET = "control.sock"
LOCK_FILE = "node.lock"
STATE_FILE = "node.json"

DIR_MODE = 0o700
MAX_STATE_BYTES = 64 * 1024
# sun_path is 108 bytes on Linux (104 on the BSDs), including the final NUL
MAX_UNIX_PATH = 103

PathLike = Union[str, "os.PathLike[str]"]


#: How deep C{node.json} may nest (the top object is depth 1).
MAX_STATE_DEPTH = 8
#: How many arrays and objects C{node.json} may hold.
MAX_STATE_CONTAINERS = 1024


def read_state_bytes(raw: bytes) -> Optional[dict[str, Any]]:
    """The state in C{node.json}'s content C{raw}, or C{None} if it is not a JSON object within bounds."""
    try:
        return read_json_object(raw, max_size=MAX_STATE_BYTES, max_depth=MAX_STATE_DEPTH,
                                max_containers=MAX_STATE_CONTAINERS)
    except JsonRefused:
        return None


class DataDirError(CrustError):
    """The data directory cannot be used; the message says why and what to do."""


class NodeAlreadyRunning(DataDirError):
    """Another node holds this data directory."""


def default_data_dir(environ: Optional[Mapping[str, str]] = None) -> Path:
    """The data directory used when none is named on the command line."""
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_DATA_DIR)
    if explicit:
        return Path(os.path.abspath(os.path.expanduser(explicit)))
    xdg = env.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says relative values are ignored
        return Path(xdg) / APP_NAME
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "share" / APP_NAME


def resolve_data_dir(value: Optional[PathLike] = None, environ: Optional[Mapping[str, str]] = None) -> Path:
    """C{value} (C{~} expanded, made absolute) or the default data directory."""
    if value is None or str(value) == "":
        return default_data_dir(environ)
    return Path(os.path.abspath(os.path.expanduser(os.fspath(value))))


class DataDir:
    """The files of one node's data directory."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(os.path.abspath(os.fspath(path)))

    def __repr__(self) -> str:
        return f"DataDir({str(self.path)!r})"

    @property
    def identity_path(self) -> Path:
        return self.path / IDENTITY_FILE

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def control_path(self) -> Path:
        return self.path / CONTROL_SOCKET

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    # -- creation ------------------------------------------------------------

    def ensure(self) -> list[str]:
        """
        Create the directory (mode 0700) if it is missing.

        @return: warnings for a person (e.g. the directory is readable by
            other users).
        @raise DataDirError: it cannot be created or is not a directory.
        """
        warnings: list[str] = []
        p = self.path
        try:
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                try:
                    p.mkdir(mode=DIR_MODE)
                except FileExistsError:
                    pass
                else:
                    os.chmod(p, DIR_MODE)  # mkdir's mode is filtered by the umask only
            st = p.stat()
        except OSError as e:
            raise DataDirError(f"cannot create the data directory {p}: {e.strerror or e}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise DataDirError(f"the data directory {p} exists but is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise DataDirError(f"the data directory {p} is not writable by this user")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(
                f"the data directory {p} is accessible by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); consider: chmod 700 {p}"
            )
        return warnings

    # -- the lock --------------------------------------------------------------

    def lock(self) -> "DataDirLock":
        """
        Take the node lock of this directory.

        @raise NodeAlreadyRunning: another node holds it.
        """
        lock = DataDirLock(self.lock_path)
        lock.acquire()
        return lock

    # -- state file --------------------------------------------------------------

    def write_state(self, state: Mapping[str, Any]) -> None:
        """Replace C{node.json} atomically with C{state}."""
        text = json.dumps(dict(state), indent=2, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".node.json.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.state_path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def read_state(self) -> Optional[dict[str, Any]]:
        """The running node's C{node.json}, or C{None} (missing or unreadable)."""
        try:
            with open(self.state_path, "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except OSError:
            return None
        return read_state_bytes(raw)

    def remove_state(self) -> None:
        try:
            os.unlink(self.state_path)
        except OSError:
            pass


class DataDirLock:
    """
    An exclusive C{flock} on C{node.lock}: released by the kernel when the
    process ends, so a crashed node never leaves a stale lock.  The file
    holds the owner's pid, for messages.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as e:
            raise DataDirError(f"cannot open the lock file {self.path}: {e.strerror or e}") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                owner = _read_pid(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    who = f" (pid {owner})" if owner else ""
                    raise NodeAlreadyRunning(
                        f"another node is running with this data dir {self.path.parent}{who}; "
                        f"stop it, or give this one its own --data-dir"
                    ) from None
                raise DataDirError(f"cannot lock {self.path}: {e.strerror or e}") from None
        self._fd = fd
        self.update_pid()

    def update_pid(self) -> None:
        """Record the current pid (again: twistd forks after the lock is taken)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the last descriptor releases the flock


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def unix_path_problem(path: PathLike) -> Optional[str]:
    """Why C{path} cannot name a UNIX socket, or C{None}."""
    encoded = os.fsencode(os.fspath(path))
    if len(encoded) > MAX_UNIX_PATH:
        return (f"the UNIX socket path {os.fspath(path)} is {len(encoded)} bytes long, "
                f"over the system limit of {MAX_UNIX_PATH}; use a shorter --data-dir or "
                f"--control unix:/shorter/path")
    return None
