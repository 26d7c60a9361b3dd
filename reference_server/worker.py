"""A worker process: the reference server fed by the coordinator.

Its ChunkStore is filled from the IPC socket; it reports its demand for audio
and its counts in a heartbeat; it exits when the coordinator goes away (EOF).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket

from harness.protocol import get_profile, now_us
from harness.protocol.noise import Identity

from . import ipc
from .config import ServerConfig
from .profiles import ServedProfiles, load_psks
from .server import ReferenceServer
from .timeline import Chunk, ChunkStore

HELLO_TIMEOUT_S = 10.0


async def run_worker(config: ServerConfig, ipc_fd: int, heartbeat_s: float) -> int:
    sock = socket.socket(fileno=ipc_fd)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        first = await asyncio.wait_for(loop.sock_recv(sock, ipc.MAX_MESSAGE), HELLO_TIMEOUT_S)
    except TimeoutError:
        return 3
    hello = ipc.decode(first)
    if not isinstance(hello, ipc.Hello):
        raise RuntimeError(f"worker: first IPC message must be HELLO, got {hello!r}")
    store = ChunkStore(hello.rate, hello.source_kind, get_profile("legacy"))
    if "noise" in config.profiles and not hello.identity:
        raise RuntimeError("worker: --profiles has noise but the coordinator sent no identity")
    profiles = ServedProfiles(config.profiles, Identity(hello.identity) if hello.identity else None,
                              load_psks(config.psks_file))

    def send(message: bytes) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # coordinator busy or gone: EOF will tell
            sock.send(message)

    def report(_wanted: bool = False) -> None:
        sessions = server.playback.sessions
        listeners = sum(1 for s in sessions.values() if s.player_format is not None)
        send(ipc.heartbeat(listeners, len(sessions), store.running))

    server = ReferenceServer(config, store=store, demand=report, profiles=profiles)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stopping.set)

    def on_ipc() -> None:
        batch: list[tuple[Chunk, bytes]] = []
        try:
            while True:
                try:
                    data = sock.recv(ipc.MAX_MESSAGE)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data:
                    server.log.emit("coordinator_gone")
                    loop.remove_reader(sock)
                    server.stopping.set()
                    return
                message = ipc.decode(data)
                if isinstance(message, tuple):
                    batch.append(message)
                elif isinstance(message, str):
                    server.cluster = json.loads(message)
        finally:
            if batch:  # everything that arrived together goes to the sessions together
                store.add_batch(batch)

    await server.start()
    send(ipc.ready(server.port, server.control.port))
    loop.add_reader(sock, on_ipc)

    async def heartbeat() -> None:
        while True:
            report()
            await asyncio.sleep(heartbeat_s)

    beat = asyncio.create_task(heartbeat())
    server.log.emit("worker_start", t_started_us=now_us())
    await server.stopping.wait()
    beat.cancel()
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(sock)
    await server.shutdown()
    sock.close()
    return 0
