"""Benchmark: what the proxy costs on noise sessions, relaying them opaquely or terminating Noise,
next to direct, with our reference server and aiosendspin 10.2.1's server upstream.

Paths, for the same upstream server (a fresh server, and proxy, for every cell):

- direct: listeners -> server;
- opaque: listeners -> `python -m proxy --noise opaque` (the default: the ciphertext relayed)
  -> server;
- terminated: listeners -> `python -m proxy --noise terminate` (a handshake with each peer:
  every message opened and sealed again for the other side; towards the server the proxy
  uses a key of its own per client and the Sentinel PSK, the listeners' unpaired access
  passes in their client/hello) -> server.

Upstream servers: ours (`python -m reference_server --workers 1 --profiles noise`) and
aiosendspin 10.2.1's (as bench/noise_fanout.py runs it, under SENDSPIN_AIOSENDSPIN10_PYTHON;
without it the notes say why its rows are missing). The proxy is the real CLI with its
defaults otherwise (control API on, upstream health probe every 0.1 s).

At each of --levels listeners (bench/_noise_load.py: real noise PCM 48 kHz/16/2 players,
the noise fan-out's load generator and its zero-gap check, bench/_noise_measure.py), over
the --seconds window after every listener streams:

- proxy CPU-s per listener-second: utime+stime of the proxy's process group from /proc over
  the window, over (listeners + the path's round-trip client) x window;
- zero gaps: noise_fanout's check (every listener's count against two decrypted anchors, a
  sample checked sample by sample, no late audio, no listener error); a figure is printed
  only where it holds, and where the proxy held every connection in the mode named (the
  control API's /connections);
- JSON round trip: an extra noise client on the path sends `client/time` and waits for
  `server/time`, and a reference client straight to the same server does the same, in
  turn (--rtt rounds spread over the window, one round trip each per round, who goes first
  alternating): p50/p99 (nearest rank) of the path's client and their difference from the
  reference's, measured in the same moments (a busy machine's scheduling hits both alike).
  On the direct path both clients go straight: that difference is the run's noise. Both
  clients are players too (connected before the listeners), so the round trips share their
  connection with audio, as a real player's time sync does.

Then, per server and level: terminated/opaque proxy CPU, and the added latency of each
proxied path. The details name, per cell, how often the proxy's event loop ran over 30 ms
late in the window (its `loop_lag` events, from the control API) and how long its threads
waited for a CPU (/proc/PID/task/*/schedstat): a starved proxy told from a busy one. The
gap check counts samples and reads `send_ahead` as the server stamped it: audio that a
proxy delivers late but whole is not caught. The cells run level by level, server by server, path by path, so the paths
of one server share the machine's conditions as closely as a run allows; on a busy machine
compare within a run only.

    SENDSPIN_AIOSENDSPIN10_PYTHON=/tmp/aios1021/bin/python ./run bench noise_proxy [--levels 20 100]
        [--seconds 10] [--rtt 300] [--servers ours,aiosendspin] [--paths direct,opaque,terminated] [--out F]
    ./run bench noise_proxy --quick       # smoke run: 5 listeners, 3 s windows (figures mean nothing)

About 6-7 minutes by default on a busy 2-core machine (12 cells: server and proxy start,
handshakes, 3 s settle, 10 s window). Not a test: it judges nothing. Every wait has a timeout; every
process runs in its own process group, killed at the end whatever happens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from _noise_measure import run_bench, run_one
from _noise_proxy_paths import MODES, PATHS, REPLY_S, ServerPath
from _noise_servers import AIOS_VERSION, AiosendspinServer, ours, runnable
from mw_common import NCPU

SERVERS = {"ours": "ours", "aiosendspin": f"aiosendspin {AIOS_VERSION}"}


def finish(row: dict[str, Any], path: str) -> dict[str, Any]:
    """The proxy's figure, and what else keeps the cell from standing (the mode, lost round trips)."""
    d = row.get("during") or {}
    n = row["listeners"]
    if "proxy_cpu_s" in d and row.get("streaming"):
        streams = row["streaming"] + (1 if d["rtt_client_audio"] else 0)
        row["proxy_cpu_s_per_listener_s"] = round(d["proxy_cpu_s"] / (streams * d["proxy_span_s"]), 6)
        row["proxy_cores"] = round(d["proxy_cpu_s"] / d["proxy_span_s"], 3)
    if path in MODES and "modes" in d and d["modes"].get(MODES[path], 0) != n + 1:
        row["problems"].append(f"the proxy held {d['modes']} connections, not {n + 1} {MODES[path]}")
    for client in ("path", "direct"):
        c = d.get(client) or {}
        if c.get("lost") or c.get("error"):
            row["problems"].append(f"round trips ({client} client): {c.get('lost')} replies not back within "
                                   f"{REPLY_S:g} s" + (f" ({c['error']})" if c.get("error") else ""))
    return row


async def run_all(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    servers, aios_python = runnable(args.servers, results)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {k: {p: [] for p in args.paths} for k in servers}
    results["rows"] = rows

    def make(key: str, path: str, n: int) -> Any:
        name = f"{key}-{path}-{n}"  # a directory of its own per cell
        if key == "aiosendspin":
            assert aios_python is not None
            server: Any = AiosendspinServer(name, aios_python, work, args.lead_ms,
                                            args.ready_timeout + args.settle + args.seconds + 120)
        else:
            server = ours(name, 1, work)
        return lambda: ServerPath(server, path, args)

    for n in args.levels:
        for key in servers:
            for path in args.paths:
                row = await run_one(args, work, f"{key}-{path}", make(key, path, n), n)
                rows[key][path].append(finish(row, path))


def _us(v: float | None) -> str:
    return "" if v is None else f"{v:.0f}"


def _delta(v: float | None, base: float | None) -> str:
    return "" if v is None or base is None else f"{v - base:+.0f}"


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    rows = results.get("rows", {})
    out = [f"noise through the proxy: PCM 48 kHz/16-bit/stereo, {args.suite}, window {args.seconds:g} s after "
           f"{args.settle:g} s settle, {args.rtt} round trips per cell, {NCPU} cores, {results['meta']['date']}, "
           f"load average at start {results['meta']['loadavg'][0]:.2f}", "",
           "| server | listeners | path | zero gaps | proxy CPU-s/listener-s | RTT p50 µs | RTT p99 µs "
           "| p50 - reference µs | p99 - reference µs |", "|" + "---|" * 9]
    ratios = ["| server | listeners | terminated/opaque proxy CPU | noise (direct path: p50 - reference µs) "
              "| opaque p50 added µs | terminated p50 added µs | terminated p99 added µs |", "|" + "---|" * 7]
    notes: list[str] = []
    for i, n in enumerate(args.levels):
        for key, by_path in rows.items():
            cell = {p: (r[i] if i < len(r) else None) for p, r in by_path.items()}
            stands = {p: r is not None and not r["problems"] for p, r in cell.items()}
            # each path's round trips against the direct reference client of the same cell
            during = {p: (r.get("during") or {}) if stands[p] else {} for p, r in cell.items()}
            added = {p: {q: _delta(d.get("path", {}).get(q), d.get("direct", {}).get(q)) for q in ("p50_us", "p99_us")}
                     for p, d in during.items()}
            for p, r in cell.items():
                if r is None:
                    continue
                cpu = r.get("proxy_cpu_s_per_listener_s")
                q = during[p].get("path", {})
                out.append(f"| {SERVERS[key]} | {n} | {p} | {'yes' if stands[p] else 'not reached'} | "
                           f"{f'{cpu:.6f}' if stands[p] and cpu is not None else ('-' if p == 'direct' else '')} | "
                           f"{_us(q.get('p50_us'))} | {_us(q.get('p99_us'))} | {added[p]['p50_us']} | "
                           f"{added[p]['p99_us']} |")
                if r["problems"]:
                    notes.append(f"- {SERVERS[key]}, {p}, {n} listeners: not reached: "
                                 + "; ".join(r["problems"] + r["caveats"]))
                elif r["caveats"]:
                    notes.append(f"- {SERVERS[key]}, {p}, {n} listeners: no gap, but " + "; ".join(r["caveats"]))
            cpu = {p: cell[p].get("proxy_cpu_s_per_listener_s") if stands.get(p) else None  # type: ignore[union-attr]
                   for p in ("opaque", "terminated") if p in cell}
            ratio = (f"{cpu['terminated'] / cpu['opaque']:.2f}" if cpu.get("terminated") and cpu.get("opaque")
                     else "")
            none = {"p50_us": "", "p99_us": ""}
            ratios.append(f"| {SERVERS[key]} | {n} | {ratio} | {added.get('direct', none)['p50_us']} | "
                          f"{added.get('opaque', none)['p50_us']} | {added.get('terminated', none)['p50_us']} | "
                          f"{added.get('terminated', none)['p99_us']} |")
    for key, why in results.get("skipped", {}).items():
        out.append(f"| {SERVERS[key]} | | | not run: {why} | | | | | |")
    out += ["", *ratios]
    if notes:
        out += ["", "Notes:", *notes]
    out += ["", "Details (proxy cores; server cores; load generator cores, busiest process; machine busy; chunks "
                "per listener-s; the proxy's connections by mode, its event loop's lateness; round trips; ready):"]
    for key, by_path in rows.items():
        for p, rs in by_path.items():
            for r in rs:
                if "server_cores" not in r:
                    continue
                d = r.get("during") or {}
                out.append(f"- {SERVERS[key]}, {p}, {r['listeners']}: proxy {r.get('proxy_cores', '-')} cores; "
                           f"server {r['server_cores']} {r['cpu_split_s']}; load {r['load_cores']} "
                           f"({r['load_max_proc_cores']} max); machine {r['machine_busy']:.0%} (other "
                           f"{r['other_cores']}); {r['chunks_per_listener_s']} chunks/listener-s; "
                           f"modes {d.get('modes', '-')}; proxy loop late > 30 ms "
                           f"{d.get('proxy_loop_lags', '-')}, waited for a CPU {d.get('proxy_runqueue_wait_s', '-')} "
                           f"s in {d.get('proxy_span_s', 0):.1f} s; round trips (path, reference): "
                           f"{d.get('path', {}).get('n', 0)}, {d.get('direct', {}).get('n', 0)}, max "
                           f"{_us(d.get('path', {}).get('max_us'))}, {_us(d.get('direct', {}).get('max_us'))} µs; "
                           f"ready in {r['ready_s']} s")
    out.append(f"leftover processes: {results.get('leftovers')}; run time {results.get('runtime_s')} s")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 listeners, 3 s windows, 40 round trips")
    ap.add_argument("--levels", type=int, nargs="+", help="listener counts (default 20 100)")
    ap.add_argument("--seconds", type=float, help="measuring window in s (default 10)")
    ap.add_argument("--settle", type=float, help="s between every listener streaming and the window (default 3)")
    ap.add_argument("--rtt", type=int, help="round trips per cell (default 300)")
    ap.add_argument("--servers", default="ours,aiosendspin", help=f"comma-separated, of {', '.join(SERVERS)}")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    ap.add_argument("--suite", default="25519_ChaChaPoly_SHA256", choices=["25519_ChaChaPoly_SHA256",
                                                                           "25519_AESGCM_SHA256"])
    ap.add_argument("--sample", type=int, default=8, help="listeners per load process that decrypt every chunk")
    ap.add_argument("--per-proc", type=int, default=800, help="listeners per load-generator process")
    ap.add_argument("--ready-timeout", type=float, default=60.0, help="s for every listener to stream")
    ap.add_argument("--lead-ms", type=int, default=1500, help="aiosendspin: how far ahead it pushes")
    ap.add_argument("--out", help="also write the results as JSON here")
    ap.add_argument("--log-dir", help="keep the servers', proxies' and load generators' logs here")
    a = ap.parse_args(argv)
    quick = {"levels": [5], "seconds": 3.0, "settle": 1.0, "rtt": 40}
    full = {"levels": [20, 100], "seconds": 10.0, "settle": 3.0, "rtt": 300}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    a.paths = [p.strip() for p in a.paths.split(",") if p.strip()]
    bad = [s for s in a.servers if s not in SERVERS] + [p for p in a.paths if p not in PATHS]
    if bad or not a.servers or not a.paths:
        ap.error(f"--servers takes {', '.join(SERVERS)} and --paths {', '.join(PATHS)} (comma-separated), "
                 f"got {bad or 'nothing'}")
    if any(n < 1 for n in a.levels) or a.seconds <= 0 or a.rtt < 1 or a.sample < 0 or a.per_proc < 1:
        ap.error("--levels and --rtt must be >= 1, --seconds > 0, --sample >= 0 and --per-proc >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(args, "noise-proxy-", {
        "levels": args.levels, "seconds": args.seconds, "settle": args.settle, "rtt": args.rtt,
        "suite": args.suite, "sample": args.sample, "per_proc": args.per_proc}, run_all, report)


if __name__ == "__main__":
    sys.exit(main())
