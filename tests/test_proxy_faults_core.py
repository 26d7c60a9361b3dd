"""The fault interface (spec, selector, registry, count/duration/toxicity, new and
existing connections, event log) and its three worked examples: drop, latency,
reset_peer. Real sockets through the in-process proxy."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from proxy_support import (
    BINARY,
    CLOSE,
    CONT,
    TEXT,
    RawUpstream,
    client_connect,
    collect,
    echo,
    encode_frame,
    in_process_proxy,
    read_frame,
)

from proxy.faults import Fault, FaultSpecError, FaultState, Selector, build_fault, fault_types, load_plan
from proxy.relay.message import Msg


def jmsg(t: str, **kw: Any) -> bytes:
    return json.dumps({"type": t, "payload": kw}).encode()


def audio(i: int, n: int = 1000) -> bytes:
    return struct.pack(">Bq", 4, i * 25_000) + bytes([i % 256]) * n


def sent_values(frames: list[bytes]) -> list[int]:
    return [json.loads(p)["payload"]["i"] for p in frames]


@asynccontextmanager
async def proxied(script: Any = echo, **kw: Any) -> AsyncIterator[Any]:
    async with RawUpstream(script) as up, in_process_proxy([f"ws://127.0.0.1:{up.port}"], **kw) as px:
        px.raw_upstream = up
        yield px


def add(px: Any, spec: dict[str, Any]) -> Fault:
    return px.state.add_fault(build_fault(spec))


# --- spec, selector, registry ----------------------------------------------------------------


def test_registry_has_the_three_examples_and_describes_them() -> None:
    types = fault_types()
    assert {"drop", "latency", "reset_peer"} <= set(types)
    d = types["latency"].describe()
    assert d["params"]["latency_ms"]["default"] == 100.0 and d["byte_level"] and not d["selector"]


@pytest.mark.parametrize(("spec", "message"), [
    ({}, "no 'type'"),
    ({"type": "nope"}, "unknown fault type 'nope'"),
    ({"type": "drop", "bogus": 1}, "drop: unknown field 'bogus'"),
    ({"type": "drop", "params": {"bogus": 1}}, "drop: unknown parameter(s) ['bogus']"),
    ({"type": "latency", "latency_ms": "x"}, "latency: parameter 'latency_ms' must be a number, got \"x\""),
    ({"type": "latency", "latency_ms": -1}, "latency: parameter 'latency_ms' must be >= 0.0"),
    ({"type": "latency", "latency_ms": 10, "jitter_ms": 20}, "jitter_ms (20.0) must not exceed latency_ms"),
    ({"type": "drop", "direction": "sideways"}, "drop: direction must be one of"),
    ({"type": "drop", "nth": 0}, "drop: selector.nth must be >= 1, got 0"),
    ({"type": "drop", "selector": {"json_typ": "x"}}, "drop: selector: unknown field(s) ['json_typ']"),
    ({"type": "drop", "json_type": "a", "binary_type": 4}, "json_type and binary_type exclude each other"),
    ({"type": "drop", "binary_type": 300}, "selector.binary_type must be 0..255"),
    ({"type": "drop", "probability": 1.5}, "selector.probability must be <= 1.0"),
    ({"type": "drop", "nth": 2, "selector": {"nth": 3}}, "'nth' given both at top level and in selector"),
    ({"type": "reset_peer", "json_type": "x"}, "reset_peer: takes no selector"),
    ({"type": "drop", "toxicity": 2}, "drop: toxicity must be <= 1.0"),
    ({"type": "drop", "count": 0}, "drop: count must be >= 1"),
    ({"type": "drop", "name": "a/b"}, "name must be a non-empty string without '/'"),
    ({"type": "drop", "connections": {"port": 1}}, "drop: connections: unknown field(s) ['port']"),
    ({"type": "drop", "connections": {"client_port": "x"}}, "connections.client_port must be an integer"),
    ({"type": "worker_crash", "connections": {"upstream": 0}}, "worker_crash: takes no 'connections'"),
    ({"type": "down", "connections": {"upstream": 0}}, "down: 'connections.upstream' cannot apply"),
])
def test_bad_specs_are_rejected_with_a_message_naming_the_problem(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(FaultSpecError) as e:
        build_fault(spec)
    assert message in str(e.value)


def test_flat_and_nested_specs_are_the_same_fault() -> None:
    a = build_fault({"type": "drop", "direction": "upstream", "json_type": "client/time", "nth": 2})
    b = build_fault({"type": "drop", "direction": "upstream", "selector": {"json_type": ["client/time"], "nth": 2}})
    assert a.spec() == b.spec()
    lat = build_fault({"type": "latency", "latency_ms": 5, "params": {"jitter_ms": 1}})
    assert (lat.latency_ms, lat.jitter_ms, lat.direction) == (5.0, 1.0, "both")  # type: ignore[attr-defined]
    assert build_fault(lat.spec()).spec() == lat.spec()  # spec() round-trips (PATCH relies on it)


def test_plan_files_toml_and_json(tmp_path: Path) -> None:
    (tmp_path / "plan.toml").write_text('[[fault]]\ntype = "drop"\ndirection = "upstream"\njson_type = "client/time"\n'
                                        '[[fault]]\ntype = "latency"\nlatency_ms = 20\n')
    (tmp_path / "plan.json").write_text(json.dumps([{"type": "reset_peer", "after_s": 1}]))
    assert [f.kind for f in load_plan(tmp_path / "plan.toml")] == ["drop", "latency"]
    assert load_plan(tmp_path / "plan.json")[0].after_s == 1.0  # type: ignore[attr-defined]
    (tmp_path / "bad.json").write_text(json.dumps([{"type": "drop"}, {"type": "latency", "latency_ms": "x"}]))
    with pytest.raises(FaultSpecError, match=r"bad.json: entry 2: latency: parameter 'latency_ms'"):
        load_plan(tmp_path / "bad.json")


# --- drop --------------------------------------------------------------------------------------


def test_drop_every_second_client_time_upstream_and_log_each(run: Any) -> None:
    async def body() -> None:
        async with proxied() as px:
            add(px, {"type": "drop", "direction": "upstream", "json_type": "client/time", "nth": 2})
            reader, writer = await client_connect(px.port)
            for i in range(6):
                writer.write(encode_frame(TEXT, jmsg("client/time", i=i), mask=True))
            writer.write(encode_frame(TEXT, jmsg("client/state", i=99), mask=True))
            tr = await collect(reader, 1, until=lambda t: len(t.frames) >= 4)
            assert sent_values(tr.data()) == [0, 2, 4, 99]
            faults = [e for e in px.events.since(0) if e["event"] == "fault"]
            assert [f["index"] for f in faults] == [1, 3, 5]
            assert all(f["fault"] == "drop" and f["direction"] == "upstream" and f["session"] for f in faults)
            assert faults[0]["selector"] == {"json_type": ["client/time"], "nth": 2}
            assert px.state.faults["drop"].applied == 3
            writer.close()

    run(body(), 20)


def test_drop_binary_type_downstream_leaves_other_messages_byte_identical(run: Any) -> None:
    """Messages the selector rules out at their first frame stream through untouched:
    same fragment sizes, same bytes."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        await read_frame(reader)  # go
        writer.write(encode_frame(BINARY, audio(1)) + encode_frame(BINARY, struct.pack(">Bq", 8, 0) + b"v" * 50))
        writer.write(encode_frame(BINARY, b"F" * 3000, fin=False) + encode_frame(CONT, b"G" * 2000, fin=False)
                     + encode_frame(CONT, b"H" * 10))
        writer.write(encode_frame(TEXT, jmsg("server/state")) + encode_frame(BINARY, audio(2)))
        await writer.drain()
        await collect(reader, 2)

    async def body() -> None:
        async with proxied(script) as px:
            add(px, {"type": "drop", "binary_type": 4})
            reader, writer = await client_connect(px.port)
            writer.write(encode_frame(TEXT, b"go", mask=True))
            tr = await collect(reader, 1, until=lambda t: len(t.frames) >= 5)
            desc = [(f.fin, f.opcode, len(f.payload)) for f in tr.frames]
            assert desc == [(True, BINARY, 59), (False, BINARY, 3000), (False, CONT, 2000), (True, CONT, 10),
                            (True, TEXT, len(jmsg("server/state")))]
            writer.close()

    run(body(), 20)


def test_fault_applies_to_an_existing_connection_and_count_retires_it(run: Any) -> None:
    async def body() -> None:
        async with proxied() as px:
            reader, writer = await client_connect(px.port)
            writer.write(encode_frame(TEXT, jmsg("x", i=0), mask=True))
            assert sent_values((await collect(reader, 1, until=lambda t: len(t.frames) >= 1)).data()) == [0]
            add(px, {"type": "drop", "direction": "downstream", "count": 2})  # added while connected
            for i in range(1, 6):
                writer.write(encode_frame(TEXT, jmsg("x", i=i), mask=True))
            tr = await collect(reader, 1, until=lambda t: len(t.frames) >= 3)
            assert sent_values(tr.data()) == [3, 4, 5]
            await asyncio.sleep(0.05)
            assert "drop" not in px.state.faults  # retired after 2 applications
            removed = [e for e in px.events.since(0) if e["event"] == "fault_removed"]
            assert removed[-1]["why"] == "count" and removed[-1]["applied"] == 2
            writer.close()

    run(body(), 20)


def test_duration_retires_and_toxicity_zero_spares_connections(run: Any) -> None:
    async def body() -> None:
        async with proxied() as px:
            add(px, {"type": "drop", "duration": 0.3})
            add(px, {"type": "reset_peer", "toxicity": 0.0})  # affects no connection at all
            reader, writer = await client_connect(px.port)
            writer.write(encode_frame(TEXT, jmsg("x", i=1), mask=True))
            assert (await collect(reader, 0.2)).frames == []
            await asyncio.sleep(0.2)
            assert list(px.state.faults) == ["reset_peer"]
            writer.write(encode_frame(TEXT, jmsg("x", i=2), mask=True))
            tr = await collect(reader, 1, until=lambda t: len(t.frames) >= 1)
            assert sent_values(tr.data()) == [2]
            writer.close()

    run(body(), 20)


def test_connections_filter_picks_one_client_by_its_port(run: Any) -> None:
    async def body() -> None:
        async with proxied() as px:
            r1, w1 = await client_connect(px.port)
            r2, w2 = await client_connect(px.port)
            port2 = w2.get_extra_info("sockname")[1]
            f = add(px, {"type": "drop", "connections": {"client_port": [port2]}})
            assert f.spec()["connections"] == {"client_port": [port2]}
            for w in (w1, w2):
                w.write(encode_frame(TEXT, jmsg("x", i=1), mask=True))
            assert sent_values((await collect(r1, 1, until=lambda t: bool(t.frames))).data()) == [1]
            assert (await collect(r2, 0.3)).frames == []  # only the chosen client's messages drop
            for w in (w1, w2):
                w.close()

    run(body(), 20)


def test_selector_probability_is_seeded_and_per_connection() -> None:
    """Same seed, same choices on every connection: a run is reproducible."""
    sel = Selector(binary_type=[4, 5], probability=0.5, seed=7)
    picks = []
    for _ in range(2):
        st = sel.new_state()  # one per pipe (connection and direction)
        picks.append([sel.match(st, Msg(BINARY, bytes([4]) + b"x" * 8, i)) for i in range(40)])
    assert picks[0] == picks[1] and 5 < sum(picks[0]) < 35
    assert not sel.match(sel.new_state(), Msg(BINARY, bytes([6]), 0))


# --- latency ------------------------------------------------------------------------------------


def test_latency_delays_each_direction_and_keeps_order(run: Any) -> None:
    async def rtt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> float:
        t0 = time.monotonic()
        writer.write(encode_frame(TEXT, payload, mask=True))
        await asyncio.wait_for(read_frame(reader), 2)
        return time.monotonic() - t0

    def applied(px: Any) -> list[str]:
        return sorted(e["direction"] for e in px.events.since(0) if e["event"] == "fault" and e["type"] == "latency")

    async def body() -> None:
        async with proxied() as px:
            reader, writer = await client_connect(px.port)
            await rtt(reader, writer, b"a")
            f = add(px, {"type": "latency", "latency_ms": 60, "direction": "downstream"})
            one = await rtt(reader, writer, b"b")
            assert applied(px) == ["downstream"]  # once, on the way back only
            px.state.replace_fault(f.name, build_fault({"type": "latency", "latency_ms": 60, "direction": "both"}))
            two = await rtt(reader, writer, b"c")
            assert applied(px) == ["downstream", "downstream", "upstream"]  # once each way
            # a delay is never shorter than asked (how much longer a busy machine makes it is not judged)
            assert one >= 0.06 and two >= 0.12, (one, two)
            px.state.replace_fault(f.name, build_fault({"type": "latency", "latency_ms": 20, "jitter_ms": 20,
                                                        "direction": "both"}))
            for i in range(30):  # jitter never reorders
                writer.write(encode_frame(TEXT, jmsg("x", i=i), mask=True))
            tr = await collect(reader, 2, until=lambda t: len(t.frames) >= 30)
            assert sent_values(tr.data()) == list(range(30))
            ev = [e for e in px.events.since(0) if e["event"] == "fault" and e["type"] == "latency"]
            assert {e["direction"] for e in ev} == {"upstream", "downstream"}
            writer.close()

    run(body(), 20)


def test_latency_removed_flushes_its_queue_and_eof_follows_the_data(run: Any) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        await read_frame(reader)
        writer.write(encode_frame(TEXT, b"last words"))
        writer.write_eof()
        await collect(reader, 3)

    async def body() -> None:
        async with proxied(script) as px:
            add(px, {"type": "latency", "latency_ms": 300, "direction": "downstream", "name": "slow"})
            reader, writer = await client_connect(px.port)
            t0 = time.monotonic()
            writer.write(encode_frame(TEXT, b"go", mask=True))
            tr = await collect(reader, 2)
            assert (tr.data(), tr.end) == ([b"last words"], "eof") and time.monotonic() - t0 >= 0.3
            writer.close()
            # removal: what is queued goes out at once, in order
            reader, writer = await client_connect(px.port, "/echo2")
            writer.write(encode_frame(TEXT, b"go", mask=True))
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            px.state.remove_fault("slow")
            tr = await collect(reader, 1)
            assert tr.data() == [b"last words"] and tr.end == "eof" and time.monotonic() - t0 < 0.1
            writer.close()

    run(body(), 20)


def test_latency_queue_is_bounded_by_holding_the_sender(run: Any) -> None:
    """max_buffer_bytes: the proxy stops reading the sender instead of queueing more."""
    pushed = [0]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        chunk = encode_frame(BINARY, b"z" * 65536)
        try:
            for _ in range(400):  # 26 MiB, far more than the bound + kernel buffers
                writer.write(chunk)
                await writer.drain()
                pushed[0] += len(chunk)
        except ConnectionError:
            pass

    async def body() -> None:
        async with proxied(script) as px:
            add(px, {"type": "latency", "latency_ms": 2000, "max_buffer_bytes": 256 * 1024, "direction": "downstream"})
            _reader, writer = await client_connect(px.port)
            await asyncio.sleep(0.5)
            pipe = px.state.relays()[0].pipes["downstream"]
            assert "latency:latency" in pipe.holds
            assert pushed[0] < 12 * 2**20, f"sender pushed {pushed[0]} bytes into a held proxy"
            writer.close()

    run(body(), 20)


# --- reset_peer ---------------------------------------------------------------------------------


def test_reset_peer_after_a_delay_resets_both_sides(run: Any) -> None:
    ends: list[str] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        ends.append((await collect(reader, 3)).end)

    async def body() -> None:
        async with proxied(script) as px:
            add(px, {"type": "reset_peer", "after_s": 0.2, "direction": "downstream", "count": 1})
            reader, writer = await client_connect(px.port)
            t0 = time.monotonic()
            tr = await collect(reader, 2)
            assert tr.end == "rst" and 0.18 < time.monotonic() - t0 < 0.6
            for _ in range(50):
                if ends:
                    break
                await asyncio.sleep(0.02)
            assert ends == ["rst"]  # the server sees the path die too
            ev = [e for e in px.events.since(0) if e["event"] == "fault"]
            assert ev[0]["side"] == "client" and ev[0]["params"] == {"after_s": 0.2}
            await asyncio.sleep(0.05)
            assert not px.state.faults  # count=1: retired
            reader, writer = await client_connect(px.port)  # the next connection is left alone
            assert (await collect(reader, 0.4)).end == "timeout"
            writer.close()

    run(body(), 20)


def test_reset_peer_added_to_live_connections_resets_them_now(run: Any) -> None:
    async def body() -> None:
        async with proxied() as px:
            conns = [await client_connect(px.port) for _ in range(3)]
            await asyncio.sleep(0.05)
            add(px, {"type": "reset_peer"})
            ends = [(await collect(r, 1)).end for r, _ in conns]
            assert ends == ["rst", "rst", "rst"]
            for _, w in conns:
                w.close()

    run(body(), 20)


def test_relay_close_with_code_reaches_both_peers(run: Any) -> None:
    """The core's close_with_code (used by close faults): a close frame to each side,
    masked towards the server, never inside a frame."""
    seen: list[Any] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        tr = await collect(reader, 3, stop_after_close=True)
        seen.append([(f.close_code, f.close_reason, f.masked) for f in tr.frames if f.opcode == CLOSE])
        writer.write(encode_frame(CLOSE, b"\x0f\xa1"))

    async def body() -> None:
        async with proxied(script) as px:
            reader, writer = await client_connect(px.port)
            await asyncio.sleep(0.05)
            px.state.relays()[0].close_with_code(4001, "proxy says bye", grace_s=0.5)
            tr = await collect(reader, 2)
            assert [(f.close_code, f.close_reason) for f in tr.frames] == [(4001, "proxy says bye")]
            assert tr.end == "eof"
            await asyncio.sleep(0.1)
            assert seen == [[(4001, "proxy says bye", True)]]
            writer.close()

    run(body(), 20)


def test_a_fault_that_raises_resets_the_connection_and_says_why(run: Any) -> None:
    class BrokenState(FaultState["Broken"]):
        def on_message(self, msg: Any) -> Any:
            raise ValueError("bug in a fault")

    class Broken(Fault):  # no `kind`: not registered
        needs_messages = True
        State = BrokenState

    async def body() -> None:
        async with proxied() as px:
            px.state.add_fault(Broken(name="broken", direction="upstream"))
            reader, writer = await client_connect(px.port)
            writer.write(encode_frame(TEXT, b"x", mask=True))
            assert (await collect(reader, 2)).end == "rst"
            errors = [e for e in px.events.since(0) if e["event"] == "error"]
            assert errors and "bug in a fault" in errors[0]["error"]
            writer.close()

    run(body(), 20)


def test_faults_reach_the_relay_only_through_its_connection_interface() -> None:
    """proxy/faults/ imports from proxy/relay/ only connection.py (Connection, Channel) and
    message.py (Msg), and touches no relay internals (the relay, its sockets, its pipes)."""
    import ast

    import proxy.faults

    root = Path(proxy.faults.__file__).parent
    allowed = {"proxy.relay.connection", "proxy.relay.message"}
    internals = {"relay", "_relay", "_pipe", "pipes", "tr", "ended"}
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = ("proxy." + (node.module or "")) if node.level == 2 else (node.module or "")
                if module.startswith("proxy.relay") and module not in allowed:
                    found.append(f"{path.name}:{node.lineno} imports {module}")
            elif isinstance(node, ast.Attribute) and node.attr in internals:
                found.append(f"{path.name}:{node.lineno} uses .{node.attr}")
    assert found == []
