"""Benchmark: what the fault proxy costs on the data path with no fault active, next to plain mitmproxy.

One run starts an echo server and three relays on 127.0.0.1 (ephemeral ports, each its own
process) and measures four paths to the same upstream:

  direct          client -> echo server
  sendspin-proxy  client -> `python -m proxy --listen 127.0.0.1:0 --upstream ws://...` (the real
                  CLI, defaults: control API on, health probe every 0.1 s, no fault) -> echo server
  mitmdump        client -> `mitmdump --mode reverse:http://... -q` (plain mitmproxy, temp confdir)
                  -> echo server
  asyncio-relay   client -> a bare asyncio TCP relay (this file, `--tcp-relay`: Protocol.data_received
                  -> peer transport.write, same write-buffer limits as proxy/relay, no WebSocket
                  awareness) -> echo server: the floor for any one-process asyncio relay, so the
                  table separates "a Python hop on this machine" from "what our relay adds"

The upstream is a websockets (asyncio) server in its own process (this file, `--echo-server`):
`/echo` echoes every message, `/sink` counts binary messages and answers a text message with
"COUNT BYTES", `/source` answers a text "N SIZE" with N binary messages of SIZE bytes (one
random blob, sent N times). Client (this process) and server use websockets' asyncio API with
compression=None (no permessage-deflate), no size limit, no keepalive pings, no HTTP proxy.

Measures (after a warm-up of 16 MiB echoed and 300 round trips per path):
  * echo MiB/s: the client sends 1 MiB binary messages and reads the echoes concurrently;
    MiB/s = MiB echoed back / (first send -> last echo received). Every echo is compared with
    what was sent. Through a proxy each MiB crosses it twice (once each way).
  * up MiB/s (client -> server): N x 1 MiB sent, then a text "?"; timed until the server's
    count arrives (and it must match).
  * down MiB/s (server -> client): a text "N 1048576" to /source; timed until the Nth message.
  * RTT: sequential round trips of a 100-byte JSON text message on /echo (send, wait for the
    echo, next); p50/p99 in µs (nearest rank).
Throughput runs in rounds of 64 MiB (32 with --quick), each on a fresh connection (the connect
is not timed), round r of every path before round r+1 of any (round trips likewise in blocks of
500 per path in turn), so a change in background load hits every path alike; fresh connections
also keep mitmdump (which holds every WebSocket message of an open flow in memory) to one round.
Alongside, the CPU time of each process (user+system from /proc, % of one core over the measure)
and of the whole machine (2 cores here; other work may be running): "softirq" = irq+softirq time
(loopback TCP is largely processed there), "other" = machine busy - softirq - our processes.

--profile: afterwards py-spy samples the sendspin-proxy process (attached by pid, --idle,
--nonblocking) during an echo throughput phase and during the RTT phase, and mitmdump during
an echo phase, and prints the top functions by self samples, self samples by file and inclusive
samples, plus the share of samples spent outside the event loop's select() ("busy"; CPU time
the kernel spends inside epoll_wait, e.g. on wake-ups, counts as idle there but not in the
CPU table). Without py-spy (`.venv/bin/python -m pip install py-spy`) it falls back to a
second sendspin-proxy started under cProfile (echo phase only; the profile then includes
start-up). The profiled phases are not in the table.

    .venv/bin/python bench/proxy_overhead.py [--quick] [--out results.json] [--profile] [--mib 256]
        [--rtt 5000] [--no-mitmdump] [--no-relay-baseline]        (or: ./run bench proxy_overhead ...)

Not a test: it judges nothing, it prints the goal next to the figures (issue goal: >= 0.5x direct
echo throughput, <= 0.5 ms added RTT p50; plain mitmproxy measured 0.2x and +0.85 ms). Every
wait is bounded; every child runs in its own process group (and gets SIGKILL if this process
dies), which is killed at the end whatever happens; the temporary directory is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import pstats
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.topology import (
    Child,
    ChildSet,
    await_ready_file,
    cpu_times,
    machine_ticks,
    wait_exit,
    wait_listening,
)

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MSG_BYTES = MiB
WARM_MIB = 16
WARM_RTT = 300
RTT_BYTES = 100
ROUND_TIMEOUT_S = 120.0
START_TIMEOUT_S = 30.0
GOAL_RATIO = 0.5
PROXY_ARGS: list[str] = []  # --proxy-args, for every sendspin-proxy this run starts
GOAL_ADDED_P50_US = 500


# ---------------------------------------------------------------------------------------------- echo server


async def serve_echo(ready_file: Path) -> int:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    blobs: dict[int, bytes] = {}

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/echo"
        with contextlib.suppress(ConnectionClosed):
            if path.startswith("/sink"):
                count = nbytes = 0
                async for msg in ws:
                    if isinstance(msg, str):
                        await ws.send(f"{count} {nbytes}")
                        count = nbytes = 0
                    else:
                        count += 1
                        nbytes += len(msg)
            elif path.startswith("/source"):
                async for msg in ws:
                    n, size = (int(x) for x in str(msg).split())
                    blob = blobs.get(size)
                    if blob is None:
                        blob = blobs[size] = os.urandom(size)
                    for _ in range(n):
                        await ws.send(blob)
            else:
                async for msg in ws:
                    await ws.send(msg)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None, ping_interval=None) as server:
        port = next(s.getsockname()[1] for s in server.sockets)
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "port": port, "url": f"ws://127.0.0.1:{port}"}))
        os.replace(tmp, ready_file)
        await stop.wait()
    return 0


class _RelaySide(asyncio.Protocol):
    """One socket of the bare relay: what it reads goes to the peer's transport as is."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _RelaySide | None = None
        self.pending: list[bytes] = []  # read before the peer is connected
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)  # as proxy/relay/relay.py

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:  # our peer's source is read no further until we drain
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def serve_relay(ready_file: Path, upstream_port: int) -> int:
    """The floor for any asyncio relay process: TCP bytes forwarded, no WebSocket awareness."""
    loop = asyncio.get_running_loop()

    def accepted() -> _RelaySide:
        client = _RelaySide()

        async def dial() -> None:
            try:
                _, server = await loop.create_connection(_RelaySide, "127.0.0.1", upstream_port)
            except OSError:
                if client.transport is not None:
                    client.transport.close()
                return
            client.peer, server.peer = server, client
            assert server.transport is not None
            for chunk in client.pending:
                server.transport.write(chunk)
            client.pending.clear()
            if client.eof:
                server.transport.write_eof()

        tasks.add(t := loop.create_task(dial()))
        t.add_done_callback(tasks.discard)
        return client

    tasks: set[asyncio.Task[None]] = set()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tmp = ready_file.with_name(ready_file.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": port, "url": f"ws://127.0.0.1:{port}"}))
    os.replace(tmp, ready_file)
    await stop.wait()
    server.close()
    return 0


# ---------------------------------------------------------------------------------------------- processes


class Children(ChildSet):
    """Every child in its own process group, started in ROOT, SIGKILLed if this process dies."""

    def __init__(self, work: Path) -> None:
        super().__init__(work, cwd=ROOT, die_with_parent=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- CPU accounting


class CpuAcc:
    """CPU of named processes (None = this one) and of the machine, summed over measured intervals."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.user = dict.fromkeys(pids, 0.0)
        self.sys = dict.fromkeys(pids, 0.0)
        self.wall = 0.0
        self.m = [0, 0, 0]

    @contextlib.contextmanager
    def measure(self) -> Any:
        t0 = time.perf_counter()
        c0 = {k: cpu_times(p) for k, p in self.pids.items()}
        m0 = machine_ticks()
        yield
        self.wall += time.perf_counter() - t0
        for k, p in self.pids.items():
            u, s_ = cpu_times(p)
            self.user[k] += u - c0[k][0]
            self.sys[k] += s_ - c0[k][1]
        m1 = machine_ticks()
        for i in range(3):
            self.m[i] += m1[i] - m0[i]

    def summary(self) -> dict[str, Any]:
        wall = self.wall or 1e-9
        out: dict[str, Any] = {"wall_s": round(self.wall, 3)}
        ours = 0.0
        for k in self.pids:
            pct_ = 100 * (self.user[k] + self.sys[k]) / wall
            ours += pct_
            out[k] = {"pct": round(pct_, 1), "user_s": round(self.user[k], 3), "sys_s": round(self.sys[k], 3)}
        ncpu = os.cpu_count() or 1
        busy, irq, total = self.m
        machine = 100 * ncpu * busy / total if total else 0.0  # in % of one core
        softirq = 100 * ncpu * irq / total if total else 0.0
        out["machine_pct"] = round(machine, 1)
        out["softirq_pct"] = round(softirq, 1)
        out["other_pct"] = round(max(0.0, machine - softirq - ours), 1)
        return out


# ---------------------------------------------------------------------------------------------- client measures


async def ws_connect(url: str) -> Any:
    from websockets.asyncio.client import connect

    return await connect(url, compression=None, max_size=None, ping_interval=None, proxy=None, open_timeout=10,
                         close_timeout=5)


async def ws_close(ws: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 10)


async def round_echo(base: str, n: int, payload: bytes) -> float:
    ws = await ws_connect(base + "/echo")
    try:
        async def sender() -> None:
            for _ in range(n):
                await ws.send(payload)

        async def receiver() -> int:
            bad = 0
            for _ in range(n):
                m = await ws.recv()
                bad += m != payload
            return bad

        async with asyncio.timeout(ROUND_TIMEOUT_S):
            t0 = time.perf_counter()
            _, bad = await asyncio.gather(sender(), receiver())
            dt = time.perf_counter() - t0
        if bad:
            raise RuntimeError(f"{base}/echo: {bad} of {n} echoes differ from what was sent")
        return dt
    finally:
        await ws_close(ws)


async def round_up(base: str, n: int, payload: bytes) -> float:
    ws = await ws_connect(base + "/sink")
    try:
        async with asyncio.timeout(ROUND_TIMEOUT_S):
            t0 = time.perf_counter()
            for _ in range(n):
                await ws.send(payload)
            await ws.send("?")
            reply = await ws.recv()
            dt = time.perf_counter() - t0
        if reply != f"{n} {n * len(payload)}":
            raise RuntimeError(f"{base}/sink: the server counted {reply!r}, sent {n} x {len(payload)}")
        return dt
    finally:
        await ws_close(ws)


async def round_down(base: str, n: int, payload: bytes) -> float:
    ws = await ws_connect(base + "/source")
    try:
        async with asyncio.timeout(ROUND_TIMEOUT_S):
            t0 = time.perf_counter()
            await ws.send(f"{n} {len(payload)}")
            got = 0
            for _ in range(n):
                got += len(await ws.recv())
            dt = time.perf_counter() - t0
        if got != n * len(payload):
            raise RuntimeError(f"{base}/source: received {got} bytes, expected {n * len(payload)}")
        return dt
    finally:
        await ws_close(ws)


ROUNDS: dict[str, Callable[[str, int, bytes], Awaitable[float]]] = {
    "echo": round_echo, "up": round_up, "down": round_down}


async def throughput(kind: str, base: str, total_mib: int, round_mib: int, payload: bytes) -> dict[str, Any]:
    """`total_mib` in rounds of `round_mib` on one path (warm-up and profiling; the table interleaves)."""
    rounds = []
    left = total_mib
    while left > 0:
        n = min(round_mib, left)
        rounds.append((n, await ROUNDS[kind](base, n, payload)))
        left -= n
    return throughput_summary(rounds, len(payload))


def throughput_summary(rounds: list[tuple[int, float]], msg_bytes: int) -> dict[str, Any]:
    mib = sum(n for n, _ in rounds) * msg_bytes / MiB
    secs = sum(dt for _, dt in rounds)
    return {"mib": mib, "seconds": round(secs, 4), "mib_s": round(mib / secs, 1),
            "rounds_mib_s": [round(n * msg_bytes / MiB / dt, 1) for n, dt in rounds]}


def rtt_message(i: int) -> str:
    head = json.dumps({"type": "client/time", "payload": {"client_transmitted": 1_700_000_000_000 + i}, "pad": ""})
    return head[:-2] + "x" * max(0, RTT_BYTES - len(head)) + '"}'


async def rtt_on(ws: Any, n: int, start: int = 0) -> list[int]:
    """`n` sequential round trips of a 100-byte JSON text on an open /echo connection; each in ns."""
    msgs = [rtt_message(start + i) for i in range(n)]
    out = [0] * n
    async with asyncio.timeout(30 + n * 0.05):
        for i, msg in enumerate(msgs):
            t0 = time.perf_counter_ns()
            await ws.send(msg)
            r = await ws.recv()
            out[i] = time.perf_counter_ns() - t0
            if r != msg:
                raise RuntimeError(f"round trip {start + i} came back different")
    return out


async def rtt(base: str, n: int) -> list[int]:
    ws = await ws_connect(base + "/echo")
    try:
        return await rtt_on(ws, n)
    finally:
        await ws_close(ws)


def pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def rtt_summary(ns: list[int]) -> dict[str, Any]:
    us = [v / 1000 for v in ns]
    return {"n": len(us), "p50_us": round(pct(us, 0.5), 1), "p99_us": round(pct(us, 0.99), 1),
            "min_us": round(min(us), 1), "mean_us": round(sum(us) / len(us), 1), "max_us": round(max(us), 1)}


# ---------------------------------------------------------------------------------------------- the paths


@dataclass
class Route:
    name: str
    base: str  # ws://host:port
    child: Child | None  # the proxy process (None: direct)
    results: dict[str, Any] = field(default_factory=dict)


async def start_echo(children: Children, work: Path) -> tuple[Child, str]:
    ready = work / "echo.ready.json"
    c = children.spawn("echo-server", [sys.executable, str(Path(__file__).resolve()), "--echo-server",
                                       "--ready-file", str(ready)])
    info = await await_ready_file(c, ready, START_TIMEOUT_S)
    return c, info["url"]


async def start_relay(children: Children, work: Path, upstream_port: int) -> tuple[Child, str]:
    ready = work / "relay.ready.json"
    c = children.spawn("asyncio-relay", [sys.executable, str(Path(__file__).resolve()), "--tcp-relay",
                                         str(upstream_port), "--ready-file", str(ready)])
    info = await await_ready_file(c, ready, START_TIMEOUT_S)
    return c, info["url"]


async def start_sendspin_proxy(children: Children, work: Path, upstream: str, name: str = "sendspin-proxy",
                               wrap: list[str] | None = None) -> tuple[Child, str]:
    ready = work / f"{name}.ready.json"
    argv = [*(wrap or [sys.executable]), "-m", "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream,
            "--ready-file", str(ready), "--quiet", *PROXY_ARGS]
    c = children.spawn(name, argv)
    info = await await_ready_file(c, ready, START_TIMEOUT_S)
    return c, info["listen"]["url"].rstrip("/")


async def start_mitmdump(children: Children, work: Path, upstream_port: int) -> tuple[Child, str]:
    exe = VENV_BIN / "mitmdump"
    head = ([str(exe)] if exe.exists()
            else [sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()"])
    last: Exception | None = None
    for attempt in range(3):  # the free port may be taken between probe and bind
        confdir = work / f"mitmproxy-conf-{attempt}"
        confdir.mkdir()
        port = free_port()
        c = children.spawn(f"mitmdump-{attempt}", [*head, "--mode", f"reverse:http://127.0.0.1:{upstream_port}",
                                                   "--listen-host", "127.0.0.1", "--listen-port", str(port),
                                                   "--set", f"confdir={confdir}", "-q"])
        try:
            await wait_listening(c, port, START_TIMEOUT_S)
            return c, f"ws://127.0.0.1:{port}"
        except RuntimeError as e:
            last = e
            await c.astop(signal.SIGKILL, 5)
    raise RuntimeError(f"mitmdump could not be started: {last}")


# ---------------------------------------------------------------------------------------------- profiling


def py_spy_exe() -> str | None:
    p = VENV_BIN / "py-spy"
    return str(p) if p.exists() else shutil.which("py-spy")


IDLE_LEAF = "select (selectors.py"  # the event loop waiting in epoll_wait
ROOT_FRAMES = ("<module> (", "_run_code (", "_run_module_as_main (", "Runner.run (", "run (asyncio/runners.py",
               "BaseEventLoop.run_until_complete (", "BaseEventLoop.run_forever (", "BaseEventLoop._run_once (",
               "main (proxy/cli.py", "mitmdump (mitmproxy/tools/main.py", "run (mitmproxy/tools/main.py")


def _file_of(frame: str) -> str:
    """'Pipe.feed (proxy/relay/pipe.py:261)' -> 'proxy/relay/pipe.py'."""
    inner = frame.rpartition(" (")[2].rstrip(")")
    return inner.rpartition(":")[0] or inner


def summarize_collapsed(text: str, top: int) -> dict[str, Any]:
    """From py-spy's raw (collapsed) output: the busy share (samples not waiting in select()), and
    per function its self and inclusive share of the busy samples (frames present in every busy
    sample's ancestry -- the entry point, run_forever, _run_once -- are left out of the inclusive list)."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = idle = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf = frames[-1]
        if IDLE_LEAF in leaf:
            idle += n
            continue
        self_c[leaf] += n
        files[_file_of(leaf)] += n
        for fn in set(frames):
            incl[fn] += n
    busy = total - idle

    def share(c: Counter[str], skip_roots: bool = False) -> list[tuple[str, int, float]]:
        rows = [(f, n) for f, n in c.most_common() if not (skip_roots and f.startswith(ROOT_FRAMES))]
        return [(f, n, round(100 * n / busy, 1)) for f, n in rows[:top]] if busy else []

    return {"samples": total, "idle_samples": idle, "busy_pct": round(100 * busy / total, 1) if total else 0.0,
            "self": share(self_c), "inclusive": share(incl, skip_roots=True), "self_by_file": share(files)[:8]}


async def py_spy_during(children: Children, work: Path, target: Child, label: str, rate: int,
                        action: Callable[[], Awaitable[Any]]) -> tuple[dict[str, Any], Any]:
    exe = py_spy_exe()
    assert exe is not None
    out = work / f"profile-{label}.txt"
    spy = children.spawn(f"py-spy-{label}", [exe, "record", "--pid", str(target.pid), "--format", "raw",
                                             "--function", "--idle", "--nonblocking", "--rate", str(rate),
                                             "-o", str(out)])
    end = time.monotonic() + 15
    while "Sampling process" not in spy.tail(4000):  # attached
        if spy.popen.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"py-spy did not start sampling (rc {spy.popen.poll()}):\n{spy.tail()}")
        await asyncio.sleep(0.02)
    try:
        result = await action()
    finally:
        with contextlib.suppress(ProcessLookupError):
            spy.popen.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        if not await wait_exit(spy, 20):
            await spy.astop(signal.SIGKILL, 5)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote no profile:\n{spy.tail()}")
    return summarize_collapsed(out.read_text(), 15), result


def summarize_pstats(path: Path, top: int) -> dict[str, Any]:
    st = pstats.Stats(str(path))
    rows = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append((f"{fn} ({Path(file).name}:{line})", nc, tt, ct))
    by_self = sorted(rows, key=lambda r: r[2], reverse=True)[:top]
    by_cum = sorted(rows, key=lambda r: r[3], reverse=True)[:top]
    return {"tool": "cProfile",
            "self": [(f, nc, round(tt, 3)) for f, nc, tt, _ in by_self],
            "inclusive": [(f, nc, round(ct, 3)) for f, nc, _, ct in by_cum]}


async def profile_phase(args: argparse.Namespace, children: Children, work: Path, paths: dict[str, Route],
                        upstream: str, payload: bytes) -> dict[str, Any]:
    """Where the time goes: py-spy on the running proxies (or cProfile on a second sendspin-proxy)."""
    out: dict[str, Any] = {}
    secs = 2.0 if args.quick else 4.0

    def volume(p: Route) -> int:  # about `secs` of echo at the rate measured
        mib_s = p.results.get("echo", {}).get("mib_s", 100.0)
        return max(args.round_mib, int(mib_s * secs) // args.round_mib * args.round_mib)

    ours = paths["sendspin-proxy"]
    vol = volume(ours)
    if py_spy_exe() is not None:
        assert ours.child is not None
        prof, res = await py_spy_during(children, work, ours.child, "sendspin-echo", 250,
                                        lambda: throughput("echo", ours.base, vol, args.round_mib, payload))
        out["sendspin-proxy echo"] = {"tool": "py-spy", "phase": f"echo {vol} MiB",
                                      "under_profile": f"{res['mib_s']:.0f} MiB/s", **prof}
        n = 3000 if args.quick else 10000
        prof, ns = await py_spy_during(children, work, ours.child, "sendspin-rtt", 500, lambda: rtt(ours.base, n))
        out["sendspin-proxy rtt"] = {"tool": "py-spy", "phase": f"RTT x {n}",
                                     "under_profile": f"p50 {rtt_summary(ns)['p50_us']:.0f} µs", **prof}
        mitm = paths.get("mitmdump")
        if mitm is not None and mitm.child is not None:
            mvol = volume(mitm)
            prof, res = await py_spy_during(children, work, mitm.child, "mitmdump-echo", 250,
                                            lambda: throughput("echo", mitm.base, mvol, args.round_mib, payload))
            out["mitmdump echo"] = {"tool": "py-spy", "phase": f"echo {mvol} MiB",
                                    "under_profile": f"{res['mib_s']:.0f} MiB/s", **prof}
        return out
    print("proxy_overhead: py-spy not found (.venv/bin/python -m pip install py-spy); "
          "profiling a second sendspin-proxy under cProfile instead", file=sys.stderr)
    prof_file = work / "sendspin-proxy.prof"
    child, base = await start_sendspin_proxy(children, work, upstream, name="sendspin-proxy-cprofile",
                                             wrap=[sys.executable, "-m", "cProfile", "-o", str(prof_file)])
    await throughput("echo", base, WARM_MIB, args.round_mib, payload)
    res = await throughput("echo", base, vol, args.round_mib, payload)
    child.popen.send_signal(signal.SIGTERM)
    if not await wait_exit(child, 15) or not prof_file.exists():
        raise RuntimeError(f"the cProfile'd proxy wrote no profile:\n{child.tail()}")
    out["sendspin-proxy echo"] = {"phase": f"echo {vol} MiB, whole process life incl. start-up",
                                  "under_profile": f"{res['mib_s']:.0f} MiB/s", **summarize_pstats(prof_file, 15)}
    return out


# ---------------------------------------------------------------------------------------------- run + report

KINDS = ("echo", "up", "down")


async def run(args: argparse.Namespace, work: Path, children: Children) -> dict[str, Any]:
    payload = os.urandom(MSG_BYTES)
    echo, upstream = await start_echo(children, work)
    port = int(upstream.rsplit(":", 1)[1])
    paths: dict[str, Route] = {"direct": Route("direct", upstream, None)}
    ours, ours_url = await start_sendspin_proxy(children, work, upstream)
    paths["sendspin-proxy"] = Route("sendspin-proxy", ours_url, ours)
    notes = []
    if not args.no_mitmdump:
        try:
            mitm, mitm_url = await start_mitmdump(children, work, port)
            paths["mitmdump"] = Route("mitmdump", mitm_url, mitm)
        except RuntimeError as e:
            notes.append(f"mitmdump left out: {e}")
            print(f"proxy_overhead: {notes[-1]}", file=sys.stderr)
    if not args.no_relay_baseline:
        relay, relay_url = await start_relay(children, work, port)
        paths["asyncio-relay"] = Route("asyncio-relay", relay_url, relay)

    def acc(p: Route) -> CpuAcc:
        pids: dict[str, int | None] = {"client": None, "server": echo.pid}
        if p.child is not None:
            pids["proxy"] = p.child.pid
        return CpuAcc(pids)

    for p in paths.values():  # warm-up: connections, allocators, code paths
        await throughput("echo", p.base, WARM_MIB, args.round_mib, payload)
        await rtt(p.base, WARM_RTT)
    # throughput: round r of every path, then round r+1, ...: background load hits all paths alike
    nrounds = -(-args.mib // args.round_mib)
    for kind in KINDS:
        cpu = {name: acc(p) for name, p in paths.items()}
        rounds: dict[str, list[tuple[int, float]]] = {name: [] for name in paths}
        left = args.mib
        for _ in range(nrounds):
            n = min(args.round_mib, left)
            left -= n
            for name, p in paths.items():
                with cpu[name].measure():
                    rounds[name].append((n, await ROUNDS[kind](p.base, n, payload)))
        for name, p in paths.items():
            r = p.results[kind] = throughput_summary(rounds[name], len(payload))
            r["cpu"] = cpu[name].summary()
            print(f"  {kind:<4} {name:<15} {r['mib_s']:8.1f} MiB/s  rounds {r['rounds_mib_s']}", flush=True)
    # round trips: blocks of `block` per path in turn, each path on its own open connection
    conns = {name: await ws_connect(p.base + "/echo") for name, p in paths.items()}
    try:
        cpu = {name: acc(p) for name, p in paths.items()}
        samples: dict[str, list[int]] = {name: [] for name in paths}
        block = 250 if args.quick else 500
        done = 0
        while done < args.rtt:
            n = min(block, args.rtt - done)
            for name in paths:
                with cpu[name].measure():
                    samples[name] += await rtt_on(conns[name], n, done)
            done += n
    finally:
        for ws in conns.values():
            await ws_close(ws)
    for name, p in paths.items():
        r = p.results["rtt"] = rtt_summary(samples[name])
        r["cpu"] = cpu[name].summary()
        if p.child is not None:
            pc = r["cpu"]["proxy"]
            r["proxy_cpu_us_per_rtt"] = round(1e6 * (pc["user_s"] + pc["sys_s"]) / args.rtt, 1)
        print(f"  rtt  {name:<15} p50 {r['p50_us']:8.1f} µs  p99 {r['p99_us']:8.1f} µs", flush=True)
    profile = await profile_phase(args, children, work, paths, upstream, payload) if args.profile else None
    return {"paths": {k: {"url": p.base, **p.results} for k, p in paths.items()}, "profile": profile,
            "notes": notes}


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    paths = res["paths"]
    names = list(paths)
    d = paths["direct"]
    w = 17
    print()
    print(f"proxy_overhead: 1 MiB binary messages, {args.mib} MiB per throughput measure (rounds of "
          f"{args.round_mib} MiB, interleaved); {args.rtt} sequential round trips of a {RTT_BYTES}-byte JSON text")

    def row(label: str, cells: list[str], goal: str = "") -> None:
        print(f"{label:<24}" + "".join(f"{c:>{w}}" for c in cells) + (f"  {goal}" if goal else ""))

    row("", names, "goal (sendspin-proxy)")
    for kind, label in (("echo", "echo MiB/s"), ("up", "up MiB/s (c->s)"), ("down", "down MiB/s (s->c)")):
        cells = []
        for n in names:
            v = paths[n][kind]["mib_s"]
            cells.append(f"{v:.0f}" if n == "direct" else f"{v:.0f} ({v / d[kind]['mib_s']:.2f}x)")
        row(label, cells, f">= {GOAL_RATIO:.1f}x direct" if kind == "echo" else "")
    for q, label in (("p50_us", "RTT p50 µs"), ("p99_us", "RTT p99 µs")):
        cells = []
        for n in names:
            v = paths[n]["rtt"][q]
            cells.append(f"{v:.0f}" if n == "direct" else f"{v:.0f} ({v - d['rtt'][q]:+.0f})")
        row(label, cells, f"<= +{GOAL_ADDED_P50_US} µs" if q == "p50_us" else "")
    row("RTT mean µs", [f"{paths[n]['rtt']['mean_us']:.0f}" for n in names])
    print("CPU, % of one core over the measure: our processes client/server/proxy; the machine softirq/other")
    for kind in (*KINDS, "rtt"):
        cells, machine = [], []
        for n in names:
            c = paths[n][kind]["cpu"]
            cells.append(f"{c['client']['pct']:.0f}/{c['server']['pct']:.0f}/"
                         f"{c['proxy']['pct'] if 'proxy' in c else 0:.0f}")
            machine.append(f"{c['softirq_pct']:.0f}/{c['other_pct']:.0f}")
        row(f"  {kind} c/s/p", cells)
        row(f"  {kind} softirq/other", machine)

    def per_mib(n: str) -> str:
        if n == "direct":
            return "-"
        e = paths[n]["echo"]
        pc = e["cpu"]["proxy"]
        mib = 2 * e["mib"]  # echo: each MiB crosses the proxy twice
        return f"{1e3 * pc['user_s'] / mib:.2f}+{1e3 * pc['sys_s'] / mib:.2f}"

    row("proxy ms CPU/MiB usr+sys", [per_mib(n) for n in names], "(echo; each MiB relayed once per direction)")
    def per_rtt(n: str) -> str:
        if n == "direct":
            return "-"
        pc = paths[n]["rtt"]["cpu"]["proxy"]
        return f"{1e6 * pc['user_s'] / args.rtt:.0f}+{1e6 * pc['sys_s'] / args.rtt:.0f}"

    row("proxy µs CPU/RTT usr+sys", [per_rtt(n) for n in names], "(2 messages relayed per round trip)")
    ours = paths.get("sendspin-proxy")
    if ours is not None:
        ratio = ours["echo"]["mib_s"] / d["echo"]["mib_s"]
        added = ours["rtt"]["p50_us"] - d["rtt"]["p50_us"]
        print(f"sendspin-proxy vs goal: echo {ratio:.2f}x direct (goal >= {GOAL_RATIO}x: "
              f"{'reached' if ratio >= GOAL_RATIO else 'not reached'}), added RTT p50 {added:.0f} µs "
              f"(goal <= {GOAL_ADDED_P50_US} µs: {'reached' if added <= GOAL_ADDED_P50_US else 'not reached'})")
    for note in res["notes"]:
        print(f"note: {note}")
    for label, p in (res.get("profile") or {}).items():
        print()
        if p.get("tool") == "py-spy":
            print(f"profile {label} ({p['phase']}, {p['under_profile']} under py-spy): {p['samples']} samples, "
                  f"busy {p['busy_pct']}% (outside select); shares below are % of busy samples")
            sections = (("self", "self"), ("self_by_file", "self by file"), ("inclusive", "inclusive"))
            unit = "%"
        else:
            print(f"profile {label} (cProfile, {p['phase']}, {p['under_profile']}); seconds")
            sections = (("self", "tottime"), ("inclusive", "cumtime"))
            unit = "s"
        for key, title in sections:
            print(f"  top by {title} ({unit}, samples/calls):")
            for fn, n, share in p[key]:
                print(f"    {share:7.1f}  {n:>8}  {fn}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="64 MiB per measure, 1000 round trips")
    ap.add_argument("--mib", type=int, help="MiB per throughput measure (default 256, --quick 64)")
    ap.add_argument("--rtt", type=int, help="round trips (default 5000, --quick 1000)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("--profile", action="store_true", help="py-spy (or cProfile) the proxies afterwards")
    ap.add_argument("--no-mitmdump", action="store_true", help="leave out the plain mitmproxy column")
    ap.add_argument("--no-relay-baseline", action="store_true", help="leave out the bare asyncio relay column")
    ap.add_argument("--proxy-args", default="", help="extra sendspin-proxy arguments, e.g. '--socket-buffer 0'")
    ap.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tcp-relay", type=int, metavar="UPSTREAM_PORT", help=argparse.SUPPRESS)
    ap.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.mib = a.mib or (64 if a.quick else 256)
    a.rtt = a.rtt or (1000 if a.quick else 5000)
    a.round_mib = min(a.mib, 32 if a.quick else 64)
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.echo_server:
        return asyncio.run(serve_echo(args.ready_file))
    if args.tcp_relay:
        return asyncio.run(serve_relay(args.ready_file, args.tcp_relay))
    PROXY_ARGS[:] = shlex.split(args.proxy_args)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    work = Path(tempfile.mkdtemp(prefix="proxy-overhead-"))
    children = Children(work)
    hard_s = 300.0 if args.quick else 900.0
    t0 = time.monotonic()
    load0 = os.getloadavg()
    try:
        res = asyncio.run(asyncio.wait_for(run(args, work, children), hard_s))
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"proxy_overhead: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        children.kill_all()
        shutil.rmtree(work, ignore_errors=True)
    import mitmproxy.version
    import websockets

    res["env"] = {"python": platform.python_version(), "mitmproxy": mitmproxy.version.VERSION,
                  "websockets": websockets.__version__, "cpus": os.cpu_count(), "loadavg_before": load0,
                  "loadavg_after": os.getloadavg(), "seconds": round(time.monotonic() - t0, 1)}
    res["config"] = {"mib": args.mib, "round_mib": args.round_mib, "rtt": args.rtt, "msg_bytes": MSG_BYTES,
                     "rtt_bytes": RTT_BYTES}
    report(res, args)
    print(f"\n(load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; "
          f"run took {res['env']['seconds']} s)")
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=2))
        print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
