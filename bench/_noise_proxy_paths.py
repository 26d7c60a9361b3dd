"""bench/noise_proxy.py, one path to an upstream server: direct, or through `python -m proxy
--noise opaque|terminate`; and the extra client that times JSON round trips on it.

`ServerPath` wraps a started-on-demand server of bench/_noise_servers.py so that
bench/_noise_measure.run_one measures it unchanged: its `urls` are the proxy's (the
listeners dial the proxy), its `pid`/`worker_names` the server's (the server's CPU stays
the server's), and its `during` runs over the CPU window: the round trips, and the
proxy's own CPU (utime+stime of its process group from /proc) over the same span.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from _noise_load import _hello, _state
from mw_common import GROUPS, ROOT
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from harness.protocol import ConnectionFatal, ProtocolError, now_us
from harness.protocol import messages as m
from harness.protocol.cpuwait import cpu_ns, runqueue_waits
from harness.protocol.noise import AudioChunk, NoiseProfile
from harness.topology import Child, await_ready_file, group_pids

PATHS = ("direct", "opaque", "terminated")
MODES = {"opaque": "noise-opaque", "terminated": "noise-terminated"}  # the proxy's name for each connection
STEP_S = 10.0       # one handshake step, one reply: generous for a loaded machine; a bound, not a speed claim
REPLY_S = 5.0       # a server/time later than this is counted lost


def pct(values: list[float], q: float) -> float | None:
    """Nearest rank, as bench/proxy_overhead.py."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else None


async def interleaved(clients: dict[str, RttClient], n: int, span_s: float) -> dict[str, dict[str, Any]]:
    """`n` rounds started `span_s / n` apart (or at once after a slow one); each round one
    round trip on every client in turn (who goes first alternates), so they share the
    machine's moments."""
    loop = asyncio.get_running_loop()
    ns: dict[str, list[int]] = {k: [] for k in clients}
    lost = dict.fromkeys(clients, 0)
    start = loop.time()
    items = list(clients.items())
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i * span_s / n - loop.time()))
        for k, c in (items if i % 2 else items[::-1]):
            if c.reader is not None and c.reader.done():
                lost[k] += 1  # the connection is gone
                continue
            t = await c.round_trip()
            if t is None:
                lost[k] += 1
            else:
                ns[k].append(t)
    out = {}
    for k, c in clients.items():
        us = [v / 1000 for v in ns[k]]
        out[k] = {"n": len(us), "lost": lost[k], "p50_us": pct(us, 0.5), "p99_us": pct(us, 0.99),
                  "max_us": max(us) if us else None, "error": c.error}
    return out


class RttClient:
    """A real noise player (the listeners' hello and state, bench/_noise_load.py) over websockets
    that times `client/time` -> `server/time`, one at a time. It decrypts everything it gets
    (the nonce is the message count), audio included."""

    def __init__(self, url: str, suite: str) -> None:
        self.url = url
        self.codec = NoiseProfile(suite=suite).session("client")  # type: ignore[arg-type]
        self.ws: ClientConnection | None = None
        self.lock = asyncio.Lock()  # encrypt and write in one order: the nonces are the wire order
        self.active = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        self.waiting: tuple[int, asyncio.Future[int]] | None = None
        self.chunks = 0
        self.error = ""

    async def send(self, message: m.Message) -> None:
        assert self.ws is not None
        async with self.lock:
            for wire in self.codec.encode_messages(message):
                await self.ws.send(wire)

    async def open(self) -> None:
        self.ws = await connect(self.url, open_timeout=STEP_S, close_timeout=3, compression=None, max_size=None,
                                proxy=None)
        for wire in self.codec.handshake(None).send:
            await self.ws.send(wire)
        while not self.codec.ready:
            step = self.codec.handshake(await asyncio.wait_for(self.ws.recv(), STEP_S))
            if step.close:
                raise RuntimeError(f"round-trip client: handshake with {self.url} failed: {step.error}")
            for wire in step.send:
                await self.ws.send(wire)
        self.reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self.active.wait(), STEP_S)
        except TimeoutError:
            raise RuntimeError(f"round-trip client: no server/activate from {self.url} within {STEP_S} s "
                               f"{self.error}") from None

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for wire in self.ws:
                t = time.perf_counter_ns()
                try:
                    message = self.codec.decode(wire)
                except ConnectionFatal as exc:
                    self.error = f"fatal: {exc}"
                    return
                except ProtocolError:  # a message we do not know: ignored, as the spec says
                    continue
                if isinstance(message, AudioChunk):
                    self.chunks += 1
                elif isinstance(message, m.ServerTime):
                    if self.waiting and message.client_transmitted == self.waiting[0]:
                        with contextlib.suppress(asyncio.InvalidStateError):
                            self.waiting[1].set_result(t)
                elif isinstance(message, m.NoiseServerHello):
                    await self.send(_hello())
                elif isinstance(message, m.ServerActivate) and not self.active.is_set():
                    await self.send(_state())
                    self.active.set()
        except ConnectionClosed as exc:
            self.error = f"closed: {exc}"

    async def round_trip(self) -> int | None:
        """One `client/time` -> `server/time`, in ns; None if no reply within REPLY_S."""
        loop = asyncio.get_running_loop()
        stamp = now_us()
        fut: asyncio.Future[int] = loop.create_future()
        self.waiting = (stamp, fut)
        t0 = time.perf_counter_ns()
        await self.send(m.ClientTime(client_transmitted=stamp))
        try:
            return await asyncio.wait_for(fut, REPLY_S) - t0
        except TimeoutError:
            return None

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)


def runqueue_wait_s(pids: list[int]) -> float:
    """Seconds the threads of `pids` spent runnable but waiting for a CPU: a process starved
    by a busy machine, told apart from one busy with its own work."""
    return sum(runqueue_waits(pids).values()) / 1e9


def proxy_api(control_url: str, what: str) -> Any:
    with urllib.request.urlopen(control_url.rstrip("/") + what, timeout=10) as r:
        return json.loads(r.read())


class ServerPath:
    """One path to a fresh upstream server: the server, the proxy in `opaque` or
    `terminated` mode (none: direct), and two round-trip clients, one on the path and one
    straight to the server (the reference the path's latency is compared with, in the same
    moments; on the direct path both go straight: their difference is the run's noise)."""

    def __init__(self, server: Any, path: str, args: Any) -> None:
        self.server, self.path, self.args = server, path, args
        self.name = f"{server.name}-{path}"
        self.proxy: Child | None = None
        self.proxy_info: dict[str, Any] = {}
        self.rtt: dict[str, RttClient] = {}

    # --- what bench/_noise_measure.py asks of a server -------------------------------
    @property
    def pid(self) -> int:
        return self.server.pid

    def worker_names(self) -> dict[int, str]:
        return self.server.worker_names()

    @property
    def urls(self) -> list[str]:
        if self.proxy is None:
            return self.server.urls
        base = self.proxy_info["listen"]["url"].rstrip("/")
        return [base + urlsplit(self.server.urls[0]).path]

    @property
    def cmd(self) -> str:
        mode = {"opaque": " -> python -m proxy --noise opaque", "terminated": " -> python -m proxy --noise terminate"}
        return self.server.cmd + mode.get(self.path, "")

    async def start(self) -> None:
        await self.server.start()
        if self.path != "direct":
            ready = self.server.dir / f"proxy-{self.path}.ready.json"
            argv = [sys.executable, "-m", "proxy", "--listen", "127.0.0.1:0", "--upstream", self.server.urls[0],
                    "--ready-file", str(ready), "--quiet", "--noise", "terminate" if self.path == "terminated"
                    else "opaque"]
            self.proxy = GROUPS.spawn(self.name + "-proxy", argv, self.server.dir / f"proxy-{self.path}.txt",
                                      cwd=ROOT)
            self.proxy_info = await await_ready_file(self.proxy, ready, 30.0)
        # before the listeners: a handshake and a group join are not in the window (aiosendspin's
        # group is founded by its first client: the reference)
        for key, url in (("direct", self.server.urls[0]), ("path", self.urls[0])):
            self.rtt[key] = RttClient(url, self.args.suite)
            await self.rtt[key].open()

    async def during(self) -> dict[str, Any]:
        """Over the CPU window: the round trips, the proxy's CPU, and what mode its connections are in."""
        pids = group_pids(self.proxy.pid) if self.proxy is not None else []
        c0, w0 = cpu_ns(pids), runqueue_wait_s(pids)
        t0, t0_us, chunks0 = time.monotonic(), now_us(), self.rtt["path"].chunks
        out: dict[str, Any] = await interleaved(self.rtt, self.args.rtt, self.args.seconds * 0.9)
        out["rtt_client_audio"] = self.rtt["path"].chunks - chunks0  # a stream through the proxy too?
        if self.proxy is None:
            return out
        # exact CPU time: in clock ticks, a 0.5 s smoke window read 0 on a starved machine
        out["proxy_cpu_s"] = sum(ns - c0.get(thread, 0) for thread, ns in cpu_ns(pids).items()) / 1e9
        out["proxy_span_s"] = time.monotonic() - t0
        out["proxy_runqueue_wait_s"] = round(runqueue_wait_s(pids) - w0, 2)
        control = self.proxy_info["control"]["url"]
        modes: dict[str, int] = {}
        for c in (await asyncio.to_thread(proxy_api, control, "/connections"))["connections"]:
            modes[str(c.get("mode"))] = modes.get(str(c.get("mode")), 0) + 1
        out["modes"] = modes
        # the proxy's own record of its event loop running late (> 30 ms, harness/protocol/looplag.py)
        # in the window: tells a stalled proxy from a slow path elsewhere
        lags = [e["lag_us"] for e in (await asyncio.to_thread(proxy_api, control, "/events?event=loop_lag&limit=1000"))
                ["events"] if e.get("t_us", 0) >= t0_us]
        out["proxy_loop_lags"] = {"count": len(lags), "worst_ms": round(max(lags) / 1000, 1) if lags else 0}
        return out

    async def stop(self) -> str:
        for c in self.rtt.values():
            await c.close()
        said = []
        if self.proxy is not None:
            said.append(f"proxy {await self.proxy.astop()}")
        said.append(await self.server.stop())
        return "; ".join(said)
