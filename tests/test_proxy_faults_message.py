"""Message faults: truncate, corrupt, duplicate, slicer, delay, seen on the wire by raw
WebSocket peers (FIN bits, opcodes, sizes, masks) or by a real client.

All through the in-process proxy (real mitmproxy, real sockets on 127.0.0.1); faults are
added and removed through the control API, as a scenario or a person would; after each,
`POST /reset` (or removal) and a check that the proxy is transparent again. Helpers:
proxy_support.py."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import websockets
from proxy_support import (
    BINARY,
    CONT,
    STREAM,
    TEXT,
    Trace,
    api,
    audio,
    client_connect,
    collect,
    desc,
    encode_frame,
    fault_events,
    jmsg,
    post_fault,
    read_frame,
    reset_and_check_transparent,
    routed_proxy,
    sender,
    until,
)

# --- message-aware: truncate, corrupt, duplicate, slicer, delay -----------------------------------


def test_truncate_cuts_selected_messages_to_keep_bytes(run: Any) -> None:
    async def body() -> None:
        async with routed_proxy({"/s": sender(STREAM)}) as px:
            await post_fault(px, {"type": "truncate", "binary_type": 4, "nth": 2, "keep_bytes": 9})
            await post_fault(px, {"type": "truncate", "name": "json", "json_type": "server/state", "keep_bytes": 5})
            reader, writer = await client_connect(px.port, "/s")
            writer.write(encode_frame(TEXT, b"go", mask=True))
            tr = await collect(reader, 2, until=lambda t: len(t.frames) >= 4)
            assert desc(tr.frames) == [(1, BINARY, 1009), (1, BINARY, 9), (1, BINARY, 1009), (1, TEXT, 5)]
            assert tr.frames[1].payload == audio(1)[:9] and tr.frames[3].payload == jmsg("server/state")[:5]
            ev = fault_events(px, "truncate")
            assert [(e["index"], e["size"], e["kept"]) for e in ev] == [(1, 1009, 9), (3, len(jmsg("server/state")), 5)]
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


def test_corrupt_flips_one_byte_and_keeps_length_and_framing(run: Any) -> None:
    async def body() -> None:
        async with routed_proxy({"/s": sender(STREAM)}) as px:
            await post_fault(px, {"type": "corrupt", "binary_type": 4, "nth": 3})  # last byte XOR 0xFF
            await post_fault(px, {"type": "corrupt", "name": "c2", "json_type": "server/state", "offset": 0, "xor": 1})
            reader, writer = await client_connect(px.port, "/s")
            writer.write(encode_frame(TEXT, b"go", mask=True))
            tr = await collect(reader, 2, until=lambda t: len(t.frames) >= 4)
            got = tr.data()
            assert got[:2] == [audio(0), audio(1)] and len(got[2]) == len(audio(2))
            assert got[2][:-1] == audio(2)[:-1] and got[2][-1] == audio(2)[-1] ^ 0xFF
            assert got[3] == b"z" + jmsg("server/state")[1:]  # '{' ^ 1: no longer JSON
            assert [e["at"] for e in fault_events(px, "corrupt")] == [1008, 0]
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


def test_duplicate_sends_extra_copies_of_selected_messages(run: Any) -> None:
    async def body() -> None:
        async with routed_proxy({"/s": sender(STREAM)}) as px:
            await post_fault(px, {"type": "duplicate", "json_type": "server/state", "copies": 2})
            await post_fault(px, {"type": "duplicate", "name": "d2", "binary_type": 4, "nth": 2})
            reader, writer = await client_connect(px.port, "/s")
            writer.write(encode_frame(TEXT, b"go", mask=True))
            tr = await collect(reader, 1)
            state = jmsg("server/state")
            assert tr.data() == [audio(0), audio(1), audio(1), audio(2), state, state, state]
            assert {e["fault"] for e in fault_events(px, "duplicate")} == {"duplicate", "d2"}
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


def test_slicer_refragments_into_small_frames_and_a_real_client_reassembles(run: Any) -> None:
    text = ("a" + "\u00e9" * 600).encode()  # 1201 bytes: the 1000-byte cut splits an "é"

    async def body() -> None:
        async with routed_proxy() as px:
            await post_fault(px, {"type": "slicer", "frame_bytes": 1000})
            reader, writer = await client_connect(px.port, "/echo")
            writer.write(encode_frame(BINARY, b"S" * 4500, mask=True) + encode_frame(TEXT, text, mask=True)
                         + encode_frame(TEXT, b"", mask=True))
            tr = await collect(reader, 2, until=lambda t: len(t.frames) >= 8)
            assert desc(tr.frames) == [(0, BINARY, 1000), (0, CONT, 1000), (0, CONT, 1000), (0, CONT, 1000),
                                       (1, CONT, 500), (0, TEXT, 1000), (1, CONT, 201), (1, TEXT, 0)]
            assert b"".join(tr.data()[5:7]) == text
            writer.close()
            # a real WebSocket client reassembles it (UTF-8 is checked on the whole message)
            async with websockets.connect(f"ws://127.0.0.1:{px.port}/echo", compression=None, open_timeout=5) as ws:
                await ws.send(text.decode())
                assert await asyncio.wait_for(ws.recv(), 2) == text.decode()
            px.state.reset()
            await post_fault(px, {"type": "slicer", "frame_bytes": 100, "variation_bytes": 50, "seed": 3})
            reader, writer = await client_connect(px.port, "/echo")
            writer.write(encode_frame(BINARY, bytes(range(256)) * 8, mask=True))
            tr = await collect(reader, 2, until=lambda t: t.frames[-1].fin if t.frames else False)
            sizes = tr.sizes()
            assert sum(sizes) == 2048 and len(set(sizes)) > 3 and all(50 <= s <= 150 for s in sizes[:-1])
            assert b"".join(tr.data()) == bytes(range(256)) * 8
            assert fault_events(px, "slicer")[-1]["frames"] == len(sizes)
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


def test_delay_head_of_line_and_reorder_and_removal_flushes(run: Any) -> None:
    a, b = encode_frame(TEXT, jmsg("a"), mask=True), encode_frame(TEXT, jmsg("b"), mask=True)

    async def order(px: Any) -> tuple[list[str], list[float]]:
        reader, writer = await client_connect(px.port, "/echo")
        t0 = time.monotonic()
        writer.write(a + b)
        tr = Trace()
        times = []
        while len(tr.frames) < 2:
            tr.frames.append(await asyncio.wait_for(read_frame(reader), 3))
            times.append(time.monotonic() - t0)
        writer.close()
        return [json.loads(p)["type"] for p in tr.data()], times

    async def body() -> None:
        async with routed_proxy() as px:
            await post_fault(px, {"type": "delay", "name": "hol", "json_type": "a", "delay_ms": 300})
            got, times = await order(px)
            assert got == ["a", "b"] and min(times) >= 0.29, times  # b waited behind a
            px.state.reset()
            await post_fault(px, {"type": "delay", "name": "re", "json_type": "a", "delay_ms": 300, "reorder": True})
            got, times = await order(px)
            assert got == ["b", "a"] and times[0] < 0.2 and times[1] >= 0.29, times  # b overtook a
            assert [(e["fault"], e["reorder"]) for e in fault_events(px, "delay")] == [("hol", False), ("re", True)]
            # removal sends what is held back at once, in order; the sender was held meanwhile
            px.state.reset()
            await post_fault(px, {"type": "delay", "name": "long", "json_type": "a", "delay_ms": 10_000})
            reader, writer = await client_connect(px.port, "/echo")
            writer.write(a + b)
            await until(lambda: any("delay:long:" in h for r in px.state.relays()
                                    for h in r.pipes["downstream"].holds), 2, "the echo's sender held")
            assert (await collect(reader, 0.2)).frames == []
            t0 = time.monotonic()
            status, _ = await api(px, "DELETE", "/faults/long")
            assert status == 200
            tr = await collect(reader, 2, until=lambda t: len(t.frames) >= 2)
            assert [json.loads(p)["type"] for p in tr.data()] == ["a", "b"] and time.monotonic() - t0 < 1
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)
