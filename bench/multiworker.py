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
   listeners are bench/_mw_load.py processes (cheap raw-WebSocket clients
   that send client/state after server/hello and check the watermark of every
   chunk), connected to the worker ports directly.

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
process runs in a process group that is killed at the end whatever happens
(harness/topology.py).
Not a test: it judges nothing but prints the goal next to the figures.
"""

# Layout: this file parses the options and runs the inner part (both tables); mw_setup.py the
# outer part (install, network namespace, final clean-up); mw_servers.py the two servers;
# mw_crash.py table 1; mw_fanout.py table 2; mw_report.py the printed report; mw_common.py
# constants and the record of process groups. The processes: harness/topology.py.

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mw_common import GROUPS, NCPU, T0, end_run, log, venv_python
from mw_crash import crash_ours, crash_sendspin
from mw_fanout import fanout_config
from mw_report import report
from mw_servers import OursServer, SendspinServer
from mw_setup import run_outer

from harness.topology import kill_group


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
        for pgid in GROUPS.pgids:  # stop everything now; the unwinding below finds them gone
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
        end_run(results)
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
