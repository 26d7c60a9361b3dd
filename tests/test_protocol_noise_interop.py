"""Interop at the protocol level with aiosendspin 10.2.1, on loopback, both suites.

- Its Noise server (`allow_unencrypted=False`), driven by our sans-I/O `noise`
  client (NoiseSession + NoiseClientFlow) over a plain websockets connection:
  handshake, server/hello, client/hello, server/activate, client/time,
  client/state with `available`, watermark audio with the 13-byte header,
  stream/end, client/leave, client/goodbye.
- Its Noise client (unpaired access on) against our sans-I/O server side under a
  bare websockets server: handshake, server/hello, client/hello, server/activate,
  server/time, client/state, stream/start, audio encrypted per listener from one
  prepared chunk; the client's audio listener sees every chunk with our
  timestamps and `send_ahead`.

aiosendspin 10.2.1 is not in the project's venv (pyproject pins 6.1.1 for the
legacy interop, and one venv cannot hold both), so the server runs as a
subprocess (tests/noise_peers/aiosendspin10_server.py) under the interpreter
named by SENDSPIN_AIOSENDSPIN10_PYTHON, e.g. a throwaway venv made with

    python3.12 -m venv /tmp/aios1021
    /tmp/aios1021/bin/pip install 'aiosendspin[server]==10.2.1'
    export SENDSPIN_AIOSENDSPIN10_PYTHON=/tmp/aios1021/bin/python

Without it the test is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from noise_support import aiosendspin10_python
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from harness.protocol import ConnectionFatal
from harness.protocol import messages as m
from harness.protocol.clock import now_us
from harness.protocol.noise import SUITES, AudioChunk, NoiseProfile
from harness.protocol.noise_flow import NoiseClientFlow, NoiseServerFlow

PEER = Path(__file__).parent / "noise_peers" / "aiosendspin10_server.py"
CLIENT_PEER = Path(__file__).parent / "noise_peers" / "aiosendspin10_client.py"
RATE = 48_000
SECONDS = 1.5


def _frame_indices(pcm: bytes) -> list[int]:
    """The peer's watermark: frame n's left sample is n's low 16 bits, its right the high 16."""
    out = []
    for i in range(0, len(pcm), 4):
        low = int.from_bytes(pcm[i : i + 2], "little")
        high = int.from_bytes(pcm[i + 2 : i + 4], "little")
        out.append(low | high << 16)
    return out


async def _session(python: str, suite: str) -> dict:
    profile = NoiseProfile(suite=suite)  # type: ignore[arg-type]
    proc = await asyncio.create_subprocess_exec(
        python, str(PEER), profile.identity.peer_id, str(SECONDS),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    report: dict = {"chunks": [], "received": [], "notes": []}
    try:
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))  # type: ignore[union-attr]
        codec, flow = profile.session("client"), NoiseClientFlow()
        async with connect(ready["url"], open_timeout=10, close_timeout=3, compression=None,
                           max_size=None) as ws:

            async def send(message: m.Message) -> None:
                flow.sent(message)
                for wire in codec.encode_messages(message):
                    await ws.send(wire)

            for wire in codec.handshake(None).send:
                await ws.send(wire)
            while not codec.ready:
                step = codec.handshake(await asyncio.wait_for(ws.recv(), 10))
                for wire in step.send:
                    await ws.send(wire)
                assert not step.close, step
            report["psk_category"] = codec.psk.category  # type: ignore[union-attr]
            report["server_id_matches"] = codec.peer_id == ready["server_id"]
            async with asyncio.timeout(30):
                while True:
                    message = codec.decode(await ws.recv())
                    if message is None:
                        continue
                    flow.receive(message)
                    if isinstance(message, AudioChunk):
                        report["chunks"].append((message.timestamp_us, message.send_ahead_us, bytes(message.payload)))
                        continue
                    report["received"].append(message.TYPE)
                    if isinstance(message, m.NoiseServerHello):
                        await send(m.NoiseClientHello(
                            name="harness noise probe", supported_roles=["player@v1"],
                            player_support=m.NoisePlayerSupport(supported_formats=[m.AudioFormat(
                                codec="pcm", channels=2, sample_rate=RATE, bit_depth=16)], buffer_capacity=2_000_000),
                            supported_pair_methods={"pairing_psk": {}}, unpaired_access=m.UnpairedAccess(enabled=True)))
                    elif isinstance(message, m.ServerActivate) and flow.activations == 1:
                        report["first_activate"] = message
                        await send(m.ClientTime(client_transmitted=now_us()))
                    elif isinstance(message, m.ServerTime) and "server_time" not in report:
                        report["server_time"] = message
                        await send(m.NoiseClientState(available=True, player=m.NoisePlayerState(
                            volume=100, muted=False, output_delay_ms=0, required_lead_time_ms=100,
                            min_buffer_ms=250, supported_commands=["volume", "mute"])))
                    elif isinstance(message, m.StreamEnd):
                        break
            await send(m.ClientLeave())
            await send(m.NoiseClientGoodbye(reason="shutdown"))
            # The server should close after a goodbye; anything it still sends must decrypt.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    async for wire in ws:
                        codec.decode(wire)
            report["closed_by_server"] = ws.close_code is not None
        proc.stdin.close()  # type: ignore[union-attr]
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        report["peer_out"], report["peer_err"] = out.decode(), err.decode()
        report["returncode"] = proc.returncode
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return report


@pytest.mark.parametrize("suite", SUITES)
def test_our_noise_client_against_aiosendspin_10_2_1(suite: str) -> None:
    python = aiosendspin10_python()
    try:
        report = asyncio.run(asyncio.wait_for(_session(python, suite), 120))
    except ConnectionFatal as exc:
        pytest.fail(f"the connection broke a rule that closes it: {exc}")
    assert report["returncode"] == 0, report["peer_err"][-2000:]
    assert report["psk_category"] == "sn" and report["server_id_matches"]
    assert report["closed_by_server"], "the server did not close after client/goodbye"
    assert report["received"][:2] == ["server/hello", "server/activate"], report["received"]
    assert report["first_activate"].active_roles == ["player@v1"]
    assert "stream/start" in report["received"] and report["received"][-1] == "stream/end"
    streamed = json.loads(report["peer_out"].splitlines()[-1])["streamed"]
    chunks = report["chunks"]
    assert chunks, report["received"]
    # Every sample once and in order; timestamps follow the sample count; send_ahead a real lead.
    indices = [i for _, _, pcm in chunks for i in _frame_indices(pcm)]
    assert indices == list(range(streamed)), f"{len(indices)} frames, first {indices[:3]}, last {indices[-3:]}"
    ts0 = chunks[0][0]
    first = 0
    for ts, send_ahead, pcm in chunks:
        assert ts - ts0 - first * 1_000_000 // RATE in (0, 1), (ts, first)
        assert 0 < send_ahead < 5_000_000, send_ahead
        first += len(pcm) // 4
    print(f"{suite}: {len(chunks)} chunks, {streamed} frames, send_ahead {min(c[1] for c in chunks)}.."
          f"{max(c[1] for c in chunks)} µs, received {report['received']}, "
          f"closed by the server after the goodbye: {report['closed_by_server']}", file=sys.stderr)


# --- aiosendspin 10.2.1's client against our server side ---------------------------------------

CHUNK_FRAMES = 1200  # 25 ms
CHUNKS = 40


def _watermark(first: int, frames: int) -> bytes:
    return b"".join((i & 0xFFFF).to_bytes(2, "little") + ((i >> 16) & 0xFFFF).to_bytes(2, "little")
                    for i in range(first, first + frames))


async def _serve_one(python: str, suite: str) -> dict:
    profile = NoiseProfile()
    report: dict = {"received": [], "sent_ts": [], "notes": []}
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        codec, flow = profile.session("server"), NoiseServerFlow()
        lock = asyncio.Lock()  # encrypt and write in one order: the nonces are the wire order

        async def send_wire(wires: list) -> None:
            async with lock:
                for wire in wires:
                    await ws.send(wire)

        async def send(message: m.Message) -> None:
            async with lock:
                flow.sent(message)
                for wire in codec.encode_messages(message):
                    await ws.send(wire)

        try:
            while not codec.ready:
                step = codec.handshake(await asyncio.wait_for(ws.recv(), 10))
                await send_wire(list(step.send))
                report["notes"] += step.notes
                if step.close:
                    report["handshake_error"] = str(step.error)
                    return
            report["client_id"], report["suite"] = codec.peer_id, codec.suite
            await send(m.NoiseServerHello(name="harness noise server"))
            state_ready = asyncio.Event()

            async def reader() -> None:
                async for wire in ws:
                    message = codec.decode(wire)
                    if message is None:
                        continue
                    flow.receive(message)
                    report["received"].append(getattr(message, "TYPE", "binary"))
                    if isinstance(message, m.NoiseClientHello):
                        report["hello"] = message
                        await send(m.ServerActivate(activities=["playback"], active_roles=["player@v1"]))
                        await send(m.NoiseGroupUpdate(playback_state="playing", group_id="g", group_name="main"))
                    elif isinstance(message, m.ClientTime):
                        received = now_us()
                        await send(m.ServerTime(client_transmitted=message.client_transmitted,
                                                server_received=received, server_transmitted=now_us()))
                    elif isinstance(message, m.NoiseClientState):
                        report.setdefault("states", []).append(message)
                        if message.available and message.player:
                            state_ready.set()

            read_task = asyncio.create_task(reader())
            try:
                await asyncio.wait_for(state_ready.wait(), 15)
                await send(m.NoiseStreamStart(server_transmitted=now_us(), player=m.PlayerStream(
                    codec="pcm", sample_rate=RATE, channels=2, bit_depth=16)))
                start = now_us() + 300_000
                for k in range(CHUNKS):
                    ts = start + k * CHUNK_FRAMES * 1_000_000 // RATE
                    prepared = profile.prepare_audio(ts, _watermark(k * CHUNK_FRAMES, CHUNK_FRAMES))
                    async with lock:
                        for wire in codec.audio_messages(prepared):
                            await ws.send(wire)
                    report["sent_ts"].append(ts)
                    await asyncio.sleep(max(0.0, (ts - 250_000 - now_us()) / 1e6))
                await asyncio.wait_for(read_task, 25)  # until the client says goodbye and closes
            finally:
                read_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await read_task
        except ConnectionClosed:
            pass
        finally:
            done.set()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            python, str(CLIENT_PEER), f"ws://127.0.0.1:{port}/sendspin", suite, str(CHUNKS),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 90)
            report["peer_lines"] = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
            report["peer_err"], report["returncode"] = err.decode(), proc.returncode
            await asyncio.wait_for(done.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return report


@pytest.mark.parametrize("suite", SUITES)
def test_aiosendspin_10_2_1_client_against_our_noise_server(suite: str) -> None:
    python = aiosendspin10_python()
    report = asyncio.run(asyncio.wait_for(_serve_one(python, suite), 150))
    assert report["returncode"] == 0, report["peer_err"][-2000:]
    assert "handshake_error" not in report, report["handshake_error"]
    lines = report["peer_lines"]
    assert report["client_id"] == lines[0]["client_id"] and report["suite"] == suite
    assert report["received"][0] == "client/hello", report["received"]
    assert report["hello"].unpaired_access.enabled
    assert any(s.available for s in report["states"]), report["states"]
    chunks = lines[-1]["chunks"]
    assert len(chunks) == CHUNKS, f"{len(chunks)} chunks reached its audio listener; {report['received']}"
    for k, (ts, send_ahead, size, first) in enumerate(chunks):
        assert ts == report["sent_ts"][k] and size == CHUNK_FRAMES * 4 and first == k * CHUNK_FRAMES
        assert 0 < send_ahead < 1_000_000, send_ahead  # its parser read our 13-byte header
    assert report["received"][-1] == "client/goodbye", report["received"]
    print(f"{suite}: {len(chunks)} chunks, send_ahead {min(c[1] for c in chunks)}..{max(c[1] for c in chunks)} µs, "
          f"received {report['received']}, notes {report['notes']}", file=sys.stderr)
