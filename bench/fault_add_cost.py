"""Benchmark: what adding a fault through the control API costs the other connections streaming through
sendspin-proxy.

Background: on a busy machine the proxy's data path stopped for ~300 ms, for every connection, while the
control API added a fault (the fault catalogue was imported on the first POST /faults; it is now imported
at start). This measures the data path of connections the fault does not touch, while faults are added.

Topology (127.0.0.1 only, ephemeral ports, each its own process group; helpers from proxy_overhead.py):
the echo server of `bench/proxy_overhead.py` (`/echo` echoes every message), `sendspin-proxy` in front of
it (the real CLI, control API on), and --conns (4) WebSocket connections through the proxy from this
process. Each connection sends a ~100-byte timestamped text message every 10 ms (on a fixed schedule,
not waiting for the echo) and takes, per message, the echo round trip: the forwarding latency through the
proxy both ways, plus the echo server and this client.

One repetition = a fresh proxy process (so the first, cold add is included), the connections opened,
a warm-up with no control-API activity, then two windows of equal length:
  baseline   nothing on the control API
  adds       --adds (100) times, every --every-ms (50): POST /faults, then DELETE /faults/NAME. The fault
             is a `drop` restricted to `"connections": {"client_port": 1}`: valid, attached to no
             connection, so it touches none of the measured data. The adds come from a process of their
             own (this file, `--adder`: blocking http.client, one keep-alive connection opened before
             the baseline), so the measuring client's event loop does no HTTP during the window.
A message belongs to the window in which it was sent (messages sent in the 0.1 s between the windows
to neither). Repetitions (--reps, 4) run one after another.

Two conditions in one run: neighbour off, then neighbour on: `stress-ng --cpu 2 --io 2 --hdd 1
--hdd-bytes 512M --vm 1 --vm-bytes 1G --timeout 0` (temp files in this run's temporary directory) in its
own process group, stopped (SIGTERM, then SIGKILL to its group) and reaped when the condition ends,
whatever happens. --no-neighbour runs only the first condition.

Printed per condition: round trip p50 / p99 / max (ms, nearest rank, all repetitions pooled) in the
baseline and during the adds, the p99 change (adds - baseline; also per repetition), messages lost; the
control API's own latency (POST /faults p50 / p99 / max; the first add of each fresh proxy separately,
with the worst round trip of the messages sent in its --every-ms slot; DELETE p50 / p99); the proxy's
and the machine's CPU in each window; and, if the proxy writes `loop_lag` events (ticks of its event
loop that ran > 30 ms late), how many fell in each window and the worst.

    .venv/bin/python bench/fault_add_cost.py [--quick] [--no-neighbour] [--out results.json]
        [--reps 4] [--conns 4] [--adds 100] [--every-ms 50] [--proxy-root DIR]
                                                                 (or: ./run bench fault_add_cost ...)

--proxy-root DIR runs `python -m proxy` from another tree, e.g. the code before the fix:
`mkdir /tmp/old && git archive 022023b | tar -x -C /tmp/old`, then `--proxy-root /tmp/old`.

Not a test: it judges nothing, it prints the goal next to the figure (issue goal: p99 change < 10 ms).
Every wait is bounded (the whole run too); every child runs in its own process group (SIGKILL if this
process dies) and is killed and reaped at the end whatever happens; the temporary directory is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy_overhead import (
    Children,
    pct,
    py_spy_exe,
    start_echo,
    start_sendspin_proxy,
    summarize_collapsed,
    wait_exit,
    ws_close,
    ws_connect,
)

from harness.topology import Child, cpu_times, machine_ticks

GOAL_P99_CHANGE_MS = 10.0
GAP_S = 0.1  # between the windows
PROFILE_GAP_S = 1.0  # with --py-spy: time for py-spy to attach between the windows
MSG_BYTES = 100
INTERVAL_S = 0.010  # one message per connection every 10 ms
REP_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 3.0  # after the last send: echoes still in flight
HTTP_TIMEOUT_S = 10.0
NEIGHBOUR_RAMP_S = 3.0
NEIGHBOUR = ["stress-ng", "--cpu", "2", "--io", "2", "--hdd", "1", "--hdd-bytes", "512M", "--vm", "1",
             "--vm-bytes", "1G", "--timeout", "0"]


def now_ns() -> int:
    return time.monotonic_ns()  # the clock of the proxy's event log (harness/protocol/clock.py), in ns


# ---------------------------------------------------------------------------------------------- streams


@dataclass
class Stream:
    """One connection through the proxy: a message every INTERVAL_S, each echo's round trip."""

    idx: int
    ws: Any
    sent: int = 0
    skipped: int = 0  # sends this client itself was too late for (its own loop stalled)
    samples: list[tuple[int, int]] = field(default_factory=list)  # (sent at, ns; round trip, ns)
    errors: list[str] = field(default_factory=list)

    def message(self, seq: int, t: int) -> str:
        head = json.dumps({"c": self.idx, "seq": seq, "t": t, "pad": ""})
        return head[:-2] + "x" * max(0, MSG_BYTES - len(head)) + '"}'

    async def send_loop(self, stop: asyncio.Event) -> None:
        t0 = now_ns()
        step = int(INTERVAL_S * 1e9)
        k = 0
        try:
            while not stop.is_set():
                delay = (t0 + k * step - now_ns()) / 1e9
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
                elif delay < -INTERVAL_S:  # behind schedule: no catch-up burst
                    late = int(-delay / INTERVAL_S)
                    self.skipped += late
                    k += late
                t = now_ns()
                await ws_send(self.ws, self.message(self.sent, t))
                self.sent += 1
                k += 1
        except Exception as e:
            self.errors.append(f"send: {type(e).__name__}: {e}")

    async def recv_loop(self) -> None:
        try:
            while True:
                m = await self.ws.recv()
                t = now_ns()
                d = json.loads(m)
                if d["c"] != self.idx or d["seq"] != len(self.samples):
                    raise RuntimeError(f"connection {self.idx}: echo {d['c']}/{d['seq']} where "
                                       f"{self.idx}/{len(self.samples)} was due")
                self.samples.append((d["t"], t - d["t"]))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.errors.append(f"recv: {type(e).__name__}: {e}")


async def sleep_until(t_ns: int) -> None:
    delay = (t_ns - now_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


async def ws_send(ws: Any, msg: str) -> None:
    async with asyncio.timeout(HTTP_TIMEOUT_S):
        await ws.send(msg)


# ---------------------------------------------------------------------------------------------- control API


class Control:
    """The proxy's control API over one keep-alive HTTP connection (aiohttp)."""

    def __init__(self, url: str) -> None:
        import aiohttp

        self.url = url.rstrip("/")
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
                                             connector=aiohttp.TCPConnector(limit=1))

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> tuple[float, Any]:
        """(seconds until the whole answer was read, the JSON answer); RuntimeError on another status."""
        t0 = time.perf_counter()
        async with self.session.request(method, self.url + path, json=body) as r:
            data = await r.json(content_type=None)
            dt = time.perf_counter() - t0
            if r.status != expect:
                raise RuntimeError(f"{method} {path}: HTTP {r.status} (expected {expect}): {data}")
        return dt, data

    async def close(self) -> None:
        await self.session.close()


def fault_spec(i: int) -> dict[str, Any]:
    return {"type": "drop", "name": f"bench-add-{i}", "connections": {"client_port": 1}}


def run_adder(url: str, start_ns: int, n: int, every_ms: float, result: Path) -> int:
    """The adds, in their own process (`--adder`), so that the measuring client's event loop does no HTTP
    in the window: from `start_ns` (CLOCK_MONOTONIC), every `every_ms`: POST /faults, DELETE it. Blocking
    http.client on one keep-alive connection, opened before `start_ns`; the result as JSON in `result`."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=HTTP_TIMEOUT_S)
    res: dict[str, Any] = {"ready_ns": 0, "t0_ns": 0, "t1_ns": 0, "post_s": [], "delete_s": [], "error": None}

    def call(method: str, path: str, body: Any, expect: int) -> float:
        t0 = time.perf_counter()
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        dt = time.perf_counter() - t0
        if r.status != expect:
            raise RuntimeError(f"{method} {path}: HTTP {r.status} (expected {expect}): {data[:300]!r}")
        return dt

    try:
        conn.connect()
        res["ready_ns"] = now_ns()
        for i in range(n):
            delay = (start_ns + int(i * every_ms * 1e6) - now_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            if i == 0:
                res["t0_ns"] = now_ns()
            res["post_s"].append(call("POST", "/faults", fault_spec(i), 201))
            res["delete_s"].append(call("DELETE", f"/faults/bench-add-{i}", None, 200))
        res["t1_ns"] = now_ns()
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
        tmp = result.with_name(result.name + ".tmp")
        tmp.write_text(json.dumps(res))
        os.replace(tmp, result)
    return 0 if res["error"] is None else 1


# ---------------------------------------------------------------------------------------------- one repetition


class Window:
    """One measured window: its time span, the proxy's and the machine's CPU over it."""

    def __init__(self, proxy_pid: int) -> None:
        self.pid = proxy_pid
        self.t0 = self.t1 = 0
        self.cpu0 = (0.0, 0.0)
        self.m0 = (0, 0, 0)
        self.cpu: dict[str, float] = {}

    def start(self) -> None:
        self.t0 = now_ns()
        self.cpu0 = cpu_times(self.pid)
        self.m0 = machine_ticks()

    def stop(self) -> None:
        self.t1 = now_ns()
        u, s = cpu_times(self.pid)
        m1 = machine_ticks()
        wall = (self.t1 - self.t0) / 1e9 or 1e-9
        busy, total = m1[0] - self.m0[0], m1[2] - self.m0[2]
        ncpu = os.cpu_count() or 1
        self.cpu = {"seconds": round(wall, 3), "proxy_pct": round(100 * (u + s - sum(self.cpu0)) / wall, 1),
                    "machine_pct": round(100 * ncpu * busy / total, 1) if total else 0.0}

    def holds(self, t: int) -> bool:
        return self.t0 <= t < self.t1


async def repetition(args: argparse.Namespace, children: Children, work: Path, upstream: str, label: str
                     ) -> dict[str, Any]:
    name = f"proxy-{label}"
    t_start = time.perf_counter()
    proxy, url = await start_sendspin_proxy(children, work, upstream, name=name)
    start_s = time.perf_counter() - t_start
    streams: list[Stream] = []
    tasks: list[asyncio.Task[None]] = []  # receivers and senders
    ctl: Control | None = None
    adder: Child | None = None
    spy: Child | None = None
    try:
        info = json.loads((work / f"{name}.ready.json").read_text())
        if not info.get("control"):
            raise RuntimeError(f"{name}: no control API in its readiness file: {info}")
        ctl = Control(info["control"]["url"])
        for i in range(args.conns):
            async with asyncio.timeout(HTTP_TIMEOUT_S + 5):
                streams.append(Stream(i, await ws_connect(url + "/echo")))
        stop = asyncio.Event()
        senders = [asyncio.create_task(s.send_loop(stop)) for s in streams]
        tasks = [*senders, *(asyncio.create_task(s.recv_loop()) for s in streams)]
        # the schedule: warm-up, baseline, gap, adds (the adder starts now and waits for its time)
        b0 = now_ns() + int(args.warm_s * 1e9)
        a0 = b0 + int((args.window_s + (PROFILE_GAP_S if args.py_spy else GAP_S)) * 1e9)
        result = work / f"adder-{label}.json"
        adder = children.spawn(f"adder-{label}", [sys.executable, str(Path(__file__).resolve()), "--adder",
                                                  info["control"]["url"], "--start-ns", str(a0), "--adds",
                                                  str(args.adds), "--every-ms", str(args.every_ms),
                                                  "--result", str(result)])
        base, adds = Window(proxy.pid), Window(proxy.pid)
        await sleep_until(b0)
        base.start()
        await sleep_until(b0 + int(args.window_s * 1e9))
        base.stop()
        spy = start_py_spy(children, work, proxy, label) if args.py_spy else None
        spy_in_time = await py_spy_sampling(spy, a0) if spy is not None else False
        await sleep_until(a0)  # messages in flight at the end of the baseline are in neither window
        adds.start()
        budget = args.adds * (args.every_ms / 1000 + 2 * HTTP_TIMEOUT_S) + 10
        if not await adder.wait_exited(min(budget, REP_TIMEOUT_S)):
            raise RuntimeError(f"the adder ({label}) did not finish:\n{adder.tail()}")
        adds.stop()
        profile = await stop_py_spy(spy, work, label, spy_in_time) if spy is not None else None
        await adder.astop(signal.SIGKILL, 1, 5)  # reaps it
        if not result.exists():
            raise RuntimeError(f"the adder ({label}) wrote no result (rc {adder.returncode}):\n{adder.tail()}")
        r = json.loads(result.read_text())
        if r["error"]:
            raise RuntimeError(f"the adder ({label}): {r['error']}")
        if r["ready_ns"] > b0:
            raise RuntimeError(f"the adder ({label}) was ready only {(r['ready_ns'] - b0) / 1e6:.0f} ms into the "
                               f"baseline: its start-up would be in the baseline (raise the warm-up)")
        adds.t0, adds.t1 = r["t0_ns"], r["t1_ns"]  # the window = first POST sent .. last DELETE answered
        post, delete = r["post_s"], r["delete_s"]
        stop.set()
        async with asyncio.timeout(HTTP_TIMEOUT_S + 5):
            await asyncio.gather(*senders)
        end = time.monotonic() + DRAIN_TIMEOUT_S
        while any(len(s.samples) < s.sent and not s.errors for s in streams) and time.monotonic() < end:
            await asyncio.sleep(0.02)
        _, left = await ctl.call("GET", "/faults")
        if left.get("faults"):
            await ctl.call("POST", "/reset")
        lags: list[dict[str, Any]] = []
        with contextlib.suppress(RuntimeError, KeyError):  # only a proxy that measures its loop has them
            _, ev = await ctl.call("GET", "/events?event=loop_lag&limit=10000")
            lags = ev["events"]
    finally:
        for c in (adder, spy):  # still running only if something went wrong
            if c is not None and c.returncode is None:
                await c.astop(signal.SIGKILL, 1, 5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in streams:
            await ws_close(s.ws)
        if ctl is not None:
            await ctl.close()
        await proxy.astop(signal.SIGTERM, 10, 5)
    errors = [f"connection {s.idx}: {e}" for s in streams for e in s.errors]
    if errors:
        raise RuntimeError(f"{label}: " + "; ".join(errors[:4]))

    def rtts(w: Window) -> list[int]:
        return [rtt for s in streams for sent, rtt in s.samples if w.holds(sent)]

    first_slot = adds.t0 + int(args.every_ms * 1e6)  # messages sent in the first add's slot
    first = [rtt for s in streams for sent, rtt in s.samples if adds.t0 <= sent < first_slot]

    def lag_in(w: Window) -> list[int]:  # a late tick counts where it ran (t_us)
        return [e["lag_us"] for e in lags if w.holds(e["t_us"] * 1000)]

    return {"label": label, "proxy_start_s": round(start_s, 2),
            "baseline": {"rtt_ns": rtts(base), **base.cpu, "loop_lag_us": lag_in(base)},
            "adds": {"rtt_ns": rtts(adds), **adds.cpu, "loop_lag_us": lag_in(adds)},
            "first_slot_max_ns": max(first, default=0), "post_s": post, "delete_s": delete,
            "sent": sum(s.sent for s in streams), "echoed": sum(len(s.samples) for s in streams),
            "skipped": sum(s.skipped for s in streams), "loop_lag_events": len(lags), "profile": profile}


def start_py_spy(children: Children, work: Path, proxy: Child, label: str) -> Child:
    """py-spy record on the proxy (raw, idle stacks too, without pausing it) until `stop_py_spy`."""
    exe = py_spy_exe()
    if exe is None:
        raise RuntimeError("--py-spy: py-spy not found (.venv/bin/python -m pip install py-spy, or put it on PATH)")
    return children.spawn(f"py-spy-{label}", [exe, "record", "--pid", str(proxy.pid), "--format", "raw",
                                              "--function", "--idle", "--nonblocking", "--rate", "250",
                                              "-o", str(work / f"profile-{label}.txt")])


async def py_spy_sampling(spy: Child, until_ns: int) -> bool:
    """Whether py-spy says it is sampling, waiting for that at most until `until_ns`."""
    while "Sampling process" not in spy.tail(4000):
        if spy.exited() or now_ns() >= until_ns:
            return False
        await asyncio.sleep(0.02)
    return True


async def stop_py_spy(spy: Child, work: Path, label: str, in_time: bool) -> dict[str, Any]:
    """SIGINT (py-spy writes its output then); the busy share and the top frames of what it sampled."""
    with contextlib.suppress(ProcessLookupError):
        spy.popen.send_signal(signal.SIGINT)
    if not await wait_exit(spy, 20):
        await spy.astop(signal.SIGKILL, 1, 5)
    out = work / f"profile-{label}.txt"
    if not out.exists():
        return {"error": f"py-spy wrote no profile (rc {spy.returncode}): {spy.tail(600)}"}
    return {"sampling_before_adds": in_time, **summarize_collapsed(out.read_text(), 12)}


# ---------------------------------------------------------------------------------------------- conditions


async def start_neighbour(children: Children, work: Path) -> Child:
    tmp = work / "stress-ng-tmp"
    tmp.mkdir(exist_ok=True)
    exe = shutil.which("stress-ng")
    if exe is None:
        raise RuntimeError("stress-ng not found (apt-get install -y stress-ng), or run with --no-neighbour")
    nb = children.spawn("stress-ng", [exe, *NEIGHBOUR[1:], "--temp-path", str(tmp)])
    if await nb.wait_exited(NEIGHBOUR_RAMP_S):
        raise RuntimeError(f"stress-ng exited at once:\n{nb.tail()}")
    return nb


def ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def summarize(reps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for w in ("baseline", "adds"):
        v = [x for r in reps for x in r[w]["rtt_ns"]]
        lag = [x for r in reps for x in r[w]["loop_lag_us"]]
        out[w] = {"n": len(v), "p50_ms": ms(pct(v, 0.5)), "p99_ms": ms(pct(v, 0.99)), "max_ms": ms(max(v, default=0)),
                  "proxy_pct": round(sum(r[w]["proxy_pct"] for r in reps) / len(reps), 1),
                  "machine_pct": round(sum(r[w]["machine_pct"] for r in reps) / len(reps), 1),
                  "loop_lag_n": len(lag), "loop_lag_max_ms": round(max(lag) / 1000, 1) if lag else None}
    out["p99_change_ms"] = round(out["adds"]["p99_ms"] - out["baseline"]["p99_ms"], 3)
    out["p99_change_per_rep_ms"] = [ms(pct(r["adds"]["rtt_ns"], 0.99) - pct(r["baseline"]["rtt_ns"], 0.99))
                                    for r in reps]
    post = [x for r in reps for x in r["post_s"][1:]]  # warm adds; the first of each proxy separately
    dele = [x for r in reps for x in r["delete_s"]]
    out["post_ms"] = {"n": len(post), "p50": round(1e3 * pct(post, 0.5), 2), "p99": round(1e3 * pct(post, 0.99), 2),
                      "max": round(1e3 * max(post), 2)} if post else {}
    out["first_post_ms"] = [round(1e3 * r["post_s"][0], 2) for r in reps]
    out["first_slot_max_ms"] = [ms(r["first_slot_max_ns"]) for r in reps]
    out["delete_ms"] = {"p50": round(1e3 * pct(dele, 0.5), 2), "p99": round(1e3 * pct(dele, 0.99), 2)}
    out["lost"] = sum(r["sent"] - r["echoed"] for r in reps)
    out["skipped"] = sum(r["skipped"] for r in reps)
    out["proxy_start_s"] = [r["proxy_start_s"] for r in reps]
    return out


async def run(args: argparse.Namespace, work: Path, children: Children) -> dict[str, Any]:
    _, upstream = await start_echo(children, work)
    if args.proxy_root is not None:  # the children after the echo server start there: `-m proxy` imports it
        children.spawn_defaults["cwd"] = args.proxy_root
    conditions = ["neighbour off"] if args.no_neighbour else ["neighbour off", "neighbour on"]
    out: dict[str, Any] = {}
    for cond in conditions:
        nb = await start_neighbour(children, work) if cond == "neighbour on" else None
        try:
            reps = []
            for r in range(args.reps):
                label = f"{cond.split()[-1]}-{r + 1}"
                async with asyncio.timeout(REP_TIMEOUT_S):
                    reps.append(await repetition(args, children, work, upstream, label))
                s = reps[-1]
                print(f"  {cond:<13} rep {r + 1}: p99 baseline {ms(pct(s['baseline']['rtt_ns'], 0.99)):7.2f} ms, "
                      f"adds {ms(pct(s['adds']['rtt_ns'], 0.99)):7.2f} ms, max adds "
                      f"{ms(max(s['adds']['rtt_ns'], default=0)):7.2f} ms; first POST {1e3 * s['post_s'][0]:.1f} ms",
                      flush=True)
        finally:
            if nb is not None:
                how = await nb.astop(signal.SIGTERM, 10, 5)
                print(f"  stress-ng stopped ({how})", flush=True)
        out[cond] = {"summary": summarize(reps), "reps": reps}
    return out


# ---------------------------------------------------------------------------------------------- report


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(f"fault_add_cost: {args.conns} connections through sendspin-proxy to an echo server, each a "
          f"{MSG_BYTES}-byte text every {INTERVAL_S * 1e3:.0f} ms; {args.reps} repetition(s) per condition, "
          f"each on a fresh proxy: {args.window_s:.1f} s baseline, then {args.adds} x (POST /faults + DELETE) "
          f"every {args.every_ms:.0f} ms (a drop for client_port 1: no measured connection)"
          + (f"; proxy run from {args.proxy_root}" if args.proxy_root else ""))
    print("round trip through the proxy (ms, all repetitions pooled):")
    print(f"{'condition':<15}{'window':<10}{'msgs':>7}{'p50':>9}{'p99':>9}{'max':>9}"
          f"{'proxy CPU':>11}{'machine':>9}{'loop lag>30ms*':>16}")
    for cond, c in res["conditions"].items():
        s = c["summary"]
        for w in ("baseline", "adds"):
            x = s[w]
            lag = f"{x['loop_lag_n']} (max {x['loop_lag_max_ms']})" if x["loop_lag_max_ms"] is not None else "0"
            print(f"{cond if w == 'baseline' else '':<15}{w:<10}{x['n']:>7}{x['p50_ms']:>9.2f}{x['p99_ms']:>9.2f}"
                  f"{x['max_ms']:>9.2f}{x['proxy_pct']:>10.0f}%{x['machine_pct']:>8.0f}%{lag:>16}")
        ch = round(s["p99_change_ms"], 2) + 0.0  # no "-0.00"
        per = ", ".join(f"{round(v, 2) + 0.0:+.2f}" for v in s["p99_change_per_rep_ms"])
        print(f"{'':<15}p99 change {ch:+.2f} ms (goal < {GOAL_P99_CHANGE_MS:.0f} ms: "
              f"{'reached' if ch < GOAL_P99_CHANGE_MS else 'NOT reached'}); per repetition {per}; "
              f"lost {s['lost']}, client-late sends skipped {s['skipped']}")
        slot = ", ".join(f"{v:.1f}" for v in s["first_slot_max_ms"])
        print(f"{'':<15}first add (cold), worst round trip of a message sent in its slot: {slot} ms "
              f"(baseline max {s['baseline']['max_ms']:.1f} ms)")
    print(f"A one-off stall of every connection moves the window's p99 only if it lasts over ~1 % of the window "
          f"({10 * args.window_s:.0f} ms here): see max and the first add's slot.")
    print("* the proxy's `loop_lag` events in the window (worst, ms); 0 also from a proxy that does not measure "
          "its loop. CPU: % of one core")
    print("control API (ms):")
    for cond, c in res["conditions"].items():
        s = c["summary"]
        p = s["post_ms"]
        first = ", ".join(f"{v:.1f}" for v in s["first_post_ms"])
        slot = ", ".join(f"{v:.1f}" for v in s["first_slot_max_ms"])
        warm = f"p50 {p['p50']:.2f} p99 {p['p99']:.2f} max {p['max']:.2f} (n {p['n']})" if p else "-"
        print(f"  {cond:<13} POST /faults {warm}; first add on a fresh proxy {first} "
              f"(worst round trip of a message sent in its slot {slot}); "
              f"DELETE p50 {s['delete_ms']['p50']:.2f} p99 {s['delete_ms']['p99']:.2f}; "
              f"proxy start {', '.join(f'{v:.1f}' for v in s['proxy_start_s'])} s")
    for cond, c in res["conditions"].items():  # --py-spy: the repetition with the worst p99 during the adds
        profiled = [r for r in c["reps"] if r.get("profile")]
        if not profiled:
            continue
        r = max(profiled, key=lambda r: pct(r["adds"]["rtt_ns"], 0.99))
        p = r["profile"]
        print()
        if "error" in p:
            print(f"py-spy {cond} ({r['label']}): {p['error']}")
            continue
        print(f"py-spy on the proxy, {cond}, {r['label']} (adds p99 {ms(pct(r['adds']['rtt_ns'], 0.99)):.2f} ms), "
              f"from the end of the baseline to the end of the adds"
              f"{'' if p['sampling_before_adds'] else ' (sampling began only after the adds had started)'}: "
              f"{p['samples']} samples, busy {p['busy_pct']}% (outside select); % of busy samples:")
        for key, title in (("self", "self"), ("inclusive", "inclusive")):
            print(f"  top by {title}:")
            for fn, n, share in p[key]:
                print(f"    {share:7.1f}  {n:>6}  {fn}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 repetition, 20 adds, 1 s windows")
    ap.add_argument("--no-neighbour", action="store_true", help="only the condition without stress-ng")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("--reps", type=int, help="repetitions per condition, each on a fresh proxy (default 4)")
    ap.add_argument("--conns", type=int, default=4, help="streaming connections (default 4)")
    ap.add_argument("--adds", type=int, help="faults added per repetition (default 100, --quick 20)")
    ap.add_argument("--every-ms", type=float, default=50.0, help="one add every N ms (default 50)")
    ap.add_argument("--proxy-root", type=Path, help="run sendspin-proxy from this tree (python -m proxy there)")
    ap.add_argument("--py-spy", action="store_true",
                    help="py-spy record on the proxy during each adds window (disturbs the figures; 1 s gap)")
    ap.add_argument("--adder", metavar="CONTROL_URL", help=argparse.SUPPRESS)
    ap.add_argument("--start-ns", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.reps = a.reps or (1 if a.quick else 4)
    a.adds = a.adds or (20 if a.quick else 100)
    a.window_s = a.adds * a.every_ms / 1000  # baseline as long as the adds take
    a.warm_s = 1.0 if a.quick else 1.5  # also the adder's start-up (python, imports): before the baseline
    if a.proxy_root is not None:
        a.proxy_root = a.proxy_root.resolve()
        if not (a.proxy_root / "proxy" / "__main__.py").is_file():
            ap.error(f"--proxy-root {a.proxy_root}: no proxy/__main__.py there")
    if a.reps < 1 or a.conns < 1 or a.adds < 1 or a.every_ms <= 0:
        ap.error("--reps, --conns, --adds and --every-ms must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.adder:
        return run_adder(args.adder, args.start_ns, args.adds, args.every_ms, args.result)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    work = Path(tempfile.mkdtemp(prefix="fault-add-cost-"))
    children = Children(work)
    hard_s = 120.0 if args.quick else 300.0
    t0 = time.monotonic()
    load0 = os.getloadavg()
    try:
        conditions = asyncio.run(asyncio.wait_for(run(args, work, children), hard_s))
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"fault_add_cost: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        children.kill_all()
        shutil.rmtree(work, ignore_errors=True)
    res: dict[str, Any] = {"conditions": conditions}
    res["env"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_before": load0,
                  "loadavg_after": os.getloadavg(), "seconds": round(time.monotonic() - t0, 1)}
    res["config"] = {"conns": args.conns, "interval_ms": INTERVAL_S * 1e3, "msg_bytes": MSG_BYTES,
                     "reps": args.reps, "adds": args.adds, "every_ms": args.every_ms, "window_s": args.window_s,
                     "fault": fault_spec(0), "neighbour": " ".join(NEIGHBOUR), "goal_p99_change_ms": GOAL_P99_CHANGE_MS,
                     "proxy_root": str(args.proxy_root or Path(__file__).resolve().parent.parent)}
    report(res, args)
    print(f"\n(load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; "
          f"run took {res['env']['seconds']} s)")
    if args.out is not None:
        for c in conditions.values():  # per-message samples in ms, for whoever wants to plot them
            for r in c["reps"]:
                for w in ("baseline", "adds"):
                    r[w]["rtt_ms"] = [ms(v) for v in r[w].pop("rtt_ns")]
        args.out.write_text(json.dumps(res, indent=2))
        print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
