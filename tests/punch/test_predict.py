"""Tests for crust.punch.predict: port prediction, birthday probing and the plan for a pair of NATs."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from crust.punch.predict import (
    BIRTHDAY_INTERVAL,
    BIRTHDAY_WINDOW,
    DIRECT_WINDOW,
    EASY_PROBES,
    HARD_RETRIES,
    HARD_SOCKETS,
    KIND_BIRTHDAY_EASY,
    KIND_BIRTHDAY_HARD,
    KIND_DIRECT,
    KIND_IMPOSSIBLE,
    KIND_PREDICT,
    PREDICTED_PORTS,
    REASON_BOTH_EDM,
    REASON_UNKNOWN,
    BirthdayProbe,
    Plan,
    birthday_success,
    plan_for,
    predict_sequential,
)

from tests import examples


class SequentialTests(unittest.TestCase):
    def test_next_ports(self) -> None:
        self.assertEqual(predict_sequential([5000, 5002], 2, 4), [5004, 5006, 5008, 5010])
        self.assertEqual(predict_sequential([5000], -3, 3), [4997, 4994, 4991])

    def test_only_the_last_observed_counts(self) -> None:
        self.assertEqual(predict_sequential([40000, 7000], 1, 2), [7001, 7002])

    def test_wraps_up_within_the_range(self) -> None:
        self.assertEqual(predict_sequential([65533], 1, 4), [65534, 65535, 1024, 1025])
        self.assertEqual(predict_sequential([65530], 7, 2), [1025, 1032])

    def test_wraps_down_within_the_range(self) -> None:
        self.assertEqual(predict_sequential([1026], -1, 4), [1025, 1024, 65535, 65534])

    def test_observed_ports_left_out(self) -> None:
        self.assertEqual(predict_sequential([5003, 5001], 1, 3), [5002, 5004])

    def test_delta_zero_predicts_nothing(self) -> None:
        self.assertEqual(predict_sequential([5000], 0, 16), [])

    def test_step_around_the_whole_range_stops(self) -> None:
        self.assertEqual(predict_sequential([5000], 64512, 16), [])
        self.assertEqual(predict_sequential([5000], 32256, 16), [37256])

    def test_count_zero(self) -> None:
        self.assertEqual(predict_sequential([5000], 1, 0), [])

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, predict_sequential, [], 1, 4)
        self.assertRaises(ValueError, predict_sequential, [0], 1, 4)
        self.assertRaises(ValueError, predict_sequential, [65536], 1, 4)
        self.assertRaises(ValueError, predict_sequential, [5000], 1, -1)

    @examples(300)
    @given(
        observed=st.lists(st.integers(1, 65535), min_size=1, max_size=5),
        delta=st.integers(-1000, 1000),
        count=st.integers(0, 64),
    )
    def test_always_in_range_distinct_and_new(self, observed, delta, count) -> None:
        got = predict_sequential(observed, delta, count)
        self.assertLessEqual(len(got), count)
        self.assertEqual(len(set(got)), len(got))
        self.assertTrue(all(1024 <= port <= 65535 for port in got))
        self.assertFalse(set(got) & set(observed))
        if delta and got:
            self.assertEqual((got[0] - observed[-1] - delta) % 64512, 0)


class BirthdayProbeTests(unittest.TestCase):
    def test_distinct_and_in_range_across_calls(self) -> None:
        probe = BirthdayProbe(random.Random(1))
        ports = probe.next(600) + probe.next(424)
        self.assertEqual(len(ports), 1024)
        self.assertEqual(len(set(ports)), 1024)
        self.assertTrue(all(1024 <= port <= 65535 for port in ports))
        self.assertEqual(probe.remaining, 64512 - 1024)

    def test_exclude_honoured(self) -> None:
        exclude = set(range(1024, 40000))
        probe = BirthdayProbe(random.Random(2), exclude=exclude | {80})
        ports = probe.next(2000)
        self.assertEqual(len(ports), 2000)
        self.assertFalse(set(ports) & exclude)
        self.assertEqual(probe.remaining, 65535 - 40000 + 1 - 2000)

    def test_deterministic_for_a_seeded_random(self) -> None:
        first = BirthdayProbe(random.Random(42)).next(50)
        self.assertEqual(BirthdayProbe(random.Random(42)).next(50), first)
        self.assertNotEqual(BirthdayProbe(random.Random(43)).next(50), first)

    def test_the_global_random_is_not_used(self) -> None:
        state = random.getstate()
        BirthdayProbe(random.Random(3)).next(100)
        self.assertEqual(random.getstate(), state)

    def test_uses_up_a_small_range_exactly_once(self) -> None:
        probe = BirthdayProbe(random.Random(5), exclude={12, 15, 99}, low=10, high=20)
        self.assertEqual(probe.remaining, 9)
        ports = probe.next(4) + probe.next(100)
        self.assertEqual(sorted(ports), [10, 11, 13, 14, 16, 17, 18, 19, 20])
        self.assertEqual(probe.remaining, 0)
        self.assertEqual(probe.next(5), [])

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, BirthdayProbe, random.Random(), low=0)
        self.assertRaises(ValueError, BirthdayProbe, random.Random(), low=2000, high=1999)
        self.assertRaises(ValueError, BirthdayProbe, random.Random(), high=65536)
        self.assertRaises(ValueError, BirthdayProbe(random.Random()).next, -1)

    @examples(100)
    @given(seed=st.integers(0, 2**32), low=st.integers(1, 200), span=st.integers(0, 300),
           exclude=st.sets(st.integers(1, 600), max_size=50), sizes=st.lists(st.integers(0, 80), max_size=6))
    def test_draws_are_a_sample_without_repeats(self, seed, low, span, exclude, sizes) -> None:
        high = low + span
        probe = BirthdayProbe(random.Random(seed), exclude=exclude, low=low, high=high)
        available = set(range(low, high + 1)) - exclude
        self.assertEqual(probe.remaining, len(available))
        drawn: list[int] = []
        for size in sizes:
            got = probe.next(size)
            self.assertEqual(len(got), min(size, len(available) - len(drawn)))
            drawn += got
            self.assertEqual(probe.remaining, len(available) - len(drawn))
        self.assertEqual(len(set(drawn)), len(drawn))
        self.assertLessEqual(set(drawn), available)


class BirthdaySuccessTests(unittest.TestCase):
    def test_reference_values(self) -> None:
        # (trial's assertAlmostEqual has no delta)
        self.assertLessEqual(abs(birthday_success(256, 256) - 0.64), 0.02)
        self.assertLessEqual(abs(birthday_success(256, 1024) - 0.98), 0.02)
        self.assertGreater(birthday_success(HARD_SOCKETS, EASY_PROBES), 0.98)

    def test_matches_the_product_formula(self) -> None:
        for sockets, probes, space in ((3, 4, 20), (10, 10, 100), (256, 100, 64512)):
            miss = 1.0
            for i in range(probes):
                miss *= 1 - sockets / (space - i)
            self.assertAlmostEqual(birthday_success(sockets, probes, space), 1 - miss, places=9)

    def test_edges(self) -> None:
        self.assertEqual(birthday_success(0, 1000), 0.0)
        self.assertEqual(birthday_success(256, 0), 0.0)
        self.assertEqual(birthday_success(10, 11, 20), 1.0)
        self.assertAlmostEqual(birthday_success(1, 1, 1), 1.0)
        self.assertRaises(ValueError, birthday_success, -1, 1)
        self.assertRaises(ValueError, birthday_success, 1, -1)
        self.assertRaises(ValueError, birthday_success, 30, 1, 20)

    def test_more_probes_more_success(self) -> None:
        values = [birthday_success(256, probes) for probes in range(0, 2048, 128)]
        self.assertEqual(values, sorted(values))
        self.assertEqual(len(set(values)), len(values))


@dataclass(frozen=True)
class Nat:
    """A stand-in for crust.candidates.NatBehaviour."""

    mapping: str = "unknown"
    ports: str = "unknown"
    public: bool = False


SIDES = {
    "public": Nat(public=True),
    "eim": Nat("eim", "preserved"),
    "edm-sequential": Nat("edm", "sequential"),
    "edm-random": Nat("edm", "random"),
    "unknown": Nat(),
}

# Rows: local; columns: remote, in the order of SIDES.
TABLE = {
    "public": ["direct", "direct", "direct", "direct", "direct"],
    "eim": ["direct", "direct", "predict", "birthday-easy", "direct"],
    "edm-sequential": ["direct", "direct", "impossible", "impossible", "direct"],
    "edm-random": ["direct", "birthday-hard", "impossible", "impossible", "direct"],
    "unknown": ["direct", "direct", "direct", "direct", "direct"],
}

# The plan on one side and the plan on the other fit together.
PARTNER = {
    KIND_DIRECT: {KIND_DIRECT, KIND_PREDICT},
    KIND_PREDICT: {KIND_DIRECT},
    KIND_BIRTHDAY_EASY: {KIND_BIRTHDAY_HARD},
    KIND_BIRTHDAY_HARD: {KIND_BIRTHDAY_EASY},
    KIND_IMPOSSIBLE: {KIND_IMPOSSIBLE},
}


class PlanTests(unittest.TestCase):
    def test_the_whole_table(self) -> None:
        for local_name, row in TABLE.items():
            for remote_name, kind in zip(SIDES, row):
                plan = plan_for(SIDES[local_name], SIDES[remote_name])
                self.assertEqual(plan.kind, kind, f"local {local_name}, remote {remote_name}")
                self.assertEqual(plan.possible, kind != KIND_IMPOSSIBLE)
                self.assertTrue(plan.reason)

    def test_both_sides_agree(self) -> None:
        for local in SIDES.values():
            for remote in SIDES.values():
                mine, theirs = plan_for(local, remote).kind, plan_for(remote, local).kind
                self.assertIn(theirs, PARTNER[mine], f"{local} / {remote}")

    def test_both_edm_needs_a_relay(self) -> None:
        for local in ("edm-sequential", "edm-random"):
            for remote in ("edm-sequential", "edm-random"):
                self.assertEqual(plan_for(SIDES[local], SIDES[remote]),
                                 Plan(KIND_IMPOSSIBLE, REASON_BOTH_EDM))
        self.assertEqual(REASON_BOTH_EDM,
                         "both sides have endpoint-dependent mapping (symmetric NAT): needs a relay")

    def test_unknown_is_a_direct_punch_and_nothing_else(self) -> None:
        for other in ("eim", "edm-sequential", "edm-random", "unknown"):
            for plan in (plan_for(SIDES["unknown"], SIDES[other]), plan_for(SIDES[other], SIDES["unknown"])):
                self.assertEqual(plan, Plan(KIND_DIRECT, REASON_UNKNOWN))
        self.assertEqual(REASON_UNKNOWN, "NAT behaviour unknown")

    def test_public_wins_over_everything(self) -> None:
        # A side without NAT, whatever its (irrelevant) mapping says.
        for mapping in ("eim", "edm", "unknown"):
            public = Nat(mapping, "random", public=True)
            self.assertEqual(plan_for(public, SIDES["edm-random"]).kind, KIND_DIRECT)
            self.assertEqual(plan_for(SIDES["edm-random"], public).kind, KIND_DIRECT)

    def test_the_numbers(self) -> None:
        easy = plan_for(SIDES["eim"], SIDES["edm-random"])
        self.assertEqual((easy.easy_probes, easy.hard_sockets, easy.predicted_ports), (1024, 0, 0))
        self.assertEqual((easy.interval, easy.retries, easy.window), (0.005, 0, 15.0))
        hard = plan_for(SIDES["edm-random"], SIDES["eim"])
        self.assertEqual((hard.easy_probes, hard.hard_sockets, hard.predicted_ports), (0, 256, 0))
        self.assertEqual((hard.interval, hard.retries, hard.window), (0.005, 2, 15.0))
        self.assertEqual((EASY_PROBES, HARD_SOCKETS, HARD_RETRIES), (1024, 256, 2))
        self.assertEqual((BIRTHDAY_INTERVAL, BIRTHDAY_WINDOW, DIRECT_WINDOW), (0.005, 15.0, 10.0))
        # Paced at one per 5 ms: the hard side's sockets are all open in about 1.3 s, the probes go in about 5 s.
        self.assertLessEqual(HARD_SOCKETS * BIRTHDAY_INTERVAL, 1.3)
        self.assertLessEqual(EASY_PROBES * BIRTHDAY_INTERVAL, 5.2)
        predict = plan_for(SIDES["eim"], SIDES["edm-sequential"])
        self.assertEqual((predict.predicted_ports, predict.easy_probes, predict.hard_sockets), (PREDICTED_PORTS, 0, 0))
        self.assertEqual(PREDICTED_PORTS, 16)
        self.assertEqual(predict.window, 10.0)
        direct = plan_for(SIDES["eim"], SIDES["eim"])
        self.assertEqual((direct.easy_probes, direct.hard_sockets, direct.predicted_ports), (0, 0, 0))

    def test_edm_ports_not_sequential_are_not_predictable(self) -> None:
        for ports in ("random", "preserved", "unknown"):
            self.assertEqual(plan_for(SIDES["eim"], Nat("edm", ports)).kind, KIND_BIRTHDAY_EASY)
            self.assertEqual(plan_for(Nat("edm", ports), SIDES["eim"]).kind, KIND_BIRTHDAY_HARD)

    def test_an_unrecognised_mapping_is_unknown(self) -> None:
        self.assertEqual(plan_for(Nat("zzz"), SIDES["edm-random"]), Plan(KIND_DIRECT, REASON_UNKNOWN))

    def test_enum_values_do_as_well(self) -> None:
        class Mapping(str, Enum):
            EIM = "eim"
            EDM = "edm"

        class Ports(Enum):  # not even a str mixin
            SEQUENTIAL = "sequential"

        @dataclass(frozen=True)
        class Behaviour:
            mapping: Mapping
            ports: Ports
            public: bool = False

        local = Behaviour(Mapping.EIM, Ports.SEQUENTIAL)
        remote = Behaviour(Mapping.EDM, Ports.SEQUENTIAL)
        self.assertEqual(plan_for(local, remote).kind, KIND_PREDICT)  # type: ignore[arg-type]
        self.assertEqual(plan_for(remote, local).kind, KIND_DIRECT)  # type: ignore[arg-type]
