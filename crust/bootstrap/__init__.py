"""Bootstrapping: candidates, the requester and the responder, the cache, LAN discovery."""
