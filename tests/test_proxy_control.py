"""The control API and the CLI against a real `sendspin-proxy` process (spawned like
any harness process, readiness file and all), over real HTTP and WebSocket sockets."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from proxy_support import BINARY, CONT, TEXT, RawUpstream, client_connect, collect, echo, encode_frame, read_frame

from harness.topology import ManagedProcess, StartupError, spawn


def proxy_argv(upstream: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream,
            "--health-interval", "0", *extra]


@asynccontextmanager
async def running_proxy(tmp_path: Path, *extra: str, script: Any = echo) -> AsyncIterator[tuple[ManagedProcess, str]]:
    """An echo upstream in this loop, the proxy as its own process in front of it."""
    async with RawUpstream(script) as up:
        px = await asyncio.to_thread(spawn, "proxy", proxy_argv(f"ws://127.0.0.1:{up.port}", "--log-dir",
                                                                  str(tmp_path), *extra), tmp_path)
        try:
            yield px, px.ready["control"]["url"]
        finally:
            code = await asyncio.to_thread(px.stop)
            assert code == 0, px.stderr_path.read_text()


async def api(method: str, url: str, body: Any = None, raw: str | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with s.request(method, url, data=data) as r:
            return r.status, await r.json()


def test_readiness_file_and_clean_sigterm_with_a_live_connection(run: Any, tmp_path: Path) -> None:
    async def body() -> None:
        async with RawUpstream(echo) as up:
            px = await asyncio.to_thread(spawn, "proxy", proxy_argv(f"ws://127.0.0.1:{up.port}", "--log-dir",
                                                                      str(tmp_path)), tmp_path)
            r = px.ready
            assert r["pid"] == px.pid and r["listen"]["host"] == "127.0.0.1" and r["listen"]["port"] > 0
            assert r["listen"]["url"] == f"ws://127.0.0.1:{r['listen']['port']}"
            assert r["control"]["url"].startswith("http://127.0.0.1:")
            assert r["upstreams"] == [f"ws://127.0.0.1:{up.port}"]
            reader, writer = await client_connect(r["listen"]["port"])
            writer.write(encode_frame(TEXT, b"hi", mask=True))
            assert (await asyncio.wait_for(read_frame(reader), 2)).payload == b"hi"
            px.popen.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(px.popen.wait, 5) == 0
            assert (await collect(reader, 2)).end in ("eof", "rst")  # the live connection was closed
            writer.close()
            assert px.stderr_path.read_text() == ""
            log = [json.loads(ln)["event"] for ln in (tmp_path / "proxy.jsonl").read_text().splitlines()]
            assert log[0] == "ready" and log[-1] == "stopped" and "close" in log
            # SIGINT is a clean stop too
            px2 = await asyncio.to_thread(spawn, "proxy2", proxy_argv(f"ws://127.0.0.1:{up.port}"), tmp_path)
            px2.popen.send_signal(signal.SIGINT)
            assert await asyncio.to_thread(px2.popen.wait, 5) == 0

    run(body(), 30)


def test_fault_crud_and_errors(run: Any, tmp_path: Path) -> None:
    async def body() -> None:
        async with running_proxy(tmp_path) as (_, ctl):
            assert await api("GET", f"{ctl}/faults") == (200, {"faults": []})
            st, r = await api("POST", f"{ctl}/faults", {"type": "drop", "direction": "upstream",
                                                        "json_type": "client/time", "nth": 2})
            assert st == 201 and r["fault"]["name"] == "drop" and r["fault"]["selector"]["nth"] == 2
            st, r = await api("POST", f"{ctl}/faults", {"type": "drop"})
            assert st == 201 and r["fault"]["name"] == "drop-2"  # unnamed: numbered
            st, r = await api("PATCH", f"{ctl}/faults/drop", {"nth": 3, "probability": 0.5})
            assert st == 200 and r["fault"]["selector"] == {"json_type": ["client/time"], "nth": 3,
                                                            "probability": 0.5}
            st, r = await api("GET", f"{ctl}/faults/drop")
            assert st == 200 and r["fault"]["direction"] == "upstream"
            st, r = await api("DELETE", f"{ctl}/faults/drop-2")
            assert (st, r["removed"]) == (200, "drop-2")
            st, types = await api("GET", f"{ctl}/fault-types")
            assert {"drop", "latency", "reset_peer"} <= set(types["types"])
            # errors name what was wrong
            cases = [
                ({"type": "nope"}, 400, "unknown fault type 'nope'"),
                ({"type": "latency", "latency_ms": "soon"}, 400, "latency: parameter 'latency_ms' must be a number"),
                ({"type": "drop", "selector": {"nht": 2}}, 400, "selector: unknown field(s) ['nht']"),
                ({"type": "drop", "name": "drop"}, 409, "a fault named 'drop' exists already"),
                ([{"type": "drop", "name": "ok"}, {"type": "drop", "nth": -1}], 400, "entry 2: drop: selector.nth"),
            ]
            for spec, want_status, want in cases:
                st, r = await api("POST", f"{ctl}/faults", spec)
                assert st == want_status and want in r["error"], (spec, st, r)
            assert "ok" not in [f["name"] for f in (await api("GET", f"{ctl}/faults"))[1]["faults"]]
            st, r = await api("POST", f"{ctl}/faults", raw="{not json")
            assert st == 400 and "body is not valid JSON" in r["error"]
            st, r = await api("PATCH", f"{ctl}/faults/drop", {"type": "latency"})
            assert st == 400 and "type cannot change" in r["error"]
            st, r = await api("GET", f"{ctl}/faults/ghost")
            assert st == 404 and "no fault named 'ghost'" in r["error"]
            st, r = await api("POST", f"{ctl}/reset")
            assert (st, r["removed"]) == (200, ["drop"])
            assert (await api("GET", f"{ctl}/faults"))[1] == {"faults": []}

    run(body(), 30)


def test_faults_hit_existing_connections_and_reset_makes_it_transparent(run: Any, tmp_path: Path) -> None:
    async def body() -> None:
        async with running_proxy(tmp_path) as (px, ctl):
            reader, writer = await client_connect(px.ready["listen"]["port"], "/sendspin")

            async def roundtrip(payload: bytes) -> list[bytes]:
                writer.write(encode_frame(TEXT, payload, mask=True))
                return (await collect(reader, 0.3, until=lambda t: len(t.frames) >= 1)).data()

            assert await roundtrip(b"one") == [b"one"]
            st, _ = await api("POST", f"{ctl}/faults", {"type": "drop", "direction": "downstream"})
            assert st == 201
            assert await roundtrip(b"two") == []  # the connection existed before the fault
            st, conns = await api("GET", f"{ctl}/connections")
            (c,) = conns["connections"]
            assert c["path"] == "/sendspin" and c["downstream"]["faults"] == ["drop"]
            assert (c["upstream"]["messages"], c["downstream"]["messages"]) == (2, 2)
            assert c["upstream"]["bytes"] == 2 * (6 + 3) and c["downstream"]["bytes_out"] == 2 + 3
            assert (await api("POST", f"{ctl}/reset"))[0] == 200
            assert await roundtrip(b"three") == [b"three"]
            st, ev = await api("GET", f"{ctl}/events?since=0&event=fault")
            assert [e["fault"] for e in ev["events"]] == ["drop"] and ev["events"][0]["session"] == c["id"]
            last = ev["last"]
            st, ev = await api("GET", f"{ctl}/events?since={last}")
            assert ev["events"] == []
            st, ev = await api("GET", f"{ctl}/events?since=x")
            assert st == 400 and "since and limit must be integers" in ev["error"]
            st, ups = await api("GET", f"{ctl}/upstreams")
            assert ups["upstreams"][0]["active"] == 1 and ups["upstreams"][0]["total"] == 1
            st, r = await api("PATCH", f"{ctl}/upstreams/0", {"pid": 4242})
            assert st == 200 and r["upstream"]["pid"] == 4242
            st, r = await api("PATCH", f"{ctl}/upstreams/7", {"pid": 1})
            assert st == 404
            writer.close()

    run(body(), 30)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=20)


def test_cli_subcommands_and_plan_file(run: Any, tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text('[[fault]]\ntype = "latency"\nname = "lag"\nlatency_ms = 5\ndirection = "downstream"\n')

    async def body() -> None:
        async with running_proxy(tmp_path, "--plan", str(plan)) as (_, ctl):
            r = await asyncio.to_thread(cli, "fault", "list", "--control", ctl, "--json")
            assert r.returncode == 0 and [f["name"] for f in json.loads(r.stdout)["faults"]] == ["lag"]
            r = await asyncio.to_thread(cli, "--json", "fault", "add", "drop", "--direction", "upstream", "--json-type",
                                        "client/time", "--nth", "2", "--name", "tdrop", "--control", ctl)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["fault"]["selector"] == {"json_type": ["client/time"], "nth": 2}
            r = await asyncio.to_thread(cli, "fault", "update", "lag", "latency_ms=7", "--control", ctl, "--json")
            assert r.returncode == 0 and json.loads(r.stdout)["fault"]["params"]["latency_ms"] == 7.0
            r = await asyncio.to_thread(cli, "--control", ctl, "fault", "add", "latency", "latency_ms=soon")
            assert r.returncode == 1 and "400: latency: parameter 'latency_ms' must be a number" in r.stderr
            r = await asyncio.to_thread(cli, "fault", "add", "delay", "--count", "1", "delay_ms=150",
                                        "--client-port", "5555", "--on-upstream", "0", "--control", ctl, "--json")
            assert r.returncode == 0, r.stderr  # KEY=VALUE after the flags, connections from flags
            f = json.loads(r.stdout)["fault"]
            assert f["params"]["delay_ms"] == 150.0 and f["connections"] == {"client_port": [5555], "upstream": [0]}
            r = await asyncio.to_thread(cli, "fault", "add", "delay", "--count", "1", "oops", "--control", ctl)
            assert r.returncode == 2 and "unrecognized arguments: oops" in r.stderr
            r = await asyncio.to_thread(cli, "fault", "remove", "tdrop", "--control", ctl, "--json")
            assert r.returncode == 0 and json.loads(r.stdout) == {"removed": ["tdrop"]}
            r = await asyncio.to_thread(cli, "fault", "reset", "--control", ctl, "--json")
            assert r.returncode == 0 and sorted(json.loads(r.stdout)["removed"]) == ["delay", "lag"]
            r = await asyncio.to_thread(cli, "upstreams", "--control", ctl, "--json")
            assert r.returncode == 0 and len(json.loads(r.stdout)["upstreams"]) == 1
        r = await asyncio.to_thread(cli, "fault", "list", "--control", ctl)  # the proxy is gone now
        assert r.returncode == 1 and "cannot reach the control API" in r.stderr

    run(body(), 40)


def test_bad_plan_file_stops_the_start_with_its_reason(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"type": "drop"}, {"type": "drop", "nth": "every"}]))
    with pytest.raises(StartupError, match=r"plan .*plan.json: entry 2: drop: selector.nth must be an integer"):
        spawn("proxy", proxy_argv("ws://127.0.0.1:9", "--plan", str(plan)), tmp_path, timeout=10)


Row = dict[str, list[str]]


def parse_table(text: str) -> list[Row]:
    """A table the CLI printed, read back: columns are what is separated by two or more
    blank positions on every line (so it fails unless the columns are aligned); a row whose
    first cell is empty continues the one above (a cell of several lines). Notes after
    the table's blank line are not part of it."""
    lines = text.split("\n\n")[0].splitlines()
    width = max(map(len, lines))
    blank = [all(p >= len(ln) or ln[p] == " " for ln in lines) for p in range(width)] + [True, True]
    spans, start = [], 0
    for p in range(width + 1):
        if blank[p] and blank[p + 1] and start is not None and p > start:
            spans.append((start, p))
            start = None
        elif not blank[p] and start is None:
            start = p
    header = [lines[0][a:b].strip() for a, b in spans]
    rows: list[Row] = []
    for ln in lines[1:]:
        cells = [ln[a:b].strip() for a, b in spans]
        if cells[0]:
            rows.append({h: [c] if c else [] for h, c in zip(header, cells, strict=True)})
        else:
            for h, c in zip(header, cells, strict=True):
                if c:
                    rows[-1][h].append(c)
    assert rows and all(set(r) == set(header) for r in rows), text
    return rows


def test_cli_prints_tables_for_people_and_the_api_json_with_json(run: Any, tmp_path: Path) -> None:
    """`fault types`, `fault list`, `connections`, `upstreams`, `events` against a proxy with
    three faults and a live connection: aligned tables whose cells say what the API says;
    `--json` prints exactly the API's answer."""
    async def sh(*args: str) -> str:
        r = await asyncio.to_thread(cli, *args)
        assert r.returncode == 0, (args, r.stderr)
        return r.stdout

    async def body() -> None:
        async with running_proxy(tmp_path) as (px, ctl):
            added = await sh("fault", "add", "slicer", "frame_bytes=500", "--name", "slice", "--control", ctl)
            (row,) = parse_table(added)  # `add` shows the new fault as `fault list` does
            assert (row["NAME"], row["TYPE"], row["APPLIED"]) == (["slice"], ["slicer"], ["0"])
            await sh("fault", "add", "drop", "--json-type", "client/time", "--nth", "2", "--count", "5",
                     "--direction", "upstream", "--control", ctl)
            await sh("fault", "add", "latency", "latency_ms=5", "--duration", "600", "--control", ctl)
            reader, writer = await client_connect(px.ready["listen"]["port"], "/sendspin")
            try:
                for i in range(4):  # the 2nd and 4th are dropped on the way up
                    writer.write(encode_frame(TEXT, json.dumps({"type": "client/time", "payload": {
                        "client_transmitted": i}}).encode(), mask=True))
                writer.write(encode_frame(BINARY, bytes(1200), mask=True))  # echoed in 3 slices
                tr = await collect(reader, 5, until=lambda t: sum(f.fin for f in t.frames) >= 3)
                assert [(f.opcode, len(f.payload)) for f in tr.frames if f.opcode in (BINARY, CONT)] == [
                    (BINARY, 500), (CONT, 500), (CONT, 200)], tr.frames
                await check_tables(sh, ctl)
            finally:
                writer.close()
            assert await sh("fault", "remove", "slice", "--control", ctl) == "removed slice (applied 3×)\n"
            assert await sh("fault", "reset", "--control", ctl) == "removed 2 fault(s): drop, latency\n"
            assert (await sh("fault", "list", "--control", ctl)).startswith("no faults")
            r = await asyncio.to_thread(cli, "fault", "types", "nope", "--control", ctl)
            assert r.returncode == 2 and "unknown fault type 'nope' (known: bandwidth, close," in r.stderr

    run(body(), 90)


async def check_tables(sh: Any, ctl: str) -> None:
    # fault types: every type of the catalogue, its default direction, a short line, its parameters
    _, api_types = await api("GET", f"{ctl}/fault-types")
    assert json.loads(await sh("fault", "types", "--json", "--control", ctl)) == api_types
    rows = parse_table(await sh("fault", "types", "--control", ctl))
    assert list(rows[0]) == ["TYPE", "DIRECTION", "ACTS ON", "MODES", "WHAT IT DOES", "PARAMETERS (default)"]
    by_type = {r["TYPE"][0]: r for r in rows}
    assert list(by_type) == list(api_types["types"])
    for name, t in api_types["types"].items():
        r = by_type[name]
        assert r["DIRECTION"] == [t["default_direction"]] and len(r["WHAT IT DOES"]) == 1
        assert 10 <= len(r["WHAT IT DOES"][0]) <= 52, r
        assert [p.split("=")[0].split(" ")[0] for p in r["PARAMETERS (default)"]] == (list(t["params"]) or ["-"])
    assert by_type["slicer"]["PARAMETERS (default)"] == ["frame_bytes=1024", "variation_bytes=0", "seed=0"]
    assert by_type["slicer"]["ACTS ON"] == ["selected msgs"] and by_type["latency"]["ACTS ON"] == ["every byte"]
    assert by_type["bandwidth"]["PARAMETERS (default)"] == ["rate_bps (required)", "max_buffer_bytes=null"]
    assert by_type["down"]["PARAMETERS (default)"] == ["existing=keep (keep|reset)"]
    one = await sh("fault", "types", "slicer", "--control", ctl)
    assert one.startswith("slicer: ") and "Re-send each selected data message" in one
    assert parse_table(one.split("\n\n", 2)[2])[0] == {"PARAMETER": ["frame_bytes"], "TYPE": ["integer"],
                                                         "DEFAULT": ["1024"], "ALLOWED": [">= 1"],
                                                         "WHAT": ["payload bytes per fragment"]}
    assert json.loads(await sh("fault", "types", "slicer", "--json", "--control", ctl)) == api_types["types"]["slicer"]

    # fault list: what each fault does, how often it acted, how long it has left
    _, api_faults = await api("GET", f"{ctl}/faults")
    assert json.loads(await sh("--json", "fault", "list", "--control", ctl)) == api_faults
    rows = parse_table(await sh("fault", "list", "--control", ctl))
    assert list(rows[0]) == ["NAME", "TYPE", "DIRECTION", "SELECTOR", "PARAMETERS", "APPLIED", "REMAINING"]
    slice_, drop, latency = rows
    assert slice_ == {"NAME": ["slice"], "TYPE": ["slicer"], "DIRECTION": ["downstream s→c"], "SELECTOR": ["all"],
                      "PARAMETERS": ["frame_bytes=500", "variation_bytes=0", "seed=0"], "APPLIED": ["3"],
                      "REMAINING": ["until removed"]}
    assert drop == {"NAME": ["drop"], "TYPE": ["drop"], "DIRECTION": ["upstream c→s"],
                    "SELECTOR": ["json_type=client/time", "nth=2"], "PARAMETERS": ["-"], "APPLIED": ["2"],
                    "REMAINING": ["3 of 5 times"]}
    assert latency["DIRECTION"] == ["both c↔s"] and latency["PARAMETERS"][0] == "latency_ms=5.0"
    assert re.fullmatch(r"(9 min \d+ s|10 min) of 10 min", latency["REMAINING"][0]), latency
    assert [f["applied"] for f in api_faults["faults"]] == [3, 2, 2]  # the latency once per direction

    # connections: the live one, its traffic per direction and the faults on each
    _, api_conns = await api("GET", f"{ctl}/connections")
    cli_conns = json.loads(await sh("connections", "--json", "--control", ctl))
    for answer in (api_conns, cli_conns):  # the age moves on between the two calls
        for c in answer["connections"]:
            c.pop("seconds")
    assert cli_conns == api_conns
    (c,) = api_conns["connections"]
    (row,) = parse_table(await sh("connections", "--control", ctl))
    assert {k: row[k] for k in ("#", "ID", "CLIENT PORT", "UPSTREAM", "PATH", "STATE")} == {
        "#": ["#1"], "ID": [c["id"][:8]], "CLIENT PORT": [str(c["client_port"])],
        "UPSTREAM": [f"0 {c['upstream_url']}"], "PATH": ["/sendspin"], "STATE": ["open"]}
    assert row["C→S"][0].startswith("5 msgs ") and row["S→C"][0].startswith("3 msgs ")
    assert row["FAULTS"] == ["c→s drop, latency", "s→c slice, latency"]

    # upstreams
    _, api_ups = await api("GET", f"{ctl}/upstreams")
    assert json.loads(await sh("upstreams", "--json", "--control", ctl)) == api_ups
    (row,) = parse_table(await sh("upstreams", "--control", ctl))
    assert row == {"#": ["0"], "URL": [api_ups["upstreams"][0]["url"]], "STATE": ["up"], "ACTIVE": ["1"],
                   "TOTAL": ["1"], "FAILURES": ["0"], "PID": ["-"], "LAST ERROR": ["-"]}

    # events: one line each, faults and specs in words
    cli_events = json.loads(await sh("events", "--event", "fault_added", "--json", "--control", ctl))
    _, api_events = await api("GET", f"{ctl}/events?event=fault_added")
    assert cli_events["events"] == api_events["events"] and cli_events["last"] <= api_events["last"]
    text = await sh("events", "--event", "fault_added", "--control", ctl)
    assert [(r["EVENT"], r["CONN"], r["DETAILS"]) for r in parse_table(text)] == [
        (["fault_added"], ["-"], ["slice (slicer) s→c frame_bytes=500 variation_bytes=0 seed=0"]),
        (["fault_added"], ["-"], ["drop c→s json_type=client/time nth=2 count=5"]),
        (["fault_added"], ["-"], ["latency c↔s latency_ms=5.0 jitter_ms=0.0 max_buffer_bytes=4194304 seed=0 "
                                  "duration=600.0"])]
    assert re.search(r"\n\nlast seq \d+: `events --since \d+` shows only what comes next\n$", text), text
    rows = parse_table(await sh("events", "--event", "fault", "--limit", "3", "--control", ctl))
    assert len(rows) == 3 and all(r["CONN"] == [c["id"][:8]] for r in rows)
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", r["TIME"][0]) for r in rows)
    drops = parse_table(await sh("events", "--event", "fault", "--control", ctl))
    assert [r["DETAILS"] for r in drops if "drop" in r["DETAILS"][0]] == [["c→s drop client/time 61 B"]] * 2


def test_the_event_ring_numbers_every_event_so_since_never_skips_one() -> None:
    from proxy.state import EventSink

    sink = EventSink(None)
    sink.emit("accept", session="a", client="127.0.0.1:1", conn_seq=5)
    sink.emit("relay", session="a", path="/sendspin", upstream=0)
    assert [e["seq"] for e in sink.since(0)] == [1, 2]
    assert [e["event"] for e in sink.since(1)] == ["relay"]
    assert sink.since(0)[0]["conn_seq"] == 5
