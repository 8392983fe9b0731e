from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.session.handshake import Handshake, HandshakeState
from crust.identity import PeerId
from crust.errors import ProtocolViolation
from crust.wire import CertInfo, CloseReason, Hello, Intent, RejectReason, network_hash

from tests import examples
from tests.mutate import mutated

NET = network_hash("test")
LOW = PeerId(b"\x01" * 32)
HIGH = PeerId(b"\x02" * 32)
OTHER = PeerId(b"\x03" * 32)


class Recorder:
    def __init__(self, claim=True):
        self.calls = []
        self._claim = claim

    def __getattr__(self, name):
        if name == "claim":
            def claim(peer_id):
                self.calls.append(("claim", peer_id))
                return self._claim
            return claim
        return lambda *args: self.calls.append((name,) + args)

    def names(self):
        return [c[0] for c in self.calls]


def hello(**kw):
    kw.setdefault("network", NET)
    return Hello(**kw)


class HandshakeTests(SynchronousTestCase):
    def make(self, local=HIGH, expected=None, intent=Intent.CONNECT, claim=True):
        rec = Recorder(claim)
        return Handshake(rec, local, NET, intent, expected), rec

    def test_chooser_claims_and_chooses(self):
        hs, rec = self.make(local=HIGH)
        hs.tls_complete(LOW)
        self.assertEqual(hs.state, HandshakeState.AWAIT_HELLO)
        hs.hello_received(hello())
        self.assertEqual(rec.names(), ["send_hello", "claim", "send_choose", "promote"])
        self.assertEqual(hs.state, HandshakeState.ACTIVE)

    def test_chooser_with_active_connection_closes_duplicate(self):
        hs, rec = self.make(local=HIGH, claim=False)
        hs.tls_complete(LOW)
        hs.hello_received(hello())
        self.assertEqual(rec.calls[-1][0:2], ("close", CloseReason.DUPLICATE))
        self.assertEqual(hs.state, HandshakeState.CLOSED)

    def test_non_chooser_waits_for_choose(self):
        hs, rec = self.make(local=LOW)
        hs.tls_complete(HIGH)
        hs.hello_received(hello())
        self.assertEqual(hs.state, HandshakeState.AWAIT_CHOICE)
        self.assertEqual(rec.names(), ["send_hello", "candidate"])
        hs.choose_received()
        self.assertEqual(hs.state, HandshakeState.ACTIVE)
        self.assertEqual(rec.names()[-1], "promote")

    def test_non_chooser_timeout(self):
        hs, rec = self.make(local=LOW)
        hs.tls_complete(HIGH)
        hs.hello_received(hello())
        hs.choice_timed_out()
        self.assertEqual(rec.calls[-1][0:2], ("close", CloseReason.TIMEOUT))

    def test_choose_from_non_chooser_is_a_violation(self):
        hs, rec = self.make(local=HIGH)
        hs.tls_complete(LOW)
        hs.choose_received()
        self.assertIn(("reject", RejectReason.MALFORMED), [c[:2] for c in rec.calls])

    def assertRejected(self, rec, reason):
        self.assertIn(("reject", reason), [c[:2] for c in rec.calls])
        self.assertIn(("refused", reason.value), [c[:2] for c in rec.calls])

    def test_network_mismatch(self):
        hs, rec = self.make()
        hs.tls_complete(LOW)
        hs.hello_received(hello(network=network_hash("other")))
        self.assertRejected(rec, RejectReason.NETWORK_MISMATCH)
        self.assertEqual(hs.state, HandshakeState.CLOSED)

    def test_version_mismatch_names_both_ranges(self):
        hs, rec = self.make()
        hs.tls_complete(LOW)
        hs.hello_received(hello(version=7, min_version=5))
        self.assertRejected(rec, RejectReason.VERSION_MISMATCH)
        detail = [c for c in rec.calls if c[0] == "reject"][0][2]
        self.assertIn("5..7", detail)

    def test_newer_peer_with_overlap_is_fine(self):
        hs, rec = self.make()
        hs.tls_complete(LOW)
        hs.hello_received(hello(version=3, min_version=1))
        self.assertEqual(hs.version, 1)
        self.assertEqual(hs.state, HandshakeState.ACTIVE)

    def test_self(self):
        hs, rec = self.make(local=HIGH)
        hs.tls_complete(HIGH)
        hs.hello_received(hello())
        self.assertRejected(rec, RejectReason.CONNECT_TO_SELF)

    def test_expected_key(self):
        hs, _ = self.make(expected=LOW)
        self.assertIsNone(hs.check_key(LOW))
        self.assertIn("wrong peer key", hs.check_key(OTHER))
        self.assertIsNotNone(hs.check_key(None))

    def test_probe(self):
        hs, rec = self.make(intent=Intent.PROBE)
        hs.tls_complete(LOW)
        hs.hello_received(hello())
        self.assertEqual(hs.state, HandshakeState.PROBED)
        self.assertEqual(rec.names()[-1], "probed")

    def test_unknown_intent(self):
        hs, rec = self.make()
        hs.tls_complete(LOW)
        hs.hello_received(hello(intent=None))
        self.assertRejected(rec, RejectReason.UNSUPPORTED_INTENT)

    def test_reject_received(self):
        hs, rec = self.make()
        hs.tls_complete(LOW)
        hs.reject_received("network-mismatch", "other network")
        self.assertEqual(rec.calls[-1][0:2], ("refused", "network-mismatch"))


class BootstrapHandshakeTests(SynchronousTestCase):
    def make(self, local, intent):
        rec = Recorder()
        return Handshake(rec, local, NET, intent), rec

    def test_requester_waits_for_grant_then_elects(self):
        hs, rec = self.make(HIGH, Intent.BOOTSTRAP)
        hs.tls_complete(LOW)
        hs.hello_received(hello())
        self.assertEqual(hs.state, HandshakeState.AWAIT_GRANT)
        self.assertNotIn("claim", rec.names())
        hs.grant_received()
        self.assertEqual(hs.state, HandshakeState.ACTIVE)
        self.assertEqual(rec.names()[-2:], ["send_choose", "promote"])
        self.assertTrue(hs.is_bootstrap)

    def test_acceptor_admits_then_grants(self):
        hs, rec = self.make(LOW, Intent.CONNECT)
        hs.tls_complete(HIGH)
        hs.hello_received(hello(intent=Intent.BOOTSTRAP, role="client"))
        self.assertEqual(hs.state, HandshakeState.ADMITTING)
        self.assertEqual(rec.names()[-1], "admit")
        hs.admission_result(True)
        self.assertEqual(rec.names()[-2:], ["send_grant", "candidate"])
        self.assertEqual(hs.state, HandshakeState.AWAIT_CHOICE)
        self.assertTrue(hs.is_bootstrap)

    def test_acceptor_denies_with_reason(self):
        hs, rec = self.make(LOW, Intent.CONNECT)
        hs.tls_complete(HIGH)
        hs.hello_received(hello(intent=Intent.BOOTSTRAP))
        hs.admission_result(False, RejectReason.FAILED_REACHABILITY, "no answer from tcp:1.2.3.4:5")
        self.assertIn(("reject", RejectReason.FAILED_REACHABILITY, "no answer from tcp:1.2.3.4:5"), rec.calls)
        self.assertEqual(hs.state, HandshakeState.CLOSED)

    def test_unexpected_grant(self):
        hs, rec = self.make(HIGH, Intent.CONNECT)
        hs.tls_complete(LOW)
        hs.grant_received()
        self.assertIn(("reject", RejectReason.MALFORMED), [c[:2] for c in rec.calls])

    def test_late_admission_result_ignored(self):
        hs, rec = self.make(LOW, Intent.CONNECT)
        hs.tls_complete(HIGH)
        hs.hello_received(hello(intent=Intent.BOOTSTRAP))
        hs.closed()
        hs.admission_result(True)
        self.assertNotIn("send_grant", rec.names())


class DetachTests(SynchronousTestCase):
    def test_a_detached_handshake_holds_and_tells_its_connection_nothing(self):
        """Once its connection is gone: no reference back to it (no cycle), and late inputs go nowhere."""
        import gc

        rec = Recorder()
        hs = Handshake(rec, LOW, NET, Intent.CONNECT)
        hs.tls_complete(HIGH)
        hs.hello_received(hello(intent=Intent.BOOTSTRAP))
        calls = list(rec.calls)
        hs.detach()
        self.assertEqual(hs.state, HandshakeState.CLOSED)
        self.assertNotIn(rec, gc.get_referents(hs.__dict__))
        hs.admission_result(True)  # a late answer (a reachability test that outlived the connection)
        hs.grant_received()
        hs.hello_received(hello())
        self.assertEqual(rec.calls, calls)


class EarlyClaimTests(SynchronousTestCase):
    """A connector that chooses claims at TLS completion when the certificate says it may."""

    def make(self, local=HIGH, initiator=True, intent=Intent.CONNECT, claim=True, versions=(1, 1)):
        rec = Recorder(claim)
        return Handshake(rec, local, NET, intent, None, versions, initiator=initiator), rec

    def test_connector_chooser_claims_at_tls_completion(self):
        hs, rec = self.make()
        hs.tls_complete(LOW, CertInfo(network=NET))
        self.assertEqual(rec.names(), ["send_hello", "claim", "send_choose", "promote"])
        self.assertEqual(hs.state, HandshakeState.ACTIVE)
        self.assertTrue(hs.early)
        self.assertEqual(hs.version, 1)
        self.assertEqual(hs.peer_role, "node")

    def test_late_hello_is_checked_and_reported(self):
        hs, rec = self.make()
        hs.tls_complete(LOW, CertInfo(network=NET, role="client"))
        self.assertEqual(hs.peer_role, "client")
        hs.hello_received(hello(role="node"))
        self.assertEqual(rec.calls[-1][0], "late_hello")
        self.assertEqual(hs.peer_hello.role, "node")
        self.assertEqual(hs.peer_role, "node")  # the HELLO, once here, is what counts
        self.assertEqual(hs.state, HandshakeState.ACTIVE)

    def test_late_hello_contradicting_the_certificate_closes(self):
        hs, rec = self.make()
        hs.tls_complete(LOW, CertInfo(network=NET))
        hs.hello_received(hello(network=network_hash("elsewhere")))
        self.assertIn(("reject", RejectReason.NETWORK_MISMATCH), [c[:2] for c in rec.calls])
        self.assertEqual(hs.state, HandshakeState.CLOSED)

    def test_late_hello_with_another_intent_closes(self):
        hs, rec = self.make()
        hs.tls_complete(LOW, CertInfo(network=NET))
        hs.hello_received(hello(intent=Intent.BOOTSTRAP))
        self.assertIn(("reject", RejectReason.MALFORMED), [c[:2] for c in rec.calls])

    def test_second_hello_after_early_claim_is_a_violation(self):
        hs, rec = self.make()
        hs.tls_complete(LOW, CertInfo(network=NET))
        hs.hello_received(hello())
        hs.hello_received(hello())
        self.assertIn(("reject", RejectReason.MALFORMED), [c[:2] for c in rec.calls])

    def test_failed_early_claim_closes_as_duplicate(self):
        hs, rec = self.make(claim=False)
        hs.tls_complete(LOW, CertInfo(network=NET))
        self.assertEqual(rec.calls[-1][0:2], ("close", CloseReason.DUPLICATE))

    def assertWaits(self, hs, rec):
        self.assertFalse(hs.early)
        self.assertEqual(rec.names(), ["send_hello"])
        self.assertEqual(hs.state, HandshakeState.AWAIT_HELLO)

    def test_no_certificate_info_waits_for_hello(self):
        hs, rec = self.make()
        hs.tls_complete(LOW, None)
        self.assertWaits(hs, rec)
        hs.hello_received(hello())
        self.assertEqual(hs.state, HandshakeState.ACTIVE)

    def test_other_network_in_certificate_waits_for_hello(self):
        """The HELLO exchange then gives the precise refusal, as without certificate info."""
        hs, rec = self.make()
        hs.tls_complete(LOW, CertInfo(network=network_hash("elsewhere")))
        self.assertWaits(hs, rec)
        hs.hello_received(hello(network=network_hash("elsewhere")))
        self.assertIn(("reject", RejectReason.NETWORK_MISMATCH), [c[:2] for c in rec.calls])

    def test_no_shared_version_in_certificate_waits_for_hello(self):
        hs, rec = self.make()
        hs.tls_complete(LOW, CertInfo(network=NET, min_version=2, version=3))
        self.assertWaits(hs, rec)

    def test_acceptor_never_claims_early(self):
        hs, rec = self.make(initiator=False)
        hs.tls_complete(LOW, CertInfo(network=NET))
        self.assertWaits(hs, rec)

    def test_connector_that_does_not_choose_waits(self):
        hs, rec = self.make(local=LOW)
        hs.tls_complete(HIGH, CertInfo(network=NET))
        self.assertWaits(hs, rec)

    def test_bootstrap_and_probe_intents_wait(self):
        for intent in (Intent.BOOTSTRAP, Intent.PROBE):
            hs, rec = self.make(intent=intent)
            hs.tls_complete(LOW, CertInfo(network=NET))
            self.assertWaits(hs, rec)

    def test_self_in_certificate_waits(self):
        hs, rec = self.make(local=HIGH)
        hs.tls_complete(HIGH, CertInfo(network=NET))
        self.assertWaits(hs, rec)

    def test_unexpected_peer_is_never_claimed(self):
        """
        The machine itself refuses a peer other than the one expected, early
        claim or not (it used to claim early on the certificate alone, relying
        on the TLS layer's key check).
        """
        rec = Recorder()
        hs = Handshake(rec, HIGH, NET, Intent.CONNECT, OTHER, (1, 1), initiator=True)
        hs.tls_complete(LOW, CertInfo(network=NET))
        self.assertWaits(hs, rec)
        hs.hello_received(hello())
        self.assertEqual(rec.names(), ["send_hello", "reject", "refused"])
        self.assertEqual(rec.calls[1][1], RejectReason.WRONG_PEER)


# -- property tests: any order of inputs, from a peer that may be anything ----------------------------------



def _mostly(good, *others):
    """C{good} half the time (so that runs get past the checks), else any of C{others}."""
    return st.one_of(st.just(good), st.sampled_from((good,) + others))


_networks = _mostly(NET, network_hash("other"), "")
_versions = _mostly((1, 1), (0, 1), (2, 3), (0, 0), (1, 7))
_hellos = st.builds(
    lambda network, versions, intent: Hello(network=network, min_version=versions[0], version=versions[1],
                                            intent=intent),
    _networks, _versions, _mostly(Intent.CONNECT, Intent.PROBE, Intent.BOOTSTRAP, None))


def _decoded_hello(data):
    """What a peer's HELLO frame, maybe damaged, decodes to: a L{Hello}, or None if it is refused."""
    try:
        return Hello.decode(data)
    except ProtocolViolation:
        return None


# HELLOs as they come off the wire: a valid one's payload, mutated (most are refused; some change a field)
_wire_hellos = mutated(_hellos.filter(lambda h: h.intent is not None).map(lambda h: h.encode()[5:]), 2) \
    .map(_decoded_hello).filter(lambda h: h is not None)

_tls = st.tuples(st.just("tls"), _mostly(OTHER, LOW, HIGH),
                 st.none() | st.builds(lambda n, v: CertInfo(network=n, min_version=v[0], version=v[1]),
                                       _networks, _versions))
_input = st.one_of(
    _tls,
    st.tuples(st.just("hello"), _hellos | _wire_hellos),
    st.tuples(st.just("choose")),
    st.tuples(st.just("grant")),
    st.tuples(st.just("reject"), st.text(max_size=10)),
    st.tuples(st.just("admission"), st.booleans()),
    st.tuples(st.just("timeout")),
    st.tuples(st.just("closed")),
)
# mostly a plausible start (TLS, then a HELLO), then anything: random orders close at once, and stop there
_inputs = st.one_of(
    st.lists(_input, max_size=8),
    st.builds(lambda tls, hello, rest: [tls, ("hello", hello)] + rest,
              _tls, _hellos | _wire_hellos, st.lists(_input, max_size=4)),
    st.builds(lambda tls, hello, rest: [tls, ("hello", hello)] + rest,
              _tls, _hellos | _wire_hellos, st.lists(_input, max_size=4)),
)


class HandshakePropertyTests(SynchronousTestCase):
    """
    The machine fed any sequence of inputs: it never raises, CLOSED is
    final, and a connection is promoted at most once, only to a peer that
    passed every check.
    """

    @examples(500)
    @given(st.sampled_from([LOW, HIGH]), _mostly(Intent.CONNECT, Intent.PROBE, Intent.BOOTSTRAP),
           st.none() | st.sampled_from([LOW, OTHER]),
           st.booleans(), st.booleans(), _inputs)
    def test_any_inputs(self, local, intent, expected, initiator, claim, inputs):
        rec = Recorder(claim)
        hs = Handshake(rec, local, NET, intent, expected, (1, 1), initiator=initiator)
        closed_at = None
        for i, (name, *args) in enumerate(inputs):
            before = len(rec.calls)
            {"tls": hs.tls_complete, "hello": hs.hello_received, "choose": hs.choose_received,
             "grant": hs.grant_received, "reject": lambda reason: hs.reject_received(reason, ""),
             "admission": hs.admission_result, "timeout": hs.choice_timed_out, "closed": hs.closed}[name](*args)
            if closed_at is not None:
                self.assertIs(hs.state, HandshakeState.CLOSED)  # final
                # nothing the peer says now gets anywhere (it may only be refused again)
                self.assertEqual({c[0] for c in rec.calls[before:]} - {"reject", "refused"}, set())
            elif hs.state is HandshakeState.CLOSED:
                closed_at = i
            if hs.state is HandshakeState.ACTIVE:
                self.assertIsNotNone(hs.peer_id)
                self.assertEqual(hs.version, 1)
        promotions = [c for c in rec.calls if c[0] == "promote"]
        self.assertLessEqual(len(promotions), 1)
        if promotions:
            [(_, peer)] = promotions
            self.assertNotEqual(peer, local)
            if expected is not None:
                self.assertEqual(peer, expected)
            said = hs.peer_hello if hs.peer_hello is not None else hs.peer_info
            self.assertIsNotNone(said)
            self.assertEqual(said.network, NET)
            self.assertNotEqual(said.intent if isinstance(said, Hello) else Intent.CONNECT, Intent.PROBE)
            self.assertNotIn(intent, (Intent.PROBE,))
