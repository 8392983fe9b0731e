"""
crust's tests (run them with C{python -m tests}).

Property tests (Hypothesis) take their number of examples from a settings
profile, chosen by the environment variable C{CRUST_HYPOTHESIS_PROFILE}:

  - C{ci} (the default): enough to catch a regression, all of them together
    within the suite's budget (doc/hacking.md, "Fuzzing");
  - C{dev}: Hypothesis's own default of 100 examples a test;
  - C{thorough}: ten times that, for a search before a release or after a
    change to a parser (minutes).

Each test states its weight with L{examples}: C{@examples(500)} runs five
times as many examples as a plain C{@given} test, in every profile.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: Examples of a weight-100 test (a plain C{@given}) in each profile.
PROFILES = {"ci": 30, "dev": 100, "thorough": 1000}

for _name, _count in PROFILES.items():
    settings.register_profile(
        _name,
        max_examples=_count,
        # the machine may be busy: time is bounded by the tests themselves (tests.hostile_json.TIME_BOUND)
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
settings.load_profile(os.environ.get("CRUST_HYPOTHESIS_PROFILE", "ci"))


def examples(weight: int) -> settings:
    """
    Settings for a property test of C{weight} (C{100} is a plain C{@given}
    test): C{weight} examples in the C{dev} profile, scaled with the
    profile loaded, at least 10.
    """
    return settings(max_examples=max(10, weight * settings.default.max_examples // 100))
