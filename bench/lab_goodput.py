#!/usr/bin/env python
"""
Goodput of crust over QUIC against crust over TCP through an impaired path
in the NAT lab (root only; one command, prints a table):

    sudo python bench/lab_goodput.py                 # 40 ms RTT, 1 % loss, 20 MB, 3 runs (~7 min)
    sudo python bench/lab_goodput.py --what-if       # plus variants crust does not ship (~17 min)
    sudo python bench/lab_goodput.py --size 5 --runs 1 --no-ceiling   # quick look (~1 min)
    sudo python bench/lab_goodput.py --json          # everything as JSON on stdout (--save PATH: to a file)

Two public lab hosts, ``snd`` and ``rcv``. The lab's user-space forwarder
(``lab.impair``) delays every packet between them by ``--delay-ms`` once and
drops ``--loss`` % of them, so the round trip is 2 x delay (20 ms per packet
for the default 40 ms RTT). A UDP echo probe (``probe.py rtt``) measures the
RTT first. Each run is one transfer with the agent
``tests/lab/natlab/agents/transfer.py`` (via ``tests.lab.test_lab_quic.run_transfer``):
``--size`` MB (10^6 bytes) of seeded random data in 64 KiB messages of
priority 2, paced by crust's backpressure (``queued_bytes`` /
``when_writable``), SHA-256 checked at both ends; goodput is the receiver's
payload bytes / (connection established -> last byte), in MB/s (10^6 B/s).

Transports, each run in a fresh pair of ``Service``s, in alternating order:

- ``quic``: ``Config(enable_tcp=False)``; crust's QUIC settings as shipped
  (aioquic with crust's congestion controller ``crust-bbr``, 1200-byte
  datagrams).
- ``quic-reno``: the same with aioquic's Reno (crust's default before
  ``crust-bbr``), for comparison.
- ``tcp``: ``Config(enable_udp=False)``; the kernel's default TCP congestion
  control, whatever it is (``net.ipv4.tcp_congestion_control``, reported).
- ``tcp-cubic``: the same with ``TCP_CONGESTION`` set to cubic on the
  connection's socket (both ends): a loss-based controller like Reno.
- with ``--what-if``, experiments that crust does not ship:
  ``quic-cubic`` (aioquic's CUBIC), ``quic-1452`` (crust-bbr, 1452-byte
  datagrams: 1480-byte packets, close to TCP's 1500), ``quic-cubic-1452``,
  and ``tcp-cubic-lowat`` (cubic with ``TCP_NOTSENT_LOWAT`` 16 KiB: less
  data waits in the kernel ahead of an urgent message).
- ``--delay-ms``, ``--loss``, ``--reorder``, ``--duplicate`` set another
  impairment (the table's ratio lines still compare QUIC with TCP).

Per transport: median goodput over ``--runs``, CPU seconds per MB of each
side (the agent's own process: ``getrusage`` from establishment to the last
byte / final report), the forwarder's packet rate during the run and its CPU
share (``/proc/PID/stat``), packets the kernel failed to queue to the
forwarder (``imp0`` tx_dropped: the forwarder's ceiling would show here),
packet sizes (TCP: ``TCP_INFO`` snd_mss; sizes of the packets entering the
forwarder from a packet socket on ``imp0``, first run of each transport),
retransmissions, and the round trip of a priority-0 message sent every
second during the transfer (head-of-line blocking shows here). Unless
``--no-ceiling``, one lossless run of ``tcp`` and ``quic`` at the same
delay shows what the path carries without loss.

Network rule: all traffic is between the lab's namespaces.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TRANSPORTS = {
    # name: (agent --transport, extra agent arguments, description)
    "quic": ("quic", [], "crust/QUIC (crust-bbr, 1200 B datagrams)"),
    "quic-reno": ("quic", ["--quic-cc", "reno"], "crust/QUIC (aioquic Reno, as before crust-bbr)"),
    "tcp": ("tcp", [], "crust/TCP ({cc}, system default)"),
    "tcp-cubic": ("tcp", ["--tcp-cc", "cubic"], "crust/TCP (cubic)"),
    "quic-cubic": ("quic", ["--quic-cc", "cubic"], "what if: QUIC CUBIC"),
    "quic-1452": ("quic", ["--quic-datagram", "1452"], "what if: QUIC crust-bbr, 1452 B datagrams"),
    "quic-cubic-1452": ("quic", ["--quic-cc", "cubic", "--quic-datagram", "1452"],
                        "what if: QUIC CUBIC + 1452 B"),
    "tcp-cubic-lowat": ("tcp", ["--tcp-cc", "cubic", "--tcp-notsent-lowat", "16384"],
                        "what if: TCP cubic + NOTSENT_LOWAT 16 KiB"),
}
BASE = ("quic", "quic-reno", "tcp", "tcp-cubic")
WHAT_IF = ("quic-cubic", "quic-1452", "quic-cubic-1452", "tcp-cubic-lowat")
REFLECTOR_PORT = 7000
TARGET = 0.8  # QUIC goodput >= 0.8 x TCP's


# -- a packet-size sniffer, run in the lab's internet namespace --------------------------

def sniff(device: str) -> int:
    """Count the sizes of packets the kernel hands to *device* (the forwarder's TUN).

    Runs until SIGTERM, then prints one JSON line: packets, bytes, max, and a
    histogram of IP packet sizes.
    """
    import signal

    ETH_P_ALL = 0x0003
    PACKET_OUTGOING = 4
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.bind((device, 0))
    buf = bytearray(256)
    bins = {"<=100": 0, "101-1300": 0, "1301-1500": 0, ">1500": 0}
    counts = {"packets": 0, "bytes": 0, "max": 0}

    class Stop(Exception):
        pass

    def stop(*_):
        raise Stop()

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    try:
        while True:
            n, addr = sock.recvfrom_into(buf, 0, socket.MSG_TRUNC)
            if addr[2] != PACKET_OUTGOING:  # the forwarder's own writes come back as incoming
                continue
            counts["packets"] += 1
            counts["bytes"] += n
            counts["max"] = max(counts["max"], n)
            bins["<=100" if n <= 100 else "101-1300" if n <= 1300 else "1301-1500" if n <= 1500 else ">1500"] += 1
    except (Stop, OSError):  # OSError: the device went away
        pass
    print(json.dumps(dict(counts, sizes=bins)), flush=True)
    return 0


# -- measurements -------------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process *pid* so far."""
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def tun_counters(lab) -> dict:
    """imp0's kernel counters (tx = handed to the forwarder)."""
    out = lab.internet.run(["ip", "-s", "-j", "link", "show", "imp0"], timeout=5, check=False).stdout
    try:
        stats = json.loads(out)[0]["stats64"]
        return dict(tx_packets=stats["tx"]["packets"], tx_bytes=stats["tx"]["bytes"],
                    tx_dropped=stats["tx"]["dropped"], rx_packets=stats["rx"]["packets"])
    except (ValueError, LookupError):
        return {}


def measure_rtt(lab, snd, rcv, count=40):
    reflector = rcv.reflect(udp=["{}:{}".format(rcv.ip, REFLECTOR_PORT)], name="rtt-reflector")
    try:
        answer = snd.probe("rtt", "--server", "{}:{}".format(rcv.ip, REFLECTOR_PORT),
                           "--count", count, "--interval", 0.05, "--drain", 1.0)
    finally:
        reflector.stop()
    rtts = answer["rtt_ms"]
    return dict(sent=answer["sent"], answered=len(rtts), median=statistics.median(rtts) if rtts else None,
                min=min(rtts, default=None), max=max(rtts, default=None))


def one_run(lab, snd, rcv, name, args, impairment, seed, sniff_sizes, label):
    from tests.lab.test_lab_quic import run_transfer

    transport, extra, _ = TRANSPORTS[name]
    lab.impair(**dict(impairment, seed=seed))
    pid = lab.impairment.proc.pid
    sniffer = None
    if sniff_sizes:
        sniffer = lab.spawn(lab.internet, [sys.executable, os.path.abspath(__file__), "--sniff", "imp0"],
                            name="sniff-" + label)
        sniffer.wait_for_line(r"^ready$", timeout=10)
    cpu0, t0 = proc_cpu(pid), time.monotonic()
    try:
        result = run_transfer(snd, rcv, transport, args.size_bytes, bound=args.bound,
                              extra=["--ping-interval", 1.0], sender_extra=extra,
                              receiver_extra=extra, label="-" + label)
    finally:
        cpu1, t1 = proc_cpu(pid), time.monotonic()
        tun = tun_counters(lab)
        sizes = None
        if sniffer is not None:  # before the forwarder and its device go away
            sniffer.stop()
            for line in reversed(sniffer.lines):
                if line.startswith("{"):
                    sizes = json.loads(line)
                    break
        stats = lab.unimpair() or {}
    sender, receiver = result["sender"], result["receiver"]
    if not sender.get("intact"):
        raise AssertionError("{}: the data did not arrive intact: {}".format(name, sender))
    seconds = sender["seconds"]
    mb = receiver["bytes"] / 1e6
    row = dict(
        transport=name, seed=seed, bytes=receiver["bytes"], mbps=receiver["mbps"],
        seconds=receiver["seconds"], sender_seconds=seconds,
        cpu_s_per_mb_sender=sender["cpu_seconds"] / mb, cpu_s_per_mb_receiver=receiver["cpu_seconds"] / mb,
        max_gap=receiver["max_gap"],
        urgent_rtt_ms_median=statistics.median(sender["ping_ms"]) if sender["ping_ms"] else None,
        # per second of transfer (the forwarder is all but idle before and after it):
        # packets, and its CPU time (1.0 = one core, its ceiling: it is one process)
        forwarder=dict(stats, pps=round(stats.get("received", 0) / max(seconds, 1e-9)),
                       cpu_share=round((cpu1 - cpu0) / max(seconds, 1e-9), 3),
                       cpu_seconds=round(cpu1 - cpu0, 3), span=round(t1 - t0, 2)),
        tun=tun, sizes=sizes,
        tcp_info=sender.get("tcp_info"), quic=sender.get("quic"),
        connected=result["sender_connected"].get("address"))
    return row


def summarize(rows):
    by = {}
    for row in rows:
        by.setdefault(row["transport"], []).append(row)
    out = {}
    for name, runs in by.items():
        med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
        tcp = [r["tcp_info"] for r in runs if r.get("tcp_info")]
        sizes = next((r["sizes"] for r in runs if r.get("sizes")), None)
        out[name] = dict(
            runs=len(runs), mbps=med("mbps"), mbps_all=[r["mbps"] for r in runs],
            seconds=med("seconds"), cpu_s_per_mb_sender=med("cpu_s_per_mb_sender"),
            cpu_s_per_mb_receiver=med("cpu_s_per_mb_receiver"),
            fwd_pps=statistics.median(r["forwarder"]["pps"] for r in runs),
            fwd_cpu=statistics.median(r["forwarder"]["cpu_share"] for r in runs),
            tun_dropped=sum(r["tun"].get("tx_dropped", 0) for r in runs),
            urgent_rtt_ms=statistics.median(r["urgent_rtt_ms_median"] for r in runs
                                            if r["urgent_rtt_ms_median"] is not None),
            max_gap=max(r["max_gap"] for r in runs),
            mss=tcp[0]["snd_mss"] if tcp else None,
            cc=tcp[0]["congestion_control"] if tcp else None,
            retrans_pct=(statistics.median(100.0 * t["bytes_retrans"] / max(t["bytes_sent"], 1) for t in tcp)
                         if tcp and "bytes_sent" in tcp[0] else None),
            sizes=sizes)
    return out


# -- output ----------------------------------------------------------------------------------

def crust_version():
    """The commit of the tree and whether crust/ differs from it (read-only git)."""
    def git(*argv):
        try:
            return subprocess.run(["git", "-C", ROOT] + list(argv), capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "crust").splitlines() if line.strip()]
    return dict(commit=git("rev-parse", "--short", "HEAD").strip(), dirty=dirty)


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    versions = {}
    for module in ("twisted", "aioquic", "cryptography"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:
            versions[module] = "?"
    return dict(cpu=model, cores=os.cpu_count(), kernel=platform.release(),
                python=platform.python_version(), **versions)


def fmt(value, spec=".2f"):
    if value is None:
        return "-"
    return format(value, spec)


def table(report):
    s = report["summary"]
    lines = []
    imp = report["impairment"]
    rtt = report["rtt_ms"]
    lines.append("crust over QUIC vs crust over TCP in the NAT lab: {} MB per run, {} runs, medians".format(
        report["size_mb"], report["runs"]))
    extra = "".join(", {} % {}".format(imp[k], what) for k, what in
                    (("reorder_pct", "reordered"), ("duplicate_pct", "duplicated")) if imp.get(k))
    lines.append("path: {} ms delay per packet, {} % loss{} (forwarder seed {}+run); UDP echo RTT "
                 "median {} ms (min {}, max {}, {}/{} answered)".format(
                     imp["delay_ms"], imp["loss_pct"], extra, report["seed"], fmt(rtt["median"], ".1f"),
                     fmt(rtt["min"], ".1f"), fmt(rtt["max"], ".1f"), rtt["answered"], rtt["sent"]))
    lines.append("{} | load {} -> {} | kernel default TCP congestion control: {}".format(
        report["date"], report["load_before"], report["load_after"], report["tcp_default_cc"]))
    lines.append("")
    head = ("| transport | goodput MB/s | runs (MB/s) | CPU s/MB send | CPU s/MB recv | fwd pkt/s | fwd CPU "
            "| TUN drops | packet sizes | retrans % | urgent RTT under load (ms) |")
    lines.append(head)
    lines.append("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for name in report["order"]:
        if name not in s:
            continue
        r = s[name]
        desc = TRANSPORTS[name][2].format(cc=report["tcp_default_cc"])
        if r["mss"]:
            size = "MSS {}".format(r["mss"])
        else:
            size = "{} B datagrams".format(r.get("datagram") or "?")
        if r["sizes"]:
            size += "; max {} B".format(r["sizes"]["max"])
        lines.append("| {} | {} | {} | {} | {} | {} | {}% | {} | {} | {} | {} |".format(
            desc, fmt(r["mbps"], ".3f"), ", ".join(fmt(m, ".3f") for m in r["mbps_all"]),
            fmt(r["cpu_s_per_mb_sender"], ".3f"), fmt(r["cpu_s_per_mb_receiver"], ".3f"),
            r["fwd_pps"], fmt(100 * r["fwd_cpu"], ".0f"), r["tun_dropped"], size,
            fmt(r["retrans_pct"], ".2f"), fmt(r["urgent_rtt_ms"], ".0f")))
    lines.append("")
    for mine, label in (("quic", "QUIC"), ("quic-reno", "QUIC (Reno)")):
        quic = s.get(mine, {}).get("mbps")
        for name in ("tcp", "tcp-cubic"):
            other = s.get(name, {}).get("mbps")
            if quic and other:
                ratio = quic / other
                verdict = ("   (target >= {:.1f}x: {})".format(TARGET, "ok" if ratio >= TARGET else "MISSED")
                           if mine == "quic" else "   (for comparison: not what crust ships)")
                lines.append("{} / {}: {:.2f}x{}".format(
                    label, TRANSPORTS[name][2].format(cc=report["tcp_default_cc"]), ratio, verdict))
    if report.get("ceiling"):
        lines.append("")
        lines.append("lossless at the same delay (one run each; what the path carries):")
        for name, r in report["ceiling"].items():
            lines.append("  {}: {:.2f} MB/s, forwarder {} pkt/s ({:.0f}% CPU), TUN drops {}{}".format(
                TRANSPORTS[name][2].format(cc=report["tcp_default_cc"]), r["mbps"], r["forwarder"]["pps"],
                100 * r["forwarder"]["cpu_share"], r["tun"].get("tx_dropped", "?"),
                ", MSS {}".format(r["tcp_info"]["snd_mss"]) if r.get("tcp_info") else ""))
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--size", type=float, default=20.0, help="MB (10^6 bytes) per transfer")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--delay-ms", type=float, default=20.0,
                   help="per packet (each packet is delayed once): RTT = 2 x this")
    p.add_argument("--loss", type=float, default=1.0, help="percent of packets dropped")
    p.add_argument("--reorder", type=float, default=0.0, help="percent held back 10 ms (reordered)")
    p.add_argument("--duplicate", type=float, default=0.0, help="percent sent twice")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--transports", default=",".join(BASE), help="comma-separated: " + ", ".join(TRANSPORTS))
    p.add_argument("--what-if", action="store_true", help="also " + ", ".join(WHAT_IF))
    p.add_argument("--no-ceiling", action="store_true", help="skip the lossless runs")
    p.add_argument("--bound", type=float, default=300.0, help="seconds one transfer may take")
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", metavar="PATH", help="also write the JSON report there")
    p.add_argument("--sniff", metavar="DEVICE", help=argparse.SUPPRESS)  # internal: the size sniffer
    args = p.parse_args(argv)
    args.size_bytes = int(args.size * 1e6)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.sniff:
        return sniff(args.sniff)
    from tests.lab.natlab.skip import skip_reason
    from tests.lab.natlab.topology import Lab

    reason = skip_reason(tun=True)
    if reason:
        print("cannot run: " + reason, file=sys.stderr)
        return 2
    order = [t for t in args.transports.split(",") if t]
    if args.what_if:
        order += [t for t in WHAT_IF if t not in order]
    unknown = [t for t in order if t not in TRANSPORTS]
    if unknown:
        print("unknown transports: " + ", ".join(unknown), file=sys.stderr)
        return 2

    def log(*a):
        print(*a, file=sys.stderr, flush=True)

    impairment = dict(delay_ms=args.delay_ms, loss_pct=args.loss, reorder_pct=args.reorder,
                      duplicate_pct=args.duplicate)
    report = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  machine=machine(), crust=crust_version(), load_before=" ".join("%.2f" % x for x in os.getloadavg()),
                  size_mb=args.size, runs=args.runs, seed=args.seed, impairment=impairment,
                  order=order)
    rows = []
    started = time.monotonic()
    with Lab() as lab:
        snd = lab.public_host("snd")
        rcv = lab.public_host("rcv")
        report["tcp_default_cc"] = snd.run(["sysctl", "-n", "net.ipv4.tcp_congestion_control"],
                                           timeout=5).stdout.strip()
        lab.impair(**dict(impairment, seed=args.seed))
        report["rtt_ms"] = measure_rtt(lab, snd, rcv)
        lab.unimpair()
        log("RTT (UDP echo): {}".format(report["rtt_ms"]))
        if not args.no_ceiling:
            report["ceiling"] = {}
            for name in ("tcp", "quic"):
                row = one_run(lab, snd, rcv, name, args, dict(delay_ms=args.delay_ms), args.seed,
                              False, "ceiling-" + name)
                report["ceiling"][name] = row
                log("lossless {}: {:.2f} MB/s, forwarder {} pkt/s".format(
                    name, row["mbps"], row["forwarder"]["pps"]))
        for run in range(args.runs):
            names = order if run % 2 == 0 else list(reversed(order))
            for name in names:
                row = one_run(lab, snd, rcv, name, args, impairment, args.seed + run,
                              run == 0, "{}-{}".format(name, run))
                rows.append(row)
                log("run {} {}: {:.3f} MB/s in {:.1f} s, forwarder {} pkt/s ({:.0%} CPU), urgent RTT {} ms"
                    .format(run + 1, name, row["mbps"], row["seconds"], row["forwarder"]["pps"],
                            row["forwarder"]["cpu_share"], row["urgent_rtt_ms_median"]))
    report["load_after"] = " ".join("%.2f" % x for x in os.getloadavg())
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    report["summary"] = summarize(rows)
    for name, r in report["summary"].items():
        if TRANSPORTS[name][0] == "quic":
            extra = TRANSPORTS[name][1]
            r["datagram"] = int(extra[extra.index("--quic-datagram") + 1]) if "--quic-datagram" in extra else 1200
    report["rows"] = rows
    if args.save:
        with open(args.save, "w") as f:
            json.dump(report, f, indent=2)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(report))
        m = report["machine"]
        c = report["crust"]
        print("\n{} ({} cores), Linux {}, Python {}, Twisted {}, aioquic {}; crust at {}{}; {:.0f} s in all".format(
            m["cpu"], m["cores"], m["kernel"], m["python"], m["twisted"], m["aioquic"], c["commit"],
            " (modified: {})".format(", ".join(c["dirty"])) if c["dirty"] else "", report["wall_seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
