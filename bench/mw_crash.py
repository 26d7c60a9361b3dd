"""bench/multiworker.py, table 1: a worker crash (SIGKILL of worker 0), ours and sendspin."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from mw_common import log, now_us
from mw_servers import OursServer, SendspinServer

from harness.topology import group_pids, kill_group, listening_pid, port_accepts, wait_exit


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
        res["coordinator_alive_after_window"] = srv.child is not None and not srv.child.exited()
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
        assert srv.child is not None and srv.popen is not None
        t_kill2 = now_us()
        os.kill(info[1]["pid"], signal.SIGKILL)
        if await wait_exit(srv.child, 15):
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
        assert srv.child is not None and srv.popen is not None
        if await wait_exit(srv.child, (t_det - now_us()) / 1e6 + args.hang_cap):
            fate = {"exited": True, "exit_code": srv.popen.returncode,
                    "exit_after_detect_s": round((now_us() - t_det) / 1e6, 2)}
        else:
            fate = {"exited": False, "alive_after_detect_s": round((now_us() - t_det) / 1e6, 1),
                    "processes": len(group_pids(srv.pid)),
                    "ports_accepting": {p: await port_accepts(p) for p in srv.ports}}
            t_term = time.monotonic()
            kill_group(srv.pid, signal.SIGTERM)
            if await wait_exit(srv.child, 5):
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
