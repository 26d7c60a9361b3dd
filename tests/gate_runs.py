"""Gate runs for the gate's own tests, a few at a time.

Each run is the gate as an implementer runs it: `pytest scenarios/test_client_gate.py
--client-cmd ...` in a subprocess, judged by its exit status and its results.json. A test
module adds all its runs to a `GateRuns` in a fixture; they start in that order, at most
`PARALLEL` at once, while the module's tests wait for theirs. A run's cases partly wait on
their timers and partly start processes (a server, a proxy and a client each: ~4 CPU-s a
case), so three at once keep 2 cores busy (both modules: 415 s one after the other, 249 s);
more at once only make our own processes late on a busy machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.topology import proc_stat

ROOT = Path(__file__).resolve().parent.parent
# a run that finishes no case for this long is hung; a case takes ~10 s quiet, minutes on a
# starved machine (a whole run then takes far longer than quiet: progress, not time, tells)
GATE_IDLE_S = 600
PARALLEL = 3
WAIT_TIMEOUT_S = 1800  # pytest's timeout for a test that waits: its run's time and that of the runs ahead


def cases_args(*ids: str) -> list[str]:
    return [arg for case in ids for arg in ("--case", case)]


def process_tree(root: int) -> set[int]:
    """`root` and its live descendants."""
    parents = {int(n): int(st[1]) for n in os.listdir("/proc")
               if n.isdigit() and (st := proc_stat(int(n))) is not None and st[0] != "Z"}
    tree: set[int] = {root} if root in parents else set()
    while grown := {pid for pid, parent in parents.items() if parent in tree} - tree:
        tree |= grown
    return tree


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class GateRun:
    """One gate run; `client` is the --client-cmd, or None when `args` name the client."""

    def __init__(self, directory: Path, client: str | None, *args: str) -> None:
        self.directory = directory
        self.report = directory / "report"
        command = ["--client-cmd", client] if client is not None else []
        self.argv = [sys.executable, "-m", "pytest", "scenarios/test_client_gate.py", "-q", "-p", "no:cacheprovider",
                     f"--basetemp={directory / 'cases'}", *command, "--report-dir", str(self.report), *args]
        self.process: subprocess.Popen[bytes] | None = None
        self.output_size, self.progressed = 0, 0.0

    def start(self) -> None:
        with open(self.directory / "output.txt", "wb") as out:  # a file: a pipe nobody reads yet could fill
            self.process = subprocess.Popen(self.argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.progressed = time.monotonic()

    def finished(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def hung(self) -> bool:
        """No output (pytest prints a character per case) for `GATE_IDLE_S`."""
        if self.process is None:
            return False
        size = (self.directory / "output.txt").stat().st_size
        if size != self.output_size:
            self.output_size, self.progressed = size, time.monotonic()
        return time.monotonic() - self.progressed > GATE_IDLE_S

    def result(self) -> tuple[int, dict[str, Any], str]:
        """Exit status (-9: killed as hung), results.json by case id, and the run's output."""
        assert self.process is not None and self.process.returncode is not None
        path = self.report / "results.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        out = (self.directory / "output.txt").read_text(errors="replace")
        return self.process.returncode, {c["id"]: c for c in results.get("cases", [])}, out

    def stop(self) -> None:
        """Kill the run and every process under it: its servers, proxies and clients have
        sessions of their own and would go on as orphans. The tree is frozen first, so
        nothing it starts meanwhile escapes."""
        if self.process is None or self.process.poll() is not None:
            return
        frozen: set[int] = set()
        while tree := process_tree(self.process.pid) - frozen:
            _signal(tree, signal.SIGSTOP)
            frozen |= tree
        _signal(frozen, signal.SIGKILL)
        self.process.wait(timeout=30)


class GateRuns:
    """Runs started in the order added (put the longest first), at most `parallel` at once."""

    def __init__(self, parallel: int = PARALLEL) -> None:
        self.parallel = parallel
        self.runs: dict[str, GateRun] = {}

    def add(self, name: str, run: GateRun) -> None:
        self.runs[name] = run
        self._start_more()

    def result(self, name: str) -> tuple[int, dict[str, Any], str]:
        run = self.runs[name]
        while not run.finished():
            for any_run in self.runs.values():
                if any_run.hung():
                    any_run.stop()  # a hung run must not hold its slot: every wait here ends
            self._start_more()
            time.sleep(0.1)
        return run.result()

    def stop(self) -> None:
        for run in self.runs.values():
            run.stop()

    def pids(self) -> set[int]:
        return {r.process.pid for r in self.runs.values() if r.process is not None}

    def _start_more(self) -> None:
        running = sum(r.process is not None and not r.finished() for r in self.runs.values())
        for run in self.runs.values():
            if running >= self.parallel:
                return
            if run.process is None:
                run.start()
                running += 1

