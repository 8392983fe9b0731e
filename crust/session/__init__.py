"""One secure connection: framing, send queues, the handshake, control frames."""
