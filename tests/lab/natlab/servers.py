"""Real servers inside the lab: coturn (STUN), miniupnpd, UDP/TCP reflectors."""

import os
import time
import uuid

from .process import ProcessError

STUN_PORTS = (3478, 3479)
UPNP_HTTP_PORT = 5000
NATPMP_PORT = 5351


def _wait_listening(node, sockets, proto="u", timeout=10.0, proc=None):
    """Wait until every ``(ip, port)`` in *sockets* is bound in *node*.

    A wildcard bind (``*``, ``0.0.0.0``, also with ``%iface``) counts.
    """
    deadline = time.monotonic() + timeout
    while True:
        out = node.run(["ss", "-Hln" + proto], check=False).stdout
        bound = set()
        for line in out.splitlines():
            fields = line.split()
            if len(fields) > 3:
                host, _, port = fields[3].rpartition(":")
                bound.add((host.split("%")[0], port))
        missing = [s for s in sockets if not ({(s[0], str(s[1])), ("*", str(s[1])),
                                                ("0.0.0.0", str(s[1]))} & bound)]
        if not missing:
            return
        if proc is not None and not proc.running():
            raise ProcessError("{} exited ({}):\n{}".format(proc.name, proc.returncode, proc.output))
        if time.monotonic() > deadline:
            raise ProcessError("{}: {} not listening after {}s (bound: {})".format(
                node.name, missing, timeout, sorted(bound)))
        time.sleep(0.02)


class StunServer:
    """coturn as a plain STUN server (no TURN, TLS or CLI) on a public host.

    Listens on both host addresses and both ``STUN_PORTS`` so RFC 5780
    CHANGE-REQUEST tests work; logs go to the lab's log directory.
    """

    def __init__(self, lab, host, ports=STUN_PORTS):
        self.lab = lab
        self.host = host
        self.ports = tuple(ports)
        ip1, ip2 = host.addresses[:2]
        self.address = (ip1, self.ports[0])
        self.alt_port_address = (ip1, self.ports[1])
        self.alt_ip_address = (ip2, self.ports[0])
        self.alt_address = (ip2, self.ports[1])
        self.sockets = [(ip, port) for ip in (ip1, ip2) for port in self.ports]
        self.log_path = os.path.join(lab.logdir, "turnserver.log")
        conf = os.path.join(lab.logdir, "turnserver.conf")
        with open(conf, "w") as f:
            f.write("\n".join([
                "listening-ip={}".format(ip1),
                "listening-ip={}".format(ip2),
                "listening-port={}".format(self.ports[0]),
                "alt-listening-port={}".format(self.ports[1]),
                "stun-only", "no-tls", "no-dtls", "no-cli", "simple-log",
                "no-software-attribute",
                "log-file={}".format(self.log_path),
                "pidfile={}".format(os.path.join(lab.logdir, "turnserver.pid")),
                "userdb={}".format(os.path.join(lab.logdir, "turndb.sqlite")),
                "",
            ]))
        self.proc = lab.spawn(host, ["turnserver", "-c", conf], name="turnserver")
        _wait_listening(host, self.sockets, "u", proc=self.proc)

    @property
    def sockets_text(self):
        return ["{}:{}".format(ip, port) for ip, port in self.sockets]

    def stop(self):
        return self.proc.stop()


class TurnServer:
    """coturn as a TURN server (RFC 8656) with long-term credentials on a public host.

    ``lt-cred-mech`` with one user (``username``/``password``) in ``realm``,
    relaying UDP on the host's address (ports ``relay_ports``); it answers
    STUN Binding requests too. ``lifetime`` caps allocations
    (``max-allocate-lifetime``), ``nonce_lifetime`` makes nonces go stale
    (``stale-nonce``), ``permission_lifetime`` and ``channel_lifetime``
    shorten those; ``verbose`` logging, so ``log`` shows every allocation,
    refresh (``refreshed, ... lifetime=N``; ``lifetime=0`` is a
    deallocation), permission and channel binding.
    """

    def __init__(self, lab, host, port=3478, username="crust", password="lab-secret", realm="crust.lab",
                 lifetime=None, nonce_lifetime=None, permission_lifetime=None, channel_lifetime=None,
                 relay_ports=(49152, 49999)):
        self.lab = lab
        self.host = host
        self.address = (host.ip, port)
        self.username = username
        self.password = password
        self.realm = realm
        self.log_path = os.path.join(lab.logdir, "turnserver-turn.log")
        conf = os.path.join(lab.logdir, "turnserver-turn.conf")
        lines = [
            "listening-ip={}".format(host.ip),
            "relay-ip={}".format(host.ip),
            "listening-port={}".format(port),
            "min-port={}".format(relay_ports[0]),
            "max-port={}".format(relay_ports[1]),
            "lt-cred-mech",
            "user={}:{}".format(username, password),
            "realm={}".format(realm),
            "no-tls", "no-dtls", "no-tcp", "no-cli", "simple-log", "verbose",
            "no-software-attribute",
            "log-file={}".format(self.log_path),
            "pidfile={}".format(os.path.join(lab.logdir, "turnserver-turn.pid")),
            "userdb={}".format(os.path.join(lab.logdir, "turndb-turn.sqlite")),
        ]
        for option, value in (("max-allocate-lifetime", lifetime), ("stale-nonce", nonce_lifetime),
                              ("permission-lifetime", permission_lifetime),
                              ("channel-lifetime", channel_lifetime)):
            if value is not None:
                lines.append("{}={}".format(option, value))
        with open(conf, "w") as f:
            f.write("\n".join(lines + [""]))
        self.proc = lab.spawn(host, ["turnserver", "-c", conf], name="turnserver-turn")
        _wait_listening(host, [self.address], "u", proc=self.proc)

    @property
    def url(self):
        """What the lab's node agent takes: ``udp:IP:PORT,USER,PASSWORD``."""
        return "udp:{}:{},{},{}".format(self.address[0], self.address[1], self.username, self.password)

    def log(self):
        """coturn's log so far (its file: ``simple-log`` writes it as is)."""
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        return self.proc.stop()


class Miniupnpd:
    """miniupnpd on a NAT router: UPnP IGD, NAT-PMP and PCP on the LAN side.

    ``ext_perform_stun`` against the lab's STUN server lets it forward ports
    although its WAN address is in a documentation range (see the notes).
    """

    def __init__(self, lab, nat, stun, timeout=20.0):
        self.lab = lab
        self.nat = nat
        d = lab.logdir
        self.conf_path = os.path.join(d, "miniupnpd-{}.conf".format(nat.name))
        stun_ip, stun_port = stun.address
        with open(self.conf_path, "w") as f:
            f.write("\n".join([
                "ext_ifname=wan",
                "listening_ip=lan",
                "http_port={}".format(UPNP_HTTP_PORT),
                "enable_upnp=yes",
                "enable_natpmp=yes",
                "secure_mode=yes",
                "system_uptime=yes",
                "ext_perform_stun=yes",
                "ext_stun_host={}".format(stun_ip),
                "ext_stun_port={}".format(stun_port),
                "lease_file={}".format(os.path.join(d, "upnp-{}.leases".format(nat.name))),
                "uuid={}".format(uuid.uuid4()),
                "friendly_name=natlab {}".format(nat.name),
                "allow 1024-65535 {} 1024-65535".format(nat.lan_net),
                "deny 0-65535 0.0.0.0/0 0-65535",
                "",
            ]))
        self.proc = lab.spawn(nat, ["miniupnpd", "-d", "-f", self.conf_path,
                                    "-P", os.path.join(d, "miniupnpd-{}.pid".format(nat.name))],
                              name="miniupnpd")
        _wait_listening(nat, [(nat.lan_ip, UPNP_HTTP_PORT)], "t", timeout=timeout,
                        proc=self.proc)

    @property
    def forwarding(self):
        """Whether miniupnpd's STUN self-test enabled port forwarding."""
        for line in reversed(self.proc.lines):
            if "Port forwarding is now" in line:
                return line.rstrip().endswith("enabled")
        return None

    def stop(self):
        return self.proc.stop()


class Reflectors:
    """Reflector processes (``probe.py reflect``) on two public hosts.

    Addresses as ``"ip:port"`` strings: ``primary`` (host 1, port 1),
    ``alt_port`` (host 1, port 2), ``alt_ip`` (host 2, port 1) and
    ``alt_both`` (host 2, port 2); UDP and TCP on all of them.
    """

    def __init__(self, lab, names, ports):
        self.hosts = [lab.public_host(name) for name in names]
        self.procs = []
        for host in self.hosts:
            sockets = ["{}:{}".format(host.ip, port) for port in ports]
            self.procs.append(host.reflect(udp=sockets, tcp=sockets))
        (a, b), (p, q) = [h.ip for h in self.hosts], ports
        self.primary = "{}:{}".format(a, p)
        self.alt_port = "{}:{}".format(a, q)
        self.alt_ip = "{}:{}".format(b, p)
        self.alt_both = "{}:{}".format(b, q)

    def nat_test(self, host, tries=3, wait=0.3):
        """Run ``probe.py nat-test`` on *host* against these reflectors."""
        return host.probe("nat-test", "--primary", self.primary, "--alt-port", self.alt_port,
                          "--alt-ip", self.alt_ip, "--alt-both", self.alt_both,
                          "--tries", tries, "--wait", wait)
