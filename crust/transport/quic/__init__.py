"""crust over QUIC: the dispatcher, the per-connection driver, TLS and congestion control."""
