"""crust over QUIC through an impaired path: 50 MiB intact, no stalls.

Two lab hosts: the receiver ``seed`` on the internet and the sender
``alice`` behind a full-cone NAT ``home``, each running the agent
``tests/lab/natlab/agents/transfer.py`` (a ``Service`` with
``Config(enable_tcp=False)``: QUIC only). The lab's user-space forwarder
impairs every packet between them once (``lab.impair``, all internet links).
alice connects with ``Service.connect`` and sends 50 MiB (52,428,800 bytes)
of seeded pseudo-random data in 64 KiB messages of priority 2 (QUIC's bulk
lane), keeping at most half of ``max_queued_bytes`` (8 MiB) queued: it
refills after ``when_writable``. Both sides hash the payload (SHA-256).

- (a) 5 % loss, 5 % reordering (held back 10 ms), 2 % duplication, no
  added delay;
- (b) 200 ms one-way delay (each packet is delayed once, so the round trip
  is 400 ms; a UDP echo probe checks it), no loss.

Each test asserts that every byte arrived in order (same SHA-256 and count
on both sides), that the receiver never went more than ``STALL`` seconds
without data from the connection's establishment to the last byte (it is
also watched while running: the test fails as soon as a stall is seen),
and that the whole transfer took less than ``BOUND`` seconds. The goodput
and times are printed and written to ``_trial_temp/lab-quic-transfers.json``.

Root only (network namespaces, nftables, ``/dev/net/tun``). Measured on the
project's 2-core machine: see doc/benchmarks.md, "Goodput under impairment
(NAT lab)". ``run_transfer`` is also used by ``bench/lab_goodput.py``.
"""

import json
import os
import statistics
import time

from tests.lab.natlab import LabTestCase
from tests.lab.natlab.agents import Agent

SIZE = 50 * 1024 * 1024  # bytes: 50 MiB
MESSAGE = 64 * 1024
STALL = 10.0  # seconds without any data arriving that count as a stall
REFLECTOR_PORT = 7000

#: events that end a sender's run (done or not)
SENDER_END = ("done", "connect_error", "lost_peer", "send_failed", "deadline", "crashed")


class TransferFailed(AssertionError):
    pass


def run_transfer(sender_host, receiver_host, transport, nbytes, *, bound, stall=STALL,
                 extra=(), sender_extra=(), receiver_extra=(), label="", cleanup=None,
                 on_progress=None):
    """Run one transfer (``transfer.py`` on both hosts); return what happened.

    *transport* is ``quic``, ``tcp`` or ``any``; *extra* arguments go to
    both agents. Watches the receiver's progress once a second and raises
    ``TransferFailed`` (with both agents' last output) at once if no data
    arrived for *stall* seconds after the connection was established, if
    the sender reports an error, or after *bound* seconds. *cleanup*
    (e.g. ``TestCase.addCleanup``) is given each agent's ``stop``; the
    agents are stopped here in any case. Returns a dict: ``sender`` and
    ``receiver`` (their ``done`` events), ``sender_connected``,
    ``receiver_connected``, ``progress`` (the receiver's progress events),
    ``wall`` (seconds from starting the sender to its ``done``).
    """
    common = ["--transport", transport, "--bytes", nbytes, "--stall", stall,
              "--deadline", bound + 30] + list(extra)
    receiver = Agent(receiver_host, "transfer", "--role", "receive", *common, *receiver_extra,
                     label="recv{}".format(label))
    agents = [receiver]
    if cleanup is not None:
        cleanup(receiver.stop)
    try:
        ready = receiver.event("ready", timeout=15)
        sender = Agent(sender_host, "transfer", "--role", "send", "--connect", ready["info"],
                       "--message-size", MESSAGE, *common, *sender_extra,
                       label="send{}".format(label))
        agents.append(sender)
        if cleanup is not None:
            cleanup(sender.stop)
        start = time.monotonic()
        end = None
        seen, seen_at = 0, start  # receiver progress events so far, and when the last one came
        while end is None:
            now = time.monotonic()
            events = [e for e in _events(sender) if e["event"] in SENDER_END]
            if events:
                end = events[0]
                break
            progress = [e for e in _events(receiver) if e["event"] == "progress"]
            if len(progress) != seen:
                seen, seen_at = len(progress), now
            if progress:
                if on_progress is not None:
                    on_progress(progress[-1])
                if progress[-1].get("since_last_byte", 0) > stall:
                    raise TransferFailed("stalled: no data for {since_last_byte} s at {bytes} bytes"
                                         .format(**progress[-1]) + _tails(agents))
                if now - seen_at > stall:  # the receiver itself stopped reporting
                    raise TransferFailed("the receiver reported nothing for {:.1f} s".format(now - seen_at)
                                         + _tails(agents))
            if now - start > bound:
                raise TransferFailed("not done after {} s".format(bound) + _tails(agents))
            time.sleep(0.5)
        wall = time.monotonic() - start
        if end["event"] != "done":
            raise TransferFailed("sender: {}".format(json.dumps(end)) + _tails(agents))
        received = receiver.event("done", timeout=10)
        result = dict(sender=end, receiver=received, wall=wall,
                      sender_connected=sender.event("connected", timeout=1),
                      receiver_connected=receiver.event("connected", timeout=1),
                      progress=[e for e in _events(receiver) if e["event"] == "progress"])
    finally:
        for agent in reversed(agents):
            agent.stop()
    return result


def _events(agent):
    """The agent's JSON events so far."""
    return [json.loads(line) for line in list(agent.proc.lines) if line.startswith('{"event": ')]


def _tails(agents, lines=15):
    return "".join("\n--- {} ---\n{}".format(a, "\n".join(a.proc.lines[-lines:])[-4000:])
                   for a in agents)


def summary(result):
    """The figures worth printing of a ``run_transfer`` result."""
    sender, receiver = result["sender"], result["receiver"]
    return dict(bytes=receiver["bytes"], seconds=receiver["seconds"], mbps=receiver["mbps"],
                sender_seconds=sender["seconds"], max_gap=receiver["max_gap"],
                first_byte=receiver["first_byte"], sender_cpu=sender["cpu_seconds"],
                receiver_cpu=receiver["cpu_seconds"], waits=sender["waits"],
                urgent_rtt_ms_median=(statistics.median(sender["ping_ms"])
                                      if sender.get("ping_ms") else None))


class QuicImpairmentTests(LabTestCase):
    """50 MiB over crust's QUIC transport through the impairment forwarder."""

    lab_tun = True
    timeout = 420  # trial's limit per test; each test bounds itself below that

    def setUp(self):
        super().setUp()
        self.lab = self.make_lab()
        self.seed = self.lab.public_host("seed")
        self.home = self.lab.nat("home", "full-cone")
        self.alice = self.home.host("alice")

    def rtt_ms(self, count=10):
        """Round trips alice -> seed of a UDP echo probe (idle path)."""
        reflector = self.seed.reflect(udp=["{}:{}".format(self.seed.ip, REFLECTOR_PORT)])
        self.addCleanup(reflector.stop)
        answer = self.alice.probe("rtt", "--server", "{}:{}".format(self.seed.ip, REFLECTOR_PORT),
                                  "--count", count, "--interval", 0.05, "--drain", 1.0)
        reflector.stop()
        return answer["rtt_ms"]

    def transfer(self, name, bound, impairment):
        result = run_transfer(self.alice, self.seed, "quic", SIZE, bound=bound,
                              extra=["--ping-interval", 1.0], label="-" + name,
                              cleanup=self.addCleanup)
        sender, receiver = result["sender"], result["receiver"]
        # Over QUIC, through the NAT and the impaired internet path.
        self.assertEqual(result["sender_connected"]["transport"], "udp", result["sender_connected"])
        self.assertTrue(result["sender_connected"]["address"].startswith(
            "udp:{}:".format(self.seed.ip)), result["sender_connected"])
        self.assertTrue(result["receiver_connected"]["address"].startswith(
            "udp:{}:".format(self.home.public_ip)), result["receiver_connected"])
        # Intact: every byte, in order.
        self.assertEqual(receiver["bytes"], SIZE)
        self.assertEqual(sender["bytes"], SIZE)
        self.assertEqual(receiver["sha256"], sender["sha256"])
        self.assertTrue(sender["intact"], sender)
        self.assertEqual(receiver["messages"], -(-SIZE // MESSAGE))
        # Never stalled, finished in time; the sender really was held back.
        self.assertLess(receiver["max_gap"], STALL, receiver)
        self.assertEqual(receiver["stalls"], 0, receiver)
        self.assertLess(sender["seconds"], bound)
        self.assertGreater(sender["waits"], 0, sender)
        row = dict(name=name, impairment=impairment, **summary(result))
        self.report(row)
        return result, row

    def report(self, row):
        path = os.path.abspath("lab-quic-transfers.json")
        rows = []
        if os.path.exists(path):
            with open(path) as f:
                rows = [r for r in json.load(f) if r["name"] != row["name"]]
        rows.append(row)
        with open(path, "w") as f:
            json.dump(rows, f, indent=2)
        print("\ncrust over QUIC, {name} ({impairment}): {bytes} bytes intact in {seconds:.1f} s "
              "(sender {sender_seconds:.1f} s), {mbps:.2f} MB/s, longest gap without data "
              "{max_gap:.2f} s, CPU sender {sender_cpu:.1f} s / receiver {receiver_cpu:.1f} s, "
              "urgent-lane round trip under load (median) {urgent_rtt_ms_median} ms".format(**row))

    def test_loss_reordering_duplication(self):
        """(a) 5 % loss, 5 % reordering, 2 % duplication."""
        impairment = dict(loss_pct=5, reorder_pct=5, duplicate_pct=2, seed=1)
        self.lab.impair(**impairment)
        result, row = self.transfer("loss5-reorder5-dup2", 240, impairment)
        stats = self.lab.unimpair()
        # The impairment really was applied to this traffic.
        self.assertGreater(stats["received"], SIZE // 1200)
        self.assertGreater(stats["dropped"], 0.03 * stats["received"], stats)
        self.assertLess(stats["dropped"], 0.07 * stats["received"], stats)
        self.assertGreater(stats["duplicated"], 0, stats)
        self.assertGreater(stats["reordered"], 0, stats)

    def test_200ms_delay(self):
        """(b) 200 ms one-way delay: a 400 ms round trip."""
        impairment = dict(delay_ms=200, seed=1)
        self.lab.impair(**impairment)
        rtts = self.rtt_ms()
        self.assertGreaterEqual(len(rtts), 8, rtts)
        self.assertGreaterEqual(min(rtts), 395.0, rtts)
        self.assertLess(statistics.median(rtts), 480.0, rtts)
        result, row = self.transfer("delay200ms-oneway", 240,
                                    dict(impairment, rtt_ms_median=statistics.median(rtts)))
        # The connection saw the delay too: urgent-lane pings took at least one round trip.
        self.assertGreaterEqual(min(result["sender"]["ping_ms"]), 395.0, result["sender"]["ping_ms"])
        stats = self.lab.unimpair()
        self.assertEqual(stats["dropped"], 0, stats)
