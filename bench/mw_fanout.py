"""bench/multiworker.py, table 2: fan-out CPU per listener-second, bench/_mw_load.py listeners."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mw_common import GROUPS, LOAD, LOAD_SATURATED, MACHINE_SATURATED, NCPU, PER_LOAD_PROC, log
from mw_servers import OursServer, SendspinServer

from harness.topology import CLK_TCK, cmdline, cpu_ticks, group_pids, kill_group, machine_ticks


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
        GROUPS.track(self.proc.pid)

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


def server_split(srv: Any, s0: dict[int, int | None], s1: dict[int, int | None]) -> dict[str, float]:
    """CPU-seconds of each of the server's processes between two cpu_ticks samples, by role
    (also bench/noise_fanout.py's)."""
    split: dict[str, float] = {}
    names = srv.worker_names()
    for pid, t in s1.items():
        if t is None:
            continue
        role = names.get(pid) or ("coordinator" if pid == srv.pid else "resource_tracker"
                                  if "resource_tracker" in cmdline(pid) else f"other:{pid}")
        split[role] = round(split.get(role, 0.0) + (t - (s0.get(pid) or 0)) / CLK_TCK, 2)
    return split


def spread(urls: list[str], n: int, per_proc: int, make: Any) -> list[Any]:
    """`n` listeners over load processes of at most `per_proc`, each process's URL list
    rotated so the listeners go round-robin over all of them: make(urls, count, index)."""
    nproc = max(1, math.ceil(n / per_proc))
    counts = [n // nproc + (1 if i < n % nproc else 0) for i in range(nproc)]
    procs, offset = [], 0
    for i, c in enumerate(counts):
        rot = offset % len(urls)
        procs.append(make(urls[rot:] + urls[:rot], c, i))
        offset += c
    return procs


async def window(srv: Any, procs: list[LoadProc], settle: float, seconds: float, ready_timeout: float = 75,
                 report_timeout: float = 10.0, during: Callable[[], Awaitable[Any]] | None = None) -> dict[str, Any]:
    """Start the load processes, wait for their `ready`, settle, then `mark`, sample the
    server's, the load processes' and the machine's CPU over `seconds`, and `report`.
    Returns their events and the figures every fan-out row has (also
    bench/noise_fanout.py's); the load processes are stopped whatever happens.
    `during`, if given, starts with the window and is awaited before `report` (its
    result is "during"): bench/noise_proxy.py's round trips and proxy CPU."""
    extra: asyncio.Future[Any] | None = None
    try:
        for p in procs:
            await p.start()
        ready = await asyncio.gather(*(p.read(ready_timeout) for p in procs))
        await asyncio.sleep(settle)
        await asyncio.gather(*(p.command("mark") for p in procs))
        workers_before = srv.worker_names()
        server_pids = group_pids(srv.pid)
        load_pids = [p.proc.pid for p in procs if p.proc is not None]
        s0 = {pid: cpu_ticks(pid) for pid in server_pids}
        l0 = {pid: cpu_ticks(pid) for pid in load_pids}
        m0, t0 = machine_ticks(), time.monotonic()
        extra = asyncio.ensure_future(during()) if during is not None else None
        await asyncio.sleep(seconds)
        s1 = {pid: cpu_ticks(pid) for pid in group_pids(srv.pid)}
        l1 = {pid: cpu_ticks(pid) for pid in load_pids}
        m1, t1 = machine_ticks(), time.monotonic()
        during_result = await extra if extra is not None else None
        reports = await asyncio.gather(*(p.command("report", report_timeout) for p in procs))
        workers_lost = sorted(name for pid, name in workers_before.items() if cpu_ticks(pid) is None)
    finally:
        if extra is not None:
            extra.cancel()  # a no-op once it is done
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
    dur = t1 - t0
    split = server_split(srv, s0, s1)
    server_s = sum(split.values())
    load = [((l1[p] or 0) - (l0[p] or 0)) / CLK_TCK / dur for p in load_pids]
    busy = (m1[0] - m0[0]) / (m1[2] - m0[2]) if m1[2] > m0[2] else 0.0  # (busy, irq, total)
    return {"ready": ready, "reports": reports, "during": during_result, "workers_before": workers_before,
            "workers_lost": workers_lost, "dur": dur, "server_s": server_s, "figures": {
                "load_procs": len(procs), "window_s": round(dur, 2), "server_cpu_s": round(server_s, 2),
                "server_cores": round(server_s / dur, 3),
                "load_cores": round(sum(load), 3), "load_max_proc_cores": round(max(load), 3) if load else 0.0,
                "machine_busy": round(busy, 3), "cpu_split_s": split,
                "other_cores": round(max(0.0, busy * NCPU - server_s / dur - sum(load)), 2)}}


async def measure_level(args: argparse.Namespace, srv: OursServer | SendspinServer, n: int, work: Path,
                        tag: str) -> dict[str, Any]:
    procs = spread(srv.urls, n, PER_LOAD_PROC, lambda urls, c, i: LoadProc(
        urls, c, f"{tag}-{n}-{i}", work / f"load-{tag}.stderr", args.settle + args.window + 90))
    w = await window(srv, procs, args.settle, args.window)
    ready, reports, dur, server_s = w["ready"], w["reports"], w["dur"], w["server_s"]
    workers_lost = w["workers_lost"] + [f"worker-{i}" for i in range(srv.workers)
                                        if f"worker-{i}" not in w["workers_before"].values() and srv.workers > 1]
    streaming = sum(r["with_chunks"] for r in reports)
    chunks = sum(r["chunks"] for r in reports)
    row = {
        "listeners": n, "connected": sum(r["connected"] for r in ready), "streaming": streaming,
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
        **w["figures"],
    }
    row["gaps"] = bool(row["missing"] or row["ts_gaps"] or row["lost"] or streaming < n or workers_lost)
    row["load_saturated"] = row["load_max_proc_cores"] >= LOAD_SATURATED
    row["machine_saturated"] = row["machine_busy"] >= MACHINE_SATURATED
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
