"""
L{install}: a node's byte streams wired into its peer table: the stream
frames claimed in its control-frame table, and told of every connection's
promotion and end.
"""

from __future__ import annotations

from typing import Any, Optional

from crust.identity import PeerId
from crust.peering.table import PeerTable
from crust.streams.manager import StreamOptions, Streams


def install(*, local_id: PeerId, clock: Any, table: PeerTable, options: Optional[StreamOptions] = None) -> Streams:
    """Wire byte streams into a node (see the module docstring) and return them."""
    return Streams(table, local_id, clock, options)
