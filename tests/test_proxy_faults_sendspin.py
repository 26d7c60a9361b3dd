"""Sendspin faults: stalled_payload, orphan_header, slow_reader, on the wire and against
the reference server with probe clients (what a correct peer does with the fault).

All through the in-process proxy (real mitmproxy, real sockets on 127.0.0.1); faults are
added and removed through the control API, as a scenario or a person would; after each,
`POST /reset` (or removal) and a check that the proxy is transparent again. Helpers:
proxy_support.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from proxy_support import (
    BINARY,
    CONT,
    STREAM,
    TEXT,
    Drain,
    Flood,
    KiB,
    MiB,
    Recorder,
    Trace,
    api,
    audio,
    client_connect,
    collect,
    desc,
    encode_frame,
    fault_events,
    in_process_proxy,
    jmsg,
    post_fault,
    read_frame,
    reset_and_check_transparent,
    routed_proxy,
    sender,
    until,
)
from websockets.exceptions import ConnectionClosedError

from harness.checkers import rejected, require
from harness.probe import ProbeConfig
from harness.protocol import closecodes, now_us
from harness.protocol import messages as m
from harness.scenario import Scenario
from proxy.faults import build_fault

# --- stalled_payload ---------------------------------------------------------------------------------


def test_stalled_payload_fin0_fragment_then_resumed_intact_other_direction_flows(run: Any) -> None:
    rec = Recorder()

    async def body() -> None:
        async with routed_proxy({"/rec": rec}) as px:
            await post_fault(px, {"type": "stalled_payload", "min_size": 3000, "head_bytes": 100, "stall_s": 0.5})
            reader, writer = await client_connect(px.port, "/rec")
            t0 = time.monotonic()
            writer.write(encode_frame(BINARY, b"B" * 5000, mask=True) + encode_frame(TEXT, b"after", mask=True))
            first = await asyncio.wait_for(read_frame(reader), 2)
            assert desc([first]) == [(0, BINARY, 100)] and time.monotonic() - t0 < 0.3
            writer.write(encode_frame(TEXT, b"during", mask=True))  # the other direction is not stalled
            await until(lambda: b"during" in rec.payloads(), 0.3, "the upstream to get a message mid-stall")
            pipe = px.state.relays()[0].pipes["downstream"]
            assert "stall:stalled_payload" in pipe.holds  # the stalled sender is held too
            tr = await collect(reader, 2, until=lambda t: len(t.frames) >= 3)
            assert time.monotonic() - t0 >= 0.45
            assert desc(tr.frames) == [(1, CONT, 4900), (1, TEXT, 5), (1, TEXT, 6)]
            assert first.payload + tr.frames[0].payload == b"B" * 5000
            ev = fault_events(px, "stalled_payload")
            assert len(ev) == 1 and ev[0]["sent_bytes"] == 100 and ev[0]["stall_s"] == 0.5
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


def test_stalled_payload_forever_until_reset_then_the_rest_arrives(run: Any) -> None:
    async def body() -> None:
        async with routed_proxy() as px:
            await post_fault(px, {"type": "stalled_payload", "binary_type": 4, "head_bytes": 9})
            reader, writer = await client_connect(px.port, "/echo")
            writer.write(encode_frame(BINARY, audio(7), mask=True) + encode_frame(TEXT, b"after", mask=True))
            tr = await collect(reader, 0.8)
            assert desc(tr.frames) == [(0, BINARY, 9)] and tr.end == "timeout"  # and nothing else, still open
            t0 = time.monotonic()
            status, body = await api(px, "POST", "/reset")
            assert status == 200 and body["removed"] == ["stalled_payload"]
            tr2 = await collect(reader, 2, until=lambda t: len(t.frames) >= 2)
            assert desc(tr2.frames) == [(1, CONT, 1000), (1, TEXT, 5)] and time.monotonic() - t0 < 0.5
            assert tr.frames[0].payload + tr2.frames[0].payload == audio(7)
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


def test_stalled_payload_at_byte_level_withholds_the_rest_of_a_frame(run: Any) -> None:
    async def body() -> None:
        async with routed_proxy() as px:
            await post_fault(px, {"type": "stalled_payload", "mode": "bytes", "min_size": 3000, "head_bytes": 50,
                           "stall_s": 0.4})
            reader, writer = await client_connect(px.port, "/echo")
            t0 = time.monotonic()
            writer.write(encode_frame(BINARY, b"B" * 5000, mask=True))
            head = b""
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    while True:
                        head += await reader.read(65536)
            assert len(head) == 50  # 4 header bytes + 46 payload bytes, then nothing
            rest = await asyncio.wait_for(reader.readexactly(5004 - 50), 2)
            assert time.monotonic() - t0 >= 0.38
            assert head + rest == encode_frame(BINARY, b"B" * 5000)  # intact: one whole frame
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


# --- orphan_header ---------------------------------------------------------------------------------


def test_orphan_header_binary_keeps_only_the_header_or_less(run: Any) -> None:
    art = encode_frame(BINARY, audio(5, 200, btype=8))

    async def body() -> None:
        async with routed_proxy({"/s": sender([*STREAM, art])}) as px:
            await post_fault(px, {"type": "orphan_header", "binary_type": 4, "count": 1})  # variant binary, 9 bytes
            await post_fault(px, {"type": "orphan_header", "name": "cut", "binary_type": 8, "keep_bytes": 3})
            reader, writer = await client_connect(px.port, "/s")
            writer.write(encode_frame(TEXT, b"go", mask=True))
            tr = await collect(reader, 2, until=lambda t: len(t.frames) >= 5)
            assert desc(tr.frames) == [(1, BINARY, 9), (1, BINARY, 1009), (1, BINARY, 1009),
                                       (1, TEXT, len(jmsg("server/state"))), (1, BINARY, 3)]
            assert tr.frames[0].payload == audio(0)[:9] and tr.frames[4].payload == audio(5, 200, btype=8)[:3]
            assert [(e["fault"], e["kept"]) for e in fault_events(px, "orphan_header")] == [("orphan_header", 9),
                                                                                            ("cut", 3)]
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


def test_orphan_header_fragment_three_endings_on_the_wire_and_in_a_real_client(run: Any) -> None:
    """A 5000-byte binary message opened with a 2500-byte FIN=0 fragment, its rest dropped;
    0.3 s later the next message, a JSON text, does what `fragment_end` says."""
    big, nxt = b"A" * 2500 + b"Z" * 2500, jmsg("server/state", n=1)
    script = sender([encode_frame(BINARY, big), encode_frame(TEXT, nxt)], gap_s=0.3)

    async def raw(px: Any) -> tuple[Trace, list[float]]:
        reader, writer = await client_connect(px.port, "/frag")
        t0 = time.monotonic()
        writer.write(encode_frame(TEXT, b"go", mask=True))
        tr, times = Trace(), []
        with contextlib.suppress(TimeoutError):
            while True:
                tr.frames.append(await asyncio.wait_for(read_frame(reader), 0.7))
                times.append(time.monotonic() - t0)
        writer.close()
        return tr, times

    async def real_client(px: Any) -> list[Any]:
        got: list[Any] = []
        async with websockets.connect(f"ws://127.0.0.1:{px.port}/frag", compression=None, open_timeout=5,
                                      close_timeout=1) as ws:
            await ws.send("go")
            with contextlib.suppress(TimeoutError):
                while True:
                    got.append(await asyncio.wait_for(ws.recv(), 0.8))
        return got

    async def body() -> None:
        async with routed_proxy({"/frag": script}) as px:
            # none: the next message arrives as a new message inside the open one
            await post_fault(px, {"type": "orphan_header", "variant": "fragment"})
            tr, times = await raw(px)
            assert desc(tr.frames) == [(0, BINARY, 2500), (1, TEXT, len(nxt))], tr.frames
            assert tr.frames[0].payload == b"A" * 2500 and times[1] - times[0] >= 0.25
            with pytest.raises(ConnectionClosedError) as e:  # a correct receiver fails the connection
                await real_client(px)
            assert e.value.sent is not None and e.value.sent.code == 1002, e.value
            ev = fault_events(px, "orphan_header")
            assert ev[0]["closed_by"] == "none" and ev[0]["dropped_bytes"] == 2500 and ev[0]["next_index"] == 1
            # empty_fin: the stream stays valid, the orphan arrives as a short message
            await reset_and_check_transparent(px)
            await post_fault(px, {"type": "orphan_header", "variant": "fragment", "fragment_end": "empty_fin"})
            tr, _ = await raw(px)
            assert desc(tr.frames) == [(0, BINARY, 2500), (1, CONT, 0), (1, TEXT, len(nxt))]
            assert await real_client(px) == [b"A" * 2500, nxt.decode()]
            # splice: the next message's bytes become the missing continuation
            await reset_and_check_transparent(px)
            await post_fault(px, {"type": "orphan_header", "variant": "fragment", "fragment_end": "splice",
                           "head_bytes": 100})
            tr, _ = await raw(px)
            assert desc(tr.frames) == [(0, BINARY, 100), (1, CONT, len(nxt))]
            assert await real_client(px) == [b"A" * 100 + nxt]  # one message; the JSON never arrives as such
            await reset_and_check_transparent(px)

    run(body(), 40)


def test_orphan_header_fragment_removed_while_open_closes_the_sequence(run: Any) -> None:
    script = sender([encode_frame(BINARY, b"Q" * 4000), encode_frame(TEXT, jmsg("late"))], gap_s=5)

    async def body() -> None:
        async with routed_proxy({"/frag": script}) as px:
            await post_fault(px, {"type": "orphan_header", "variant": "fragment", "name": "open"})
            reader, writer = await client_connect(px.port, "/frag")
            writer.write(encode_frame(TEXT, b"go", mask=True))
            first = await asyncio.wait_for(read_frame(reader), 2)
            assert desc([first]) == [(0, BINARY, 2000)]
            status, _ = await api(px, "DELETE", "/faults/open")
            assert status == 200
            tr = await collect(reader, 1, until=lambda t: bool(t.frames))
            assert desc(tr.frames) == [(1, CONT, 0)]  # the stream is valid again at once
            assert fault_events(px, "orphan_header")[0]["closed_by"] == "removed"
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


def test_orphan_header_announce_drops_the_data_after_stream_start(run: Any) -> None:
    start, state = jmsg("stream/start", player={"codec": "pcm"}), jmsg("server/state")
    art = audio(9, 100, btype=8)
    frames = [encode_frame(TEXT, start), *(encode_frame(BINARY, audio(i)) for i in range(3)),
              encode_frame(BINARY, art), encode_frame(TEXT, state), encode_frame(BINARY, audio(3))]

    async def got(px: Any) -> list[bytes]:
        reader, writer = await client_connect(px.port, "/s")
        writer.write(encode_frame(TEXT, b"go", mask=True))
        tr = await collect(reader, 0.6)
        writer.close()
        return tr.data()

    async def body() -> None:
        async with routed_proxy({"/s": sender(frames)}) as px:
            await post_fault(px, {"type": "orphan_header", "variant": "announce"})  # the first binary after it
            assert await got(px) == [start, audio(1), audio(2), art, state, audio(3)]
            await reset_and_check_transparent(px)
            await post_fault(px, {"type": "orphan_header", "variant": "announce", "binaries": None})
            assert await got(px) == [start, state, audio(3)]  # the next JSON instead of any data
            await reset_and_check_transparent(px)
            await post_fault(px, {"type": "orphan_header", "variant": "announce", "data_type": 8})
            assert await got(px) == [start, audio(0), audio(1), audio(2), state, audio(3)]
            ev = fault_events(px, "orphan_header")
            assert [e["dropped"] for e in ev] == [[1], [1, 2, 3, 4], [4]]
            assert all(e["json_type"] == "stream/start" for e in ev)
            await reset_and_check_transparent(px)

    run(body(), 30)


# --- against the reference server: what a correct peer does with the fault ----------------------------


def test_reference_server_rejects_a_proxy_made_orphan_upload_and_closes_a_stall_with_4002(
        run: Any, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--payload-timeout", "0.5")
            async with in_process_proxy([server.ready["url"]]) as px:
                url = f"ws://127.0.0.1:{px.port}/sendspin"
                # (c) upstream: the probe sends a complete upload; the proxy drops its payload
                await post_fault(px, {"type": "orphan_header", "variant": "announce", "direction": "upstream",
                               "data_type": m.UPLOAD_BINARY_TYPE})
                up = await sc.probe(url, ProbeConfig(name="uploader", time_interval_s=None))
                t = now_us()
                up.send_upload(b"u" * 5000, upload_id="lost")
                sent = up.send_time()
                await up.wait_for(lambda x: isinstance(x, m.ServerTime) and x.client_transmitted == sent, 3)
                await until(lambda: bool(up.errors), 3, "the server's _harness/error for the orphan")
                assert fault_events(px, "orphan_header")[0]["json_type"] == "_harness/upload"
                await reset_and_check_sendspin(px, up)
                # stalled payload upstream, forever: the server times the message out and closes 4002
                await post_fault(px, {"type": "stalled_payload", "direction": "upstream", "json_type": "client/time",
                               "head_bytes": 10, "count": 1})
                staller = await sc.probe(url, ProbeConfig(name="staller", time_interval_s=None))
                stalled_at = now_us()
                staller.send_time()
                await asyncio.wait_for(staller.closed.wait(), 5)
                assert staller.close_code == closecodes.STALLED_PAYLOAD, (staller.close_code, staller.close_reason)
                assert now_us() - stalled_at < 4_500_000
                sent = up.send_time()  # the other session is untouched
                await up.wait_for(lambda x: isinstance(x, m.ServerTime) and x.client_transmitted == sent, 3)
                await until(lambda: len(px.state.relays()) == 1, 5, "the stalled session's relay to end")
                await reset_and_check_sendspin(px, up)
                await sc.close_probes()
            events = sc.events()
            require(rejected(events, "uploader", "orphan header", after_us=t),
                    rejected(events, "staller", "stalled payload", after_us=stalled_at))

    run(body(), 40)


async def reset_and_check_sendspin(px: Any, p: Any) -> None:
    """POST /reset, then a real upload round-trips byte-identical through the proxy."""
    status, _ = await api(px, "POST", "/reset")
    assert status == 200 and not px.state.faults
    for relay in px.state.relays():
        for pipe in relay.pipes.values():
            assert not pipe.faults and not pipe.withholding, pipe.stats()
    data = bytes(range(256)) * 300
    p.send_upload(data, upload_id=f"good-{now_us()}")
    result = await p.wait_type(m.HarnessUploadResult, 3)
    assert result.sha256 == hashlib.sha256(data).hexdigest() and result.size == len(data)

# --- slow_reader ---------------------------------------------------------------------------------------

def test_slow_reader_backpressures_the_sender_with_bounded_memory_and_other_direction_free(run: Any) -> None:
    flood = Flood()
    rate = 256 * KiB

    async def body() -> None:
        async with routed_proxy({"/flood": flood}) as px:
            f = build_fault({"type": "slow_reader", "rate_bps": rate, "rcvbuf_bytes": 64 * KiB})
            status, _ = await api(px, "POST", "/faults", f.spec())
            assert status == 201
            reader, writer = await client_connect(px.port, "/flood")
            drain = Drain(reader)
            fault = px.state.faults["slow_reader"]
            await until(lambda: bool(px.state.relays()), 2, "the relay")
            pipe = px.state.relays()[0].pipes["downstream"]
            t0 = time.monotonic()
            lat, peak, held = [], 0, False
            for i in range(8):  # 1.6 s: the client keeps talking to the server meanwhile
                t1 = time.monotonic()
                writer.write(encode_frame(TEXT, f"t{i}".encode(), mask=True))
                await until(lambda i=i: any(p == f"t{i}".encode() for _, p in flood.got), 1, "client->server")
                lat.append(time.monotonic() - t1)
                for _ in range(20):
                    peak = max(peak, pipe.attached(fault).buffered)  # the fault's state on that pipe
                    held = held or "slow_reader:slow_reader" in pipe.holds
                    await asyncio.sleep(0.01)
            el = time.monotonic() - t0
            got, pushed = drain.n, flood.pushed
            assert 0.5 * rate * el < got < rate * el + 320 * KiB, (got, el)  # paced at R (+ one read)
            # at most one read (<= 256 KiB) plus what mitmproxy had read before the relay took over
            assert held and peak <= 512 * KiB, peak
            assert pushed < got + 8 * MiB < flood.total, (pushed, got)  # the sender is blocked (kernel buffers only)
            assert max(lat) < 0.2, lat  # the other direction is not slowed
            # rate 0: the proxy reads nothing more
            status, _ = await api(px, "PATCH", "/faults/slow_reader", {"rate_bps": 0})
            assert status == 200
            await asyncio.sleep(0.3)
            got0, pushed0 = drain.n, flood.pushed
            await asyncio.sleep(0.5)
            assert (drain.n, flood.pushed) == (got0, pushed0)
            # reset: full speed, everything arrives
            await reset_and_check_transparent(px)
            await until(lambda: drain.n >= flood.total, 10, "the rest of the flood after reset")
            assert [e["rate_bps"] for e in fault_events(px, "slow_reader")] == [rate, 0]
            await drain.stop()
            writer.close()

    run(body(), 40)
