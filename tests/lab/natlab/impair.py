#!/usr/bin/env python3
"""User-space link impairment: a TUN forwarder (this kernel has no tc netem).

Standalone (stdlib only) so it runs with ``ip netns exec NS python3 impair.py``
inside the lab's internet router namespace. The lab's policy routing sends each
impaired forwarded packet into the TUN device once; this program reads it,
maybe drops, duplicates, delays or holds it back, and writes it back to the
same device, from where the kernel forwards it normally (``iif <tun>`` is
routed by the main table, so a packet never loops).

Parameters (per packet, independent, from a seeded RNG):
  --delay MS        fixed one-way delay
  --jitter MS       plus a uniform random delay in [-jitter, +jitter] (>= 0 total);
                    jitter alone reorders packets closer than it
  --loss PCT        drop probability
  --duplicate PCT   probability of sending a second copy
  --reorder PCT     probability of holding a packet back --reorder-gap MS
                    (default 10) extra, so packets sent after it overtake it
  --seed N          RNG seed

Prints ``ready`` once the device is attached, and a JSON line of counters on
SIGTERM/SIGINT before exiting 0.
"""

import argparse
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
READ_BATCH = 512


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def open_tun(name):
    """Attach to (or create) TUN device *name* in this namespace; non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


class Impairer:
    """Decides the fate of each packet; pure logic plus a release queue."""

    def __init__(self, delay_ms=0.0, jitter_ms=0.0, loss_pct=0.0, duplicate_pct=0.0,
                 reorder_pct=0.0, reorder_gap_ms=10.0, seed=0):
        self.delay = delay_ms / 1000.0
        self.jitter = jitter_ms / 1000.0
        self.loss = loss_pct / 100.0
        self.duplicate = duplicate_pct / 100.0
        self.reorder = reorder_pct / 100.0
        self.gap = reorder_gap_ms / 1000.0
        self.rng = random.Random(seed)
        self.queue = []
        self.seq = 0
        self.stats = dict(received=0, dropped=0, duplicated=0, reordered=0, sent=0, errors=0)

    def accept(self, packet, now, send):
        """Take one packet read at *now*; call ``send(pkt)`` for immediate output."""
        stats = self.stats
        stats["received"] += 1
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            stats["dropped"] += 1
            return
        copies = 1
        if self.duplicate and rng.random() < self.duplicate:
            copies = 2
            stats["duplicated"] += 1
        for _ in range(copies):
            delay = self.delay
            if self.jitter:
                delay += rng.uniform(-self.jitter, self.jitter)
            if self.reorder and rng.random() < self.reorder:
                delay += self.gap
                stats["reordered"] += 1
            if delay <= 0:
                send(packet)
            else:
                self.seq += 1
                heapq.heappush(self.queue, (now + delay, self.seq, packet))

    def release(self, now, send):
        """Send every queued packet due by *now*; return seconds to the next one."""
        queue = self.queue
        while queue and queue[0][0] <= now:
            send(heapq.heappop(queue)[2])
        return queue[0][0] - now if queue else None


def serve(fd, impairer):
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    stats = impairer.stats

    def send(packet):
        try:
            os.write(fd, packet)
            stats["sent"] += 1
        except OSError:
            stats["errors"] += 1

    wait = None
    while True:
        events = poller.poll(None if wait is None else max(wait * 1000.0, 0.0))
        now = time.monotonic()
        if events:
            for _ in range(READ_BATCH):
                try:
                    packet = os.read(fd, 65535)
                except BlockingIOError:
                    break
                impairer.accept(packet, now, send)
        wait = impairer.release(now, send)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tun", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--duplicate", type=float, default=0.0)
    parser.add_argument("--reorder", type=float, default=0.0)
    parser.add_argument("--reorder-gap", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    impairer = Impairer(args.delay, args.jitter, args.loss, args.duplicate,
                        args.reorder, args.reorder_gap, args.seed)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        fd = open_tun(args.tun)
        print("ready", flush=True)
        serve(fd, impairer)
    except _Stop:
        pass
    print(json.dumps(impairer.stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
