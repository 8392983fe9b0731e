"""Transports: TLS over TCP, the shared UDP socket, QUIC."""
