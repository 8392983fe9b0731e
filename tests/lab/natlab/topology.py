"""The lab: network namespaces joined by veth pairs, with NAT routers.

Layout (one namespace per node, names ``<prefix><node name>``)::

    public hosts 198.51.100.10+ --+
                                   +-- internet router (198.51.100.1, 203.0.113.1)
    NAT WAN 203.0.113.10+ ---------+
      NAT LAN bridge "lan" 10.N.0.1/24 -- hosts 10.N.0.2+
      (carrier NAT: 100.64.N.1/24 -- inner NAT WANs 100.64.N.2+)

Each internet link is a routed point-to-point /32 pair (``peer``). Only
namespaces created here are ever configured: the root namespace's addresses,
routes, rules, sysctls and nftables are never touched.
"""

import atexit
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import weakref

from . import nat_rules, netns
from .impairment import Impairment
from .process import LabProcess
from .servers import UPNP_HTTP_PORT, Miniupnpd, Reflectors, StunServer, TurnServer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
PROBE = os.path.join(HERE, "probe.py")

INTERNET_PUBLIC_IP = "198.51.100.1"  # the internet router, as seen by public hosts
INTERNET_WAN_IP = "203.0.113.1"      # the internet router, as seen by NAT routers
PUBLIC_FIRST = 10                     # public hosts: 198.51.100.10 and up
WAN_FIRST = 10                        # NAT WAN addresses: 203.0.113.10 and up

PREFIX_RE = re.compile(r"^nl(\d+)-(\d+)-")
_lab_counter = itertools.count(1)

# Sysctls applied inside every namespace, and additionally inside routers.
NODE_SYSCTLS = {
    "net.ipv6.conf.all.disable_ipv6": 1,
    "net.ipv6.conf.default.disable_ipv6": 1,
}
ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
    "net.bridge.bridge-nf-call-iptables": 0,
    "net.bridge.bridge-nf-call-ip6tables": 0,
    "net.bridge.bridge-nf-call-arptables": 0,
}


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cleanup_stale():
    """Remove namespaces left by lab processes that no longer exist.

    Only names matching this module's prefix (``nl<pid>-<n>-``) whose pid is
    dead are touched. Returns the names removed.
    """
    removed = []
    for ns in netns.ns_list():
        match = PREFIX_RE.match(ns)
        if match and not _pid_alive(int(match.group(1))):
            _kill_ns_processes(ns)
            netns.ns_delete(ns)
            removed.append(ns)
    return removed


def _kill_ns_processes(ns):
    for pid in netns.ns_pids(ns):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


class Node:
    """A namespace in the lab; ``run``/``spawn`` execute programs inside it."""

    role = "node"

    def __init__(self, lab, name):
        self.lab = lab
        self.name = netns.check_name(name)
        self.ns = lab.prefix + name
        self.addresses = []

    def __repr__(self):
        return "<{} {} {}>".format(type(self).__name__, self.name, " ".join(self.addresses))

    @property
    def ip(self):
        """The node's primary address."""
        return self.addresses[0]

    def run(self, argv, timeout=10.0, check=True, env=None, input=None):
        return self.lab.run(self, argv, timeout=timeout, check=check, env=env, input=input)

    def spawn(self, argv, name=None, env=None, stdin=False):
        return self.lab.spawn(self, argv, name=name, env=env, stdin=stdin)

    def probe(self, *args, timeout=20.0):
        """Run ``probe.py ARGS`` here and return its JSON answer."""
        result = self.run([sys.executable, PROBE] + [str(a) for a in args], timeout=timeout)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def reflect(self, udp=(), tcp=(), contact=(), name="reflect"):
        """Start a ``probe.py reflect`` here on ``"ip:port"`` sockets; wait until ready."""
        argv = [sys.executable, PROBE, "reflect"]
        for option, values in (("--udp", udp), ("--tcp", tcp), ("--contact", contact)):
            for value in values:
                argv += [option, value]
        proc = self.spawn(argv, name=name)
        proc.wait_for_line(r"^ready$", timeout=10)
        return proc

    @property
    def enter_command(self):
        return "ip netns exec {} bash".format(self.ns)

    def _create(self, extra_sysctls=None):
        self.lab._namespaces.append(self.ns)  # first, so teardown sees partial work
        netns.ns_add(self.ns)
        settings = dict(NODE_SYSCTLS)
        settings.update(extra_sysctls or {})
        netns.sysctl(self.ns, settings)


class Host(Node):
    """An end host: public (on the internet) or on a NAT's LAN (``nat`` set)."""

    role = "host"

    def __init__(self, lab, name, nat=None):
        super().__init__(lab, name)
        self.nat = nat
        self.gateway = None
        self.iface = "eth0"

    @property
    def public(self):
        return self.nat is None


class Router(Node):
    role = "router"

    def _create(self, extra_sysctls=None):
        settings = dict(ROUTER_SYSCTLS)
        settings.update(extra_sysctls or {})
        super()._create(settings)


class Internet(Router):
    """The simulated internet: one router with a point-to-point link per node."""

    role = "internet"

    def __init__(self, lab):
        super().__init__(lab, "internet")
        self.addresses = [INTERNET_PUBLIC_IP, INTERNET_WAN_IP]
        self.links = {}  # node name -> (router-side interface, [node addresses])
        self._ports = itertools.count(0)

    def attach(self, node, iface, addresses, router_ip):
        """Link *node* (already created) to the internet with *addresses*."""
        port = "p{}".format(next(self._ports))
        netns.ip(self.ns, "link", "add", port, "type", "veth", "peer", "name", iface,
                 "netns", node.ns)
        first = addresses[0]
        node_cmds = ["addr add {}/32 peer {}/32 dev {}".format(first, router_ip, iface)]
        node_cmds += ["addr add {}/32 dev {}".format(a, iface) for a in addresses[1:]]
        node_cmds += ["link set {} up".format(iface),
                      "route add default via {} dev {}".format(router_ip, iface)]
        netns.ip_batch(node.ns, node_cmds)
        router_cmds = ["addr add {}/32 peer {}/32 dev {}".format(router_ip, first, port),
                       "link set {} up".format(port)]
        router_cmds += ["route add {}/32 dev {}".format(a, port) for a in addresses[1:]]
        netns.ip_batch(self.ns, router_cmds)
        self.links[node.name] = (port, list(addresses))
        return port


class Nat(Router):
    """A NAT router with a bridged LAN; see ``nat_rules`` for the behaviours."""

    role = "nat"

    def __init__(self, lab, name, kind, index, behind=None, carrier=False,
                 hairpin=False):
        super().__init__(lab, name)
        self.kind = nat_rules.canonical_kind(kind)
        self.index = index
        self.behind = behind
        self.carrier = carrier
        self.hairpin = hairpin
        base = "100.64.{}.".format(index) if carrier else "10.{}.0.".format(index)
        self._lan_base = base
        self.lan_ip = base + "1"
        self.lan_net = base + "0/24"
        self.wan_ip = None
        self.hosts = {}
        self.nats = {}
        self.upnp = None
        self._next_lan = itertools.count(2)

    @property
    def gateway_ip(self):
        """The router's LAN address: NAT-PMP/PCP clients talk to it."""
        return self.lan_ip

    @property
    def public_ip(self):
        """The address this NAT's traffic finally has on the internet."""
        return self.behind.public_ip if self.behind else self.wan_ip

    @property
    def mapping(self):
        return nat_rules.KINDS[self.kind][0]

    @property
    def filtering(self):
        return nat_rules.KINDS[self.kind][1]

    def _next_lan_ip(self):
        n = next(self._next_lan)
        if n > 254:
            raise ValueError("LAN of {} is full".format(self.name))
        return self._lan_base + str(n)

    def _build(self, trusted_udp_sources=()):
        self._create()
        netns.ip_batch(self.ns, [
            "link add lan type bridge",
            "addr add {}/24 dev lan".format(self.lan_ip),
            "link set lan up",
        ])
        if self.behind is None:
            self.wan_ip = self.lab._next_wan_ip()
            self.addresses = [self.wan_ip]
            self.lab.internet.attach(self, "wan", [self.wan_ip], INTERNET_WAN_IP)
        else:
            self.wan_ip = self.behind._plug(self, "wan")
            self.addresses = [self.wan_ip]
        netns.nft(self.ns, nat_rules.ruleset(
            self.kind, "wan", "lan", self.wan_ip, hairpin=self.hairpin,
            trusted_udp_sources=trusted_udp_sources))

    def _plug(self, node, iface):
        """Connect *node* to this LAN through *iface*; return its LAN address."""
        ip = self._next_lan_ip()
        port = "h{}".format(ip.rsplit(".", 1)[1])
        netns.ip(self.ns, "link", "add", port, "type", "veth", "peer", "name", iface,
                 "netns", node.ns)
        netns.ip_batch(self.ns, ["link set {} master lan up".format(port)])
        netns.ip_batch(node.ns, [
            "addr add {}/24 dev {}".format(ip, iface),
            "link set {} up".format(iface),
            "route add default via {} dev {}".format(self.lan_ip, iface),
        ])
        return ip

    def host(self, name):
        """Create a host on this NAT's LAN."""
        host = Host(self.lab, name, nat=self)
        self.lab._register(host)
        host._create()
        host.addresses = [self._plug(host, "eth0")]
        host.gateway = self.lan_ip
        self.hosts[name] = host
        return host

    def nat(self, name, kind="port-restricted", **options):
        """Create a NAT router whose WAN is on this NAT's LAN (double NAT)."""
        return self.lab.nat(name, kind, behind=self, **options)

    # -- miniupnpd ---------------------------------------------------------

    @property
    def upnp_url(self):
        """miniupnpd's root description URL (for ``upnpc -u``)."""
        return "http://{}:{}/rootDesc.xml".format(self.lan_ip, UPNP_HTTP_PORT)

    def upnpc(self, host, *args, timeout=15.0):
        """Run ``upnpc -u <url> ARGS`` on LAN *host*; return its stdout."""
        return host.run(["upnpc", "-u", self.upnp_url] + [str(a) for a in args],
                        timeout=timeout, check=False).stdout

    def natpmpc(self, host, *args, timeout=15.0):
        """Run ``natpmpc -g <gateway> ARGS`` on LAN *host*; return its stdout."""
        return host.run(["natpmpc", "-g", self.lan_ip] + [str(a) for a in args],
                        timeout=timeout, check=False).stdout

    def upnp_list(self, host):
        """miniupnpd's mappings as listed by ``upnpc -l`` run on LAN *host*."""
        return parse_upnpc_list(self.upnpc(host, "-l"))

    def port_mappings(self):
        """Port mappings currently in the router's nftables (miniupnpd's DNATs).

        A list of dicts: ``proto``, ``external_port``, ``internal_ip``,
        ``internal_port``.
        """
        out = self.run(["nft", "-j", "list", "chain", "inet", "filter",
                        "prerouting_miniupnpd"]).stdout
        return parse_dnat_rules(json.loads(out))


_PROTOCOLS = {6: "tcp", 17: "udp", "tcp": "tcp", "udp": "udp"}


def parse_dnat_rules(data):
    """Extract port mappings from ``nft -j`` output of a chain of DNAT rules.

    miniupnpd matches the protocol as a raw payload (``@nh,72,8``) and the
    port as ``th dport``; ``meta l4proto`` and ``udp/tcp dport`` work too.
    """
    mappings = []
    for item in data.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        proto = dport = target = None
        for stmt in rule.get("expr", []):
            if "dnat" in stmt:
                target = stmt["dnat"]
            match = stmt.get("match")
            if not match:
                continue
            left, right = match.get("left", {}), match.get("right")
            payload = left.get("payload", {})
            if payload.get("field") == "dport":
                dport = right
                proto = _PROTOCOLS.get(payload.get("protocol"), proto)
            elif (payload.get("base"), payload.get("offset"), payload.get("len")) == ("nh", 72, 8):
                proto = _PROTOCOLS.get(right, right)
            elif left.get("meta", {}).get("key") == "l4proto":
                proto = _PROTOCOLS.get(right, right)
        if dport is not None and target:
            mappings.append({"proto": proto, "external_port": dport,
                             "internal_ip": target.get("addr"),
                             "internal_port": target.get("port", dport)})
    return mappings


_UPNPC_LINE = re.compile(r"^\s*\d+\s+(TCP|UDP)\s+(\d+)->([\d.]+):(\d+)\s+'([^']*)'\s+'([^']*)'\s+(\d+)")


def parse_upnpc_list(text):
    """Parse the mapping table printed by ``upnpc -l``."""
    mappings = []
    for line in text.splitlines():
        m = _UPNPC_LINE.match(line)
        if m:
            mappings.append({"proto": m.group(1).lower(), "external_port": int(m.group(2)),
                             "internal_ip": m.group(3), "internal_port": int(m.group(4)),
                             "description": m.group(5), "remote_host": m.group(6),
                             "lease": int(m.group(7))})
    return mappings


class Lab:
    """A throw-away NAT lab. Use as a context manager or call ``teardown()``.

    ``teardown`` is idempotent, never raises for already-gone pieces, and is
    also registered with ``atexit``; stale labs of dead processes are removed
    when a new lab starts.
    """

    def __init__(self, keep_logs=None):
        self.prefix = "nl{}-{}-".format(os.getpid(), next(_lab_counter))
        if keep_logs is None:
            keep_logs = bool(os.environ.get("NATLAB_KEEP_LOGS"))
        self.keep_logs = keep_logs
        self.logdir = tempfile.mkdtemp(prefix="natlab-" + self.prefix)
        self.nodes = {}
        self.stun = None
        self.turn = None
        self.impairment = None
        self.blocked = None  # (a, b): the public addresses ``block`` keeps apart
        self._namespaces = []
        self._processes = []
        self._torn_down = False
        self._nat_index = itertools.count(1)
        self._public_ips = itertools.count(PUBLIC_FIRST)
        self._wan_ips = itertools.count(WAN_FIRST)
        self._atexit = _weak_teardown(self)
        atexit.register(self._atexit)
        try:
            cleanup_stale()
            self.internet = Internet(self)
            self._register(self.internet)
            self.internet._create()
            self.internet.run(["ip", "addr", "add", INTERNET_PUBLIC_IP + "/32", "dev", "lo"])
            self.internet.run(["ip", "addr", "add", INTERNET_WAN_IP + "/32", "dev", "lo"])
        except BaseException:
            self.teardown()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()
        return False

    def __getitem__(self, name):
        return self.nodes[name]

    # -- building ------------------------------------------------------------

    def _register(self, node):
        if node.name in self.nodes:
            raise ValueError("lab already has a node named {!r}".format(node.name))
        self.nodes[node.name] = node

    def _next_public_ip(self):
        n = next(self._public_ips)
        if n > 254:
            raise ValueError("out of public host addresses")
        return "198.51.100.{}".format(n)

    def _next_wan_ip(self):
        n = next(self._wan_ips)
        if n > 254:
            raise ValueError("out of NAT WAN addresses")
        return "203.0.113.{}".format(n)

    def public_host(self, name, addresses=1):
        """A host directly on the internet (no NAT) with *addresses* IPs."""
        host = Host(self, name)
        self._register(host)
        host._create()
        host.addresses = [self._next_public_ip() for _ in range(addresses)]
        host.gateway = INTERNET_PUBLIC_IP
        self.internet.attach(host, "eth0", host.addresses, INTERNET_PUBLIC_IP)
        return host

    def nat(self, name, kind="port-restricted", upnp=False, hairpin=False,
            behind=None, carrier=False):
        """A NAT router of *kind* (see ``nat_rules.KINDS``) with an empty LAN.

        ``kind="carrier-grade"`` builds two port-restricted NATs in a row: a
        carrier NAT ``<name>-cgn`` (LAN 100.64.N.0/24) and the home NAT
        *name* behind it, which is returned (its ``behind`` is the carrier).
        ``behind`` puts the WAN on another NAT's LAN; ``carrier=True`` numbers
        the LAN from 100.64.0.0/10. ``upnp=True`` starts miniupnpd (and the
        lab's STUN server, which its self-test needs).
        """
        if kind == "carrier-grade":
            outer = self.nat(name + "-cgn", "port-restricted", carrier=True, behind=behind)
            return self.nat(name, "port-restricted", upnp=upnp, hairpin=hairpin, behind=outer)
        nat = Nat(self, name, kind, next(self._nat_index), behind=behind,
                  carrier=carrier, hairpin=hairpin)
        self._register(nat)
        trusted = ()
        if upnp:
            trusted = self.start_stun().sockets
        nat._build(trusted)
        if behind is not None:
            behind.nats[name] = nat
        if upnp:
            nat.upnp = Miniupnpd(self, nat, self.stun)
        return nat

    # -- servers ------------------------------------------------------------

    def start_stun(self, name="stun"):
        """Start coturn (STUN only, RFC 5780: two addresses x two ports) once."""
        if self.stun is None:
            host = self.public_host(name, addresses=2)
            self.stun = StunServer(self, host)
        return self.stun

    def start_turn(self, name="turn", **options):
        """Start coturn as a TURN server with long-term credentials on public host *name* (see ``TurnServer``)."""
        if self.turn is None:
            self.turn = TurnServer(self, self.public_host(name), **options)
        return self.turn

    @property
    def stun_address(self):
        """``(ip, port)`` of the STUN server's primary socket."""
        return self.start_stun().address

    def start_reflectors(self, names=("refl1", "refl2"), ports=(7000, 7001)):
        """Two public reflector hosts, two ports each (see ``probe.py``)."""
        return Reflectors(self, names, ports)

    def impair(self, delay_ms=0.0, jitter_ms=0.0, loss_pct=0.0, reorder_pct=0.0,
               duplicate_pct=0.0, reorder_gap_ms=10.0, seed=0, links=None):
        """Impair forwarded traffic on the internet links of *links*.

        *links* are nodes attached to the internet (public hosts, NATs); by
        default all of them. Each impaired packet passes the forwarder once,
        so a round trip between two hosts gets 2 x *delay_ms*. Links made
        later are not impaired. Replaces any previous impairment; returns the
        ``Impairment``.
        """
        self.unimpair()
        if links is None:
            names = list(self.internet.links)
        else:
            names = [self._wan_node(n).name for n in links]
        self.impairment = Impairment(self, names, dict(
            delay=delay_ms, jitter=jitter_ms, loss=loss_pct, reorder=reorder_pct,
            duplicate=duplicate_pct, reorder_gap=reorder_gap_ms, seed=seed))
        return self.impairment

    def unimpair(self):
        """Stop the impairment forwarder; return its counters (or None)."""
        stats = None
        if self.impairment is not None:
            stats = self.impairment.stop()
            self.impairment = None
        return stats

    def block(self, a, b):
        """Drop everything between *a* and *b* (public IP addresses) at the internet router, both ways.

        Traffic of either with anyone else still flows. Replaces any earlier
        block; ``unblock`` lifts it.
        """
        rules = "\n".join("    ip saddr {} ip daddr {} counter drop".format(x, y) for x, y in ((a, b), (b, a)))
        self.unblock()
        netns.nft(self.internet.ns, "table inet natlab_block {{\n  chain forward {{\n"
                  "    type filter hook forward priority -10; policy accept;\n{}\n  }}\n}}\n".format(rules))
        self.blocked = (a, b)

    def unblock(self):
        """Lift the block of ``block`` (nothing if there is none); returns the packets it dropped."""
        if self.blocked is None:
            return 0
        listing = netns.run(netns.exec_prefix(self.internet.ns) + ["nft", "list", "table", "inet", "natlab_block"],
                            check=False).stdout
        dropped = sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))
        netns.run(netns.exec_prefix(self.internet.ns) + ["nft", "delete", "table", "inet", "natlab_block"])
        self.blocked = None
        return dropped

    def _wan_node(self, node):
        node = self.nodes[node] if isinstance(node, str) else node
        while isinstance(node, (Host, Nat)) and node.name not in self.internet.links:
            node = node.nat if isinstance(node, Host) else node.behind
        if node is None or node.name not in self.internet.links:
            raise ValueError("{!r} has no internet link".format(node))
        return node

    # -- processes ----------------------------------------------------------

    def env(self, extra=None):
        """Environment for lab processes: ours, repo root on PYTHONPATH."""
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + path if path else "")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def _node(self, node):
        return self.nodes[node] if isinstance(node, str) else node

    def run(self, node, argv, timeout=10.0, check=True, env=None, input=None):
        """Run *argv* in *node*'s namespace; bounded; return CompletedProcess."""
        node = self._node(node)
        return netns.run(netns.exec_prefix(node.ns) + [str(a) for a in argv],
                         timeout=timeout, check=check, env=self.env(env), input=input)

    def spawn(self, node, argv, name=None, env=None, stdin=False):
        """Start *argv* in *node*'s namespace; return a ``LabProcess``.

        Its output goes to ``<logdir>/<node>-<name>.log``; it is stopped at
        teardown at the latest.
        """
        node = self._node(node)
        name = name or os.path.basename(str(argv[0]))
        log = os.path.join(self.logdir, "{}-{}.log".format(node.name, name))
        proc = LabProcess(netns.exec_prefix(node.ns) + [str(a) for a in argv],
                          "{}:{}".format(node.name, name), env=self.env(env),
                          log_path=log, cwd=REPO_ROOT, stdin=stdin)
        self._processes.append(proc)
        return proc

    # -- description and teardown -------------------------------------------

    def describe(self):
        """A human-readable map of the lab, with commands to enter each node."""
        lines = ["NAT lab {} (logs in {})".format(self.prefix, self.logdir)]
        for node in self.nodes.values():
            if isinstance(node, Internet):
                info = "internet router {}".format(", ".join(node.addresses))
                if self.impairment:
                    info += ", impaired: {}".format(self.impairment.describe())
            elif isinstance(node, Nat):
                info = "NAT {} (mapping {}, filtering {}), wan {}, lan {} gateway {}".format(
                    node.kind, node.mapping, node.filtering, node.wan_ip, node.lan_net,
                    node.lan_ip)
                if node.behind:
                    info += ", behind {}".format(node.behind.name)
                if node.hairpin:
                    info += ", hairpinning"
                if node.upnp:
                    info += ", miniupnpd (UPnP {}, NAT-PMP/PCP {}:5351)".format(
                        node.upnp_url, node.lan_ip)
            elif node.public:
                info = "public host {}".format(", ".join(node.addresses))
                if self.stun and node is self.stun.host:
                    info += ", STUN {}".format(" ".join(self.stun.sockets_text))
            else:
                info = "host {} behind {} (gateway {})".format(node.ip, node.nat.name, node.gateway)
            lines.append("  {:<10} {}".format(node.name, info))
            lines.append("  {:<10}   enter: {}".format("", node.enter_command))
        return "\n".join(lines)

    def teardown(self):
        """Stop every process and delete every namespace of this lab."""
        if self._torn_down:
            return
        self._torn_down = True
        atexit.unregister(self._atexit)
        errors = []
        if self.impairment is not None:
            try:
                self.impairment.stop()
            except Exception as e:  # keep tearing down
                errors.append(e)
            self.impairment = None
        for proc in reversed(self._processes):
            try:
                proc.stop()
            except Exception as e:
                errors.append(e)
        for ns in reversed(self._namespaces):
            _kill_ns_processes(ns)
            netns.ns_delete(ns)
        left = set(self._namespaces) & set(netns.ns_list())
        if not self.keep_logs:
            shutil.rmtree(self.logdir, ignore_errors=True)
        if left:
            errors.append(RuntimeError("namespaces not removed: {}".format(sorted(left))))
        if errors:
            raise errors[0]


def _weak_teardown(lab):
    ref = weakref.ref(lab)

    def teardown():
        lab = ref()
        if lab is not None:
            lab.teardown()
    return teardown
