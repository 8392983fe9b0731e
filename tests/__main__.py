"""
Run the test suite with trial and end with a plain summary line.

    python -m tests                      # everything
    python -m tests tests.session.test_framing   # some modules

The last line reads ``N passed, N failed, N skipped``; the exit status is
non-zero if anything failed or if no test ran at all.
"""

import sys

from twisted.trial import reporter, runner


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or ["tests"]
    loader = runner.TestLoader()
    suite = loader.loadByNames(names, recurse=True)
    trial = runner.TrialRunner(
        reporter.TreeReporter,
        stream=sys.stdout,
        workingDirectory="_trial_temp",
        realTimeErrors=True,
    )
    result = trial.run(suite)
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
