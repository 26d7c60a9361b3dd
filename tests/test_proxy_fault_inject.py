"""inject: the proxy sends a message of its own, at a message boundary, seen on the wire by
raw WebSocket peers (FIN bits, opcodes, sizes, masks) and by a real client.

Through the in-process proxy (real mitmproxy, real sockets on 127.0.0.1); faults are
added through the control API. Helpers: proxy_support.py."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
import websockets
from proxy_support import (
    BINARY,
    CLOSE,
    CONT,
    TEXT,
    Recorder,
    api,
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
    until,
)

from proxy.faults import FaultSpecError, build_fault

MID_MESSAGE_S = 0.4  # how long the upstream keeps a fragmented message open


async def slow_fragments(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
    """Upstream: on "go", a binary message whose second fragment comes MID_MESSAGE_S late,
    then a JSON message; then it answers a close."""
    await read_frame(reader)
    writer.write(encode_frame(BINARY, b"A" * 100, fin=False))
    await writer.drain()
    await asyncio.sleep(MID_MESSAGE_S)
    writer.write(encode_frame(CONT, b"B" * 50) + encode_frame(TEXT, jmsg("server/state")))
    await writer.drain()
    tr = await collect(reader, 10, stop_after_close=True)
    if tr.end == "close-frame":
        writer.write(encode_frame(CLOSE, tr.frames[-1].payload))


def test_inject_waits_for_the_message_boundary_and_sends_its_fragments_back_to_back(run: Any) -> None:
    text = json.dumps({"type": "server/gate-unknown", "payload": {"n": 1}})

    async def body() -> None:
        async with routed_proxy({"/s": slow_fragments}) as px:
            reader, writer = await client_connect(px.port, "/s")
            writer.write(encode_frame(TEXT, b"go", mask=True))
            first = await asyncio.wait_for(read_frame(reader), 2)  # the open message's first fragment
            added = time.monotonic()
            await post_fault(px, {"type": "inject", "text": text, "fragments": 3})  # due at once: mid-message
            tr = await collect(reader, 2, until=lambda t: len(t.frames) >= 5)
            # not inside the open message: after its last fragment, before the next message
            assert desc([first, *tr.frames]) == [(0, BINARY, 100), (1, CONT, 50), (0, TEXT, 18), (0, CONT, 17),
                                                  (1, CONT, 17), (1, TEXT, len(jmsg("server/state")))]
            assert b"".join(f.payload for f in tr.frames[1:4]).decode() == text
            assert not any(f.masked for f in tr.frames)
            assert time.monotonic() - added >= MID_MESSAGE_S / 2
            [ev] = fault_events(px, "inject")
            assert (ev["direction"], ev["json_type"], ev["size"], ev["frames"]) == ("downstream", "server/gate-unknown",
                                                                                    len(text), 3)
            status, faults = await api(px, "GET", "/faults")
            assert status == 200 and faults["faults"] == []  # count 1 (the default): retired
            await reset_and_check_transparent(px)
            writer.close()

    run(body(), 30)


def test_inject_upstream_is_masked_pads_and_repeats_every_s_until_count(run: Any) -> None:
    rec = Recorder()

    async def body() -> None:
        async with routed_proxy({"/rec": rec}) as px:
            await post_fault(px, {"type": "inject", "direction": "upstream", "hex": "04 0000000000000001",
                                  "pad_bytes": 3, "after_s": 0.1, "every_s": 0.2, "count": 3})
            _, writer = await client_connect(px.port, "/rec")
            await until(lambda: len(rec.got) >= 3, 3, "three injections at the server")
            await asyncio.sleep(0.5)  # and no fourth
            frames = [f for _, f in rec.got]
            assert desc(frames) == [(1, BINARY, 12)] * 3 and all(f.masked for f in frames)
            assert frames[0].payload == bytes.fromhex("040000000000000001") + b"\0\0\0"
            times = [t for t, _ in rec.got]
            assert all(b - a >= 0.15 for a, b in itertools.pairwise(times)), times  # every_s apart, not sooner
            ev = fault_events(px, "inject")
            assert [(e["direction"], e["binary_type"], e["size"]) for e in ev] == [("upstream", 4, 12)] * 3
            writer.close()

    run(body(), 30)


def test_a_real_client_reads_an_injected_large_text_and_the_stream_goes_on(run: Any) -> None:
    async def body() -> None:
        async with routed_proxy() as px:
            await post_fault(px, {"type": "inject", "text": '{"type":"server/state","payload":{}}',
                                  "pad_bytes": 1 << 20, "after_s": 0.1})
            async with websockets.connect(f"ws://127.0.0.1:{px.port}/echo", compression=None, max_size=None,
                                          open_timeout=5) as ws:
                big = await asyncio.wait_for(ws.recv(), 3)
                assert isinstance(big, str) and len(big) == 36 + (1 << 20)
                assert json.loads(big) == {"type": "server/state", "payload": {}}  # spaces: still JSON
                await ws.send("after")
                assert await asyncio.wait_for(ws.recv(), 2) == "after"

    run(body(), 30)


def test_an_inject_removed_before_its_time_sends_nothing(run: Any) -> None:
    rec = Recorder()

    async def body() -> None:
        async with routed_proxy({"/rec": rec}) as px:
            await post_fault(px, {"type": "inject", "name": "later", "text": "x", "after_s": 0.5})
            reader, writer = await client_connect(px.port, "/rec")
            status, _ = await api(px, "DELETE", "/faults/later")
            assert status == 200
            writer.write(encode_frame(TEXT, b"ping", mask=True))
            tr = await collect(reader, 1.0)
            assert tr.data() == [b"ping"] and not fault_events(px, "inject")
            writer.close()

    run(body(), 30)


@pytest.mark.parametrize(("spec", "message"), [
    ({}, "give the payload as parameter 'text' (a string) or 'hex' (bytes), exactly one of them"),
    ({"text": "a", "hex": "00"}, "exactly one of them"),
    ({"hex": "0g"}, "parameter 'hex' is not hex bytes"),
    ({"text": 5}, "parameter 'text' must be a string"),
    ({"text": "a", "opcode": "ping"}, "parameter 'opcode' must be one of ['text', 'binary']"),
    ({"text": "ab", "fragments": 3}, "parameter 'fragments' (3) must be at most the message's size (2 bytes)"),
    ({"text": "a", "fragments": 0}, "parameter 'fragments' must be >= 1"),
    ({"text": "a", "every_s": 1}, "parameter 'every_s' repeats an injection: give 'count'"),
    ({"text": "a", "after_s": -1}, "parameter 'after_s' must be >= 0.0"),
    ({"text": "a", "pad_bytes": -1}, "parameter 'pad_bytes' must be >= 0"),
    ({"text": "a", "direction": "both"}, "inject: direction must be one of ['downstream', 'upstream']"),
    ({"text": "a", "json_type": "server/time"}, "inject: takes no selector"),
])
def test_bad_inject_parameters_are_refused_naming_the_parameter(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(FaultSpecError) as e:
        build_fault({"type": "inject", **spec})
    assert message in str(e.value)


def test_an_inject_spec_round_trips_with_its_defaults() -> None:
    f = build_fault({"type": "inject", "hex": "0400", "opcode": "text"})
    assert (f.count, f.params["fragments"], f.params["after_s"]) == (1, 1, 0.0)
    assert f.message == b"\x04\x00" and f.json_type is None  # hex as text: bytes as they are
    assert build_fault(f.spec()).spec() == f.spec()
