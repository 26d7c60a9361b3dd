"""With no fault active the proxy is invisible: the same bytes (so the same message
boundaries, fragment sizes, masks, ordering, pings and close frames), and the same
endings (FIN for FIN, RST for RST, never a made-up close 1000). Real sockets on
127.0.0.1; raw peers where a WebSocket library would hide the difference."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import websockets
from proxy_support import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    TEXT,
    RawUpstream,
    client_connect,
    collect,
    echo,
    encode_frame,
    in_process_proxy,
    read_end,
    read_frame,
    rst,
)
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

from harness.probe import ProbeClient, ProbeConfig
from harness.protocol import EventLog
from harness.topology import reference_server
from proxy.faults import build_fault


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def frame_script(seed: int, mask: bool, total: int = 1_500_000) -> list[bytes]:
    """A mix of what can be on the wire: text and binary, single frames and odd
    fragmentations (empty fragments too), pings between fragments, sizes across the
    7/16/64-bit length encodings."""
    rng = random.Random(seed)
    out: list[bytes] = []
    size = 0
    while size < total:
        kind = rng.random()
        if kind < 0.15:
            out.append(encode_frame(PING, rng.randbytes(rng.randint(0, 125)), mask=mask))
        elif kind < 0.6:
            n = rng.choice([0, 1, 125, 126, 127, 65535, 65536, rng.randint(2, 300_000)])
            op = rng.choice([TEXT, BINARY])
            payload = b"t" * n if op == TEXT else rng.randbytes(n)
            out.append(encode_frame(op, payload, mask=mask))
        else:
            op = rng.choice([TEXT, BINARY])
            parts = [rng.randint(0, 70_000) for _ in range(rng.randint(2, 5))]
            for i, n in enumerate(parts):
                out.append(encode_frame(op if i == 0 else CONT, b"f" * n, fin=i == len(parts) - 1, mask=mask))
                if rng.random() < 0.3 and i < len(parts) - 1:  # a control frame between fragments is legal
                    out.append(encode_frame(PING, b"mid", mask=mask))
        size += len(out[-1])
    return out


def test_bytes_identical_both_ways_with_fragments_pings_and_masks(run: Any) -> None:
    """Every byte in each direction arrives unchanged: boundaries, fragment sizes,
    ordering, pings and even the client's mask keys are the sender's own."""
    down = b"".join(frame_script(1, mask=False))
    up = b"".join(frame_script(2, mask=True))
    got_up = bytearray()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        async def send() -> None:
            for i in range(0, len(down), 100_000):  # many writes, so segments fall anywhere
                writer.write(down[i:i + 100_000])
                await writer.drain()

        t = asyncio.create_task(send())
        while len(got_up) < len(up):
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            got_up.extend(chunk)
        await t

    async def body() -> None:
        async with RawUpstream(script) as upstream, in_process_proxy([f"ws://127.0.0.1:{upstream.port}"]) as px:
            reader, writer = await client_connect(px.port, "/sendspin")
            for i in range(0, len(up), 70_000):
                writer.write(up[i:i + 70_000])
            got_down = bytearray()
            async with asyncio.timeout(10):
                while len(got_down) < len(down):
                    chunk = await reader.read(1 << 20)
                    assert chunk, "proxy ended the stream early"
                    got_down.extend(chunk)
                while len(got_up) < len(up):
                    await asyncio.sleep(0.01)
            assert bytes(got_down) == down
            assert bytes(got_up) == up
            conns = px.state.relays()
            assert len(conns) == 1
            stats = conns[0].summary()
            assert stats["upstream"]["bytes"] == len(up) and stats["downstream"]["bytes"] == len(down)
            writer.close()

    run(body(), 30)


def test_fragment_forwarded_before_its_message_completes(run: Any) -> None:
    """A FIN=0 fragment reaches the client at once, not when the message completes
    (stock mitmproxy buffers the whole message)."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        writer.write(encode_frame(BINARY, b"a" * 1000, fin=False))
        await writer.drain()
        await asyncio.sleep(0.6)
        writer.write(encode_frame(CONT, b"b" * 10, fin=True))
        await writer.drain()
        await collect(reader, 3)

    async def body() -> None:
        async with RawUpstream(script) as upstream, in_process_proxy([f"ws://127.0.0.1:{upstream.port}"]) as px:
            reader, writer = await client_connect(px.port)
            t0 = time.monotonic()
            first = await asyncio.wait_for(read_frame(reader), 2)
            t_first = time.monotonic() - t0
            second = await asyncio.wait_for(read_frame(reader), 2)
            assert (first.fin, first.opcode, len(first.payload)) == (False, BINARY, 1000)
            assert (second.fin, second.opcode, len(second.payload)) == (True, CONT, 10)
            assert t_first < 0.3, f"first fragment took {t_first:.3f} s"
            writer.close()

    run(body(), 20)


def test_greeting_in_the_same_segment_as_the_101_is_delivered(run: Any) -> None:
    async def body() -> None:
        greeting = encode_frame(TEXT, b"hello-after-101")
        async with RawUpstream(echo, greeting=greeting) as upstream, \
                in_process_proxy([f"ws://127.0.0.1:{upstream.port}"]) as px:
            reader, writer = await client_connect(px.port)
            writer.write(encode_frame(TEXT, b"x" * 5000, mask=True))
            tr = await collect(reader, 2, until=lambda t: len(t.frames) >= 2)
            assert tr.data() == [b"hello-after-101", b"x" * 5000]
            writer.close()

    run(body(), 20)


def test_pings_pongs_and_close_codes_with_a_websocket_library(run: Any) -> None:
    """websockets on both ends: pings answered through the proxy, a server close code
    and reason reach the client, a client close code reaches the server."""
    seen: dict[str, Any] = {}

    async def handler(ws: ServerConnection) -> None:
        try:
            async for msg in ws:
                if msg == "close-me":
                    await ws.close(4001, "server says bye")
                    return
                await ws.send(msg)
        except websockets.ConnectionClosed:
            pass
        seen["server_rcvd"] = (ws.close_code, ws.close_reason)

    async def body() -> None:
        async with ws_serve(handler, "127.0.0.1", 0, compression=None) as srv:
            port = next(iter(srv.sockets)).getsockname()[1]
            async with in_process_proxy([f"ws://127.0.0.1:{port}"]) as px:
                async with ws_connect(px.url, compression=None) as c:
                    latency = await asyncio.wait_for(c.ping(b"p1"), 2)
                    assert await asyncio.wait_for(latency, 2) < 0.5
                    await c.send("close-me")
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await asyncio.wait_for(c.recv(), 2)
                    assert c.close_code == 4001 and c.close_reason == "server says bye"
                async with ws_connect(px.url, compression=None) as c:
                    await c.send("x")
                    assert await asyncio.wait_for(c.recv(), 2) == "x"
                    await c.close(4002, "client says bye")
                for _ in range(100):
                    if "server_rcvd" in seen:
                        break
                    await asyncio.sleep(0.02)
                assert seen["server_rcvd"] == (4002, "client says bye")
                await _wait_no_relays(px)
                close = [e for e in px.events.since(0) if e["event"] == "close"]
                assert close[0]["server"]["close_code"] == 4001 and close[1]["client"]["close_code"] == 4002

    run(body(), 20)


def test_close_handshake_is_the_peers_own(run: Any) -> None:
    """The client's close reply is the server's frame (stock mitmproxy answers itself)."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        tr = await collect(reader, 3, stop_after_close=True)
        if tr.close_codes() == [4001]:
            writer.write(encode_frame(CLOSE, b"\x0f\xa2upstream-reply"))  # 4002
            await writer.drain()

    async def body() -> None:
        async with RawUpstream(script) as upstream, in_process_proxy([f"ws://127.0.0.1:{upstream.port}"]) as px:
            reader, writer = await client_connect(px.port)
            writer.write(encode_frame(CLOSE, b"\x0f\xa1bye", mask=True))
            tr = await collect(reader, 2)
            assert [(f.close_code, f.close_reason) for f in tr.frames] == [(4002, "upstream-reply")]
            assert tr.end == "eof"
            writer.close()

    run(body(), 20)


def test_abnormal_ends_stay_abnormal(run: Any) -> None:
    """RST -> RST and EOF without a close frame -> EOF, both directions; never a 1000."""
    results: dict[str, str] = {}

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        p = info["path"]
        if p == "/server-rst":
            await asyncio.sleep(0.1)
            rst(writer)
        elif p == "/server-eof":
            await asyncio.sleep(0.1)
            writer.close()
        elif p.startswith("/see"):  # how does the client's end arrive here?
            tr = await collect(reader, 3)
            results[p] = f"{tr.close_codes() or ''}{tr.end}"

    async def body() -> None:
        async with RawUpstream(script) as upstream, in_process_proxy([f"ws://127.0.0.1:{upstream.port}"]) as px:
            for path, want in (("/server-rst", "rst"), ("/server-eof", "eof")):
                reader, writer = await client_connect(px.port, path)
                tr = await collect(reader, 2)
                assert (tr.frames, tr.end) == ([], want), (path, tr)
                writer.close()
            reader, writer = await client_connect(px.port, "/see-rst")
            await asyncio.sleep(0.1)
            rst(writer)
            reader, writer = await client_connect(px.port, "/see-eof")
            await asyncio.sleep(0.1)
            writer.write_eof()
            for _ in range(150):
                if len(results) == 2:
                    break
                await asyncio.sleep(0.02)
            assert results == {"/see-rst": "rst", "/see-eof": "eof"}
            writer.close()
            await _wait_no_relays(px)
            ends = {e["path"]: None for e in px.events.since(0) if e["event"] == "relay"}
            closes = [e for e in px.events.since(0) if e["event"] == "close"]
            assert [c["server"]["ended"] for c in closes[:2]] == ["rst", "eof"]
            assert "close_code" not in closes[0]["client"] and ends

    run(body(), 20)


def test_half_close_keeps_the_other_direction_open(run: Any) -> None:
    """The client sends FIN; the server's later data still reaches it, then the server's FIN."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        assert await read_end(reader, 3) == "eof"
        writer.write(encode_frame(TEXT, b"after your FIN"))
        await writer.drain()
        writer.write_eof()

    async def body() -> None:
        async with RawUpstream(script) as upstream, in_process_proxy([f"ws://127.0.0.1:{upstream.port}"]) as px:
            reader, writer = await client_connect(px.port)
            writer.write_eof()
            tr = await collect(reader, 3)
            assert (tr.data(), tr.end) == ([b"after your FIN"], "eof")
            writer.close()
            await _wait_no_relays(px)

    run(body(), 20)


def test_directions_are_independent_a_non_reading_client_still_sends(run: Any) -> None:
    """The server floods a client that does not read; the client's messages still reach
    the server promptly (stock mitmproxy couples the directions in one drain lock)."""
    arrivals: list[float] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        async def flood() -> None:
            chunk = encode_frame(BINARY, b"f" * 65536)
            with contextlib.suppress(ConnectionError):
                for _ in range(2000):
                    writer.write(chunk)
                    await writer.drain()

        t = asyncio.create_task(flood())
        try:
            while True:
                f = await read_frame(reader)
                if f.opcode == TEXT:
                    arrivals.append(time.monotonic())
        finally:
            t.cancel()

    async def body() -> None:
        async with RawUpstream(script) as upstream, in_process_proxy([f"ws://127.0.0.1:{upstream.port}"]) as px:
            _reader, writer = await client_connect(px.port, limit=2**16, rcvbuf=16384)
            sent = []
            for i in range(6):
                sent.append(time.monotonic())
                writer.write(encode_frame(TEXT, f"m{i}".encode(), mask=True))
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)
            assert len(arrivals) == 6, f"{len(arrivals)}/6 client messages reached the server"
            assert max(a - s for a, s in zip(arrivals, sent, strict=True)) < 0.1
            held = px.state.relays()[0].pipes["downstream"].holds
            assert "write-buffer" in held  # the flood is held back at the proxy, with backpressure
            rst(writer)

    run(body(), 20)


def test_a_held_sender_meets_backpressure_within_the_proxys_socket_buffers(run: Any) -> None:
    """The server streams to a client that reads, then the proxy stops reading the server
    (slow_reader at 0 B/s): the server is blocked after a few hundred KiB (the proxy's
    fixed socket buffers; addons/sockets.py). End to end, with autotuned buffers a
    worker did not feel a slow_reader for over 20 s (NOTES.md §2; S02 proxy)."""
    written = [0]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        chunk = encode_frame(BINARY, b"f" * 65536)
        deadline = time.monotonic() + 10
        with contextlib.suppress(ConnectionError):
            while time.monotonic() < deadline:
                writer.write(chunk)
                await writer.drain()
                written[0] += len(chunk)

    async def body() -> None:
        async with RawUpstream(script) as upstream, in_process_proxy([f"ws://127.0.0.1:{upstream.port}"]) as px:
            reader, writer = await client_connect(px.port)

            async def drain_all() -> None:
                with contextlib.suppress(ConnectionError):
                    while await reader.read(1 << 20):
                        pass

            sink = asyncio.create_task(drain_all())
            await asyncio.sleep(0.5)  # full speed: the kernel autotunes the buffers it may
            px.state.add_fault(build_fault({"type": "slow_reader", "rate_bps": 0}))
            before = written[0]
            await asyncio.sleep(1.0)
            absorbed = written[0] - before
            assert absorbed < 1024 * 1024, f"the server wrote {absorbed} bytes into a proxy that reads nothing"
            assert px.state.relays()[0].tr["server"].get_extra_info("socket").getsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 128 * 1024  # Linux doubles what was set
            sink.cancel()
            rst(writer)

    run(body(), 20)


def test_probe_gets_watermark_audio_with_zero_gaps_through_the_proxy(run: Any, tmp_path: Path) -> None:
    async def body() -> None:
        server = await asyncio.to_thread(reference_server, tmp_path)
        log = EventLog(tmp_path / "probe-1.jsonl", "probe-1")
        try:
            upstream = f"ws://{server.ready['host']}:{server.ready['port']}"
            async with in_process_proxy([upstream], log_dir=tmp_path) as px:
                p = ProbeClient(f"{px.url}/sendspin", ProbeConfig(name="probe-1"), log)
                await p.connect()
                try:
                    async with asyncio.timeout(10):
                        while p.audio.samples < 48_000 * 2:
                            await asyncio.sleep(0.05)
                finally:
                    await p.close()
                a = p.audio
                assert (a.gaps, a.duplicates, a.reordered, a.corrupt) == (0, 0, 0, 0)
                assert a.samples >= 96_000
                await _wait_no_relays(px)
        finally:
            log.close()
            assert await asyncio.to_thread(server.stop) == 0
        events = [ln for ln in (tmp_path / "proxy.jsonl").read_text().splitlines() if '"event":"close"' in ln]
        assert events, "the proxy logged no close"

    run(body(), 40)


def test_nothing_left_behind(run: Any) -> None:
    """After many connections ended in every way: no relay, no mitmproxy connection,
    no task and no file descriptor left (the proxy itself is gone too)."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        if info["path"] == "/rst":
            rst(writer)
            return
        await echo(reader, writer, info)

    async def body() -> None:
        before = fds()
        tasks0 = len(asyncio.all_tasks())
        async with RawUpstream(script) as upstream, in_process_proxy([f"ws://127.0.0.1:{upstream.port}"]) as px:
            for i in range(12):
                reader, writer = await client_connect(px.port, "/rst" if i % 3 == 0 else "/echo")
                writer.write(encode_frame(TEXT, b"x", mask=True))
                if i % 3 == 1:
                    writer.write(encode_frame(CLOSE, b"\x03\xe8", mask=True))
                    await collect(reader, 2)
                elif i % 3 == 2:
                    rst(writer)
                    continue
                writer.close()
            await _wait_no_relays(px)
            ps = px.master.addons.get("proxyserver")
            for _ in range(100):
                if not ps.connections:
                    break
                await asyncio.sleep(0.02)
            assert not ps.connections
            # live connections at shutdown are closed too
            _, w_open = await client_connect(px.port, "/echo")
        await asyncio.sleep(0.1)
        assert len(asyncio.all_tasks()) <= tasks0
        w_open.close()
        await asyncio.sleep(0.05)
        assert fds() <= before, f"fds {before} -> {fds()}"

    run(body(), 30)


async def _wait_no_relays(px: Any, timeout: float = 3.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while px.state.relays():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"relays left: {[(r.path, r.summary()) for r in px.state.relays()]}") from None



def test_memory_stays_bounded_with_a_stalled_reader_and_a_long_stream(run: Any, tmp_path: Path) -> None:
    """The proxy process (RSS) holds no more than its socket buffers for a client that
    stops reading (the sender is held back), and nothing grows per message."""
    from harness.topology import spawn

    flood_bytes = 48 * 2**20
    pushed = [0]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        if info["path"] == "/flood":
            chunk = encode_frame(BINARY, b"f" * 65536)
            with contextlib.suppress(ConnectionError):
                while pushed[0] < flood_bytes:
                    writer.write(chunk)
                    await writer.drain()
                    pushed[0] += 65536
                await collect(reader, 5)
            return
        await echo(reader, writer, info)

    async def body() -> None:
        import sys

        async with RawUpstream(script) as up:
            argv = [sys.executable, "-m", "proxy", "--upstream", f"ws://127.0.0.1:{up.port}", "--health-interval", "0"]
            px = await asyncio.to_thread(spawn, "proxy", argv, tmp_path)
            try:
                port = px.ready["listen"]["port"]
                reader, writer = await client_connect(port, "/echo")  # warm up the code paths
                writer.write(encode_frame(BINARY, b"w" * 2**20, mask=True))
                await asyncio.wait_for(read_frame(reader), 5)
                base = px.rss_bytes()
                # 1. a client that reads nothing for a second while the server floods it
                # limit: our own StreamReader must not read ahead either (it pauses at 2 x limit)
                r2, w2 = await client_connect(port, "/flood", rcvbuf=32768, limit=65536)
                await asyncio.sleep(1.0)
                stalled_push, stalled_rss = pushed[0], px.rss_bytes()
                got = 0
                async with asyncio.timeout(15):
                    while got < flood_bytes:
                        got += len((await read_frame(r2)).payload)
                print(f"stalled: pushed {stalled_push / 2**20:.1f} MiB, RSS +{(stalled_rss - base) / 2**20:.1f} MiB")
                # kernel buffers on two loopback hops (≈4 MiB send + 6 MiB receive, + the last hop) hold the rest
                assert stalled_push < 20 * 2**20, f"the sender pushed {stalled_push >> 20} MiB into a stalled path"
                assert stalled_rss - base < 24 * 2**20, f"RSS grew {(stalled_rss - base) >> 20} MiB while stalled"
                w2.close()
                # 2. a long stream: 150 MiB of 1 MiB messages echoed
                msg = encode_frame(BINARY, b"m" * 2**20, mask=True)
                for _ in range(150):
                    writer.write(msg)
                    await asyncio.wait_for(read_frame(reader), 5)
                grown = px.rss_bytes() - base
                print(f"after 150 MiB of messages: RSS +{grown / 2**20:.1f} MiB")
                assert grown < 24 * 2**20, f"RSS grew {grown >> 20} MiB over 150 MiB of messages"
                writer.close()
            finally:
                assert await asyncio.to_thread(px.stop) == 0

    run(body(), 60)
