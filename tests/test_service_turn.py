"""
A service with a TURN server (coturn on 127.0.0.1): its relayed address is
a C{relay} candidate, a peer that only knows that address connects over
QUIC through the relay, and the allocation goes back when the node stops.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from crust.candidates import CandidateKind
from crust.config import TurnServer
from crust.connection_info import PubConnectionInfo

from tests.nat.test_turn import Coturn
from tests.util import make_service, wait_for


class ServiceTurnTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.coturn = Coturn(self, "max-allocate-lifetime=600")
        yield defer.ensureDeferred(self.coturn.ready())

    @defer.inlineCallbacks
    def test_connect_through_the_relay(self):
        b = make_service(self, start=False, turn_servers=(TurnServer(self.coturn.address, "alice", "secret"),))
        b.turn.configure(permit_loopback=True, rto=0.1)
        b.startService()
        a = make_service(self, listen_host="127.0.0.2")
        ib = yield b.prepare_connection_info()
        relays = [c for c in ib.public.candidates if c.kind is CandidateKind.RELAY]
        self.assertEqual(len(relays), 1, ib.public.to_json())
        relay = relays[0]
        self.assertEqual(relay.address.host, "127.0.0.1")
        kinds = [c.kind for c in ib.public.candidates]
        self.assertLess(kinds.index(CandidateKind.RELAY), kinds.index(CandidateKind.HOST))
        self.assertNotIn(relay.address, b.addresses.listeners())  # never claimed in HELLO
        status = b.turn.status()[0]
        self.assertEqual((status["state"], status["relayed"]), ("allocated", str(relay.address)))

        ia = yield a.prepare_connection_info()
        granted = yield b.turn.permit(ia.public.addresses)
        self.assertEqual(granted[0], (True, ["127.0.0.2"]))
        only_relay = PubConnectionInfo(b.peer_id, (relay.address,), candidates=(relay,))
        peer = yield a.connect(only_relay)
        self.assertEqual(peer, b.peer_id)
        yield wait_for(lambda: a.peer_id in b.peers.active)

        details_b = b.peer_details(a.peer_id)
        self.assertEqual(details_b["transport"], "udp")
        self.assertEqual(details_b["path"]["kind"], "relayed")
        self.assertEqual(details_b["path"]["via"], f"turn:{self.coturn.address.host_port()}")
        self.assertEqual(details_b["address"].split(":")[1], "127.0.0.2")
        details_a = a.peer_details(b.peer_id)
        self.assertEqual(details_a["address"], str(relay.address))

        blob = os.urandom(1 << 20)
        a.send(b.peer_id, blob, 1)
        b.send(a.peer_id, blob[::-1], 1)
        yield wait_for(lambda: b.events.named("new_message") and a.events.named("new_message"), timeout=20)
        self.assertEqual(b.events.named("new_message"), [(a.peer_id, blob)])
        self.assertEqual(a.events.named("new_message"), [(b.peer_id, blob[::-1])])
        client = b.turn.clients[0]
        self.assertGreater(client.counters["sent_channel_data"], 100)  # the bulk went on a channel
        self.assertGreater(b.turn.counters["delivered"], 100)
        self.assertEqual(b.turn.status()[0]["channels"], 1)

        yield b.stopService()
        self.assertIn("lifetime=0", self.coturn.log())
        self.assertEqual(b.turn.status()[0]["state"], "stopped")
        self.assertEqual(b.turn.routes, {})
