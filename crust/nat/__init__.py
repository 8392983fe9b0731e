"""NAT awareness: STUN, the address echo, classification, netcheck, port mapping."""
