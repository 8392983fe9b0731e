"""Relayed connections: circuits through a peer both ends are connected to, and the C{relay} dial strategy."""
