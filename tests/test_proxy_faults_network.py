"""Network faults beyond the core's latency and reset_peer: bandwidth, limit_data, timeout,
slow_close, close, down; EOF vs RST vs close frame as each peer sees it.

All through the in-process proxy (real mitmproxy, real sockets on 127.0.0.1); faults are
added and removed through the control API, as a scenario or a person would; after each,
`POST /reset` (or removal) and a check that the proxy is transparent again. Helpers:
proxy_support.py."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from proxy_support import (
    BINARY,
    CLOSE,
    TEXT,
    Drain,
    Flood,
    KiB,
    MiB,
    Recorder,
    api,
    client_connect,
    collect,
    desc,
    encode_frame,
    fault_events,
    jmsg,
    post_fault,
    read_end,
    read_frame,
    reset_and_check_transparent,
    routed_proxy,
    until,
)

# --- bandwidth ---------------------------------------------------------------------------------------

def test_bandwidth_paces_delivery_and_holds_the_sender_above_its_buffer(run: Any) -> None:
    flood = Flood(total=24 * 64 * KiB)
    size = 24 * (64 * KiB + 10)  # 24 frames of 64 KiB, 10-byte header each
    rate = 2 * MiB

    async def body() -> None:
        async with routed_proxy({"/flood": flood}) as px:
            await post_fault(px, {"type": "bandwidth", "rate_bps": rate, "max_buffer_bytes": 128 * KiB})
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
        async with routed_proxy({"/s": script}) as px:
            await post_fault(px, {"type": "limit_data", "limit_bytes": 3000})
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
        async with routed_proxy({"/rec": rec}) as px:
            await post_fault(px, {"type": "timeout", "name": "hole"})
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
                await post_fault(px, {"type": "timeout", "name": end, "timeout_s": 0.3, "end": end})
                ends_before = len(rec.ends)
                t0 = time.monotonic()  # before the proxy accepts: its timer starts then
                reader, writer = await client_connect(px.port, "/rec")
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
        async with routed_proxy({"/eof": closer}) as px:
            await post_fault(px, {"type": "slow_close", "name": "sc", "delay_ms": 500, "direction": "downstream"})
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
        async with routed_proxy({"/rec": rec}) as px:
            await post_fault(px, {"type": "close", "code": 4001, "reason": "slow reader", "after_s": 0.1, "count": 1})
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
            await post_fault(px, {"type": "close", "direction": "upstream", "json_type": "client/time", "code": 1008,
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
            await post_fault(px, {"type": "close", "code": None, "after_s": 0})  # a close frame without a code
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
        async with routed_proxy() as px:
            reader, writer = await client_connect(px.port, "/echo")
            await post_fault(px, {"type": "down", "name": "down"})
            assert await refused(px) and await refused(px)
            writer.write(encode_frame(TEXT, b"still here", mask=True))  # existing: keep
            assert (await collect(reader, 2, until=lambda t: bool(t.frames))).data() == [b"still here"]
            status, _ = await api(px, "DELETE", "/faults/down")
            assert status == 200 and not await refused(px)
            await post_fault(px, {"type": "down", "existing": "reset", "count": 2})
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
