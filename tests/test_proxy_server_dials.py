"""`sendspin-proxy --server-dials`: the spec's server-initiated connections through the proxy.

The Sendspin server dials the proxy, the proxy dials the listening client. Directions
keep their Sendspin meaning whoever dialled (`downstream` = server to client), and the
frames the proxy makes are masked towards the peer it dialled (RFC 6455 §5.3).

The first test runs real processes in both orientations: the reference server, the proxy
and the probe client (`--url`, or `--listen` with the server dialling through the proxy
with `POST /api/dial`). The others use raw peers and the in-process proxy.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from proxy_support import BINARY, CLOSE, TEXT, RawUpstream, api, client_connect, collect, encode_frame, in_process_proxy

from harness.events import Events
from harness.fault_proxy import FaultProxy, fault_proxy
from harness.topology import Child, await_ready_file, reference_server, spawn_child

ROOT = Path(__file__).resolve().parent.parent
SETTLE_S = 1.0  # messages this close to the end may still have been in flight when the session ended


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def probe(tmp_path: Path, *where: str) -> Child:
    argv = [sys.executable, "-m", "harness.probe", *where, "--client-id", "dir-1",
            "--log", str(tmp_path / "probe.jsonl"), "--ready-file", str(tmp_path / "probe.ready.json")]
    return spawn_child("probe", argv, tmp_path / "probe.out", cwd=ROOT)


async def time_replies(directory: Path, count: int, timeout: float) -> None:
    """Until the probe's log (in `directory`) shows `count` server/time replies."""
    async with asyncio.timeout(timeout):
        while len(Events.load(directory).select("recv", type="server/time")) < count:
            await asyncio.sleep(0.05)


async def retired(px: FaultProxy, names: set[str], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not names <= {e["fault"] for e in (await px.acall("GET", "/events?event=fault_removed"))["events"]}:
            await asyncio.sleep(0.05)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dialler", ["client", "server"])
def test_a_downstream_fault_hits_server_to_client_messages_whoever_dials(run: Any, tmp_path: Path,
                                                                         dialler: str) -> None:
    """A drop `downstream` of server/time and a drop `upstream` of client/time, with the
    client dialling (normal) and with the server dialling the listening client through
    `--server-dials`: each acts on its Sendspin direction, the wire log says so, and the
    peers see it (the probe misses exactly two replies, the server two requests)."""
    port = free_port()
    with reference_server(tmp_path / "server") as server:
        upstream = server.ready["url"] if dialler == "client" else f"ws://127.0.0.1:{port}/sendspin"
        extra = ("--server-dials",) if dialler == "server" else ()
        with fault_proxy(tmp_path / "proxy", [upstream], "--wire-log", *extra) as process:
            px = FaultProxy(process)
            proxy_url = px.url + "/sendspin"
            where = ("--url", proxy_url) if dialler == "client" else ("--listen", f"127.0.0.1:{port}")
            cli = probe(tmp_path, *where)

            async def body() -> None:
                try:
                    await await_ready_file(cli, tmp_path / "probe.ready.json", 20)
                    if dialler == "server":  # listening now: the server dials it through the proxy
                        request = urllib.request.Request(f"{server.ready['http']}/api/dial?url={proxy_url}",
                                                         method="POST")
                        await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
                    await time_replies(tmp_path, 3, 20)
                    await px.add({"name": "down", "type": "drop", "direction": "downstream",
                                  "json_type": "server/time", "count": 2})
                    await px.add({"name": "up", "type": "drop", "direction": "upstream",
                                  "json_type": "client/time", "count": 2})
                    await retired(px, {"down", "up"}, 20)
                    await asyncio.sleep(SETTLE_S * 2)
                finally:
                    await cli.astop()  # one SIGTERM: a second one during its shutdown would kill it

            run(body(), 90)
    assert cli.returncode == 0, (tmp_path / "probe.out").read_text()
    ev = Events.load(tmp_path / "proxy")
    faults = {name: [(r["direction"], r["json_type"]) for r in ev.select("fault", fault=name)]
              for name in ("down", "up")}
    assert faults == {"down": [("downstream", "server/time")] * 2, "up": [("upstream", "client/time")] * 2}
    directions = {(r.get("type"), r["kind"]): r["direction"] for r in ev.select("wire") if r["kind"] != "close"}
    assert directions[("client/hello", "text")] == directions[("client/time", "text")] == "upstream", directions
    assert directions[("server/hello", "text")] == directions[("server/time", "text")] == "downstream", directions
    assert directions[("4", "binary")] == "downstream", directions  # player audio
    relay = ev.select("relay")[0]
    assert relay["upstream"] == 0

    client, served = Events.load(tmp_path), Events.load(tmp_path / "server")
    end = max(r["t_us"] for r in client.records) - SETTLE_S * 1e6
    sent = {r["client_transmitted"] for r in client.select("send", type="client/time") if r["t_us"] < end}
    read = {r["client_transmitted"] for r in served.select("recv", type="client/time")}
    replied = {r["client_transmitted"] for r in client.select("recv", type="server/time")}
    assert len(sent - read) == 2, "the server read all but the two client/time dropped upstream"
    assert len((read & sent) - replied) == 2, "the probe got a reply to all it was sent but the two dropped"
    if dialler == "server":
        assert served.select("accept", proc="server")[0]["dialled"] is True
        assert Events.load(tmp_path).select("accepted"), "the probe was dialled"


def test_frames_the_proxy_makes_are_masked_towards_the_peer_it_dialled(run: Any) -> None:
    """Normal: the proxy dials the server, so a duplicate going upstream is masked. With
    --server-dials the proxy dials the client: a duplicate going downstream (server to
    client) is masked, one going upstream is not; a close made by the proxy likewise."""
    async def listening_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               info: dict[str, Any]) -> None:
        """Plays the Sendspin client the proxy dialled: hello, then records everything."""
        writer.write(encode_frame(TEXT, json.dumps({"type": "client/hello", "payload": {}}).encode()))
        await writer.drain()
        info["trace"] = await collect(reader, 2, stop_after_close=True)

    async def body() -> None:
        async with RawUpstream(listening_client) as client, \
                in_process_proxy([f"ws://127.0.0.1:{client.port}"], server_dials=True) as px:
            px.state.add_fault(_fault({"type": "duplicate", "direction": "downstream", "json_type": "server/time"}))
            px.state.add_fault(_fault({"type": "duplicate", "direction": "upstream", "json_type": "client/hello"}))
            reader, writer = await client_connect(px.port, "/sendspin")  # the Sendspin server dials the proxy
            hello = await collect(reader, 2, until=lambda t: len(t.frames) >= 2)
            writer.write(encode_frame(TEXT, json.dumps({"type": "server/time", "payload": {}}).encode(), mask=True))
            await writer.drain()
            await asyncio.sleep(0.3)
            relay = px.state.relays()[0]
            relay.connection.close(4000, "proxy")
            got = await collect(reader, 2, stop_after_close=True)
            writer.close()
            await asyncio.sleep(0.3)
        trace = client.accepted[0]["trace"]
        # upstream (client to server): to the dialler, unmasked, the original and the duplicate
        assert [(f.opcode, f.masked) for f in hello.frames] == [(TEXT, False), (TEXT, False)], hello.frames
        assert [(f.opcode, f.masked) for f in got.frames] == [(CLOSE, False)], got.frames
        # downstream (server to client): to the peer the proxy dialled, masked, the duplicate too
        assert [(f.opcode, f.masked) for f in trace.frames] == [(TEXT, True), (TEXT, True), (CLOSE, True)], trace
        assert trace.frames[2].close_code == 4000
        directions = {(e["type"], e["direction"]) for e in px.events.since(0) if e["event"] == "fault"}
        assert directions == {("duplicate", "downstream"), ("duplicate", "upstream")}

    run(body(), 30)


def test_without_server_dials_the_upstream_gets_masked_frames_as_before(run: Any) -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        info["trace"] = await collect(reader, 1.5, until=lambda t: len(t.frames) >= 2)

    async def body() -> None:
        async with RawUpstream(server) as up, in_process_proxy([f"ws://127.0.0.1:{up.port}"]) as px:
            px.state.add_fault(_fault({"type": "duplicate", "direction": "upstream", "binary_type": 4}))
            _, writer = await client_connect(px.port, "/sendspin")
            writer.write(encode_frame(BINARY, struct.pack(">Bq", 4, 0) + b"x", mask=True))
            await writer.drain()
            await asyncio.sleep(0.5)
            writer.close()
        assert [(f.opcode, f.masked) for f in up.accepted[0]["trace"].frames] == [(BINARY, True)] * 2

    run(body(), 30)


def test_a_client_not_listening_yet_stays_in_the_pool(run: Any) -> None:
    """With --server-dials the upstream is a client under test: a dial that finds it not
    listening gets a 502, and the next dial, once it listens, goes through."""
    port = free_port()

    async def body() -> None:
        async with in_process_proxy([f"ws://127.0.0.1:{port}"], server_dials=True) as px:
            with pytest.raises(RuntimeError, match="502"):
                await client_connect(px.port, "/sendspin")
            assert px.state.upstreams[0].alive
            up = RawUpstream(lambda r, w, i: collect(r, 0.5))
            up.port = port
            async with up:
                _, writer = await client_connect(px.port, "/sendspin")
                writer.close()

    run(body(), 30)


def _fault(spec: dict[str, Any]) -> Any:
    from proxy.faults import build_fault

    return build_fault(spec)


def test_patch_upstream_url_points_new_connections_at_the_next_client(run: Any) -> None:
    """The gate gives each case's client a fresh listening port: PATCH /upstreams/0 {"url"}."""
    async def body() -> None:
        async with RawUpstream(lambda r, w, i: collect(r, 0.5)) as first, \
                RawUpstream(lambda r, w, i: collect(r, 0.5)) as second, \
                in_process_proxy([f"ws://127.0.0.1:{first.port}/sendspin"], server_dials=True) as px:
            _, writer = await client_connect(px.port, "/sendspin")
            writer.close()
            status, answer = await api(px, "PATCH", "/upstreams/0", {"url": f"ws://127.0.0.1:{second.port}/sendspin"})
            assert status == 200 and answer["upstream"]["port"] == second.port
            _, writer = await client_connect(px.port, "/sendspin")
            writer.close()
            assert (len(first.accepted), len(second.accepted)) == (1, 1)
            status, answer = await api(px, "PATCH", "/upstreams/0", {"url": "http://nohost"})
            assert status == 400 and "needs host and port" in answer["error"]

    run(body(), 30)
