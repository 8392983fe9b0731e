"""Port mapping: PCP, NAT-PMP and UPnP IGD."""
