"""
The role a peer bootstraps with: a C{NODE} (a full member of the network,
subject to the external reachability test) or a C{CLIENT}.
"""

from __future__ import annotations

from enum import Enum


class Role(Enum):
    """C{Role.NODE} or C{Role.CLIENT}; the text forms are C{"node"}/C{"client"}."""

    NODE = "node"
    CLIENT = "client"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def from_text(cls, text: str) -> "Role":
        """
        Parse C{"node"} or C{"client"} (case-insensitive).

        @raise ValueError: naming the bad text.
        """
        if isinstance(text, str):
            try:
                return cls(text.strip().lower())
            except ValueError:
                pass
        raise ValueError(f"unknown role {text!r} (expected 'node' or 'client')")
