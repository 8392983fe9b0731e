"""
Run the atheris targets (C{fuzz/fuzz_NAME.py}), one after another, each for
a bounded time, and report what each did; what C{tox -e fuzz} runs.

    python fuzz/run.py                      # every target, 60 s each
    python fuzz/run.py --seconds 600 stun upnp
    FUZZ_SECONDS=5 tox -e fuzz              # a short run of everything

Each target starts from its seed corpus (C{fuzz/corpus/NAME}, never
written) and keeps what it finds in C{.fuzz/NAME/} (the next run starts
from there too); a crash is written to C{.fuzz/NAME/crash-*} and makes the
exit status non-zero.  Reproduce one with
C{python fuzz/fuzz_NAME.py .fuzz/NAME/crash-...}.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE.parent / ".fuzz"
STATS = re.compile(rb"stat::(\w+):\s*(\d+)")


def run(name: str, seconds: int, extra: list[str]) -> tuple[bool, dict[str, int], float]:
    """Fuzz one target: (clean, libFuzzer's final stats, seconds it took)."""
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(HERE / f"fuzz_{name}.py"), str(work), str(HERE / "corpus" / name),
               f"-max_total_time={seconds}", "-print_final_stats=1", "-rss_limit_mb=2048", "-timeout=10",
               f"-artifact_prefix={work}/", *extra]
    started = time.monotonic()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - started
    log = done.stdout
    (work / "last-run.log").write_bytes(log)
    stats = {key.decode(): int(value) for key, value in STATS.findall(log)}
    return done.returncode == 0, stats, elapsed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help="target names (default: all)")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")),
                        help="seconds for each target (default: $FUZZ_SECONDS or 60)")
    parser.add_argument("--libfuzzer", action="append", default=[], metavar="OPTION",
                        help="one more libFuzzer option for every target, like -max_len=65536")
    args = parser.parse_args(argv)
    names = args.targets or sorted(p.stem[len("fuzz_"):] for p in HERE.glob("fuzz_*.py"))
    failed = []
    print(f"{'target':<18} {'runs':>11} {'exec/s':>8} {'new':>9} {'corpus':>7}  result")
    for name in names:
        clean, stats, elapsed = run(name, args.seconds, args.libfuzzer)
        runs = stats.get("number_of_executed_units", 0)
        rate = stats.get("average_exec_per_sec", 0)
        corpus = len(list((WORK / name).glob("[0-9a-f]" * 40)))
        result = "ok" if clean else f"FINDING (see .fuzz/{name}/)"
        print(f"{name:<18} {runs:>11} {rate:>8} {stats.get('new_units_added', 0):>9} {corpus:>7}  {result}",
              flush=True)
        if not clean:
            failed.append(name)
    if failed:
        print(f"findings in: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
