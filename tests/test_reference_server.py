"""The reference server, end to end over real sockets, seen by the probe client."""

from __future__ import annotations

import ast
import asyncio
import json
import math
import socket
import sys
import urllib.error
import urllib.request
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from harness.events import Events
from harness.probe import ProbeClient, ProbeConfig
from harness.protocol import EventLog, Message, ProtocolError, closecodes, get_profile, now_us
from harness.protocol import messages as m
from harness.scenario import Scenario
from harness.topology import reference_server, spawn_child
from reference_server.groups import Group
from reference_server.pacing import AudioPacer
from reference_server.playback import Playback
from reference_server.timeline import Chunk, ChunkStore

KiB = 1024
MiB = 1024 * KiB
ALL_ROLES = ["player@v1", "controller@v1", "metadata@v1", "artwork@v1", m.HARNESS_ROLE]



# --- chunked sends ----------------------------------------------------------------------


def test_large_message_goes_out_as_256_kib_fragments_with_pongs_between(run, tmp_path: Path) -> None:
    size = 3 * MiB

    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--artwork-bytes", str(size))
            p = await sc.probe(server.ready["url"], ProbeConfig(
                name="art", roles=["artwork@v1"], rcvbuf=16 * KiB, read_rate=2 * MiB))
            await asyncio.sleep(0.3)
            for i in range(5):
                p.ping(f"p{i}")
                await asyncio.sleep(0.1)
            while 0 not in p.artwork:
                await asyncio.sleep(0.05)
            sha, nbytes, sizes = p.artwork[0]
            events = sc.events()
            queued = events.select("artwork_queued")[-1]
            assert (sha, nbytes) == (queued["sha256"], queued["bytes"])
            message_bytes = nbytes + 9
            # websockets ends a fragmented message with an empty FIN frame.
            expected = [256 * KiB] * (message_bytes // (256 * KiB)) + [message_bytes % (256 * KiB), 0]
            assert sizes == [s for s in expected if s or s is expected[-1]], sizes
            pongs = events.select("pong", proc="art")
            assert len(pongs) == 5
            assert any(r["mid_message"] for r in pongs), "no pong arrived between two fragments"

    run(body())


# --- the control endpoint: scripted actions -----------------------------------------------------

TWO_FORMATS = [m.AudioFormat(codec="pcm", channels=2, sample_rate=48_000, bit_depth=16),
               m.AudioFormat(codec="pcm", channels=2, sample_rate=48_000, bit_depth=24)]


def _post(url: str, body: bytes | dict | None = None, method: str = "POST") -> tuple[int, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def _act(control: str, action: str, **params: object) -> tuple[int, dict]:
    return await asyncio.to_thread(_post, f"{control}/actions/{action}", params)


def test_actions_reach_the_session_and_are_logged(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            control = server.ready["control"]
            p = await sc.probe(server.ready["url"], ProbeConfig(name="p", client_id="c1", formats=TWO_FORMATS,
                                                                 answer_commands=True))
            await asyncio.sleep(0.5)
            cleared = p.wait_type(m.StreamClear, 3)
            assert (await _act(control, "stream/clear"))[0] == 200
            await cleared
            ended = p.wait_type(m.StreamEnd, 3)
            assert (await _act(control, "stream/end", client_id="c1"))[0] == 200
            await ended
            chunks = p.audio_chunks
            await asyncio.sleep(0.5)
            assert p.audio_chunks == chunks, "audio after stream/end"
            started = p.wait_type(m.StreamStart, 3)
            status, answer = await _act(control, "stream/start", format="other")
            assert status == 200 and answer["sessions"] == [
                {"proc": "server", "session": "s1", "client_id": "c1", "format": "pcm/48000/2/24",
                 "previous": "pcm/48000/2/16"}], answer
            start = await started
            assert isinstance(start, m.StreamStart) and start.player and start.player.bit_depth == 24
            await asyncio.sleep(0.8)
            assert p.audio_chunks > chunks and p.audio.gaps == 0 and p.audio.corrupt == 0

            status, answer = await _act(control, "server/command", volume=30)
            assert status == 200 and answer["sessions"][0]["value"] == 30
            await _act(control, "server/command", mute=True)
            await asyncio.sleep(0.5)
            assert (p.volume, p.muted) == (30, True)
            events = sc.events()
            states = events.select("recv", proc="server", type="client/state")
            assert (states[-2]["volume"], states[-1]["muted"]) == (30, True)
            hello = events.select("recv", proc="server", type="client/hello")[0]
            assert hello["formats"] == ["pcm/48000/2/16", "pcm/48000/2/24"] and hello["commands"] == ["volume", "mute"]
            logged = [(r["action"], r["session"], r["client_id"]) for r in events.select("action")]
            assert logged == [(a, "s1", "c1") for a in ("stream/clear", "stream/end", "stream/start",
                                                         "server/command", "server/command")]
            assert events.select("action", action="stream/start")[0]["result"]["format"] == "pcm/48000/2/24"

    run(body())


def test_actions_split_messages_into_frames_with_pings_between(run, tmp_path: Path) -> None:
    size = 300 * KiB

    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            proxy = await sc.proxy([server.ready["url"]], "--wire-log")
            p = await sc.probe(proxy.url + "/sendspin", ProbeConfig(name="p", roles=["player@v1", "artwork@v1"]))
            await asyncio.sleep(0.5)
            control = server.ready["control"]
            assert (await _act(control, "fragment", frames=4, type="server/time", pings=True))[0] == 200
            assert (await _act(control, "stream/start", frames=6))[0] == 200
            status, answer = await _act(control, "artwork", bytes=size, fragment_bytes=64 * KiB, pings=True)
            assert status == 200, answer
            await asyncio.sleep(1.0)
            events = sc.events()
            split = {r["type"]: r for r in events.select("recv", proc="p") if r.get("fragments", 1) > 1}
            assert split["server/time"]["fragments"] == 4 and split["stream/start"]["fragments"] == 6
            assert sum(r.get("fragments", 1) > 1 for r in events.select("recv", proc="p", type="server/time")) == 1
            image = answer["sessions"][0]
            sha, nbytes, sizes = p.artwork[0]
            assert (sha, nbytes) == (image["sha256"], image["bytes"])
            frames = -(-(nbytes + 9) // (64 * KiB))
            assert len(sizes) == frames and max(sizes) == 64 * KiB, sizes  # exactly these frames: no empty last
            wire = [r for r in events.select("wire", direction="downstream") if r["kind"] in ("ping", "binary")]
            art = next(i for i, r in enumerate(wire) if r["kind"] == "binary" and r["size"] == nbytes + 9)
            # the proxy logs a message when its last frame passes: its pings passed before it
            assert [r["kind"] for r in wire[art - (frames - 1):art]] == ["ping"] * (frames - 1)
            pongs = events.select("wire", direction="upstream", kind="pong")
            assert len(pongs) == 3 + frames - 1
            assert {r["type"]: r["pings"] for r in events.select("send_begin") if r.get("fragments", 1) > 1} == \
                {"server/time": True, "stream/start": False, "artwork/0": True}

    run(body())


def test_control_endpoint_errors_name_what_was_wrong(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            control = server.ready["control"]
            status, listing = await asyncio.to_thread(_post, f"{control}/actions", None, "GET")
            assert status == 200 and set(listing["actions"]) == {
                "stream/clear", "stream/end", "stream/start", "server/command", "artwork", "fragment",
                "noise/fragments", "noise/large", "noise/tamper", "noise/cleartext", "noise/rehandshake",
                "noise/handshake-stall", "noise/init-error"}
            assert listing["actions"]["artwork"]["params"]["bytes"]["required"] is True
            status, error = await _act(control, "stream/clear")
            assert status == 409 and "no session took it: there is no session past its hello" in error["error"]
            await sc.probe(server.ready["url"], ProbeConfig(name="p", client_id="c1"))
            cases = [
                ("/actions/nope", {}, 404, "no action 'nope'"),
                ("/nope", {}, 404, "no such path '/nope'"),
                ("/actions/stream/clear", b"{", 400, "the body is not JSON"),
                ("/actions/stream/clear", b"[1]", 400, "must be a JSON object"),
                ("/actions/stream/clear", {"colour": 1}, 400, "unknown parameter(s) ['colour']"),
                ("/actions/stream/clear", {"frames": "3"}, 400, 'frames: expected int, got "3"'),
                ("/actions/stream/clear", {"pings": 1}, 400, "pings: expected bool, got 1"),
                ("/actions/server/command", {"volume": 101}, 400, "volume: 101 is out of range 0..100"),
                ("/actions/server/command", {"volume": 5, "mute": True}, 400, "exactly one of volume and mute"),
                ("/actions/artwork", {}, 400, "bytes is required"),
                ("/actions/stream/start", {"format": "best"}, 400, "format must be 'current' or 'other'"),
                ("/actions/stream/start", {"format": "other"}, 409, "declared no other format this server serves"),
                ("/actions/artwork", {"bytes": 1000}, 409, "no artwork role"),
                ("/actions/stream/clear", {"client_id": "c2"}, 409, "no session of client 'c2'"),
                ("/actions/stream/clear", b"x" * (65 * KiB), 413, "at most 65536"),
            ]
            for path, request, code, message in cases:
                status, error = await asyncio.to_thread(_post, control + path, request)
                assert (status, message in error["error"]) == (code, True), (path, request, status, error)
            assert (await asyncio.to_thread(_post, f"{control}/actions/stream/end", None, "GET"))[0] == 405
            refused = [r["refused"] for r in sc.events().select("action") if "refused" in r]
            assert len(refused) == 4 and "no other format" in refused[1], refused

    run(body())


def test_a_cluster_forwards_actions_to_the_worker_of_the_session(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--workers", "2")
            workers = server.ready["workers"]
            assert all(w["control"].startswith("http://") for w in workers)
            a = await sc.probe(workers[0]["url"], ProbeConfig(name="a", client_id="a"))
            b = await sc.probe(workers[1]["url"], ProbeConfig(name="b", client_id="b"))
            await asyncio.sleep(0.5)
            cleared = b.wait_type(m.StreamClear, 3)
            status, answer = await _act(server.ready["control"], "stream/clear", client_id="b")
            assert status == 200 and [(s["proc"], s["client_id"]) for s in answer["sessions"]] == [("worker-1", "b")]
            await cleared
            assert not any(isinstance(x, m.StreamClear) for x in a.messages)
            status, answer = await _act(server.ready["control"], "stream/end")
            assert status == 200 and sorted(s["proc"] for s in answer["sessions"]) == ["worker-0", "worker-1"]
            status, error = await _act(server.ready["control"], "stream/clear", client_id="zz")
            assert status == 409 and "worker-0: " in error["error"] and "worker-1: " in error["error"], error
            status, error = await _act(server.ready["control"], "stream/clear", frames=0)
            assert status == 400 and "frames: 0 is out of range" in error["error"]
            events = sc.events()
            assert [(r["proc"], r["session"]) for r in events.select("action", action="stream/clear")
                    if r["session"]] == [("worker-1", "s1")]
            forwarded = events.select("action", proc="coordinator")
            assert [r["workers"] for r in forwarded] == [[0, 1]] * 3 and "refused" in forwarded[-1]

    run(body())


# --- hardened reads -----------------------------------------------------------------------


def test_no_hello_within_timeout_closes_with_4000(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--hello-timeout", "0.5")
            p = await sc.probe(server.ready["url"], ProbeConfig(name="mute"), connect=False)
            await p.connect(send_hello=False)
            await asyncio.wait_for(p.closed.wait(), 3)
            assert p.close_code == closecodes.HELLO_TIMEOUT, (p.close_code, p.close_reason)
            assert "no client/hello within 0.5 s" in p.close_reason
            events = sc.events()  # the server's own clock: from its accept to its close
            (accepted,), (closing,) = events.select("accept", proc="server"), events.select("close_begin")
            assert 0.5 <= (closing["t_us"] - accepted["t_us"]) / 1e6 < 2.5

    run(body())


@pytest.mark.parametrize("first", [
    json.dumps({"type": "client/time", "payload": {"client_transmitted": 1}}),
    b"\x04" + bytes(8),
    "not json",
])
def test_first_message_must_be_client_hello(run, tmp_path: Path, first: str | bytes) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            p = await sc.probe(server.ready["url"], ProbeConfig(name="rude"), connect=False)
            await p.connect(send_hello=False)
            p.send_raw(first, "first_message")
            await asyncio.wait_for(p.closed.wait(), 3)
            assert p.close_code == closecodes.PROTOCOL_ERROR
            reject = sc.events().select("reject", action="close")[0]
            assert reject["code"] == closecodes.PROTOCOL_ERROR and reject["rule"]

    run(body())


def test_oversized_message_closes_with_1009(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--max-message-bytes", str(64 * KiB))
            p = await sc.probe(server.ready["url"], ProbeConfig(name="big"))
            p.send_raw("x" * (64 * KiB + 1), "oversized")
            await asyncio.wait_for(p.closed.wait(), 3)
            assert p.close_code == closecodes.TOO_BIG

    run(body())


def test_bad_input_leaves_other_sessions_alone(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            good = await sc.probe(server.ready["url"], ProbeConfig(name="good"))
            bad = await sc.probe(server.ready["url"], ProbeConfig(name="bad"))
            for garbage in ["{", b"\x00", json.dumps({"type": "x/y", "payload": {}})]:
                bad.send_raw(garbage, "garbage")
            await asyncio.sleep(1.5)
            assert len(bad.errors) == 3 and not bad.closed.is_set()
            assert good.audio.samples > 0 and good.audio.gaps == 0 and not good.errors

    run(body())


# --- HTTP -----------------------------------------------------------------------------------


def test_http_status_and_errors(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            await sc.probe(server.ready["url"], ProbeConfig(name="p1"))
            base = server.ready["http"]
            status, headers, text = await asyncio.to_thread(_get, f"{base}/api/status")
            assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
            data = json.loads(text)
            assert data["listeners"] == 1 and data["sessions"] == 1 and data["playing"] is True
            assert (await asyncio.to_thread(_get, f"{base}/nope"))[0] == 404
            assert (await asyncio.to_thread(_get, f"{base}/sendspin"))[0] == 426

    run(body())


def _get(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


# --- playback behaviour -------------------------------------------------------------------------


def test_controller_commands(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            url = server.ready["url"]
            a = await sc.probe(url, ProbeConfig(name="a", roles=ALL_ROLES))
            b = await sc.probe(url, ProbeConfig(name="b", roles=ALL_ROLES))
            b.send(m.ClientState(player=m.PlayerState(volume=20)))
            await asyncio.sleep(0.3)

            commanded = b.wait_type(m.ServerCommand, 3)
            controller = a.wait_for(lambda x: isinstance(x, m.ServerState) and x.controller is not m.UNSET, 3)
            a.send(m.ClientCommand(controller=m.ControllerCommand(command="volume", volume=90)))
            cmd, state = await asyncio.gather(commanded, controller)
            assert isinstance(cmd, m.ServerCommand) and cmd.player
            # [100, 20] -> 90: delta +30, a clamps at 100 and hands its 30 to b -> [100, 80].
            assert (cmd.player.command, cmd.player.volume) == ("volume", 80)
            assert isinstance(state, m.ServerState) and state.controller and state.controller.volume == 90

            a.send(m.ClientCommand(controller=m.ControllerCommand(command="mute", mute=True)))
            cmd = await a.wait_type(m.ServerCommand, 3)
            assert isinstance(cmd, m.ServerCommand) and cmd.player and cmd.player.mute is True

            ended, updated = b.wait_type(m.StreamEnd, 3), b.wait_type(m.GroupUpdate, 3)
            a.send(m.ClientCommand(controller=m.ControllerCommand(command="pause")))
            _, update = await asyncio.gather(ended, updated)
            assert isinstance(update, m.GroupUpdate) and update.playback_state == "stopped"

            a.send(m.ClientCommand(controller=m.ControllerCommand(command="play")))
            await b.wait_type(m.StreamStart, 3)
            chunks = b.audio_chunks
            await asyncio.sleep(0.8)
            assert b.audio_chunks > chunks

            cleared = b.wait_type(m.StreamClear, 3)
            metadata = b.wait_for(lambda x: isinstance(x, m.ServerState) and x.metadata is not m.UNSET, 3)
            a.send(m.ClientCommand(controller=m.ControllerCommand(command="next")))
            _, meta = await asyncio.gather(cleared, metadata)
            assert isinstance(meta, m.ServerState) and meta.metadata and meta.metadata.track == 2

            a.send(m.ClientCommand(controller=m.ControllerCommand(command="volume")))
            error = await a.wait_type(m.HarnessError, 3)
            assert isinstance(error, m.HarnessError) and "required when command is 'volume'" in error.rule
            await asyncio.sleep(0.5)
            assert b.audio.gaps == 0 and b.audio.duplicates == 0

    run(body())


def test_external_source_moves_client_to_a_solo_group(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            url = server.ready["url"]
            a = await sc.probe(url, ProbeConfig(name="a", roles=ALL_ROLES))
            await sc.probe(url, ProbeConfig(name="b", roles=ALL_ROLES))
            await asyncio.sleep(0.3)
            updated, ended = a.wait_type(m.GroupUpdate, 3), a.wait_type(m.StreamEnd, 3)
            a.send(m.ClientState(state="external_source"))
            update, _ = await asyncio.gather(updated, ended)
            assert isinstance(update, m.GroupUpdate) and update.group_id != "main"
            assert update.playback_state == "stopped"
            a.send(m.ClientCommand(controller=m.ControllerCommand(command="switch")))
            back = await a.wait_type(m.GroupUpdate, 3)
            assert isinstance(back, m.GroupUpdate) and back.group_id == "main"

    run(body())


@pytest.mark.parametrize(("channels", "bit_depth"), [(1, 16), (2, 24)])
def test_request_format_switches_the_stream(run, tmp_path: Path, channels: int, bit_depth: int) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            p = await sc.probe(server.ready["url"], ProbeConfig(name="p"))
            await asyncio.sleep(0.5)
            p.send(m.StreamRequestFormat(player=m.PlayerFormatRequest(channels=channels, bit_depth=bit_depth)))
            start = await p.wait_type(m.StreamStart, 3)
            assert isinstance(start, m.StreamStart) and start.player
            assert (start.player.channels, start.player.bit_depth) == (channels, bit_depth)
            before = p.audio.samples
            await asyncio.sleep(1.0)
            assert p.audio.samples - before >= 24_000 and p.audio.gaps == 0 and p.audio.corrupt == 0
            p.send(m.StreamRequestFormat(player=m.PlayerFormatRequest(sample_rate=44_100)))
            error = await p.wait_type(m.HarnessError, 3)
            assert isinstance(error, m.HarnessError) and "cannot serve" in error.rule

    run(body())


def test_audio_never_further_ahead_than_buffer_capacity(run, tmp_path: Path) -> None:
    capacity = 20_000  # about 100 ms of 48 kHz 16-bit stereo

    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            await sc.probe(server.ready["url"], ProbeConfig(name="small", buffer_capacity=capacity))
            await asyncio.sleep(2.0)
            chunks = sc.events().select("audio", proc="small")
            assert len(chunks) > 40
            for i, c in enumerate(chunks):
                ahead = sum(x["bytes"] + 9 for x in chunks[: i + 1] if x["ts_us"] + 25_000 > c["t_us"])
                assert ahead <= capacity, f"chunk {i}: {ahead} bytes buffered > capacity {capacity}"

    run(body())


def test_late_joiner_plays_in_sync(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            early = await sc.probe(server.ready["url"], ProbeConfig(name="early"))
            await asyncio.sleep(1.0)
            late = await sc.probe(server.ready["url"], ProbeConfig(name="late"))
            await asyncio.sleep(1.0)
            events = sc.events()
            first_late = events.select("audio", proc="late")[0]
            joined = events.stream_start_us("late")  # the server's clock: the harness may run late
            assert joined and first_late["ts_us"] > joined, "a late joiner got a timestamp in the past"
            same = [r for r in events.select("audio", proc="early") if r["ts_us"] == first_late["ts_us"]]
            assert same and same[0]["first"] == first_late["first"], "same timestamp, different samples"
            assert early.audio.gaps == 0 and late.audio.gaps == 0

    run(body())


def test_goodbye_closes_normally(run, tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server()
            p = await sc.probe(server.ready["url"], ProbeConfig(name="p"))
            await p.close()
            assert p.close_code == closecodes.NORMAL
            await asyncio.sleep(0.2)
            events = sc.events()
            assert events.select("goodbye", reason="shutdown")
            assert events.select("close", proc="server")[-1]["sent_code"] == closecodes.NORMAL

    run(body())


# --- server-initiated connections (dialer.py) ------------------------------------------------------


class Listener:
    """A listening probe (the spec's server-initiated client): each dial is accepted by `probe`."""

    def __init__(self, probe: ProbeClient) -> None:
        self.probe = probe
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.url = f"ws://127.0.0.1:{self.sock.getsockname()[1]}/sendspin"
        self.accepted = 0
        self.task = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            await self.probe.accept(conn, "/sendspin")
            self.accepted += 1

    async def session(self, number: int, samples: int = 48_000) -> None:
        """Until the `number`-th dial is in a session that has received `samples` samples."""
        async with asyncio.timeout(15):
            while self.accepted < number or self.probe.audio.samples < samples:
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.sock.close()


def test_the_server_dials_a_listening_client_and_again_after_a_loss(run, tmp_path: Path) -> None:
    """--dial: the same session over a connection the server opened (its frames masked,
    as a WebSocket client's must be: the probe's WebSocket server refuses unmasked ones);
    after a loss without client/goodbye it dials again; after a goodbye (shutdown) not."""
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            probe = await sc.probe("ws://unused", ProbeConfig(name="lis"), connect=False)
            listener = Listener(probe)
            try:
                await sc.server("--dial", listener.url)
                await listener.session(1)
                assert probe.audio.gaps == 0 and probe.close_code is None
                assert probe.transport is not None
                probe.transport.abort()  # lost, no goodbye: the server assumes a restart and dials again
                await listener.session(2)
                await probe.close()  # client/goodbye shutdown: no more dials
                await asyncio.sleep(1.0)
            finally:
                await listener.close()
            ev = sc.events()
            assert [r["dialled"] for r in ev.select("accept", proc="server")] == [True, True]
            assert [r["reason"] for r in ev.select("dial")] == ["playback", "discovery"]
            assert [r.connection_reason for r in probe.messages if isinstance(r, m.ServerHello)] == \
                ["playback", "discovery"]
            assert not ev.select("dial_failed")
            assert ev.select("dial_end")[0]["why"] == "client/goodbye: shutdown"
            assert ev.select("close", proc="server")[-1]["sent_code"] == closecodes.NORMAL

    run(body())


def test_http_dial_backs_off_then_delete_and_close_end_it(run, tmp_path: Path) -> None:
    """POST /api/dial to a port nobody listens on retries with a growing backoff until
    DELETE /api/dial; POST /api/dial to a listening client streams to it, and POST
    /api/close ends the session with 1000 and dials no more."""
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            base = (await sc.server()).ready["http"]
            assert (await asyncio.to_thread(_call, f"{base}/api/dial?url=http://x"))[0] == 400
            with socket.create_server(("127.0.0.1", 0)) as closed:
                nobody = f"ws://127.0.0.1:{closed.getsockname()[1]}/sendspin"
            status, answer = await asyncio.to_thread(_call, f"{base}/api/dial?url={nobody}")
            assert status == 202 and json.loads(answer)["dialer"]["url"] == nobody
            await asyncio.sleep(1.0)
            assert (await asyncio.to_thread(_call, f"{base}/api/dial", "DELETE"))[0] == 200
            failed = sc.events().select("dial_failed")
            assert len(failed) >= 3 and [r["retry_s"] for r in failed[:3]] == [0.1, 0.2, 0.4], failed

            probe = await sc.probe("ws://unused", ProbeConfig(name="lis"), connect=False)
            listener = Listener(probe)
            try:
                await asyncio.to_thread(_call, f"{base}/api/dial?url={listener.url}")
                await listener.session(1)
                dialers = json.loads((await asyncio.to_thread(_get, f"{base}/api/status"))[2])["dialers"]
                assert [d["state"] for d in dialers] == ["session"]
                assert (await asyncio.to_thread(_call, f"{base}/api/close"))[0] == 200
                await asyncio.wait_for(probe.closed.wait(), 5)
                await asyncio.sleep(0.5)
            finally:
                await listener.close()
            assert probe.close_code == closecodes.NORMAL and listener.accepted == 1
            assert {r["why"] for r in sc.events().select("dial_end")} == {"DELETE /api/dial", "POST /api/close"}

    run(body())


def _call(url: str, method: str = "POST") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_wav_source_is_streamed_verbatim(run, tmp_path: Path) -> None:
    rate, frames = 48_000, 48_000
    samples = (np.arange(frames * 2, dtype=np.int64) * 7919 % 65536 - 32768).astype("<i2")
    wav_path = tmp_path / "tone.wav"
    with wave.open(str(wav_path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    pcm = samples.tobytes()
    received: list[tuple[int, bytes]] = []

    async def body() -> None:
        async with Scenario(tmp_path / "run") as sc:
            server = await sc.server("--source", str(wav_path))
            p = await sc.probe(server.ready["url"], ProbeConfig(name="wav"))
            original = p._on_audio

            def capture(message, t, fragments):
                received.append((message.timestamp_us, bytes(message.payload)))
                original(message, t, fragments)

            p._on_audio = capture  # type: ignore[method-assign]
            await asyncio.sleep(1.5)
            origin = sc.events().select("timeline_start")[0]["origin_us"]
            assert len(received) > 20
            for ts, payload in received:
                frame = round((ts - origin) * rate / 1e6) % frames
                expect = (pcm + pcm)[frame * 4 : frame * 4 + len(payload)]
                assert payload == expect, f"chunk at frame {frame} differs from the WAV"

    run(body())


@pytest.mark.parametrize(("args", "message"), [
    (["--chunk-ms", "0"], "--chunk-ms must be > 0"),
    (["--source", "/nonexistent.wav"], "neither 'watermark' nor an existing WAV file"),
    (["--dial", "http://127.0.0.1:1/x"], "--dial takes a ws:// URL"),
    (["--dial", "ws://127.0.0.1:1/x", "--workers", "2"], "--dial needs the single-process server"),
])
def test_cli_rejects_bad_arguments_clearly(args: list[str], message: str, tmp_path: Path) -> None:
    output = tmp_path / "cli.out"
    with spawn_child("cli", [sys.executable, "-m", "reference_server", *args], output) as cli:
        assert cli.exits_within(20), f"no exit: {cli.tail()}"  # a starved CPU is no hang
        assert cli.reap() == 2
    assert message in output.read_text()


def test_sigterm_shuts_down_cleanly(tmp_path: Path) -> None:
    server = reference_server(tmp_path)
    with server:
        pass
    assert server.popen.returncode == 0
    events = Events.load(tmp_path)
    assert events.select("shutdown")
    assert math.isfinite(events.start_us())


# --- the parts on their own: audio pacing, playback without a network, who imports whom ------------

FMT = m.PlayerStream(codec="pcm", sample_rate=48_000, channels=2, bit_depth=16)
CHUNK_US = 20_000


def _store(first_ts: int, count: int, first_seq: int = 0) -> ChunkStore:
    store = ChunkStore(48_000, "watermark", get_profile("legacy"))
    chunks = [Chunk(first_seq + i, (first_seq + i) * 960, 960, first_ts + i * CHUNK_US, first_ts + (i + 1) * CHUNK_US)
              for i in range(count)]
    store.add_batch([(c, b"") for c in chunks])
    return store


def _pacer(store: ChunkStore, start_delay_us: int = 0, capacity: int = 10**9,
           seal: Callable[[bytes], bytes] | None = None) -> tuple[AudioPacer, list[tuple[int, int]]]:
    skips: list[tuple[int, int]] = []
    pacer = AudioPacer(store, start_delay_us, lambda n, total: skips.append((n, total)), seal)
    pacer.capacity = capacity
    return pacer, skips


def test_pacer_joins_at_the_start_delay_and_sends_in_order() -> None:
    now = now_us()
    store = _store(now, 20)
    pacer, skips = _pacer(store, start_delay_us=5 * CHUNK_US)
    frame, wait = pacer.next_due(FMT, now)
    assert wait is None and frame == store.prepared(store.chunks[5], 2, 16)  # the shared frame itself
    assert pacer.cursor == 6
    frame, _ = pacer.next_due(FMT, now)
    assert frame == store.prepared(store.chunks[6], 2, 16)
    assert (pacer.sent, pacer.skipped, skips) == (2, 0, [])


def test_pacer_skips_what_is_due_already_and_counts_it() -> None:
    now = now_us()
    store = _store(now - 3 * CHUNK_US, 10)
    pacer, skips = _pacer(store)
    pacer.next_due(FMT, now - 3 * CHUNK_US)  # joined at chunk 0, sent it
    frame, _ = pacer.next_due(FMT, now)  # chunks 1 and 2 have started playing: skipped
    assert frame == store.prepared(store.chunks[3], 2, 16)
    assert skips == [(2, 2)] and pacer.skipped == 2 and pacer.cursor == 4


def test_pacer_keeps_in_flight_audio_within_buffer_capacity() -> None:
    now = now_us()
    store = _store(now + CHUNK_US, 10)
    size = len(store.prepared(store.chunks[0], 2, 16))
    pacer, _ = _pacer(store, capacity=2 * size)
    sent = [pacer.next_due(FMT, now)[0] for _ in range(2)]
    assert all(sent)
    frame, wait = pacer.next_due(FMT, now)
    assert frame is None and wait == pytest.approx(2 * CHUNK_US / 1e6)  # until chunk 0 has played
    frame, _ = pacer.next_due(FMT, now + 2 * CHUNK_US)  # chunk 0 played: its bytes drained
    assert frame == store.prepared(store.chunks[2], 2, 16)


def test_pacer_batch_stops_at_the_first_chunk_it_may_not_take() -> None:
    now = now_us()
    store = _store(now + CHUNK_US, 6)
    size = len(store.prepared(store.chunks[0], 2, 16))
    pacer, _ = _pacer(store, capacity=3 * size)
    pacer.next_due(FMT, now)  # chunk 0
    frames = pacer.take(list(store.chunks)[1:], FMT, now)
    assert frames == [store.prepared(c, 2, 16) for c in list(store.chunks)[1:3]]
    assert all(a is b for a, b in zip(frames, [store.prepared(c, 2, 16) for c in list(store.chunks)[1:3]],
                                       strict=True)), "legacy writes the shared bytes, never a copy"
    assert pacer.cursor == 3 and pacer.sent == 3


def test_pacer_applies_a_per_session_codec_step_and_counts_its_bytes() -> None:
    now = now_us()
    store = _store(now + CHUNK_US, 4)
    size = len(store.prepared(store.chunks[0], 2, 16))
    pacer, _ = _pacer(store, capacity=size + 100, seal=lambda prepared: b"sealed" + prepared)
    frame, _ = pacer.next_due(FMT, now)
    assert frame == b"sealed" + store.prepared(store.chunks[0], 2, 16)
    assert pacer.take(list(store.chunks)[1:], FMT, now) == []  # 6 + size + size > capacity


@dataclass(eq=False)
class FakeListener:
    session_id: str
    roles: tuple[str, ...] = ("player", "controller", "metadata")
    volume: int = 100
    muted: bool = False
    group: Group | None = None
    hello: m.ClientHello | None = None
    player_format: m.PlayerStream | None = None
    sent: list[Message] = field(default_factory=list)
    rejected: list[ProtocolError] = field(default_factory=list)

    @property
    def is_player(self) -> bool:
        return "player" in self.roles

    def has_role(self, family: str) -> bool:
        return family in self.roles

    def enqueue(self, message: Message) -> None:
        self.sent.append(message)

    def reject(self, exc: ProtocolError) -> None:
        self.rejected.append(exc)

    def start_player_stream(self, fmt: m.PlayerStream) -> None:
        self.player_format = fmt

    def end_streams(self, roles: list[str] | None = None) -> None:
        self.player_format = None

    def clear_player(self) -> None:
        pass

    def send_artwork(self, channel: int, image_format: str) -> None:
        pass


def test_playback_runs_without_a_network() -> None:
    demand: list[bool] = []
    playback = Playback(ChunkStore(48_000, "watermark", get_profile("legacy")), EventLog(None, "t"), demand.append,
                        autoplay=True)
    hello = m.ClientHello(client_id="a", name="a", supported_roles=["player@v1"],
                          player_support=m.PlayerSupport(supported_formats=[m.AudioFormat(
                              codec="pcm", channels=2, sample_rate=48_000, bit_depth=24)],
                              buffer_capacity=1000, supported_commands=["volume"]))
    a, b = FakeListener("a", hello=hello), FakeListener("b", hello=hello)
    playback.join(a)
    playback.join(b)
    assert demand == [True] and a.player_format == b.player_format and a.player_format is not None
    assert isinstance(a.sent[0], m.GroupUpdate) and a.group is playback.main_group
    playback.controller_command(a, m.ControllerCommand(command="volume", volume=40))
    assert (a.volume, b.volume) == (40, 40)
    playback.controller_command(a, m.ControllerCommand(command="stop"))
    assert demand == [True, False] and a.player_format is None and b.player_format is None
    playback.controller_command(a, m.ControllerCommand(command="mute"))
    assert a.rejected and a.rejected[0].field == "payload.controller.mute"
    playback.leave(a)
    playback.leave(b)
    assert playback.status()["sessions"] == 0 and playback.main_group.members == []


def _imports(module: str) -> set[str]:
    """Every module `reference_server/<module>.py` imports (also under TYPE_CHECKING or
    in functions); the package's own modules as relative names (".session")."""
    path = Path(__file__).resolve().parent.parent / "reference_server" / f"{module}.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            dots = "." * node.level
            found |= {dots + node.module} if node.module else {dots + alias.name for alias in node.names}
    return {"." + name.removeprefix("reference_server.") if name.startswith("reference_server.") else name
            for name in found}


@pytest.mark.parametrize(("module", "forbidden"), [
    ("playback", ("websockets", ".session", ".server", ".pacing")),
    ("pacing", ("websockets", ".session", ".server", ".playback")),
    ("session", (".server", ".playback", ".actions", ".control")),
    ("control", ("websockets", ".session", ".server", ".playback", ".actions")),
    ("actions", (".server", ".playback")),
    ("timeline", ("websockets", ".session", ".server", ".playback")),
])
def test_dependencies_point_one_way(module: str, forbidden: tuple[str, ...]) -> None:
    """server -> session -> pacing -> timeline, server -> playback -> timeline; never back."""
    imported = _imports(module)
    assert imported, module
    bad = sorted(name for name in imported for prefix in forbidden if name == prefix or name.startswith(prefix + "."))
    assert not bad, f"reference_server/{module}.py imports {bad}"
