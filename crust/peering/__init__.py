"""Peers: the peer table, admission, the dialer and its strategies, connect attempts."""
