"""Watching the traffic: `sendspin-proxy --view` (the live terminal view) and `--web`
(mitmweb's UI with the Sendspin content view and the relayed messages, bounded).

Real processes and sockets on 127.0.0.1: the reference server, the proxy as its own
process (spawned like any harness process, readiness file and all), the harness's probe
client as the Sendspin player, faults through the control API."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import re
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from mitmproxy.contentviews import Metadata, registry
from mitmproxy.test import tflow
from mitmproxy.websocket import WebSocketMessage
from proxy_support import in_process_proxy

from harness.probe import ProbeClient, ProbeConfig
from harness.protocol import encode_binary, now_us
from harness.protocol.wsframes import BINARY, CLOSE, CONT, PING, TEXT, encode_frame
from harness.topology import ManagedProcess, reference_server, spawn
from proxy.contentview import trim
from proxy.observe import MessageObserver, ObservedMessage
from proxy.view import LineWriter, LiveView

WAIT_S = 10.0  # generous: a condition normally holds within a second


def proxy_argv(upstream: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream,
            "--health-interval", "0", *extra]


async def until(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll `check` (plain or async) until it returns something true, and return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def add_fault(control: str, spec: dict[str, Any]) -> None:
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
                s.post(f"{control}/faults", json=spec) as r):
        assert r.status == 201, await r.text()


def player(url: str, name: str) -> ProbeClient:
    return ProbeClient(url + "/sendspin", ProbeConfig(name=name, roles=["player@v1", "artwork@v1"]))


async def stop(px: ManagedProcess) -> None:
    code = await asyncio.to_thread(px.stop)
    assert code == 0, px.stderr_path.read_text()


def test_view_prints_a_decoded_session_with_the_fault_and_the_close(run: Any, tmp_path: Path) -> None:
    """One probe player through `--view`: its handshake, the stream, the audio summed up
    per second, a fault highlighted, the close with both close codes. Output to a file,
    not a terminal: plain markers, no colour."""
    with reference_server(tmp_path / "server", "--artwork-bytes", "300000") as server:
        async def body() -> str:
            px = await asyncio.to_thread(spawn, "proxy", proxy_argv(server.ready["url"], "--view"), tmp_path)
            out = px.stderr_path  # spawn() sends stdout there too
            try:
                probe = player(px.ready["listen"]["url"], "probe-view")
                await probe.connect()
                try:
                    await until("an audio summary line", lambda: "player audio ×" in out.read_text())
                    await add_fault(px.ready["control"]["url"], {"type": "drop", "direction": "upstream",
                                                                 "json_type": "client/time", "count": 1})
                    await until("the fault line", lambda: "FAULT drop" in out.read_text())
                finally:
                    await probe.close()
                await until("the close line", lambda: "closed after" in out.read_text())
            finally:
                await stop(px)
            return out.read_text()

        text = run(body(), 60)
    lines = text.splitlines()

    def line(pattern: str) -> str:
        found = [ln for ln in lines if re.search(pattern, ln)]
        assert found, f"no line matches {pattern!r} in:\n{text}"
        return found[0]

    clock = r"^\d\d:\d\d:\d\d\.\d{3} "
    line(clock + r"\+\+ +#1 +open 127\.0\.0\.1:\d+ → ws://127\.0\.0\.1:\d+ GET /sendspin$")
    line(clock + r" +#1 c→s client/hello client_id=probe-view name=probe-view roles=player@v1,artwork@v1 "
                 r"formats=pcm/48000/16/2 buffer=1000000")
    line(r"#1 s→c server/hello server_id=\S+ .*connection_reason=playback roles=player@v1,artwork@v1")
    line(r"#1 s→c stream/start player=pcm/48000/16/2$")
    line(r"#1 s→c artwork ch0 type=8 ts=\d+\.\d{6} 29\d\.\d KiB \[3 fragments\]$")  # 256 KiB, the rest, empty FIN
    line(r"#1 c→s client/time client_transmitted=\d+$")  # the first one in full, later ones summed up
    line(r"#1 s→c player audio ×\d+ [\d.]+ KiB = \d\.\d{3} s of pcm/48000/16/2, ts \d+\.\d{6} … \d+\.\d{6}$")
    line(r"#1 c↔s time sync ×\d+, round trip proxy↔server [\d.]+ ms avg")
    line(clock + r"\*\* +-- +fault added: drop c→s json_type=client/time count=1$")
    line(clock + r"!! +#1 c→s FAULT drop client/time \d+ B$")
    line(r"#1 c→s client/goodbye reason=shutdown$")
    line(r'#1 s→c close 1000 "goodbye: shutdown"$')
    line(clock + r'-- +#1 +closed after [\d.]+ s; client: close 1000 "goodbye: shutdown", then FIN; '
                 r'server: close 1000 "goodbye: shutdown", then FIN; c→s \d+ msgs')
    assert "\x1b[" not in text  # no terminal: no colour
    assert len([ln for ln in lines if "player audio" in ln]) < 10  # summed up, not one line per chunk


FAULT_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} !! +#\d+ (?:s→c|c→s) FAULT (?P<name>\S+)(?: \(\S+\))?"
                        r"(?: ×(?P<count>\d+) in \d+\.\d\d s)?")


def test_view_sums_up_a_fault_that_acts_on_every_message(run: Any, tmp_path: Path) -> None:
    """A slicer on every server→client message, through `--view`: of the hundreds of
    applications the view shows the first on its own line and then one summary a second;
    their counts add up to the `fault` events in the proxy's log, all shown before the
    connection's close line. A fault that acts once still gets its own line."""
    logs = tmp_path / "proxy"
    with reference_server(tmp_path / "server") as server:
        async def body() -> str:
            px = await asyncio.to_thread(spawn, "proxy", proxy_argv(server.ready["url"], "--view", "--log-dir",
                                                                    str(logs)), tmp_path)
            out = px.stderr_path  # spawn() sends stdout there too
            control = px.ready["control"]["url"]
            try:
                await add_fault(control, {"type": "slicer", "name": "slice", "frame_bytes": 1000})
                probe = player(px.ready["listen"]["url"], "probe-sliced")
                await probe.connect()
                try:
                    await until("120 audio chunks through the slicer", lambda: probe.audio_chunks >= 120, 30)
                    await add_fault(control, {"type": "drop", "name": "once", "direction": "upstream",
                                              "json_type": "client/time", "count": 1})
                    await until("the drop's line", lambda: "FAULT once (drop) client/time" in out.read_text())
                finally:
                    await probe.close()
                await until("the close line", lambda: "closed after" in out.read_text())
            finally:
                await stop(px)
            return out.read_text()

        text = run(body(), 90)
    lines = text.splitlines()
    events = [json.loads(ln) for ln in (logs / "proxy.jsonl").read_text().splitlines()]
    applied = [e for e in events if e["event"] == "fault" and e["fault"] == "slice"]
    shown = [(i, m) for i, ln in enumerate(lines) if (m := FAULT_LINE.match(ln)) and m["name"] == "slice"]
    assert len(applied) >= 120 and len(shown) * 10 <= len(applied), (len(applied), text)
    assert sum(int(m["count"] or 1) for _, m in shown) == len(applied), text
    closed = next(i for i, ln in enumerate(lines) if "closed after" in ln)
    assert all(i < closed for i, _ in shown)  # the close flushed the last summary
    i, m = shown[0]  # the first application: on its own line (the server's first message)
    assert m["count"] is None and re.search(r"FAULT slice \(slicer\) server/hello \d+ B frames=1$", lines[i]), lines[i]
    summaries = [lines[i] for i, m in shown if m["count"]]
    assert summaries and all(re.search(r"FAULT slice \(slicer\) ×\d+ in \d+\.\d\d s: .*player audio ×\d+ "
                                       r"[\d.]+ KiB.* \(frames=\d+(–\d+)?\)$", ln) for ln in summaries), summaries
    assert re.search(r"FAULT once \(drop\) client/time \d+ B$", next(ln for ln in lines if "FAULT once" in ln))


class Lines:
    """A LineWriter without its thread: what the view wrote, at once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)

    def close(self, timeout: float = 2.0) -> None:
        pass


def test_view_sums_up_frequent_applications_and_never_hides_the_first() -> None:
    """The rules of the fault summary: a fault's first application has its line at once,
    and so has any after a quiet second; the rest are counted until the connection closes
    (or the next tick, or the fault's removal), a count of one is shown as the plain line;
    `--view all` shows every application."""
    t0 = now_us()

    def fault(view: LiveView, name: str, t_s: float, session: str = "f00d", **fields: Any) -> None:
        view.event({"event": "fault", "session": session, "fault": name, "type": name, "direction": "downstream",
                    "t_us": t0 + int(t_s * 1e6), **fields})

    def faults_shown(out: Lines) -> list[str]:
        return [ln.split(" FAULT ", 1)[1] for ln in out.lines if " FAULT " in ln]

    view, out = LiveView(io.StringIO(), color=False), Lines()
    view.writer = out  # type: ignore[assignment]
    for i in range(40):  # every 25 ms for a second
        fault(view, "slicer", i * 0.025, binary_type=4, size=4809, frames=5 + i % 2)
        assert faults_shown(out) == ["slicer player audio 4.7 KiB frames=5"]
    fault(view, "drop", 0.5, json_type="client/time", size=61)  # rare: at once, each time
    fault(view, "drop", 2.0, json_type="client/time", size=61)
    assert faults_shown(out)[1:] == ["drop client/time 61 B"] * 2
    view.event({"event": "close", "session": "f00d", "seconds": 2.5})
    assert faults_shown(out)[3:] == ["slicer ×39 in 0.95 s: player audio ×39 183.2 KiB (frames=5–6)"]
    assert "closed after 2.5 s" in out.lines[-1]
    fault(view, "slicer", 3.0, session="beef", json_type="server/time", size=127, frames=1)  # a new connection
    fault(view, "slicer", 3.1, session="beef", json_type="server/time", size=127, frames=1)
    view.event({"event": "fault_removed", "fault": "slicer", "type": "slicer", "why": "removed", "applied": 42})
    assert faults_shown(out)[4:] == ["slicer server/time 127 B frames=1"] * 2  # a tally of one: the plain line
    assert out.lines[-1].endswith("fault removed: slicer (slicer; removed, applied 42×)")

    every, out = LiveView(io.StringIO(), color=False, every_message=True), Lines()
    every.writer = out  # type: ignore[assignment]
    for i in range(3):
        fault(every, "slicer", i * 0.025, binary_type=4, size=4809, frames=5)
    assert faults_shown(out) == ["slicer player audio 4.7 KiB frames=5"] * 3


def _png(width: int, height: int, size: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return head + bytes(size - len(head))


def test_content_view_decodes_sendspin_messages() -> None:
    """The "Sendspin" content view is chosen automatically for Sendspin messages and
    decodes a binary audio chunk (with the format of the flow's stream/start), a trimmed
    artwork image and JSON (valid or not)."""
    flow = tflow.twebsocketflow(messages=False)
    assert flow.websocket is not None
    start = WebSocketMessage(TEXT, False, json.dumps({"type": "stream/start", "payload": {"player": {
        "codec": "pcm", "sample_rate": 48000, "channels": 2, "bit_depth": 16}}}).encode())
    chunk = WebSocketMessage(BINARY, False, encode_binary(4, 1_234_567_890, bytes(range(256)) * 7 + bytes(128)))
    image = encode_binary(8, 42, _png(640, 480, 200_000))
    art = WebSocketMessage(BINARY, False, trim(image[:65536], len(image)))
    hello = WebSocketMessage(TEXT, True, json.dumps({"type": "client/hello", "payload": {
        "client_id": "c1", "name": "kitchen", "version": 1, "supported_roles": ["player@v1"],
        "player@v1_support": {"supported_formats": [{"codec": "pcm", "channels": 2, "sample_rate": 48000,
                                                     "bit_depth": 16}],
                              "buffer_capacity": 100000, "supported_commands": ["volume"]}}}).encode())
    bad = WebSocketMessage(TEXT, True, b'{"type": "client/hello", "payload": {"client_id": "c1"}}')
    flow.websocket.messages = [hello, start, chunk, art, bad]

    def show(msg: WebSocketMessage) -> str:
        md = Metadata(flow=flow, websocket_message=msg)
        view = registry.get_view(msg.content, md)  # "auto": the highest priority wins
        assert view.name == "Sendspin"
        return view.prettify(msg.content, md)

    text = show(chunk)
    assert text.splitlines()[:7] == [
        "# Sendspin binary: player audio (server → client)",
        "type:      4 (role player, slot 0)",
        "timestamp: 1234567890 µs (1234.567890 s)",
        "payload:   1920 bytes (1.9 KiB)",
        "format:    pcm/48000/16/2 (codec/rate/bits/channels, from the last stream/start)",
        "frames:    480 = 10.000 ms",
        "# payload, first 256 bytes:"]
    assert "# 00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f" in text
    text = show(art)
    assert "# Sendspin binary: artwork ch0" in text and "payload:   200000 bytes" in text
    assert "kept:      the first 65527 payload bytes (trimmed by sendspin-proxy)" in text
    assert "image:     PNG 640×480" in text
    text = show(hello)
    assert text.startswith("# Sendspin client/hello (client → server)\n# client_id=c1 name=kitchen roles=player@v1 "
                           "formats=pcm/48000/16/2 buffer=100000\n# valid (legacy schema)\n{")
    assert json.loads(text.split("\n", 3)[3]) == json.loads(hello.content)
    assert "# INVALID: client/hello.payload.name: required field is missing" in show(bad)
    # not Sendspin: the view steps back
    other = WebSocketMessage(TEXT, True, b'{"hello": "world"}')
    assert registry.get_view(other.content, Metadata(flow=flow, websocket_message=other)).name != "Sendspin"


def test_web_serves_mitmweb_with_the_messages_of_each_flow_bounded(run: Any, tmp_path: Path) -> None:
    """`--web`: mitmweb's page and API on the same embedded proxy; the relayed messages
    appear in the WebSocket flow, decoded by the Sendspin view, at most --web-messages of
    them (the first ones, the handshake, stay), with faults noted and the close recorded."""
    limit = 40
    with reference_server(tmp_path / "server") as server:
        async def body() -> None:
            px = await asyncio.to_thread(spawn, "proxy", proxy_argv(server.ready["url"], "--web", "127.0.0.1:0",
                                                                    "--web-messages", str(limit)), tmp_path)
            try:
                url = urlsplit(px.ready["web"]["url"])
                base, token = f"{url.scheme}://{url.netloc}", parse_qs(url.query)["token"][0]
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                    async def get(path: str) -> Any:
                        async with s.get(base + path, params={"token": token}) as r:
                            assert r.status == 200, (path, r.status)
                            return await (r.json() if r.content_type == "application/json" else r.text())

                    assert "<title>mitmproxy</title>" in await get("/")
                    assert "sendspin" in (await get("/state"))["contentViews"]
                    # the status bar's address: the port really bound, not mitmweb's 8080 for 0
                    assert (await get("/options"))["listen_port"]["value"] == px.ready["listen"]["port"]
                    async with s.get(base + "/flows") as r:
                        assert r.status == 403  # the token is needed

                    async def ws_flow(when: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
                        """The WebSocket flow, once `when(flow)` holds."""
                        found = [f for f in await get("/flows") if f.get("websocket") and when(f)]
                        return found[0] if found else None

                    probe = player(px.ready["listen"]["url"], "probe-web")
                    await probe.connect()
                    try:
                        # far more messages than the limit pass (audio every 25 ms, time every 100 ms)
                        await until("150 audio chunks at the probe", lambda: probe.audio_chunks >= 150)
                        await add_fault(px.ready["control"]["url"], {"type": "drop", "direction": "upstream",
                                                                     "json_type": "client/time", "count": 1})
                        flow = await until("the fault noted in the flow",
                                           lambda: ws_flow(lambda f: "FAULT" in f["comment"]))
                        assert "FAULT c→s drop client/time" in flow["comment"], flow
                        assert flow["marked"] == "\u26a0"  # mitmproxy shows :warning: as the plain sign
                        count = flow["websocket"]["messages_meta"]["count"]
                        # a full flow is cut to 3/4 of the limit; a stream-chunk cut right after
                        # takes up to a quarter of the chunk quota more (proxy/web.py)
                        quota = limit // 4
                        kept = range(limit * 3 // 4 - (quota - quota * 3 // 4), limit + 1)
                        assert count in kept
                        msgs = await get(f"/flows/{flow['id']}/messages/content/auto.json")
                        assert len(msgs) in kept  # not == count: the stream goes on, a cut may come between
                        assert {m["view_name"] for m in msgs} == {"Sendspin"}
                        texts = [m["text"] for m in msgs]
                        assert texts[0].startswith("# Sendspin client/hello (client → server)\n# client_id=probe-web")
                        assert any(t.startswith("# Sendspin server/hello (server → client)") for t in texts[:5])
                        assert any(t.startswith("# Sendspin stream/start") for t in texts[:10])
                        audio = [t for t in texts[10:] if t.startswith("# Sendspin binary: player audio")]
                        assert 0 < len(audio) <= limit // 4, len(audio)
                        assert "format:    pcm/48000/16/2" in audio[-1] and "frames:" in audio[-1]
                        assert any("# Sendspin client/time" in t for t in texts[10:])  # recent control messages
                    finally:
                        await probe.close()
                    flow = await until("the close in the flow",
                                       lambda: ws_flow(lambda f: f["websocket"]["timestamp_end"] is not None))
                    assert (flow["websocket"]["close_code"], flow["websocket"]["closed_by_client"]) == (1000, False)
                    assert "closed after" in flow["comment"]
            finally:
                await stop(px)

        run(body(), 60)


def test_observer_reads_masked_fragmented_and_deflated_messages_in_any_chunking() -> None:
    """What `--view`/`--web` see does not depend on how the bytes arrive: masked client
    frames (the key rotates across reads), fragments with a ping between them, a message
    compressed with permessage-deflate (context kept from the previous one), a close."""
    text = json.dumps({"type": "client/time", "payload": {"client_transmitted": 123}}).encode()
    audio = encode_binary(4, 77, bytes(range(256)) * 40)
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)

    def deflate(data: bytes) -> bytes:  # RFC 7692: sync flush, the 4-byte tail removed
        out = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4]

    first, second = deflate(text), deflate(text)  # the second refers back to the first
    wire = b"".join([
        encode_frame(TEXT, text, mask=True),
        encode_frame(BINARY, audio[:1000], fin=False, mask=True),
        encode_frame(PING, b"between", mask=True),
        encode_frame(CONT, audio[1000:], mask=True),
        encode_frame(TEXT, first, mask=True, rsv=0x40),
        encode_frame(TEXT, second[:3], fin=False, mask=True, rsv=0x40),
        encode_frame(CONT, second[3:], mask=True),
        encode_frame(CLOSE, struct.pack("!H", 1000) + b"bye", mask=True),
    ])
    for chunk in (1, 7, 4096, len(wire)):
        seen: list[ObservedMessage] = []
        obs = MessageObserver("upstream", seen.append, capture_text=1024, capture_binary=16)
        for i in range(0, len(wire), chunk):
            obs(memoryview(wire)[i:i + chunk])
        assert not obs.broken and obs.unfinished() is None
        got = [(m.opcode, m.head, m.plain_size, m.fragments, m.compressed) for m in seen]
        assert got == [(TEXT, text, len(text), 1, False),
                       (PING, b"between", 7, 0, False),
                       (BINARY, audio[:16], len(audio), 2, False),
                       (TEXT, text, len(text), 1, True),
                       (TEXT, text, len(text), 2, True),
                       (CLOSE, struct.pack("!H", 1000) + b"bye", 5, 0, False)], chunk
        assert seen[-1].close_code == 1000 and seen[-1].close_reason == "bye"
        assert seen[2].truncated and not seen[0].truncated


def test_web_history_stays_bounded_over_many_sessions(run: Any, tmp_path: Path) -> None:
    """Long use of --web: per flow at most N messages, all flows together at most the byte
    budget (big artwork is kept as its first 64 KiB only), at most `max_flows` finished
    flows in mitmweb's list; the byte count the recorder keeps matches what the flows hold."""
    with reference_server(tmp_path, "--artwork-bytes", "1000000") as server:
        async def body() -> None:
            async with in_process_proxy([server.ready["url"]], web=("127.0.0.1", 0), web_max_messages=20) as px:
                web = px.web
                web.budget_bytes, web.max_flows = 300_000, 4
                for i in range(6):
                    probe = player(px.url, f"probe-{i}")
                    await probe.connect()
                    try:
                        await until("audio", lambda p=probe: p.audio_chunks >= 30 and p.artwork)
                    finally:
                        await probe.close()
                    await until("the relay's end", lambda: not px.state.live)
                flows = list(web.view)
                assert len(flows) <= web.max_flows and web.view.store_count() <= web.max_flows
                held = [len(m.content) for f in flows for m in f.websocket.messages]
                assert sum(held) == web.content_bytes <= web.budget_bytes
                assert max(held) <= 64 * 1024 + 100  # the first 64 KiB and the trim marker
                assert all(len(f.websocket.messages) <= 20 for f in flows)
                assert all(f.websocket.close_code == 1000 for f in flows)

        run(body(), 60)


def test_view_highlights_with_colour_only_on_a_terminal() -> None:
    """A fault line: red with its `!!` marker for a terminal, the bare marker otherwise."""
    record = {"event": "fault", "session": "f00d", "fault": "drop", "type": "drop", "direction": "downstream",
              "binary_type": 4, "size": 4809}
    for color in (True, False):
        out = io.StringIO()
        view = LiveView(out, color=color)
        view.writer = LineWriter(out)  # start() without its ticker: no loop needed for one line
        view.event(record)
        view.close()
        text = out.getvalue()
        plain = re.sub(r"\x1b\[[\d;]*m", "", text)
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} !! f00d s→c FAULT drop player audio 4\.7 KiB\n", plain), text
        assert ("\x1b[1;31m!!" in text) is color and ("\x1b[" in text) is color
