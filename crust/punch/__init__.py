"""Hole punching: candidates, checks, the rendezvous and the punchers."""
