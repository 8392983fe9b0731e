"""
atheris target: rendezvous frames and the sealed envelopes they carry
(crust.punch.messages); the first byte picks a frame type, or an envelope.
"""

from _target import instrumented, main, selected

with instrumented():
    from crust.errors import ProtocolViolation
    from crust.identity import Identity
    from crust.punch import messages
    from crust.punch.messages import EnvelopeError, ReplayGuard, RendezvousFrame, open_envelope
    from crust.wire import network_hash

US = Identity.from_seed(b"b" * 32)  # the corpus's envelopes are sealed to it, by SENDER
SENDER = Identity.from_seed(b"a" * 32).peer_id
NET = network_hash(None)
NOW = 1_700_000_000.0
CHOICES = tuple(RendezvousFrame) + ("envelope",)


def test_one(data: bytes) -> None:
    which, payload = selected(data, CHOICES)
    if which == "envelope":
        try:
            open_envelope(US, SENDER, NET, payload, NOW, ReplayGuard())
        except EnvelopeError:
            pass
        return
    try:
        messages.decode_frame(int(which), payload)
    except ProtocolViolation:
        pass


if __name__ == "__main__":
    main(test_one)
