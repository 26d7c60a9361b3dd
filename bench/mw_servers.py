"""bench/multiworker.py, the two servers side by side: ours (reference_server) and sendspin."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mw_common import GROUPS, ROOT, VENV, now_us

from harness.topology import Child, await_ready_file, group_pids, listening_pid


class OursServer:
    label = "ours"

    def __init__(self, name: str, workers: int, work: Path, log_events: bool, extra: tuple[str, ...] = ()) -> None:
        self.name, self.workers = name, workers
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ready_file = self.dir / "ready.json"
        self.argv = [sys.executable, "-m", "reference_server", "--workers", str(workers),
                     "--ready-file", str(self.ready_file), *(["--log-dir", str(self.dir)] if log_events else []),
                     *extra]
        self.child: Child | None = None
        self.ready: dict[str, Any] = {}

    @property
    def popen(self) -> subprocess.Popen[bytes] | None:
        return None if self.child is None else self.child.popen

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    async def start(self, timeout: float = 20.0) -> None:
        self.child = GROUPS.spawn(self.name, self.argv, self.dir / "stderr.txt", cwd=ROOT)
        self.ready = await await_ready_file(self.child, self.ready_file, timeout)

    @property
    def urls(self) -> list[str]:
        return [w["url"] for w in self.ready["workers"]]

    def worker_names(self) -> dict[int, str]:
        return {w["pid"]: f"worker-{w['worker']}" for w in self.ready.get("workers", [])}

    @property
    def cmd(self) -> str:
        short = {str(self.ready_file): "READY.json", str(self.dir): "LOGDIR"}
        return "python -m reference_server " + " ".join(short.get(a, a) for a in self.argv[3:])

    async def stop(self) -> str:
        if self.child is None:
            return "not started"
        return await self.child.astop(signal.SIGTERM)


class SendspinServer:
    label = "sendspin"

    def __init__(self, name: str, workers: int, port: int, source: str, work: Path) -> None:
        self.name, self.workers, self.port, self.source = name, workers, port, source
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.argv = [str(VENV / "bin" / "sendspin"), "serve", "--workers", str(workers), "--port", str(port),
                     "--log-level", "INFO", source]
        self.child: Child | None = None
        self.lines: list[tuple[int, str]] = []
        self.lock = threading.Lock()
        self.ports: list[int] = []

    @property
    def popen(self) -> subprocess.Popen[bytes] | None:
        return None if self.child is None else self.child.popen

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def exited(self) -> bool:
        """The coordinator has exited (not reaped: its process group stays safe to signal)."""
        return self.child is not None and self.child.exited()

    @property
    def cmd(self) -> str:
        return f"sendspin serve --workers {self.workers} --port {self.port} --log-level INFO {Path(self.source).name}"

    async def start(self, timeout: float = 30.0) -> None:
        home = self.dir / "home"  # no user settings file can change the run
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
        env.update(HOME=str(home), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        self.child = GROUPS.spawn(self.name, self.argv, subprocess.PIPE, env=env)
        threading.Thread(target=self._reader, daemon=True).start()
        if self.workers == 1:
            hit = await self.wait_line(r"Server running at http://[^:]+:(\d+)", timeout)
            if hit:
                self.ports = [int(re.search(r":(\d+)", hit[1][hit[1].index("http"):]).group(1))]  # type: ignore[union-attr]
        else:
            end = time.monotonic() + timeout
            while time.monotonic() < end and not self.exited():
                found = {int(m.group(1)): int(m.group(2)) for _, ln in self.snapshot()
                         if (m := re.search(r"Worker (\d+): http://[^:]+:(\d+)", ln))}
                if len(found) == self.workers:
                    self.ports = [found[i] for i in range(self.workers)]
                    break
                await asyncio.sleep(0.05)
        if not self.ports:
            raise RuntimeError(f"{self.name}: no banner within {timeout} s (exited: {self.exited()}): "
                               + "\n".join(ln for _, ln in self.snapshot()[-20:]))

    def _reader(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        with open(self.dir / "output.txt", "w") as out:
            for raw in self.popen.stdout:
                t = now_us()
                line = raw.decode(errors="replace").rstrip("\n")
                out.write(f"{t} {line}\n")
                with self.lock:
                    self.lines.append((t, line))

    def snapshot(self) -> list[tuple[int, str]]:
        with self.lock:
            return list(self.lines)

    def find(self, pattern: str, after_us: int = 0) -> tuple[int, str] | None:
        rx = re.compile(pattern)
        return next(((t, ln) for t, ln in self.snapshot() if t >= after_us and rx.search(ln)), None)

    async def wait_line(self, pattern: str, timeout: float, after_us: int = 0) -> tuple[int, str] | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            hit = self.find(pattern, after_us)
            if hit or self.exited():
                return hit or self.find(pattern, after_us)
            await asyncio.sleep(0.02)
        return None

    @property
    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{p}/sendspin" for p in self.ports]

    def worker_names(self) -> dict[int, str]:
        if self.workers == 1:
            return {self.pid: "server (one process)"}
        pids = [p for p in group_pids(self.pid) if p != self.pid]
        return {pid: f"worker-{i}" for i, port in enumerate(self.ports) if (pid := listening_pid(port, pids))}

    async def stop(self) -> str:
        if self.child is None:
            return "not started"
        return await self.child.astop(signal.SIGINT)  # the only signal it handles
