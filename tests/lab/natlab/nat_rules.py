"""nftables rulesets for the lab's NAT routers, one per NAT behaviour.

Every router gets one table, ``inet filter`` (the table miniupnpd's nftables
backend writes to), holding:

* ``prerouting``/``postrouting`` NAT chains that first jump to miniupnpd's
  ``prerouting_miniupnpd``/``postrouting_miniupnpd`` chains;
* ``forward`` (policy drop) jumping to miniupnpd's ``miniupnpd`` chain;
* ``input`` (policy drop): unsolicited packets from the WAN are dropped
  silently, never answered with ICMP or RST, as real NAT boxes do;
* for full and restricted cone, and for hairpinning, the dynamic map ``cone``
  of outbound flows, ``(proto, external port) -> (LAN address, LAN port)``,
  filled by the ``track`` chain right after source NAT, and for restricted
  cone the dynamic set ``peers`` of ``(proto, external port, remote
  address)`` the LAN host has sent to. Inbound packets are DNATed through the
  map (restricted cone: only from a remote address in the set).

Behaviour in RFC 4787 terms (mapping / filtering), measured by
``tests/lab/test_natlab.py``; TCP behaves the same way (RFC 5382):

=================  ==========================  =============================
kind               mapping                     filtering
=================  ==========================  =============================
full-cone          endpoint-independent        endpoint-independent
restricted-cone    endpoint-independent        address-dependent
port-restricted    endpoint-independent        address-and-port-dependent
symmetric          address-and-port-dependent  address-and-port-dependent
                   (random ports)
udp-blocked        port-restricted for TCP; all UDP through the router dropped
=================  ==========================  =============================

Mappings of full and restricted cone keep the masquerade port (port
preservation). The ``cone`` map and ``peers`` set entries live 30 s after the
last outbound packet (like conntrack's unreplied UDP timeout). Limitation:
Linux masquerade lets two LAN hosts share one external port (for different
remote endpoints); the cone map then belongs to whichever host sent first.
"""

KINDS = {
    "full-cone": ("endpoint-independent", "endpoint-independent"),
    "restricted-cone": ("endpoint-independent", "address-dependent"),
    "port-restricted": ("endpoint-independent", "address-and-port-dependent"),
    "symmetric": ("address-and-port-dependent", "address-and-port-dependent"),
    "udp-blocked": ("endpoint-independent (TCP only)", "address-and-port-dependent (TCP only)"),
}

ALIASES = {
    "full": "full-cone",
    "restricted": "restricted-cone",
    "port-restricted-cone": "port-restricted",
    "masquerade": "port-restricted",
    "no-udp": "udp-blocked",
}

#: Seconds a cone mapping outlives the last outbound packet.
CONE_TIMEOUT = 30


def canonical_kind(kind):
    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise ValueError("unknown NAT kind {!r}; known: {}".format(
            kind, ", ".join(sorted(KINDS) + ["carrier-grade"])))
    return kind


def ruleset(kind, wan_if, lan_if, wan_ip, hairpin=False, trusted_udp_sources=()):
    """Return the nftables ruleset text for a router of *kind*.

    *trusted_udp_sources* are ``(ip, port)`` pairs allowed to send UDP to the
    router itself (the STUN server, for miniupnpd's self-test with changed
    address/port replies).
    """
    kind = canonical_kind(kind)
    cone = kind in ("full-cone", "restricted-cone")
    track = cone or hairpin
    restricted = kind == "restricted-cone"
    v = dict(wan=wan_if, lan=lan_if, wan_ip=wan_ip, timeout=CONE_TIMEOUT)
    lines = ["table inet filter {"]
    if track:
        lines += [
            "  map cone { type inet_proto . inet_service : ipv4_addr . inet_service;",
            "             flags dynamic,timeout; timeout %(timeout)ds; }" % v]
    if restricted:
        lines += [
            "  set peers { type inet_proto . inet_service . ipv4_addr;",
            "              flags dynamic,timeout; timeout %(timeout)ds; }" % v]
    lines += [
        "  chain miniupnpd { }",
        "  chain prerouting_miniupnpd { }",
        "  chain postrouting_miniupnpd { }",
        "",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        "    jump prerouting_miniupnpd",
    ]
    dnat = "dnat ip to meta l4proto . th dport map @cone"
    if cone:
        match = 'iifname "%(wan)s" ip daddr %(wan_ip)s meta l4proto { tcp, udp }' % v
        if restricted:
            match += " meta l4proto . th dport . ip saddr @peers"
        lines.append("    " + match + " " + dnat)
    if hairpin:
        lines.append('    iifname "%(lan)s" ip daddr %(wan_ip)s meta l4proto { tcp, udp } ' % v + dnat)
    lines += [
        "  }",
        "",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        "    jump postrouting_miniupnpd",
        # Only forwarded LAN traffic: the router's own (miniupnpd's STUN
        # self-test) keeps its ports, also on a symmetric NAT.
        '    iifname "%(lan)s" oifname "%(wan)s" masquerade%(random)s' % dict(
            v, random=" random" if kind == "symmetric" else ""),
    ]
    if hairpin:
        lines.append('    iifname "%(lan)s" oifname "%(lan)s" ct status dnat snat ip to %(wan_ip)s' % v)
    lines.append("  }")
    if track:
        out_key = "meta l4proto . ct reply proto-dst"
        in_key = "meta l4proto . ct original proto-dst"
        lines += [
            "",
            "  chain track {",
            "    type filter hook postrouting priority srcnat + 10; policy accept;",
            '    iifname "%(lan)s" oifname "%(wan)s" meta l4proto { tcp, udp } ct direction original' % v
            + " update @cone { %s : ct original ip saddr . ct original proto-src }" % out_key
            + (" update @peers { %s . ct original ip daddr }" % out_key if restricted else ""),
            # Replies of inbound (DNATed) flows keep their mapping alive too.
            '    iifname "%(lan)s" oifname "%(wan)s" meta l4proto { tcp, udp } ct direction reply ct status dnat' % v
            + " update @cone { %s : ct reply ip saddr . ct reply proto-src }" % in_key
            + (" update @peers { %s . ct original ip saddr }" % in_key if restricted else ""),
            "  }",
        ]
    lines += [
        "",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
    ]
    if kind == "udp-blocked":
        lines += ['    iifname "%(wan)s" meta l4proto udp drop' % v,
                  '    oifname "%(wan)s" meta l4proto udp drop' % v]
    lines += [
        "    ct state established,related accept",
        "    ct state invalid drop",
        '    iifname "%(lan)s" oifname "%(wan)s" accept' % v,
        "    jump miniupnpd",
    ]
    if cone:
        lines.append('    iifname "%(wan)s" ct status dnat accept' % v)
    if hairpin:
        lines.append('    iifname "%(lan)s" oifname "%(lan)s" accept' % v)
    lines += [
        "  }",
        "",
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        '    iif "lo" accept',
        "    ct state established,related accept",
        '    iifname "%(lan)s" accept' % v,
    ]
    for ip, port in trusted_udp_sources:
        lines.append('    iifname "%s" ip saddr %s udp sport %d accept' % (wan_if, ip, port))
    lines += ["  }", "}", ""]
    return "\n".join(lines)

