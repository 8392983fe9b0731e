"""Build a lab scenario by hand: ``python -m tests.lab.natlab shell --nat symmetric``.

Subcommands:
  shell    build, describe, open a shell in the first LAN host (or run
           --command there); everything is torn down when it exits
  up       build, describe, keep the lab until Ctrl-C
  kinds    print the NAT kinds and their RFC 4787 behaviour
  cleanup  remove namespaces left behind by dead lab processes
"""

import argparse
import os
import signal
import subprocess
import sys

from . import nat_rules
from .skip import SERVER_TOOLS, skip_reason
from .topology import Lab, cleanup_stale

HOST_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank"]


def build(args):
    """Build the scenario described by *args*; return (lab, first LAN host)."""
    lab = Lab(keep_logs=args.keep_logs)
    try:
        lab.public_host("seed")
        if args.stun or args.upnp:
            lab.start_stun()
        first = None
        names = iter(HOST_NAMES)
        for i, kind in enumerate(args.nat or []):
            nat = lab.nat("nat{}".format(i + 1), kind, upnp=args.upnp, hairpin=args.hairpin)
            for _ in range(args.hosts):
                host = nat.host(next(names))
                first = first or host
        if args.delay or args.loss or args.jitter:
            lab.impair(delay_ms=args.delay, jitter_ms=args.jitter, loss_pct=args.loss)
        return lab, first or lab["seed"]
    except BaseException:
        lab.teardown()
        raise


def scenario_env(lab, host):
    env = {"NATLAB_NODE": host.name, "NATLAB_SEED": lab["seed"].ip,
           "PS1": "[natlab {}] \\w# ".format(host.name)}
    if lab.stun:
        env["NATLAB_STUN"] = "{}:{}".format(*lab.stun.address)
    if host.nat is not None:
        env["NATLAB_GATEWAY"] = host.gateway
    return env


def cmd_shell(args):
    lab, host = build(args)
    with lab:
        print(lab.describe())
        env = scenario_env(lab, host)
        print("\nenvironment: " + " ".join("{}={}".format(k, v) for k, v in env.items()
                                          if k != "PS1"))
        if args.command:
            result = lab.run(host, ["sh", "-c", args.command], timeout=args.timeout,
                             check=False, env=env)
            sys.stdout.write(result.stdout + result.stderr)
            return result.returncode
        print("entering {} (exit the shell to tear the lab down)".format(host.name))
        argv = ["ip", "netns", "exec", host.ns, os.environ.get("SHELL", "/bin/bash"), "--norc"]
        return subprocess.call(argv, env=lab.env(env))


def cmd_up(args):
    lab, _ = build(args)
    with lab:
        print(lab.describe())
        print("\nlab is up; Ctrl-C tears it down")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_kinds(args):
    print("{:<16} {:<28} {}".format("kind", "mapping", "filtering"))
    print("{:<16} {:<28} {}".format("none (public)", "-", "-"))
    for kind, (mapping, filtering) in nat_rules.KINDS.items():
        print("{:<16} {:<28} {}".format(kind, mapping, filtering))
    print("{:<16} {:<28} {}".format("carrier-grade", "port-restricted x 2",
                                    "address-and-port-dependent"))
    return 0


def cmd_cleanup(args):
    for ns in cleanup_stale():
        print("removed", ns)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.lab.natlab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, func in (("shell", cmd_shell), ("up", cmd_up)):
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        p.add_argument("--nat", action="append", metavar="KIND",
                       help="add a NAT of KIND (repeatable): " + ", ".join(
                           list(nat_rules.KINDS) + ["carrier-grade"]))
        p.add_argument("--hosts", type=int, default=1, help="LAN hosts per NAT")
        p.add_argument("--upnp", action="store_true", help="run miniupnpd on the NATs")
        p.add_argument("--hairpin", action="store_true")
        p.add_argument("--stun", action="store_true", help="start the STUN server")
        p.add_argument("--delay", type=float, default=0.0, help="WAN delay, ms")
        p.add_argument("--jitter", type=float, default=0.0, help="WAN jitter, ms")
        p.add_argument("--loss", type=float, default=0.0, help="WAN loss, percent")
        p.add_argument("--keep-logs", action="store_true")
        if name == "shell":
            p.add_argument("--command", help="run this instead of an interactive shell")
            p.add_argument("--timeout", type=float, default=60.0)
    sub.add_parser("kinds").set_defaults(func=cmd_kinds)
    sub.add_parser("cleanup").set_defaults(func=cmd_cleanup)
    args = parser.parse_args(argv)
    if args.cmd in ("shell", "up"):
        reason = skip_reason(SERVER_TOOLS if (args.upnp or args.stun) else (),
                             tun=bool(args.delay or args.loss or args.jitter))
        if reason:
            parser.exit(2, reason + "\n")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
