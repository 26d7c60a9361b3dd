"""The fault catalogue beyond the core's three examples: every fault's effect on the wire
(raw WebSocket peers that see FIN bits, opcodes, sizes, masks, EOF vs RST) or on a real
peer (websockets, the reference server with probe clients, worker processes), then
`POST /reset` (or removal) and a check that the proxy is transparent again.

All through the in-process proxy (real mitmproxy, real sockets on 127.0.0.1); faults are
added and removed through the control API, as a scenario or a person would."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from proxy_support import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    Frame,
    RawUpstream,
    Trace,
    client_connect,
    collect,
    echo,
    encode_frame,
    in_process_proxy,
    read_end,
    read_frame,
)
from websockets.exceptions import ConnectionClosedError

from harness.checkers import rejected, require
from harness.probe import ProbeConfig
from harness.protocol import closecodes, now_us
from harness.protocol import messages as m
from harness.scenario import Scenario
from proxy.faults import FaultSpecError, build_fault, fault_types

KiB = 1024
MiB = 1024 * KiB
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]], Awaitable[None]]
MINE = ("orphan_header", "stalled_payload", "slow_reader", "worker_crash", "bandwidth", "slicer", "limit_data",
        "timeout", "slow_close", "down", "duplicate", "delay", "corrupt", "truncate", "close")


# --- helpers ------------------------------------------------------------------------------------


def jmsg(t: str, **kw: Any) -> bytes:
    return json.dumps({"type": t, "payload": kw}).encode()


def audio(i: int, n: int = 1000, btype: int = 4) -> bytes:
    return struct.pack(">Bq", btype, i * 25_000) + bytes([i % 256]) * n


def desc(frames: list[Frame]) -> list[tuple[int, int, int]]:
    """(FIN, opcode, payload size) of each frame."""
    return [(int(f.fin), f.opcode, len(f.payload)) for f in frames]


def sender(frames: list[bytes], gap_s: float = 0.0) -> Script:
    """Upstream: on the client's first frame ("go"), send `frames` (gap_s apart), then stay."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        await read_frame(reader)
        for f in frames:
            writer.write(f)
            await writer.drain()
            if gap_s:
                await asyncio.sleep(gap_s)
        tr = await collect(reader, 10, stop_after_close=True)
        if tr.end == "close-frame":  # answer a close, as a server does
            writer.write(encode_frame(CLOSE, tr.frames[-1].payload))
    return script


class Recorder:
    """Upstream that echoes and records what it received and when (and how it ended)."""

    def __init__(self) -> None:
        self.got: list[tuple[float, Frame]] = []
        self.ends: list[str] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        try:
            while True:
                f = await read_frame(reader)
                self.got.append((time.monotonic(), f))
                if f.opcode == CLOSE:
                    writer.write(encode_frame(CLOSE, f.payload))
                    await writer.drain()
                    self.ends.append("close-frame")
                    await read_end(reader, 3)
                    return
                writer.write(encode_frame(f.opcode, f.payload, f.fin))
                await writer.drain()
        except asyncio.IncompleteReadError:
            self.ends.append("eof")
        except ConnectionResetError:
            self.ends.append("rst")

    def payloads(self) -> list[bytes]:
        return [f.payload for _, f in self.got if f.opcode in (TEXT, BINARY, CONT)]


@asynccontextmanager
async def proxied(routes: dict[str, Script] | None = None) -> AsyncIterator[Any]:
    """A raw upstream (path -> script; anything else echoes) behind the in-process proxy."""
    table = dict(routes or {})

    async def dispatch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        await table.get(info["path"], echo)(reader, writer, info)

    async with RawUpstream(dispatch) as up, in_process_proxy([f"ws://127.0.0.1:{up.port}"]) as px:
        yield px


async def api(px: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.request(method, px.control.url + path, json=body) as r:
        return r.status, await r.json()


async def add(px: Any, spec: dict[str, Any]) -> dict[str, Any]:
    status, body = await api(px, "POST", "/faults", spec)
    assert status == 201, body
    return dict(body["fault"])


def fault_events(px: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in px.events.since(0, limit=10_000) if e["event"] == "fault" and e["type"] == kind]


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def reset_and_check_transparent(px: Any) -> None:
    """POST /reset, then: no fault left on any live pipe, and a new connection carries
    fragments, a ping, text and a close handshake exactly as sent."""
    status, body = await api(px, "POST", "/reset")
    assert status == 200, body
    assert not px.state.faults
    for relay in px.state.relays():
        for pipe in relay.pipes.values():
            assert not pipe.faults and not pipe.withholding, pipe.stats()
            assert not (pipe.holds - {"write-buffer"}), pipe.stats()
    reader, writer = await client_connect(px.port, "/echo")
    try:
        text = "h\u00e9llo".encode()
        writer.write(encode_frame(BINARY, b"F" * 3000, fin=False, mask=True)
                     + encode_frame(CONT, b"G" * 2000, fin=False, mask=True) + encode_frame(CONT, b"H" * 10, mask=True)
                     + encode_frame(PING, b"p", mask=True) + encode_frame(TEXT, text, mask=True)
                     + encode_frame(CLOSE, struct.pack("!H", 4001) + b"bye", mask=True))
        tr = await collect(reader, 3)
        assert desc(tr.frames) == [(0, BINARY, 3000), (0, CONT, 2000), (1, CONT, 10), (1, PONG, 1),
                                   (1, TEXT, len(text)), (1, CLOSE, 5)], tr.frames
        assert tr.frames[4].payload == text and (tr.frames[5].close_code, tr.frames[5].close_reason) == (4001, "bye")
        assert tr.end == "eof"
    finally:
        writer.close()


# --- the catalogue -------------------------------------------------------------------------------


def test_every_fault_is_registered_and_describes_its_parameters() -> None:
    types = fault_types()
    assert set(MINE) <= set(types)
    for kind in MINE:
        d = types[kind].describe()
        assert d["description"] and d["type"] == kind
        f = build_fault({"type": kind, **_minimal(kind)})
        assert build_fault(f.spec()).spec() == f.spec()  # PATCH relies on the round trip


def _minimal(kind: str) -> dict[str, Any]:
    return {"bandwidth": {"rate_bps": 1000}, "slow_reader": {"rate_bps": 0},
            "limit_data": {"limit_bytes": 10}}.get(kind, {})


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "orphan_header", "variant": "binary", "binaries": 3},
     "orphan_header: parameter 'binaries' applies to variant 'announce' only (this one is 'binary')"),
    ({"type": "orphan_header", "variant": "fragment", "keep_bytes": 4}, "'keep_bytes' applies to variant 'binary'"),
    ({"type": "orphan_header", "keep_bytes": 10}, "parameter 'keep_bytes' must be <= 9"),
    ({"type": "orphan_header", "variant": "sideways"}, "parameter 'variant' must be one of ['binary', 'fragment'"),
    ({"type": "orphan_header", "variant": "fragment", "fragment_end": "x"}, "'fragment_end' must be one of"),
    ({"type": "orphan_header", "json_type": "stream/start"}, "variant 'binary' acts on binary messages"),
    ({"type": "orphan_header", "variant": "announce", "binary_type": 4}, "use data_type for the binary data"),
    ({"type": "stalled_payload", "mode": "tcp"}, "parameter 'mode' must be one of ['frame', 'bytes']"),
    ({"type": "stalled_payload", "stall_s": -1}, "parameter 'stall_s' must be >= 0.0"),
    ({"type": "slow_reader"}, "slow_reader: missing required parameter 'rate_bps'"),
    ({"type": "slow_reader", "rate_bps": 10, "rcvbuf_bytes": 10}, "'rcvbuf_bytes' must be >= 1024"),
    ({"type": "slow_reader", "rate_bps": 10, "json_type": "x"}, "slow_reader: takes no selector"),
    ({"type": "bandwidth", "rate_bps": -1}, "bandwidth: parameter 'rate_bps' must be >= 0.0"),
    ({"type": "slicer", "frame_bytes": 0}, "slicer: parameter 'frame_bytes' must be >= 1"),
    ({"type": "slicer", "frame_bytes": 10, "variation_bytes": 10}, "variation_bytes (10) must be smaller"),
    ({"type": "limit_data"}, "limit_data: missing required parameter 'limit_bytes'"),
    ({"type": "timeout", "end": "slam"}, "timeout: parameter 'end' must be one of ['fin', 'rst']"),
    ({"type": "slow_close", "delay_ms": "soon"}, "slow_close: parameter 'delay_ms' must be a number"),
    ({"type": "down", "direction": "upstream"}, "down: direction must be one of ['both']"),
    ({"type": "duplicate", "copies": 0}, "duplicate: parameter 'copies' must be >= 1"),
    ({"type": "delay", "reorder": "yes"}, "delay: parameter 'reorder' must be a boolean"),
    ({"type": "corrupt", "xor": 0}, "corrupt: parameter 'xor' must be >= 1"),
    ({"type": "truncate", "keep_bytes": -1}, "truncate: parameter 'keep_bytes' must be >= 0"),
    ({"type": "close", "code": 1006}, "close: parameter 'code' 1006 must not be sent on the wire"),
    ({"type": "close", "reason": "x" * 124}, "'reason' must be at most 123 UTF-8 bytes"),
    ({"type": "close", "code": None, "reason": "why"}, "a reason needs a code"),
    ({"type": "close", "after_s": 1, "json_type": "x"}, "after_s (a timed close) and a selector"),
    ({"type": "worker_crash", "action": "explode"}, "worker_crash: parameter 'action' must be one of"),
    ({"type": "worker_crash", "direction": "downstream"}, "worker_crash: direction must be one of ['both']"),
])
def test_bad_parameters_are_rejected_naming_the_fault_and_the_rule(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(FaultSpecError) as e:
        build_fault(spec)
    assert message in str(e.value)


# --- message-aware: truncate, corrupt, duplicate, slicer, delay -----------------------------------


STREAM = [encode_frame(BINARY, audio(0)), encode_frame(BINARY, audio(1)), encode_frame(BINARY, audio(2)),
          encode_frame(TEXT, jmsg("server/state"))]


def test_truncate_cuts_selected_messages_to_keep_bytes(run: Any) -> None:
    async def body() -> None:
        async with proxied({"/s": sender(STREAM)}) as px:
            await add(px, {"type": "truncate", "binary_type": 4, "nth": 2, "keep_bytes": 9})
            await add(px, {"type": "truncate", "name": "json", "json_type": "server/state", "keep_bytes": 5})
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
        async with proxied({"/s": sender(STREAM)}) as px:
            await add(px, {"type": "corrupt", "binary_type": 4, "nth": 3})  # last byte XOR 0xFF
            await add(px, {"type": "corrupt", "name": "c2", "json_type": "server/state", "offset": 0, "xor": 1})
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
        async with proxied({"/s": sender(STREAM)}) as px:
            await add(px, {"type": "duplicate", "json_type": "server/state", "copies": 2})
            await add(px, {"type": "duplicate", "name": "d2", "binary_type": 4, "nth": 2})
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
        async with proxied() as px:
            await add(px, {"type": "slicer", "frame_bytes": 1000})
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
            await add(px, {"type": "slicer", "frame_bytes": 100, "variation_bytes": 50, "seed": 3})
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
        async with proxied() as px:
            await add(px, {"type": "delay", "name": "hol", "json_type": "a", "delay_ms": 300})
            got, times = await order(px)
            assert got == ["a", "b"] and min(times) >= 0.29, times  # b waited behind a
            px.state.reset()
            await add(px, {"type": "delay", "name": "re", "json_type": "a", "delay_ms": 300, "reorder": True})
            got, times = await order(px)
            assert got == ["b", "a"] and times[0] < 0.2 and times[1] >= 0.29, times  # b overtook a
            assert [(e["fault"], e["reorder"]) for e in fault_events(px, "delay")] == [("hol", False), ("re", True)]
            # removal sends what is held back at once, in order; the sender was held meanwhile
            px.state.reset()
            await add(px, {"type": "delay", "name": "long", "json_type": "a", "delay_ms": 10_000})
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


# --- stalled_payload ---------------------------------------------------------------------------------


def test_stalled_payload_fin0_fragment_then_resumed_intact_other_direction_flows(run: Any) -> None:
    rec = Recorder()

    async def body() -> None:
        async with proxied({"/rec": rec}) as px:
            await add(px, {"type": "stalled_payload", "min_size": 3000, "head_bytes": 100, "stall_s": 0.5})
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
        async with proxied() as px:
            await add(px, {"type": "stalled_payload", "binary_type": 4, "head_bytes": 9})
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
        async with proxied() as px:
            await add(px, {"type": "stalled_payload", "mode": "bytes", "min_size": 3000, "head_bytes": 50,
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
        async with proxied({"/s": sender([*STREAM, art])}) as px:
            await add(px, {"type": "orphan_header", "binary_type": 4, "count": 1})  # variant binary, 9 bytes
            await add(px, {"type": "orphan_header", "name": "cut", "binary_type": 8, "keep_bytes": 3})
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
        async with proxied({"/frag": script}) as px:
            # none: the next message arrives as a new message inside the open one
            await add(px, {"type": "orphan_header", "variant": "fragment"})
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
            await add(px, {"type": "orphan_header", "variant": "fragment", "fragment_end": "empty_fin"})
            tr, _ = await raw(px)
            assert desc(tr.frames) == [(0, BINARY, 2500), (1, CONT, 0), (1, TEXT, len(nxt))]
            assert await real_client(px) == [b"A" * 2500, nxt.decode()]
            # splice: the next message's bytes become the missing continuation
            await reset_and_check_transparent(px)
            await add(px, {"type": "orphan_header", "variant": "fragment", "fragment_end": "splice",
                           "head_bytes": 100})
            tr, _ = await raw(px)
            assert desc(tr.frames) == [(0, BINARY, 100), (1, CONT, len(nxt))]
            assert await real_client(px) == [b"A" * 100 + nxt]  # one message; the JSON never arrives as such
            await reset_and_check_transparent(px)

    run(body(), 40)


def test_orphan_header_fragment_removed_while_open_closes_the_sequence(run: Any) -> None:
    script = sender([encode_frame(BINARY, b"Q" * 4000), encode_frame(TEXT, jmsg("late"))], gap_s=5)

    async def body() -> None:
        async with proxied({"/frag": script}) as px:
            await add(px, {"type": "orphan_header", "variant": "fragment", "name": "open"})
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
        async with proxied({"/s": sender(frames)}) as px:
            await add(px, {"type": "orphan_header", "variant": "announce"})  # the first binary after it
            assert await got(px) == [start, audio(1), audio(2), art, state, audio(3)]
            await reset_and_check_transparent(px)
            await add(px, {"type": "orphan_header", "variant": "announce", "binaries": None})
            assert await got(px) == [start, state, audio(3)]  # the next JSON instead of any data
            await reset_and_check_transparent(px)
            await add(px, {"type": "orphan_header", "variant": "announce", "data_type": 8})
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
                await add(px, {"type": "orphan_header", "variant": "announce", "direction": "upstream",
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
                await add(px, {"type": "stalled_payload", "direction": "upstream", "json_type": "client/time",
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


# --- slow_reader, bandwidth --------------------------------------------------------------------------------


class Flood:
    """Upstream: pushes 64 KiB binary frames (up to `total`) as fast as the socket takes
    them, while recording every frame the client sends (the other direction)."""

    def __init__(self, total: int = 16 * MiB) -> None:
        self.total = total
        self.pushed = 0
        self.got: list[tuple[float, bytes]] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        chunk = encode_frame(BINARY, b"f" * (64 * KiB))

        async def push() -> None:
            with contextlib.suppress(ConnectionError):
                while self.pushed < self.total:
                    writer.write(chunk)
                    await writer.drain()
                    self.pushed += len(chunk)

        task = asyncio.create_task(push())
        try:
            while True:
                f = await read_frame(reader)
                self.got.append((time.monotonic(), f.payload))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Drain:
    """A client reader that reads everything as fast as it can and counts it."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.n = 0
        self.task = asyncio.create_task(self._run(reader))

    async def _run(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(256 * KiB):
                self.n += len(data)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def test_slow_reader_backpressures_the_sender_with_bounded_memory_and_other_direction_free(run: Any) -> None:
    flood = Flood()
    rate = 256 * KiB

    async def body() -> None:
        async with proxied({"/flood": flood}) as px:
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
                    peak = max(peak, fault.state(pipe).buffered)
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


def test_bandwidth_paces_delivery_and_holds_the_sender_above_its_buffer(run: Any) -> None:
    flood = Flood(total=24 * 64 * KiB)
    size = 24 * (64 * KiB + 10)  # 24 frames of 64 KiB, 10-byte header each
    rate = 2 * MiB

    async def body() -> None:
        async with proxied({"/flood": flood}) as px:
            await add(px, {"type": "bandwidth", "rate_bps": rate, "max_buffer_bytes": 128 * KiB})
            reader, writer = await client_connect(px.port, "/flood")
            drain = Drain(reader)
            t0 = time.monotonic()
            await until(lambda: bool(px.state.relays()), 2, "the relay")
            pipe = px.state.relays()[0].pipes["downstream"]
            held = False
            mid = None
            while drain.n < flood.total:
                held = held or "bandwidth:bandwidth" in pipe.holds
                if mid is None and time.monotonic() - t0 >= 0.4:
                    mid = drain.n
                await asyncio.sleep(0.005)
                assert time.monotonic() - t0 < 5, drain.n
            el = time.monotonic() - t0
            assert el >= 0.6 * size / rate, el  # 1.5 MiB at 2 MiB/s: ~0.75 s
            assert mid is not None and 0.4 * rate * 0.4 < mid < 1.5 * rate * 0.4, mid  # steady, not bursty
            assert held  # above 128 KiB queued the sender was held
            await reset_and_check_transparent(px)
            await drain.stop()
            writer.close()

    run(body(), 30)


# --- connection faults: limit_data, timeout, slow_close, close, down ---------------------------------------


def test_limit_data_forwards_exactly_n_bytes_then_ends_both_sides(run: Any) -> None:
    ends: list[str] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        await read_frame(reader)
        for _ in range(3):
            writer.write(encode_frame(BINARY, b"L" * 1200))
        await writer.drain()
        ends.append(await read_end(reader, 3))

    async def body() -> None:
        async with proxied({"/s": script}) as px:
            await add(px, {"type": "limit_data", "limit_bytes": 3000})
            reader, writer = await client_connect(px.port, "/s")
            writer.write(encode_frame(TEXT, b"go", mask=True))
            data = b""
            async with asyncio.timeout(3):
                while chunk := await reader.read(65536):
                    data += chunk
            assert data == (encode_frame(BINARY, b"L" * 1200) * 3)[:3000]  # cut mid-frame, then EOF
            await until(lambda: bool(ends), 3, "the server's end")
            assert ends == ["eof"]
            assert fault_events(px, "limit_data")[0]["sent"] == 3000
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


def test_timeout_black_holes_until_removed_then_delivers_or_ends_after_timeout_s(run: Any) -> None:
    rec = Recorder()

    async def body() -> None:
        async with proxied({"/rec": rec}) as px:
            await add(px, {"type": "timeout", "name": "hole"})
            reader, writer = await client_connect(px.port, "/rec")
            writer.write(encode_frame(TEXT, b"held", mask=True))
            tr = await collect(reader, 0.5)
            assert tr.frames == [] and tr.end == "timeout" and rec.got == []  # silent, both sockets open
            assert len(px.state.relays()) == 1
            status, _ = await api(px, "DELETE", "/faults/hole")
            assert status == 200
            tr = await collect(reader, 2, until=lambda t: bool(t.frames))
            assert rec.payloads() == [b"held"] and tr.data() == [b"held"]  # intact, after all
            writer.close()
            for end in ("fin", "rst"):
                await add(px, {"type": "timeout", "name": end, "timeout_s": 0.3, "end": end})
                ends_before = len(rec.ends)
                reader, writer = await client_connect(px.port, "/rec")
                t0 = time.monotonic()
                writer.write(encode_frame(TEXT, b"lost", mask=True))
                tr = await collect(reader, 2)
                assert tr.frames == [] and tr.end == {"fin": "eof", "rst": "rst"}[end]
                assert 0.28 <= time.monotonic() - t0 < 1.5
                await until(lambda n=ends_before: len(rec.ends) > n, 2, "the server's end")
                writer.close()
                px.state.reset()
            assert rec.ends[-2:] == ["eof", "rst"] and b"lost" not in rec.payloads()
            await reset_and_check_transparent(px)

    run(body(), 30)


def test_slow_close_delays_the_fin_and_removal_sends_it(run: Any) -> None:
    async def closer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        await read_frame(reader)
        writer.write(encode_frame(TEXT, b"bye"))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write_eof()
        await read_end(reader, 10)

    async def body() -> None:
        async with proxied({"/eof": closer}) as px:
            await add(px, {"type": "slow_close", "name": "sc", "delay_ms": 500, "direction": "downstream"})
            reader, writer = await client_connect(px.port, "/eof")
            t0 = time.monotonic()
            writer.write(encode_frame(TEXT, b"go", mask=True))
            tr = await collect(reader, 3)
            assert tr.data() == [b"bye"] and tr.end == "eof" and time.monotonic() - t0 >= 0.58
            writer.close()
            status, _ = await api(px, "PATCH", "/faults/sc", {"delay_ms": 10_000})
            assert status == 200
            reader, writer = await client_connect(px.port, "/eof")
            writer.write(encode_frame(TEXT, b"go", mask=True))
            await asyncio.sleep(0.4)  # the upstream's FIN is held by the proxy now
            t0 = time.monotonic()
            status, _ = await api(px, "DELETE", "/faults/sc")
            tr = await collect(reader, 2)
            assert tr.data() == [b"bye"] and tr.end == "eof" and time.monotonic() - t0 < 0.5
            assert len(fault_events(px, "slow_close")) == 2
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


def test_close_with_code_and_reason_timed_or_at_a_selected_message(run: Any) -> None:
    rec = Recorder()

    async def body() -> None:
        async with proxied({"/rec": rec}) as px:
            await add(px, {"type": "close", "code": 4001, "reason": "slow reader", "after_s": 0.1, "count": 1})
            reader, writer = await client_connect(px.port, "/rec")
            tr = await collect(reader, 3)
            assert [(f.close_code, f.close_reason, f.masked) for f in tr.frames] == [(4001, "slow reader", False)]
            assert tr.end == "eof"
            await until(lambda: bool(rec.ends), 2, "the server's end")
            server_close = [f for _, f in rec.got if f.opcode == CLOSE]
            assert [(f.close_code, f.close_reason, f.masked) for f in server_close] == [(4001, "slow reader", True)]
            writer.close()
            # at a message: the selected client/time is replaced by the close
            rec.got.clear()
            await add(px, {"type": "close", "direction": "upstream", "json_type": "client/time", "code": 1008,
                           "reason": "policy"})
            reader, writer = await client_connect(px.port, "/rec")
            writer.write(encode_frame(TEXT, jmsg("client/state"), mask=True))
            echo = await asyncio.wait_for(read_frame(reader), 2)  # else the close races the echo
            writer.write(b"".join(encode_frame(TEXT, jmsg(t), mask=True) for t in ("client/time", "client/state")))
            tr = await collect(reader, 3)
            assert [json.loads(p)["type"] for p in [echo.payload, *tr.data()]] == ["client/state"]
            assert tr.close_codes() == [1008] and tr.end == "eof"
            assert [json.loads(p)["type"] for p in rec.payloads()] == ["client/state"]
            assert [f.close_code for _, f in rec.got if f.opcode == CLOSE] == [1008]
            writer.close()
            px.state.reset()
            await add(px, {"type": "close", "code": None, "after_s": 0})  # a close frame without a code
            reader, writer = await client_connect(px.port, "/echo")
            tr = await collect(reader, 3)
            assert desc(tr.frames) == [(1, CLOSE, 0)]
            ev = fault_events(px, "close")
            assert [(e["code"], e.get("index")) for e in ev] == [(4001, None), (1008, 1), (None, None)]
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


async def refused(px: Any) -> bool:
    try:
        _r, w = await client_connect(px.port, "/echo")
    except (ConnectionError, asyncio.IncompleteReadError, RuntimeError, TimeoutError):
        return True
    w.close()
    return False


def test_down_refuses_new_connections_keeps_or_resets_live_ones(run: Any) -> None:
    async def body() -> None:
        async with proxied() as px:
            reader, writer = await client_connect(px.port, "/echo")
            await add(px, {"type": "down", "name": "down"})
            assert await refused(px) and await refused(px)
            writer.write(encode_frame(TEXT, b"still here", mask=True))  # existing: keep
            assert (await collect(reader, 2, until=lambda t: bool(t.frames))).data() == [b"still here"]
            status, _ = await api(px, "DELETE", "/faults/down")
            assert status == 200 and not await refused(px)
            await add(px, {"type": "down", "existing": "reset", "count": 2})
            assert (await collect(reader, 2)).end == "rst"  # the live one is reset
            assert await refused(px) and await refused(px)
            await until(lambda: not px.state.faults, 2, "count=2 to retire the fault")
            assert not await refused(px)  # the third is accepted
            actions = [e["action"] for e in fault_events(px, "down")]
            assert actions.count("refuse") == 4 and "reset_live" in actions  # (+ any relay still closing)
            assert next(e["why"] for e in px.events.since(0) if e["event"] == "refused") == "down (fault 'down')"
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


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
                await add(px, {"type": "worker_crash", "action": "reset", "upstream": 0})
                assert (await collect(by_pid[pid0][0], 2)).end == "rst"
                assert procs[0][0].returncode is None and proc_state(pid0) in "SR"
                assert await echoed(*by_pid[pid1], 2)
                await reset_and_check_transparent_via_worker(px)
                await until(lambda: px.state.upstreams[0].active == 0, 2, "worker 0's flows to end")
                r0, w0, p = await conn(px)  # worker 0 is up: a new connection goes there
                assert p == pid0
                by_pid[pid0] = (r0, w0)
                conns.append((r0, w0, p))
                # stop (random among workers with a pid, seeded): hangs; removal sends SIGCONT
                f = await add(px, {"type": "worker_crash", "action": "stop", "seed": 1})
                await until(lambda: bool(fault_events(px, "worker_crash")[1:]), 2, "the stop")
                stopped = fault_events(px, "worker_crash")[-1]["pid"]
                assert proc_state(stopped) == "T"
                r, w = by_pid[stopped]
                w.write(encode_frame(TEXT, b"queued", mask=True))
                assert (await collect(r, 0.4)).frames == []  # a hung worker answers nothing
                status, _ = await api(px, "DELETE", f"/faults/{f['name']}")
                assert status == 200
                assert (await collect(r, 3, until=lambda t: bool(t.frames))).data() == [b"queued"]
                assert proc_state(stopped) in "SR"
                # kill: the worker dies; its client sees the end the kernel gave the proxy
                await add(px, {"type": "worker_crash", "action": "kill", "upstream": 1, "count": 1})
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
