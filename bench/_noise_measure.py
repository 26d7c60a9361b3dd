"""bench/noise_fanout.py, one level: N bench/_noise_load.py listeners on a fresh server,
server CPU from /proc over a window after every listener streams."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _noise_load import REQUIRED_LEAD_MS
from mw_common import GROUPS, LOAD_SATURATED, MACHINE_SATURATED, NCPU, ROOT, end_run, log
from mw_fanout import LoadProc, spread, window

from harness.topology import kill_group

NOISE_LOAD = ROOT / "bench" / "_noise_load.py"


class NoiseLoadProc(LoadProc):
    """bench/mw_fanout.py's driver of a load process (mark/report/quit over stdin), for _noise_load.py."""

    def __init__(self, urls: list[str], count: int, prefix: str, err: Path, max_seconds: float,
                 args: argparse.Namespace) -> None:
        super().__init__(urls, count, prefix, err, max_seconds)
        self.extra = ["--sample", str(args.sample), "--suite", args.suite,
                      "--ready-timeout", str(args.ready_timeout)]

    async def start(self) -> None:
        with open(self.err, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(NOISE_LOAD), "--urls", ",".join(self.urls), "--count", str(self.count),
                "--max-seconds", str(self.max_seconds), *self.extra,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err, start_new_session=True)
        GROUPS.track(self.proc.pid)


def _sum(rows: list[dict[str, Any]], key: str) -> int:
    return sum(r[key] for r in rows)


async def measure_level(args: argparse.Namespace, srv: Any, n: int, work: Path, tag: str) -> dict[str, Any]:
    """One level on a started server: connect, settle, measure `args.seconds`, check."""
    budget = args.ready_timeout + args.settle + args.seconds + 60
    procs = spread(srv.urls, n, args.per_proc, lambda urls, c, i: NoiseLoadProc(
        urls, c, f"{tag}-{n}-{i}", work / f"load-{tag}.stderr", budget, args))
    # ready: + connecting; a report waits for the second anchors. A server wrapper may run
    # something over the window (bench/noise_proxy.py: round trips, the proxy's CPU).
    w = await window(srv, procs, args.settle, args.seconds, ready_timeout=args.ready_timeout + 30 + n / 50,
                     report_timeout=20.0, during=getattr(srv, "during", None))
    ready, reports, dur = w["ready"], w["reports"], w["dur"]
    streaming = _sum(reports, "with_audio")
    row: dict[str, Any] = {
        "listeners": n, "connected": _sum(ready, "connected"), "handshaken": _sum(ready, "handshaken"),
        "streaming": streaming, "ready_s": max(r["ready_s"] for r in ready),
        "cpu_s_per_listener_s": round(w["server_s"] / (streaming * dur), 6) if streaming else None,
        # the load processes count from the mark to the second anchor: their own span, not the CPU window
        "chunks_per_listener_s": round(_sum(reports, "audio") / sum(r["with_audio"] * r["seconds"] for r in reports), 1)
        if streaming else 0.0,
        "missing": _sum(reports, "missing"), "dup": _sum(reports, "dup"), "ts_off": _sum(reports, "ts_off"),
        "listeners_with_missing": _sum(reports, "with_missing"), "unanchored": _sum(reports, "unanchored"),
        "sampled": _sum(reports, "sampled"),
        "sample_missing": _sum(reports, "sample_missing"), "sample_dup": _sum(reports, "sample_dup"),
        "sample_back": _sum(reports, "sample_back"), "sample_ts_gaps": _sum(reports, "sample_ts_gaps"),
        "size_rule_broken": _sum(reports, "sample_big_not_audio") + _sum(reports, "sample_size_mismatch"),
        "min_send_ahead_ms": min((r["min_send_ahead_us"] for r in reports if r["min_send_ahead_us"] is not None),
                                 default=None),
        "lost": _sum(reports, "lost"), "errors": _sum(ready, "errors") + _sum(reports, "errors"),
        "first_error": next((r["first_error"] for r in [*ready, *reports] if r["first_error"]), ""),
        "workers_lost": w["workers_lost"], "during": w["during"], **w["figures"],
    }
    if row["min_send_ahead_ms"] is not None:
        row["min_send_ahead_ms"] = round(row["min_send_ahead_ms"] / 1000, 1)
    row["problems"], row["caveats"] = problems(row), caveats(row)
    return row


def problems(row: dict[str, Any]) -> list[str]:
    """Why this level's figure does not stand (empty: it does)."""
    n, out = row["listeners"], []
    if row["streaming"] < n or row["handshaken"] < n:
        out.append(f"only {row['handshaken']}/{n} handshaken and {row['streaming']}/{n} streaming")
    gaps = [f"{row[k]} {what}" for k, what in (
        ("missing", "missing samples"), ("dup", "duplicated samples"), ("ts_off", "listeners with timestamps off"),
        ("unanchored", "listeners without both anchors"), ("sample_missing", "missing samples (sample)"),
        ("sample_dup", "duplicated samples (sample)"), ("sample_back", "backward jumps (sample)"),
        ("sample_ts_gaps", "timestamp gaps (sample)"), ("lost", "connections lost"),
        ("errors", "listener errors")) if row[k]]
    if gaps:
        out.append("gaps: " + ", ".join(gaps) + (f" ({row['first_error']})" if row["first_error"] else ""))
    late = row["min_send_ahead_ms"]
    if late is not None and late < REQUIRED_LEAD_MS:
        out.append(f"late audio: the sample saw send_ahead {late} ms, under the {REQUIRED_LEAD_MS} ms lead the "
                   f"listeners ask for")
    if row["size_rule_broken"]:
        out.append(f"the size rule failed {row['size_rule_broken']} times (a message >= BIG that is not audio of "
                   f"the counted size): the counts mean nothing")
    if row["workers_lost"]:
        out.append(f"{', '.join(row['workers_lost'])} exited")
    if row["load_max_proc_cores"] >= LOAD_SATURATED:
        out.append(f"load generator saturated (a process at {row['load_max_proc_cores']:.2f} cores)")
    if out:
        out.append(f"server at {row['server_cores']:.2f} cores {row['cpu_split_s']} (CPU-s in the window), "
                   f"{row['chunks_per_listener_s']} chunks per listener-second")
    return out


def caveats(row: dict[str, Any]) -> list[str]:
    """What weakens a figure that stands: a machine with no CPU to spare (CPU per operation
    grows under contention; other work on the machine is named)."""
    if row["machine_busy"] < MACHINE_SATURATED:
        return []
    return [f"machine saturated ({row['machine_busy']:.0%} of {NCPU} cores: server {row['server_cores']:.2f}, "
            f"load generator {row['load_cores']:.2f}, other processes {row['other_cores']:.2f})"]


async def run_one(args: argparse.Namespace, work: Path, key: str, make: Any, n: int) -> dict[str, Any]:
    """One configuration at one level, on a fresh server (no state carried between levels)."""
    srv = make()
    row: dict[str, Any]
    try:
        await srv.start()
        row = await measure_level(args, srv, n, work, key)
        row["cmd"] = srv.cmd
    except Exception as exc:
        row = {"listeners": n, "problems": [f"failed: {exc!r}"[:300]], "caveats": [], "cpu_s_per_listener_s": None}
    finally:
        stopped = await srv.stop()
    row["stop"] = stopped
    log(f"{key} n={n}: {row.get('cpu_s_per_listener_s')} CPU-s/listener-s, server {row.get('server_cores')} "
        f"cores, load {row.get('load_cores')}, machine {row.get('machine_busy', 0):.0%}, "
        f"problems: {'; '.join(row['problems'] + row['caveats']) or 'none'}")
    return row


def run_bench(args: argparse.Namespace, prefix: str, meta: dict[str, Any],
              run_all: Callable[[argparse.Namespace, Path, dict[str, Any]], Awaitable[None]],
              report: Callable[[argparse.Namespace, dict[str, Any]], str]) -> int:
    """A noise benchmark's life (bench/noise_fanout.py, bench/noise_proxy.py): a work directory
    (--log-dir, else a temporary one, removed), every process group recorded and killed at
    the end or on SIGTERM, `run_all`, then `report` printed and the results in --out."""
    own_dir = args.log_dir is None
    work = Path(tempfile.mkdtemp(prefix=prefix)) if own_dir else Path(args.log_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MW_WORKDIR"] = str(work)  # mw_common's GROUPS records every process group there
    (work / "pgids.txt").write_text("")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def on_term(signum: int, _frame: Any) -> None:
        for pgid in GROUPS.pgids:
            kill_group(pgid)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    results: dict[str, Any] = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": NCPU, "python": sys.version.split()[0],
        "nofile": [soft, hard], "loadavg": os.getloadavg(), **meta}}
    try:
        asyncio.run(run_all(args, work, results))
    finally:
        end_run(results)
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(report(args, results), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    return 0
