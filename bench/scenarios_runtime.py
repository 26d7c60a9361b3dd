"""Benchmark: how long `pytest scenarios/` takes, per wire profile and in all.

Runs `pytest scenarios/` as CI does (default `--profile both`, or the one given) and
prints the wall time (process start to exit, pytest's start-up and collection
included), then from pytest's JUnit XML the time of each test (setup, call and
teardown) summed per profile (`[legacy]`, `[noise]`; the rest, e.g. the client gate
without a client, as `other`) with the outcomes, and the slowest tests. Issue 10's
goal: the default run stays within 5 minutes on the 2-core VM. The load average
before and after is printed because the figure means little without it. Not a test:
it judges nothing (the outcomes are shown so that a fast run of failing or skipped
tests is not mistaken for a win).

    .venv/bin/python bench/scenarios_runtime.py [--profile both|legacy|noise] [-- extra pytest args]
    (or: ./run bench scenarios_runtime ...)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 30 * 60
GOAL_S = 5 * 60
PROFILE_ID = re.compile(r"\[(legacy|noise)\]$")


def run_scenarios(profile: str, extra: list[str], work: Path) -> tuple[float, int, Path]:
    junit = work / "junit.xml"
    argv = [sys.executable, "-m", "pytest", "scenarios/", "-q", "-p", "no:cacheprovider", f"--basetemp={work / 't'}",
            f"--junitxml={junit}", "--profile", profile, *extra]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    wall = time.monotonic() - started
    if not junit.exists():
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"pytest wrote no JUnit XML (exit {done.returncode})")
    return wall, done.returncode, junit


def outcome(case: ET.Element) -> str:
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
    return "passed"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=("both", "legacy", "noise"), default="both")
    ap.add_argument("--slowest", type=int, default=8, help="how many of the slowest tests to list")
    ap.add_argument("extra", nargs="*", help="more pytest arguments (after --)")
    a = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="scenarios-runtime-") as tmp:
        wall, code, junit = run_scenarios(a.profile, a.extra, Path(tmp))
        cases = [(c.get("classname", "") + "::" + c.get("name", ""), float(c.get("time", 0)), outcome(c))
                 for c in ET.parse(junit).getroot().iter("testcase")]
    load_after = os.getloadavg()
    seconds: dict[str, float] = defaultdict(float)
    outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, t, result in cases:
        match = PROFILE_ID.search(name)
        group = match.group(1) if match else "other"
        seconds[group] += t
        outcomes[group][result] += 1
    print(f"pytest scenarios/ --profile {a.profile} {' '.join(a.extra)}".rstrip())
    print(f"wall {wall:.1f} s (goal <= {GOAL_S} s: {'met' if wall <= GOAL_S else 'MISSED'}), pytest exit {code}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, {os.cpu_count()} CPUs")
    print(f"{'profile':>8}  {'tests s':>8}  outcomes")
    for group in sorted(seconds):
        counts = ", ".join(f"{n} {k}" for k, n in sorted(outcomes[group].items()))
        print(f"{group:>8}  {seconds[group]:>8.1f}  {counts}")
    print(f"{'all':>8}  {sum(seconds.values()):>8.1f}  {len(cases)} tests")
    print("slowest:")
    for name, t, result in sorted(cases, key=lambda c: -c[1])[: a.slowest]:
        print(f"  {t:7.1f} s  {result:<7}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
