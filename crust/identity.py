"""
Node identity: an Ed25519 key pair, and the L{PeerId} naming its public key.

A L{PeerId} has one canonical text form: the 32 public-key bytes in RFC 4648
base32, lower case, without padding (52 characters, safe to double-click and
paste).  The secret key lives in the node's data directory in a one-line file
of mode 0600; a file that is corrupt or not ours is an error, never replaced.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from crust.errors import IdentityFileError

PEER_ID_BYTES = 32
_KEY_FILE_TAG = "crust-ed25519-seed-v1"


class PeerId(bytes):
    """
    The public identity of a node: its Ed25519 public key (the 32 raw bytes).

    A C{bytes} subclass, so hashing and comparison run at C speed on the hot
    path (every send looks its peer up).  Peer ids order by their raw bytes;
    that order decides which side of a pair chooses the surviving connection.
    """

    __slots__ = ()

    def __new__(cls, raw: bytes) -> "PeerId":
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != PEER_ID_BYTES:
            raise ValueError("a peer id is exactly 32 bytes")
        return super().__new__(cls, raw)

    @classmethod
    def from_text(cls, text: object) -> "PeerId":
        """
        Parse the canonical text form (case-insensitive).

        @raise ValueError: if C{text} is not a valid peer id.
        """
        if not isinstance(text, str):
            raise ValueError("a peer id is text")
        cleaned = text.strip()
        if len(cleaned) != 52:
            raise ValueError(f"a peer id is 52 base32 characters, not {len(cleaned)}: {text!r}")
        try:
            raw = base64.b32decode(cleaned.upper() + "====")
        except (binascii.Error, ValueError):
            raise ValueError(f"not a peer id (bad base32): {text!r}") from None
        return cls(raw)

    @property
    def raw(self) -> bytes:
        """The 32 bytes of the Ed25519 public key."""
        return bytes(self)

    def verify_key(self) -> VerifyKey:
        return VerifyKey(bytes(self))

    def __str__(self) -> str:
        return _peer_id_text(bytes(self))

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def short(self) -> str:
        """An abbreviation for logs and tables (not an identifier)."""
        return str(self)[:10]

    def __repr__(self) -> str:
        return f"PeerId({str(self)!r})"


@lru_cache(maxsize=4096)
def _peer_id_text(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair: the secret side of a L{PeerId}."""

    signing_key: SigningKey

    @classmethod
    def generate(cls) -> "Identity":
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "Identity":
        return cls(SigningKey(seed))

    @property
    def seed(self) -> bytes:
        return bytes(self.signing_key)

    @property
    def peer_id(self) -> PeerId:
        return PeerId(bytes(self.signing_key.verify_key))

    # -- key file ---------------------------------------------------------

    def to_file_text(self) -> str:
        seed = base64.urlsafe_b64encode(self.seed).decode("ascii")
        return f"{_KEY_FILE_TAG} {seed}\n"

    @classmethod
    def from_file_text(cls, text: str, path: str = "<key>") -> "Identity":
        parts = text.strip().split()
        if len(parts) != 2 or parts[0] != _KEY_FILE_TAG:
            raise IdentityFileError(
                f"{path} is not a crust identity key file "
                f"(expected a line starting with {_KEY_FILE_TAG!r})"
            )
        try:
            seed = base64.urlsafe_b64decode(parts[1].encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise IdentityFileError(f"{path}: the key is not valid base64") from None
        if len(seed) != 32:
            raise IdentityFileError(f"{path}: the key is {len(seed)} bytes, expected 32")
        return cls.from_seed(seed)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> "Identity":
        """
        Load the identity kept at C{path}, creating it (mode 0600) if absent.

        @raise IdentityFileError: the file exists but is unreadable, corrupt,
            not a crust key, or readable by other users.
        """
        p = Path(path)
        if p.exists():
            return cls.load(p)
        identity = cls.generate()
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, identity.to_file_text().encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return identity

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Identity":
        p = Path(path)
        try:
            st = p.stat()
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise IdentityFileError(
                    f"{p} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                    f"run: chmod 600 {p}"
                )
            raw = p.read_bytes()
        except OSError as e:
            raise IdentityFileError(f"cannot read identity key {p}: {e.strerror}") from None
        if len(raw) > 4096:
            raise IdentityFileError(f"{p} is not a crust identity key file (too large)")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise IdentityFileError(f"{p} is not a crust identity key file (not text)") from None
        return cls.from_file_text(text, str(p))
