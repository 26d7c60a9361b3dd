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

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GATE_TIMEOUT_S = 600  # one run, from its start; the whole default profile takes ~2 min quiet
PARALLEL = 3
WAIT_TIMEOUT_S = 1800  # pytest's timeout for a test that waits: its run's time and that of the runs ahead


def cases_args(*ids: str) -> list[str]:
    return [arg for case in ids for arg in ("--case", case)]


class GateRun:
    """One gate run; `client` is the --client-cmd, or None when `args` name the client."""

    def __init__(self, directory: Path, client: str | None, *args: str) -> None:
        self.directory = directory
        self.report = directory / "report"
        command = ["--client-cmd", client] if client is not None else []
        self.argv = [sys.executable, "-m", "pytest", "scenarios/test_client_gate.py", "-q", "-p", "no:cacheprovider",
                     f"--basetemp={directory / 'cases'}", *command, "--report-dir", str(self.report), *args]
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        with open(self.directory / "output.txt", "wb") as out:  # a file: a pipe nobody reads yet could fill
            self.process = subprocess.Popen(self.argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def finished(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def overdue(self) -> bool:
        return self.process is not None and time.monotonic() - self.started > GATE_TIMEOUT_S

    def result(self) -> tuple[int, dict[str, Any], str]:
        """Exit status (-9: killed as overdue), results.json by case id, and the run's output."""
        assert self.process is not None and self.process.returncode is not None
        path = self.report / "results.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        out = (self.directory / "output.txt").read_text(errors="replace")
        return self.process.returncode, {c["id"]: c for c in results.get("cases", [])}, out

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
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
                if any_run.overdue():
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

