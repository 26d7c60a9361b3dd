"""Processes the harness starts: spawned, waited on by readiness file, reaped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class StartupError(RuntimeError):
    pass


@dataclass
class ManagedProcess:
    """A child process owned by the harness. `stop()` always reaps it."""

    name: str
    popen: subprocess.Popen[bytes]
    ready: dict[str, Any]
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_bytes(self) -> int:
        """Resident set size now (VmRSS), 0 once the process is gone."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            pass
        return 0

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        return self.popen.returncode

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn(name: str, argv: list[str], workdir: Path, timeout: float = 15.0,
          env: dict[str, str] | None = None) -> ManagedProcess:
    """Start `argv` with `--ready-file` appended and wait until it writes it."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready_file = workdir / f"{name}.ready.json"
    ready_file.unlink(missing_ok=True)
    stderr_path = workdir / f"{name}.stderr"
    with open(stderr_path, "wb") as stderr:
        popen = subprocess.Popen([*argv, "--ready-file", str(ready_file)], stdin=subprocess.DEVNULL,
                                 stdout=stderr, stderr=stderr, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while not ready_file.exists():
        if popen.poll() is not None:
            raise StartupError(f"{name} exited with {popen.returncode} before it was ready:\n"
                               f"{stderr_path.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            popen.kill()
            popen.wait()
            raise StartupError(f"{name} wrote no readiness file within {timeout} s:\n"
                               f"{stderr_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.02)
    return ManagedProcess(name, popen, json.loads(ready_file.read_text()), stderr_path)


def reference_server(workdir: Path, *args: str, name: str = "server") -> ManagedProcess:
    """The embedded reference server, logging into `workdir`."""
    argv = [sys.executable, "-m", "reference_server", "--log-dir", str(workdir), "--proc", name, *args]
    return spawn(name, argv, workdir)


def live_children(pid: int | None = None) -> list[int]:
    """Child processes of `pid` (default: this process) that are not yet reaped."""
    parent = os.getpid() if pid is None else pid
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children
