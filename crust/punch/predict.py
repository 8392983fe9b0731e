"""
Getting through NATs with endpoint-dependent mapping ("symmetric" NATs):
port prediction, birthday probing, and the plan for a pair of NATs (pure:
no I/O, no reactor; randomness comes from an injected C{random.Random}).

A NAT with endpoint-dependent mapping (EDM) gives each destination its own
public port, so the port a peer learned from a third party is not the one
our checks to it will come from.  Two ways through:

  - B{prediction}: the NAT allocates ports sequentially (a fixed step,
    C{delta}, between mappings): the other side sends checks to the next
    L{PREDICTED_PORTS} ports after the last one observed
    (L{predict_sequential}).
  - B{birthday probing}: the ports are random.  The hard (EDM) side opens
    L{HARD_SOCKETS} extra sockets, each sending checks to the easy side's
    server-reflexive address (so each makes a mapping, at a random port,
    that lets the easy side in); the easy (EIM) side sends checks from its
    one socket to L{EASY_PROBES} distinct random ports of the hard side's
    IP (L{BirthdayProbe}).  A probe that lands on one of those mappings
    gets through; L{birthday_success} is the chance of at least one.

The decision table of L{plan_for} (rows: our NAT, columns: the remote's;
"public" is a side without NAT, "edm-seq" EDM with sequential ports,
"edm-rnd" EDM with any other port allocation: random, unknown, or
preserved, which under EDM only says that the first mapping kept the
local port; "unknown" a mapping not measured)::

  local \\ remote | public | eim           | edm-seq     | edm-rnd       | unknown
  ---------------+--------+---------------+-------------+---------------+--------
  public         | direct | direct        | direct      | direct        | direct
  eim            | direct | direct        | predict     | birthday-easy | direct
  edm-seq        | direct | direct (*)    | impossible  | impossible    | direct
  edm-rnd        | direct | birthday-hard | impossible  | impossible    | direct
  unknown        | direct | direct        | direct      | direct        | direct

  (*) the remote predicts our ports; we send our usual checks.

The rules, first match wins: a side without NAT: direct; either mapping
unknown: direct ("NAT behaviour unknown", nothing extra on a guess); both
EIM: direct; both EDM: impossible ("needs a relay"); otherwise one side is
EIM and the other EDM, and the plan is by who is who and by the EDM side's
port allocation.  The two sides' plans fit together: plan_for(a, b) and
plan_for(b, a) are direct and direct, predict and direct, birthday-easy
and birthday-hard, or impossible twice.

Every kind includes the ordinary checks to the remote's candidates
(L{crust.punch.pacing.CheckSchedule}); the extras are on top.  The numbers:

  - B{Prediction}: 16 ports (L{PREDICTED_PORTS}), added to the ordinary
    check schedule (25 ms pacing, usual backoff, 10 s window): they cost
    no more than 16 more candidates.  Other hosts behind the NAT take
    ports too, so our mapping is often a few steps past M{last + delta};
    16 steps leave room for that.
  - B{Birthday, easy side}: at most 1024 probes (L{EASY_PROBES}), one
    every 5 ms (L{BIRTHDAY_INTERVAL}): about 5.1 s, 200 packets/s.  Each
    probe port is sent once (a lost probe is just one more port not
    tried).  Against 256 mappings that is about 98 % (256 probes: about
    64 %).
  - B{Birthday, hard side}: at most 256 sockets (L{HARD_SOCKETS}), opened
    one every 5 ms, all within about 1.3 s, each sending 3 checks
    (L{HARD_RETRIES} = 2 re-sends with the usual 0.1, 0.2 s backoff) to
    the easy side's server-reflexive address: 768 packets.  Without loss
    one check per socket would do: a probe that arrives after the mapping
    exists gets in, and a probe that arrives before it has opened the easy
    side's filter for that port, so the socket's first check gets in; the
    re-sends are for loss.
  - B{Window}: 15 s for birthday (L{BIRTHDAY_WINDOW}, both halves fit with
    room for the answers), 10 s otherwise (L{DIRECT_WINDOW}).

Both birthday halves stay inside the per-attempt budget of
L{crust.punch.pacing.SendBudget} (2,000 packets, with the ordinary checks:
at most about 420 in 10 s to 32 candidates) and leave 160 of the node's
400 packets/s (L{crust.punch.pacing.SendRate}) to other attempts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

PORT_LOW = 1024
PORT_HIGH = 65535
PORT_SPACE = PORT_HIGH - PORT_LOW + 1  # 64512

PREDICTED_PORTS = 16
EASY_PROBES = 1024
HARD_SOCKETS = 256
HARD_RETRIES = 2
BIRTHDAY_INTERVAL = 0.005
BIRTHDAY_WINDOW = 15.0
DIRECT_INTERVAL = 0.025
DIRECT_WINDOW = 10.0

KIND_DIRECT = "direct"
KIND_PREDICT = "predict"
KIND_BIRTHDAY_EASY = "birthday-easy"
KIND_BIRTHDAY_HARD = "birthday-hard"
KIND_IMPOSSIBLE = "impossible"

REASON_BOTH_EDM = "both sides have endpoint-dependent mapping (symmetric NAT): needs a relay"
REASON_UNKNOWN = "NAT behaviour unknown"


# -- port prediction ---------------------------------------------------------

def _wrap(port: int) -> int:
    """C{port} brought into L{PORT_LOW}..L{PORT_HIGH}, modulo the range."""
    return (port - PORT_LOW) % PORT_SPACE + PORT_LOW


def predict_sequential(observed: Sequence[int], delta: int, count: int) -> list[int]:
    """
    The next C{count} ports a sequential NAT should hand out after the last
    one observed: M{last + delta}, M{last + 2 delta}, ..., wrapping within
    1024..65535.  Ports already observed, and repeats (a step that divides
    the range), are left out, so the list may be shorter than C{count};
    a C{delta} of 0 predicts nothing new.

    @param observed: the mapped ports seen, oldest first (at least one).
    @raise ValueError: C{observed} empty or holding a port outside
        1..65535, or C{count} below 0.
    """
    if not observed:
        raise ValueError("no observed port to predict from")
    if any(not 0 < port <= PORT_HIGH for port in observed):
        raise ValueError("observed ports must be in 1..65535")
    if count < 0:
        raise ValueError("count must be >= 0")
    seen = set(observed)
    last = observed[-1]
    out: list[int] = []
    if delta == 0:
        return out
    for step in range(1, count + 1):
        port = _wrap(last + step * delta)
        if port in seen:
            if port == _wrap(last):
                break  # came round: the rest would repeat
            continue
        seen.add(port)
        out.append(port)
    return out


# -- birthday probing --------------------------------------------------------

class BirthdayProbe:
    """
    The easy side's probe ports: distinct random ports in C{low}..C{high},
    never one in C{exclude}, never the same one twice across calls.

    A lazy Fisher-Yates shuffle: each port costs M{O(1)} time and memory,
    however many are drawn, and the order depends only on C{rng}'s state.
    """

    def __init__(self, rng: random.Random, exclude: Iterable[int] = (), low: int = PORT_LOW,
                 high: int = PORT_HIGH) -> None:
        """
        @param rng: the source of randomness (seeded in tests).
        @param exclude: ports not to probe (the ones already tried).
        @raise ValueError: not M{1 <= low <= high <= 65535}.
        """
        if not 1 <= low <= high <= PORT_HIGH:
            raise ValueError("need 1 <= low <= high <= 65535")
        self._rng = rng
        self.low = low
        self.high = high
        self._exclude = frozenset(port for port in exclude if low <= port <= high)
        self._left = high - low + 1  # positions 0.._left-1 not drawn yet
        self._moved: dict[int, int] = {}  # position -> offset, where they differ
        self._excluded_left = len(self._exclude)  # excluded ports not drawn yet

    @property
    def remaining(self) -> int:
        """How many ports can still be drawn."""
        return self._left - self._excluded_left

    def next(self, n: int) -> list[int]:
        """
        Up to C{n} more ports (fewer only when the range is used up).

        @raise ValueError: C{n} below 0.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        out: list[int] = []
        while len(out) < n and self._left > 0:
            position = self._rng.randrange(self._left)
            self._left -= 1
            offset = self._moved.pop(position, position)
            if position != self._left:
                self._moved[position] = self._moved.pop(self._left, self._left)
            else:
                self._moved.pop(self._left, None)
            port = self.low + offset
            if port in self._exclude:
                self._excluded_left -= 1
            else:
                out.append(port)
        return out


def birthday_success(sockets: int, probes: int, space: int = PORT_SPACE) -> float:
    """
    The chance that at least one of C{probes} distinct random ports hits
    one of C{sockets} distinct random mappings, in a range of C{space}
    ports: M{1 - C(space - sockets, probes) / C(space, probes)}, exact.
    For logs and docs: (256, 256) is about 0.64, (256, 1024) about 0.98.

    @raise ValueError: an argument below 0, or C{sockets} above C{space}.
    """
    if sockets < 0 or probes < 0 or space < 0 or sockets > space:
        raise ValueError("need 0 <= sockets <= space and probes >= 0")
    if sockets == 0 or probes == 0:
        return 0.0
    if sockets + probes > space:
        return 1.0
    lg = math.lgamma
    miss = math.exp(lg(space - sockets + 1) + lg(space - probes + 1)
                    - lg(space - sockets - probes + 1) - lg(space + 1))
    return 1.0 - miss


# -- the plan ----------------------------------------------------------------

class NatBehaviourLike(Protocol):
    """
    What L{plan_for} reads of one side's NAT behaviour (for one transport);
    enum members whose values are these strings do as well.
    """

    @property
    def mapping(self) -> str:
        """C{"eim"}, C{"edm"} or C{"unknown"}."""

    @property
    def ports(self) -> str:
        """C{"preserved"}, C{"sequential"}, C{"random"} or C{"unknown"}."""

    @property
    def public(self) -> bool:
        """No NAT: the host address is what peers see."""


@dataclass(frozen=True)
class Plan:
    """
    What to do, beyond the ordinary checks to the remote's candidates.

    @ivar kind: L{KIND_DIRECT}, L{KIND_PREDICT}, L{KIND_BIRTHDAY_EASY},
        L{KIND_BIRTHDAY_HARD} or L{KIND_IMPOSSIBLE}.
    @ivar reason: why, in a few words, for logs.
    @ivar hard_sockets: extra sockets to open (the hard side of birthday).
    @ivar easy_probes: random ports of the remote's IP to probe (the easy
        side of birthday).
    @ivar predicted_ports: how many ports to predict with
        L{predict_sequential} from the remote's observed ports and delta.
    @ivar interval: the pacing of the extra sends (predicted ports join the
        ordinary schedule and its pacing).
    @ivar retries: re-sends per extra target, C{None} for the ordinary
        backoff until the window closes.
    @ivar window: how long the attempt's checks go on, in seconds.
    """

    kind: str
    reason: str
    hard_sockets: int = 0
    easy_probes: int = 0
    predicted_ports: int = 0
    interval: float = DIRECT_INTERVAL
    retries: int | None = None
    window: float = DIRECT_WINDOW

    @property
    def possible(self) -> bool:
        """C{False} when a direct connection cannot be punched."""
        return self.kind != KIND_IMPOSSIBLE


# The classes of one side, for the table.
_PUBLIC = "public"
_EIM = "eim"
_EDM_SEQUENTIAL = "edm-seq"
_EDM_RANDOM = "edm-rnd"
_UNKNOWN = "unknown"


def _text(value: object) -> str:
    return str(value.value if isinstance(value, Enum) else value)


def _classify(nat: NatBehaviourLike) -> str:
    if nat.public:
        return _PUBLIC
    mapping = _text(nat.mapping)
    if mapping == "eim":
        return _EIM
    if mapping == "edm":
        return _EDM_SEQUENTIAL if _text(nat.ports) == "sequential" else _EDM_RANDOM
    return _UNKNOWN


def plan_for(local: NatBehaviourLike, remote: NatBehaviourLike) -> Plan:
    """
    The plan for punching from a side with C{local} NAT behaviour to one
    with C{remote}: the decision table in this module's docstring.
    """
    ours, theirs = _classify(local), _classify(remote)
    if ours == _PUBLIC:
        return Plan(KIND_DIRECT, "no NAT on our side")
    if theirs == _PUBLIC:
        return Plan(KIND_DIRECT, "no NAT on the remote side")
    if _UNKNOWN in (ours, theirs):
        return Plan(KIND_DIRECT, REASON_UNKNOWN)
    if ours == _EIM and theirs == _EIM:
        return Plan(KIND_DIRECT, "both sides have endpoint-independent mapping")
    if ours != _EIM and theirs != _EIM:
        return Plan(KIND_IMPOSSIBLE, REASON_BOTH_EDM)
    if theirs == _EDM_SEQUENTIAL:
        return Plan(KIND_PREDICT, "the remote NAT allocates ports sequentially: predict them",
                    predicted_ports=PREDICTED_PORTS)
    if theirs == _EDM_RANDOM:
        return Plan(KIND_BIRTHDAY_EASY, "the remote NAT has endpoint-dependent mapping, ports not predictable: "
                    "probe random ports", easy_probes=EASY_PROBES, interval=BIRTHDAY_INTERVAL, retries=0,
                    window=BIRTHDAY_WINDOW)
    if ours == _EDM_SEQUENTIAL:
        return Plan(KIND_DIRECT, "our NAT allocates ports sequentially: the remote predicts them")
    return Plan(KIND_BIRTHDAY_HARD, "our NAT has endpoint-dependent mapping, ports not predictable: "
                "open extra sockets", hard_sockets=HARD_SOCKETS, interval=BIRTHDAY_INTERVAL,
                retries=HARD_RETRIES, window=BIRTHDAY_WINDOW)
