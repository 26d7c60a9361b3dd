"""WebSocket extensions and the fault proxy: it must never lie.

A compressed message (permessage-deflate, RSV1 set) can be neither selected by content
nor changed by a message fault, so by default the proxy removes the client's extension
offer and neither side compresses.

Real peers on 127.0.0.1: the reference server (built on websockets' `serve`, which
negotiates permessage-deflate when offered), the websockets client (it offers it by
default, as browsers and Node's `ws` do), the proxy in this loop."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from proxy_support import fault_events, in_process_proxy, post_fault
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from harness.protocol import now_us
from harness.topology import reference_server

OFFER = "permessage-deflate; client_max_window_bits"  # what the websockets client sends
WAIT_S = 10.0  # generous: a condition normally holds within a second


def hello(client_id: str) -> str:
    return json.dumps({"type": "client/hello", "payload": {"client_id": client_id, "name": client_id, "version": 1,
                                                           "supported_roles": ["controller@v1"]}})


def extensions(ws: ClientConnection) -> list[str]:
    """What the client's connection negotiated."""
    return [e.name for e in ws.protocol.extensions]


async def json_until(ws: ClientConnection, done: Any, timeout: float = WAIT_S) -> list[dict[str, Any]]:
    """JSON messages the client receives until `done(messages)` holds (binary ones skipped)."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not done(got):
            msg = await ws.recv()
            if isinstance(msg, str):
                got.append(json.loads(msg))
    return got


async def join(ws: ClientConnection, client_id: str) -> None:
    await ws.send(hello(client_id))
    await json_until(ws, lambda got: any(m["type"] == "server/hello" for m in got))


async def time_sync(ws: ClientConnection, n: int) -> tuple[list[int], list[int]]:
    """Send `n` client/time; return (the stamps sent, the stamps of the server/time replies
    received until the last one's). The server answers in order on one stream, so a reply
    missing by then was dropped on the way."""
    base = now_us()
    sent = [base + i for i in range(n)]
    for t in sent:
        await ws.send(json.dumps({"type": "client/time", "payload": {"client_transmitted": t}}))
    got = await json_until(ws, lambda got: any(m["type"] == "server/time"
                                              and m["payload"]["client_transmitted"] == sent[-1] for m in got))
    return sent, [m["payload"]["client_transmitted"] for m in got if m["type"] == "server/time"]


def test_by_default_a_deflate_client_gets_no_extension_and_content_faults_hit_it(run: Any, tmp_path: Path) -> None:
    """The websockets client offers permessage-deflate, as browsers do. Straight to the
    reference server it gets it; through the proxy (default) the offer is removed, the
    server answers without the extension, the client's connection has none, and a drop
    and a stalled_payload of `server/time` (selected by JSON type) act, as the client sees."""
    with reference_server(tmp_path / "server") as server:
        url = server.ready["url"]

        async def body() -> None:
            async with ws_connect(url) as direct:  # the server does negotiate it when offered
                assert extensions(direct) == ["permessage-deflate"]
            async with in_process_proxy([url]) as px, ws_connect(px.url + "/sendspin") as ws:
                assert ws.request is not None and ws.request.headers["Sec-WebSocket-Extensions"] == OFFER
                assert extensions(ws) == []  # the server saw no offer, so it answered with none
                (relay,) = [e for e in px.events.since(0) if e["event"] == "relay"]
                assert (relay["stripped"], relay["extensions"]) == (OFFER, None)
                await join(ws, "deflate-client")

                added = await post_fault(px, {"type": "drop", "name": "drop-time", "json_type": "server/time",
                                              "count": 2})
                assert "not_applied" not in added
                sent, got = await time_sync(ws, 4)
                assert got == sent[2:]  # the first two replies never arrived
                drops = fault_events(px, "drop")
                assert [(e["json_type"], e["direction"]) for e in drops] == [("server/time", "downstream")] * 2

                await post_fault(px, {"type": "stalled_payload", "json_type": "server/time", "stall_s": 0.4,
                                      "count": 1})
                t0 = time.monotonic()
                sent, got = await time_sync(ws, 1)
                assert got == sent and time.monotonic() - t0 >= 0.4  # it came, held back by the stall
                (stall,) = fault_events(px, "stalled_payload")
                assert stall["json_type"] == "server/time" and stall["stall_s"] == 0.4
                assert not [e for e in px.events.since(0) if e["event"] == "fault_not_applied"]

        run(body(), 60)
