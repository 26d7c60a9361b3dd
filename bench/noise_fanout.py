"""Benchmark: the noise-profile fan-out, our reference server next to aiosendspin 10.2.1's server.

One run, on this machine, at each of --levels listeners (PCM 48 kHz/16-bit/stereo,
25 ms chunks from both servers, so 40 audio messages per listener-second):

- ours-w1 / ours-w2: `python -m reference_server --workers 1|2 --profiles noise`
  (coordinator + workers; the cluster spreads the per-listener AEAD over both
  cores, each worker renders the source once);
- aiosendspin: aiosendspin 10.2.1's server in its default mode (Noise only), one
  process, every listener in one group fed one watermark stream
  (tests/noise_peers/bench_aiosendspin10_fanout.py, under the interpreter named
  by SENDSPIN_AIOSENDSPIN10_PYTHON; without it that column says why it is empty).

Every listener is a real `noise` client (bench/_noise_load.py: its own X25519
key, the KKpsk2 handshake with the Sentinel PSK and unpaired access, a PCM
player), the same work for either server. Measured: server CPU-seconds per
listener-second = utime+stime of every process of the server's group (from
/proc) over --seconds, after every listener streams and --settle seconds, divided
by listeners × window. Levels run in turn for each configuration (level by
level, so the columns share the machine's conditions), each on a fresh server.

Zero gaps, checked by the load generator (its docstring says why this way):
every listener counts its audio by size and checks its count exactly against
the watermark and timestamps of two decrypted anchor chunks bracketing the
window; a sample per load process decrypts and checks every chunk. A figure is
printed only when the level was reached: every listener handshaken and
streaming, no gap, no late audio (the sample's `send_ahead` under the 100 ms
lead the listeners ask for), no loss, no listener error, and the load
generator not saturated (a process at >= 0.9 cores); otherwise the cell says
"not reached" and the notes say why. A figure from a saturated machine
(>= 95 % busy, CPU per operation grows under contention) is marked †.

    SENDSPIN_AIOSENDSPIN10_PYTHON=/tmp/aios1021/bin/python ./run bench noise_fanout [--levels 100 400 1600]
        [--seconds 10] [--configs ours-w1,ours-w2,aiosendspin] [--suite 25519_AESGCM_SHA256] [--out FILE]
    ./run bench noise_fanout --levels 10 --seconds 3      # smoke run, 30 s (figures mean nothing)

The default run takes about 5 minutes on a 2-core machine (a level: a fresh
server, the handshakes, 3 s settle, 10 s window); a configuration that never
gets every listener streaming waits out --ready-timeout (60 s) once more. On 2
cores 1600 listeners need server and load generator together close to the
whole machine: expect † there, or "not reached" with the reason.

Not a test: it judges nothing but prints the goal (<= 0.0005 CPU-s per
listener-second, and ahead of aiosendspin) next to the figures. Every wait has
a timeout; every process runs in its own process group, killed at the end
whatever happens (harness/topology.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from _noise_measure import run_bench, run_one
from _noise_servers import AiosendspinServer, ours, runnable
from mw_common import GOAL_CPU_PER_LS, NCPU

CONFIGS = {"ours-w1": "ours, 1 worker", "ours-w2": "ours, 2 workers", "aiosendspin": "aiosendspin 10.2.1"}


def factory(key: str, n: int, work: Path, args: argparse.Namespace, aios_python: str | None) -> Any:
    """A fresh server for one level, in a directory of its own (no ready file of an earlier level)."""
    name = f"{key}-{n}"
    if key == "aiosendspin":
        assert aios_python is not None
        return lambda: AiosendspinServer(name, aios_python, work, args.lead_ms,
                                         args.ready_timeout + args.settle + args.seconds + 120)
    return lambda: ours(name, int(key[-1]), work)


async def run_all(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    configs, aios_python = runnable(args.configs, results)
    results["rows"] = {k: [] for k in args.configs}
    for n in args.levels:
        for key in configs:
            results["rows"][key].append(await run_one(args, work, key, factory(key, n, work, args, aios_python), n))


def cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    if row["problems"]:
        return "not reached"
    return f"{row['cpu_s_per_listener_s']:.6f}" + (" †" if row["caveats"] else "")


def ratio(mine: dict[str, Any] | None, aios: dict[str, Any] | None) -> str:
    """ours/aiosendspin where both stand; "aiosendspin not reached" where only ours does."""
    if not mine or mine["problems"] or not aios:
        return ""
    if aios["problems"]:
        return "aiosendspin not reached"
    return f"{mine['cpu_s_per_listener_s'] / aios['cpu_s_per_listener_s']:.2f}"


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    keys = list(args.configs)
    rows = results.get("rows", {})
    out = [f"noise fan-out: server CPU-s per listener-second, PCM 48 kHz/16-bit/stereo, {args.suite}, "
           f"window {args.seconds:g} s after {args.settle:g} s settle, {NCPU} cores, {results['meta']['date']}",
           f"goal: <= {GOAL_CPU_PER_LS} and ahead of aiosendspin at every size", ""]
    ours_keys = [k for k in keys if k.startswith("ours")]
    head = ["listeners", *(CONFIGS[k] for k in keys)]
    if "aiosendspin" in keys:
        head += [f"{CONFIGS[k].split(', ')[1]}/aiosendspin" for k in ours_keys]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []
    for i, n in enumerate(args.levels):
        by_key = {k: rows[k][i] if i < len(rows.get(k, [])) else None for k in keys}
        line = [str(n), *(cell(by_key[k]) for k in keys)]
        aios = by_key.get("aiosendspin")
        for k in ours_keys if "aiosendspin" in keys else ():
            mine = by_key[k]
            line.append(ratio(mine, aios))
        out.append("| " + " | ".join(line) + " |")
        for k in keys:
            r = by_key[k]
            if r is not None and r["problems"]:
                notes.append(f"- {CONFIGS[k]} at {n}: not reached: " + "; ".join(r["problems"] + r["caveats"]))
            elif r is not None and r["caveats"]:
                notes.append(f"- † {CONFIGS[k]} at {n}: no gap, but " + "; ".join(r["caveats"]))
    for k, why in results.get("skipped", {}).items():
        notes.append(f"- {CONFIGS[k]}: not run: {why}")
    if notes:
        out += ["", "Notes:", *notes]
    out += ["", "Details (server cores; load generator cores, busiest process; machine busy; chunks per "
                "listener-s; min send_ahead seen by the sample; ready time):"]
    for k in keys:
        for r in rows.get(k, []):
            if "server_cores" not in r:
                continue
            out.append(f"- {CONFIGS[k]} at {r['listeners']}: server {r['server_cores']} cores "
                       f"{r['cpu_split_s']}; load {r['load_cores']} ({r['load_max_proc_cores']} max, "
                       f"{r['load_procs']} procs); machine {r['machine_busy']:.0%} (other {r['other_cores']}); "
                       f"{r['chunks_per_listener_s']} chunks/listener-s; min send_ahead {r['min_send_ahead_ms']} ms; "
                       f"{r['sampled']} sampled; ready in {r['ready_s']} s")
    aios_rows = {r["listeners"]: r for r in rows.get("aiosendspin", [])}
    for k in ours_keys:
        good = [r for r in rows.get(k, []) if not r["problems"]]
        meets = [r["listeners"] for r in good if r["cpu_s_per_listener_s"] <= GOAL_CPU_PER_LS]
        line = (f"{CONFIGS[k]}: <= {GOAL_CPU_PER_LS} at {meets or 'no level'} of those reached "
                f"{[r['listeners'] for r in good]}")
        if aios_rows:
            ahead = [r["listeners"] for r in good if (a := aios_rows.get(r["listeners"])) is not None
                     and (a["problems"] or r["cpu_s_per_listener_s"] < a["cpu_s_per_listener_s"])]
            line += f"; ahead of aiosendspin (cheaper, or it did not reach the level) at {ahead or 'no level'}"
        out.append(line)
    out.append(f"leftover processes: {results.get('leftovers')}; run time {results.get('runtime_s')} s")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=[100, 400, 1600], help="listener counts")
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring window in s (default 10)")
    ap.add_argument("--settle", type=float, default=3.0, help="s between every listener streaming and the window")
    ap.add_argument("--configs", default="ours-w1,ours-w2,aiosendspin",
                    help=f"comma-separated, of {', '.join(CONFIGS)} (default: all)")
    ap.add_argument("--suite", default="25519_ChaChaPoly_SHA256", choices=["25519_ChaChaPoly_SHA256",
                                                                           "25519_AESGCM_SHA256"],
                    help="the suite every listener announces (default ChaChaPoly)")
    ap.add_argument("--sample", type=int, default=8, help="listeners per load process that decrypt every chunk")
    ap.add_argument("--per-proc", type=int, default=800, help="listeners per load-generator process")
    ap.add_argument("--ready-timeout", type=float, default=60.0, help="s for every listener to stream")
    ap.add_argument("--lead-ms", type=int, default=1500, help="aiosendspin: how far ahead it pushes (ours: "
                    "--max-lead-ms default, 1500)")
    ap.add_argument("--out", help="also write the results as JSON here")
    ap.add_argument("--log-dir", help="keep the servers' and load generators' logs here (default: a temporary "
                    "directory, removed)")
    args = ap.parse_args()
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in args.configs if c not in CONFIGS]
    if bad or not args.configs:
        ap.error(f"--configs takes a comma-separated list of {', '.join(CONFIGS)}, got {bad or 'nothing'}")
    if any(n < 1 for n in args.levels) or args.seconds <= 0 or args.sample < 0 or args.per_proc < 1:
        ap.error("--levels must be >= 1, --seconds > 0, --sample >= 0 and --per-proc >= 1")
    return run_bench(args, "noise-fanout-", {
        "levels": args.levels, "seconds": args.seconds, "settle": args.settle, "suite": args.suite,
        "sample": args.sample, "per_proc": args.per_proc}, run_all, report)


if __name__ == "__main__":
    sys.exit(main())
