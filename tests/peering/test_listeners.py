"""
Tests for L{crust.peering.listeners.Listeners.refresh}: a listener bound to
every interface follows the host's addresses as they change (the host moved
to another network), on a L{Clock}, with the interface list made up.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from crust.address import Address
from crust.config import Config
from crust.identity import Identity
from crust.nat.addresses import OurAddresses
from crust.peering import listeners as listeners_module
from crust.peering.listeners import Listeners


class RefreshTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hosts = ["192.168.1.20", "127.0.0.1"]
        self.patch(listeners_module, "addresses_for_listener", lambda host: list(self.hosts))
        self.config = Config(listen_host="0.0.0.0")
        self.addresses = OurAddresses(lambda: ("tcp", "udp"))
        self.addresses.listen = [Address("tcp", h, 4000) for h in self.hosts] + \
            [Address("udp", h, 5000) for h in self.hosts]
        self.listeners = Listeners(
            peer_id=Identity.generate().peer_id, config=lambda: self.config, dialer=None,  # type: ignore[arg-type]
            tcp=None, udp_endpoint=None, quic=None, addresses=self.addresses,  # type: ignore[arg-type]
            emit=lambda *a: None, running=lambda: True, listening=lambda tcp, udp: None, clock=self.clock)
        self.logged: list[dict] = []
        self.patch(Listeners, "log", Logger(observer=self.logged.append))

    def changes(self) -> list[dict]:
        return [e for e in self.logged if "addresses changed" in e["log_format"] and e["log_level"].name == "info"]

    def test_the_host_moved(self) -> None:
        self.hosts = ["10.0.0.7", "127.0.0.1"]
        self.assertTrue(self.listeners.refresh())
        self.assertEqual([str(a) for a in self.addresses.listen],
                         ["tcp:10.0.0.7:4000", "tcp:127.0.0.1:4000", "udp:10.0.0.7:5000", "udp:127.0.0.1:5000"])
        infos = self.changes()
        self.assertEqual(len(infos), 1)
        self.assertEqual((infos[0]["addresses"], infos[0]["gone"]), ("10.0.0.7 127.0.0.1", " (192.168.1.20 gone)"))
        # and the candidates handed out follow
        hosts = {c.address.host for c in self.addresses.candidates(None)}
        self.assertEqual(hosts, {"10.0.0.7", "127.0.0.1"})

    def test_unchanged(self) -> None:
        self.assertFalse(self.listeners.refresh())
        self.assertEqual(len(self.addresses.listen), 4)
        self.assertEqual(self.changes(), [])

    def test_paced(self) -> None:
        self.assertFalse(self.listeners.refresh())
        self.hosts = ["10.0.0.7", "127.0.0.1"]
        self.clock.advance(Listeners.refresh_interval - 0.01)
        self.assertFalse(self.listeners.refresh())  # too soon: not looked at
        self.clock.advance(0.01)
        self.assertTrue(self.listeners.refresh())

    def test_a_listener_on_one_address_stays(self) -> None:
        self.config = Config(listen_host="127.0.0.1")
        self.addresses.listen = [Address("tcp", "127.0.0.1", 4000)]
        self.hosts = ["10.0.0.7"]
        self.assertFalse(self.listeners.refresh())
        self.assertEqual(self.addresses.listen, [Address("tcp", "127.0.0.1", 4000)])

    def test_not_listening(self) -> None:
        self.addresses.listen = []
        self.assertFalse(self.listeners.refresh())
        self.assertEqual(self.addresses.listen, [])

    def test_every_interface_gone_but_loopback(self) -> None:
        self.hosts = ["127.0.0.1"]  # the cable pulled
        self.assertTrue(self.listeners.refresh())
        self.assertEqual([str(a) for a in self.addresses.listen], ["tcp:127.0.0.1:4000", "udp:127.0.0.1:5000"])
