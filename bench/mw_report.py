"""bench/multiworker.py, the printed report: both tables and the summary next to the goal."""

from __future__ import annotations

import textwrap
from typing import Any

from mw_common import GOAL_CPU_PER_LS, GOAL_FACTOR, NCPU, PER_LOAD_PROC


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
