"""`./run stress [N] [-- PYTEST ARGS]`: `./run test` N times beside a stress neighbour.

The suite must hold on a busy machine (shared CI runners are noisy): the harness may
never cause the latency it blames on a peer. This is the check for that, and for every
change that touches timing. It is not part of CI.

The neighbour is stress-ng (Debian's package, installed if missing) with CPU, I/O,
disk and memory load together, sized for a 2-core machine:

    stress-ng --cpu 2 --io 2 --hdd 1 --hdd-bytes 512M --vm 1 --vm-bytes 1G

It runs for the whole session. Each run is `./run test` with its own `--basetemp` and
JUnit XML under the work directory (failed tests keep their event logs there).
`--parallel K` runs K at once, each then a neighbour of the others as well: a harsher
load, and more runs in a session's time. The report gives the green runs out of N, the
INCONCLUSIVE outcomes and the first attempts that were (re-run, passed), and for each of
them and every failure its test, the first line of its message and the longest stall
each process of that test logged: the stalled process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEIGHBOUR = ["stress-ng", "--cpu", "2", "--io", "2", "--hdd", "1", "--hdd-bytes", "512M",
             "--vm", "1", "--vm-bytes", "1G", "--timeout", "0"]
RUN_MARK = "SENDSPIN_STRESS_RUN"  # in each run's environment: its --basetemp (see `strays`)
RUN_TIMEOUT_S = 60 * 60  # one ./run test under stress; far above the ~20 min it takes


@dataclass
class Outcome:
    run: int
    seconds: float
    exit_code: int
    tests: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (test id, first line)
    inconclusive: list[tuple[str, str]] = field(default_factory=list)
    rerun: list[tuple[str, str]] = field(default_factory=list)  # first attempt inconclusive, the re-run passed

    @property
    def green(self) -> bool:
        return self.exit_code == 0 and not self.failures


def ensure_stress_ng() -> None:
    if shutil.which("stress-ng"):
        return
    if os.geteuid() != 0:
        sys.exit("stress: stress-ng is not installed (apt-get install stress-ng)")
    print("stress: installing stress-ng (Debian package)", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "stress-ng"], check=True, timeout=600)


def start_neighbour(work: Path) -> subprocess.Popen[bytes]:
    hdd_dir = work / "stress-ng"
    hdd_dir.mkdir(exist_ok=True)
    with open(work / "stress-ng.log", "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([*NEIGHBOUR, "--temp-path", str(hdd_dir)], cwd=work, start_new_session=True,
                                stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def strays(directory: Path) -> list[str]:
    """Kills every process of the run whose --basetemp is `directory`: one started in a
    session of its own outlives a killed run's process group. A run's process carries
    `RUN_MARK` in its environment (inherited: a gate case's client under test names no
    directory of the run), or names `directory` (one whose environment was replaced);
    returns what it killed."""
    killed, mark = [], f"{RUN_MARK}={directory}".encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
            if any(f"{directory}/".encode() in arg or arg.endswith(str(directory).encode()) for arg in argv) \
                    or mark in (cmdline.parent / "environ").read_bytes().split(b"\0"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
                killed.append(f"{cmdline.parent.name} {b' '.join(argv).decode(errors='replace')[:160]}")
        except (OSError, ValueError):
            continue
    return killed


def read_junit(path: Path, outcome: Outcome) -> None:
    if not path.exists():
        return
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome.tests += 1
        test = f"{case.get('classname')}::{case.get('name')}"
        for tag in ("failure", "error"):
            bad = case.find(tag)
            if bad is not None:
                outcome.failures.append((test, (bad.get("message") or tag).splitlines()[0][:200]))
        skipped = case.find("skipped")
        if skipped is not None and "INCONCLUSIVE" in (skipped.get("message") or ""):
            outcome.inconclusive.append((test, (skipped.get("message") or "").splitlines()[0][:200]))


def read_reruns(path: Path, outcome: Outcome) -> None:
    """The tests whose first attempt was INCONCLUSIVE and whose re-run passed (the plugin's
    terminal summary in the run's log): green, but each one an INCONCLUSIVE outcome too."""
    if not path.exists():
        return
    seen = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        test, sep, why = line.partition(": inconclusive (")
        if sep and line.endswith("re-run once; the re-run passed") and test not in seen:
            seen.add(test)
            outcome.rerun.append((test, why.rsplit("), re-run once", 1)[0][:200]))


def stalls(basetemp: Path, test_name: str) -> dict[str, int]:
    """The longest stall (µs) per process in the event logs a test left behind: its event loop
    (`loop_lag`), or its sending on a socket whose reads it held (`tcp_stall`)."""
    prefix = test_name.split("[")[0][:30]
    worst: dict[str, int] = {}
    for directory in [*basetemp.glob(f"{prefix}*"), *basetemp.glob(f"popen-gw*/{prefix}*")]:  # xdist: per worker
        for log in directory.rglob("*.jsonl"):
            for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
                if '"loop_lag"' not in line and '"tcp_stall"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                who = record["proc"]
                if record["event"] == "tcp_stall":
                    who += f"'s socket to the {record['peer']}"
                worst[who] = max(worst.get(who, 0), record.get("lag_us", 0))
    return worst


class Run:
    """One `./run test` in the background, with its own --basetemp and JUnit XML."""

    def __init__(self, n: int, work: Path, pytest_args: list[str]) -> None:
        self.n, self.work = n, work
        self.basetemp, self.junit = work / f"run-{n}", work / f"run-{n}.xml"
        self.started = time.monotonic()
        with open(work / f"run-{n}.log", "wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([str(ROOT / "run"), "test", "-q", f"--basetemp={self.basetemp}",
                                          f"--junitxml={self.junit}", *pytest_args], cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, RUN_MARK: str(self.basetemp)})

    def poll(self) -> Outcome | None:
        """The outcome once the run has ended (killed after RUN_TIMEOUT_S), else None."""
        code = self.proc.poll()
        if code is None and time.monotonic() - self.started > RUN_TIMEOUT_S:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(timeout=60)
        if code is None:
            return None
        outcome = Outcome(self.n, time.monotonic() - self.started, code)
        read_junit(self.junit, outcome)
        read_reruns(self.work / f"run-{self.n}.log", outcome)
        outcome.failures += [("(a process left running)", stray) for stray in strays(self.basetemp)]
        if code != 0 and not outcome.failures:
            outcome.failures.append(("(no test failed)", f"./run test exited {code}; see {self.work}/run-{self.n}.log"))
        return outcome


def report(outcome: Outcome, basetemp: Path, total: int) -> None:
    verdict = "green" if outcome.green else f"{len(outcome.failures)} failed"
    print(f"run {outcome.run}/{total}: {verdict}, {outcome.tests} tests, {len(outcome.inconclusive)} inconclusive, "
          f"{len(outcome.rerun)} re-run after an inconclusive first attempt, {outcome.seconds / 60:.1f} min",
          flush=True)
    for test, message in outcome.failures + outcome.inconclusive + outcome.rerun:
        lags = stalls(basetemp, test.rsplit("::", 1)[-1])
        worst = ", ".join(f"{proc} {lag / 1000:.0f} ms" for proc, lag in sorted(lags.items(), key=lambda kv: -kv[1]))
        print(f"    {test}\n        {message}\n        longest stall per process: {worst or 'none logged'}",
              flush=True)


def collect(running: list[Run], outcomes: list[Outcome], total: int) -> list[Run]:
    """Waits a moment, reports the runs that ended; returns those still running."""
    time.sleep(1)
    still = []
    for run in running:
        outcome = run.poll()
        if outcome is None:
            still.append(run)
        else:
            outcomes.append(outcome)
            report(outcome, run.basetemp, total)
    return still


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so that every `finally` stops what it started


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupted)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="?", type=int, default=10, help="how many ./run test runs (default 10)")
    parser.add_argument("--work", type=Path, default=None, help="keep logs here (default: a new temp directory)")
    parser.add_argument("--no-neighbour", action="store_true", help="the same runs without stress-ng (a baseline)")
    parser.add_argument("--parallel", type=int, default=1, metavar="K",
                        help="K runs at once, each a neighbour of the others as well (default 1)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    pytest_args = argv[split + 1:]  # after --: extra pytest arguments
    work = args.work or Path(tempfile.mkdtemp(prefix="sendspin-stress-"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.no_neighbour:
        ensure_stress_ng()
    neighbour_text = "off" if args.no_neighbour else " ".join(NEIGHBOUR)
    print(f"stress: {args.runs} runs of ./run test, {args.parallel} at a time, neighbour {neighbour_text}; "
          f"logs in {work}", flush=True)
    outcomes: list[Outcome] = []
    neighbour = None
    running: list[Run] = []
    try:
        for n in range(1, args.runs + 1):
            while len(running) >= args.parallel:
                running = collect(running, outcomes, args.runs)
            if not args.no_neighbour and (neighbour is None or neighbour.poll() is not None):
                neighbour = start_neighbour(work)
            running.append(Run(n, work, pytest_args))
        while running:
            running = collect(running, outcomes, args.runs)
    finally:
        for run in running:  # interrupted: each run's whole process group goes with us, and its strays
            stop(run.proc)
            strays(run.basetemp)
        if neighbour is not None:
            stop(neighbour)
    green = sum(o.green for o in outcomes)
    inconclusive = sum(len(o.inconclusive) for o in outcomes)
    rerun = sum(len(o.rerun) for o in outcomes)
    print(f"\nstress: {green} of {len(outcomes)} runs green; {inconclusive} INCONCLUSIVE outcomes in all, and "
          f"{rerun} inconclusive first attempts whose re-run passed; logs in {work}")
    return 0 if green == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
