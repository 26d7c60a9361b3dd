"""The multi-worker reference server: coordinator, workers, crash handling."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.checkers import crash_detected, healthy_players, require, streams_again
from harness.events import Events
from harness.probe import ProbeConfig
from harness.protocol import now_us
from harness.scenario import Scenario
from harness.settings import DEFAULT_BOUNDS as BOUNDS
from harness.topology import STARTUP_TIMEOUT_S, StartupClock, reference_server

HEARTBEAT_TIMEOUT_S = 0.5



def _status(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/status", timeout=5) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        return json.loads(r.read())


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_workers_must_be_a_positive_integer(value: str) -> None:
    result = subprocess.run([sys.executable, "-m", "reference_server", "--workers", value], capture_output=True,
                            text=True, timeout=20)
    assert result.returncode == 2
    assert "--workers" in result.stderr


def test_sigkill_is_noticed_and_clients_move_to_a_live_worker(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--workers", "2")
            workers = server.ready["workers"]
            start = now_us()
            survivors = [await sc.probe(workers[0]["url"], ProbeConfig(name=f"a{i}")) for i in range(2)]
            movers = [await sc.probe(workers[1]["url"], ProbeConfig(name=f"b{i}", reconnect=True)) for i in range(2)]
            for p in movers:
                p.url = server.ready["url"]  # reconnect through the coordinator, which redirects
            await asyncio.sleep(1.5)
            killed = now_us()
            os.kill(workers[1]["pid"], signal.SIGKILL)
            await _until(lambda: all(p.audio_chunks and p.connected_url == workers[0]["url"] for p in movers), 10,
                         "the moved clients to stream from worker 0")
            await asyncio.sleep(2.0)
            end = now_us()
            status = await asyncio.to_thread(_status, server.ready["http"])
            assert [w["alive"] for w in status["workers"]] == [True, False]
            assert status["listeners"] == 4 and status["workers"][0]["listeners"] == 4
            worker_status = await asyncio.to_thread(_status, workers[0]["url"].replace("ws://", "http://")
                                                    .removesuffix("/sendspin"))
            assert worker_status["live_workers"] == 1 and worker_status["this_worker"]["listeners"] == 4
            events = sc.events()
            require(crash_detected(events, 1, killed, BOUNDS.crash_detect_us),
                    *(streams_again(events, p.name, killed, BOUNDS.recovery_us) for p in movers),
                    *healthy_players(events, survivors, BOUNDS, start, end, fault_us=killed))
            assert not _alive(workers[1]["pid"])

    run(body())


def test_sigkill_is_noticed_without_clients(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--workers", "2")
            await asyncio.sleep(0.3)
            killed = now_us()
            os.kill(server.ready["workers"][0]["pid"], signal.SIGKILL)
            await asyncio.sleep(0.5)
            require(crash_detected(sc.events(), 0, killed, BOUNDS.crash_detect_us))

    run(body())


def test_stopped_worker_is_declared_dead_and_others_unaffected(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--workers", "2", "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT_S))
            workers = server.ready["workers"]
            start = now_us()
            healthy = [await sc.probe(workers[0]["url"], ProbeConfig(name="a"))]
            await sc.probe(workers[1]["url"], ProbeConfig(name="frozen"))
            await asyncio.sleep(1.5)
            stopped = now_us()
            os.kill(workers[1]["pid"], signal.SIGSTOP)
            await asyncio.sleep(HEARTBEAT_TIMEOUT_S + 1.5)
            end = now_us()
            events = sc.events()
            within = int(HEARTBEAT_TIMEOUT_S * 1e6) + BOUNDS.hang_detect_slack_us
            require(crash_detected(events, 1, stopped, within),
                    *healthy_players(events, healthy, BOUNDS, start, end, fault_us=stopped))
            assert "no heartbeat" in events.select("worker_exit")[0]["how"]
            assert not _alive(workers[1]["pid"]), "a hung worker must be killed, not left stopped"

    run(body())


def test_a_running_but_silent_worker_is_kept_until_the_stall_timeout(run, tmp_path: Path) -> None:
    """A heartbeat timeout shorter than the heartbeat period makes every worker "silent"
    all the time, as an overloaded one is: running workers stay, a stopped one goes."""
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--workers", "2", "--heartbeat-timeout", "0.05", "--stall-timeout", "30")
            workers = server.ready["workers"]
            start = now_us()
            players = [await sc.probe(w["url"], ProbeConfig(name=f"p{w['worker']}")) for w in workers]
            await asyncio.sleep(2.0)
            assert _status(server.ready["http"])["live_workers"] == 2
            assert not sc.events().select("worker_exit"), "a running worker was declared dead"
            stopped = now_us()
            os.kill(workers[1]["pid"], signal.SIGSTOP)
            await asyncio.sleep(1.0)
            end = now_us()
            events = sc.events()
            require(crash_detected(events, 1, stopped, 50_000 + BOUNDS.hang_detect_slack_us),
                    *healthy_players(events, players[:1], BOUNDS, start, end, fault_us=stopped))
            assert "stopped" in events.select("worker_exit")[0]["how"]

    run(body())


def test_respawn_restores_capacity_on_the_same_port(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--workers", "2", "--respawn")
            old = server.ready["workers"][1]
            killed = now_us()
            os.kill(old["pid"], signal.SIGKILL)

            def back() -> bool:
                w = _status(server.ready["http"])["workers"][1]
                return w["alive"] and w["pid"] != old["pid"]

            # a worker's start is a process start: it gets what every start gets; how fast
            # a respawn is on an idle machine is bench/multiworker.py's figure
            clock = StartupClock(server, STARTUP_TIMEOUT_S)  # the new worker is in the server's group
            while not await asyncio.to_thread(back):
                assert not clock.expired(), f"capacity not back {clock}"
                await asyncio.sleep(0.05)
            restored_s = (now_us() - killed) / 1e6
            new = (await asyncio.to_thread(_status, server.ready["http"]))["workers"][1]
            assert new["port"] == old["port"] and new["restarts"] == 1
            p = await sc.probe(new["url"], ProbeConfig(name="after"))
            await _until(lambda: p.audio_chunks > 10, 5, "audio from the respawned worker")
            print(f"capacity back after {restored_s:.2f} s")

    run(body())


def test_all_workers_dead_exits_nonzero_at_once(tmp_path: Path) -> None:
    server = reference_server(tmp_path, "--workers", "2")
    with server:
        for w in server.ready["workers"]:
            os.kill(w["pid"], signal.SIGKILL)
        assert server.exits_within(5), "the coordinator outlived its workers"
        assert server.reap() == 3
    assert "all 2 workers are dead" in server.stderr_path.read_text()
    # at once: seen through the process (its pidfd, its socket's EOF), not by missing heartbeats
    hows = [r["how"] for r in Events.load(tmp_path).select("worker_exit")]
    assert len(hows) == 2 and set(hows) <= {"process exit", "ipc eof"}, hows


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_everything_down(tmp_path: Path, sig: signal.Signals) -> None:
    server = reference_server(tmp_path, "--workers", "3")
    pids = [w["pid"] for w in server.ready["workers"]]
    with server:
        server.send_signal(sig)
        assert server.exits_within(10), f"no exit after {sig.name}"
        assert server.reap() == 0
    assert not any(_alive(pid) for pid in pids)
    stops = Events.load(tmp_path).select("worker_stop")
    assert sorted(r["worker"] for r in stops) == [0, 1, 2] and all(r["code"] == 0 for r in stops)


def test_shutdown_with_a_stopped_worker_and_one_dead_mid_send(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--workers", "3", "--artwork-bytes", str(32 * 1024 * 1024))
            workers = server.ready["workers"]
            await sc.probe(workers[0]["url"], ProbeConfig(name="bulk", roles=["artwork@v1"], rcvbuf=16384,
                                                          read_rate=1024 * 1024))
            await asyncio.sleep(0.5)  # mid-send: 32 MiB at 1 MiB/s
            os.kill(workers[0]["pid"], signal.SIGKILL)
            os.kill(workers[1]["pid"], signal.SIGSTOP)
            await asyncio.sleep(0.2)
            server.send_signal(signal.SIGTERM)
            assert await server.aexits_within(5), "shutdown hung on the stopped worker"
            assert server.reap() == 0
            assert not any(_alive(w["pid"]) for w in workers)

    run(body())


def test_generation_pauses_without_listeners_and_resumes(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--workers", "2")
            url = server.ready["workers"][1]["url"]
            first = await sc.probe(url, ProbeConfig(name="first"))
            await _until(lambda: first.audio_chunks > 5, 5, "audio")
            await first.close()
            await asyncio.sleep(0.5)
            events = sc.events()
            assert events.select("timeline_stop", proc="coordinator"), "generation did not pause"
            assert not (await asyncio.to_thread(_status, server.ready["http"]))["playing"]
            second = await sc.probe(url, ProbeConfig(name="second"))
            # the worker first sends what it still holds of the paused timeline (up to its lead
            # ahead): wait for the resumed one, never assume which comes first on a busy machine
            await _until(lambda: len(sc.events().select("timeline_start", proc="coordinator")) == 2, 5,
                         "generation to resume")
            resumed_us = sc.events().select("timeline_start", proc="coordinator")[1]["origin_us"]
            await _until(lambda: any(r["ts_us"] >= resumed_us + 500_000 for r in sc.events().select(
                "audio", proc="second")), 5, "half a second of the resumed generation")
            assert second.audio.gaps == 0

    run(body())


def test_clients_on_different_workers_play_in_sync(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--workers", "2")
            workers = server.ready["workers"]
            await sc.probe(workers[0]["url"], ProbeConfig(name="early"))
            await asyncio.sleep(1.0)
            late = await sc.probe(server.ready["url"], ProbeConfig(name="late"))  # redirected
            assert late.connected_url == workers[1]["url"], "redirect should pick the emptier worker"
            await asyncio.sleep(1.0)
            events = sc.events()
            late_chunks = events.select("audio", proc="late")
            joined = events.stream_start_us("late")  # the server's clock: the harness may run late
            assert joined and late_chunks[0]["ts_us"] > joined, "a late joiner got a timestamp in the past"
            early_by_ts = {r["ts_us"]: r["first"] for r in events.select("audio", proc="early")}
            common = [r for r in late_chunks if r["ts_us"] in early_by_ts]
            assert len(common) > 10
            assert all(early_by_ts[r["ts_us"]] == r["first"] for r in common), "same time, different samples"

    run(body())
