"""
Run the test suite with trial and end with a plain summary line.

    python -m tests                      # everything
    python -m tests tests.session.test_framing   # some modules
    python -m tests --properties         # only the property (Hypothesis) tests, each timed

The last line reads ``N passed, N failed, N skipped``; the exit status is
non-zero if anything failed or if no test ran at all.

With C{--properties}, only the tests that Hypothesis drives are run (of the
named modules, or of the whole suite), and the time each took is printed,
slowest first, with their total: the budget of the property tests is
checked with it (see doc/hacking.md, "Fuzzing").  The number of examples
comes from the Hypothesis profile (C{CRUST_HYPOTHESIS_PROFILE}, see
L{tests}).
"""

import builtins
import sys
import time
import traceback
from typing import Any

from hypothesis.internal.detection import is_hypothesis_test
from twisted.trial import reporter, runner
from twisted.trial._asyncrunner import _iterateTests


_GROUP = getattr(builtins, "BaseExceptionGroup", ())


class _Reporter(reporter.TreeReporter):
    """Trial's tree reporter, showing the notes of an exception too (Hypothesis's falsifying example)."""

    def _formatFailureTraceback(self, fail: Any) -> str:
        text = super()._formatFailureTraceback(fail)
        value = getattr(fail, "value", None)
        if isinstance(value, _GROUP):  # Hypothesis found several: show each (Python 3.11 and later)
            text += "".join(traceback.format_exception(type(value), value, value.__traceback__))
        elif getattr(value, "__notes__", None):
            text += "".join(f"{note}\n" for note in value.__notes__)
        return text


class _TimingReporter(_Reporter):
    """A reporter that also keeps how long each test took."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.durations: list[tuple[float, str]] = []
        self._started = 0.0

    def startTest(self, test: Any) -> None:
        self._started = time.perf_counter()
        super().startTest(test)

    def stopTest(self, test: Any) -> None:
        super().stopTest(test)
        self.durations.append((time.perf_counter() - self._started, test.id()))


def is_property_test(test: Any) -> bool:
    """Whether C{test} (a test case) runs a Hypothesis-driven method."""
    method = getattr(type(test), getattr(test, "_testMethodName", ""), None)
    return method is not None and is_hypothesis_test(method)


def main(argv: list[str]) -> int:
    properties = "--properties" in argv
    names = [a for a in argv if not a.startswith("-")] or ["tests"]
    loader = runner.TestLoader()
    suite = loader.loadByNames(names, recurse=True)
    if properties:
        suite = runner.TestSuite([t for t in _iterateTests(suite) if is_property_test(t)])
    trial = runner.TrialRunner(
        _TimingReporter if properties else _Reporter,
        stream=sys.stdout,
        workingDirectory="_trial_temp",
        realTimeErrors=True,
    )
    started, cpu = time.perf_counter(), time.process_time()
    result = trial.run(suite)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if properties:
        durations = sorted(getattr(result, "durations", []), reverse=True)
        print(f"\n{len(durations)} property tests: {elapsed:.1f} s in all ({cpu:.1f} s of CPU); slowest first:")
        for seconds, name in durations:
            print(f"  {seconds:7.2f} s  {name}")
    passed = result.successes
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skips) + len(result.expectedFailures)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    if passed + failed == 0:
        print("no test ran", file=sys.stderr)
        return 1
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
