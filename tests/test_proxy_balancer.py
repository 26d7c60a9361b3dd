"""Load balancer: least connections over live upstreams; a dead upstream (refused /
reset) stops getting connections within the stated bound (health probe every 0.1 s,
or at once on the first failed connect); per-upstream counters."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from proxy_support import RawUpstream, client_connect, collect, echo, in_process_proxy

from harness.topology import reference_server, spawn

DEAD_BOUND_S = 0.5  # stated: health_interval (0.1 s) + one loopback connect, with slack for a loaded CI box


async def get(url: str) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s, s.get(url) as r:
        return await r.json()


def test_two_reference_servers_one_killed(run: Any, tmp_path: Path) -> None:
    async def body() -> None:
        a = await asyncio.to_thread(reference_server, tmp_path / "a")
        b = await asyncio.to_thread(reference_server, tmp_path / "b")
        px = None
        try:
            ups = [f"ws://127.0.0.1:{s.ready['port']}" for s in (a, b)]
            argv = [sys.executable, "-m", "proxy", "--listen", "127.0.0.1:0", "--log-dir", str(tmp_path),
                    "--health-interval", "0.1"] + [x for u in ups for x in ("--upstream", u)]
            px = await asyncio.to_thread(spawn, "proxy", argv, tmp_path)
            port, ctl = px.ready["listen"]["port"], px.ready["control"]["url"]
            conns = [await client_connect(port, "/sendspin") for _ in range(4)]
            up = (await get(f"{ctl}/upstreams"))["upstreams"]
            assert [(u["active"], u["total"], u["alive"]) for u in up] == [(2, 2, True), (2, 2, True)]

            b.popen.kill()  # SIGKILL: its port refuses connections from now on
            t_kill = time.monotonic()
            while True:
                up = (await get(f"{ctl}/upstreams"))["upstreams"]
                if not up[1]["alive"]:
                    break
                assert time.monotonic() - t_kill < DEAD_BOUND_S, "dead upstream still marked alive"
                await asyncio.sleep(0.01)
            noticed = time.monotonic() - t_kill
            # the killed server's two clients see their connection end; the others stay up
            ends = [t.end for t in await asyncio.gather(*(collect(r, 0.5) for r, _ in conns))]
            assert sorted(ends) in (["eof", "eof", "timeout", "timeout"], ["eof", "rst", "timeout", "timeout"],
                                    ["rst", "rst", "timeout", "timeout"]), ends
            for (_, w), end in zip(conns, ends, strict=True):
                if end != "timeout":  # half-open until the client closes too (transparent)
                    w.close()
            # every new connection goes to the live one, none fails
            more = [await client_connect(port, "/sendspin") for _ in range(4)]
            await asyncio.sleep(0.1)
            up = (await get(f"{ctl}/upstreams"))["upstreams"]
            assert (up[0]["total"], up[1]["total"]) == (6, 2), up
            assert (up[0]["active"], up[1]["active"]) == (6, 0), up
            assert up[1]["last_error"] and "health probe" in up[1]["last_error"]
            events = (await get(f"{ctl}/events?event=upstream_down"))["events"]
            assert [e["upstream"] for e in events] == [1]
            for _, w in conns + more:
                w.close()
            print(f"dead upstream noticed after {noticed * 1000:.0f} ms")
        finally:
            if px is not None:
                assert await asyncio.to_thread(px.stop) == 0
            await asyncio.to_thread(a.stop)
            await asyncio.to_thread(b.stop)

    run(body(), 40)


def test_least_connections_with_round_robin_ties(run: Any) -> None:
    async def body() -> None:
        async with RawUpstream(echo) as u0, RawUpstream(echo) as u1, RawUpstream(echo) as u2, \
                in_process_proxy([f"ws://127.0.0.1:{u.port}" for u in (u0, u1, u2)]) as px:
            c = [await client_connect(px.port) for _ in range(3)]
            assert [len(u.accepted) for u in (u0, u1, u2)] == [1, 1, 1]  # ties: round robin
            c[1][1].close()  # u1 now has the fewest
            await collect(c[1][0], 1)
            for _ in range(50):
                if px.state.upstreams[1].active == 0:
                    break
                await asyncio.sleep(0.02)
            c.append(await client_connect(px.port))
            assert [len(u.accepted) for u in (u0, u1, u2)] == [1, 2, 1]
            assert [u.active for u in px.state.upstreams] == [1, 1, 1]
            for _, w in c:
                w.close()

    run(body(), 20)


def test_refused_upstream_is_dropped_at_its_first_failure_without_health_probe(run: Any) -> None:
    """With the probe off, one client sees a 502 and the upstream is out at once."""
    async def body() -> None:
        dead = RawUpstream(echo)
        await dead.__aenter__()
        dead_port = dead.port
        await dead.stop()  # nothing listens there any more
        async with RawUpstream(echo) as live, \
                in_process_proxy([f"ws://127.0.0.1:{dead_port}", f"ws://127.0.0.1:{live.port}"],
                                 health_interval=0) as px:
            results = []
            for _ in range(4):
                try:
                    _, w = await client_connect(px.port)
                    results.append("ok")
                    w.close()
                except RuntimeError as e:
                    results.append("502" if " 502 " in str(e) else str(e))
            assert results.count("502") == 1 and results.count("ok") == 3, results
            u = px.state.upstreams
            assert (u[0].alive, u[0].failures, u[1].alive, len(live.accepted)) == (False, 1, True, 3)
            # no live upstream at all: an immediate 502, not a hang
            u[1].alive = False
            t0 = time.monotonic()
            try:
                await client_connect(px.port)
                raise AssertionError("connected with no live upstream")
            except RuntimeError as e:
                assert " 502 " in str(e) and time.monotonic() - t0 < 1

    run(body(), 20)
