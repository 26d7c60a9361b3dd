"""Child processes: spawned in their own process group, waited on with a timeout, stopped, reaped.

One helper for everything that starts processes: the harness (reference server,
fault proxy, bad servers) and the benchmarks in bench/ (echo servers, relays,
mitmdump, sendspin, load generators).

- `spawn_child` starts argv in a new session (its own process group), output to a
  log file, a pipe or inherited; `Child` is the handle.
- `Child.exited(timeout)` / `await Child.wait_exited(timeout)` wait for the leader to
  exit without reaping it (a pidfd), so its process group can still be signalled
  safely; `exits_within` / `aexits_within` do not count the time it waited for a CPU;
  `wait_exit` waits and reaps.
- `Child.stop` (sync) / `await Child.astop` (async): a signal (SIGTERM) to the leader,
  SIGKILL to the whole group after a timeout (time spent waiting for a CPU not
  counted), SIGKILL to whatever the group still holds, then reap. `ChildSet` tracks
  many children and `kill_all` ends them.
- `wait_ready_file` / `await_ready_file`: the child writes a JSON readiness file;
  `wait_listening`: a TCP port accepts connections. Every wait has a timeout (time
  spent waiting for a CPU not counted, up to a cap) and fails early when the child exits.
- /proc readers: `cpu_times`, `cpu_ticks`, `rss_bytes`, `group_pids`, `cmdline`,
  `listening_pid`, `machine_ticks`, `live_children`.

`spawn` / `reference_server` / `ManagedProcess` are the harness's use of it: a
process started with `--ready-file` whose readiness JSON is kept in `.ready`.
The harness never imports `proxy` or `reference_server`: it starts them as processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .protocol.cpuwait import FairTimeout

CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.02
# How long a process we start may take to be ready: generous, since a busy machine
# (a shared CI runner) can take seconds to start a Python process; a correctness
# bound, never a speed claim (start-up speed is measured by bench/multiworker.py).
# Time the process spent waiting for a CPU is not counted (`StartupClock`), up to
# STARTUP_CAP_S in all: a machine too busy to run it is not the process's fault.
STARTUP_TIMEOUT_S = 15.0
STARTUP_CAP_S = 4 * STARTUP_TIMEOUT_S


class StartupError(RuntimeError):
    """A child exited, or did not become ready in time, while starting."""


# ---------------------------------------------------------------------------------------------- /proc


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state), None once gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of `pid` in clock ticks, None once gone."""
    st = proc_stat(pid)
    return None if st is None else int(st[11]) + int(st[12])


def cpu_times(pid: int | None) -> tuple[float, float]:
    """(user, system) CPU seconds of `pid` (None: this process; (0, 0) once gone)."""
    if pid is None:
        t = os.times()
        return t.user, t.system
    st = proc_stat(pid)
    if st is None:
        return 0.0, 0.0
    return int(st[11]) / CLK_TCK, int(st[12]) / CLK_TCK


def machine_ticks() -> tuple[int, int, int]:
    """(busy, irq+softirq, total) jiffies over all CPUs, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(v[:8])
    return total - v[3] - v[4], v[5] + v[6], total


def rss_bytes(pid: int) -> int:
    """Resident set size now (VmRSS), 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and int(st[2]) == pgid and st[0] != "Z":
                out.append(int(name))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def listening_pid(port: int, pids: list[int]) -> int | None:
    """The process among `pids` holding the LISTEN socket of TCP `port`."""
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


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """`sig` to every process of group `pgid` (nothing if it is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# ---------------------------------------------------------------------------------------------- children


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


@dataclass
class Child:
    """A process leading its own process group (see `spawn_child`)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None = None  # where its stdout/stderr go (None: a pipe or inherited)
    _pidfd: int | None = field(default=None, repr=False, compare=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def tail(self, n: int = 2000) -> str:
        """The last `n` characters of its log."""
        if self.log is None:
            return ""
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def group_pids(self) -> list[int]:
        return group_pids(self.pid)

    def send_signal(self, sig: int) -> None:
        """`sig` to the leader (nothing once it is reaped or gone)."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        kill_group(self.pid, sig)

    def _fd(self) -> int | None:
        if self._pidfd is None and self.popen.returncode is None:
            with contextlib.suppress(OSError):
                self._pidfd = os.pidfd_open(self.pid)
        return self._pidfd

    def _close_fd(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def exited(self, timeout: float = 0.0) -> bool:
        """True once the leader has exited (waits up to `timeout` s); does not reap it."""
        if self.popen.returncode is not None:
            return True
        fd = self._fd()
        if fd is None:  # gone already (reaped elsewhere) or no pidfd: fall back to polling
            end = time.monotonic() + timeout
            while self.popen.poll() is None and time.monotonic() < end:
                time.sleep(POLL_S)
            return self.popen.returncode is not None
        return bool(select.select([fd], [], [], max(0.0, timeout))[0])

    async def wait_exited(self, timeout: float) -> bool:
        """Like `exited`, without blocking the event loop (the pidfd as a reader)."""
        if self.popen.returncode is not None:
            return True
        fd = self._fd()
        if fd is None:
            return await wait_exit(self, timeout)
        if select.select([fd], [], [], 0)[0]:
            return True
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, lambda: done.done() or done.set_result(None))
        try:
            await asyncio.wait_for(done, max(0.0, timeout))
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(fd)
        return bool(select.select([fd], [], [], 0)[0])  # (wait_for cancels `done` on a timeout)

    def exits_within(self, timeout: float) -> bool:
        """True once the leader has exited (not reaped) within `timeout` s, not counting the
        time its group waited for a CPU (a `StartupClock`)."""
        clock = StartupClock(self, timeout)
        while not self.exited(max(POLL_S, clock.remaining())):
            if clock.expired():
                return False
        return True

    async def aexits_within(self, timeout: float) -> bool:
        """`exits_within` without blocking the event loop."""
        clock = StartupClock(self, timeout)
        while not await self.wait_exited(max(POLL_S, clock.remaining())):
            if clock.expired():
                return False
        return True

    def reap(self, timeout: float = 5.0) -> int | None:
        """Collect the exit status (after `exited`); None if it is still running after `timeout`."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        if self.popen.returncode is not None:
            self._close_fd()
        return self.popen.returncode

    def _finish(self, kill_timeout: float) -> int | None:
        """After the leader exited or was given up on: SIGKILL to the group, then reap."""
        self.kill_group()  # the leader is a zombie at most: its pgid cannot have been reused
        if self.popen.returncode is None and not self.exited(kill_timeout):
            raise RuntimeError(f"{self.name} (pid {self.pid}) survived SIGKILL for {kill_timeout} s")
        return self.reap(kill_timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0, kill_timeout: float = 5.0) -> int | None:
        """`sig` to the leader; SIGKILL to the group if it has not exited within `timeout` s
        (`exits_within`), and to whatever is left in the group anyway; reaps it. Returns the
        exit code."""
        if self.popen.returncode is None and not self.exited():
            self.send_signal(sig)
            self.exits_within(timeout)
        return self._finish(kill_timeout)

    def _peek_returncode(self) -> int | None:
        """The exit code of an exited leader, without reaping it (Popen's convention: -N = signal N)."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:
            return self.popen.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    async def astop(self, sig: int = signal.SIGTERM, timeout: float = 10.0, kill_timeout: float = 5.0) -> str:
        """`stop` without blocking the event loop; says what happened."""
        if self.popen.returncode is not None or self.exited():
            return f"had exited rc={self._finish(kill_timeout)}"
        t = time.monotonic()
        self.send_signal(sig)
        if await self.aexits_within(timeout):
            text = f"{signal.Signals(sig).name}: exit {self._peek_returncode()} in {time.monotonic() - t:.2f} s"
        else:
            text = f"{signal.Signals(sig).name}: still alive after {timeout:.0f} s"
        left = [p for p in self.group_pids() if p != self.pid]
        self.kill_group()  # before the leader is reaped: its pgid cannot have been reused
        await self.wait_exited(kill_timeout)
        self.reap(kill_timeout)
        return text + (f", SIGKILL to {len(left)} left in its group" if left else ", nothing left in its group")

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn_child(name: str, argv: list[str], output: Path | int | None = None, *, cwd: Path | None = None,
                env: dict[str, str] | None = None, die_with_parent: bool = False,
                stdin: int | None = subprocess.DEVNULL) -> Child:
    """Start `argv` as the leader of a new session (own process group).

    `output`: a Path (stdout and stderr into that file, truncated first), `subprocess.PIPE`
    (stdout a pipe, stderr into it) or None (inherited). `env` replaces the environment.
    `die_with_parent`: the child gets SIGKILL when this process dies (PR_SET_PDEATHSIG;
    runs code between fork and exec, so not from a threaded caller)."""
    kw: dict[str, Any] = {"stdin": stdin, "cwd": cwd, "env": env, "start_new_session": True}
    if die_with_parent:
        kw["preexec_fn"] = _die_with_parent
    if isinstance(output, Path):
        with open(output, "wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=out, **kw)
        return Child(name, popen, output)
    if output is None:
        return Child(name, subprocess.Popen(argv, **kw))
    return Child(name, subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, **kw))


async def wait_exit(child: Child | subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until the process has exited, at most `timeout` s, and reap it. True if it exited."""
    c = child if isinstance(child, Child) else Child("process", child)
    if c.popen.returncode is None and c._fd() is not None:
        await c.wait_exited(timeout)
    else:
        end = time.monotonic() + timeout
        while c.popen.poll() is None and time.monotonic() < end:
            await asyncio.sleep(POLL_S)
    if c.popen.returncode is None and c.exited():
        c.reap(1.0)
    if c is not child:
        c._close_fd()
    return c.popen.returncode is not None


def _read_ready(child: Child, path: Path) -> tuple[bool, dict[str, Any] | None]:
    """One check of a readiness file: (done, info); StartupError (group killed, reaped) on exit."""
    if path.exists():
        return True, json.loads(path.read_text())
    if child.exited():
        child.stop(signal.SIGKILL, 0.0)
        raise StartupError(f"{child.name} exited with {child.popen.returncode} before it was ready:\n{child.tail()}")
    return False, None


class StartupClock(FairTimeout):
    """A `FairTimeout` on `child`'s process group: `timeout` s plus the time it waited for
    a CPU, STARTUP_CAP_S in all unless `cap` says otherwise."""

    def __init__(self, child: Child, timeout: float, cap: float | None = None) -> None:
        super().__init__(child.group_pids, timeout, STARTUP_CAP_S if cap is None else cap)


def wait_ready_file(child: Child, path: Path, timeout: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
    """The JSON `child` writes to `path` once ready; StartupError (child stopped) if it exits
    first or writes nothing within `timeout` s (a `StartupClock`)."""
    clock = StartupClock(child, timeout)
    while True:
        done, info = _read_ready(child, path)
        if done:
            assert info is not None
            return info
        if clock.expired():
            child.stop(signal.SIGKILL, 0.0)
            raise StartupError(f"{child.name} wrote no readiness file {clock}:\n{child.tail()}")
        time.sleep(POLL_S)


async def await_ready_file(child: Child, path: Path, timeout: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
    """`wait_ready_file` without blocking the event loop."""
    clock = StartupClock(child, timeout)
    while True:
        done, info = _read_ready(child, path)
        if done:
            assert info is not None
            return info
        if clock.expired():
            await child.astop(signal.SIGKILL, 0.0)
            raise StartupError(f"{child.name} wrote no readiness file {clock}:\n{child.tail()}")
        await asyncio.sleep(POLL_S)


async def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """Whether a TCP connection to host:port succeeds within `timeout` s (closed at once)."""
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    w.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(w.wait_closed(), timeout)
    return True


async def wait_listening(child: Child, port: int, timeout: float = STARTUP_TIMEOUT_S, host: str = "127.0.0.1") -> None:
    """Until `child` accepts connections on host:port; StartupError if it exits first or
    does not within `timeout` s (a `StartupClock`; the child is left running: the caller stops it)."""
    clock = StartupClock(child, timeout)
    while True:
        if child.exited():
            child.reap(1.0)
            raise StartupError(f"{child.name} exited with {child.popen.returncode}:\n{child.tail()}")
        if await port_accepts(port, host):
            return
        if clock.expired():
            raise StartupError(f"{child.name} not listening on {port} {clock}:\n{child.tail()}")
        await asyncio.sleep(0.05)


class ChildSet:
    """Children started by one run; `kill_all` ends them whatever state they are in.

    `on_spawn` is called with each new child's pid (its process group), e.g. to record
    the groups where an outer process can kill them if this one dies; `spawn_defaults`
    are `spawn_child` keywords for every child (cwd, env, die_with_parent)."""

    def __init__(self, work: Path | None = None, on_spawn: Callable[[int], None] | None = None,
                 **spawn_defaults: Any) -> None:
        self.work = work
        self.items: list[Child] = []
        self.pgids: list[int] = []
        self.on_spawn = on_spawn
        self.spawn_defaults = spawn_defaults  # keyword arguments of `spawn_child` for every child

    def track(self, pgid: int) -> None:
        """Also end process group `pgid` (a child started some other way) in `kill_all`."""
        self.pgids.append(pgid)
        if self.on_spawn is not None:
            self.on_spawn(pgid)

    def spawn(self, name: str, argv: list[str], output: Path | int | None = None, **kw: Any) -> Child:
        """`spawn_child`; with no `output`, it logs into WORK/NAME.log (inherited without a WORK)."""
        if output is None and self.work is not None:
            output = self.work / f"{name}.log"
        child = spawn_child(name, argv, output, **{**self.spawn_defaults, **kw})
        self.items.append(child)
        self.track(child.pid)
        return child

    def kill_all(self, grace_s: float = 5.0) -> None:
        """SIGTERM to every running child's group, `grace_s` to exit, then SIGKILL to every
        group (leaders and whatever they left) and reap."""
        for c in self.items:
            if c.popen.returncode is None and not c.exited():
                c.kill_group(signal.SIGTERM)
        end = time.monotonic() + grace_s
        for c in self.items:
            c.exited(max(0.0, end - time.monotonic()))
        for pgid in self.pgids:
            kill_group(pgid)
        for c in self.items:
            c.reap(5.0)

    def leftovers(self) -> list[int]:
        return [p for g in self.pgids for p in group_pids(g)]


# ---------------------------------------------------------------------------------------------- the harness's


@dataclass
class ManagedProcess(Child):
    """A child started with `--ready-file` (see `spawn`); `ready` is what it wrote there."""

    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def stderr_path(self) -> Path:
        assert self.log is not None
        return self.log

    def stop(self, timeout: float = 5.0) -> int:  # type: ignore[override]
        """SIGTERM, then SIGKILL (to its group) after `timeout`; reaps; returns the exit code."""
        code = super().stop(signal.SIGTERM, timeout, timeout)
        assert code is not None
        return code

    def __enter__(self) -> ManagedProcess:
        return self


def spawn(name: str, argv: list[str], workdir: Path, timeout: float = STARTUP_TIMEOUT_S,
          env: dict[str, str] | None = None) -> ManagedProcess:
    """Start `argv` with `--ready-file` appended and wait until it writes it."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready_file = workdir / f"{name}.ready.json"
    ready_file.unlink(missing_ok=True)
    child = spawn_child(name, [*argv, "--ready-file", str(ready_file)], workdir / f"{name}.stderr",
                        env={**os.environ, **(env or {})})
    ready = wait_ready_file(child, ready_file, timeout)
    return ManagedProcess(child.name, child.popen, child.log, child._pidfd, ready)


def reference_server(workdir: Path, *args: str, name: str = "server") -> ManagedProcess:
    """The embedded reference server, logging into `workdir`."""
    argv = [sys.executable, "-m", "reference_server", "--log-dir", str(workdir), "--proc", name, *args]
    return spawn(name, argv, workdir)
