"""WebSocket extensions and the fault proxy: it must never lie.

A compressed message (permessage-deflate, RSV1 set) can be neither selected by content
nor changed by a message fault, so by default the proxy removes the client's extension
offer and neither side compresses; with `--keep-extensions` a message fault that meets
a connection with an extension says it cannot act there, in the control API's answer,
the CLI, the event log and `--view`.

Real peers on 127.0.0.1: the reference server (built on websockets' `serve`, which
negotiates permessage-deflate when offered), the websockets client (it offers it by
default, as browsers and Node's `ws` do), a raw upstream that answers with an extension
nobody offered, the proxy in this loop or as its own process."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from proxy_support import (
    CLOSE,
    TEXT,
    RawUpstream,
    api,
    client_connect,
    collect,
    echo,
    encode_frame,
    fault_events,
    in_process_proxy,
    post_fault,
    until,
)
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from harness.checkers import proxy_fault_applied
from harness.events import Events
from harness.protocol import now_us
from harness.topology import ManagedProcess, reference_server, spawn

OFFER = "permessage-deflate; client_max_window_bits"  # what the websockets client sends
WAIT_S = 10.0  # generous: a condition normally holds within a second
COMPRESSED = "permessage-deflate negotiated: its messages are compressed"


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


def test_a_server_answering_with_an_extension_anyway_gets_message_faults_refused_with_why(run: Any) -> None:
    """The offer is removed before forwarding (the upstream sees none); an upstream that
    answers with permessage-deflate all the same gets a connection where message faults
    cannot act: the API answer, the event log and `--web`'s flow name the connection and
    why, for a live connection and for one opened later, and the messages pass untouched.
    A timed close reads no message, so it still acts there."""
    async def body() -> None:
        async with (RawUpstream(echo, headers="Sec-WebSocket-Extensions: permessage-deflate\r\n") as up,
                    in_process_proxy([f"ws://127.0.0.1:{up.port}"], web=("127.0.0.1", 0)) as px):
            offer = f"Sec-WebSocket-Extensions: {OFFER}\r\n"
            reader, writer = await client_connect(px.port, "/a", headers=offer)
            assert "sec-websocket-extensions" not in up.accepted[0]["headers"]
            relay = px.state.relays()[0]
            assert relay.extensions == ("permessage-deflate",)

            status, answer = await api(px, "POST", "/faults", {"type": "drop", "name": "drop-all"})
            assert status == 201
            (refused,) = answer["fault"]["not_applied"]
            assert (refused["session"], refused["seq"], refused["client_port"]) == (relay.flow_id, 1, relay.client_port)
            assert refused["why"].startswith(COMPRESSED) and refused["extensions"] == ["permessage-deflate"]
            writer.write(encode_frame(TEXT, b"still here", mask=True))
            tr = await collect(reader, 2, until=lambda t: len(t.frames) >= 1)
            assert tr.data() == [b"still here"] and not fault_events(px, "drop")

            _, writer2 = await client_connect(px.port, "/b", headers=offer)  # after the fault was added
            await until(lambda: len(px.state.faults["drop-all"].not_applied) == 2, WAIT_S, "the second refusal")
            logged = [e for e in px.events.since(0) if e["event"] == "fault_not_applied"]
            assert [(e["fault"], e["conn_seq"]) for e in logged] == [("drop-all", 1), ("drop-all", 2)]
            assert all(e["why"].startswith(COMPRESSED) for e in logged)
            status, listed = await api(px, "GET", "/faults/drop-all")
            assert [c["seq"] for c in listed["fault"]["not_applied"]] == [1, 2]
            status, conns = await api(px, "GET", "/connections")
            assert [c["extensions"] for c in conns["connections"]] == [["permessage-deflate"]] * 2
            notes = [f.comment for f in px.web.view if f.websocket is not None]  # --web's flows say it too
            assert len(notes) == 2 and all(f"FAULT drop-all (drop) cannot apply on this connection: {COMPRESSED}"
                                           in n for n in notes), notes

            status, answer = await api(px, "POST", "/faults", {"type": "close", "code": 4000, "after_s": 0.1,
                                                               "connections": {"client_port": relay.client_port}})
            assert status == 201 and "not_applied" not in answer["fault"]
            tr = await collect(reader, 3, stop_after_close=True)
            assert tr.frames[-1].opcode == CLOSE and tr.frames[-1].close_code == 4000
            for w in (writer, writer2):
                w.close()

    run(body(), 30)


def proxy_argv(upstream: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream,
            "--health-interval", "0", *extra]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=30)


def test_keep_extensions_with_a_deflate_pair_says_where_a_content_fault_cannot_apply(run: Any, tmp_path: Path) -> None:
    """`sendspin-proxy --keep-extensions --view` between the websockets client and the
    reference server: both negotiate permessage-deflate. `fault add drop --json-type
    server/time` from the CLI prints the API answer with the connection it cannot act on
    and says so on stderr; the event log has it, for a connection opened later too;
    `--view` shows the extension at the open and a `cannot apply` line for each; the
    replies the fault selects still arrive (nothing pretends it acted)."""
    with reference_server(tmp_path / "server") as server:
        async def body() -> str:
            px: ManagedProcess = await asyncio.to_thread(
                spawn, "proxy", proxy_argv(server.ready["url"], "--keep-extensions", "--view", "--log-dir",
                                           str(tmp_path / "proxy")), tmp_path / "proxy")
            out = px.stderr_path  # spawn() sends stdout there too
            ctl = px.ready["control"]["url"]
            try:
                async with ws_connect(px.ready["listen"]["url"] + "/sendspin") as ws:
                    assert extensions(ws) == ["permessage-deflate"]
                    await join(ws, "deflate-1")
                    r = await asyncio.to_thread(cli, "fault", "add", "drop", "--name", "drop-time", "--json-type",
                                                "server/time", "--direction", "downstream", "--control", ctl, "--json")
                    assert r.returncode == 0, r.stderr
                    (refused,) = json.loads(r.stdout)["fault"]["not_applied"]
                    assert refused["seq"] == 1 and refused["why"].startswith(COMPRESSED)
                    assert re.search(rf"drop-time cannot apply on connection #1 \(client port "
                                     rf"{refused['client_port']}\): {COMPRESSED}", r.stderr), r.stderr
                    sent, got = await time_sync(ws, 3)
                    assert got == sent  # the fault could not act, and said so
                    async with ws_connect(px.ready["listen"]["url"] + "/sendspin") as ws2:
                        await join(ws2, "deflate-2")
                        await until(lambda: "cannot apply on connection #2" in out.read_text(), WAIT_S,
                                    "the view's line for the later connection")
            finally:
                code = await asyncio.to_thread(px.stop)
                assert code == 0, out.read_text()
            return out.read_text()

        text = run(body(), 90)
    events = Events.load(tmp_path / "proxy")
    logged = events.select("fault_not_applied", fault="drop-time")
    assert [(e["conn_seq"], e["direction"], e["extensions"]) for e in logged] == [
        (1, "downstream", ["permessage-deflate"]), (2, "downstream", ["permessage-deflate"])]
    assert all(e["why"].startswith(COMPRESSED) for e in logged)
    assert not events.select("fault")
    gate = proxy_fault_applied(events, "drop")  # what a scenario's "fault injected" check makes of it
    assert not gate.ok and f"it could not act on 2 connection(s): {COMPRESSED}" in gate.summary, gate.summary
    assert [e["extensions"].split(";")[0] for e in events.select("relay")] == ["permessage-deflate"] * 2
    for n in (1, 2):
        assert re.search(rf"\+\+ +#{n} +open .* GET /sendspin \(extension permessage-deflate\)$", text, re.M), text
        assert re.search(rf"!! +#{n} s→c FAULT drop-time \(drop\) cannot apply on connection #{n}: {COMPRESSED}",
                         text), text
