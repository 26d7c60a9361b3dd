"""The control API and the CLI against a real `sendspin-proxy` process (spawned like
any harness process, readiness file and all), over real HTTP and WebSocket sockets."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from proxy_support import TEXT, RawUpstream, client_connect, collect, echo, encode_frame, read_frame

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


def test_cli_subcommands_and_plan_file(run: Any, tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text('[[fault]]\ntype = "latency"\nname = "lag"\nlatency_ms = 5\ndirection = "downstream"\n')

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=20)

    async def body() -> None:
        async with running_proxy(tmp_path, "--plan", str(plan)) as (_, ctl):
            r = await asyncio.to_thread(cli, "fault", "list", "--control", ctl)
            assert r.returncode == 0 and [f["name"] for f in json.loads(r.stdout)["faults"]] == ["lag"]
            r = await asyncio.to_thread(cli, "fault", "add", "drop", "--direction", "upstream", "--json-type",
                                        "client/time", "--nth", "2", "--name", "tdrop", "--control", ctl)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["fault"]["selector"] == {"json_type": ["client/time"], "nth": 2}
            r = await asyncio.to_thread(cli, "fault", "update", "lag", "latency_ms=7", "--control", ctl)
            assert r.returncode == 0 and json.loads(r.stdout)["fault"]["params"]["latency_ms"] == 7.0
            r = await asyncio.to_thread(cli, "--control", ctl, "fault", "add", "latency", "latency_ms=soon")
            assert r.returncode == 1 and "400: latency: parameter 'latency_ms' must be a number" in r.stderr
            r = await asyncio.to_thread(cli, "fault", "add", "delay", "--count", "1", "delay_ms=150",
                                        "--client-port", "5555", "--on-upstream", "0", "--control", ctl)
            assert r.returncode == 0, r.stderr  # KEY=VALUE after the flags, connections from flags
            f = json.loads(r.stdout)["fault"]
            assert f["params"]["delay_ms"] == 150.0 and f["connections"] == {"client_port": [5555], "upstream": [0]}
            r = await asyncio.to_thread(cli, "fault", "add", "delay", "--count", "1", "oops", "--control", ctl)
            assert r.returncode == 2 and "unrecognized arguments: oops" in r.stderr
            r = await asyncio.to_thread(cli, "fault", "remove", "tdrop", "--control", ctl)
            assert r.returncode == 0 and json.loads(r.stdout) == {"removed": ["tdrop"]}
            r = await asyncio.to_thread(cli, "fault", "reset", "--control", ctl)
            assert r.returncode == 0 and sorted(json.loads(r.stdout)["removed"]) == ["delay", "lag"]
            r = await asyncio.to_thread(cli, "upstreams", "--control", ctl)
            assert r.returncode == 0 and len(json.loads(r.stdout)["upstreams"]) == 1
        r = await asyncio.to_thread(cli, "fault", "list", "--control", ctl)  # the proxy is gone now
        assert r.returncode == 1 and "cannot reach the control API" in r.stderr

    run(body(), 40)


def test_bad_plan_file_stops_the_start_with_its_reason(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"type": "drop"}, {"type": "drop", "nth": "every"}]))
    with pytest.raises(StartupError, match=r"plan .*plan.json: entry 2: drop: selector.nth must be an integer"):
        spawn("proxy", proxy_argv("ws://127.0.0.1:9", "--plan", str(plan)), tmp_path, timeout=10)
