"""
The zope interfaces of crust's public API.

L{ICrustObserver} receives a L{crust.service.Service}'s unsolicited events.  Subclass
L{crust.observer.CrustObserver} to implement only the events you care about.
"""

from zope.interface import Interface


class ICrustObserver(Interface):
    """Receives the events of a L{crust.service.Service}.  Methods must not block."""

    def listener_started(address):
        """A listener is accepting on C{address} (L{crust.address.Address})."""

    def listener_failed(transport, reason):
        """Listening on C{transport} (C{"tcp"}/C{"udp"}) failed: C{reason} (str)."""

    def connect_success(peer_id):
        """A connection to C{peer_id} is active (ours or theirs to us)."""

    def connect_failure(peer_id, reason):
        """Our L{connect<crust.service.Service.connect>} to C{peer_id} failed; C{reason} is an exception."""

    def lost_peer(peer_id, reason):
        """The active connection to C{peer_id} ended; C{reason} is text."""

    def new_message(peer_id, data):
        """A message (bytes) arrived from C{peer_id}, in order."""

    def new_signed_message(peer_id, data, proof):
        """
        A signed message arrived from C{peer_id}, in order with the others,
        its signature checked: C{proof} is a L{crust.signed.SignedMessage}
        (export it with C{proof.to_json()}; anyone can check it with
        L{crust.signed.verify_signed}).  Optional: an observer without it gets the
        message through L{new_message}; L{crust.observer.CrustObserver}'s
        default does the same.  Each message reaches an observer once.
        """

    def message_dropped(peer_id, priority, count, size, reason):
        """C{count} queued messages (C{size} bytes) of C{priority} to C{peer_id} were dropped."""

    def message_too_large(peer_id, size, limit):
        """A message to C{peer_id} of C{size} bytes was refused (limit C{limit})."""

    def bootstrap_connect(peer_id, address):
        """We bootstrapped to C{peer_id} at C{address}."""

    def bootstrap_accept(peer_id, role):
        """C{peer_id} bootstrapped off us with C{role} (L{crust.roles.Role})."""

    def bootstrap_failed(reason):
        """A bootstrap attempt failed: C{reason} (exception)."""

    def path_changed(peer_id, old, new):
        """
        The connection to C{peer_id} moved to another path (a relayed one to
        a direct one, or back); C{old} and C{new} describe them (dicts: kind,
        strategy, transport, address, via).  It stays one connection: no
        message was lost on the way.
        """

    def relay_circuit_opened(peer_id, via):
        """A relayed circuit to or from C{peer_id} through the relay C{via} opened (its secure handshake follows)."""

    def relay_circuit_closed(peer_id, via, reason):
        """The relayed circuit to or from C{peer_id} through C{via} ended: C{reason}, a code (doc/relay.md)."""
