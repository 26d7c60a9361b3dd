"""Benchmark: our multi-worker reference server next to sendspin 7.5.0 `serve --workers N`.

One run measures both servers on this machine and prints two tables:

1. Worker crash, 2 workers, the same client layout for both (3 ProbeClients per
   worker, PCM 48 kHz/16-bit/stereo, per-sample watermark; sendspin on a FLAC
   copy of the watermark, see below), SIGKILL of worker 0:
   - crash-detection latency: ours from coordinator.jsonl `worker_exit` t_us
     minus the kill (both CLOCK_MONOTONIC µs); sendspin from the time its
     `[health] Worker 0 ... crashed` line was read, with the kill time after
     stream start (its health check runs every 30 s of streaming);
   - time until a dropped client streams again: ours reconnect through the
     coordinator URL (307 to a live worker); sendspin has no such URL, so its
     clients rotate through the worker list from its banner;
   - missing/duplicated samples seen by the surviving worker's clients in the
     window after the kill;
   - what the coordinator does: ours keeps serving on the surviving worker (then
     the last worker is killed too: exit code and time to exit); sendspin as it
     behaves, watched for at most --hang-cap seconds after its detection, then
     SIGTERM (and SIGKILL if needed) to its process group.
2. Fan-out: server CPU-seconds per listener-second (utime+stime of the
   coordinator and every worker, from /proc, over a window after all listeners
   stream) at PCM 48 kHz/16-bit/stereo, for 1 and 2 workers, ours and
   sendspin, at --levels listeners; then a ramp for ours with 2 workers
   (--ramp) until gaps appear or the machine/load generator saturates. The
   listeners are bench/_mw_load.py processes (cheap raw-WebSocket clients,
   like bench/listeners.py, that send client/state after server/hello and check
   the watermark of every chunk), connected to the worker ports directly.

sendspin 7.5.0 binds 0.0.0.0, so the whole run happens inside a loopback-only
network namespace: the script re-executes itself under `unshare -n` (root
needed), brings lo up with multicast (its workers start zeroconf) and refuses
to run if any interface other than lo exists. Our server runs in the same
namespace on 127.0.0.1.

It installs what it needs: bench/.venv-sendspin (gitignored) with
`pip install sendspin==7.5.0`, made with the interpreter running this script,
which also runs our server; the watermark WAV/FLAC files are cached in
bench/.venv-sendspin/watermark/. sendspin with 2+ workers drops every 4th
packet of a WAV source (4096-frame packets stamped with truncated µs), so its
2-worker figures use the FLAC (4608-frame blocks = exactly 96 ms); the WAV loss
is shown once, as its own fan-out row.

    python bench/multiworker.py [--quick] [--out results.json] [--log-dir DIR]

Our server runs its fan-out without --log-dir (no event log), as deployed;
the crash run has it (coordinator.jsonl). ours-w2 runs last: its ramp takes
whatever remains of the time budget. Full run 5-7 minutes, --quick under 2. Every wait has a timeout; every
process runs in a process group that is killed at the end whatever happens.
Not a test: it judges nothing but prints the goal next to the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV = BENCH / ".venv-sendspin"
SENDSPIN_VERSION = "7.5.0"
LOAD = BENCH / "_mw_load.py"
SOURCES = BENCH / "_mw_sources.py"
SOURCE_SECONDS = 300
NS_SETUP = ("ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo && "
            'exec "$0" "$@"')
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
GOAL_CPU_PER_LS = 0.0005
GOAL_FACTOR = 4.0
PER_LOAD_PROC = 800          # listeners per load-generator process
LOAD_SATURATED = 0.9         # cores of one load process: it cannot keep up
MACHINE_SATURATED = 0.95     # share of all cores busy
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def now_us() -> int:
    return time.monotonic_ns() // 1000


# ---------------------------------------------------------------------------------------------- outer: setup


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_sendspin() -> None:
    """bench/.venv-sendspin with sendspin==7.5.0, made with this interpreter."""
    py = venv_python()
    probe = [str(py), "-c", "import importlib.metadata as m; print(m.version('sendspin'))"]
    if py.exists():
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            out = subprocess.run(probe, capture_output=True, text=True, timeout=60)
            if out.returncode == 0 and out.stdout.strip() == SENDSPIN_VERSION:
                return
    log(f"installing sendspin=={SENDSPIN_VERSION} into {VENV.relative_to(ROOT)} (once)")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", f"sendspin=={SENDSPIN_VERSION}"], check=True,
                   timeout=1200)
    out = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    if out.stdout.strip() != SENDSPIN_VERSION:
        raise SystemExit(f"multiworker: sendspin {SENDSPIN_VERSION} not importable in {VENV}: {out.stderr}")


def ensure_sources() -> dict[str, str]:
    out = subprocess.run([str(venv_python()), str(SOURCES), str(VENV / "watermark"), str(SOURCE_SECONDS)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"multiworker: could not make the watermark sources:\n{out.stderr}")
    return json.loads(out.stdout)


def run_outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        print("multiworker: needs root, unshare and ip (it runs inside a loopback-only network namespace)",
              file=sys.stderr)
        return 2
    ensure_sendspin()
    sources = ensure_sources()
    own_dir = args.log_dir is None
    work = Path(tempfile.mkdtemp(prefix="multiworker-")) if own_dir else Path(args.log_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "pgids.txt").write_text("")
    (work / "clean").unlink(missing_ok=True)
    env = dict(os.environ, MW_INNER="1", MW_WORKDIR=str(work), MW_WAV=sources["wav"], MW_FLAC=sources["flac"])
    argv = list(sys.argv[1:])
    cmd = ["unshare", "-n", "sh", "-c", NS_SETUP, sys.executable, str(Path(__file__).resolve()), *argv]
    hard = 260.0 if args.quick else 660.0

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background (SIGINT ignored)
        signal.signal(sig, interrupted)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    rc: int | None = None
    try:
        rc = proc.wait(timeout=hard)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        print(f"multiworker: stopping the run ({type(exc).__name__})", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait(timeout=10)
    finally:
        if not (work / "clean").exists():  # the inner run did not reap its groups: do it here
            for line in (work / "pgids.txt").read_text().split():
                with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                    os.killpg(int(line), signal.SIGKILL)
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if rc is None else rc


# ---------------------------------------------------------------------------------------------- /proc


def proc_stat(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def group_pids(pgid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and int(st[2]) == pgid and st[0] != "Z":
                out.append(int(name))
    return out


def cpu_ticks(pid: int) -> int | None:
    st = proc_stat(pid)
    return None if st is None else int(st[11]) + int(st[12])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def listening_pid(port: int, pids: list[int]) -> int | None:
    """The process among `pids` holding the LISTEN socket of `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{f[9]}]")
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
    return None


async def port_accepts(port: int) -> bool:
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, TimeoutError):
        return False
    w.close()
    return True


# ---------------------------------------------------------------------------------------------- process groups

PGIDS: list[int] = []


def track(pid: int) -> None:
    PGIDS.append(pid)
    with open(Path(os.environ["MW_WORKDIR"]) / "pgids.txt", "a") as f:
        f.write(f"{pid}\n")


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def wait_exit(popen: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait (without a thread) until `popen` has exited, at most `timeout` s; reaps it. True if it exited."""
    if popen.poll() is not None:
        return True
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(popen.pid)
    except ProcessLookupError:
        return popen.poll() is not None
    done: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await asyncio.wait_for(done, max(0.0, timeout))
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return popen.poll() is not None


async def stop_group(popen: subprocess.Popen[bytes], sig: int, timeout: float = 10.0) -> str:
    """`sig` to the leader, wait; then SIGKILL to the whole group. Says what happened."""
    if popen.poll() is not None:
        kill_group(popen.pid)
        return f"had exited rc={popen.returncode}"
    t = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        popen.send_signal(sig)
    if await wait_exit(popen, timeout):
        text = f"{signal.Signals(sig).name}: exit {popen.returncode} in {time.monotonic() - t:.2f} s"
    else:
        text = f"{signal.Signals(sig).name}: still alive after {timeout:.0f} s"
    left = group_pids(popen.pid)
    kill_group(popen.pid)
    await wait_exit(popen, 5)
    return text + (f", SIGKILL to {len(left)} left in its group" if left else ", nothing left in its group")


# ---------------------------------------------------------------------------------------------- servers


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
        self.popen: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    async def start(self, timeout: float = 20.0) -> None:
        with open(self.dir / "stderr.txt", "wb") as err:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=ROOT,
                                          start_new_session=True)
        track(self.popen.pid)
        end = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.popen.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"{self.name}: not ready (rc {self.popen.poll()}): "
                                   f"{(self.dir / 'stderr.txt').read_text(errors='replace')[-1500:]}")
            await asyncio.sleep(0.05)
        self.ready = json.loads(self.ready_file.read_text())

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
        if self.popen is None:
            return "not started"
        return await stop_group(self.popen, signal.SIGTERM)


class SendspinServer:
    label = "sendspin"

    def __init__(self, name: str, workers: int, port: int, source: str, work: Path) -> None:
        self.name, self.workers, self.port, self.source = name, workers, port, source
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.argv = [str(VENV / "bin" / "sendspin"), "serve", "--workers", str(workers), "--port", str(port),
                     "--log-level", "INFO", source]
        self.popen: subprocess.Popen[bytes] | None = None
        self.lines: list[tuple[int, str]] = []
        self.lock = threading.Lock()
        self.ports: list[int] = []

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def cmd(self) -> str:
        return f"sendspin serve --workers {self.workers} --port {self.port} --log-level INFO {Path(self.source).name}"

    async def start(self, timeout: float = 30.0) -> None:
        home = self.dir / "home"  # no user settings file can change the run
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
        env.update(HOME=str(home), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True)
        track(self.popen.pid)
        threading.Thread(target=self._reader, daemon=True).start()
        if self.workers == 1:
            hit = await self.wait_line(r"Server running at http://[^:]+:(\d+)", timeout)
            if hit:
                self.ports = [int(re.search(r":(\d+)", hit[1][hit[1].index("http"):]).group(1))]  # type: ignore[union-attr]
        else:
            end = time.monotonic() + timeout
            while time.monotonic() < end and self.popen.poll() is None:
                found = {int(m.group(1)): int(m.group(2)) for _, ln in self.snapshot()
                         if (m := re.search(r"Worker (\d+): http://[^:]+:(\d+)", ln))}
                if len(found) == self.workers:
                    self.ports = [found[i] for i in range(self.workers)]
                    break
                await asyncio.sleep(0.05)
        if not self.ports:
            raise RuntimeError(f"{self.name}: no banner within {timeout} s (rc {self.popen.poll()}): "
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
            if hit or (self.popen is not None and self.popen.poll() is not None):
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
        if self.popen is None:
            return "not started"
        return await stop_group(self.popen, signal.SIGINT)  # the only signal it handles


# ---------------------------------------------------------------------------------------------- crash


def _probe_classes():
    import itertools

    from harness.probe import RECONNECT_BACKOFF_S, ProbeClient

    class RotatingProbe(ProbeClient):
        """ProbeClient whose reconnect tries the next URL of a list (sendspin has no
        coordinator URL: a client can only rotate through the workers it was told of)."""

        def __init__(self, urls: list[str], start: int, *a: Any, **kw: Any) -> None:
            super().__init__(urls[start], *a, **kw)
            self.urls, self.index = urls, start

        async def _reconnect(self) -> None:
            lost = now_us()
            for attempt in itertools.count(1):
                await asyncio.sleep(RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S)) - 1])
                self.index = (self.index + 1) % len(self.urls)
                self.url = self.urls[self.index]
                try:
                    await self.connect()
                except (OSError, ConnectionError, TimeoutError) as exc:
                    self.log.emit("reconnect_failed", self.name, attempt=attempt, url=self.url,
                                  error=str(exc) or type(exc).__name__)
                    continue
                self.log.emit("reconnected", self.name, attempt=attempt, url=self.connected_url,
                              down_us=now_us() - lost)
                return

    return ProbeClient, RotatingProbe


def probe_config(name: str):
    from harness.probe import ProbeConfig

    return ProbeConfig(name=name, roles=["player@v1"], buffer_capacity=32_000_000, reconnect=True)


async def start_probes(make, per_worker: int, workers: int, timeout: float = 15.0) -> list[Any]:
    probes = [make(w, f"w{w}-{i}") for w in range(workers) for i in range(per_worker)]
    await asyncio.wait_for(asyncio.gather(*(p.connect() for p in probes)), timeout)
    end = time.monotonic() + timeout
    while time.monotonic() < end and not all(p.audio_chunks for p in probes):
        await asyncio.sleep(0.05)
    if not all(p.audio_chunks for p in probes):
        raise RuntimeError(f"not all probes stream: {[(p.name, p.audio_chunks) for p in probes]}")
    return probes


async def close_probes(probes: list[Any]) -> None:
    await asyncio.gather(*(asyncio.wait_for(p.close(goodbye=False, timeout=1.0), 3) for p in probes),
                         return_exceptions=True)
    for p in probes:
        p.log.close()


def probe_figures(directory: Path, probes: list[Any], t_kill: int, window_us: int, baseline_from: int,
                  victim: int, clip_us: int | None = None) -> dict[str, Any]:
    """From the probes' event logs: the dropped clients' recovery, the survivors' gaps."""
    from harness.events import Events

    ev = Events.load(directory)
    out: dict[str, Any] = {"movers": {}, "survivors": {}}
    end = t_kill + window_us if clip_us is None else min(t_kill + window_us, clip_us)
    for p in probes:
        audio = ev.select("audio", proc=p.name)
        before = [r for r in audio if baseline_from <= r["t_us"] < t_kill]
        base = {"chunks": len(before), "missing": sum(r["gap"] for r in before),
                "dup": sum(r["dup"] for r in before)}
        if p.name.startswith(f"w{victim}-"):
            close = next((r for r in ev.select("close", proc=p.name) if r["t_us"] >= t_kill), None)
            back = next((r for r in ev.select("reconnected", proc=p.name) if r["t_us"] > t_kill), None)
            again = next((r for r in audio if back is not None and r["t_us"] > back["t_us"]), None)
            failed = [r for r in ev.select("reconnect_failed", proc=p.name)
                      if r["t_us"] > t_kill and (back is None or r["t_us"] < back["t_us"])]
            out["movers"][p.name] = {
                "drop_seen_ms": None if close is None else round((close["t_us"] - t_kill) / 1000, 1),
                "failed_attempts": len(failed),
                "reconnected_ms": None if back is None else round((back["t_us"] - t_kill) / 1000, 1),
                "reconnected_to": None if back is None else back["url"],
                "streams_again_ms": None if again is None else round((again["t_us"] - t_kill) / 1000, 1),
                "baseline": base}
        else:
            after = [r for r in audio if t_kill <= r["t_us"] < end]
            closes = [r for r in ev.select("close", proc=p.name) if r["t_us"] >= t_kill]
            out["survivors"][p.name] = {
                "window_s": round((end - t_kill) / 1e6, 2), "chunks": len(after),
                "missing": sum(r["gap"] for r in after), "dup": sum(r["dup"] for r in after),
                "reordered": sum(r["reorder"] for r in after),
                "min_lead_ms": round(min(r["lead_us"] for r in after) / 1000, 1) if after else None,
                "closed_ms": round((closes[0]["t_us"] - t_kill) / 1000, 1) if closes else None,
                "baseline": base}
    return out


def _status(http: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{http}/api/status", timeout=3) as r:
        return json.loads(r.read())


async def crash_ours(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from harness.events import Events
    from harness.protocol import EventLog

    ProbeClient, _ = _probe_classes()
    srv = OursServer("ours-crash", 2, work, log_events=True, extra=("--heartbeat-timeout", "1"))
    res: dict[str, Any] = {"server": "ours", "workers": 2, "source": "watermark (generated)"}
    pdir = work / "ours-crash-probes"
    probes: list[Any] = []
    try:
        await srv.start()
        res["cmd"] = srv.cmd
        info = srv.ready["workers"]
        coordinator_url = srv.ready["url"]

        def make(w: int, name: str) -> Any:
            return ProbeClient(info[w]["url"], probe_config(name), EventLog(pdir / f"{name}.jsonl", name))

        t_stream = now_us()
        probes = await start_probes(make, args.per_worker, 2)
        for p in probes:
            p.url = coordinator_url  # a dropped client comes back through the coordinator's redirect
        t_base = now_us()
        await asyncio.sleep(args.baseline)
        t_kill = now_us()
        os.kill(info[0]["pid"], signal.SIGKILL)
        res["kill_after_stream_start_s"] = round((t_kill - t_stream) / 1e6, 2)
        log(f"ours crash: SIGKILL worker 0 (pid {info[0]['pid']})")
        await asyncio.sleep(args.crash_window + 0.5)
        status = await asyncio.to_thread(_status, srv.ready["http"])
        res["status_after_window"] = {k: status[k] for k in ("live_workers", "listeners", "sessions")}
        res["coordinator_alive_after_window"] = srv.popen is not None and srv.popen.poll() is None
        # a new client through the coordinator URL
        fresh = ProbeClient(coordinator_url, probe_config("fresh"), EventLog(pdir / "fresh.jsonl", "fresh"))
        t_fresh = now_us()
        try:
            await asyncio.wait_for(fresh.connect(), 5)
            end = time.monotonic() + 5
            while time.monotonic() < end and not fresh.audio_chunks:
                await asyncio.sleep(0.01)
            res["fresh_client"] = {"streams_ms": round((now_us() - t_fresh) / 1000, 1) if fresh.audio_chunks
                                   else None, "url": fresh.connected_url}
        except (OSError, ConnectionError, TimeoutError) as exc:
            res["fresh_client"] = {"error": repr(exc)}
        finally:
            await close_probes([fresh])
        # the last worker too: the coordinator should exit (code 3)
        assert srv.popen is not None
        t_kill2 = now_us()
        os.kill(info[1]["pid"], signal.SIGKILL)
        if await wait_exit(srv.popen, 15):
            t_exit = now_us()
            res["last_worker_killed"] = {"exit_code": srv.popen.returncode,
                                         "time_to_exit_ms": round((t_exit - t_kill2) / 1000, 1)}
        else:
            res["last_worker_killed"] = {"exit_code": None, "time_to_exit_ms": None, "note": "alive after 15 s"}
        res["last_worker_killed"]["stderr"] = (srv.dir / "stderr.txt").read_text(errors="replace").strip()[-200:]
        await close_probes(probes)
        probes = []
        coord = Events.load(srv.dir).select("worker_exit", proc="coordinator")
        exits = {r["worker"]: r for r in coord}
        res["detect_ms"] = round((exits[0]["t_us"] - t_kill) / 1000, 2) if 0 in exits else None
        res["detect_how"] = exits[0]["how"] if 0 in exits else None
        res["detect_last_ms"] = round((exits[1]["t_us"] - t_kill2) / 1000, 2) if 1 in exits else None
        res.update(probe_figures(pdir, _names(args), t_kill, int(args.crash_window * 1e6), t_base, 0))
    finally:
        await close_probes(probes)
        res["stop"] = await srv.stop()
    return res


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


def _names(args: argparse.Namespace) -> list[_Named]:
    return [_Named(f"w{w}-{i}") for w in range(2) for i in range(args.per_worker)]


async def crash_sendspin(args: argparse.Namespace, work: Path, flac: str) -> dict[str, Any]:
    from harness.protocol import EventLog

    _, RotatingProbe = _probe_classes()
    srv = SendspinServer("sendspin-crash", 2, 19100, flac, work)
    res: dict[str, Any] = {"server": "sendspin", "workers": 2, "source": Path(flac).name}
    pdir = work / "sendspin-crash-probes"
    probes: list[Any] = []
    try:
        await srv.start()
        res["cmd"] = srv.cmd
        res["detect_timeout"] = args.detect_timeout
        pids = group_pids(srv.pid)
        wpid = {port: listening_pid(port, [p for p in pids if p != srv.pid]) for port in srv.ports}
        if not all(wpid.values()):
            raise RuntimeError(f"sendspin worker pids not found: {wpid}")
        urls = srv.urls

        def make(w: int, name: str) -> Any:
            return RotatingProbe(urls, w, probe_config(name), EventLog(pdir / f"{name}.jsonl", name))

        probes = await start_probes(make, args.per_worker, 2)
        first = srv.find(r"connected to worker")
        t_stream = first[0] if first else now_us()
        t_base = now_us()
        await asyncio.sleep(args.baseline)
        victim = wpid[srv.ports[0]]
        assert victim is not None
        t_kill = now_us()
        os.kill(victim, signal.SIGKILL)
        since = (t_kill - t_stream) / 1e6
        res["kill_after_stream_start_s"] = round(since, 2)
        res["next_health_tick_s"] = round(30 - since % 30, 2)
        log(f"sendspin crash: SIGKILL worker 0 (pid {victim}) {since:.1f} s after stream start; "
            f"its health tick comes in {30 - since % 30:.1f} s")
        detected = await srv.wait_line(r"\[health\]|Traceback", args.detect_timeout, t_kill)
        await asyncio.sleep(max(0.0, (t_kill + args.crash_window * 1e6 - now_us()) / 1e6 + 0.5))
        res["detect_ms"] = None if detected is None else round((detected[0] - t_kill) / 1000, 1)
        res["detect_line"] = None if detected is None else detected[1].strip()
        t_det = detected[0] if detected else now_us()
        # what the coordinator does after detecting (or not)
        assert srv.popen is not None
        if await wait_exit(srv.popen, (t_det - now_us()) / 1e6 + args.hang_cap):
            fate = {"exited": True, "exit_code": srv.popen.returncode,
                    "exit_after_detect_s": round((now_us() - t_det) / 1e6, 2)}
        else:
            fate = {"exited": False, "alive_after_detect_s": round((now_us() - t_det) / 1e6, 1),
                    "processes": len(group_pids(srv.pid)),
                    "ports_accepting": {p: await port_accepts(p) for p in srv.ports}}
            t_term = time.monotonic()
            kill_group(srv.pid, signal.SIGTERM)
            if await wait_exit(srv.popen, 5):
                fate["sigterm_group"] = f"exit {srv.popen.returncode} in {time.monotonic() - t_term:.2f} s"
            else:
                fate["sigterm_group"] = "still alive after 5 s"
            await asyncio.sleep(0.3)
            left = group_pids(srv.pid)
            if left:
                kill_group(srv.pid)
                fate["sigkill_group"] = f"{len(left)} processes"
        res["coordinator"] = fate
        shut = srv.find(r"\[W1\] Shutdown received", t_kill)
        res["surviving_worker_shut_down_ms"] = None if shut is None else round((shut[0] - t_kill) / 1000, 1)
        await close_probes(probes)
        probes = []
        res.update(probe_figures(pdir, _names(args), t_kill, int(args.crash_window * 1e6), t_base, 0,
                                 clip_us=detected[0] if detected else None))
        res["log_after_kill"] = [f"{(t - t_kill) / 1e6:+.3f}s {ln}" for t, ln in srv.snapshot()
                                 if t >= t_kill and "GET /" not in ln][:12]
    finally:
        await close_probes(probes)
        res["stop"] = await srv.stop()
    return res


# ---------------------------------------------------------------------------------------------- fan-out


class LoadProc:
    def __init__(self, urls: list[str], count: int, prefix: str, err: Path, max_seconds: float) -> None:
        self.urls, self.count, self.prefix, self.err, self.max_seconds = urls, count, prefix, err, max_seconds
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.err, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(LOAD), "--urls", ",".join(self.urls), "--count", str(self.count),
                "--prefix", self.prefix, "--ready-timeout", "30", "--max-seconds", str(self.max_seconds),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err, start_new_session=True)
        track(self.proc.pid)

    async def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"load process {self.prefix} ended (rc {self.proc.returncode}); see {self.err}")
        return json.loads(line)

    async def command(self, cmd: str, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.read(timeout)

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.proc.stdin.write(b"quit\n")
                await self.proc.stdin.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            kill_group(self.proc.pid)
            await asyncio.wait_for(self.proc.wait(), 5)
        kill_group(self.proc.pid)


async def measure_level(args: argparse.Namespace, srv: OursServer | SendspinServer, n: int, work: Path,
                        tag: str) -> dict[str, Any]:
    urls = srv.urls
    nproc = max(1, math.ceil(n / PER_LOAD_PROC))
    counts = [n // nproc + (1 if i < n % nproc else 0) for i in range(nproc)]
    procs, offset = [], 0
    for i, c in enumerate(counts):
        rot = offset % len(urls)
        procs.append(LoadProc(urls[rot:] + urls[:rot], c, f"{tag}-{n}-{i}", work / f"load-{tag}.stderr",
                              args.settle + args.window + 90))
        offset += c
    try:
        for p in procs:
            await p.start()
        ready = await asyncio.gather(*(p.read(75) for p in procs))
        await asyncio.sleep(args.settle)
        await asyncio.gather(*(p.command("mark") for p in procs))
        workers_before = srv.worker_names()
        server_pids = group_pids(srv.pid)
        load_pids = [p.proc.pid for p in procs if p.proc is not None]
        s0 = {pid: cpu_ticks(pid) for pid in server_pids}
        l0 = {pid: cpu_ticks(pid) for pid in load_pids}
        m0, t0 = machine_ticks(), time.monotonic()
        await asyncio.sleep(args.window)
        s1 = {pid: cpu_ticks(pid) for pid in group_pids(srv.pid)}
        l1 = {pid: cpu_ticks(pid) for pid in load_pids}
        m1, t1 = machine_ticks(), time.monotonic()
        reports = await asyncio.gather(*(p.command("report") for p in procs))
        workers_lost = sorted(name for pid, name in workers_before.items() if cpu_ticks(pid) is None)
        workers_lost += [f"worker-{i}" for i in range(srv.workers)
                         if f"worker-{i}" not in workers_before.values() and srv.workers > 1]
    finally:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
    dur = t1 - t0
    split: dict[str, float] = {}
    names = srv.worker_names()
    for pid, t in s1.items():
        if t is None:
            continue
        role = names.get(pid) or ("coordinator" if pid == srv.pid else "resource_tracker"
                                  if "resource_tracker" in cmdline(pid) else f"other:{pid}")
        split[role] = round(split.get(role, 0.0) + (t - (s0.get(pid) or 0)) / CLK_TCK, 2)
    server_s = sum(split.values())
    load = [((l1[p] or 0) - (l0[p] or 0)) / CLK_TCK / dur for p in load_pids]
    busy = (m1[0] - m0[0]) / (m1[1] - m0[1]) if m1[1] > m0[1] else 0.0
    streaming = sum(r["with_chunks"] for r in reports)
    chunks = sum(r["chunks"] for r in reports)
    row = {
        "listeners": n, "connected": sum(r["connected"] for r in ready), "streaming": streaming,
        "load_procs": nproc, "window_s": round(dur, 2), "server_cpu_s": round(server_s, 2),
        "server_cores": round(server_s / dur, 3),
        "cpu_s_per_listener_s": round(server_s / (streaming * dur), 6) if streaming else None,
        "chunks_per_listener_s": round(chunks / (streaming * dur), 1) if streaming else 0.0,
        "missing": sum(r["missing"] for r in reports), "dup": sum(r["dup"] for r in reports),
        "backwards": sum(r["back"] for r in reports), "ts_gaps": sum(r["ts_gaps"] for r in reports),
        "listeners_with_missing": sum(r["with_missing"] for r in reports),
        "lost": sum(r["lost"] for r in reports),
        "lost_before_window": sum(r["lost_total"] - r["lost"] for r in reports),
        "workers_lost": sorted(workers_lost),
        "missing_pct": round(100 * sum(r["missing"] for r in reports)
                             / max(1, chunks * 1200 + sum(r["missing"] for r in reports)), 2),
        "load_cores": round(sum(load), 3), "load_max_proc_cores": round(max(load), 3) if load else 0.0,
        "machine_busy": round(busy, 3), "cpu_split_s": split,
        "other_cores": round(max(0.0, busy * NCPU - server_s / dur - sum(load)), 2),
    }
    row["gaps"] = bool(row["missing"] or row["ts_gaps"] or row["lost"] or streaming < n or workers_lost)
    row["load_saturated"] = row["load_max_proc_cores"] >= LOAD_SATURATED
    row["machine_saturated"] = busy >= MACHINE_SATURATED
    return row


async def fanout_config(args: argparse.Namespace, work: Path, key: str, srv: OursServer | SendspinServer,
                        levels: list[int], ramp: list[int], budget_end: float) -> dict[str, Any]:
    res: dict[str, Any] = {"config": key, "server": srv.label, "workers": srv.workers, "rows": []}
    try:
        await srv.start()
        res["cmd"] = srv.cmd
        for i, n in enumerate([*levels, *ramp]):
            is_ramp = i >= len(levels)
            if is_ramp and time.monotonic() + args.settle + args.window + 15 > budget_end:
                res["ramp_stop"] = f"time budget reached before {n}"
                break
            row = await measure_level(args, srv, n, work, key)
            row["ramp"] = is_ramp
            res["rows"].append(row)
            log(f"fan-out {key} n={n}: {row['cpu_s_per_listener_s']} CPU-s/listener-s, server "
                f"{row['server_cores']} cores, load {row['load_cores']}, machine {row['machine_busy']:.0%}, "
                f"missing {row['missing']}, ts gaps {row['ts_gaps']}, lost {row['lost']}/{row['lost_before_window']}, "
                f"streaming {row['streaming']}/{n}, workers lost {row['workers_lost']}")
            if ramp and n >= ramp[0] and (row["gaps"] or row["load_saturated"] or row["machine_saturated"]):
                res["ramp_stop"] = ramp_verdict(row)
                break
        else:
            if ramp:
                res["ramp_stop"] = f"no gaps and no saturation up to {res['rows'][-1]['listeners']} listeners"
    finally:
        res["stop"] = await srv.stop()
    return res


def ramp_verdict(row: dict[str, Any]) -> str:
    n = row["listeners"]
    sat = []
    if row["load_saturated"]:
        sat.append(f"a load-generator process at {row['load_max_proc_cores']:.2f} cores")
    if row["machine_saturated"]:
        sat.append(f"the machine {row['machine_busy']:.0%} busy ({NCPU} cores: server "
                   f"{row['server_cores']:.2f} + load generator {row['load_cores']:.2f})")
    if row["gaps"]:
        what = (f"gaps start at {n} listeners ({row['missing']} missing samples, {row['ts_gaps']} timestamp gaps, "
                f"{row['lost']} connections lost in the window and {row['lost_before_window']} before it, "
                f"{row['streaming']}/{n} streaming"
                + (f"; {', '.join(row['workers_lost'])} exited during the level" if row["workers_lost"]
                   else "") + ")")
        return what + (", with " + " and ".join(sat) + ": a saturated machine, not the server alone" if sat
                       else ": the server's own limit (nothing saturated)")
    return f"no gaps at {n} listeners, but saturated: " + " and ".join(sat) + "; the ramp stops there"


# ---------------------------------------------------------------------------------------------- report


def fmt_ms(v: float | None, unit: str = "ms") -> str:
    if v is None:
        return "—"
    return f"{v / 1000:.2f} s" if unit == "ms" and v >= 1000 else f"{v:.1f} {unit}"


def crash_rows(o: dict[str, Any], s: dict[str, Any], wav_row: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    def movers(r: dict[str, Any]) -> str:
        ms = [m["streams_again_ms"] for m in r.get("movers", {}).values()]
        if not ms:
            return "—"
        if any(x is None for x in ms):
            return f"{sum(x is None for x in ms)} of {len(ms)} never"
        urls = {m["reconnected_to"] for m in r["movers"].values()}
        ports = ",".join(sorted(u.rsplit(":", 1)[1].split("/")[0] for u in urls))
        fails = sum(m["failed_attempts"] for m in r["movers"].values())
        return f"{min(ms) / 1000:.2f}–{max(ms) / 1000:.2f} s (to :{ports}, {fails} failed tries)"

    def survivors(r: dict[str, Any]) -> str:
        sv = r.get("survivors", {}).values()
        if not sv:
            return "—"
        win = min(x["window_s"] for x in sv)
        lead = [x["min_lead_ms"] for x in sv if x["min_lead_ms"] is not None]
        return (f"{sum(x['missing'] for x in sv)} missing, {sum(x['dup'] for x in sv)} dup in {win:.1f} s "
                f"({len(sv)} clients, {sum(x['chunks'] for x in sv)} chunks, min lead "
                f"{min(lead) / 1000 if lead else float('nan'):.2f} s)")

    def baseline(r: dict[str, Any]) -> str:
        b = [x["baseline"] for g in ("movers", "survivors") for x in r.get(g, {}).values()]
        if not b:
            return "—"
        return (f"{sum(x['missing'] for x in b)} missing, {sum(x['dup'] for x in b)} dup "
                f"({sum(x['chunks'] for x in b)} chunks, all {len(b)} clients)")

    rows = [("source", o.get("source", "—"), s.get("source", "—")),
            ("kill after stream start", f"{o.get('kill_after_stream_start_s', '—')} s",
             f"{s.get('kill_after_stream_start_s', '—')} s (next 30 s health tick in "
             f"{s.get('next_health_tick_s', '—')} s)"),
            ("gaps before the kill (baseline)", baseline(o), baseline(s)),
            ("crash-detection latency",
             f"{fmt_ms(o.get('detect_ms'))} ({o.get('detect_how')}; coordinator.jsonl worker_exit)",
             f"{fmt_ms(s.get('detect_ms'))} (log: {(s.get('detect_line') or 'none')[:48]})"
             if s.get("detect_ms") is not None else f"not within {s.get('detect_timeout', '?')} s"),
            ("dropped clients stream again", movers(o) + " via the coordinator URL",
             movers(s) + " rotating the worker list"),
            ("surviving worker's clients after kill", survivors(o), survivors(s)
             + (" (window ends at detection)" if s.get("detect_ms") and s["detect_ms"] < 1000 * 10 else "")),
            ]
    st = o.get("status_after_window", {})
    fresh = o.get("fresh_client", {})
    ours_fate = (f"keeps serving: /api/status {st.get('live_workers')} live worker, {st.get('listeners')} listeners;"
                 f" a new client via the coordinator streams in {fmt_ms(fresh.get('streams_ms'))}")
    c = s.get("coordinator", {})
    shut = s.get("surviving_worker_shut_down_ms")
    if c.get("exited"):
        ss_fate = f"exits with {c.get('exit_code')} {c.get('exit_after_detect_s')} s after detection"
    elif c:
        ss_fate = (f"shuts the healthy worker down too (+{fmt_ms(shut)}), then HANGS: alive "
                   f"{c.get('alive_after_detect_s')} s after detection, ports accepting "
                   f"{c.get('ports_accepting')}; SIGTERM to its group: {c.get('sigterm_group')}"
                   + (f", SIGKILL {c['sigkill_group']}" if c.get("sigkill_group") else ""))
    else:
        ss_fate = "—"
    rows.append(("coordinator after the kill", ours_fate, ss_fate))
    last = o.get("last_worker_killed", {})
    rows.append(("last worker killed too", f"coordinator exits with code {last.get('exit_code')} after "
                 f"{fmt_ms(last.get('time_to_exit_ms'))} (detected in {fmt_ms(o.get('detect_last_ms'))})",
                 "not applicable (its coordinator already hung)" if not c.get("exited") else "—"))
    if wav_row:
        rows.append(("same, healthy, on the WAV source", "—",
                     f"{wav_row['missing_pct']} % of samples missing for {wav_row['listeners_with_missing']}/"
                     f"{wav_row['listeners']} listeners (2 workers, fan-out row)"))
    return rows


def print_table(headers: list[str], rows: list[list[str]], out: list[str], wrap: int | None = None) -> None:
    """Columns padded to their widest cell; with `wrap`, cells wrap at that width (multi-line rows)."""
    def lines(cell: str) -> list[str]:
        return textwrap.wrap(str(cell), wrap) or [""] if wrap else [str(cell)]

    cells = [[lines(c) for c in r] for r in rows]
    widths = [max(len(x) for x in [headers[i], *(ln for r in cells for ln in r[i])]) for i in range(len(headers))]
    out.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    out.append("  ".join("-" * w for w in widths))
    for r in cells:
        for k in range(max(len(c) for c in r)):
            out.append("  ".join((c[k] if k < len(c) else "").ljust(w)
                                 for c, w in zip(r, widths, strict=True)).rstrip())


def fanout_rows(fanout: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for cfg in fanout:
        for r in cfg["rows"]:
            per = r["cpu_s_per_listener_s"]
            rows.append([cfg["config"], str(r["listeners"]) + (" (ramp)" if r["ramp"] else ""),
                         f"{r['streaming']}", f"{r['server_cores']:.3f}",
                         "—" if per is None else f"{per:.6f}", "—" if per is None else f"{per * 1e6 / 40:.1f}",
                         f"{r['chunks_per_listener_s']:.1f}",
                         f"{r['missing']} ({r['missing_pct']} %)" if r["missing"] else "0",
                         str(r["ts_gaps"]), f"{r['lost']}/{r['lost_before_window']}"
                         + (f" {'+'.join(r['workers_lost'])} gone" if r["workers_lost"] else ""),
                         f"{r['load_cores']:.2f}/{r['load_procs']}", f"{r['machine_busy']:.0%}",
                         f"{r['other_cores']:.2f}"])
    return rows


def summary_lines(fanout: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    per: dict[tuple[str, int, int], float] = {}
    for cfg in fanout:
        if cfg["config"].endswith("wav"):
            continue
        for r in cfg["rows"]:
            if r["cpu_s_per_listener_s"] is not None and not r["gaps"]:
                per[(cfg["server"], cfg["workers"], r["listeners"])] = r["cpu_s_per_listener_s"]
    lines, data = [], {"ratios": [], "ours_max": None, "linear": []}
    ours_vals = [v for (srv, _, _), v in per.items() if srv == "ours"]
    for (srv, w, n), v in sorted(per.items()):
        if srv == "ours" and ("sendspin", w, n) in per:
            s = per[("sendspin", w, n)]
            data["ratios"].append({"workers": w, "listeners": n, "ours": v, "sendspin": s, "ratio": round(v / s, 3),
                                   "cheaper_x": round(s / v, 2)})
            lines.append(f"  {w} worker(s), {n} listeners: ours {v:.6f} vs sendspin {s:.6f} CPU-s/listener-s "
                         f"-> ours/sendspin = {v / s:.3f} ({s / v:.1f}x cheaper)")
    for srv in ("ours", "sendspin"):
        for n in sorted({k[2] for k in per if k[0] == srv}):
            if (srv, 1, n) in per and (srv, 2, n) in per:
                a, b = per[(srv, 1, n)], per[(srv, 2, n)]
                data["linear"].append({"server": srv, "listeners": n, "w1": a, "w2": b, "w2_over_w1": round(b / a, 2)})
                lines.append(f"  {srv}, {n} listeners: 2 workers / 1 worker per-listener cost = {b / a:.2f}")
    lines.append("  linear fit over the gap-free, unsaturated rows: server cores = fixed + marginal x listeners")
    fits: dict[tuple[str, int], tuple[float, float]] = {}
    for cfg in fanout:
        pts = [(r["streaming"], r["server_cores"]) for r in cfg["rows"]
               if not (r["gaps"] or r["load_saturated"] or r["machine_saturated"])]
        if cfg["config"].endswith("wav") or len({n for n, _ in pts}) < 2:
            continue
        mx, my = sum(n for n, _ in pts) / len(pts), sum(c for _, c in pts) / len(pts)
        slope = sum((n - mx) * (c - my) for n, c in pts) / sum((n - mx) ** 2 for n, _ in pts)
        fits[(cfg["server"], cfg["workers"])] = (my - slope * mx, slope)
        data.setdefault("fits", []).append({"config": cfg["config"], "fixed_cores": round(my - slope * mx, 4),
                                            "marginal_cpu_s_per_listener_s": round(slope, 6),
                                            "listeners": sorted({n for n, _ in pts})})
        lines.append(f"  {cfg['config']:<17} fixed {my - slope * mx:6.3f} cores + marginal {slope:.6f} CPU-s/listener-s"
                     f"  (n = {', '.join(str(n) for n in sorted({n for n, _ in pts}))})")
    for w in (1, 2):
        if ("ours", w) in fits and ("sendspin", w) in fits and fits[("ours", w)][1] > 0:
            o, t = fits[("ours", w)][1], fits[("sendspin", w)][1]
            lines.append(f"  marginal, {w} worker(s): sendspin/ours = {t / o:.1f}x")
    if ours_vals:
        data["ours_max"] = max(ours_vals)
        ratios = [r["cheaper_x"] for r in data["ratios"]]
        lines.append(f"  goal: ours <= {GOAL_CPU_PER_LS} CPU-s/listener-s: worst gap-free row {max(ours_vals):.6f} -> "
                     f"{'met' if max(ours_vals) <= GOAL_CPU_PER_LS else 'NOT met'}; >= {GOAL_FACTOR:.0f}x cheaper "
                     f"than sendspin: {min(ratios) if ratios else float('nan'):.1f}x at worst -> "
                     f"{'met' if ratios and min(ratios) >= GOAL_FACTOR else 'NOT met'}")
    return lines, data


def report(results: dict[str, Any]) -> str:
    out: list[str] = []
    meta = results["meta"]
    out.append("=" * 110)
    out.append(f"multi-worker servers side by side: ours (reference_server) vs sendspin {meta['sendspin']} "
               f"(aiosendspin {meta['aiosendspin']})")
    out.append(f"{meta['date']}, {NCPU} cores, loopback-only netns {meta['interfaces']}, "
               f"{'QUICK' if meta['quick'] else 'full'} run")
    out.append("=" * 110)
    crash = results.get("crash", {})
    o, s = crash.get("ours", {}), crash.get("sendspin", {})
    wav = next((r for c in results.get("fanout", []) if c["config"].endswith("wav") for r in c["rows"]), None)
    out.append(f"\n1. WORKER CRASH: 2 workers, {meta['per_worker']} clients per worker (ProbeClient, PCM 48 kHz/16-bit/"
               f"stereo, watermark checked per sample, reconnect on), SIGKILL of worker 0; window "
               f"{meta['crash_window']} s after the kill")
    for k in ("error",):
        if o.get(k) or s.get(k):
            out.append(f"   errors: ours={o.get(k)} sendspin={s.get(k)}")
    print_table(["", "ours", f"sendspin {meta['sendspin']}"], [list(r) for r in crash_rows(o, s, wav)], out,
                wrap=50)
    out.append(f"   ours:     {o.get('cmd', '—')}  (kill: coordinator log t_us - kill t_us, CLOCK_MONOTONIC)")
    out.append(f"   sendspin: {s.get('cmd', '—')}  (kill: time its log line was read - kill time)")
    if s.get("log_after_kill"):
        out.append("   sendspin log after the kill:")
        out.extend("     " + ln[:140] for ln in s["log_after_kill"])
    fan = results.get("fanout", [])
    out.append(f"\n2. FAN-OUT: server CPU-s per listener-second, PCM 48 kHz/16-bit/stereo, {meta['window']} s window "
               f"after {meta['settle']} s settling; listeners = bench/_mw_load.py processes "
               f"(<= {PER_LOAD_PROC} each) on the worker ports")
    print_table(["config", "listeners", "strm", "srv cores", "CPU-s/lsn-s", "µs/chunk", "ch/s", "missing",
                 "ts gaps", "lost in/before", "load cores/procs", "machine", "other cores"], fanout_rows(fan), out)
    for cfg in fan:
        out.append(f"   {cfg['config']}: {cfg.get('cmd', '—')}; stop: {cfg.get('stop')}")
        if cfg.get("ramp_stop"):
            out.append(f"     ramp: {cfg['ramp_stop']}")
        if cfg.get("error"):
            out.append(f"     ERROR: {cfg['error']}")
        last = next((r for r in reversed(cfg["rows"]) if not r["ramp"]), None)
        if last:
            out.append(f"     CPU split at {last['listeners']} (s in window): {last['cpu_split_s']}")
    lines, data = summary_lines(fan)
    results["summary"] = data
    out.append("\n   ours vs sendspin (gap-free rows only):")
    out.extend(lines)
    out.append(f"\nleftover processes: {results.get('leftovers')}; total {results.get('runtime_s')} s")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- inner


async def inner_async(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    budget_end = T0 + (100.0 if args.quick else 420.0)
    wav, flac = os.environ["MW_WAV"], os.environ["MW_FLAC"]
    results["crash"] = {}
    crashes = (("ours", lambda: crash_ours(args, work)), ("sendspin", lambda: crash_sendspin(args, work, flac)))
    for key, coro in crashes if "crash" in args.phases else ():
        try:
            results["crash"][key] = await coro()
        except Exception as exc:
            log(f"crash {key} failed: {exc!r}")
            results["crash"][key] = {"error": repr(exc)}
    levels = [int(x) for x in args.levels.split(",") if x]
    ramp = [int(x) for x in args.ramp.split(",") if x]
    ours_extra = tuple(shlex.split(args.ours_args))
    configs: list[tuple[str, Any, list[int], list[int]]] = [  # ours-w2 last: its ramp takes what time is left
        ("ours-w1", lambda: OursServer("ours-w1", 1, work, log_events=False, extra=ours_extra), levels, []),
        ("sendspin-w1-flac", lambda: SendspinServer("sendspin-w1-flac", 1, 19200, flac, work), levels, []),
        ("sendspin-w2-flac", lambda: SendspinServer("sendspin-w2-flac", 2, 19300, flac, work), levels, []),
        ("sendspin-w2-wav", lambda: SendspinServer("sendspin-w2-wav", 2, 19400, wav, work), levels[:1], []),
        ("ours-w2", lambda: OursServer("ours-w2", 2, work, log_events=False, extra=ours_extra), levels, ramp),
    ]
    results["fanout"] = []
    for key, make, lv, rp in configs if "fanout" in args.phases else ():
        try:
            results["fanout"].append(await fanout_config(args, work, key, make(), lv, rp, budget_end))
        except Exception as exc:
            log(f"fan-out {key} failed: {exc!r}")
            results["fanout"].append({"config": key, "server": key.split("-")[0], "workers": 0, "rows": [],
                                      "error": repr(exc)})


def run_inner(args: argparse.Namespace) -> int:
    names = [n for _, n in socket.if_nameindex()]
    if names != ["lo"]:
        print(f"multiworker: refusing to run: interfaces here are {names}, expected only ['lo']", file=sys.stderr)
        return 2
    work = Path(os.environ["MW_WORKDIR"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def on_term(signum: int, _frame: Any) -> None:
        for pgid in PGIDS:  # stop everything now; the unwinding below finds them gone
            kill_group(pgid)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    versions = subprocess.run([str(venv_python()), "-c", "import importlib.metadata as m; "
                               "print(m.version('sendspin'), m.version('aiosendspin'))"],
                              capture_output=True, text=True, timeout=60).stdout.split()
    results: dict[str, Any] = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick, "interfaces": names,
        "sendspin": versions[0] if versions else "?", "aiosendspin": versions[1] if len(versions) > 1 else "?",
        "per_worker": args.per_worker, "crash_window": args.crash_window, "window": args.window,
        "settle": args.settle, "levels": args.levels, "ramp": args.ramp, "nofile": [soft, hard],
        "cpus": NCPU, "python": sys.version.split()[0]}}
    try:
        asyncio.run(inner_async(args, work, results))
    finally:
        for pgid in PGIDS:
            kill_group(pgid)
        time.sleep(0.3)
        left = [f"{p} {cmdline(p)[:60]}" for g in PGIDS for p in group_pids(g)]
        results["leftovers"] = left or "none"
        results["runtime_s"] = round(time.monotonic() - T0, 1)
        (work / "clean").write_text("")
    text = report(results)
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run under 2 minutes (short windows, fewer levels)")
    ap.add_argument("--out", help="also write the results as JSON here")
    ap.add_argument("--log-dir", help="keep the servers' and clients' logs here (default: a temporary directory, "
                    "removed)")
    ap.add_argument("--levels", help="fan-out listener counts for every configuration (default 100,200)")
    ap.add_argument("--ramp", help="further counts for ours with 2 workers, until gaps or saturation "
                    "(default 400,800,1600,3200,6400)")
    ap.add_argument("--window", type=float, help="fan-out measuring window in s (default 10)")
    ap.add_argument("--settle", type=float, help="s between all listeners streaming and the window (default 3)")
    ap.add_argument("--phases", default="crash,fanout", help="which tables (default crash,fanout)")
    ap.add_argument("--ours-args", default="", help="fan-out: extra options for our server, e.g. "
                    "'--heartbeat-timeout 5' (default: none, as shipped)")
    ap.add_argument("--per-worker", type=int, default=3, help="crash: clients per worker (default 3)")
    ap.add_argument("--crash-window", type=float, default=10.0, help="crash: survivor window in s (default 10)")
    ap.add_argument("--baseline", type=float, help="crash: s of streaming before the kill (default 3)")
    ap.add_argument("--hang-cap", type=float, help="crash: s to watch sendspin's coordinator after it detects "
                    "the crash before SIGTERM to its group (default 30)")
    ap.add_argument("--detect-timeout", type=float, default=35.0, help="crash: s to wait for sendspin's "
                    "detection (its health tick is every 30 s)")
    args = ap.parse_args()
    quick = args.quick
    defaults = {"levels": "100" if quick else "100,200", "ramp": "400,800" if quick else "400,800,1600,3200,6400",
                "window": 3.0 if quick else 10.0, "settle": 1.0 if quick else 3.0,
                "baseline": 2.0 if quick else 3.0, "hang_cap": 5.0 if quick else 30.0}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if quick and args.crash_window == 10.0:
        args.crash_window = 5.0
    if os.environ.get("MW_INNER") == "1":
        return run_inner(args)
    return run_outer(args)


if __name__ == "__main__":
    sys.exit(main())
