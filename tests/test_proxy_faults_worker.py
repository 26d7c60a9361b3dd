"""worker_crash: an upstream worker process killed, stopped or cut off (RST), through the
pids registered with the proxy; real websockets workers as subprocesses.

All through the in-process proxy (real mitmproxy, real sockets on 127.0.0.1); faults are
added and removed through the control API, as a scenario or a person would; after each,
`POST /reset` (or removal) and a check that the proxy is transparent again. Helpers:
proxy_support.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import websockets
from proxy_support import (
    TEXT,
    api,
    client_connect,
    collect,
    encode_frame,
    fault_events,
    in_process_proxy,
    post_fault,
    read_frame,
    until,
)

# --- worker_crash ---------------------------------------------------------------------------------------

WORKER = """
import asyncio, os, sys
from websockets.asyncio.server import serve

async def handler(ws):
    await ws.send(f"pid:{os.getpid()}")
    async for msg in ws:
        await ws.send(msg)

async def main():
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()

asyncio.run(main())
"""


def proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def running(pid: int) -> bool:
    """Alive and not stopped: R, S, or D (under memory pressure a process waits for its
    pages in D), as opposed to T (stopped), Z or gone."""
    return proc_state(pid) in ("R", "S", "D")


def test_worker_crash_reset_stop_kill_through_registered_pids(run: Any) -> None:
    async def worker() -> tuple[asyncio.subprocess.Process, int]:
        p = await asyncio.create_subprocess_exec(sys.executable, "-c", WORKER, stdout=asyncio.subprocess.PIPE)
        assert p.stdout is not None
        line = await asyncio.wait_for(p.stdout.readline(), 10)
        return p, int(line)

    async def conn(px: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
        reader, writer = await client_connect(px.port, "/")
        hello = await asyncio.wait_for(read_frame(reader), 3)
        return reader, writer, int(hello.payload.split(b":")[1])

    async def echoed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> bool:
        writer.write(encode_frame(TEXT, b"ping?", mask=True))
        tr = await collect(reader, timeout, until=lambda t: bool(t.frames))
        return tr.data() == [b"ping?"]

    async def body() -> None:
        procs = [await worker() for _ in range(2)]
        try:
            async with in_process_proxy([f"ws://127.0.0.1:{port}" for _, port in procs]) as px:
                status, body = await api(px, "POST", "/faults", {"type": "worker_crash"})
                assert status == 400 and "no upstream has a registered pid" in body["error"]
                for i, (p, _) in enumerate(procs):
                    status, _ = await api(px, "PATCH", f"/upstreams/{i}", {"pid": p.pid})
                    assert status == 200
                status, body = await api(px, "POST", "/faults", {"type": "worker_crash", "upstream": 5})
                assert status == 400 and "'upstream' 5 is not an upstream (0..1)" in body["error"], body
                px.state.reset()  # see the report: a fault whose on_added raised stays in the table
                conns = [await conn(px) for _ in range(2)]
                by_pid = {pid: (r, w) for r, w, pid in conns}
                assert set(by_pid) == {p.pid for p, _ in procs}  # one connection per worker
                pid0, pid1 = procs[0][0].pid, procs[1][0].pid
                # reset: network only; worker 0's flows get RST, the process lives on
                await post_fault(px, {"type": "worker_crash", "action": "reset", "upstream": 0})
                assert (await collect(by_pid[pid0][0], 2)).end == "rst"
                assert procs[0][0].returncode is None and running(pid0)
                assert await echoed(*by_pid[pid1], 2)
                await reset_and_check_transparent_via_worker(px)
                await until(lambda: px.state.upstreams[0].active == 0, 2, "worker 0's flows to end")
                r0, w0, p = await conn(px)  # worker 0 is up: a new connection goes there
                assert p == pid0
                by_pid[pid0] = (r0, w0)
                conns.append((r0, w0, p))
                # stop (random among workers with a pid, seeded): hangs; removal sends SIGCONT
                f = await post_fault(px, {"type": "worker_crash", "action": "stop", "seed": 1})
                await until(lambda: bool(fault_events(px, "worker_crash")[1:]), 2, "the stop")
                stopped = fault_events(px, "worker_crash")[-1]["pid"]
                # SIGSTOP takes effect when the kernel next schedules the target: wait for it, don't poll once
                await until(lambda: proc_state(stopped) == "T", 2, f"worker {stopped} to be stopped (state T)")
                r, w = by_pid[stopped]
                w.write(encode_frame(TEXT, b"queued", mask=True))
                assert (await collect(r, 0.4)).frames == []  # a hung worker answers nothing
                status, _ = await api(px, "DELETE", f"/faults/{f['name']}")
                assert status == 200
                assert (await collect(r, 3, until=lambda t: bool(t.frames))).data() == [b"queued"]
                assert running(stopped)
                # kill: the worker dies; its client sees the end the kernel gave the proxy
                await post_fault(px, {"type": "worker_crash", "action": "kill", "upstream": 1, "count": 1})
                assert await asyncio.wait_for(procs[1][0].wait(), 5) == -signal.SIGKILL
                assert (await collect(by_pid[pid1][0], 3)).end in ("eof", "rst")
                ev = fault_events(px, "worker_crash")
                assert [(e["action"], e["upstream"]) for e in ev] == [("reset", 0), ("stop", ev[1]["upstream"]),
                                                                      ("kill", 1)]
                assert ev[0]["flows"] and "error" not in ev[2]
                await until(lambda: not px.state.faults, 2, "count=1 to retire the kill")
                for _, w, _ in conns:
                    w.close()
                px.state.upstreams[1].alive = False  # dead: route the transparency check to worker 0
                await reset_and_check_transparent_via_worker(px)
        finally:
            for p, _ in procs:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGCONT)
                        p.kill()
                await asyncio.wait_for(p.wait(), 5)

    run(body(), 40)


async def reset_and_check_transparent_via_worker(px: Any) -> None:
    """POST /reset with a websockets worker upstream: it greets, then echoes."""
    status, _ = await api(px, "POST", "/reset")
    assert status == 200 and not px.state.faults
    async with websockets.connect(f"ws://127.0.0.1:{px.port}/", compression=None, open_timeout=5) as ws:
        assert str(await asyncio.wait_for(ws.recv(), 2)).startswith("pid:")
        await ws.send(b"x" * 70_000)
        assert await asyncio.wait_for(ws.recv(), 2) == b"x" * 70_000
