"""Benchmark: what a 32 MiB artwork send to a slow reader costs a server.

For each server (our reference server, then the negative control
tests/bad_servers/sync_bulk_server.py for contrast), one probe connects with
the artwork role but asks for no image (channel source "none"), reads at
4 MiB/s with a 16 KiB SO_RCVBUF and sends client/time every 50 ms:

  (a) idle: ~5 s with nothing big to send, the baseline;
  (b) bulk: it asks for the image (stream/request-format) and reads it slowly.

It prints read latency (server_received - client_transmitted, from the
server's event log) p50/p99/max for both phases and their ratio (b)/(a); the
server's RSS (sampled every 100 ms) before vs while serving the slow reader;
and the largest `held` the server itself reported in `session_stats` for that
session during (b). Not a test: it judges nothing, it measures.

    /tmp/venv/bin/python bench/bulk_send.py [--artwork-mib 32] [--read-rate-mib 4] [--idle-s 5]

Everything runs on 127.0.0.1, every wait is bounded, every process is reaped,
and the logs go to a temporary directory that is removed (or --log-dir).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.checkers import read_latencies
from harness.events import Events
from harness.probe import ProbeClient, ProbeConfig
from harness.protocol import messages as m
from harness.protocol import now_us
from harness.scenario import Scenario
from harness.topology import ManagedProcess, spawn

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
BAD_SERVER = ROOT / "tests" / "bad_servers" / "sync_bulk_server.py"
PROBE = "slow"
RSS_INTERVAL_S = 0.1
SETTLE_S = 0.3
TOTAL_TIMEOUT_S = 85.0


@dataclass
class Phase:
    latencies_us: list[int]
    rss: list[int]
    duration_s: float

    def pct(self, q: float) -> float:
        """Nearest-rank percentile in ms (the checkers' definition)."""
        ordered = sorted(self.latencies_us)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000 if ordered else float("nan")

    @property
    def max_ms(self) -> float:
        return max(self.latencies_us, default=0) / 1000


@dataclass
class Result:
    server: str
    idle: Phase
    bulk: Phase
    held_max: int | None        # the server's own session_stats during the bulk phase
    frames: int
    image_bytes: int


async def _wait(condition: Callable[[], bool], timeout: float, what: str, probe: ProbeClient) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if probe.closed.is_set():
            raise RuntimeError(f"{what}: the session closed ({probe.close_code} {probe.close_reason!r})")
        if loop.time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


async def _sample_rss(server: ManagedProcess, into: list[tuple[int, int]]) -> None:
    while True:
        into.append((now_us(), server.rss_bytes()))
        await asyncio.sleep(RSS_INTERVAL_S)


async def measure(kind: str, directory: Path, artwork_bytes: int, read_rate: float, idle_s: float) -> Result:
    args = ("--host", "127.0.0.1", "--artwork-bytes", str(artwork_bytes))
    async with Scenario(directory) as sc:
        if kind == "reference":
            server = await sc.server(*args)
        else:
            argv = [sys.executable, str(BAD_SERVER), "--log-dir", str(directory), "--proc", "server", *args]
            server = await asyncio.to_thread(spawn, "server", argv, directory)
            sc.servers.append(server)   # the Scenario reaps it
        rss: list[tuple[int, int]] = []
        sampler = asyncio.create_task(_sample_rss(server, rss))
        try:
            # Same settings as tests/test_negative_control.py, except that the hello asks
            # for no image (source "none"), so the idle phase really is idle.
            probe = await sc.probe(server.ready["url"], ProbeConfig(
                name=PROBE, roles=["artwork@v1", m.HARNESS_ROLE], rcvbuf=16384, read_rate=read_rate,
                time_interval_s=0.05, artwork_channels=[m.ArtworkChannelSupport(
                    source="none", format="png", media_width=1024, media_height=1024)]))
            await asyncio.sleep(SETTLE_S)  # skip the handshake's echo
            idle_start = now_us()
            await asyncio.sleep(idle_s)
            bulk_start = now_us()
            probe.send(m.StreamRequestFormat(artwork=m.ArtworkFormatRequest(channel=0, source="album", format="png")))
            await _wait(lambda: 0 in probe.artwork, artwork_bytes / read_rate * 3 + 10, "artwork", probe)
            arrived = now_us()
            # The server must have read every client/time we judge (the bad one reads its backlog late).
            await _wait(lambda: all(t in probe.time_replies for t in probe.time_sent if t < arrived), 5.0,
                        "server/time replies", probe)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
    events = Events.load(directory)
    art = events.select("artwork", proc=PROBE)[-1]
    found = events.server_session(PROBE)
    assert found is not None, "the server logged no client/hello"
    stats = [r for r in events.select("session_stats", proc=found[0], session=found[1])
             if bulk_start <= r["t_us"] <= arrived]

    def phase(start: int, end: int) -> Phase:
        return Phase(read_latencies(events, PROBE, start, end), [b for t, b in rss if start <= t < end],
                     (end - start) / 1e6)

    return Result(kind, phase(idle_start, bulk_start), phase(bulk_start, arrived),
                  max((r["held"] for r in stats), default=None), art["fragments"], art["bytes"])


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.1f}x" if a > 0 else "-"


def report(results: list[Result], artwork_bytes: int, read_rate: float) -> str:
    lines = [f"bulk send: {artwork_bytes / MiB:.0f} MiB artwork to a probe reading at {read_rate / MiB:g} MiB/s "
             "(SO_RCVBUF 16 KiB), client/time every 50 ms; read latency = server_received - client_transmitted",
             "",
             f"{'server':<10} {'phase':<13} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}   "
             f"{'RSS MiB median / max':>21}"]
    for r in results:
        for name, p in (("idle", r.idle), ("bulk", r.bulk)):
            med = statistics.median(p.rss) / MiB if p.rss else float("nan")
            top = max(p.rss, default=0) / MiB
            lines.append(f"{r.server:<10} {f'{name} {p.duration_s:.1f} s':<13} {len(p.latencies_us):>4} "
                         f"{p.pct(0.5):>9.1f} {p.pct(0.99):>9.1f} {p.max_ms:>9.1f}   {med:>10.1f} / {top:<8.1f}")
        held = "-" if r.held_max is None else f"{r.held_max / 1024:.0f} KiB"
        rss_held = (max(r.bulk.rss, default=0) - statistics.median(r.idle.rss)) / MiB if r.idle.rss else 0.0
        lines.append(f"{r.server:<10} {'bulk/idle':<13} {'':>4} {_ratio(r.idle.pct(0.5), r.bulk.pct(0.5)):>9} "
                     f"{_ratio(r.idle.pct(0.99), r.bulk.pct(0.99)):>9} {_ratio(r.idle.max_ms, r.bulk.max_ms):>9}   "
                     f"RSS +{rss_held:.1f} MiB while serving it")
        lines.append(f"{r.server:<10} {'':<13} image {r.image_bytes} B in {r.frames} WebSocket frame(s); "
                     f"session_stats held max {held}")
        lines.append("")
    return "\n".join(lines).rstrip()


async def main_async(a: argparse.Namespace, directory: Path) -> list[Result]:
    artwork_bytes, read_rate = int(a.artwork_mib * MiB), a.read_rate_mib * MiB
    results = []
    for kind in ("reference", "sync_bulk"):   # one at a time: each has the machine to itself
        results.append(await measure(kind, directory / kind, artwork_bytes, read_rate, a.idle_s))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--artwork-mib", type=float, default=32.0)
    p.add_argument("--read-rate-mib", type=float, default=4.0, help="probe read rate, MiB/s")
    p.add_argument("--idle-s", type=float, default=5.0, help="length of the idle baseline")
    p.add_argument("--log-dir", type=Path, help="keep the event logs here (default: a removed temp dir)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bulk-send-") as tmp:
        directory = a.log_dir or Path(tmp)
        results = asyncio.run(asyncio.wait_for(main_async(a, directory), TOTAL_TIMEOUT_S))
    print(report(results, int(a.artwork_mib * MiB), a.read_rate_mib * MiB))
    return 0


if __name__ == "__main__":
    sys.exit(main())
