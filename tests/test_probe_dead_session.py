"""The probe's dead-session watchdog (ProbeConfig.dead_session_s): a server that says
server/hello and then never answers client/time is given up, and the probe connects
again; without the watchdog it waits for ever, as before. In-process, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from harness.probe import ProbeClient, ProbeConfig
from harness.protocol import EventLog, get_profile
from harness.protocol import messages as m

HELLO = get_profile("legacy").session("server").encode(
    m.ServerHello(server_id="deaf", name="Deaf server", active_roles=["player@v1"], connection_reason="discovery"))


async def deaf_server(connections: list[float]) -> Any:
    """A server that answers client/hello and then reads everything and answers nothing."""
    async def handler(ws: ServerConnection) -> None:
        connections.append(asyncio.get_running_loop().time())
        await ws.recv()
        await ws.send(HELLO)
        async for _ in ws:
            pass

    return await serve(handler, "127.0.0.1", 0, compression=None)


async def session(tmp_path: Path, dead_session_s: float | None, seconds: float) -> tuple[list[float], list[str]]:
    connections: list[float] = []
    server = await deaf_server(connections)
    port = server.sockets[0].getsockname()[1]
    log = EventLog(tmp_path / "probe.jsonl", "probe")
    probe = ProbeClient(f"ws://127.0.0.1:{port}/sendspin",
                        ProbeConfig(roles=["player@v1"], time_interval_s=0.05, reconnect=True,
                                    dead_session_s=dead_session_s), log)
    try:
        await probe.connect()
        await asyncio.sleep(seconds)
    finally:
        await probe.close(goodbye=False, timeout=1.0)
        server.close()
        await server.wait_closed()
        log.close()
    events = [json.loads(line)["event"] for line in (tmp_path / "probe.jsonl").read_text().splitlines()]
    return connections, events


def test_a_server_that_answers_no_client_time_is_given_up_and_the_probe_reconnects(
        tmp_path: Path, run: Callable[..., Any]) -> None:
    connections, events = run(session(tmp_path, 0.3, 1.5), 30)
    assert "dead_session" in events
    assert len(connections) >= 2, events  # given up after 0.3 s, back after the 0.1 s backoff
    assert events.index("dead_session") < events.index("reconnected")


def test_without_the_watchdog_the_probe_stays(tmp_path: Path, run: Callable[..., Any]) -> None:
    connections, events = run(session(tmp_path, None, 1.0), 30)
    assert len(connections) == 1 and "dead_session" not in events
