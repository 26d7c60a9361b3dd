"""bench/noise_fanout.py, the servers: ours in the noise profile (bench/mw_servers.py's
OursServer with `--profiles noise`), and aiosendspin 10.2.1's Noise server
(tests/noise_peers/bench_aiosendspin10_fanout.py under its own interpreter)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from mw_common import GROUPS, ROOT, log
from mw_servers import OursServer

from harness.topology import Child

AIOS_ENV = "SENDSPIN_AIOSENDSPIN10_PYTHON"
AIOS_VERSION = "10.2.1"
AIOS_SCRIPT = ROOT / "tests" / "noise_peers" / "bench_aiosendspin10_fanout.py"
AIOS_HELP = (f"{AIOS_ENV} names a Python with aiosendspin[server]=={AIOS_VERSION}, e.g. "
             f"python3.12 -m venv /tmp/aios1021 && /tmp/aios1021/bin/pip install 'aiosendspin[server]=={AIOS_VERSION}'")


def ours(name: str, workers: int, work: Path) -> OursServer:
    """Our reference server serving only the noise profile, on ephemeral ports, no event log."""
    return OursServer(name, workers, work, log_events=False, extra=("--profiles", "noise"))


def aiosendspin_python() -> tuple[str | None, str]:
    """(interpreter, "") when SENDSPIN_AIOSENDSPIN10_PYTHON has aiosendspin 10.2.1, else (None, why not)."""
    python = os.environ.get(AIOS_ENV)
    if not python:
        return None, f"{AIOS_ENV} is not set: {AIOS_HELP}"
    try:
        version = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('aiosendspin'))"],
                                 capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{AIOS_ENV}={python} cannot run: {exc}"
    if version != AIOS_VERSION:
        return None, f"{AIOS_ENV}={python} has aiosendspin {version or 'missing'}, not {AIOS_VERSION}"
    return python, ""


def runnable(keys: list[str], results: dict[str, Any]) -> tuple[list[str], str | None]:
    """`keys` less "aiosendspin" when SENDSPIN_AIOSENDSPIN10_PYTHON does not name aiosendspin
    10.2.1 (results["skipped"] then says why), and that interpreter."""
    python, why = aiosendspin_python() if "aiosendspin" in keys else (None, "")
    if "aiosendspin" in keys and not python:
        results["skipped"] = {"aiosendspin": why}
        log(f"aiosendspin skipped: {why}")
    return [k for k in keys if k != "aiosendspin" or python], python


class AiosendspinServer:
    """aiosendspin 10.2.1, default mode (Noise only), one process, one group for every listener."""

    label = "aiosendspin"
    workers = 1

    def __init__(self, name: str, python: str, work: Path, lead_ms: int, max_seconds: float) -> None:
        self.name = name
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.out = self.dir / "output.txt"
        self.argv = [python, str(AIOS_SCRIPT), "--lead-ms", str(lead_ms), "--max-seconds", str(max_seconds)]
        self.child: Child | None = None
        self.ready: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    @property
    def cmd(self) -> str:
        return f"$SENDSPIN_AIOSENDSPIN10_PYTHON {AIOS_SCRIPT.relative_to(ROOT)} " + " ".join(self.argv[2:])

    async def start(self, timeout: float = 30.0) -> None:
        # stdin a pipe kept open: the script leaves when it closes (or on SIGTERM, as stop() does)
        self.child = GROUPS.spawn(self.name, self.argv, self.out, stdin=subprocess.PIPE,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self.child.exited():
            for line in self.out.read_text(errors="replace").splitlines():
                if line.startswith('{"url"'):
                    self.ready = json.loads(line)
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name}: not listening within {timeout} s (exited: {self.child.exited()}): "
                           f"{self.child.tail(1500)}")

    @property
    def urls(self) -> list[str]:
        return [self.ready["url"]]

    def worker_names(self) -> dict[int, str]:
        return {self.pid: "server (one process)"}

    async def stop(self) -> str:
        if self.child is None:
            return "not started"
        try:
            return await self.child.astop()
        finally:
            if self.child.popen.stdin is not None:
                self.child.popen.stdin.close()
