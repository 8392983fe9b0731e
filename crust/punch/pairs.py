"""
Candidate pairs: which remote address to try, in what order, from which socket.

Pure logic (no I/O).  L{pair_order} pairs our candidates with the peer's for
one transport; L{remote_targets} is the common case of a node with a single
socket, where a pair is just a remote address.

The order, best first, and why:

 1. B{LAN}: a remote C{host} candidate on one of our private subnets (the
    same /24 for IPv4, /64 for IPv6), paired with our C{host} candidate on
    that subnet.  No NAT lies between the two, so nothing needs punching,
    the path is the shortest, and it works where the NAT cannot hairpin.
    Two loopback addresses (both ends on one machine) count as LAN too.
 2. B{mapped}: a port the peer's gateway holds open for it (PCP, NAT-PMP,
    UPnP).  It accepts inbound packets without any punching.
 3. B{server- or peer-reflexive} (C{srflx}, C{prflx}): the peer's NAT
    mapping as seen from outside.  The punch target proper: it opens once
    both sides' checks have crossed their own NATs.
 4. B{public host}: a global address on the peer's own interface.  A host
    without NAT also reports it as reflexive, and the two merge in tier 3;
    one nobody has observed from outside may be stale or firewalled.
 5. B{other private host}: a private address on a subnet we do not share.
    Reachable only through routing we cannot see (a VPN, a site with several
    subnets), so it comes last; a check sent there costs one small packet.

Within a tier the peer's own order is kept, then ours.  Never paired:
different transports; IPv4 with IPv6 (a v4-mapped IPv6 address is not used
at all); a loopback address unless both ends are loopback (elsewhere it
would reach ourselves); link-local, multicast and unspecified addresses
(an address carries no scope id, and these name no single peer).

Bounds: at most L{MAX_REMOTE} remote candidates are looked at (the peer
chose them), and at most C{max_pairs} pairs come out; a pair (or target)
appears once, in its best tier.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Hashable, Iterable, Sequence
from typing import TypeVar

from crust.address import Address, is_global
from crust.candidates import Candidate, CandidateKind

MAX_PAIRS = 32
MAX_REMOTE = 64

_TIER_LAN = 0
_TIER_MAPPED = 1
_TIER_REFLEXIVE = 2
_TIER_PUBLIC_HOST = 3
_TIER_PRIVATE_HOST = 4

_PREFIX = {4: 24, 6: 64}

K = TypeVar("K", bound=Hashable)


def _family(a: Address) -> int:
    return a.ip.version


def _usable(a: Address) -> bool:
    ip = a.ip
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return False
    return not (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None)


def _same_private_subnet(a: Address, b: Address) -> bool:
    family = _family(a)
    if family != _family(b) or is_global(a.host) or is_global(b.host):
        return False
    net = ipaddress.ip_network(f"{a.host}/{_PREFIX[family]}", strict=False)
    return b.ip in net


def _remote_tier(remote: Candidate) -> int:
    """The tier of a remote candidate that is not on our LAN (see the module docstring)."""
    if remote.kind is CandidateKind.MAPPED:
        return _TIER_MAPPED
    if remote.kind in (CandidateKind.SRFLX, CandidateKind.PRFLX):
        return _TIER_REFLEXIVE
    return _TIER_PUBLIC_HOST if is_global(remote.address.host) else _TIER_PRIVATE_HOST


def _pair_tier(local: Candidate, remote: Candidate) -> int | None:
    """The tier of one pair, or C{None} when the two cannot be paired."""
    la, ra = local.address, remote.address
    if la.transport != ra.transport or _family(la) != _family(ra):
        return None
    if not (_usable(la) and _usable(ra)):
        return None
    if la.is_loopback or ra.is_loopback:
        return _TIER_LAN if la.is_loopback and ra.is_loopback else None
    if local.kind is CandidateKind.HOST and remote.kind is CandidateKind.HOST and _same_private_subnet(la, ra):
        return _TIER_LAN
    return _remote_tier(remote)


def pair_order(
    local: Sequence[tuple[K, Candidate]],
    remote: Sequence[Candidate],
    max_pairs: int = MAX_PAIRS,
) -> list[tuple[K, Candidate]]:
    """
    Order the pairs of our candidates with the peer's, best first.

    @param local: C{(key, candidate)} for each of our candidates; the key
        names what sends (a socket, a port) and several candidates may
        share one (a socket's host, mapped and reflexive addresses).
    @param remote: the peer's candidates, in its order of preference.
    @param max_pairs: the most pairs returned.
    @return: C{(key, remote candidate)} pairs, each once (in its best
        tier), for every transport present on both sides.
    """
    best: dict[tuple[K, Address], tuple[int, int, int, Candidate]] = {}
    for j, r in enumerate(remote[:MAX_REMOTE]):
        for i, (key, c) in enumerate(local):
            tier = _pair_tier(c, r)
            if tier is None:
                continue
            slot = (key, r.address)
            rank = (tier, j, i, r)
            old = best.get(slot)
            if old is None or rank[:3] < old[:3]:
                best[slot] = rank
    ordered = sorted(best.items(), key=lambda item: item[1][:3])
    return [(key, rank[3]) for (key, _), rank in ordered[: max(0, max_pairs)]]


def remote_targets(
    remote: Sequence[Candidate],
    transport: str,
    *,
    local_families: Collection[int] = frozenset({4, 6}),
    local_addresses: Iterable[Address] = (),
    max_targets: int = MAX_PAIRS,
) -> list[Address]:
    """
    The peer's addresses of one transport for a node with one socket, best first.

    @param remote: the peer's candidates, in its order of preference.
    @param transport: C{"udp"} or C{"tcp"}.
    @param local_families: the IP versions our socket can send to.
    @param local_addresses: our own interface addresses (any transport):
        they find the LAN candidates and tell whether we are on loopback.
    @param max_targets: the most addresses returned.
    """
    ours = [a for a in local_addresses if _usable(a)]
    lan_addresses = [a for a in ours if not a.is_loopback]
    # the peer's loopback addresses are ours too: only worth trying when it is this very machine
    # (we are on loopback only, or it names one of our own addresses)
    our_hosts = {a.host for a in lan_addresses}
    same_machine = not lan_addresses or any(r.address.host in our_hosts for r in remote[:MAX_REMOTE])
    loopback_families = {_family(a) for a in ours if a.is_loopback} if same_machine else set()
    best: dict[Address, tuple[int, int]] = {}
    for j, r in enumerate(remote[:MAX_REMOTE]):
        ra = r.address
        if ra.transport != transport or not _usable(ra) or r.kind is CandidateKind.RELAY:
            continue  # (a TURN relay's address is dialled, not punched: it answers no checks)
        family = _family(ra)
        if family not in local_families:
            continue
        if ra.is_loopback:
            if family not in loopback_families:
                continue
            tier = _TIER_LAN
        elif r.kind is CandidateKind.HOST and any(_same_private_subnet(a, ra) for a in lan_addresses):
            tier = _TIER_LAN
        else:
            tier = _remote_tier(r)
        old = best.get(ra)
        if old is None or (tier, j) < old:
            best[ra] = (tier, j)
    ordered = sorted(best.items(), key=lambda item: item[1])
    return [a for a, _ in ordered[: max(0, max_targets)]]
